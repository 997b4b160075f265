"""The study's page (report/index.html): the same numbers as the Markdown, every cell's
replicates one click away, self-contained, and checked in a real browser as a reader sees it."""

from __future__ import annotations

import io
import os
import re
import shutil
from html import escape
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import REPO, run_cli

from bench.analysis import page, report
from bench.folder import load_records
from chromium import browser, look

REFERENCE_STUDY = REPO / "results" / "movie_to_amazon_reference"
WIDTH = 1280


def _copy(study: Path, tmp_path: Path) -> Path:
    copy = tmp_path / study.name
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("report", "reproductions"))
    return copy


def rows_follow(lines: list[str], i: int) -> bool:
    """Line ``i`` is a data row: a table's separator line comes before it in the same table."""
    while i > 0 and lines[i - 1].startswith("|"):
        i -= 1
        if set(lines[i]) <= set("|:- "):
            return True
    return False


def _md_cells(table_md: str) -> dict[tuple[str, str], str]:
    """(strategy, column) -> the cell's text in table.md, markup removed."""
    all_lines = table_md.splitlines()
    start = next(i for i, line in enumerate(all_lines) if line.startswith("|"))
    lines = []
    for line in all_lines[start:]:  # the first table only (the notes hold more)
        if not line.startswith("|"):
            break
        lines.append(line)
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = {}
    for line in lines[2:]:
        parts = [c.strip() for c in line.strip("|").split("|")]
        for col, text in zip(head[1:], parts[1:]):
            if text:
                cells[(parts[0], col)] = text.replace("**", "").replace("*", "")
    return cells


class _Cells(HTMLParser):
    """The headline cells (``data-cell``): summary text and the replicate rows of its details."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, list] = {}
        self._cell: str | None = None
        self._depth = 0
        self._in_summary = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and "data-cell" in attrs:
            self._cell, self._depth = attrs["data-cell"], 0
            self.cells[self._cell] = ["", 0]
        elif self._cell is not None:
            if tag == "td":
                self._depth += 1
            elif tag == "summary":
                self._in_summary = True
            elif tag == "tr":
                self.cells[self._cell][1] += 1

    def handle_endtag(self, tag):
        if tag == "summary":
            self._in_summary = False
        elif tag == "td" and self._cell is not None:
            if self._depth == 0:
                self._cell = None
            else:
                self._depth -= 1

    def handle_data(self, data):
        if self._in_summary and self._cell is not None:
            self.cells[self._cell][0] += data


def _html_cells(html_text: str) -> dict[tuple[str, str], tuple[str, int]]:
    """(strategy, column) -> (the headline cell's summary text, replicate rows in its details)."""
    parser = _Cells()
    parser.feed(html_text)
    out = {}
    for key, (text, rows) in parser.cells.items():
        strategy, size = key.rsplit(" ", 1)
        out[(strategy, size)] = (text, rows - 1)  # less the details table's header row
    return out


@pytest.fixture(scope="module")
def reference_page(tmp_path_factory):
    """``transfer-bench report`` on a copy of the committed reference study (real records)."""
    copy = _copy(REFERENCE_STUDY, tmp_path_factory.mktemp("page"))
    proc = run_cli("report", str(copy))
    assert proc.returncode == 0, proc.stderr
    return copy


def test_page_is_the_report_numbers_with_each_cells_replicates(reference_page):
    out = reference_page / "report"
    text = (out / page.PAGE).read_text()
    assert page.page_sections(text) == [a for a, _ in page.SECTIONS]
    md = _md_cells((out / "table.md").read_text())
    shown = _html_cells(text)
    assert set(shown) == set(md) and len(md) > 10
    records = load_records(reference_page / "records.jsonl")
    for (strategy, col), (summary, replicates) in shown.items():
        assert summary == md[(strategy, col)], (strategy, col)
        runs = [r for r in records if r["strategy"] == strategy and r["n_train"] == int(col[2:])]
        assert replicates == len(runs) > 0, (strategy, col)
    # every row of gains.md / variance.md / efficiency.md is on the page as the file has it
    for name in ("gains.md", "variance.md", "efficiency.md"):
        lines = (out / name).read_text().splitlines()
        rows = [line for i, line in enumerate(lines) if line.startswith("|") and rows_follow(lines, i)]
        assert rows, name
        for row in rows:
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            pattern = r"\s*".join(r'<td(?: style="[^"]*")?>' + re.escape(escape(c)) + "</td>"
                                  for c in cells)
            assert re.search(pattern, text), (name, row)
    # the chosen trial of a tuned replicate is marked in the trial list
    assert "<td>yes</td>" in text and "pruned (its best)" in text
    # self-contained: no reference to anything outside the file
    assert not re.search(r'(src|href)="(?!#|data:)', text)
    assert "<script" not in text and "<link" not in text
    assert len(text.encode()) < 5_000_000


def test_page_is_byte_for_byte_the_committed_one(reference_page):
    """No timestamp or path of the run in the page: a regeneration reproduces it exactly."""
    assert (reference_page / "report" / page.PAGE).read_bytes() == \
        (REFERENCE_STUDY / "report" / page.PAGE).read_bytes()


def _not_blank(png: bytes) -> tuple[int, float]:
    from PIL import Image

    im = Image.open(io.BytesIO(png)).convert("RGB")
    small = im.resize((im.width // 4, im.height // 4))
    pixels = list(small.getdata())
    inked = sum(1 for p in pixels if sum(p) < 600) / len(pixels)
    return len(set(pixels)), inked


@pytest.mark.skipif(browser() is None and not os.environ.get("TRANSFER_BENCH_REQUIRE_BROWSER"),
                    reason="no Chromium here (apt-get install chromium); .ci/run installs it")
def test_page_in_a_real_browser(reference_page, tmp_path):
    """Headless Chromium at 1280 px: no console error, no request leaving the file, every
    section, nothing past the right edge, a screenshot with something on it."""
    seen = look(reference_page / "report" / page.PAGE, width=WIDTH)
    assert seen.console_errors == []
    assert seen.requests == []
    assert seen.sections == [a for a, _ in page.SECTIONS]
    assert seen.scroll_width <= WIDTH == seen.window_width
    assert seen.overflowing == []
    colours, inked = _not_blank(seen.screenshot)
    assert colours > 50 and inked > 0.02, (colours, inked)
    # the same checks catch a page that breaks them (the probe is not blind)
    bad = tmp_path / "bad.html"
    bad.write_text((reference_page / "report" / page.PAGE).read_text().replace(
        "<body>", '<body><img src="http://127.0.0.1:9/x.png"><div style="width:3000px">w</div>'))
    seen = look(bad, width=WIDTH)
    assert seen.console_errors and seen.requests == ["http://127.0.0.1:9/x.png"]
    assert seen.scroll_width > WIDTH and seen.overflowing


def test_side_by_side_page_and_its_bad_input(tmp_path):
    a = _copy(REFERENCE_STUDY, tmp_path / "a")
    b = _copy(REPO / "results" / "movie_to_amazon_reference_fixed_val", tmp_path / "b")
    out = tmp_path / "cmp" / "side.html"
    proc = run_cli("report", str(a), str(b), "--no-plots", "--side-by-side", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert page.page_sections(text) == ["side-by-side", f"study-{a.name}", f"study-{b.name}"]
    assert text.count("<svg") == 2  # each study's learning curves
    md = report.side_by_side([a, b])
    first_cell = next(line for line in md.splitlines()
                      if line.startswith("| majority")).split("|")[2].strip()
    assert first_cell and first_cell in text
    # one study: one line, exit 2
    proc = run_cli("report", str(a), "--side-by-side", str(tmp_path / "one.html"))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "needs two or more" in proc.stderr and not (tmp_path / "one.html").exists()


def test_a_report_folder_that_cannot_be_written_changes_nothing(tmp_path):
    study = _copy(REFERENCE_STUDY, tmp_path)
    (study / "report").write_text("not a folder")  # even root cannot make a folder here
    before = {p.name: p.read_bytes() for p in study.iterdir() if p.is_file()}
    proc = run_cli("report", str(study), "--no-plots")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip().splitlines()[-1]]
    assert "cannot write the report to" in proc.stderr
    assert {p.name: p.read_bytes() for p in study.iterdir() if p.is_file()} == before
