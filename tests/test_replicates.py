"""Replicate axes beyond the seed: several source models and independent tuning replicates,
through the real CLI: records, Optuna studies, resume, extension and the variance table."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from bench.folder import load_records, record_key
from conftest import run_cli, run_main, small_study_overrides


def _args(tmp_path, small_data, cache, *extra):
    return [*small_study_overrides(small_data, tmp_path, cache, hpo="tpe"),
            "strategy=[scratch,frozen]", "data.sizes=[20]", "seeds=[0,1]", "hpo.n_trials=2",
            "hpo.pruner.name=none", "protocol.folds=2", "hpo.replicates=2", *extra]


def test_source_models_and_tuning_replicates_are_replicates_of_their_own(tmp_path, small_data,
                                                                         cache):
    proc = run_cli("sweep", *_args(tmp_path, small_data, cache, "source.seeds=[0,1]"))
    assert proc.returncode == 0, proc.stderr
    path = tmp_path / "small" / "records.jsonl"
    records = load_records(path)
    keys = {record_key(r) for r in records}
    assert len(keys) == len(records) == 4 + 8 + 2  # scratch 2x2, frozen 2x2x2, majority 2
    frozen = [r for r in records if r["strategy"] == "frozen"]
    assert {(r["seed"], r["source_seed"], r["tuning"]) for r in frozen} == {
        (s, k, t) for s in (0, 1) for k in (0, 1) for t in (0, 1)}
    # one source model per source seed, trained once each, with its own scores
    by_source = {r["source_seed"]: r["source"]["key"] for r in frozen}
    assert len(set(by_source.values())) == 2
    info = json.loads((tmp_path / "small" / "study.json").read_text())
    assert {v["key"] for v in info["source_models"].values()} == set(by_source.values())
    # scratch uses no source model: no source axis, but its tuning replicates
    assert {(r["source_seed"], r["tuning"]) for r in records if r["strategy"] == "scratch"} == {
        (None, 0), (None, 1)}
    # every tuning is its own Optuna study with its own sampler seed: different settings
    names = {r["hpo"]["study_name"] for r in records if r["hpo"]}
    assert len(names) == 4 + 8
    assert all(r["hpo"]["study_name"].endswith("/tuning=1") == (r["tuning"] == 1)
               for r in records if r["hpo"])
    # each starts at the default, then its own sampler seed draws its own second setting
    import optuna

    storage = f"sqlite:///{tmp_path / 'small' / 'optuna.db'}"
    trials = {n: optuna.load_study(study_name=n, storage=storage).trials for n in names}
    assert all(t[0].user_attrs.get("default") for t in trials.values())
    assert len({round(t[1].params["lr"], 12) for t in trials.values()}) == len(trials)

    # the same command again runs nothing; one more source model runs only its replicates
    again = run_cli("sweep", *_args(tmp_path, small_data, cache, "source.seeds=[0,1]"))
    assert again.returncode == 0 and len(load_records(path)) == 14
    more = run_cli("sweep", *_args(tmp_path, small_data, cache, "source.seeds=[0,1,2]"))
    assert more.returncode == 0, more.stderr
    added = [r for r in load_records(path) if record_key(r) not in keys]
    assert {(r["strategy"], r["source_seed"]) for r in added} == {("frozen", 2)} and len(added) == 4
    info = json.loads((tmp_path / "small" / "study.json").read_text())
    assert sorted(info["source_models"]) == ["0", "1", "2"]  # the new model is listed too

    report = run_cli("report", str(tmp_path / "small"), "--no-plots")
    assert report.returncode == 0, report.stderr
    variance = pd.read_csv(tmp_path / "small" / "report" / "variance.csv")
    frozen_row = variance[variance["strategy"] == "frozen"].iloc[0]
    assert frozen_row["runs"] == 2 * 3 * 2
    for part in ("seed", "source", "seed x source", "tuning", "test sample"):
        assert not pd.isna(frozen_row[f"sd {part}"])  # the design measures every part
        assert frozen_row[f"sd {part} low"] <= frozen_row[f"sd {part}"] <= frozen_row[f"sd {part} high"]
    assert (frozen_row["df seed"], frozen_row["df source"], frozen_row["df seed x source"],
            frozen_row["df tuning"]) == (1, 2, 2, 2 * 3)  # 2 seeds x 3 sources x 2 tunings
    scratch_row = variance[variance["strategy"] == "scratch"].iloc[0]
    assert pd.isna(scratch_row["sd source"]) and not pd.isna(scratch_row["sd tuning"])
    table = (tmp_path / "small" / "report" / "table.md").read_text()
    assert "conditional on the study's source models" in table


@pytest.mark.parametrize("override, message", [
    ("source.seeds=[0,0]", "source.seeds repeats [0]"),
    ("source.seeds=[-1]", "source.seeds=[-1]"),
    ("hpo.replicates=0", "hpo.replicates=0"),
    ("hpo.sampler=grid", "hpo.sampler='grid'; use one of tpe, random"),
    ("seeds=[1,1]", "seeds repeats [1]"),
    ("hpo.n_trials=0", "hpo.replicates=2 repeats the tuning, but this study is untuned"),
])
def test_bad_replicate_settings_are_one_line_exit_2(tmp_path, small_data, cache, override,
                                                    message):
    proc = run_main("sweep", *_args(tmp_path, small_data, cache), override)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr
    assert not (tmp_path / "small").exists()


def test_random_search_without_pruning_gets_the_budget_curve(tmp_path, small_data, cache):
    args = [*small_study_overrides(small_data, tmp_path, cache, hpo="tpe"), "strategy=[scratch]",
            "data.sizes=[20,100]", "seeds=[0]", "hpo.n_trials=3", "hpo.sampler=random",
            "hpo.pruner.name=none", "protocol.folds=2"]
    proc = run_cli("sweep", *args)
    assert proc.returncode == 0, proc.stderr
    report = run_cli("report", str(tmp_path / "small"))
    assert report.returncode == 0, report.stderr
    assert (tmp_path / "small" / "report" / "expected_best_vs_trials.png").exists()
    assert "no expected-best" not in report.stderr
