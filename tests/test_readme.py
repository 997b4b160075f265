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
