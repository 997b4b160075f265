"""Tables about how far a study's numbers can be trusted, beside the results themselves:
where a run's variance comes from, tuned values at the edge of their range, flagged fits.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.analysis import stats
from bench.folder import read_study, size_order

MAJORITY = "majority"  # the majority-class floor: no variance worth splitting, nothing tuned


def flags_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cells with flagged fits, one row per (strategy, size, flag set)."""
    flagged = df[df["flags"] != ""]
    if flagged.empty:
        return pd.DataFrame()
    # Several runs of one seed (source models, tuning replicates): the seed once, with a count.
    rows = [{"strategy": st, "size": sz, "flags": fl,
             "seeds": ", ".join(f"{s}" if n == 1 else f"{s} x{n}"
                                for s, n in sorted(g["seed"].value_counts().items()))}
            for (st, sz, fl), g in flagged.groupby(["strategy", "size", "flags"], sort=False)]
    out = pd.DataFrame(rows)
    out["_k"] = out["size"].map(size_order)
    return out.sort_values(["_k", "strategy"]).drop(columns="_k").reset_index(drop=True)


VARIANCE_NOTE = (
    "Standard deviation of a single run's score from each source [95% confidence interval] "
    "(degrees of freedom of the mean square it rests on), and that source's share of the "
    "variance (method of moments, balanced random-effects ANOVA: seeds crossed with source "
    "models, tuning replicates nested in each pair; a negative estimate is held at 0, and its "
    "interval says how large it may still be; intervals: the modified large-sample method of "
    "Ting et al. 1990, exact chi-square for a part with nothing subtracted). With 2 degrees of "
    "freedom (3 seeds, 3 source models) a part is known only within a wide range: read the "
    "interval, not the point. seed: training subset, initialisation and batch order; source: "
    "the source model's training seed; tuning: another independent tuning of the same "
    "replicate; test sample: what a new test set of the same size would add (per-example "
    "variance / test size; the run x example noise it includes is taken out of the innermost "
    "part, so the parts add up to the variance of one run's score over new seeds, source "
    "models, tunings and test sets). '-' = not estimable: the design does not vary it (one "
    "source model: no source part; one tuning per replicate: tuning noise is inside the seed "
    "part).")


def variance_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per cell, the variance of one run's score split into its sources (see VARIANCE_NOTE):
    per part its sd, the sd's interval ends, the degrees of freedom and the share (NaN: not
    estimable in this design)."""
    rows = []
    for (strategy, size), g in df.groupby(["strategy", "size"], sort=False):
        if strategy == MAJORITY:
            continue
        test_var = [math.nan if c is None else float(np.var(c, ddof=1)) / len(c)
                    for c in g["correct"]]
        noise, noise_df = 0.0, 1
        runs = g.assign(test_var=test_var)
        if g["correct"].notna().all():
            runs = runs.assign(n_test=len(g["correct"].iloc[0]))
            if len(g) > 1:
                matrix = np.stack(list(g["correct"]))
                noise = stats.crossed_parts(matrix)[2] / matrix.shape[1]
                noise_df = (len(g) - 1) * (matrix.shape[1] - 1)
        parts = stats.variance_parts(runs, noise, noise_df)
        if parts is None:
            continue
        total = sum(p.value for p in parts.values())
        row: dict[str, Any] = {"strategy": strategy, "size": size, "runs": len(g)}
        for name in stats.PARTS:
            part = parts.get(name, stats.Component(math.nan, 0, math.nan, math.nan))
            row[f"sd {name}"] = round(math.sqrt(part.value), 6)
            row[f"sd {name} low"] = round(math.sqrt(part.low), 6)
            row[f"sd {name} high"] = round(math.sqrt(part.high), 6)
            row[f"df {name}"] = part.df if name in parts else math.nan
            row[f"% {name}"] = round(100 * part.value / total, 2) if total > 0 else math.nan
        row["sd total"] = round(math.sqrt(total), 6)
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    rank = {s: i for i, s in enumerate(order)}
    out["_o"] = [(size_order(z), rank[st]) for z, st in zip(out["size"], out["strategy"])]
    # Parts no cell measures (e.g. source in a one-source study) are left out.
    unmeasured = [name for name in stats.PARTS if out[f"sd {name}"].isna().all()]
    keep = [c for c in out.columns
            if not any(c in (f"sd {n}", f"sd {n} low", f"sd {n} high", f"df {n}", f"% {n}")
                       for n in unmeasured)]
    return out.sort_values("_o")[keep].drop(columns="_o").reset_index(drop=True)


def variance_markdown(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`variance_table` as the report prints it: per part "sd [low, high] (df)" and %."""
    out = table[["strategy", "size", "runs"]].copy()
    for name in stats.PARTS:
        if f"sd {name}" not in table:
            continue
        cells, shares = [], []
        for _, r in table.iterrows():
            if math.isnan(r[f"sd {name}"]):
                cells.append("-")
                shares.append("-")
                continue
            low = "0" if r[f"sd {name} low"] == 0 else f"{r[f'sd {name} low']:.4f}"
            ci = "" if math.isnan(r[f"sd {name} high"]) else f" [{low}, {r[f'sd {name} high']:.4f}]"
            cells.append(f"{r[f'sd {name}']:.4f}{ci} ({int(r[f'df {name}'])})")
            shares.append("-" if math.isnan(r[f"% {name}"]) else f"{r[f'% {name}']:.0f}")
        out[f"sd {name} [95% CI] (df)"] = cells
        out[f"% {name}"] = shares
    out["sd total"] = table["sd total"].map(lambda v: f"{v:.4f}")
    return out


EDGE = 0.05


def _spaces(study_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method, its search space by config path (hpo.space + the strategy's own, or the
    baseline's), from ``study.json``."""
    info = read_study(study_dir)
    config = info.get("config") or {}
    shared = (config.get("hpo") or {}).get("space") or {}
    out = {}
    for name, spec in (info.get("strategies") or {}).items():
        merged = {**shared, **((spec or {}).get("space") or {})}
        out[name] = {v.get("path", k): v for k, v in merged.items()}
    baseline = config.get("baseline") or {}
    if baseline.get("name") not in (None, "none"):
        out[baseline["name"]] = {v.get("path", k): v for k, v in (baseline.get("space") or {}).items()}
    return out


def edge_table(records: list[dict[str, Any]], study_dir: Path) -> pd.DataFrame:
    """Tunings whose best value sits at the edge of its range, counted per cell and parameter."""
    spaces = _spaces(study_dir)
    hits: dict[tuple[str, str, str], list[Any]] = {}
    for r in records:
        best = ((r.get("hpo") or {}).get("best_params")) or {}
        for path, value in best.items():
            spec = spaces.get(r["strategy"], {}).get(path)
            if not spec or "choices" in spec or not isinstance(value, (int, float)):
                continue
            low, high = float(spec["low"]), float(spec["high"])
            scale = math.log if spec.get("log") else float
            where = (scale(value) - scale(low)) / (scale(high) - scale(low))
            entry = hits.setdefault((r["strategy"], str(r["size"]), path),
                                    [0, 0, 0, f"{low:g}..{high:g}", []])
            entry[0] += 1
            if where <= EDGE:
                entry[1] += 1
                entry[4].append(value)
            elif where >= 1 - EDGE:
                entry[2] += 1
                entry[4].append(value)
    rows = [{"strategy": st, "size": sz, "parameter": path, "range": rng,
             "tunings": n, "at low edge": lo, "at high edge": hi,
             "values at the edge": ", ".join(f"{v:.3g}" for v in sorted(vals))}
            for (st, sz, path), (n, lo, hi, rng, vals) in hits.items() if lo or hi]
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["_k"] = out["size"].map(size_order)
    return out.sort_values(["_k", "strategy", "parameter"]).drop(columns="_k").reset_index(drop=True)


