"""The study's page: ``report/index.html``, one self-contained file to look at before reading.

Inline CSS and inline SVG figures, no script, and a Content-Security-Policy that forbids every
request, so the page reads the same offline, on an HPC login node or as an e-mail attachment.
Every table on it is the Markdown report's own text rendered to HTML (one source: the page
cannot disagree with ``table.md`` or ``gains.md``); the headline table is built from the same
cells with the same cell text, and each of its cells opens that cell's replicates.
"""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import pandas as pd
from markdown_it import MarkdownIt

from bench import manifest as manifest_mod
from bench.analysis import report
from bench.cache import atomic_write_text
from bench.folder import dataset_label, read_study, size_order

if TYPE_CHECKING:
    from bench.analysis.plots import Figures

PAGE = "index.html"
# Nothing may load: no script, no font, no image but data: URIs, no connection.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
# (anchor, heading): every page has every section, saying why when the study has nothing for it.
SECTIONS = [("asked", "What was asked"), ("headline", "Headline table"),
            ("curves", "Learning curves"), ("gains", "Gains over scratch"),
            ("efficiency", "Data efficiency"), ("variance", "Variance parts"),
            ("tuning", "Tuning"), ("cost", "Cost against accuracy"),
            ("sources", "Sources: transferability and negative transfer"),
            ("reproducibility", "Reproducibility")]
CSS = """
:root { color-scheme: light; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1b1b;
       margin: 0 auto; padding: 0 16px 48px; max-width: 1200px; }
header { border-bottom: 1px solid #ccc; margin-bottom: 8px; }
h1 { font-size: 22px; margin: 18px 0 4px; }
h2 { font-size: 18px; margin: 28px 0 8px; border-bottom: 1px solid #e3e3e3; padding-bottom: 2px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
nav { font-size: 13px; margin: 6px 0 10px; }
nav a { margin-right: 12px; white-space: nowrap; }
a { color: #0b5394; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
th, td { border: 1px solid #d8d8d8; padding: 3px 7px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
summary { cursor: pointer; }
details[open] > summary { margin-bottom: 4px; }
details table { font-size: 12px; }
.note { color: #444; font-size: 13px; }
.missing { color: #666; font-style: italic; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 6px 0; }
dt { font-weight: 600; }
dd { margin: 0; overflow-wrap: anywhere; }
code, pre { font: 12px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; }
figure { margin: 8px 0; }
figure svg { max-width: 100%; height: auto; }
"""
_MD = MarkdownIt("commonmark", {"html": False}).enable("table")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def markdown(text: str) -> str:
    """The report's Markdown as HTML; every table in a box that scrolls instead of widening
    the page."""
    out = _MD.render(text)
    return out.replace("<table>", '<div class="scroll"><table>').replace("</table>", "</table></div>")


def report_file(out: Path, name: str) -> str:
    """A report file as HTML: its first line (the title) as a heading, the rest as written."""
    path = out / name
    if not path.exists():
        return ""
    title, _, rest = path.read_text().partition("\n")
    return f"<h3>{esc(title)}</h3>\n{markdown(rest)}"


def missing(why: str) -> str:
    return f'<p class="missing">{esc(why)}</p>\n'


def figure(drawn: Figures | None, stem: str, caption: str) -> str:
    if drawn is None:
        return missing("Figures not drawn (report --no-plots).")
    if stem not in drawn.svg:
        return ""
    return f"<figure>{drawn.svg[stem]}<figcaption class=\"note\">{esc(caption)}</figcaption></figure>\n"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(value.items()))
    return "" if value is None else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{esc(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{esc(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>\n'


# -- what was asked ---------------------------------------------------------------------------

def _runs(study_dir: Path) -> list[dict[str, Any]]:
    runs = (manifest_mod.read(study_dir) or {}).get("runs") or {}
    return [runs[k] for k in sorted(runs)]


def _asked_union(runs: list[dict[str, Any]], pick) -> list[Any]:
    seen: dict[Any, None] = {}
    for run in runs:
        try:
            values = pick(run.get("config") or {})
        except (KeyError, TypeError, AttributeError):
            continue
        for v in values or []:
            seen[str(v)] = None
    return list(seen)


def _model(config: dict[str, Any]) -> str:
    model = config.get("model") or {}
    target = str(model.get("_target_", "?")).rsplit(".", 1)[-1]
    weights = model.get("path") or model.get("weights")
    if weights:
        return f"{target} ({weights})"
    vectors = (config.get("embeddings") or {}).get("kind")
    return f"{target} ({vectors} vectors)" if vectors else target


def _machine(run: dict[str, Any]) -> str:
    hw = run.get("hardware") or {}
    gpus = ", ".join(map(str, hw.get("gpus") or [])) or "no GPU"
    return f"{hw.get('cpu', '?')}, {hw.get('cpu_count', '?')} cores, {gpus}"


def asked(t: report.StudyTables) -> str:
    study = read_study(t.study_dir)
    config = study.get("config") or {}
    runs = _runs(t.study_dir)
    data = config.get("data") or {}
    sources = report.study_sources(t.study_dir) or [
        dataset_label(data["source"]) if isinstance(data.get("source"), dict)
        else str(data.get("source", "none"))]
    hpo = config.get("hpo") or {}
    sizes_asked = _asked_union(runs, lambda c: c["data"]["sizes"])
    seeds_asked = _asked_union(runs, lambda c: c["seeds"])
    sizes_done = sorted(t.cells["size"].unique(), key=size_order)
    seeds_done = sorted(t.df["seed"].unique())
    commits = sorted({f"{(r.get('git') or {}).get('commit', '?')[:12]}"
                      + (" (uncommitted changes)" if (r.get("git") or {}).get("dirty") else "")
                      for r in runs})
    strategies = list(study.get("strategies") or {}) or t.order
    space = hpo.get("space") or {}
    items = [
        ("study", f"{t.name} (hash {study.get('study_hash', '?')})"),
        ("target", dataset_label(data["target"]) if isinstance(data.get("target"), dict)
         else str(data.get("target", "?"))),
        ("sources", ", ".join(sources)),
        ("model", _model(config)),
        ("strategies", ", ".join([s for s in t.order if s in strategies]
                                 + [s for s in strategies if s not in t.order])
         + (f" (no records yet: {', '.join(s for s in strategies if s not in t.order)})"
            if any(s not in t.order for s in strategies) else "")),
        ("sizes", f"asked {', '.join(sizes_asked) or '?'}; with records {', '.join(sizes_done)}"),
        ("seeds", f"asked {', '.join(seeds_asked) or '?'}; with records "
                  f"{', '.join(map(str, seeds_done))}"),
        ("protocol", f"{study.get('protocol', '')} {report.protocol_line(t.df)}".strip()),
        ("tuning", f"{hpo.get('mode', 'optuna')}, {config.get('trials', hpo.get('n_trials', '?'))} "
                   f"trials per replicate, sampler {hpo.get('sampler', 'tpe')}, pruner "
                   f"{(hpo.get('pruner') or {}).get('name', 'none')}; shared space "
                   + (", ".join(f"{k} {v.get('low')}..{v.get('high')}" for k, v in sorted(space.items()))
                      or "none") + " (each strategy may set its own: see the tuning table)"),
        ("records", f"{len(t.records)} ({t.metric}); a cell with fewer seeds than asked is "
                    "still running"),
        ("code", ", ".join(commits) or "unknown (no manifest)"),
        ("machine", "; ".join(sorted({_machine(r) for r in runs})) or "unknown (no manifest)"),
    ]
    body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return f"<dl>{body}</dl>\n"


# -- the headline table -----------------------------------------------------------------------

def _replicates(t: report.StudyTables, strategy: str, size: str) -> list[dict[str, Any]]:
    rows = []
    for r in t.records:
        if r["strategy"] != strategy or str(r["size"]) != size or t.metric not in r["metrics"]:
            continue
        selection = r.get("selection") or {}
        hpo = r.get("hpo") or {}
        row = {"seed": r["seed"]}
        if r.get("source_seed") is not None:
            row["source seed"] = r["source_seed"]
        if r.get("tuning"):
            row["tuning"] = r["tuning"]
        row.update({t.metric: r["metrics"][t.metric],
                    "fold scores": selection.get("fold_scores"),
                    "chosen setting": r.get("params") or {},
                    "trials (pruned)": f"{hpo['n_trials']} ({hpo['n_pruned']})" if hpo else "untuned",
                    "rounds": r.get("rounds"), "steps": r.get("steps"),
                    "fit s": r.get("seconds"),
                    **({"peak MiB": r["memory"]["peak_mib"]} if r.get("memory") else {}),
                    "flags": ", ".join(r.get("flags") or [])})
        rows.append(row)
    return sorted(rows, key=lambda row: (row["seed"], row.get("source seed") or 0,
                                         row.get("tuning") or 0))


def headline(t: report.StudyTables, out: Path) -> str:
    """The table of ``out``/table.md, each cell a ``<details>``: the same text, then the
    replicates."""
    negative = report.negative_transfer(t.df, t.order)
    cells = t.cells.assign(negative=[(st, sz) in negative
                                     for st, sz in zip(t.cells["strategy"], t.cells["size"])])
    sizes = sorted(cells["size"].unique(), key=size_order)
    n_of = cells.groupby("size")["n_train"].first()
    label = {s: f"n={n_of[s] if s == 'all' else s}" for s in sizes}  # table.md's column names
    head = "".join(f"<th>{label[s]}</th>" for s in sizes)
    rows = []
    for strategy in t.order:
        tds = []
        for size in sizes:
            hit = cells[(cells["strategy"] == strategy) & (cells["size"] == size)]
            if hit.empty:
                tds.append("<td></td>")
                continue
            text = _MD.renderInline(report._md_cell(hit.iloc[0]))
            reps = table(_replicates(t, strategy, size))
            tds.append(f'<td class="num" data-cell="{esc(strategy)} {label[size]}"><details>'
                       f"<summary>{text}</summary>{reps}</details></td>")
        rows.append(f"<tr><th>{esc(strategy)}</th>{''.join(tds)}</tr>")
    title, _, rest = (out / "table.md").read_text().partition("\n")
    # table.md's text around its table: the caption above it, the notes under it
    lines = rest.split("\n")
    first = last = next(i for i, line in enumerate(lines) if line.startswith("|"))
    while last + 1 < len(lines) and lines[last + 1].startswith("|"):
        last += 1
    return (f"<h3>{esc(title)}</h3>\n" + markdown("\n".join(lines[:first]))
            + f'<div class="scroll"><table><tr><th>strategy</th>{head}</tr>{"".join(rows)}'
              "</table></div>\n"
            + '<p class="note">Click a cell for its replicates: score, fold scores, the chosen '
              "setting, trials, training length and flags.</p>\n"
            + markdown("\n".join(lines[last + 1:])))


# -- tuning -----------------------------------------------------------------------------------

def trials_details(t: report.StudyTables, trials: pd.DataFrame) -> str:
    """Per tuned cell, every trial: its setting, score, pruned or not, the chosen one marked."""
    if trials.empty:
        return ""
    chosen = {((r.get("hpo") or {}).get("study_name"), (r.get("hpo") or {}).get("best_trial"))
              for r in t.records if r.get("hpo")}
    replicate = {(r.get("hpo") or {}).get("study_name"): r["seed"] for r in t.records if r.get("hpo")}
    from bench.analysis.plots import TRIAL_COLUMNS

    params = [c for c in trials.columns if c not in TRIAL_COLUMNS]
    rank = {s: i for i, s in enumerate(t.order)}
    out = []
    groups = sorted(trials.groupby(["strategy", "size"]),
                    key=lambda kv: (size_order(kv[0][1]), rank.get(kv[0][0], 99)))
    for (strategy, size), g in groups:
        g = g.sort_values(["study", "number"])
        rows = [{"seed": replicate.get(r["study"], ""), "trial": int(r["number"]),
                 **{p: r[p] for p in params if not pd.isna(r[p])},
                 "held-out score": r["value"], "state": "pruned (its best)" if r["pruned"]
                 else "complete", "chosen": "yes" if (r["study"], r["number"]) in chosen else ""}
                for _, r in g.iterrows()]
        out.append(f"<details><summary>{esc(strategy)} n={esc(size)}: {len(g)} trials over "
                   f"{g['study'].nunique()} tuning(s), {int(g['pruned'].sum())} pruned</summary>"
                   f"{table(rows)}</details>\n")
    return "<h3>Every trial, per cell</h3>\n" + "".join(out)


# -- reproducibility --------------------------------------------------------------------------

def reproducibility(t: report.StudyTables) -> str:
    runs = _runs(t.study_dir)
    rows = []
    for run in runs:
        versions = run.get("versions") or {}
        git = run.get("git") or {}
        rows.append({"started": run.get("started"), "finished": run.get("finished") or "not recorded",
                     "command": " ".join(run.get("argv") or []),
                     "code": str(git.get("commit", "?"))[:12] + (" +changes" if git.get("dirty") else ""),
                     "machine": _machine(run),
                     "torch": versions.get("torch"), "lightning": versions.get("lightning"),
                     "optuna": versions.get("optuna")})
    commands = ("STUDY=results/" + t.name + "   # this study's folder, the one holding report/\n"
                "transfer-bench report $STUDY            # this page and every table, from the records\n"
                "transfer-bench reproduce $STUDY --cells 3   # rerun 3 recorded cells, compare\n"
                "optuna-dashboard sqlite:///$STUDY/optuna.db  # the trials (pip install optuna-dashboard)\n")
    return ((table(rows) if rows else missing("No manifest.json: the runs that made these records "
                                              "are not recorded."))
            + "<p>How to rerun (the manifest holds each run's full configuration and data "
              "checksums; docs/reproducibility.md):</p>\n"
            + f"<pre>{esc(commands)}</pre>\n")


# -- the page ---------------------------------------------------------------------------------

def _shell(title: str, sections: Iterable[tuple[str, str, str]], lead: str = "") -> str:
    sections = list(sections)
    nav = "\n".join(f'<a href="#{a}">{esc(h)}</a>' for a, h, _ in sections)
    body = "".join(f'<section id="{a}">\n<h2>{esc(h)}</h2>\n{content}</section>\n'
                   for a, h, content in sections)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1>{lead}<nav>{nav}</nav></header>\n{body}"
            "</body>\n</html>\n")


def study_page(t: report.StudyTables, out: Path, drawn: Figures | None) -> str:
    """The page's HTML: ``out`` is the report folder whose Markdown files it renders."""
    def section(anchor: str) -> str:
        files = {
            "gains": ["gains.md"] + sorted(p.name for p in out.glob("gains_vs_*.md")),
            "efficiency": ["efficiency.md"], "variance": ["variance.md"],
            "cost": ["cost.md"], "sources": ["transferability.md", "negative_transfer.md"],
        }
        if anchor == "asked":
            return asked(t)
        if anchor == "headline":
            return headline(t, out)
        if anchor == "reproducibility":
            return reproducibility(t)
        if anchor == "curves":
            return (figure(drawn, "learning_curves", "Mean and 95% CI per strategy and size as error "
                           "bars: up to six strategies dodged sideways in one plot, more in one "
                           "panel each against scratch.")
                    or missing("Learning curves need at least two sizes."))
        if anchor == "tuning":
            parts = [report_file(out, n) for n in ("budget.md", "tuning.md", "tuning_gain.md",
                                                   "edges.md")]
            parts.append(figure(drawn, "lr_sensitivity", "Every trial's held-out score against "
                                "its learning rate; hollow: pruned (its best intermediate)."))
            parts.append(figure(drawn, "expected_best_vs_trials", "Expected best validation "
                                "score of k random-search trials (Dodge et al. 2019)."))
            if drawn is not None:
                parts.append(trials_details(t, drawn.trials))
            return "".join(parts) if any(parts) else missing("No tuned cells.")
        shown = "".join(report_file(out, n) for n in files[anchor])
        if anchor == "gains":
            shown = figure(drawn, "gains_forest", "Paired gain over scratch with its 95% CI; "
                           "filled markers are significant after Holm.") + shown
        if anchor == "cost":
            shown += figure(drawn, "cost", "Accuracy (95% CI) against the weights the final "
                            "fit trains.")
        if anchor == "sources":
            shown += figure(drawn, "transferability", "Each source's estimate against its "
                            "measured gain over scratch.")
        return shown or missing({
            "gains": "No scratch strategy: no gains over it.",
            "efficiency": "Needs scratch at two or more sizes.",
            "variance": "Needs several seeds (or sources, tunings) per cell.",
            "cost": "No neural final fits.",
            "sources": "One source and no significantly negative cell: nothing to show.",
        }[anchor])

    lead = f'<p class="note">{esc(report.protocol_line(t.df))}</p>'
    return _shell(f"{t.name}: which transfer strategy wins, and by how much",
                  [(a, h, section(a)) for a, h in SECTIONS], lead)


def comparison_page(tables: list[report.StudyTables], side_by_side_md: str,
                    curves: dict[str, str]) -> str:
    """The side-by-side page: the comparison table, then each study's question, headline
    table and learning curves (SVG by study name in ``curves``)."""
    sections = [("side-by-side", "Side by side", markdown(side_by_side_md))]
    for t in tables:
        content = asked(t) + headline(t, report.report_dir(t.study_dir, t.metric))
        if t.name in curves:
            content += f"<figure>{curves[t.name]}</figure>\n"
        sections.append((f"study-{esc(t.name)}", t.name, content))
    return _shell("Side by side: " + ", ".join(t.name for t in tables), sections)


def write(t: report.StudyTables, out: Path, drawn: Figures | None) -> Path:
    path = out / PAGE
    atomic_write_text(path, study_page(t, out, drawn))
    return path


def page_sections(text: str) -> list[str]:
    """The section anchors a page holds, in order (what the browser test checks for)."""
    return re.findall(r'<section id="([^"]+)">', text)

