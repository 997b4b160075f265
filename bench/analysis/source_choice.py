"""Would the estimators have picked the right source? Estimates against measured gains.

For each target size: per source, the estimators' mean over seeds (``transferability.jsonl``)
beside the measured gain over scratch of that source's best strategy (best mean test accuracy
among the strategies transferred from it; paired over matched seeds as in ``gains.md``). Per
estimator, Kendall's tau and Spearman's rho between estimate and gain across sources with a
percentile bootstrap over seeds (seeds resampled, every mean recomputed), the source it picks
and its regret: the best source's accuracy minus the picked one's.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from bench.folder import estimate_key, load_records, size_order, split_method

BOOTSTRAP = 2000
LEVEL = 0.95
# The per-source table's columns that are not estimators (``transferability.csv``).
MEASURED = ("size", "source", "best strategy", "accuracy", "gain", "gain_low", "gain_high",
            "estimate_seconds")


def estimator_columns(sources: pd.DataFrame) -> list[str]:
    return [c for c in sources.columns if c not in MEASURED]


def source_of(strategy: str) -> str | None:
    """``full@tweets`` -> ``tweets``; a one-source study's strategies carry no source."""
    return split_method(strategy)[1]


def estimates_frame(path: Path) -> pd.DataFrame:

    rows = []
    for r in load_records(path, key=estimate_key):
        for name, v in (r.get("estimates") or {}).items():
            rows.append({"source": r["source"], "source_seed": r.get("source_seed"),
                         "size": str(r["size"]), "seed": int(r["seed"]), "estimator": name,
                         "value": float(v["value"]), "seconds": float(v["seconds"])})
    return pd.DataFrame(rows)


def _per_seed_accuracy(df: pd.DataFrame, strategy: str, size: str) -> pd.Series:
    g = df[(df["strategy"] == strategy) & (df["size"] == size)]
    return g.groupby("seed")["score"].mean()


def analyse(df: pd.DataFrame, estimates: pd.DataFrame, paired: Any,
            reference: str = "scratch") -> dict[str, pd.DataFrame]:
    """{size: (per-source table, per-estimator table)} as two frames with a ``size`` column.

    ``df`` is the report's frame (one row per record, ``score`` = the metric); ``paired`` its
    paired analysis of two strategies' rows."""
    source_rows, estimator_rows = [], []
    for size in sorted(estimates["size"].unique(), key=size_order):
        cell = df[df["size"] == size]
        scratch = _per_seed_accuracy(df, reference, size)
        if scratch.empty:
            continue
        per_source: dict[str, dict[str, Any]] = {}
        for source in sorted(estimates.loc[estimates["size"] == size, "source"].unique()):
            names = [s for s in cell["strategy"].unique() if source_of(s) == source] or \
                [s for s in cell["strategy"].unique() if source_of(s) is None
                 and s != reference and s in set(df.loc[df["transfers"], "strategy"])]
            if not names:
                continue
            means = {s: cell.loc[cell["strategy"] == s, "score"].mean() for s in names}
            best = max(names, key=lambda s: (means[s], s))
            acc = _per_seed_accuracy(df, best, size)
            est = paired(cell[cell["strategy"] == best], cell[cell["strategy"] == reference])
            e = estimates[(estimates["size"] == size) & (estimates["source"] == source)]
            per_source[source] = {"best": best, "acc": acc, "scratch": scratch,
                                  "estimates": e.groupby(["estimator", "seed"])["value"].mean()}
            source_rows.append({
                "size": size, "source": source, "best strategy": best,
                "accuracy": means[best], "gain": est.mean if est else math.nan,
                "gain_low": est.low if est else math.nan,
                "gain_high": est.high if est else math.nan,
                **{name: e.loc[e["estimator"] == name, "value"].mean()
                   for name in sorted(e["estimator"].unique())},
                "estimate_seconds": e.groupby("seed")["seconds"].sum().mean()})
        if not per_source:
            continue
        sources = list(per_source)
        seeds = sorted(set.intersection(*(set(v["acc"].index) & set(v["scratch"].index)
                                          for v in per_source.values())))
        for name in sorted(estimates["estimator"].unique()):
            if not all(name in v["estimates"].index.get_level_values(0)
                       for v in per_source.values()):
                continue
            if all(v["estimates"][name].isna().all() for v in per_source.values()):
                continue  # no value at this size (e.g. too few labels to cross-validate)
            estimator_rows.append({"size": size, "estimator": name,
                                   **_agreement(per_source, sources, seeds, name)})
    return {"sources": pd.DataFrame(source_rows), "estimators": pd.DataFrame(estimator_rows)}


def _agreement(per_source: dict[str, dict[str, Any]], sources: list[str], seeds: list[int],
               name: str) -> dict[str, Any]:
    """Rank correlations with bootstrap CIs over seeds, the pick and its regret."""
    # sources x seeds; an estimate missing for a seed is NaN and left out of that mean
    est_m = np.array([per_source[s]["estimates"][name].reindex(seeds).to_numpy(float)
                      for s in sources])
    acc_m = np.array([per_source[s]["acc"].reindex(seeds).to_numpy(float) for s in sources])
    gain_m = acc_m - np.array([per_source[s]["scratch"].reindex(seeds).to_numpy(float)
                               for s in sources])
    est, gain, acc = (np.nanmean(m, axis=1) for m in (est_m, gain_m, acc_m))
    pick = sources[int(np.nanargmax(est))]
    out: dict[str, Any] = {"sources": len(sources), "seeds": len(seeds), "picks": pick,
                           "best source": sources[int(np.nanargmax(acc))],
                           "regret": float(np.nanmax(acc) - acc[sources.index(pick)])}
    rng = np.random.default_rng(0)
    resamples = BOOTSTRAP if len(sources) >= 3 and len(seeds) >= 2 else 0
    positions = np.arange(len(seeds))
    draws = np.array([rng.choice(positions, size=len(seeds), replace=True)
                      for _ in range(resamples)], dtype=int).reshape(resamples, len(seeds))
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN resample is NaN, dropped
        e_boot = np.nanmean(est_m[:, draws], axis=2).T  # resamples x sources
        g_boot = np.nanmean(gain_m[:, draws], axis=2).T
    boots = {"tau": kendall_tau_b(e_boot, g_boot), "rho": spearman_rho(e_boot, g_boot)}
    out["tau_p"] = (float(sps.kendalltau(est, gain).pvalue) if len(sources) >= 3
                    and not math.isnan(_corr(sps.kendalltau, est, gain)) else math.nan)
    for key, fn in (("tau", sps.kendalltau), ("rho", sps.spearmanr)):
        value = _corr(fn, est, gain) if len(sources) >= 3 else math.nan
        lo, hi = (np.nanpercentile(boots[key], [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
                  if len(boots[key]) and not np.all(np.isnan(boots[key]))
                  else (math.nan, math.nan))
        out.update({key: value, f"{key}_low": float(lo), f"{key}_high": float(hi)})
    return out


def _corr(fn: Any, a: np.ndarray, b: np.ndarray) -> float:
    if len(set(np.round(a, 12))) < 2 or len(set(np.round(b, 12))) < 2:
        return math.nan  # a constant ranking has no correlation
    return float(fn(a, b)[0])


def kendall_tau_b(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Kendall's tau-b of each row of ``a`` with the same row of ``b`` (rows x few columns).

    Why not scipy's: it takes one pair of vectors, and the bootstrap needs thousands of pairs
    of 3-4 sources; per call overhead made one report take minutes. Same definition as
    ``scipy.stats.kendalltau`` (tested); NaN where a row is constant or has a NaN."""
    a, b = np.round(np.asarray(a, float), 12), np.round(np.asarray(b, float), 12)
    i, j = np.triu_indices(a.shape[1], k=1)
    da, db = np.sign(a[:, i] - a[:, j]), np.sign(b[:, i] - b[:, j])
    with np.errstate(invalid="ignore", divide="ignore"):
        tau = (da * db).sum(axis=1) / np.sqrt((da != 0).sum(axis=1) * (db != 0).sum(axis=1))
    return np.where(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1), np.nan, tau)


def spearman_rho(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho per row (average ranks for ties): Pearson's r of the rows' ranks."""
    a, b = np.round(np.asarray(a, float), 12), np.round(np.asarray(b, float), 12)
    ra, rb = (sps.rankdata(x, axis=1) for x in (a, b))
    ra, rb = ra - ra.mean(axis=1, keepdims=True), rb - rb.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (ra * rb).sum(axis=1) / np.sqrt((ra ** 2).sum(axis=1) * (rb ** 2).sum(axis=1))
    return np.where(np.isnan(a).any(axis=1) | np.isnan(b).any(axis=1), np.nan, rho)


def _f(v: float, digits: int = 3, sign: bool = False) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else \
        (f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}")


def markdown(result: dict[str, pd.DataFrame], name: str, metric: str) -> str:
    sources, estimators = result["sources"], result["estimators"]
    lines = [f"{name}: which source? Transferability estimates vs measured {metric} gains\n",
             "Estimates: the frozen source network's features (and its head's source-class "
             "probabilities for LEEP and NCE) on each replicate's n training labels only, "
             "before any fine-tuning; mean over seeds. Measured: the source's best strategy "
             f"(highest mean {metric}) minus scratch, paired over matched seeds, 95% CI.\n"]
    for size in sorted(sources["size"].unique(), key=size_order):
        s = sources[sources["size"] == size]
        names = estimator_columns(s)
        table = pd.DataFrame({
            "source": s["source"], "best strategy": s["best strategy"],
            metric: s["accuracy"].map(_f),
            "gain vs scratch [95% CI]": [f"{_f(g, sign=True)} [{_f(lo, sign=True)}, "
                                         f"{_f(hi, sign=True)}]"
                                         for g, lo, hi in zip(s["gain"], s["gain_low"],
                                                              s["gain_high"])],
            **{n: s[n].map(_f) for n in names},
            "estimates, s": s["estimate_seconds"].map(lambda v: _f(v, 2))})
        lines += [f"## n={size}\n", table.to_markdown(index=False, disable_numparse=True), ""]
        e = estimators[estimators["size"] == size] if not estimators.empty else estimators
        if not e.empty:
            agree = pd.DataFrame({
                "estimator": e["estimator"],
                "Kendall tau [95% CI]": [f"{_f(t, 2, True)} [{_f(lo, 2, True)}, {_f(hi, 2, True)}]"
                                         for t, lo, hi in zip(e["tau"], e["tau_low"],
                                                              e["tau_high"])],
                "tau p (exact)": e["tau_p"].map(lambda v: _f(v, 2)),
                "Spearman rho [95% CI]": [f"{_f(t, 2, True)} [{_f(lo, 2, True)}, "
                                          f"{_f(hi, 2, True)}]"
                                          for t, lo, hi in zip(e["rho"], e["rho_low"],
                                                               e["rho_high"])],
                "picks": e["picks"], "best source": e["best source"],
                "regret": e["regret"].map(_f)})
            lines += [agree.to_markdown(index=False, disable_numparse=True), ""]
    n_src = int(estimators["sources"].max()) if not estimators.empty else 0
    lines.append(f"Correlations over {n_src} sources need at least 3 (n/a otherwise). CIs: "
                 f"percentile bootstrap over seeds ({BOOTSTRAP} resamples): the seed-to-seed "
                 "uncertainty of the ranking, rough with few seeds. tau p: scipy's exact test "
                 "of no association across the sources (two-sided; a perfect ranking of k "
                 "sources has p = 2/k!: 0.333 for 3, 0.083 for 4). Regret: the best source's "
                 f"{metric} minus the picked source's.")
    return "\n".join(lines) + "\n"
