"""From a study's records to the tables and figures a paper or a decision memo needs.

``transfer-bench report results/<study>`` writes ``results/<study>/report/``:

* ``table.{md,csv,tex}``: strategies x sizes (the TF-IDF and majority-class baselines
  included), mean ± std over seeds, 95% CI of the population mean counting seed and
  test-sample noise (:mod:`bench.analysis.stats`), seeds and collapsed runs; the best mean per size in
  bold, strategies the paired test cannot tell from it (Holm) in italics, and per size the
  smallest difference that test could detect;
* ``budget.md``: the tuning budget per cell (trials, pruned, compute minutes);
* ``gains.{md,csv}``: every strategy minus ``scratch``, one paired analysis over matched seeds
  and test examples (CI and p from one estimate), Holm-corrected over the study;
  ``--against full`` adds ``gains_vs_full.{md,csv}``, the same against another strategy;
* ``efficiency.{md,csv}``: labels ``scratch`` needs to match each strategy (ULMFiT's figure);
* ``variance.{md,csv}``: one run's variance split into seed, source model, tuning and test
  sample parts; ``edges.md``: tuned values at the edge of their range;
* ``*.png`` / ``*.pdf``: learning curves, learning-rate sensitivity, expected best validation
  score vs trials (Dodge et al. 2019; only from i.i.d. random-search trials), Pareto fronts.

Tables depend on the records alone and are byte-for-byte reproducible; plots that need the
Optuna trials read the study's storage and are skipped (with a note) when it is unavailable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from bench.analysis import stats
from bench.cache import atomic_write_text
from bench.errors import BenchError
from bench.analysis.diagnostics import (EDGE, MAJORITY, VARIANCE_NOTE, edge_table, flags_table,
                               variance_markdown, variance_table)
from bench.folder import (DEFAULTS, ESTIMATES, RECORDS, compute_seconds, dataset_label,
                          duration_text, hpo_table, load_records, read_study, record_problems,
                          size_order, split_method)

REPORT_DIR = "report"
DEFAULT_METRIC = "test_acc"
LEGACY = "fixed_val (legacy)"  # records from before the protocol field: validation split, vocabulary
                               # from all texts, one tuning per cell on its own subset
REFERENCE = "scratch"
ALPHA = 0.05
LEVEL_PCT = round(100 * stats.LEVEL)
# A run collapsed: its test score within this much of (or below) what always answering the
# majority class scores on the same seed's labels. Such runs sit inside a mean and its interval
# as if they were ordinary noise; the table counts them.
COLLAPSE_MARGIN = 0.05
INDISTINGUISHABLE = "not distinguishable from the sample best"


def strategy_order(names: Iterable[str], records: list[dict[str, Any]],
                   sources: Iterable[str] = ()) -> list[str]:
    """Strategies in the order the study ran them (first record), each strategy's rows in the
    order of ``sources`` (the study's list; several workers interleave their records, so
    first appearance alone would shuffle them), then of first appearance; the reference
    (scratch) first, baselines last."""
    first: dict[str | None, int] = {}
    source_rank = {None: -1, **{name: i for i, name in enumerate(sources)}}
    for r in records:
        method, source = split_method(r["strategy"])
        first.setdefault(method, len(first))
        source_rank.setdefault(source, len(source_rank))
    baselines = {r["strategy"] for r in records if "baseline" in (r.get("strategy_spec") or {})}

    def key(name: str) -> tuple:
        method, source = split_method(name)
        return (name == MAJORITY, name in baselines, name != REFERENCE, first.get(method, 0),
                source_rank.get(source, 0), name)

    return sorted(set(names), key=key)


def study_sources(study_dir: Path) -> list[str]:
    """The study's ``data.sources`` in the order it lists them (``study.json``), by name."""
    try:
        listed = read_study(study_dir)["config"]["data"]["sources"]
    except (KeyError, TypeError):
        return []
    if not isinstance(listed, list):
        return []
    return [item if isinstance(item, str) else dataset_label(item) for item in listed
            if isinstance(item, str) or (isinstance(item, dict) and "name" in item)]


def legacy_validation(study_dir: Path) -> int:
    """The validation labels of a study whose records predate the ``labels`` field: the target's
    ``val_size`` in ``study.json`` when it is a count, else 0 (then the table says so)."""
    try:
        val = read_study(study_dir)["config"]["data"]["target"]["val_size"]
    except (KeyError, TypeError):
        return 0
    return int(val) if isinstance(val, int) and not isinstance(val, bool) else 0


def test_labels(study_dir: Path) -> bytes | None:
    """The study's test labels, encoded like the records' predictions (``study.json``), or None
    for a study made before they were kept: its intervals then count seed noise only."""
    labels = read_study(study_dir).get("test_labels")
    return labels.encode() if isinstance(labels, str) and labels else None


# Test metrics whose runs x examples matrix the crossed estimator can take (stats module doc).
PER_EXAMPLE = {"test_acc": lambda truth, predicted: (predicted == truth).astype(float),
               "test_f1": stats.macro_f1_contributions}


def frame(records: list[dict[str, Any]], metric: str, legacy_val: int = 0,
          labels: bytes | None = None) -> pd.DataFrame:
    """One row per record. With the test labels and the recorded predictions, ``correct``
    holds the per-example scores whose mean is the metric (0/1 for accuracy, the linearised
    contributions for macro-F1), else None."""
    rows = []
    truth = None if labels is None else np.frombuffer(labels, dtype=np.uint8)
    for r in records:
        if metric not in r["metrics"]:
            continue
        labels_used = r.get("labels") or {"total": r["n_train"] + legacy_val}
        predicted = r.get("test_predictions")
        correct = None
        if truth is not None and metric in PER_EXAMPLE and predicted and len(predicted) == len(truth):
            correct = PER_EXAMPLE[metric](truth, np.frombuffer(predicted.encode(), dtype=np.uint8))
        source = r.get("source_seed")
        rows.append({"strategy": r["strategy"], "size": str(r["size"]), "n_train": r["n_train"],
                     "labels": int(labels_used.get("total", r["n_train"])),
                     "protocol": r.get("protocol", LEGACY),
                     "flags": ",".join(r.get("flags") or []),
                     "tuning_study": (r.get("hpo") or {}).get("study_name"),
                     "seed": int(r["seed"]), "source_seed": None if source is None else int(source),
                     "tuning": int(r.get("tuning") or 0),
                     "score": float(r["metrics"][metric]), "correct": correct,
                     "fit_seconds": float(r.get("seconds") or 0.0),
                     "select_seconds": float((r.get("selection") or {}).get("seconds") or 0.0),
                     "steps": r.get("steps"), "trainable": r.get("trainable"),
                     **_memory(r.get("memory")),
                     "at_cap": "at_cap" in (r.get("flags") or []),
                     "in_steps": r.get("length_unit") == "steps",
                     "tune_seconds": float((r.get("hpo") or {}).get("seconds") or 0.0),
                     "compute_seconds": compute_seconds(r),
                     "trials": (r.get("hpo") or {}).get("n_trials"),
                     "pruned": (r.get("hpo") or {}).get("n_pruned"),
                     "device": r.get("device", ""),
                     "transfers": (r.get("strategy_spec") or {}).get("transfer")
                     in ("network", "vectors")})
    if not rows:
        raise BenchError(f"no record holds the metric {metric!r}")
    return pd.DataFrame(rows)


def _memory(memory: dict[str, Any] | None) -> dict[str, Any]:
    """A fit's peak memory in MiB and what the fit added to the process (NaN: not measured,
    e.g. a record made before fits measured it)."""
    if not memory:
        return {"peak_mib": math.nan, "added_mib": math.nan, "memory_kind": None}
    return {"peak_mib": float(memory["peak_mib"]),
            "added_mib": float(memory["peak_mib"]) - float(memory["start_mib"]),
            "memory_kind": memory["kind"]}


def per_seed(g: pd.DataFrame) -> tuple[pd.Series, np.ndarray | None]:
    """A cell's per-seed scores (runs of one seed, over source models and tuning replicates,
    averaged) and, when every run has per-example scores, the seeds x examples matrix."""
    means = g.groupby("seed")["score"].mean().sort_index()
    if g["correct"].isna().any():
        return means, None
    matrix = np.stack([np.mean(np.stack(list(runs)), axis=0)
                       for _, runs in g.groupby("seed")["correct"]])
    return means, matrix


def estimate(means: pd.Series, matrix: np.ndarray | None) -> stats.Estimate:
    """The one interval estimator for a cell (seeds x test examples, or seed means only), from
    :func:`per_seed`."""
    return stats.seed_estimate(means.to_numpy(), bounded=True) if matrix is None else \
        stats.crossed_estimate(matrix, bounded=True)


def paired(a: pd.DataFrame, b: pd.DataFrame) -> stats.Estimate | None:
    """``a`` minus ``b`` over the seeds both ran (same training subsets) and the same test
    examples: one paired analysis gives the CI, the p-value and so the verdict."""
    ma, xa = per_seed(a)
    mb, xb = per_seed(b)
    seeds = sorted(set(ma.index) & set(mb.index))
    if not seeds:
        return None
    if xa is None or xb is None:
        return stats.seed_estimate((ma.loc[seeds] - mb.loc[seeds]).to_numpy())
    ia, ib = ([list(m.index).index(s) for s in seeds] for m in (ma, mb))
    return stats.crossed_estimate(xa[ia] - xb[ib])


def interval_note(df: pd.DataFrame) -> str:
    """What the intervals count, stated under every table that shows them."""
    test = df["correct"].notna().all()
    varied = [axis for axis, col in (("source models", "source_seed"), ("tuning replicates", "tuning"))
              if df[col].nunique(dropna=True) > 1]
    what = ("counts seed noise and the test sample's own noise (two-way random effects, seeds x "
            "test examples; a cell's interval on the logit scale, so inside [0, 1]; a "
            "difference's on the linear scale)" if test else
            "counts seed noise only (t-interval over seed means, a cell's on the logit scale: "
            "these records have no stored test predictions, or the metric is not a test "
            "metric, so the test sample's noise is not counted)")
    extra = ""
    if "source models" in varied:
        extra = ("; conditional on the study's source models: they are averaged within each "
                 "seed, so a new source model's own spread (variance.md) is not in the interval")
    elif varied:
        extra = "; tuning replicates are averaged within each seed (their spread: variance.md)"
    return (f"{LEVEL_PCT}% confidence interval for the population mean (the average over new "
            f"seeds and new test sets drawn like this one; not the range of a single run): "
            f"{what}{extra}.")


def majority_floor(df: pd.DataFrame) -> dict[tuple[str, int], float]:
    """(size, seed) -> what always answering the majority class of that seed's labels scored."""
    floor = df[df["strategy"] == MAJORITY]
    return {(size, int(seed)): float(score)
            for size, seed, score in zip(floor["size"], floor["seed"], floor["score"])}


def collapsed(g: pd.DataFrame, floor: dict[tuple[str, int], float]) -> pd.Series:
    """Per run of one cell: did it collapse (score <= majority + COLLAPSE_MARGIN)?"""
    return pd.Series([(size, int(seed)) in floor and score <= floor[(size, int(seed))]
                      + COLLAPSE_MARGIN
                      for size, seed, score in zip(g["size"], g["seed"], g["score"])],
                     index=g.index, dtype=bool)


def cell_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per (strategy, size): mean, std over seeds, CI, seeds, collapsed runs, the best
    and the cells not distinguishable from it, and the budget.

    Not distinguishable: the paired test against the size's best mean (as in the gains, Holm
    over the size's comparisons with the best) does not reject at ``ALPHA``. That is "could not
    tell", not "equal": ``detectable`` per size says how small a difference it could tell."""
    rows, groups = [], {}
    floor = majority_floor(df)
    for (strategy, size), g in df.groupby(["strategy", "size"], sort=False):
        groups[(strategy, size)] = g
        means, matrix = per_seed(g)
        est = estimate(means, matrix)
        down = collapsed(g, floor) if strategy != MAJORITY else pd.Series(False, index=g.index)
        kept = g[~down]
        clean = estimate(*per_seed(kept)) if down.any() and kept["seed"].nunique() else None
        # One tuning per replicate (current protocols) or one shared by all seeds (older studies).
        tunings = g.drop_duplicates("tuning_study") if g["tuning_study"].notna().all() else g[:1]
        rows.append({"strategy": strategy, "size": size, "n_train": int(g["n_train"].iloc[0]),
                     "labels": int(g["labels"].iloc[0]),
                     "seeds": len(means), "runs": len(g), "mean": means.mean(),
                     "std": means.std(ddof=1) if len(means) > 1 else math.nan,
                     "ci_low": est.low, "ci_high": est.high,
                     "collapsed": int(down.sum()),
                     "mean_without_collapsed": math.nan if clean is None else clean.mean,
                     "ci_low_without_collapsed": math.nan if clean is None else clean.low,
                     "ci_high_without_collapsed": math.nan if clean is None else clean.high,
                     "trials": tunings["trials"].sum(min_count=1),
                     "pruned": tunings["pruned"].sum(min_count=1),
                     "minutes": (tunings["tune_seconds"].sum() + g["fit_seconds"].sum()) / 60,
                     "flagged": int((g["flags"] != "").sum()),
                     "device": g["device"].iloc[0]})
    cells = pd.DataFrame(rows)
    cells["best"] = False
    cells["indistinguishable"] = False
    cells["p_vs_best"] = math.nan
    cells["detectable_first"] = math.nan   # at Holm's first step, alpha / m
    cells["detectable_last"] = math.nan    # at its last, alpha
    for size, g in cells.groupby("size"):
        # A cell of one seed (a study still running) has no seed variance to test with: it
        # is neither the best nor compared, so one lucky run cannot outrank five.
        g = g[g["seeds"] >= 2] if (g["seeds"] >= 2).any() else g
        best = g["mean"].idxmax()
        cells.loc[best, "best"] = True
        others = [i for i in g.index if i != best]
        ref = groups[(cells.loc[best, "strategy"], size)]
        pairs = [paired(groups[(cells.loc[i, "strategy"], size)], ref) for i in others]
        ps = [math.nan if est is None else est.p for est in pairs]
        for i, p in zip(others, stats.holm(ps)):
            cells.loc[i, "p_vs_best"] = p
            cells.loc[i, "indistinguishable"] = bool(not math.isnan(p) and p >= ALPHA)
        tested = [e for e in pairs if e is not None and not math.isnan(e.p)]
        if tested:  # the median over the size's comparisons of each one's own value
            for col, alpha in (("detectable_first", ALPHA / len(tested)),
                               ("detectable_last", ALPHA)):
                cells.loc[g.index, col] = float(np.median([e.detectable(alpha) for e in tested]))
    rank = {s: i for i, s in enumerate(order)}
    cells["_o"] = [(size_order(s), rank[st]) for s, st in zip(cells["size"], cells["strategy"])]
    return cells.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def detectable_line(cells: pd.DataFrame) -> str:
    """Per size, the smallest difference from the best the paired test detects with 80% power."""
    parts = []
    for size in sorted(cells["size"].unique(), key=size_order):
        c = cells[cells["size"] == size].iloc[0]
        if math.isnan(c["detectable_first"]):
            continue
        m = int(cells[(cells["size"] == size)]["p_vs_best"].notna().sum())
        parts.append(f"n={size}: {c['detectable_first']:.3f} at Holm's first step "
                     f"(alpha/{m}), {c['detectable_last']:.3f} at its last (alpha)")
    if not parts:
        return ""
    return (f"Smallest difference from the best that the paired test detects with "
            f"{round(100 * stats.POWER)}% power (the median over the size's comparisons with "
            f"the best, each from its own variance parts): " + "; ".join(parts)
            + ". A smaller gap marked not distinguishable "
            "is one these seeds cannot resolve, not evidence of equality.")


def collapse_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells with collapsed runs: the interval with every run, and without the collapsed ones."""
    def without(c: pd.Series) -> str:
        if math.isnan(c["mean_without_collapsed"]):
            return "- (every run collapsed)"
        if math.isnan(c["ci_low_without_collapsed"]):
            return f"{c['mean_without_collapsed']:.3f} (one seed left: no interval)"
        return (f"{c['mean_without_collapsed']:.3f} [{c['ci_low_without_collapsed']:.3f}, "
                f"{c['ci_high_without_collapsed']:.3f}]")

    hit = cells[cells["collapsed"] > 0]
    return pd.DataFrame([{
        "strategy": c["strategy"], "size": c["size"], "collapsed": f"{c['collapsed']}/{c['runs']}",
        "mean [CI], every run": f"{c['mean']:.3f} {ci_text(c['ci_low'], c['ci_high'], c['seeds'])}",
        "mean [CI], without them": without(c)} for _, c in hit.iterrows()])


def _wide(cells: pd.DataFrame, order: list[str], fmt) -> pd.DataFrame:
    sizes = sorted(cells["size"].unique(), key=size_order)
    out = pd.DataFrame(index=order, columns=sizes, dtype=object).fillna("")
    for _, c in cells.iterrows():
        out.loc[c["strategy"], c["size"]] = fmt(c)
    n_of = cells.groupby("size")["n_train"].first()
    out.columns = [f"n={n_of[s]}" if s == "all" else f"n={s}" for s in sizes]
    out.index.name = "strategy"
    return out


NEGATIVE = "†"  # significantly worse than scratch: negative transfer


def ci_text(low: float, high: float, seeds: Any = None, signed: bool = False) -> str:
    """``[low, high]``, or what a reader should read where no interval exists (one seed and no
    test-set matrix): never ``[nan, nan]``."""
    if pd.isna(low) or pd.isna(high):
        return "[n/a: 1 seed]" if seeds == 1 else "[n/a]"
    return f"[{low:+.3f}, {high:+.3f}]" if signed else f"[{low:.3f}, {high:.3f}]"


def _spread(c: pd.Series) -> str:
    return "" if pd.isna(c["std"]) else f" ± {c['std']:.3f}"


def _md_cell(c: pd.Series) -> str:
    mean = f"{c['mean']:.3f}"
    mean = f"**{mean}**" if c["best"] else f"*{mean}*" if c["indistinguishable"] else mean
    mark = NEGATIVE if c.get("negative") else ""
    down = f"; {c['collapsed']} collapsed" if c["collapsed"] else ""
    return (f"{mean}{mark}{_spread(c)} {ci_text(c['ci_low'], c['ci_high'], c['seeds'])} "
            f"({c['seeds']}{down})")


def _tex_cell(c: pd.Series) -> str:
    mean = f"{c['mean']:.3f}"
    mean = rf"\textbf{{{mean}}}" if c["best"] else rf"\underline{{{mean}}}" if c["indistinguishable"] \
        else mean
    spread = "" if pd.isna(c["std"]) else rf" $\pm$ {c['std']:.3f}"
    return rf"{mean}{spread} \scriptsize{ci_text(c['ci_low'], c['ci_high'], c['seeds'])}"


def _budget_cell(c: pd.Series) -> str:
    unit = "GPU" if "nvidia" in str(c["device"]).lower() or "cuda" in str(c["device"]).lower() \
        else "CPU"
    if c["trials"] is None or pd.isna(c["trials"]) or c["trials"] == 0:
        # the TF-IDF baseline is tuned completely, C over its whole grid, in every study
        how = ("C on its grid" if c.get("strategy") == "tfidf_logreg" else
               "nothing to tune" if c.get("strategy") == "majority" else "untuned")
        return f"{how}, {c['minutes']:.1f} {unit}-min"
    return f"{int(c['trials'])} trials ({int(c['pruned'])} pruned), {c['minutes']:.1f} {unit}-min"


def gains_table(df: pd.DataFrame, order: list[str], reference: str = REFERENCE) -> pd.DataFrame:
    """Each strategy minus ``reference`` per size over the seeds both have (not the majority
    floor: it would only enlarge the family the correction covers)."""
    rows = []
    ref = df[df["strategy"] == reference]
    for strategy in order:
        if strategy in (reference, MAJORITY):
            continue
        for size in sorted(df["size"].unique(), key=size_order):
            a = df[(df["strategy"] == strategy) & (df["size"] == size)]
            b = ref[ref["size"] == size]
            est = paired(a, b) if len(a) and len(b) else None
            if est is None:
                continue
            rows.append({"strategy": strategy, "size": size, "pairs": est.seeds,
                         "gain": est.mean, "ci_low": est.low, "ci_high": est.high, "p": est.p,
                         "test_noise": est.counts_test_noise})
    gains = pd.DataFrame(rows)
    if gains.empty:
        return gains
    gains["p_holm"] = stats.holm(gains["p"].tolist())
    gains["verdict"] = [verdict(p, g) for p, g in zip(gains["p_holm"], gains["gain"])]
    return gains


def verdict(p_holm: float, difference: float, words: tuple[str, str] = ("better", "worse")) -> str:
    """A paired comparison's verdict at ``ALPHA`` after Holm's correction."""
    if math.isnan(p_holm):
        return "too few seeds"
    if p_holm < ALPHA:
        return words[0] if difference > 0 else words[1]
    return "no significant difference"


def negative_transfer(df: pd.DataFrame, order: list[str]) -> dict[tuple[str, str], pd.Series]:
    """(strategy, size) cells of transferring strategies significantly worse than scratch after
    Holm over the gains table: negative transfer. Their gains rows, by cell."""
    if REFERENCE not in set(df["strategy"]):
        return {}
    gains = gains_table(df, order)
    if gains.empty:
        return {}
    transfers = set(df.loc[df["transfers"], "strategy"])
    return {(r["strategy"], r["size"]): r for _, r in gains.iterrows()
            if r["verdict"] == "worse" and r["strategy"] in transfers}


def _multiple(need: float | None, sizes: list[int], labels: int, edge: str) -> str:
    """A label multiple for one end of its interval: ``edge`` 'low' or 'high' or 'point'."""
    if need is None:
        return f"> {sizes[-1] / labels:.1f}x"
    if need <= sizes[0]:
        ratio = sizes[0] / labels
        return "<= 1x" if ratio <= 1 else f"<= {ratio:.1f}x"
    ratio = need / labels
    return "<= 1x" if edge == "low" and ratio <= 1 else f"{ratio:.1f}x"


def efficiency_table(cells: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Labels scratch needs to match each cell, and that as a multiple of the cell's labels,
    with an interval: scratch's mean curve inverted at the cell's CI ends (scratch's own curve
    taken as known). A lower end at or below 1x is shown as "<= 1x": no saving is claimed."""
    ref = cells[cells["strategy"] == REFERENCE].sort_values("labels")
    if len(ref) < 2:
        return pd.DataFrame()
    # Every label counts, validation labels included (under fixed_val a cell of n uses n + val).
    sizes, scores = ref["labels"].tolist(), ref["mean"].tolist()
    rows = []
    for _, c in cells.iterrows():
        if c["strategy"] == REFERENCE:
            continue
        need = stats.labels_needed(sizes, scores, c["mean"])
        if need is None:
            text = f"> {sizes[-1]} (more than measured)"
        elif need <= sizes[0] and c["labels"] >= sizes[0]:
            text = f"<= {sizes[0]}"
        else:
            text = f"{need:.0f}"
        ratio = _multiple(need, sizes, c["labels"], "point")
        if not (math.isnan(c["ci_low"]) or math.isnan(c["ci_high"])):
            low = _multiple(stats.labels_needed(sizes, scores, c["ci_low"]), sizes, c["labels"],
                            "low")
            high = _multiple(stats.labels_needed(sizes, scores, c["ci_high"]), sizes,
                             c["labels"], "high")
            ratio = f"{ratio} [{low}, {high}]"
        rows.append({"strategy": c["strategy"], "size": c["size"], "labels used": c["labels"],
                     "score": round(c["mean"], 4), "scratch labels to match": text,
                     "label multiple [95% CI]": ratio})
    return pd.DataFrame(rows)


def protocol_line(df: pd.DataFrame) -> str:
    """What every table must say: the protocol and the labels a cell really used."""
    parts = []
    for protocol, g in df.groupby("protocol", sort=True):
        extra = (g["labels"] - g["n_train"]).max()
        if protocol == LEGACY and extra == 0:
            used = "n + the fixed validation split (its size not recorded)"
        else:
            used = "n (training and selection)" if extra == 0 else f"n + {extra} validation"
        parts.append(f"Protocol {protocol}: labels per cell = {used}.")
    return " ".join(parts)


def tuning_gain_table(df: pd.DataFrame, defaults: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """What tuning bought: each tuned cell minus the same replicates' final fits at the
    strategy's untuned default (``defaults.jsonl``), paired over seeds and test examples as
    gains are, Holm over the table. The suite's own hyperparameter question: does tuning
    matter for this strategy at this budget?"""
    rows = []
    for strategy in order:
        for size in sorted(defaults["size"].unique(), key=size_order):
            a = df[(df["strategy"] == strategy) & (df["size"] == size)]
            b = defaults[(defaults["strategy"] == strategy) & (defaults["size"] == size)]
            if a.empty or b.empty:
                continue
            a = a[a["seed"].isin(set(b["seed"]))]
            est = paired(a, b)
            if est is None:
                continue
            kept = int(b["default_is_best"].sum())
            rows.append({"strategy": strategy, "size": size, "pairs": est.seeds,
                         "tuned": float(a["score"].mean()), "default": float(b["score"].mean()),
                         "gain": est.mean, "ci_low": est.low, "ci_high": est.high, "p": est.p,
                         "default_kept": kept,
                         # how much searching there was to buy anything with
                         "trials": int(a["trials"].fillna(0).sum()),
                         "pruned": int(a["pruned"].fillna(0).sum()),
                         # settings evaluated on every fold, per tuning: what was compared
                         "full_per_tuning": float((a["trials"].fillna(0)
                                                   - a["pruned"].fillna(0)).median())})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = stats.holm(out["p"].tolist())
    out["verdict"] = [verdict(p, g, ("tuning helped", "tuning hurt"))
                      for p, g in zip(out["p_holm"], out["gain"])]
    return out


def tuning_gain_files(study_dir: Path, df: pd.DataFrame, order: list[str], name: str,
                      metric: str) -> dict[str, str]:
    path = study_dir / DEFAULTS
    if not path.exists():
        return {}
    records = load_records(path)
    if not records:
        return {}
    defaults = frame(records, metric, legacy_validation(study_dir), test_labels(study_dir))
    defaults["default_is_best"] = [bool(r.get("default_is_best")) for r in records
                                   if metric in r["metrics"]]
    table = tuning_gain_table(df, defaults, order)
    if table.empty:
        return {}
    shown = pd.DataFrame({
        "strategy": table["strategy"], "size": table["size"], "seeds": table["pairs"],
        "tuned": table["tuned"].map(lambda v: f"{v:.3f}"),
        "default": table["default"].map(lambda v: f"{v:.3f}"),
        "tuning bought": table["gain"].map(lambda v: f"{v:+.3f}"),
        "95% CI": [ci_text(lo, hi, signed=True) for lo, hi in zip(table["ci_low"], table["ci_high"])],
        "p (Holm)": table["p_holm"].map(_fmt_p),
        "default kept": [f"{k}/{n}" for k, n in zip(table["default_kept"], table["pairs"])],
        "trials (pruned)": [f"{t} ({p})" for t, p in zip(table["trials"], table["pruned"])],
        "settings on every fold": [f"{t - p} ({m:g} a tuning)" for t, p, m in zip(
            table["trials"], table["pruned"], table["full_per_tuning"])],
        "verdict": table["verdict"]})
    return {
        "tuning_gain.md": (
            f"{name}: what tuning bought, {metric} of the tuned fit minus the untuned default's "
            "on the same replicates\n\n" + protocol_line(df) + "\n\n"
            + shown.to_markdown(index=False, disable_numparse=True)
            + "\n\nEvery tuning started at the strategy's default setting (its first trial), so "
            "the tuned setting is never worse on the selection score; on test it can be. "
            "'default kept': replicates whose tuning chose the default itself (the same fit). "
            "'trials (pruned)': trials over these replicates, the default's included, and how "
            "many of them the pruner stopped before their other folds ran; 'settings on every "
            "fold': the trials that were not, in all and the median per tuning (the settings "
            "each tuning really compared). Where few settings were compared, a difference not "
            "found is what this search bought, not what tuning could. "
            "Paired as gains.md (seeds x test examples); Holm over this table's rows, "
            f"alpha {ALPHA}.\n"),
        "tuning_gain.csv": table.round(6).to_csv(index=False, lineterminator="\n"),
    }


MEMORY_KINDS = {"rss": "the process's resident set on the CPU (Linux high-water mark)",
                "cuda": "torch's allocations on the GPU"}


def cost_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per cell: accuracy beside what it cost (medians over replicates): trainable weights,
    the final fit's optimizer steps, seconds and peak memory (with what the fit itself added),
    selection seconds (every trial's CV folds), and the share of fits that ended at their
    hard round limit."""
    neural = df[df["steps"].notna()]
    rows = []
    for (strategy, size), g in neural.groupby(["strategy", "size"], sort=False):
        rows.append({"strategy": strategy, "size": size, "runs": len(g),
                     "mean": float(g["score"].mean()),
                     "trainable weights": int(g["trainable"].median()),
                     "steps (final fit)": int(g["steps"].median()),
                     "final fit s": float(g["fit_seconds"].median()),
                     "peak MiB": float(g["peak_mib"].median()),
                     "added MiB": float(g["added_mib"].median()),
                     # a tuning's seconds hold every trial's folds; untuned: the one selection
                     "selection s": float(g["tune_seconds"].where(g["tune_seconds"] > 0,
                                                                  g["select_seconds"]).median()),
                     "at cap": f"{int(g['at_cap'].sum())}/{len(g)}"})
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    largest = out["trainable weights"].max()
    out.insert(5, "% of largest", (100 * out["trainable weights"] / largest).round(3))
    rank = {s: i for i, s in enumerate(order)}
    out["_o"] = [(size_order(z), rank.get(s, 99)) for z, s in zip(out["size"], out["strategy"])]
    return out.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def _fmt_p(p: float) -> str:
    return "n/a" if math.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}"


def _gains_files(df: pd.DataFrame, order: list[str], reference: str, name: str, metric: str,
                 stem: str) -> dict[str, str]:
    """``<stem>.md`` / ``.csv``: the gains table with its protocol line."""
    gains = gains_table(df, order, reference)
    if gains.empty:
        return {}
    shown = pd.DataFrame({
        "strategy": gains["strategy"], "size": gains["size"], "seeds": gains["pairs"],
        f"gain vs {reference}": gains["gain"].map(lambda v: f"{v:+.3f}"),
        "95% CI": [ci_text(lo, hi, signed=True) for lo, hi in zip(gains["ci_low"], gains["ci_high"])],
        "p": gains["p"].map(_fmt_p), "p (Holm)": gains["p_holm"].map(_fmt_p),
        "verdict": gains["verdict"]})
    return {
        f"{stem}.md": (
            f"{name}: {metric} gain over {reference}, matched seeds\n\n" + protocol_line(df) + "\n\n"
            + shown.to_markdown(index=False, disable_numparse=True)
            + f"\n\nOne paired analysis per row: the differences over matched seeds (the same "
            f"training subsets) and the same test examples give the CI and p together, so the CI "
            f"excludes 0 exactly when p < {ALPHA}. " + interval_note(df)
            + f" p (Holm): Holm-corrected over all {len(gains)} comparisons of this table; the "
            f"verdict is at alpha = {ALPHA} after that correction.\n"),
        f"{stem}.csv": gains.round(6).to_csv(index=False, lineterminator="\n"),
    }


@dataclass
class StudyTables:
    """One study folder read once: its records, the per-replicate frame, the row order and the
    cell statistics every table, the side-by-side and the figures are made from."""
    study_dir: Path
    metric: str
    records: list[dict[str, Any]]
    df: pd.DataFrame
    order: list[str]
    cells: pd.DataFrame

    @property
    def name(self) -> str:
        return self.study_dir.name


def load(study_dir: Path, metric: str = DEFAULT_METRIC) -> StudyTables:
    """The one pipeline from a study folder to its cells: records -> frame -> order -> cells."""
    records = load_records(study_dir / RECORDS)
    if not records:
        raise BenchError(f"{study_dir} has no records ({RECORDS}); run a sweep first")
    df = frame(records, metric, legacy_validation(study_dir), test_labels(study_dir))
    order = strategy_order(df["strategy"], records, study_sources(study_dir))
    return StudyTables(study_dir, metric, records, df, order, cell_table(df, order))


def table_files(t: StudyTables, negative: dict) -> dict[str, str]:
    """table.md (with its notes: detectable gaps, collapsed runs, flagged fits), .csv, .tex."""
    df, order, cells, name, metric = t.df, t.order, t.cells, t.name, t.metric
    cells = cells.assign(negative=[(st, sz) in negative
                                   for st, sz in zip(cells["strategy"], cells["size"])])
    wide = _wide(cells, order, _md_cell)
    seeds = sorted(df["seed"].unique())
    md = (
        f"{name}: {metric}, mean ± std over seeds [{LEVEL_PCT}% CI of the population mean] "
        f"(seeds; collapsed runs)\n\n"
        + protocol_line(df) + "\n\n"
        + wide.to_markdown(disable_numparse=True) + "\n\n"
        f"Best mean per size in **bold**; *italic* = {INDISTINGUISHABLE}: the paired test "
        f"against it (as in gains.md, Holm over the size's comparisons with the best, alpha "
        f"{ALPHA}) does not reject. Seeds {', '.join(map(str, seeds))}. " + interval_note(df)
        + (f" `{MAJORITY}`: always the majority class of the n labels." if MAJORITY in order
           else "")
        + (f" Collapsed: runs scoring at most {COLLAPSE_MARGIN} above `{MAJORITY}` on the "
           f"same seed (or below it); counted beside the seeds, each such cell's interval "
           f"with and without them below." if MAJORITY in order else "")
        + (f" {NEGATIVE} negative transfer: significantly worse than {REFERENCE} (gains.md, "
           f"Holm), listed in negative_transfer.md." if negative else "") + "\n")
    detect = detectable_line(cells)
    if detect:
        md += "\n" + detect + "\n"
    collapses = collapse_table(cells)
    if not collapses.empty:
        md += ("\nCells with collapsed runs (the mean and its interval read "
               "differently without them):\n\n"
               + collapses.to_markdown(index=False, disable_numparse=True) + "\n")
    flags = flags_table(df)
    if not flags.empty:
        steps = ("; for fits counted in steps, the longest candidate length won"
                 if "in_steps" in df and df["in_steps"].any() else "")
        md += ("\nFlagged fits (at_cap: best held-out score at the last round "
               f"allowed, still improving{steps}; below_majority: best held-out accuracy "
               "under the majority-class rate), see flags.md: "
               + "; ".join(f"{r.strategy} n={r.size}: {r.flags} ({r.seeds})"
                           for r in flags.itertuples()) + "\n")
    csv = cells.drop(columns="negative").assign(
        **{k: cells[k].round(6) for k in ("mean", "std", "ci_low", "ci_high", "p_vs_best",
                                          "mean_without_collapsed", "ci_low_without_collapsed",
                                          "ci_high_without_collapsed", "detectable_first",
                                          "detectable_last")},
        minutes=cells["minutes"].round(2))
    tex = _wide(cells, order, _tex_cell)
    tex.index = [s.replace("_", r"\_") for s in tex.index]
    tex.columns = [c.replace("n=", "$n=") + "$" for c in tex.columns]
    latex = tex.style.to_latex(
        hrules=True, column_format="l" + "c" * tex.shape[1],
        caption=f"{name.replace('_', ' ')}: {metric.replace('_', ' ')}, mean $\\pm$ std over "
                f"{len(seeds)} seeds, {LEVEL_PCT}\\% CI of the population mean; best in bold, not "
                "distinguishable from it (paired test, Holm) underlined.")
    return {"table.md": md, "table.csv": csv.to_csv(index=False, lineterminator="\n"),
            "table.tex": latex}


def _page(title: str, table: pd.DataFrame, note: str, df: pd.DataFrame | None = None) -> str:
    """A report page: its title, the protocol line (when ``df`` is given), the table, a note."""
    return (f"{title}\n\n" + ("" if df is None else protocol_line(df) + "\n\n")
            + table.to_markdown(index=False, disable_numparse=True) + note)


def flags_files(t: StudyTables) -> dict[str, str]:
    flags = flags_table(t.df)
    if flags.empty:
        return {}
    return {"flags.md": (f"{t.name}: flagged fits\n\n"
                         + flags.to_markdown(index=False, disable_numparse=True) + "\n")}


def budget_files(t: StudyTables) -> dict[str, str]:
    return {"budget.md": (f"{t.name}: tuning and training budget per cell\n\n"
                          + _wide(t.cells, t.order, _budget_cell).to_markdown(disable_numparse=True)
                          + "\n")}


def gains_files(t: StudyTables, against: Iterable[str]) -> dict[str, str]:
    """gains.md against scratch (when the study has it), gains_vs_X.md for each ``against``."""
    files: dict[str, str] = {}
    for reference in dict.fromkeys((REFERENCE, *against)):
        if reference not in t.order:
            if reference == REFERENCE:
                continue  # a study without scratch simply has no gains.md
            raise BenchError(f"--against {reference}: {t.name} has no records of that strategy; "
                             f"use one of {', '.join(t.order)}")
        stem = "gains" if reference == REFERENCE else f"gains_vs_{reference}"
        files.update(_gains_files(t.df, t.order, reference, t.name, t.metric, stem))
    return files


def negative_transfer_files(t: StudyTables, negative: dict) -> dict[str, str]:
    if not negative:  # only when there is some: older studies' reports stay as they were
        return {}
    listed = pd.DataFrame([{"strategy": st, "size": sz, "gain vs scratch": f"{r['gain']:+.3f}",
                            "95% CI": f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]",
                            "p (Holm)": _fmt_p(r["p_holm"])}
                           for (st, sz), r in negative.items()])
    return {"negative_transfer.md": _page(
        f"{t.name}: negative transfer: cells significantly worse than {REFERENCE}", listed,
        f"\n\nFrom gains.md: Holm over all its comparisons, alpha {ALPHA}.\n", t.df)}


def transferability_files(t: StudyTables) -> dict[str, str]:
    estimates_path = t.study_dir / ESTIMATES
    if not estimates_path.exists() or REFERENCE not in t.order:
        return {}
    from bench.analysis import source_choice

    estimates = source_choice.estimates_frame(estimates_path)
    result = source_choice.analyse(t.df, estimates, paired) if not estimates.empty else None
    # no source table yet: estimates are recorded before any fine-tuning, so a report made
    # before the first transferring strategy's records (a parallel job's) has none
    if result is None or result["sources"].empty:
        return {}
    files = {"transferability.md": source_choice.markdown(result, t.name, t.metric),
             "transferability.csv": result["sources"].round(6).to_csv(
                 index=False, lineterminator="\n")}
    if not result["estimators"].empty:
        files["transferability_agreement.csv"] = result["estimators"].round(6).to_csv(
            index=False, lineterminator="\n")
    return files


def efficiency_files(t: StudyTables) -> dict[str, str]:
    eff = efficiency_table(t.cells[t.cells["strategy"] != MAJORITY], t.order)
    if eff.empty:
        return {}
    return {"efficiency.md": _page(
        f"{t.name}: target labels `{REFERENCE}` needs to match each strategy", eff,
        f"\n\nFrom {REFERENCE}'s mean learning curve, interpolated linearly in log size; "
        "'more than measured' when it never reaches the score. The multiple's interval "
        "inverts that curve at the ends of the cell's confidence interval (scratch's own "
        "noise is not counted); a lower end at or below 1x reads '<= 1x': no label saving "
        "is claimed.\n", t.df),
        "efficiency.csv": eff.to_csv(index=False, lineterminator="\n")}


def variance_files(t: StudyTables) -> dict[str, str]:
    variance = variance_table(t.df, t.order)
    if variance.empty:
        return {}
    return {"variance.md": _page(
        f"{t.name}: where the spread of one run's {t.metric} comes from",
        variance_markdown(variance), "\n\n" + VARIANCE_NOTE + "\n", t.df),
        "variance.csv": variance.to_csv(index=False, lineterminator="\n")}


def edge_files(t: StudyTables) -> dict[str, str]:
    edges = edge_table(t.records, t.study_dir)
    if edges.empty:
        return {}
    return {"edges.md": _page(
        f"{t.name}: tuned values at the edge of their search range", edges,
        f"\n\nA best value within {EDGE:.0%} of the range's width (log width for log "
        "ranges) of an end: the range may have bound the search; widen it and rerun.\n")}


def cost_files(t: StudyTables) -> dict[str, str]:
    df = t.df
    cost = cost_table(df, t.order)
    if cost.empty:
        return {}
    capped = int(df.loc[df["steps"].notna(), "at_cap"].sum())
    shown = cost.assign(**{"mean": cost["mean"].map(lambda v: f"{v:.3f}"),
                           "final fit s": cost["final fit s"].map(lambda v: f"{v:.1f}"),
                           "selection s": cost["selection s"].map(lambda v: f"{v:.0f}"),
                           **{c: cost[c].map(lambda v: "-" if math.isnan(v) else f"{v:,.0f}")
                              for c in ("peak MiB", "added MiB")}})
    kinds = sorted(set(df["memory_kind"].dropna()))
    memory = ("" if not kinds else " Peak MiB: the final fit's training peak, "
              + " and ".join(MEMORY_KINDS[k] for k in kinds)
              + "; added MiB: that peak less the process's memory when the fit began (what "
              "the fit itself needed beside the loaded weights and data). '-': not measured "
              "(a record from before fits measured memory).")
    spent = df["compute_seconds"]
    by_size = spent.groupby(df["size"]).sum()
    compute = (f" Compute in these records: {duration_text(spent.sum())} ("
               + ", ".join(f"n={z}: {duration_text(by_size[z])}"
                           for z in sorted(by_size.index, key=size_order))
               + "), every tuning's trials, every selection and every final fit summed (the "
               "untuned defaults' extra final fits and data preparation not counted): a lower "
               "bound on the study's wall time on its device.")
    return {"cost.md": (
        f"{t.name}: what each strategy costs, beside its {t.metric}\n\n" + protocol_line(df)
        + "\n\n" + shown.to_markdown(index=False, disable_numparse=True)
        + f"\n\nMedians over the cell's replicates; device: "
        f"{', '.join(sorted(set(df['device'])))}. {capped} of "
        f"{int(df['steps'].notna().sum())} neural final fits carry at_cap (still improving "
        "at the last round allowed). Selection s: every trial's folds, the default's "
        f"included.{memory}{compute}\n"),
        "cost.csv": cost.round(6).to_csv(index=False, lineterminator="\n")}


def tuning_files(t: StudyTables) -> dict[str, str]:
    tuning = hpo_table(t.records)
    if tuning.empty:
        return {}
    saved = 1 - tuning["epochs run"].sum() / max(tuning["epochs unpruned (est.)"].sum(), 1)
    return {"tuning.md": (f"{t.name}: tuning per cell (pruning saved about {saved:.0%} of "
                          "trial-epochs); seed: the replicate tuned on its own labels, or "
                          "all (one tuning shared by every seed)\n\n"
                          + tuning.to_markdown(index=False, disable_numparse=True) + "\n")}


def build(study_dir: Path, metric: str = "test_acc", against: Iterable[str] = ()) -> dict[str, str]:
    """All table files as {name: text}; deterministic given the records. Gains are always
    against ``scratch`` (when the study has it) and also against each strategy in ``against``."""
    t = load(study_dir, metric)
    negative = negative_transfer(t.df, t.order)
    return {**table_files(t, negative), **flags_files(t), **budget_files(t),
            **gains_files(t, against), **negative_transfer_files(t, negative),
            **transferability_files(t), **efficiency_files(t), **variance_files(t),
            **edge_files(t), **tuning_gain_files(study_dir, t.df, t.order, t.name, metric),
            **cost_files(t), **tuning_files(t)}


def side_by_side(study_dirs: Iterable[Path], metric: str = "test_acc") -> str:
    """One table of several studies, e.g. one study under two protocols: rows are strategies,
    columns (size, study) pairs, each cell mean [95% CI] (seeds); a header per study states its
    protocol and labels. Deterministic given the records."""
    dirs = [Path(d) for d in study_dirs]
    # A study is named by its folder, or by as much of its path as tells it from the others
    # (two runs of one study in two results folders must not overwrite each other's columns).
    labels = [d.name for d in dirs]
    if len(set(labels)) < len(labels):
        labels = [f"{d.parent.name}/{d.name}" for d in dirs]
    if len(set(labels)) < len(labels):
        labels = [str(d) for d in dirs]
    if len(set(labels)) < len(labels):
        raise BenchError("--side-by-side was given the same study twice")
    tables, lines, order, protocols, loaded = {}, [], [], [], []
    for d, label in zip(dirs, labels):
        t = load(d, metric)
        loaded.append(t)
        order += [n for n in t.order if n not in order]
        tables[label] = t.cells
        protocols.append(" + ".join(sorted(t.df["protocol"].unique())))
        lines.append(f"- `{label}`: {protocol_line(t.df)} {interval_note(t.df)}")
    # Columns are named by protocol when that tells the studies apart, else by study.
    if len(set(protocols)) == len(protocols):
        tables = dict(zip(protocols, tables.values()))
    sizes = sorted({s for t in tables.values() for s in t["size"]}, key=size_order)
    out = pd.DataFrame(index=order, dtype=object)
    for size in sizes:
        for name, cells in tables.items():
            col = f"n={size} {name}"
            out[col] = ""
            for _, c in cells[cells["size"] == size].iterrows():
                out.loc[c["strategy"], col] = (f"{c['mean']:.3f} "
                                               f"{ci_text(c['ci_low'], c['ci_high'], c['seeds'])} "
                                               f"({c['seeds']})")
    out.index.name = "strategy"
    return (f"{metric}, mean [{LEVEL_PCT}% CI of the mean] (seeds), side by side\n\n"
            + "\n".join(lines) + "\n\n" + out.to_markdown(disable_numparse=True) + "\n"
            + "".join(paired_across(loaded[0], t, label, labels[0])
                      for t, label in zip(loaded[1:], labels[1:])))


def unpaired_reason(a: Path, b: Path) -> str | None:
    """Why two studies' runs of one seed cannot be paired, or None when they can: a seed draws
    the same training subset only from the same target data, splits and split seed, and the
    per-example scores line up only on the same test texts."""
    sa, sb = read_study(a), read_study(b)
    ca, cb = (s.get("config", {}).get("data", {}) for s in (sa, sb))
    if ca.get("target") != cb.get("target"):
        return "their target data or splits differ"
    if ca.get("split_seed") != cb.get("split_seed"):
        return "their split seeds differ"
    if not sa.get("test_labels") or sa.get("test_labels") != sb.get("test_labels"):
        return "their test labels differ (or were not kept)"
    return None


def paired_across(base: StudyTables, other: StudyTables, other_label: str,
                  base_label: str) -> str:
    """``other`` minus ``base`` per strategy both ran and per size, paired over the seeds both
    ran (the same training subsets) and the same test texts, and the best mean of each per size
    against each other: the test the side-by-side's intervals alone cannot give."""
    head = f"\n`{other_label}` minus `{base_label}`, paired"
    reason = unpaired_reason(base.study_dir, other.study_dir)
    if reason:
        return f"{head}: not possible, {reason}.\n"
    rows, identical = [], []
    strategies = [s for s in other.order if s in base.order]
    sizes = sorted(set(base.df["size"]) & set(other.df["size"]), key=size_order)
    for strategy in strategies:
        same = True
        for size in sizes:
            a = other.df[(other.df["strategy"] == strategy) & (other.df["size"] == size)]
            b = base.df[(base.df["strategy"] == strategy) & (base.df["size"] == size)]
            if a.empty or b.empty:
                continue
            if _same_runs(a, b):
                continue
            same = False
            rows += _paired_row(size, strategy, strategy, a, b)
        if same:
            identical.append(strategy)
    best = []
    for size in sizes:
        picks = []
        for t in (other, base):
            cells = t.cells[(t.cells["size"] == size) & (t.cells["strategy"] != MAJORITY)]
            picks.append(None if cells.empty else cells.loc[cells["mean"].idxmax(), "strategy"])
        if None in picks:
            continue
        a = other.df[(other.df["strategy"] == picks[0]) & (other.df["size"] == size)]
        b = base.df[(base.df["strategy"] == picks[1]) & (base.df["size"] == size)]
        best += _paired_row(size, picks[0], picks[1], a, b)
    out = head + " (the same training subsets per seed, the same test texts)\n\n"
    for title, table in (("Each strategy both studies ran", rows),
                         ("The best mean of each per size (not the majority floor)", best)):
        if not table:
            continue
        frame_ = pd.DataFrame(table)
        frame_ = frame_.iloc[sorted(range(len(frame_)), key=lambda i: size_order(frame_["size"][i]))]
        raw = frame_.pop("_p").tolist()
        holm = stats.holm(raw)
        frame_["p"], frame_["p (Holm)"] = [_fmt_p(p) for p in raw], [_fmt_p(p) for p in holm]
        frame_["verdict"] = [verdict(p, d, ("higher", "lower"))
                             for p, d in zip(holm, frame_.pop("_mean"))]
        frame_ = frame_.rename(columns={"a": other_label, "b": base_label})
        out += f"{title}:\n\n" + frame_.to_markdown(index=False, disable_numparse=True) + "\n\n"
    if identical:
        out += ("Identical runs in both studies (every paired seed, the same test predictions): "
                + ", ".join(f"`{s}`" for s in identical) + ".\n\n")
    return out + (f"One paired analysis per row (seeds x test examples, as gains.md): its CI "
                  f"excludes 0 exactly when p < {ALPHA}; p (Holm) and the verdict correct for "
                  f"the comparisons in the row's table, alpha {ALPHA}. The best-against-best rows pick each "
                  "study's best on these same test scores (a winner's-curse bias in each mean, "
                  "of either sign in their difference); the per-strategy rows are free of it.\n")


def _same_runs(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Whether two cells hold the same runs: the same seeds and, seed by seed, the same score
    and per-example scores (a baseline that does not depend on the backbone, say)."""
    ma, xa = per_seed(a)
    mb, xb = per_seed(b)
    if list(ma.index) != list(mb.index) or not np.allclose(ma.to_numpy(), mb.to_numpy()):
        return False
    return xa is None or xb is None or bool(np.array_equal(xa, xb))


def _paired_row(size: str, name_a: str, name_b: str, a: pd.DataFrame,
                b: pd.DataFrame) -> list[dict[str, Any]]:
    """One table row ([] when the two share no seed)."""
    est = paired(a, b)
    if est is None:
        return []
    strategy = name_a if name_a == name_b else f"{name_a} - {name_b}"
    mean_a, mean_b = (g.groupby("seed")["score"].mean() for g in (a, b))
    seeds = sorted(set(mean_a.index) & set(mean_b.index))
    return [{"size": size, "strategy": strategy, "seeds": len(seeds),
             "a": f"{mean_a.loc[seeds].mean():.3f}", "b": f"{mean_b.loc[seeds].mean():.3f}",
             "difference": f"{est.mean:+.3f}", "95% CI": ci_text(est.low, est.high, signed=True),
             "_p": est.p, "_mean": est.mean}]


def report_dir(study_dir: Path, metric: str = DEFAULT_METRIC) -> Path:
    """``report/`` for test accuracy, ``report/<metric>/`` for any other metric: a second
    metric's tables sit beside the first's instead of silently replacing them."""
    out = study_dir / REPORT_DIR
    return out if metric == DEFAULT_METRIC else out / metric


def write(study_dir: Path, metric: str = DEFAULT_METRIC,
          against: Iterable[str] = ()) -> tuple[Path, str, list[str]]:
    """Write the report's tables; returns (folder, markdown to print, notes: unreadable record
    lines). Figures are :func:`bench.analysis.plots.write_all`'s (it reads these tables' inputs)."""
    files = build(study_dir, metric, against)
    out = report_dir(study_dir, metric)
    for name, text in files.items():
        atomic_write_text(out / name, text)
    notes: list[str] = record_problems(study_dir / RECORDS)
    gains = ["gains.md"] + sorted(k for k in files if k.startswith("gains_vs_") and k.endswith(".md"))
    shown = [files[k] for k in ("table.md", *gains, "efficiency.md", "budget.md", "tuning.md")
             if k in files]
    return out, "\n".join(shown), notes
