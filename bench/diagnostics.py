"""Tables about how far a study's numbers can be trusted, beside the results themselves:
where a run's variance comes from, tuned values at the edge of their range, flagged fits.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.results import size_order

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
    "Standard deviation of a single run's score from each source, and that source's share of "
    "the variance (method-of-moments, balanced random-effects ANOVA: seeds crossed with source "
    "models, tuning replicates nested in each pair; negative estimates set to 0). seed: "
    "training subset, initialisation and batch order; source: the source model's training "
    "seed; tuning: another independent tuning of the same replicate; test sample: what a new "
    "test set of the same size would add (per-example variance / test size; the run x example "
    "noise it includes is taken out of the innermost part, so the parts add up to the variance "
    "of one run's score over new seeds, source models, tunings and test sets). '-' = the design "
    "does not vary it (one source model: no source part; one tuning per replicate: tuning noise "
    "is inside the seed part).")


def variance_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per cell, the variance of one run's score split into its sources (see VARIANCE_NOTE)."""
    rows = []
    for (strategy, size), g in df.groupby(["strategy", "size"], sort=False):
        if strategy == MAJORITY:
            continue
        test_var = [math.nan if c is None else float(np.var(c, ddof=1)) / len(c)
                    for c in g["correct"]]
        noise = 0.0
        if g["correct"].notna().all() and len(g) > 1:
            runs = np.stack(list(g["correct"]))
            noise = stats.crossed_parts(runs)[2] / runs.shape[1]
        parts = stats.variance_components(g.assign(test_var=test_var), noise)
        if parts is None:
            continue
        total = sum(v for v in parts.values() if not math.isnan(v))
        row = {"strategy": strategy, "size": size, "runs": len(g)}
        for part in stats.PARTS:
            v = parts[part]
            row[f"sd {part}"] = "-" if math.isnan(v) else f"{math.sqrt(v):.4f}"
            row[f"% {part}"] = "-" if math.isnan(v) or total == 0 else f"{100 * v / total:.0f}"
        row["sd total"] = f"{math.sqrt(total):.4f}"
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    rank = {s: i for i, s in enumerate(order)}
    out["_o"] = [(size_order(z), rank[st]) for z, st in zip(out["size"], out["strategy"])]
    # Columns no cell measures (e.g. source in a one-source study) are left out.
    keep = [c for c in out.columns if not (out[c] == "-").all()]
    return out.sort_values("_o")[keep].drop(columns="_o").reset_index(drop=True)


EDGE = 0.05


def _spaces(study_dir: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Per method, its search space by config path (hpo.space + the strategy's own, or the
    baseline's), from ``study.json``."""
    try:
        info = json.loads((study_dir / "study.json").read_text())
    except (OSError, ValueError):
        return {}
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


