"""`logger=csv`: per-epoch curves of every final fit through Lightning's CSVLogger, results
unchanged; tuning trials never log."""

from __future__ import annotations

import csv

from bench.folder import load_records, record_key
from conftest import run_cli, run_main, small_study_overrides


def test_csv_logger_writes_each_final_fits_curve_and_changes_no_result(tmp_path, small_data,
                                                                       cache):
    base = [*small_study_overrides(small_data, tmp_path / "plain", cache, hpo="tpe"),
            "strategy=[scratch]", "hpo.n_trials=2", "hpo.pruner.name=none", "protocol.folds=2"]
    plain = run_cli("sweep", *base)
    assert plain.returncode == 0, plain.stderr
    logged = run_cli("sweep", *[a.replace(str(tmp_path / "plain"), str(tmp_path / "logged"))
                                for a in base], "logger=csv")
    assert logged.returncode == 0, logged.stderr
    study = tmp_path / "logged" / "small"

    def metrics(path):
        return {record_key(r): r["metrics"] for r in load_records(path / "records.jsonl")}

    assert metrics(study) == metrics(tmp_path / "plain" / "small")  # a logger changes nothing
    files = sorted((study / "logs").rglob("metrics.csv"))
    # one per neural final fit (scratch x 2 sizes x 2 seeds), none for the 2-trial tunings
    assert [str(f.relative_to(study / "logs").parent.parent) for f in files] == [
        "scratch/n=100/seed=0", "scratch/n=100/seed=1", "scratch/n=20/seed=0",
        "scratch/n=20/seed=1"]
    for f, record in zip(files, sorted((r for r in load_records(study / "records.jsonl")
                                        if r["strategy"] == "scratch"),
                                       key=lambda r: (str(r["size"]), r["seed"]))):
        rows = list(csv.DictReader(f.open()))
        losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
        assert len(losses) == record["epochs"]  # one training loss per round
        tested = [r for r in rows if r.get("test_acc")]
        assert float(tested[-1]["test_acc"]) == __import__("pytest").approx(
            record["metrics"]["test_acc"], abs=1e-6)


def test_an_unavailable_logger_is_one_line_exit_2(tmp_path, small_data, cache):
    import importlib.util

    import pytest

    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    proc = run_main("sweep", *small_study_overrides(small_data, tmp_path, cache),
                    "logger=tensorboard")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert "logger=tensorboard needs the tensorboard package" in proc.stderr
    assert not (tmp_path / "small").exists()


def test_mlflow_logger_records_each_final_fit_under_one_experiment(tmp_path, small_data, cache):
    """logger=mlflow: one experiment named like the study, one run per neural final fit, the
    replicate's identity as tags and the record's test accuracy as the run's metric."""
    import mlflow
    import pytest

    args = [*small_study_overrides(small_data, tmp_path, cache), "strategy=[scratch,frozen]",
            "logger=mlflow"]
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = run_cli("sweep", *args, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    study = tmp_path / "small"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "small"]
    runs = client.search_runs([experiment.experiment_id])
    neural = [r for r in load_records(study / "records.jsonl") if r.get("steps") is not None]
    assert len(runs) == len(neural) == 8  # 2 strategies x 2 sizes x 2 seeds
    by_id = {(r.data.tags["strategy"], r.data.tags["size"], r.data.tags["seed"]): r for r in runs}
    for record in neural:
        run = by_id[(record["strategy"], str(record["size"]), str(record["seed"]))]
        assert run.data.tags["study"] == "small"
        assert run.info.run_name == f"{record['strategy']}/n={record['size']}/seed={record['seed']}"
        assert run.data.metrics["test_acc"] == pytest.approx(record["metrics"]["test_acc"],
                                                             abs=1e-6)
    assert not any(elsewhere.iterdir())  # nothing written outside the study folder


def test_mlflow_without_the_extra_is_one_line_exit_2(tmp_path, small_data, cache):
    """The extra missing (its import refused): one line, exit 2, no study folder."""
    import subprocess
    import sys

    blocker = ("import importlib.abc, sys\n"
               "class B(importlib.abc.MetaPathFinder):\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] == 'mlflow': raise ImportError('blocked')\n"
               "sys.meta_path.insert(0, B())\n"
               "from bench.cli import main\nmain(sys.argv[1:])\n")
    proc = subprocess.run([sys.executable, "-c", blocker, "sweep",
                           *small_study_overrides(small_data, tmp_path, cache), "logger=mlflow"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "logger=mlflow needs MLflow (pip install 'transfer-bench[mlflow]')" in proc.stderr
    assert not (tmp_path / "small").exists()


def test_an_unreachable_tracking_server_is_one_line_before_any_fit(tmp_path):
    """Nothing listens on port 9: the sweep stops at the config check, exit 2, in one line,
    with nothing written (it used to train, then retry for minutes)."""
    import time

    from tests.conftest import run_main
    from tests.test_verbs import one_line_error

    start = time.perf_counter()
    proc = run_main("sweep", "logger=mlflow", "logger.tracking_uri=http://127.0.0.1:9/",
                    f"paths.results={tmp_path / 'r'}")
    one_line_error(proc, "logger.tracking_uri='http://127.0.0.1:9/' cannot be reached")
    assert time.perf_counter() - start < 30  # composing the config; the connect waits 3 s at most
    assert not (tmp_path / "r").exists()


def test_an_unreachable_optuna_database_is_one_line_before_any_preparation(tmp_path):
    """A PostgreSQL URL nobody serves: refused at the config check (it used to prepare the
    data and train the source model first, then fail, leaving the study folder behind); the
    password never printed."""
    import time

    from tests.conftest import run_main
    from tests.test_verbs import one_line_error

    start = time.perf_counter()
    proc = run_main("sweep", "hpo=tpe", "hpo.storage=postgresql://u:secret@127.0.0.1:9/db",
                    f"paths.results={tmp_path / 'r'}")
    line = one_line_error(proc, "hpo.storage=", "cannot be reached")
    assert "secret" not in line
    assert time.perf_counter() - start < 30  # composing the config; the connect waits 3 s at most
    assert not (tmp_path / "r").exists()
