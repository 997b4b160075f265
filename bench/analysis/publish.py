"""One study's whole report: the tables, the figures and the page, in that order (the figures
and the page read the tables just written). ``transfer-bench report`` and the end of every
sweep both call :func:`publish`, so the two can never write different reports."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

from bench.analysis import page, report
from bench.cache import atomic_write_text
from bench.errors import BenchError


def writable(folder: Path) -> None:
    """Refuse up front a report folder that cannot be written, before any file in it changes."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise BenchError(f"cannot write the report to {folder}: {exc.strerror or exc}") from None


def publish(study_dir: Path, metric: str = report.DEFAULT_METRIC, against: Iterable[str] = (),
            plots: bool = True) -> tuple[Path, str, list[str]]:
    """Write ``report/``: tables, then (unless ``plots`` is off) the figures, then index.html.
    Returns (folder, the Markdown to print, notes on what was skipped)."""
    tables = report.load(study_dir, metric)  # a damaged study folder is named before any write
    writable(report.report_dir(study_dir, metric))
    try:
        out, text, notes = report.write(study_dir, metric, against)
        drawn = None
        if plots:
            from bench.analysis import plots as plots_mod

            drawn = plots_mod.write_all(study_dir, out, metric)
            notes += drawn.notes
        page.write(tables, out, drawn)
    except BenchError as exc:
        if "no space left" not in str(exc):
            raise
        # every file is written whole or not at all (cache.atomic_write): the last report's
        # files or the new ones, never a truncated one; the records are only read
        raise BenchError(f"{exc}; the records in {study_dir} are intact: free space, then "
                         f"transfer-bench report {study_dir} rewrites the report") from None
    return out, text, notes


def side_by_side(study_dirs: list[Path], target: Path, metric: str = report.DEFAULT_METRIC) -> str:
    """The comparison of ``study_dirs`` to ``target``: Markdown, or the page when it ends in
    .html (each study's question, headline table and learning curves beside the table).
    Returns the Markdown table."""
    text = report.side_by_side(study_dirs, metric)
    writable(target.parent if str(target.parent) else Path("."))
    if target.suffix.lower() in (".html", ".htm"):
        from bench.analysis import plots as plots_mod

        tables = [report.load(d, metric) for d in study_dirs]
        curves = {}
        for t in tables:
            if t.cells["n_train"].nunique() > 1:
                drawn = plots_mod.Figures()
                plots_mod.learning_curves(t.cells, t.order, metric,
                                          f"{t.name}\n{report.protocol_line(t.df)}", None, drawn)
                curves[t.name] = drawn.svg["learning_curves"]
        atomic_write_text(target, page.comparison_page(tables, text, curves))
    else:
        atomic_write_text(target, text)
    return text
