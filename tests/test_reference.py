"""The committed reference study: its report regenerates byte for byte from its records."""

from __future__ import annotations

import shutil

import pytest

from conftest import REPO, run_cli

REFERENCE = REPO / "results" / "movie_to_amazon_reference"
TABLES = ("table.md", "table.csv", "table.tex", "gains.md", "gains.csv", "efficiency.md",
          "efficiency.csv", "budget.md", "tuning.md")


@pytest.mark.skipif(not (REFERENCE / "records.jsonl").exists(), reason="no committed reference study")
def test_committed_reference_tables_regenerate_byte_for_byte(tmp_path):
    copy = tmp_path / REFERENCE.name
    shutil.copytree(REFERENCE, copy, ignore=shutil.ignore_patterns("report", "reproductions"))
    proc = run_cli("report", str(copy), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    for name in TABLES:
        assert (copy / "report" / name).read_bytes() == (REFERENCE / "report" / name).read_bytes(), name
    records = (REFERENCE / "records.jsonl").read_text().splitlines()
    assert len(records) == 6 * 5 * 5  # 6 sizes x (4 strategies + baseline) x 5 seeds
