"""The whole pipeline from the real CLI on small generated data: records, table, resume, seeds."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli, small_study_overrides

from bench.cache import sha256_file as sha256
from bench.folder import load_records


def _metrics(path: Path) -> dict:
    return {(r["strategy"], r["size"], r["seed"]): r["metrics"] for r in load_records(path)}


def test_study_runs_every_cell_then_resumes_without_rerunning(tmp_path, small_data, cache):
    results = tmp_path / "results"
    args = small_study_overrides(small_data, results, cache)
    first = run_cli("sweep", *args)
    assert first.returncode == 0, first.stderr
    records_path = results / "small" / "records.jsonl"
    records = load_records(records_path)
    # (3 strategies + the majority floor) x 2 sizes x 2 seeds, one record each
    assert len(records) == 16
    assert {(r["strategy"], r["size"], r["seed"]) for r in records} == {
        (s, n, seed) for s in ("scratch", "frozen", "full", "majority") for n in (20, 100)
        for seed in (0, 1)}
    for r in records:  # the budget protocol: no validation split, so no validation metrics
        neural = r["strategy"] != "majority"  # a constant guess has no meaningful loss
        assert set(r["metrics"]) == {"test_acc", "test_f1"} | ({"test_loss"} if neural else set())
        assert 0.0 <= r["metrics"]["test_acc"] <= 1.0
        assert r["n_train"] == r["size"]
    # scratch transfers nothing; the others name the cached source model and the vectors
    assert all(r["source"] is None and r["vectors"] is None for r in records
               if r["strategy"] in ("scratch", "majority"))
    assert len({r["source"]["key"] for r in records
                if r["strategy"] not in ("scratch", "majority")}) == 1
    # the sweep ends with the report: its table (intervals, protocol) printed and written
    table = (results / "small" / "report" / "table.md").read_text()
    assert table in first.stdout and "95% CI of the population mean" in table
    assert "Protocol budget: labels per cell = n" in table
    for name in ("scratch", "frozen", "full"):
        assert f"| {name} " in table
    assert "n=20" in table and "n=100" in table and (results / "small" / "report" / "gains.md").exists()
    # plots=false (the tests' setting): tables and page, no figures, and it says how to get them
    report = results / "small" / "report"
    assert not list(report.glob("*.png")) and (report / "index.html").exists()
    assert "no figures (plots=false): transfer-bench report" in first.stderr
    # the source model is trained once, then served from the cache
    assert "trained in" in first.stderr
    lines_before = records_path.read_text()

    again = run_cli("sweep", *args, "plots=true")  # the default: the closing report draws too
    assert again.returncode == 0, again.stderr
    assert (report / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "8 cells x 2 seeds, 8 cells already complete" in again.stderr
    assert "from cache" in again.stderr
    assert records_path.read_text() == lines_before

    # extending the grid appends only the new cells
    more = run_cli("sweep", *args, "data.sizes=[20,100,200]", "strategy=[full]", "seeds=[0]")
    assert more.returncode == 0, more.stderr
    assert len(load_records(records_path)) == 18  # full and majority at n=200, seed 0
    assert "n=200" in (results / "small" / "report" / "table.md").read_text()  # report renewed

    # the manifest: one entry per run, every record points at its run
    manifest = json.loads((results / "small" / "manifest.json").read_text())
    runs = manifest["runs"]
    assert len(runs) == 3
    assert {r["run_id"] for r in load_records(records_path)} <= set(runs)
    last = max(runs.values(), key=lambda r: r["started"])
    assert "strategy=[full]" in last["overrides"] and last["finished"] >= last["started"]
    assert last["config"]["data"]["sizes"] == [20, 100, 200]
    assert last["git"]["commit"] is None or len(last["git"]["commit"]) == 40
    assert last["versions"]["torch"] and last["versions"]["optuna"] and last["versions"]["gensim"]
    assert last["hardware"]["cpu_count"] >= 1 and last["hardware"]["threads"]["torch"] >= 1
    files = manifest["data"]["target"]["files_sha256"]
    assert files == {Path(small_data["target"]).name: sha256(small_data["target"])}
    assert manifest["seeds"]["replicates"] == [0, 1] and manifest["seeds"]["split"] == 0
    assert manifest["study_hash"] == load_records(records_path)[0]["study_hash"]


def test_same_seed_gives_identical_metrics_and_seeds_differ(tmp_path, small_data, cache):
    runs = []
    for name in ("a", "b"):
        args = small_study_overrides(small_data, tmp_path / name, cache)
        proc = run_cli("sweep", *args, "strategy=[scratch,full]", "data.sizes=[100]",
                       "embeddings.corpus=source")  # word2vec trained on the source texts
        assert proc.returncode == 0, proc.stderr
        runs.append(_metrics(tmp_path / name / "small" / "records.jsonl"))
    assert runs[0] == runs[1]
    full = runs[0]
    assert full[("full", 100, 0)] != full[("full", 100, 1)]  # seed 0 is a seed, and seeds matter


def test_changing_a_result_setting_refuses_to_mix_into_the_old_study(tmp_path, small_data, cache):
    args = small_study_overrides(small_data, tmp_path, cache)
    ok = run_cli("sweep", *args, "strategy=[scratch]", "data.sizes=[20]", "seeds=[0]")
    assert ok.returncode == 0, ok.stderr
    before = (tmp_path / "small" / "records.jsonl").read_text()
    clash = run_cli("sweep", *args, "strategy=[scratch]", "data.sizes=[20]", "seeds=[0]",
                    "train.lr=0.01")
    assert clash.returncode == 2
    assert "different configuration" in clash.stderr
    assert (tmp_path / "small" / "records.jsonl").read_text() == before
    info = json.loads((tmp_path / "small" / "study.json").read_text())
    assert info["config"]["train"]["lr"] == 0.001


def test_multirun_with_joblib_launcher_runs_cells_in_parallel_processes(tmp_path, small_data, cache):
    args = small_study_overrides(small_data, tmp_path, cache)
    proc = run_cli("sweep", "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                   *[a for a in args if not a.startswith("data.sizes")],
                   "strategy=scratch,full", "data.sizes=[20]")
    assert proc.returncode == 0, proc.stderr
    records = load_records(tmp_path / "small" / "records.jsonl")
    lines = (tmp_path / "small" / "records.jsonl").read_text().splitlines()
    # two jobs, one per strategy, appended to one study without interleaving or loss; both
    # jobs reach the majority floor's cells, and its records are written once
    assert len(lines) == len(records) == 6
    assert {(r["strategy"], r["seed"]) for r in records} == {
        ("scratch", 0), ("scratch", 1), ("full", 0), ("full", 1), ("majority", 0),
        ("majority", 1)}
    assert len({r["source"]["key"] for r in records if r["strategy"] == "full"}) == 1
