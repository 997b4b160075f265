"""The README's and the docs/ pages' numbers come from committed report files, never typed in
by hand.

A block ``<!-- from PATH -->`` ... ``<!-- end -->`` must be exactly that file; every other number
with three decimals on a page (a quoted accuracy, gain or p-value) must occur in a committed
report or benchmark file. The README is a front page: at most 300 lines, and every docs/ page it
links to exists.
"""

from __future__ import annotations

import functools
import json
import re

import pytest

from conftest import REPO

BLOCK = re.compile(r"<!-- from (\S+) -->\n(.*?)<!-- end -->", re.S)
NUMBER = re.compile(r"(?<![\d.])[+-]?\d\.\d{3}(?![\d])")
# A Markdown link target that starts with docs/ (an optional ./), up to a #fragment or the end.
DOCS_LINK = re.compile(r"\]\((?:\./)?(docs/[^)#\s]*)(?:#[^)\s]*)?\)")
README_MAX_LINES = 300

PAGES = ["README.md",
         *sorted(p.relative_to(REPO).as_posix() for p in (REPO / "docs").glob("*.md"))]


@functools.lru_cache(maxsize=1)
def _pool() -> str:
    """Every committed report table, and the benchmark figures as a table would print them."""
    texts = [p.read_text() for p in sorted((REPO / "results").glob("**/report/**/*.md"))]
    texts.append((REPO / "results" / "coverage.md").read_text())  # the simulated coverage
    for path in sorted((REPO / "results" / "benchmark").glob("*.json")):
        def walk(v):
            if isinstance(v, float):
                texts.append(f"{v:.3f}")
            elif isinstance(v, dict):
                [walk(x) for x in v.values()]
            elif isinstance(v, list):
                [walk(x) for x in v]
        walk(json.loads(path.read_text()))
    return "\n".join(texts)


def test_the_manual_has_its_pages_and_quotes_the_reports():
    assert len(PAGES) > 1, "no docs/*.md pages"
    blocks = sum(len(BLOCK.findall((REPO / page).read_text())) for page in PAGES)
    assert blocks >= 14  # the README's headline table and the 13 tables the docs quote


@pytest.mark.parametrize("page", PAGES)
def test_every_table_block_is_the_report_file_it_names(page):
    text = (REPO / page).read_text()
    for path, body in BLOCK.findall(text):
        assert (REPO / path).is_file(), f"{page}: no committed file {path}"
        assert body.strip() == (REPO / path).read_text().strip(), f"{page}: {path}"


@pytest.mark.parametrize("page", PAGES)
def test_every_quoted_number_occurs_in_a_committed_report(page):
    prose = BLOCK.sub("", (REPO / page).read_text())
    pool = _pool()
    missing = sorted({n.lstrip("+") for n in NUMBER.findall(prose)
                      if n.lstrip("+-") not in pool})
    assert not missing, f"{page} numbers found in no committed report: {missing}"


def test_the_readme_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def test_every_docs_link_in_the_readme_points_to_an_existing_file():
    targets = DOCS_LINK.findall((REPO / "README.md").read_text())
    assert targets, "the README links to no docs/ page"
    missing = sorted({t for t in targets if not (REPO / t).is_file()})
    assert not missing, f"README.md links to missing docs/ files: {missing}"


RUNNING = re.compile(r"still running|is running|being rerun|as far as it has run")


def _complete_studies() -> list[str]:
    """Committed experiments whose records cover their grid, as `validate` counts them."""
    from conftest import run_main

    out = []
    for path in sorted((REPO / "conf" / "experiment").glob("*.yaml")):
        if not (REPO / "results" / path.stem / "records.jsonl").exists():
            continue
        text = run_main("validate", f"experiment={path.stem}").stdout
        grid = re.search(r"= (\d+) replicates", text)
        done = re.search(r"\((\d+) records so far", text)
        if grid and done and int(done[1]) >= int(grid[1]):
            out.append(path.stem)
    return out


def test_no_page_calls_a_complete_study_running():
    """A paragraph that names a study `validate` finds complete must not say it is running."""
    complete = _complete_studies()
    assert "movie_to_amazon_minilm" in complete  # the check can fail: the grid is known
    pages = [REPO / "README.md", REPO / "results" / "README.md",
             *sorted((REPO / "docs").glob("*.md"))]
    for page in pages:
        for paragraph in page.read_text().split("\n\n"):
            for study in complete:
                named = re.search(rf"\b{study}\b(?!_)", paragraph)
                if named and RUNNING.search(paragraph):
                    raise AssertionError(f"{page.name} calls {study} running: "
                                         f"{paragraph[:300]!r}")
