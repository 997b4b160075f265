"""Tuning: trial counts, pruning, resume after SIGKILL, parallel workers (SQLite and PostgreSQL),
the Pareto size search and the classical baseline, through the real CLI and real Optuna storages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench.config import compose_config
from bench.study.pareto import dominated
from bench.folder import load_records
from conftest import cell_study, run_cli, run_main, small_study_overrides

WORKER = """
import sys, time
from bench.search_space import make_pruner
from bench.study.tune import open_storage, open_study, run_trials
url, name, n, worker = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
storage = open_storage({"storage": url, "heartbeat_interval": 1, "grace_period": 5}, None)
study = open_study(name, storage, seed=0, pruner=make_pruner(None), attrs={}, worker_id=worker)
def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(0.3)
    return x
run_trials(study, objective, n, poll=0.2)
"""


def _tuned_args(tmp_path, small_data, cache, *extra, baseline="none"):
    return [*small_study_overrides(small_data, tmp_path, cache, hpo="tpe", baseline=baseline),
            "strategy=[scratch]", "data.sizes=[100]", *extra]


def _study(tmp_path: Path, name: str, seed: int = 0) -> optuna.Study:
    """``name`` as ``<study>/<strategy>/n=<size>``: that cell's study for replicate ``seed``."""
    _, strategy, size = name.split("/")
    return cell_study(f"sqlite:///{tmp_path / 'small' / 'optuna.db'}", strategy,
                      size.removeprefix("n="), seed)


def test_each_replicate_is_tuned_inside_its_own_labels_prunes_and_is_recorded(tmp_path,
                                                                              small_data, cache):
    proc = run_cli("sweep", *_tuned_args(tmp_path, small_data, cache, "hpo.n_trials=10",
                                         "hpo.pruner.n_startup_trials=2", "hpo.pruner.n_warmup_steps=0",
                                         "train.min_epochs=1", "train.max_epochs=6",
                                         "seeds=[0,1,2]"))
    assert proc.returncode == 0, proc.stderr
    records = {r["seed"]: r for r in load_records(tmp_path / "small" / "records.jsonl")
               if r["strategy"] == "scratch"}
    assert sorted(records) == [0, 1, 2]
    pruned = 0
    for seed, r in records.items():  # one Optuna study per replicate, each with its own trials
        study = _study(tmp_path, "small/scratch/n=100", seed)
        finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished) == 10
        pruned += sum(t.state == TrialState.PRUNED for t in study.trials)
        complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert study.best_value == max(t.value for t in complete)
        assert study.user_attrs["strategy"] == "scratch" and study.user_attrs["seed"] == seed
        assert r["params"] == {"train.lr": study.best_trial.params["lr"]}
        assert r["hpo"]["n_trials"] == 10 and r["hpo"]["best_value"] == study.best_value
        assert r["rounds"] == study.best_trial.user_attrs["selection"]["rounds"]
        assert len(r["hpo"]["fold_scores"]) == 3
        assert study.best_value == pytest.approx(sum(r["hpo"]["fold_scores"]) / 3, abs=1e-6)
        # the sampler searched, it did not sit on one value
        assert len({round(t.params["lr"], 8) for t in study.trials}) == len(study.trials)
    assert pruned >= 1
    # every tuning starts at the default (train.lr), then each replicate's own sampler seed
    firsts = [_study(tmp_path, "small/scratch/n=100", seed).trials[:2] for seed in records]
    assert all(t[0].params["lr"] == 1e-3 and t[0].user_attrs["default"] for t in firsts)
    assert len({round(t[1].params["lr"], 10) for t in firsts}) == 3
    report = run_cli("report", str(tmp_path / "small"))
    assert report.returncode == 0 and "tuning per cell (pruning saved about" in report.stdout


def test_sigkill_mid_trial_then_resume(tmp_path, small_data, cache):
    # Trials of a few seconds (120 optimizer steps a fold), so the kill lands inside the trial
    # the test saw running, not just after it finished.
    args = _tuned_args(tmp_path, small_data, cache, "hpo.n_trials=6", "hpo.pruner.name=none",
                       "hpo.heartbeat_interval=1", "hpo.grace_period=3", "seeds=[0,1]",
                       "train.min_steps=120")
    exe = Path(sys.executable).with_name("transfer-bench")
    proc = subprocess.Popen([str(exe), "sweep", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    db = tmp_path / "small" / "optuna.db"
    deadline = time.monotonic() + 300
    killed_during = None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        if not db.exists():
            continue
        try:
            trials = _study(tmp_path, "small/scratch/n=100").trials
        except (KeyError, Exception):  # study not created yet, or the database is busy
            continue
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        # a trial that has sampled its setting (under load one can be RUNNING without it yet)
        running = [t for t in trials if t.state == TrialState.RUNNING and t.params]
        if len(done) >= 2 and running:
            proc.send_signal(signal.SIGKILL)
            killed_during = running[0].number
            break
    proc.wait()
    assert killed_during is not None, "the study finished before it could be killed"
    before = {t.number: (t.params, t.datetime_complete) for t in _study(
        tmp_path, "small/scratch/n=100").trials if t.state == TrialState.COMPLETE}
    time.sleep(4)  # let the killed trial's heartbeat go stale

    again = run_cli("sweep", *args)
    assert again.returncode == 0, again.stderr
    trials = _study(tmp_path, "small/scratch/n=100").trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    for number, (params, completed_at) in before.items():  # finished trials were not rerun
        assert (trials[number].params, trials[number].datetime_complete) == (params, completed_at)
    killed = trials[killed_during]
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed_during]
    assert len(retries) == 1 and retries[0].params == killed.params  # retried, same setting
    records = load_records(tmp_path / "small" / "records.jsonl")
    lines = (tmp_path / "small" / "records.jsonl").read_text().splitlines()
    assert len(records) == len(lines) == 4  # scratch and majority, seeds 0 and 1
    # a third run adds nothing
    assert run_cli("sweep", *args).returncode == 0
    assert len(_study(tmp_path, "small/scratch/n=100").trials) == len(trials)
    assert (tmp_path / "small" / "records.jsonl").read_text().splitlines() == lines


def _two_workers(url: str, name: str, n: int, tmp_path: Path) -> list[optuna.trial.FrozenTrial]:
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [subprocess.Popen([sys.executable, str(script), url, name, str(n), str(w)],
                              stderr=subprocess.PIPE, text=True) for w in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    return optuna.load_study(study_name=name, storage=url).trials


def _assert_exactly(trials, n):
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.number for t in complete) == list(range(n))  # exactly n, no gaps
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL)
    workers_params = {round(t.params["x"], 10) for t in complete}
    assert len(workers_params) == n  # the two workers did not replay each other's samples


def test_two_workers_share_one_sqlite_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    _assert_exactly(_two_workers(url, "shared", 12, tmp_path), 12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres():
    """A real PostgreSQL server on loopback in a temp directory, stopped afterwards."""
    if not (shutil.which("initdb") and shutil.which("pg_ctl")):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    pytest.importorskip("psycopg2", reason="install the 'postgres' extra for the driver")
    # The server refuses to run as root; as root, run it as the postgres user in a folder it owns
    # (pytest's own temp folders are private to root).
    home = Path(tempfile.mkdtemp(prefix="transfer-bench-pg-"))
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user:
        shutil.chown(home, "postgres")
    data, port = home / "data", _free_port()
    env = {**os.environ, "LC_ALL": "C"}
    try:
        subprocess.run([*as_user, "initdb", "-D", str(data), "-U", "postgres", "--auth=trust",
                        "-E", "UTF8"], check=True, capture_output=True, env=env)
        subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-w", "-l", str(home / "pg.log"),
                        "-o", f"-p {port} -k {home} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True, env=env)
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, "pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, env=env)
        shutil.rmtree(home, ignore_errors=True)


def test_two_workers_share_one_postgresql_study(postgres, tmp_path):
    _assert_exactly(_two_workers(postgres, "shared-pg", 10, tmp_path), 10)


def test_unreachable_storage_is_one_line_exit_2(tmp_path, small_data, cache):
    port = _free_port()  # nothing listens there
    proc = run_main("sweep", *_tuned_args(tmp_path, small_data, cache, "hpo.n_trials=2",
                    f"hpo.storage=postgresql+psycopg2://nobody@127.0.0.1:{port}/none"))
    assert proc.returncode == 2
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: hpo.storage=") and "cannot be reached" in line
    assert not (tmp_path / "small").exists()  # refused at the config check: nothing written


def test_pareto_front_is_non_dominated(tmp_path, small_data, cache):
    args = _tuned_args(tmp_path, small_data, cache, "hpo.mode=pareto", "hpo.pareto.n_trials=8",
                       "hpo.pareto.min_size=10", baseline="tfidf_logreg")
    refused = run_main("sweep", *args)  # it scores sizes on the validation split
    assert refused.returncode == 2 and "protocol=fixed_val" in refused.stderr
    proc = run_cli("sweep", *args, "protocol=fixed_val")
    assert proc.returncode == 0, proc.stderr
    fronts = json.loads((tmp_path / "small" / "pareto.json").read_text())
    assert set(fronts) == {"scratch", "tfidf_logreg"}
    for points in fronts.values():
        assert points
        for a in points:
            assert not any(dominated(a, b) for b in points if b is not a)
            assert 10 <= a["n_train"] <= 200


def test_tfidf_baseline_is_tuned_on_the_same_cells(tmp_path, small_data, cache):
    proc = run_cli("sweep", *small_study_overrides(small_data, tmp_path, cache,
                                                   baseline="tfidf_logreg"),
                   "strategy=[scratch]", "data.sizes=[100]", "seeds=[0,1]")
    assert proc.returncode == 0, proc.stderr
    records = load_records(tmp_path / "small" / "records.jsonl")
    base = [r for r in records if r["strategy"] == "tfidf_logreg"]
    grid = [float(c) for c in compose_config([]).baseline.grid]
    # an untuned study still chooses C over the whole grid on the cell's folds
    assert len(base) == 2 and all(r["params"]["C"] in grid and r["hpo"] is None for r in base)
    assert all(len(r["selection"]["grid"]) == len(grid) for r in base)
    assert all(r["metrics"]["test_acc"] > 0.6 for r in base)  # the cue words are learnable
    tuned = run_cli("sweep", *small_study_overrides(small_data, tmp_path, cache, hpo="tpe",
                                                    baseline="tfidf_logreg"),
                    "strategy=[scratch]", "hpo.n_trials=5", "data.sizes=[100]", "seeds=[0]",
                    "study=tuned_baseline")
    assert tuned.returncode == 0, tuned.stderr
    records = load_records(tmp_path / "tuned_baseline" / "records.jsonl")
    (again,) = [r for r in records if r["strategy"] == "tfidf_logreg"]
    # whatever the trials, the same grid on the same folds: the same record
    first = next(r for r in base if r["seed"] == 0)
    assert again["params"] == first["params"] and again["metrics"] == first["metrics"]
    # with the grid switched off, the old rule: Optuna with the study's trials
    old = run_cli("sweep", *small_study_overrides(small_data, tmp_path, cache, hpo="tpe",
                                                  baseline="tfidf_logreg"),
                  "strategy=[scratch]", "hpo.n_trials=3", "data.sizes=[100]", "seeds=[0]",
                  "baseline.grid=null", "study=optuna_baseline")
    assert old.returncode == 0, old.stderr
    (optuna_base,) = [r for r in load_records(tmp_path / "optuna_baseline" / "records.jsonl")
                      if r["strategy"] == "tfidf_logreg"]
    assert set(optuna_base["params"]) == {"C"} and optuna_base["hpo"]["n_trials"] == 3


def test_two_multi_worker_sweeps_share_one_postgresql_study(postgres, tmp_path, small_data,
                                                            cache):
    """Two machines' worth: two `transfer-bench sweep workers=2` processes (four workers) on
    one study and one PostgreSQL storage. Every replicate ends with exactly n finished trials
    and every record is written once."""
    import subprocess as sp

    from conftest import REPO

    args = _tuned_args(tmp_path, small_data, cache, "hpo.n_trials=3", "seeds=[0,1,2]",
                       "strategy=[scratch,frozen]", f"hpo.storage={postgres}", "workers=2",
                       "hpo.pruner.n_startup_trials=1")
    exe = Path(sys.executable).with_name("transfer-bench")
    env = {k: v for k, v in os.environ.items() if k != "TRANSFER_BENCH_DEBUG"}
    procs = [sp.Popen([str(exe), "sweep", *args], cwd=REPO, env=env, stdout=sp.PIPE,
                      stderr=sp.PIPE, text=True) for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err
    lines = (tmp_path / "small" / "records.jsonl").read_text().splitlines()
    keys = [(r["strategy"], r["size"], r["seed"]) for r in map(json.loads, lines)]
    assert len(keys) == len(set(keys)) == 3 * 3  # (scratch, frozen, majority) x 3 seeds
    for strategy in ("scratch", "frozen"):
        for seed in (0, 1, 2):
            study = cell_study(postgres, strategy, "100", seed)
            finished = [t for t in study.trials
                        if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
            assert len(finished) == 3, (strategy, seed, [t.state for t in study.trials])


def test_hydra_submitit_local_launcher_runs_jobs_on_one_study(tmp_path, small_data, cache):
    """Scale-out through Hydra's submitit launcher (`submitit_slurm` on a cluster): a
    multirun of two jobs, one seed each, appending to the same study."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher",
                        reason="install hydra-submitit-launcher (the dev extra has it)")
    args = [a for a in small_study_overrides(small_data, tmp_path, cache) if not
            a.startswith("seeds")]
    proc = run_cli("sweep", "-m", "hydra/launcher=submitit_local",
                   "hydra.launcher.timeout_min=20", *args, "strategy=[scratch,frozen]",
                   "seeds=[0],[1]")
    assert proc.returncode == 0, proc.stderr
    records = load_records(tmp_path / "small" / "records.jsonl")
    assert sorted({r["seed"] for r in records}) == [0, 1]
    assert len(records) == 2 * 2 * 3  # 2 seeds x 2 sizes x (scratch, frozen, majority)
    assert list((tmp_path / ".multirun").glob("*/.submitit"))  # the launcher's own job folders
