"""The README's numbers come from committed report files, never typed in by hand.

A block ``<!-- from PATH -->`` ... ``<!-- end -->`` must be exactly that file; every other number
with three decimals in the README (a quoted accuracy, gain or p-value) must occur in a committed
report or benchmark file.
"""

from __future__ import annotations

import json
import re

from conftest import REPO

BLOCK = re.compile(r"<!-- from (\S+) -->\n(.*?)<!-- end -->", re.S)
NUMBER = re.compile(r"(?<![\d.])[+-]?\d\.\d{3}(?![\d])")


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


def test_every_table_block_is_the_report_file_it_names():
    readme = (REPO / "README.md").read_text()
    blocks = BLOCK.findall(readme)
    assert len(blocks) >= 4
    for path, body in blocks:
        assert body.strip() == (REPO / path).read_text().strip(), path


def test_every_quoted_number_occurs_in_a_committed_report():
    prose = BLOCK.sub("", (REPO / "README.md").read_text())
    pool = _pool()
    missing = sorted({n.lstrip("+") for n in NUMBER.findall(prose)
                      if n.lstrip("+-") not in pool})
    assert not missing, f"README numbers found in no committed report: {missing}"
