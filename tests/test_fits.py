"""Transformer fits trained right: each candidate length a fit whose schedule spans it, chosen
by CV; weight decay off biases and LayerNorm; a search that prunes only on evidence."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from bench.config import compose_config, strategies
from bench.search_space import make_pruner, make_sampler, startup_trials
from bench.study.tune import FoldReporter
from bench.training.schedule import make_scheduler
from bench.training.strategies import param_groups
from tests.conftest import run_cli, run_main, small_study_overrides
from tests.test_transformer import bert_study, tiny_bert  # noqa: F401 - the fixture
from tests.test_verbs import one_line_error


def lr_path(total: int, warmup_frac: float = 0.1) -> list[float]:
    """The LR each of ``total`` optimizer steps uses under the suite's linear schedule."""
    weight = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([weight], lr=1.0)
    scheduler = make_scheduler(optimizer, {"name": "linear_warmup", "warmup_frac": warmup_frac},
                               total)
    path = []
    for _ in range(total):
        path.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return path


@pytest.mark.parametrize("total", [8, 32, 256])
def test_a_schedule_ends_at_its_end_value_whatever_its_length(total):
    path = lr_path(total)
    warmup = int(total * 0.1)
    assert max(path) == pytest.approx(1.0)
    assert path[-1] == pytest.approx(1 / (total - warmup))  # the last step: next to 0
    assert path.index(max(path)) == warmup


def test_a_short_fit_is_not_the_prefix_of_a_long_schedule():
    short, long = lr_path(32), lr_path(256)
    assert short[-1] < 0.05 and long[31] > 0.95  # the old rule's final fit ended near its peak
    assert short != long[:32]


def test_the_fit_records_where_its_lr_ended(tiny_bert, small_data, tmp_path):
    """Each candidate length is a whole fit: its last step's LR is 1/(steps - warm-up) of the
    peak, read from the optimizer during the fit, for the shortest and the longest alike."""
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    cfg = compose_config(bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert,
                                    "strategy=[full]"))
    (full,) = strategies(cfg)
    method = NeuralMethod(prepare(cfg, [full], [40]), cfg, full)
    for steps in (8, 40):
        fit = method.final({}, 40, 0, [steps])
        (phase,) = fit.schedule
        warmup = int(steps * 0.1)
        assert fit.steps == phase["steps"] == steps and phase["warmup_steps"] == warmup
        assert phase["lr_end_frac"] == pytest.approx(1 / (steps - warmup), abs=1e-6)
    chosen = method.select({}, 40, 0)
    assert chosen.rounds[0] in (8, 16) and chosen.profile[0]["lengths"] == [8, 16]
    # a fold's fit makes as many passes over its share as the final fit over all 40 labels
    assert chosen.steps == 3 * sum(round(s * 2 / 3) for s in (8, 16))


def test_weight_decay_skips_biases_and_layer_norms(tiny_bert):
    from bench.models.transformer import Encoder

    model = Encoder(str(tiny_bert), 2)
    groups = param_groups(model, model.blocks, 1e-3, no_decay=("bias", "LayerNorm.weight"))
    names = {id(p): n for n, p in model.named_parameters()}
    kept = [names[id(p)] for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]]
    decayed = [names[id(p)] for g in groups if "weight_decay" not in g for p in g["params"]]
    assert kept and all(n.endswith("bias") or "LayerNorm.weight" in n for n in kept)
    assert decayed and not any(n.endswith("bias") or "LayerNorm" in n for n in decayed)
    assert len(kept) + len(decayed) == len(names)


def test_a_users_own_study_gets_fits_that_anneal(tiny_bert, small_data, tmp_path):
    """A user's study on their own CSV with a local encoder and no experiment: the model's
    defaults (conf/model/minilm.yaml: lengths 32..256, a probe's 250 or 500 steps) make every
    final fit decay over the steps it runs, none ending inside its warm-up or near its peak."""
    base = [o for o in small_study_overrides(small_data, tmp_path / "r", tmp_path / "c")
            if not o.startswith(("model.", "embeddings", "train."))]
    proc = run_cli("sweep", *base, "model=transformer", f"model.path={tiny_bert}",
                   "model.max_len=32", "embeddings=none", "strategy=[lp_ft]",
                   "data.sizes=[40]", "seeds=[0]", "protocol.folds=2",
                   "train.probe_lengths=[250,500]")  # the probe's budget, its top two cut
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in
               (tmp_path / "r" / "small" / "records.jsonl").read_text().splitlines()]
    neural = [r for r in records if r["strategy"] == "lp_ft"]  # both kinds of phase
    assert len(neural) == 1
    for r in neural:
        assert r["length_unit"] == "steps"
        for phase in r["schedule"]:
            assert phase["lr_end_frac"] < 0.05, r["strategy"]  # annealed, not at the peak
            assert phase["steps"] > phase["warmup_steps"]      # past the warm-up
        assert r["steps"] == sum(p["steps"] for p in r["schedule"])
        assert r["rounds"][-1] in (32, 64, 128, 256)
    (lp_ft,) = [r for r in neural if r["strategy"] == "lp_ft"]
    assert lp_ft["rounds"][0] in (250, 500)  # the probe stage's own budget


FOLDS = {0: [0.70, 0.60, 0.60], 1: [0.65, 0.75, 0.75]}  # the second setting is the better


def _search(pruner: optuna.pruners.BasePruner, folds: dict[int, list[float]]) -> optuna.Study:
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for scores in folds.values():
        def objective(trial, scores=scores):
            report = FoldReporter(trial)
            for i, score in enumerate(scores):
                report(i, score)
            return sum(scores) / len(scores)
        study.optimize(objective, n_trials=1)
    return study


def test_the_noise_pruner_stops_the_better_setting_and_the_evidence_rule_does_not():
    """One fold against one trial (the old rule: median pruning after a start-up trial, on the
    first fold) prunes the setting that is better on the mean of its folds; the signed-rank
    rule over the folds run so far keeps it, and it wins."""
    old = _search(make_pruner({"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0}),
                  FOLDS)
    assert old.trials[1].state == optuna.trial.TrialState.PRUNED
    assert old.best_trial.number == 0
    new = _search(make_pruner({"name": "wilcoxon"}), FOLDS)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in new.trials)
    assert new.best_trial.number == 1


def test_the_evidence_rule_prunes_a_setting_worse_on_every_fold_of_five():
    """Not a pruner that never prunes: worse than the best on each of 5 folds is evidence."""
    folds = {0: [0.80, 0.82, 0.78, 0.81, 0.79], 1: [0.70, 0.71, 0.69, 0.72, 0.70]}
    study = _search(make_pruner({"name": "wilcoxon"}), folds)
    assert study.trials[1].state == optuna.trial.TrialState.PRUNED
    assert len(study.trials[1].intermediate_values) < 5


def test_tpe_start_up_is_matched_to_the_budget():
    assert startup_trials(None, 8) is None  # Optuna's own 10: the studies recorded before
    assert startup_trials("auto", 8) == 3 and startup_trials("auto", 4) == 2
    assert make_sampler("tpe", 0, 3)._n_startup_trials == 3
    assert isinstance(make_sampler("qmc", 0), optuna.samplers.QMCSampler)


@pytest.mark.parametrize("override, expected", [
    ("train.lengths=[0,8]", "train.lengths"),
    ("train.lengths=[16,8]", "must increase"),
    ("train.lengths=[]", "train.lengths"),
    ("train.schedule.warmup_frac=1.0", "warmup_frac"),
    ("hpo.space.weight_decay.low=-0.1", "weight decay below 0"),
    ("hpo.space.warmup_frac.high=1.5", "warm-up fraction"),
])
def test_bad_lengths_and_ranges_are_one_line(tmp_path, override, expected):
    proc = run_main("sweep", "model=minilm", "hpo=tpe", "hpo.n_trials=2", "strategy=[full]",
                   f"paths.results={tmp_path / 'r'}", override)
    one_line_error(proc, expected)
    assert not (tmp_path / "r").exists()


def test_a_decaying_schedule_without_lengths_is_refused(tmp_path):
    proc = run_main("sweep", "model=minilm", "train.lengths=null", "strategy=[full]",
                   f"paths.results={tmp_path / 'r'}")
    one_line_error(proc, "train.lengths is not set")
    assert not (tmp_path / "r").exists()
