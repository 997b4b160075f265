"""The report's figures, PNG and PDF beside the tables and inline SVG in the study's page:
colour-blind-safe colours, and every strategy also has its own marker and line style, so a
greyscale print still tells them apart."""

from __future__ import annotations

import io
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
# SVG for the page: text stays text (small, searchable) and ids come from a fixed salt, so the
# same figure gives the same bytes on every run (reports are byte-for-byte reproducible).
matplotlib.rcParams.update({"svg.fonttype": "none", "svg.hashsalt": "transfer-bench"})
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench import manifest as manifest_mod  # noqa: E402
from bench.analysis import report as report_mod  # noqa: E402
from bench.analysis import stats  # noqa: E402
from bench.analysis.diagnostics import MAJORITY  # noqa: E402
from bench.cache import atomic_write  # noqa: E402
from bench.folder import (PARETO_FILE, RECORDS, STORAGE_FILE, STUDY_FILE,  # noqa: E402
                          default_storage, load_records, read_study, size_order)

LINES = ["-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1))]
# Filled markers only (hollow = pruned in the trial plots); 13 distinct, so with 6 line styles
# no two strategies of a study share both.
MARKERS = ["o", "s", "^", "D", "v", "P", "*", "h", "<", "X", ">", "p", "d"]
# Okabe & Ito's colour-blind-safe palette, then greys.
COLOURS = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7",
           "#F0E442", "0.45", "0.7"]


def _styles(names: list[str]) -> dict[str, dict[str, Any]]:
    return {n: {"linestyle": ls, "marker": m, "color": c}
            for n, ls, m, c in zip(names, itertools.cycle(LINES), itertools.cycle(MARKERS),
                                   itertools.cycle(COLOURS))}


def _legend(ax: plt.Axes, entries: int) -> None:
    """Inside the axes for a few strategies; beside it when a long list would hide the lines."""
    if entries <= 6:
        ax.legend(frameon=False, fontsize=8)
    else:
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))


@dataclass
class Figures:
    """What :func:`write_all` drew: the notes on what it skipped, each figure as inline SVG
    (by file stem) for the page, and the tuned cells' trials (empty without a storage)."""
    notes: list[str] = field(default_factory=list)
    svg: dict[str, str] = field(default_factory=dict)
    trials: pd.DataFrame = field(default_factory=pd.DataFrame)


def svg_text(fig: plt.Figure) -> str:
    """The figure as an ``<svg>`` element to inline in HTML (no XML prolog, no date)."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    # matplotlib's RDF block names the tool and licence namespaces; the page needs none of it
    start, end = text.find("<metadata>"), text.find("</metadata>")
    return text if start < 0 or end < 0 else text[:start] + text[end + len("</metadata>"):]


def _save(fig: plt.Figure, out: Path | None, stem: str, drawn: Figures | None = None) -> list[str]:
    """PNG and PDF into ``out`` (none when it is None), the SVG into ``drawn``."""
    written = []
    for ext, meta in (() if out is None else
                      (("png", {"Software": None}), ("pdf", {"CreationDate": None, "Producer": None}))):
        path = out / f"{stem}.{ext}"
        atomic_write(path, lambda tmp, ext=ext, meta=meta: fig.savefig(
            tmp, format=ext, dpi=150, bbox_inches="tight", metadata=meta))
        written.append(path.name)
    if drawn is not None:
        drawn.svg[stem] = svg_text(fig)
    plt.close(fig)
    return written


PANELS_FROM = 7  # strategies at which one panel per strategy reads better than one plot


def _curve(ax: plt.Axes, c: pd.DataFrame, x: pd.Series, style: dict[str, Any], label: str,
           **kw: Any) -> None:
    low = (c["mean"] - c["ci_low"]).clip(lower=0).fillna(0)
    high = (c["ci_high"] - c["mean"]).clip(lower=0).fillna(0)
    ax.errorbar(x, c["mean"], yerr=[low, high], label=label, color=style["color"],
                marker=style["marker"], linestyle=style["linestyle"], markersize=4, capsize=2,
                linewidth=1, elinewidth=1, **kw)


def _size_axis(ax: plt.Axes, sizes: list[int], label: str | None) -> None:
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.minorticks_off()
    if label:
        ax.set_xlabel(label)
    ax.grid(alpha=0.3)


def learning_curves(cells: pd.DataFrame, order: list[str], metric: str, title: str,
                    out: Path | None, drawn: Figures | None = None) -> list[str]:
    """Mean and 95% CI per strategy and size as error bars, never as overlaid translucent
    bands (six of those hide each other). Up to six strategies share one plot, dodged sideways
    in log size; from seven on, each strategy gets its own small panel beside the reference
    (scratch, in grey) and the majority floor."""
    styles = _styles(order)
    shown = [n for n in order if (cells["strategy"] == n).any()]
    sizes = sorted(cells["n_train"].unique())
    ylabel = f"{metric.replace('_', ' ')} (mean, 95% CI)"
    if len(shown) < PANELS_FROM:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        step = 0.035 if len(shown) > 1 else 0.0  # the dodge between neighbours, in log10 units
        for i, name in enumerate(shown):
            c = cells[cells["strategy"] == name].sort_values("n_train")
            _curve(ax, c, c["n_train"] * 10 ** (step * (i - (len(shown) - 1) / 2)),
                   styles[name], name)
        _size_axis(ax, sizes, "target training examples (log scale; points dodged sideways)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        return _save(fig, out, "learning_curves", drawn)
    backdrop = [n for n in (report_mod.REFERENCE, MAJORITY) if n in shown]
    panels = [n for n in shown if n not in backdrop]
    cols = 4
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows + 0.6), sharex=True,
                             sharey=True, squeeze=False)
    grey = {"color": "0.55", "marker": "o", "linestyle": "-"}
    for ax, name in zip(axes.flat, panels):
        for back in backdrop:
            c = cells[cells["strategy"] == back].sort_values("n_train")
            if back == MAJORITY:
                ax.plot(c["n_train"], c["mean"], color="0.55", linestyle=":", linewidth=1)
            else:
                _curve(ax, c, c["n_train"] * 10 ** -0.02, grey, back, alpha=0.8)
        c = cells[cells["strategy"] == name].sort_values("n_train")
        # one panel, one strategy: a single strong colour, never a grey like the backdrop's
        _curve(ax, c, c["n_train"] * 10 ** 0.02,
               {"color": "#0072B2", "marker": styles[name]["marker"], "linestyle": "-"}, name)
        ax.set_title(name, fontsize=9)
        _size_axis(ax, sizes, None)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=8)
    back_text = " and ".join(f"{b} ({'grey' if b != MAJORITY else 'dotted'})" for b in backdrop)
    fig.suptitle(f"{title}\neach strategy (blue) against {back_text}; x: target training "
                 "examples (log scale)", fontsize=9)
    fig.tight_layout()
    return _save(fig, out, "learning_curves", drawn)


def gains_forest(gains: pd.DataFrame, order: list[str], metric: str, reference: str, out: Path,
                 drawn: Figures | None = None) -> list[str]:
    """The gains table as a forest plot: each strategy's paired difference from ``reference``
    with its 95% CI, one panel per size, the zero line drawn; filled = Holm-significant."""
    sizes = sorted(gains["size"].unique(), key=size_order)
    names = [n for n in order if (gains["strategy"] == n).any()]
    styles = _styles(order)
    fig, axes = plt.subplots(1, len(sizes), figsize=(2.6 * len(sizes) + 1.4,
                                                     0.32 * len(names) + 1.2),
                             sharey=True, squeeze=False)
    for ax, size in zip(axes[0], sizes):
        g = gains[gains["size"] == size].set_index("strategy")
        for y, name in enumerate(names):
            if name not in g.index:
                continue
            r, st = g.loc[name], styles[name]
            err = None if pd.isna(r["ci_low"]) else [[r["gain"] - r["ci_low"]],
                                                      [r["ci_high"] - r["gain"]]]
            filled = r["verdict"] in ("better", "worse")
            ax.errorbar([r["gain"]], [y], xerr=err, fmt=st["marker"], color=st["color"],
                        markerfacecolor=st["color"] if filled else "white", capsize=2,
                        markersize=5)
        ax.axvline(0, color="0.4", linewidth=0.8)
        ax.set_title(f"n={size}", fontsize=9)
        ax.set_xlabel(f"gain vs {reference}")
        ax.grid(alpha=0.3, axis="x")
    axes[0][0].set_yticks(range(len(names)), names)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"{metric.replace('_', ' ')}: paired gain over {reference}, 95% CI\n"
                 "filled: significant after Holm; no bar: one seed", fontsize=9, y=1.0)
    fig.tight_layout()
    return _save(fig, out, "gains_forest", drawn)


def _storage_url(study_dir: Path) -> str:
    manifest = manifest_mod.read(study_dir) or {}
    for run in (manifest.get("runs") or {}).values():
        url = ((run.get("config") or {}).get("hpo") or {}).get("storage")
        if url:
            return url
    return default_storage(study_dir)


def trials_frame(study_dir: Path, records: list[dict[str, Any]]) -> pd.DataFrame:
    """Every finished trial of every tuned cell: strategy, size, params, value, pruned."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not (study_dir / STORAGE_FILE).exists() and "sqlite" in _storage_url(study_dir):
        return pd.DataFrame()
    storage = optuna.storages.RDBStorage(_storage_url(study_dir),
                                         skip_compatibility_check=True)
    # One tuning per replicate (or one per cell in older studies): trials are pooled per cell.
    names = {r["hpo"]["study_name"]: (r["strategy"], str(r["size"]))
             for r in records if r.get("hpo") and r["hpo"].get("study_name")}
    rows = []
    for name, (strategy, size) in sorted(names.items()):
        study = optuna.load_study(study_name=name, storage=storage)
        for t in study.get_trials(deepcopy=False):
            if t.state == optuna.trial.TrialState.COMPLETE:
                value, pruned = t.value, False
            elif t.state == optuna.trial.TrialState.PRUNED and t.intermediate_values:
                value, pruned = max(t.intermediate_values.values()), True
            else:
                continue
            rows.append({"strategy": strategy, "size": size, "study": name, "number": t.number,
                         "value": value, "pruned": pruned, **t.params})
    return pd.DataFrame(rows)


def _not_iid(study_dir: Path) -> str | None:
    """Why the study's trials are not i.i.d. draws (the expected-best curve's assumption), or
    None when they are: random search without pruning."""
    try:
        hpo = read_study(study_dir)["config"]["hpo"]
    except (KeyError, TypeError):
        return f"the tuning configuration is unknown ({study_dir / STUDY_FILE} has no config.hpo)"
    if hpo.get("sampler", "tpe") != "random":
        return (f"{hpo.get('sampler', 'tpe')} trials depend on each other; the curve needs "
                "i.i.d. trials (hpo.sampler=random hpo.pruner.name=none)")
    if (hpo.get("pruner") or {}).get("name", "none") != "none":
        return ("pruned trials' values are not what they would have reached; the curve needs "
                "hpo.pruner.name=none")
    return None


def _panels(sizes: list[str]) -> tuple[plt.Figure, np.ndarray]:
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.2 * len(sizes), 3.2), sharey=True,
                             squeeze=False)
    return fig, axes[0]


def _legend_below(fig: plt.Figure, axes: np.ndarray) -> None:
    handles, labels = {}, []
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in handles:
                handles[label] = h
                labels.append(label)
    fig.legend([handles[k] for k in labels], labels, loc="upper center", ncol=min(len(labels), 6),
               frameon=False, fontsize=8, bbox_to_anchor=(0.5, -0.03))


def lr_sensitivity(trials: pd.DataFrame, order: list[str], out: Path, param: str,
                   drawn: Figures | None = None) -> list[str]:
    sizes = sorted(trials["size"].unique(), key=size_order)
    fig, axes = _panels(sizes)
    styles = _styles(order)
    for ax, size in zip(axes, sizes):
        for name in order:
            t = trials[(trials["strategy"] == name) & (trials["size"] == size)].dropna(subset=[param])
            if t.empty:
                continue
            st = styles[name]
            done, cut = t[~t["pruned"]], t[t["pruned"]]
            ax.scatter(done[param], done["value"], marker=st["marker"], color=st["color"],
                       s=18, label=name)
            ax.scatter(cut[param], cut["value"], marker=st["marker"], facecolors="none",
                       edgecolors=st["color"], s=18)
        ax.set_xscale("log")
        ax.set_title(f"n={size}")
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out accuracy, all replicates\n(hollow: pruned trial, its best)")
    _legend_below(fig, axes)
    return _save(fig, out, "lr_sensitivity", drawn)


def expected_best(trials: pd.DataFrame, order: list[str], out: Path,
                  drawn: Figures | None = None) -> list[str]:
    """Dodge et al. (2019): expected best validation score of k trials drawn from those run."""
    sizes = sorted(trials["size"].unique(), key=size_order)
    fig, axes = _panels(sizes)
    styles = _styles(order)
    for ax, size in zip(axes, sizes):
        for name in order:
            values = trials[(trials["strategy"] == name) & (trials["size"] == size)]["value"]
            if values.empty:
                continue
            ks = np.arange(1, len(values) + 1)
            ax.plot(ks, [stats.expected_max(values, k) for k in ks], label=name, markersize=3,
                    markevery=max(1, len(ks) // 5), **styles[name])
        ax.set_title(f"n={size}")
        ax.set_xlabel("trials")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("expected best validation accuracy")
    _legend_below(fig, axes)
    return _save(fig, out, "expected_best_vs_trials", drawn)


def pareto_fronts(study_dir: Path, out: Path, drawn: Figures | None = None) -> list[str]:
    fronts = json.loads((study_dir / PARETO_FILE).read_text())
    names = sorted(fronts)
    styles = _styles(names)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        pts = sorted(fronts[name], key=lambda p: p["n_train"])
        ax.step([p["n_train"] for p in pts], [p["val_acc"] for p in pts], where="post",
                label=name, **styles[name])
    ax.set_xscale("log")
    ax.set_xlabel("target training examples (log scale)")
    ax.set_ylabel("validation accuracy (Pareto front)")
    ax.grid(alpha=0.3)
    _legend(ax, len(names))
    return _save(fig, out, "pareto_fronts", drawn)


def transferability_plot(sources: pd.DataFrame, out: Path, metric: str,
                         drawn: Figures | None = None) -> list[str]:
    """Estimate vs measured gain over scratch, one point per source, a panel per estimator;
    sizes in different markers."""
    from bench.analysis.source_choice import estimator_columns

    names = estimator_columns(sources)
    sizes = sorted(sources["size"].unique(), key=size_order)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        for (size, marker) in zip(sizes, MARKERS):
            g = sources[sources["size"] == size]
            ax.errorbar(g[name], g["gain"], yerr=[g["gain"] - g["gain_low"],
                                                  g["gain_high"] - g["gain"]],
                        fmt=marker, capsize=2, label=f"n={size}", alpha=0.85)
            for _, r in g.iterrows():
                ax.annotate(r["source"], (r[name], r["gain"]), fontsize=6,
                            xytext=(3, 3), textcoords="offset points")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"measured {metric} gain vs scratch")
    axes[0][-1].legend(fontsize=7)
    return _save(fig, out, "transferability", drawn)


def cost_plot(cells: pd.DataFrame, cost: pd.DataFrame, order: list[str], metric: str,
              out: Path, drawn: Figures | None = None) -> list[str]:
    """Accuracy (with its interval) against trained weights, one panel per size: where
    LoRA or BitFit matches full fine-tuning at a fraction of the weights can be read off it."""
    sizes = sorted(cost["size"].unique(), key=size_order)
    styles = _styles(order)
    fig, axes = plt.subplots(1, len(sizes), figsize=(3.6 * len(sizes), 3.2), squeeze=False,
                             sharey=True)
    for ax, size in zip(axes[0], sizes):
        for _, c in cost[cost["size"] == size].iterrows():
            cell = cells[(cells["strategy"] == c["strategy"]) & (cells["size"] == size)].iloc[0]
            style = styles[c["strategy"]]
            ax.errorbar([c["trainable weights"]], [cell["mean"]],
                        yerr=[[cell["mean"] - cell["ci_low"]], [cell["ci_high"] - cell["mean"]]],
                        fmt=style["marker"], color=style["color"], capsize=2,
                        label=c["strategy"])
        ax.set_xscale("log")
        ax.set_title(f"n={size}", fontsize=9)
        ax.set_xlabel("trained weights (final fit)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} (95% CI)")
    _legend(axes[0][-1], len(cost["strategy"].unique()))
    return _save(fig, out, "cost", drawn)


TRIAL_COLUMNS = ("strategy", "size", "study", "number", "value", "pruned")


def write_all(study_dir: Path, out: Path, metric: str) -> Figures:
    """Every figure the study's data allows, as PNG and PDF in ``out`` and as SVG for the page;
    with the notes on what was skipped and why, and the trials read for the tuning plots."""
    drawn = Figures()
    notes = drawn.notes
    records = load_records(study_dir / RECORDS)
    if records:
        tables = report_mod.load(study_dir, metric)
        df, order, cells = tables.df, tables.order, tables.cells
        if cells["n_train"].nunique() > 1:  # the title states the protocol and labels used
            learning_curves(cells, order, metric,
                            f"{study_dir.name}\n{report_mod.protocol_line(df)}", out, drawn)
        else:
            notes.append("learning curves need at least two sizes")
        if report_mod.REFERENCE in order:
            gains = report_mod.gains_table(df, order)
            if not gains.empty:
                gains_forest(gains, order, metric, report_mod.REFERENCE, out, drawn)
        cost = report_mod.cost_table(df, order)
        if not cost.empty:
            cost_plot(cells, cost, order, metric, out, drawn)
        try:
            trials = trials_frame(study_dir, records)
        except Exception as exc:  # noqa: BLE001 - a missing or unreachable storage only costs plots
            trials = pd.DataFrame()
            notes.append(f"Optuna trials unavailable ({type(exc).__name__}); "
                         "no sensitivity or expected-best plots")
        drawn.trials = trials
        if not trials.empty:
            params = [c for c in trials.columns if c not in TRIAL_COLUMNS]
            param = "lr" if "lr" in params else (params[0] if params else None)
            if param:
                lr_sensitivity(trials, order, out, param, drawn)
            why = _not_iid(study_dir)
            if why:
                notes.append(f"no expected-best-vs-trials plot: {why}")
            else:
                expected_best(trials, order, out, drawn)
        elif not notes:
            notes.append("no tuned cells: no sensitivity or expected-best plots")
        table = out / "transferability.csv"  # the report's source-choice table, just written
        if table.exists():
            sources = pd.read_csv(table, dtype={"size": str})
            if not sources.empty:
                transferability_plot(sources, out, metric, drawn)
    if (study_dir / PARETO_FILE).exists():
        pareto_fronts(study_dir, out, drawn)
    return drawn
