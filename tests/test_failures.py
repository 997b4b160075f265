"""Failure safety: diverging trials, SIGKILL at several points, concurrent writers."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from bench.folder import load_records
from conftest import REPO, cell_study, run_cli, small_study_overrides

EXE = Path(sys.executable).with_name("transfer-bench")


def _metrics(path: Path) -> dict:
    return {(r["strategy"], str(r["size"]), r["seed"]): r["metrics"] for r in load_records(path)}


def test_diverging_trials_are_pruned_with_the_reason_and_the_study_goes_on(tmp_path, small_data,
                                                                           cache):
    # The default (the first trial) blows up for certain; the sampler's seed mixes in the
    # cell's identity, which names the temp data files, so the draws after it vary by run:
    # 9 of them all drawing 1e30 has odds of 2^-9.
    args = [*small_study_overrides(small_data, tmp_path, cache, hpo="tpe"),
            "strategy=[full]", "data.sizes=[100]", "seeds=[0]", "hpo.n_trials=10",
            "hpo.pruner.name=none", "~hpo.space.lr", "train.lr=1.0e+30",
            "+hpo.space.lr={path:train.lr,choices:[0.001,1.0e+30]}"]
    proc = run_cli("sweep", *args)
    assert proc.returncode == 0, proc.stderr
    study = cell_study(f"sqlite:///{tmp_path / 'small' / 'optuna.db'}", "full", 100, 0)
    diverged = [t for t in study.trials if "pruned_reason" in t.user_attrs]
    assert study.trials[0] in diverged and study.trials[0].user_attrs.get("default")
    for t in diverged:
        assert t.state == TrialState.PRUNED
        assert t.user_attrs["pruned_reason"].startswith("diverged: training loss became")
        assert t.params["lr"] > 1.0
    assert any(t.state == TrialState.COMPLETE for t in study.trials)
    assert [r["strategy"] for r in load_records(tmp_path / "small" / "records.jsonl")] == [
        "majority", "full"]  # the baselines run first


def test_a_diverging_final_fit_is_evaluated_from_before_the_divergence(tmp_path, small_data, cache):
    """Under the fixed validation split a final fit has checkpoints to fall back on (rounds of
    one step, so it validates once before it blows up)."""
    args = [*small_study_overrides(small_data, tmp_path, cache), "strategy=[full]",
            "data.sizes=[100]", "seeds=[0]", "train.lr=1.0e+30", "train.batch_size=100",
            "protocol=fixed_val", "train.min_steps=1"]
    proc = run_cli("sweep", *args)
    assert proc.returncode == 0, proc.stderr
    (record,) = [r for r in load_records(tmp_path / "small" / "records.jsonl")
                 if r["strategy"] != "majority"]
    assert record["diverged"].startswith("training loss became")
    assert "diverged" not in json.dumps(record["metrics"])
    assert 0.0 <= record["metrics"]["test_acc"] <= 1.0
    assert "evaluated from its best checkpoint" in proc.stderr


def _check_intact(study: Path) -> None:
    """Whatever a kill left: every JSON file parses, every kept record line is whole."""
    for name in ("study.json", "manifest.json"):
        if (study / name).exists():
            json.loads((study / name).read_text())
    if (study / "records.jsonl").exists():
        lines = (study / "records.jsonl").read_text().splitlines()
        kept = load_records(study / "records.jsonl")
        assert len(kept) >= len(lines) - 1  # at most one torn line, and it is dropped


def test_sigkill_at_several_points_never_corrupts_and_resume_gives_the_clean_result(
        tmp_path, small_data, cache):
    clean = run_cli("sweep", *small_study_overrides(small_data, tmp_path / "clean", cache))
    assert clean.returncode == 0, clean.stderr
    expected = _metrics(tmp_path / "clean" / "small" / "records.jsonl")
    assert len(expected) == 16  # (3 strategies + majority) x 2 sizes x 2 seeds

    results = tmp_path / "killed"
    args = small_study_overrides(small_data, results, tmp_path / "cache-killed")
    study = results / "small"
    # kill during preparation (no records yet), after the first record, and mid-way
    for kill_after_records in (0, 1, 6):
        proc = subprocess.Popen([str(EXE), "sweep", *args], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            have = len(load_records(study / "records.jsonl"))
            started = (study / "manifest.json").exists() or kill_after_records == 0
            if started and have >= kill_after_records:
                if kill_after_records == 0:
                    time.sleep(1.5)  # inside vectors / source training
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.05)
        proc.wait()
        _check_intact(study)
    final = run_cli("sweep", *args)
    assert final.returncode == 0, final.stderr
    _check_intact(study)
    got = _metrics(study / "records.jsonl")
    assert got == expected  # same cells, same numbers as the uninterrupted run
    lines = (study / "records.jsonl").read_text().splitlines()
    assert len({(json.loads(ln)["strategy"], json.loads(ln)["size"], json.loads(ln)["seed"])
                for ln in lines if ln.startswith("{") and ln.endswith("}")}) == 16


def test_two_studies_and_two_workers_writing_at_once_lose_nothing(tmp_path, small_data, cache):
    base = small_study_overrides(small_data, tmp_path, cache)
    # prepare the shared cache once, so the three processes start training together
    warm = run_cli("sweep", *base, "study=warm", "strategy=[full]", "data.sizes=[20]", "seeds=[0]")
    assert warm.returncode == 0, warm.stderr
    commands = [[*base, "study=a"], [*base, "study=a"], [*base, "study=b"]]
    procs = [subprocess.Popen([str(EXE), "sweep", *c], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in commands]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
    for name in ("a", "b"):
        path = tmp_path / name / "records.jsonl"
        lines = path.read_text().splitlines()
        assert len(lines) == len(load_records(path)) == 16  # every cell once, no torn lines
    # the two workers of study a ran the same deterministic cells: identical to study b
    assert _metrics(tmp_path / "a" / "records.jsonl") == _metrics(tmp_path / "b" / "records.jsonl")
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert len(manifest["runs"]) == 2


def test_a_corrupt_cached_source_model_is_rebuilt_not_trusted(tmp_path, small_data, cache):
    base = [*small_study_overrides(small_data, tmp_path, cache), "strategy=[full]",
            "data.sizes=[20]", "seeds=[0]"]
    first = run_cli("sweep", *base, "study=one")
    assert first.returncode == 0 and "trained in" in first.stderr, first.stderr
    (model,) = (cache / "source_models").glob("*.pt")
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])  # a torn write
    second = run_cli("sweep", *base, "study=two")
    assert second.returncode == 0, second.stderr
    assert "trained in" in second.stderr  # rebuilt, not loaded
    assert _metrics(tmp_path / "one" / "records.jsonl") == _metrics(tmp_path / "two" / "records.jsonl")


def test_a_write_that_runs_out_of_space_leaves_the_old_file_and_says_so(tmp_path):
    """Simulated ENOSPC half-way through a write: the file keeps its old content, no temporary
    file is left, and the error is one line naming the folder."""
    import errno

    from bench.cache import atomic_write, atomic_write_text
    from bench.errors import BenchError

    target = atomic_write_text(tmp_path / "table.md", "old\n")

    def half_then_full(tmp):
        tmp.write_text("new, cut sh")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(BenchError, match="no space left on the device writing") as refused:
        atomic_write(target, half_then_full)
    assert str(tmp_path) in str(refused.value) and "\n" not in str(refused.value)
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_a_full_disk_during_report_is_one_line_and_keeps_the_records(tmp_path):
    """A real small file system (tmpfs) holding a committed study and little room: `report`
    fails in one line that names the study and the command that rewrites it; the records are
    as they were and no half-written file is left."""
    study = REPO / "results" / "reuters_multisource_longer"
    room = sum(p.stat().st_size for p in study.iterdir() if p.is_file()) + 96 * 1024
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or 'not root'})")
    try:
        copy = mount / study.name
        copy.mkdir()
        for p in study.iterdir():
            if p.is_file():
                shutil.copy(p, copy / p.name)
        before = (copy / "records.jsonl").read_bytes()
        proc = run_cli("report", str(copy))
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: no space left"), lines
        assert "records" in lines[0] and f"transfer-bench report {copy}" in lines[0]
        assert (copy / "records.jsonl").read_bytes() == before
        assert not [p for p in copy.rglob("*") if p.name.endswith(".tmp")]
    finally:
        subprocess.run(["umount", str(mount)], check=False)
