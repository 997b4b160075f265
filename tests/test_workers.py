"""`workers=K`: one sweep command runs K worker processes on one study, through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.folder import load_records, record_key
from conftest import run_cli, run_main, small_study_overrides

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _metrics(path: Path) -> dict:
    return {record_key(r): (r["metrics"], r["params"]) for r in load_records(path)}


def test_two_workers_give_the_one_worker_records(tmp_path, small_data, cache):
    """Untuned: the same records, bit for bit, as one worker with the same thread count."""
    one = run_cli("sweep", *small_study_overrides(small_data, tmp_path / "one", cache),
                  env=ONE_THREAD)
    assert one.returncode == 0, one.stderr
    two = run_cli("sweep", *small_study_overrides(small_data, tmp_path / "two", cache),
                  "workers=2")
    assert two.returncode == 0, two.stderr
    study = tmp_path / "two" / "small"
    assert "2 workers on" in two.stderr and "| frozen" in two.stdout
    assert _metrics(study / "records.jsonl") == _metrics(tmp_path / "one" / "small" / "records.jsonl")
    lines = (study / "records.jsonl").read_text().splitlines()
    assert len(lines) == len(load_records(study / "records.jsonl")) == 16  # none twice
    assert sorted(p.name for p in (study / "workers").iterdir()) == ["worker-0.log", "worker-1.log"]
    import json

    runs = json.loads((study / "manifest.json").read_text())["runs"].values()
    # worker 0 and worker 1 (each told it is one of 2), then the run that writes the table
    assert sorted((r["config"]["hpo"]["worker_id"], r["config"]["hpo"]["worker_count"])
                  for r in runs) == [(0, 1), (0, 2), (1, 2)]


def test_two_tuning_workers_keep_exact_trial_counts(tmp_path, small_data, cache):
    args = [*small_study_overrides(small_data, tmp_path, cache, hpo="tpe"), "strategy=[scratch]",
            "hpo.n_trials=3", "hpo.pruner.name=none", "protocol.folds=2"]
    proc = run_cli("sweep", *args, "workers=2")
    assert proc.returncode == 0, proc.stderr
    records = load_records(tmp_path / "small" / "records.jsonl")
    assert len(records) == 2 * 2 * 2  # (scratch + majority) x 2 sizes x 2 seeds
    storage = f"sqlite:///{tmp_path / 'small' / 'optuna.db'}"
    summaries = optuna.study.get_all_study_summaries(storage)
    assert len(summaries) == 4  # one per scratch replicate
    for s in summaries:
        trials = optuna.load_study(study_name=s.study_name, storage=storage).trials
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3


@pytest.mark.parametrize("override, message", [
    ("workers=0", "workers=0; give a number of worker processes >= 1, or auto"),
    ("trainer=gpu", "trainer.accelerator=gpu but torch"),
])
def test_bad_worker_or_device_settings_are_one_line_exit_2(tmp_path, small_data, cache, override,
                                                           message):
    import torch

    if override == "trainer=gpu" and torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    proc = run_main("sweep", *small_study_overrides(small_data, tmp_path, cache), "workers=2",
                    override)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not (tmp_path / "small").exists()


def test_ctrl_c_stops_every_worker_and_the_study_resumes(tmp_path, small_data, cache):
    args = [*small_study_overrides(small_data, tmp_path, cache), "train.min_steps=200",
            "seeds=[0,1]"]
    exe = Path(sys.executable).with_name("transfer-bench")
    # SIGINT as a terminal has it: a test run started in the background of a non-interactive
    # shell inherits it ignored, and then nothing would be interrupted.
    proc = subprocess.Popen([str(exe), "sweep", *args, "workers=2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    path = tmp_path / "small" / "records.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not load_records(path):
        time.sleep(0.2)
    assert proc.poll() is None, "the study finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "interrupted;" in err and "run the same command again" in err
    with pytest.raises(ProcessLookupError):  # no worker left behind
        os.killpg(proc.pid, 0)
    kept = len(load_records(path))
    again = run_cli("sweep", *args, "workers=2")
    assert again.returncode == 0, again.stderr
    assert kept < len(load_records(path)) == 4 * 2 * 2  # (3 strategies + majority) x 2 x 2
