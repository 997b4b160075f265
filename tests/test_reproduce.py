"""`transfer-bench reproduce`: rerun recorded cells from the manifest, compare, and say so."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli

from bench.results import load_records


def test_reproduce_matches_exactly_on_the_same_machine(tuned_study, tmp_path):
    before = (tuned_study / "records.jsonl").read_bytes()
    out = tmp_path / "rerun"
    proc = run_cli("reproduce", str(tuned_study), "--cells", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "reproduce.json").read_text())
    assert result["ok"] and result["environment_differences"] == []
    rows = result["rows"]
    assert len(rows) == 3 * 2  # three cells, test and validation accuracy
    assert len({(r["strategy"], r["size"]) for r in rows}) == 3
    assert all(r["difference"] == 0 and r["tolerance"] == 0 for r in rows)
    assert "6/6 within tolerance" in proc.stdout
    assert (tuned_study / "records.jsonl").read_bytes() == before  # the study is only read
    assert not (out / "cache").exists()  # the rebuilt cache is thrown away


def test_a_changed_record_is_caught_with_exit_1(tuned_study, tmp_path):
    copy = tmp_path / "small"
    shutil.copytree(tuned_study, copy, ignore=shutil.ignore_patterns("report", "reproductions"))
    records = load_records(copy / "records.jsonl")
    victim = next(r for r in records if r["strategy"] == "tfidf_logreg" and r["seed"] == 0)
    victim["metrics"]["test_acc"] = round(victim["metrics"]["test_acc"] - 0.05, 6)
    (copy / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = run_cli("reproduce", str(copy), "--all", "--out", str(tmp_path / "rerun"),
                   "--reuse-cache")
    assert proc.returncode == 1, proc.stderr
    rows = json.loads((tmp_path / "rerun" / "reproduce.json").read_text())["rows"]
    bad = [r for r in rows if not r["within"]]
    assert [(b["strategy"], b["seed"], b["metric"]) for b in bad] == [("tfidf_logreg", 0, "test_acc")]
    assert abs(bad[0]["difference"] - 0.05) < 1e-6


def test_a_study_without_manifest_is_refused(tuned_study, tmp_path):
    copy = tmp_path / "small"
    shutil.copytree(tuned_study, copy)
    (copy / "manifest.json").unlink()
    proc = run_cli("reproduce", str(copy))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "manifest.json" in proc.stderr
