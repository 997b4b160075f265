"""From a study's records to the tables and figures a paper or a decision memo needs.

``transfer-bench report results/<study>`` writes ``results/<study>/report/``:

* ``table.{md,csv,tex}``: strategies x sizes, mean ± std over seeds, 95% bootstrap CI, seeds;
  the best mean per size in bold, cells whose CI overlaps the best's CI in italics (tied);
* ``budget.md``: the tuning budget per cell (trials, pruned, compute minutes);
* ``gains.{md,csv}``: every strategy minus ``scratch`` over matched seeds, paired bootstrap CI,
  paired t-test, Holm-corrected over the study (see :mod:`bench.stats`); ``--against full``
  adds ``gains_vs_full.{md,csv}``, the same against another strategy (does a method beat
  plain fine-tuning?);
* ``efficiency.{md,csv}``: labels ``scratch`` needs to match each strategy (ULMFiT's figure);
* ``*.png`` / ``*.pdf``: learning curves, learning-rate sensitivity, expected best validation
  score vs trials (Dodge et al. 2019), Pareto fronts of the size search.

Tables depend on the records alone and are byte-for-byte reproducible; plots that need the
Optuna trials read the study's storage and are skipped (with a note) when it is unavailable.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench import stats
from bench.cache import atomic_write_text
from bench.errors import BenchError
from bench.results import RECORDS, hpo_table, load_records, record_problems

REPORT_DIR = "report"
LEGACY = "fixed_val (legacy)"  # records from before the protocol field: validation split, vocabulary
                               # from all texts, one tuning per cell on its own subset
REFERENCE = "scratch"
ALPHA = 0.05


def _size_key(size: str) -> tuple[int, int]:
    return (1, 0) if size == "all" else (0, int(size))


def _order(names: Iterable[str], records: list[dict[str, Any]]) -> list[str]:
    """Strategies in the order the study ran them (first record), the baseline last."""
    first: dict[str, int] = {}
    for i, r in enumerate(records):
        first.setdefault(r["strategy"], i)
    return sorted(set(names), key=lambda s: (s.startswith("tfidf"), first.get(s, 0), s))


def legacy_validation(study_dir: Path) -> int:
    """The validation labels of a study whose records predate the ``labels`` field: the target's
    ``val_size`` in ``study.json`` when it is a count, else 0 (then the table says so)."""
    try:
        info = json.loads((study_dir / "study.json").read_text())
        val = info["config"]["data"]["target"]["val_size"]
    except (OSError, ValueError, KeyError, TypeError):
        return 0
    return int(val) if isinstance(val, int) and not isinstance(val, bool) else 0


def frame(records: list[dict[str, Any]], metric: str, legacy_val: int = 0) -> pd.DataFrame:
    rows = []
    for r in records:
        if metric not in r["metrics"]:
            continue
        labels = r.get("labels") or {"total": r["n_train"] + legacy_val}
        rows.append({"strategy": r["strategy"], "size": str(r["size"]), "n_train": r["n_train"],
                     "labels": int(labels.get("total", r["n_train"])),
                     "protocol": r.get("protocol", LEGACY),
                     "flags": ",".join(r.get("flags") or []),
                     "tuning_study": (r.get("hpo") or {}).get("study_name"),
                     "seed": int(r["seed"]), "score": float(r["metrics"][metric]),
                     "fit_seconds": float(r.get("seconds") or 0.0),
                     "tune_seconds": float((r.get("hpo") or {}).get("seconds") or 0.0),
                     "trials": (r.get("hpo") or {}).get("n_trials"),
                     "pruned": (r.get("hpo") or {}).get("n_pruned"),
                     "device": r.get("device", "")})
    if not rows:
        raise BenchError(f"no record holds the metric {metric!r}")
    return pd.DataFrame(rows)


def cell_table(df: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """One row per (strategy, size): mean, std, CI, seeds, best/tied flags and the budget."""
    rows = []
    for (strategy, size), g in df.groupby(["strategy", "size"], sort=False):
        scores = g.sort_values("seed")["score"].to_numpy()
        low, high = stats.bootstrap_ci(scores)
        # One tuning per replicate (current protocols) or one shared by all seeds (older studies).
        tunings = g.drop_duplicates("tuning_study") if g["tuning_study"].notna().all() else g[:1]
        rows.append({"strategy": strategy, "size": size, "n_train": int(g["n_train"].iloc[0]),
                     "labels": int(g["labels"].iloc[0]),
                     "seeds": len(scores), "mean": scores.mean(),
                     "std": scores.std(ddof=1) if len(scores) > 1 else 0.0,
                     "ci_low": low, "ci_high": high,
                     "trials": tunings["trials"].sum(min_count=1),
                     "pruned": tunings["pruned"].sum(min_count=1),
                     "minutes": (tunings["tune_seconds"].sum() + g["fit_seconds"].sum()) / 60,
                     "flagged": int((g["flags"] != "").sum()),
                     "device": g["device"].iloc[0]})
    cells = pd.DataFrame(rows)
    cells["best"] = False
    cells["tied"] = False
    for size, g in cells.groupby("size"):
        best = g["mean"].idxmax()
        cells.loc[best, "best"] = True
        overlap = (g["ci_high"] >= cells.loc[best, "ci_low"]) & (g.index != best)
        cells.loc[g.index[overlap], "tied"] = True
    rank = {s: i for i, s in enumerate(order)}
    cells["_o"] = [(_size_key(s), rank[st]) for s, st in zip(cells["size"], cells["strategy"])]
    return cells.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def _wide(cells: pd.DataFrame, order: list[str], fmt) -> pd.DataFrame:
    sizes = sorted(cells["size"].unique(), key=_size_key)
    out = pd.DataFrame(index=order, columns=sizes, dtype=object).fillna("")
    for _, c in cells.iterrows():
        out.loc[c["strategy"], c["size"]] = fmt(c)
    n_of = cells.groupby("size")["n_train"].first()
    out.columns = [f"n={n_of[s]}" if s == "all" else f"n={s}" for s in sizes]
    out.index.name = "strategy"
    return out


def _md_cell(c: pd.Series) -> str:
    mean = f"{c['mean']:.3f}"
    mean = f"**{mean}**" if c["best"] else f"*{mean}*" if c["tied"] else mean
    return f"{mean} ± {c['std']:.3f} [{c['ci_low']:.3f}, {c['ci_high']:.3f}] ({c['seeds']})"


def _tex_cell(c: pd.Series) -> str:
    mean = f"{c['mean']:.3f}"
    mean = rf"\textbf{{{mean}}}" if c["best"] else rf"\underline{{{mean}}}" if c["tied"] else mean
    return rf"{mean} $\pm$ {c['std']:.3f} \scriptsize[{c['ci_low']:.3f}, {c['ci_high']:.3f}]"


def _budget_cell(c: pd.Series) -> str:
    unit = "GPU" if "nvidia" in str(c["device"]).lower() or "cuda" in str(c["device"]).lower() \
        else "CPU"
    if c["trials"] is None or pd.isna(c["trials"]) or c["trials"] == 0:
        return f"untuned, {c['minutes']:.1f} {unit}-min"
    return f"{int(c['trials'])} trials ({int(c['pruned'])} pruned), {c['minutes']:.1f} {unit}-min"


def gains_table(df: pd.DataFrame, order: list[str], reference: str = REFERENCE) -> pd.DataFrame:
    """Each strategy minus ``reference`` per size over the seeds both have."""
    rows = []
    ref = df[df["strategy"] == reference]
    for strategy in order:
        if strategy == reference:
            continue
        for size in sorted(df["size"].unique(), key=_size_key):
            a = df[(df["strategy"] == strategy) & (df["size"] == size)].set_index("seed")["score"]
            b = ref[ref["size"] == size].set_index("seed")["score"]
            seeds = sorted(set(a.index) & set(b.index))
            if not seeds:
                continue
            d = (a.loc[seeds] - b.loc[seeds]).to_numpy()
            low, high = stats.bootstrap_ci(d)
            rows.append({"strategy": strategy, "size": size, "pairs": len(seeds),
                         "gain": d.mean(), "ci_low": low, "ci_high": high,
                         "p": stats.paired_t_pvalue(a.loc[seeds], b.loc[seeds])})
    gains = pd.DataFrame(rows)
    if gains.empty:
        return gains
    gains["p_holm"] = stats.holm(gains["p"].tolist())

    def verdict(r: pd.Series) -> str:
        if math.isnan(r["p_holm"]):
            return "too few seeds"
        if r["p_holm"] < ALPHA:
            return "better" if r["gain"] > 0 else "worse"
        return "no significant difference"

    gains["verdict"] = gains.apply(verdict, axis=1)
    return gains


def efficiency_table(cells: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Labels scratch needs to match each cell, and that as a multiple of the cell's labels."""
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
            ratio = f"> {sizes[-1] / c['labels']:.1f}x"
        elif need <= sizes[0] and c["labels"] >= sizes[0]:
            text = f"<= {sizes[0]}"
            ratio = f"<= {sizes[0] / c['labels']:.1f}x"
        else:
            text = f"{need:.0f}"
            ratio = f"{need / c['labels']:.1f}x"
        rows.append({"strategy": c["strategy"], "size": c["size"], "labels used": c["labels"],
                     "score": round(c["mean"], 4), "scratch labels to match": text,
                     "label multiple": ratio})
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


def flags_table(df: pd.DataFrame) -> pd.DataFrame:
    """Cells with flagged fits, one row per (strategy, size, flag set)."""
    flagged = df[df["flags"] != ""]
    if flagged.empty:
        return pd.DataFrame()
    rows = [{"strategy": st, "size": sz, "flags": fl,
             "seeds": ", ".join(str(s) for s in sorted(g["seed"]))}
            for (st, sz, fl), g in flagged.groupby(["strategy", "size", "flags"], sort=False)]
    out = pd.DataFrame(rows)
    out["_k"] = out["size"].map(_size_key)
    return out.sort_values(["_k", "strategy"]).drop(columns="_k").reset_index(drop=True)


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
        "95% CI": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(gains["ci_low"], gains["ci_high"])],
        "p": gains["p"].map(_fmt_p), "p (Holm)": gains["p_holm"].map(_fmt_p),
        "verdict": gains["verdict"]})
    return {
        f"{stem}.md": (
            f"{name}: {metric} gain over {reference}, matched seeds\n\n" + protocol_line(df) + "\n\n"
            + shown.to_markdown(index=False, disable_numparse=True)
            + f"\n\nCI: percentile bootstrap of the mean per-seed difference. p: two-sided paired "
            f"t-test over seeds; Holm-corrected over all {len(gains)} comparisons; verdict at "
            f"alpha = {ALPHA}.\n"),
        f"{stem}.csv": gains.round(6).to_csv(index=False, lineterminator="\n"),
    }


def build(study_dir: Path, metric: str = "test_acc", against: Iterable[str] = ()) -> dict[str, str]:
    """All table files as {name: text}; deterministic given the records. Gains are always
    against ``scratch`` (when the study has it) and also against each strategy in ``against``."""
    records = load_records(study_dir / RECORDS)
    if not records:
        raise BenchError(f"{study_dir} has no records ({RECORDS}); run a sweep first")
    df = frame(records, metric, legacy_validation(study_dir))
    order = _order(df["strategy"], records)
    cells = cell_table(df, order)
    name = study_dir.name
    files: dict[str, str] = {}

    wide = _wide(cells, order, _md_cell)
    seeds = sorted(df["seed"].unique())
    files["table.md"] = (
        f"{name}: {metric}, mean ± std [95% bootstrap CI of the mean] (seeds)\n\n"
        + protocol_line(df) + "\n\n"
        + wide.to_markdown(disable_numparse=True) + "\n\n"
        f"Best mean per size in **bold**; *italic* = its CI overlaps the best's CI (tied). "
        f"Seeds {', '.join(map(str, seeds))}; percentile bootstrap, {stats.RESAMPLES} resamples.\n")
    csv = cells.assign(**{k: cells[k].round(6) for k in ("mean", "std", "ci_low", "ci_high")},
                       minutes=cells["minutes"].round(2))
    files["table.csv"] = csv.to_csv(index=False, lineterminator="\n")
    tex = _wide(cells, order, _tex_cell)
    tex.index = [s.replace("_", r"\_") for s in tex.index]
    tex.columns = [c.replace("n=", "$n=") + "$" for c in tex.columns]
    files["table.tex"] = tex.style.to_latex(
        hrules=True, column_format="l" + "c" * tex.shape[1],
        caption=f"{name.replace('_', ' ')}: {metric.replace('_', ' ')}, mean $\\pm$ std over "
                f"{len(seeds)} seeds, 95\\% bootstrap CI; best in bold, tied underlined.")
    flags = flags_table(df)
    if not flags.empty:
        files["table.md"] += ("\nFlagged fits (at_cap: best held-out score at the last round "
                              "allowed, still improving; below_majority: best held-out accuracy "
                              "under the majority-class rate), see flags.md: "
                              + "; ".join(f"{r.strategy} n={r.size}: {r.flags} ({r.seeds})"
                                          for r in flags.itertuples()) + "\n")
        files["flags.md"] = (f"{name}: flagged fits\n\n"
                             + flags.to_markdown(index=False, disable_numparse=True) + "\n")
    files["budget.md"] = (f"{name}: tuning and training budget per cell\n\n"
                          + _wide(cells, order, _budget_cell).to_markdown(disable_numparse=True) + "\n")

    for reference in dict.fromkeys((REFERENCE, *against)):
        if reference not in order:
            if reference == REFERENCE:
                continue  # a study without scratch simply has no gains.md
            raise BenchError(f"--against {reference}: {name} has no records of that strategy; "
                             f"use one of {', '.join(order)}")
        stem = "gains" if reference == REFERENCE else f"gains_vs_{reference}"
        files.update(_gains_files(df, order, reference, name, metric, stem))

    eff = efficiency_table(cells, order)
    if not eff.empty:
        files["efficiency.md"] = (
            f"{name}: target labels `{REFERENCE}` needs to match each strategy\n\n"
            + protocol_line(df) + "\n\n"
            + eff.to_markdown(index=False, disable_numparse=True)
            + f"\n\nFrom {REFERENCE}'s mean learning curve, interpolated linearly in log size; "
            "'more than measured' when it never reaches the score.\n")
        files["efficiency.csv"] = eff.to_csv(index=False, lineterminator="\n")

    tuning = hpo_table(records)
    if not tuning.empty:
        saved = 1 - tuning["epochs run"].sum() / max(tuning["epochs unpruned (est.)"].sum(), 1)
        files["tuning.md"] = (f"{name}: tuning per cell (pruning saved about {saved:.0%} of "
                              "trial-epochs); seed: the replicate tuned on its own labels, or "
                              "all (one tuning shared by every seed)\n\n" + tuning.to_markdown(index=False, disable_numparse=True) + "\n")
    return files


def side_by_side(study_dirs: Iterable[Path], metric: str = "test_acc") -> str:
    """One table of several studies, e.g. one study under two protocols: rows are strategies,
    columns (size, study) pairs, each cell mean [95% CI] (seeds); a header per study states its
    protocol and labels. Deterministic given the records."""
    tables, lines, order, protocols = {}, [], [], []
    for d in study_dirs:
        records = load_records(Path(d) / RECORDS)
        if not records:
            raise BenchError(f"{d} has no records ({RECORDS}); run a sweep first")
        df = frame(records, metric, legacy_validation(Path(d)))
        names = _order(df["strategy"], records)
        order += [n for n in names if n not in order]
        tables[Path(d).name] = cell_table(df, names)
        protocols.append(" + ".join(sorted(df["protocol"].unique())))
        lines.append(f"- `{Path(d).name}`: {protocol_line(df)}")
    # Columns are named by protocol when that tells the studies apart, else by study.
    if len(set(protocols)) == len(protocols):
        tables = dict(zip(protocols, tables.values()))
    sizes = sorted({s for t in tables.values() for s in t["size"]}, key=_size_key)
    out = pd.DataFrame(index=order, dtype=object)
    for size in sizes:
        for name, cells in tables.items():
            col = f"n={size} {name}"
            out[col] = ""
            for _, c in cells[cells["size"] == size].iterrows():
                out.loc[c["strategy"], col] = (f"{c['mean']:.3f} [{c['ci_low']:.3f}, "
                                               f"{c['ci_high']:.3f}] ({c['seeds']})")
    out.index.name = "strategy"
    return (f"{metric}, mean [95% bootstrap CI of the mean] (seeds), side by side\n\n"
            + "\n".join(lines) + "\n\n" + out.to_markdown(disable_numparse=True) + "\n")


def write(study_dir: Path, metric: str = "test_acc", plots: bool = True,
          against: Iterable[str] = ()) -> tuple[Path, str, list[str]]:
    """Write the report folder; returns (folder, markdown to print, notes: unreadable record
    lines, skipped plots)."""
    files = build(study_dir, metric, against)
    out = study_dir / REPORT_DIR
    for name, text in files.items():
        atomic_write_text(out / name, text)
    notes: list[str] = record_problems(study_dir / RECORDS)
    if plots:
        from bench import plots as plots_mod

        notes += plots_mod.write_all(study_dir, out, metric)
    gains = ["gains.md"] + sorted(k for k in files if k.startswith("gains_vs_") and k.endswith(".md"))
    shown = [files[k] for k in ("table.md", *gains, "efficiency.md", "budget.md", "tuning.md")
             if k in files]
    return out, "\n".join(shown), notes
