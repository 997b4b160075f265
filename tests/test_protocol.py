"""The honest protocol: a cell sees its n labels and nothing else; nothing leaks from test texts;
a cell's identity is its whole definition; predictions do not depend on batch neighbours."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from bench.study import methods as methods_mod
from bench.config import cell_hash, compose_config, strategies
from bench.data.task import Task
from bench.data.batching import passes_per_round
from bench.study.methods import NeuralMethod, BaselineMethod, Fit
from bench.models.textcnn import TextCNN
from bench.study.prepare import prepare
from bench.study.records import fit_flags
from bench.search_space import PRUNERS, make_pruner

from conftest import run_cli, small_study_overrides


def _prepared(small_data, tmp_path, *extra):
    cfg = compose_config([*small_study_overrides(small_data, tmp_path / "results",
                                                 tmp_path / "cache"), *extra])
    return cfg, prepare(cfg, strategies(cfg), [60])


def _spy_loaders(monkeypatch) -> list[tuple[np.ndarray, bool]]:
    seen: list[tuple[np.ndarray, bool]] = []
    real = Task.loader

    def spy(self, index, batch_size, shuffle=False, seed=0, passes=1, per_epoch=None):
        seen.append((np.asarray(index).copy(), shuffle))
        return real(self, index, batch_size, shuffle, seed, passes, per_epoch)

    monkeypatch.setattr(Task, "loader", spy)
    return seen


def test_budget_cell_uses_only_its_n_labels_for_tuning_stopping_and_training(
        small_data, tmp_path, monkeypatch):
    cfg, prep = _prepared(small_data, tmp_path, "strategy=[full]")
    target = prep.target
    method = NeuralMethod(prep, cfg, strategies(cfg)[0])
    subset = method.subset(60, seed=1)
    seen = _spy_loaders(monkeypatch)
    chosen = method.select({}, 60, seed=1)
    assert len(seen) == 2 * 3  # three folds, each a training and a held-out loader
    held_out = np.concatenate([idx for idx, shuffle in seen if not shuffle])
    assert sorted(held_out) == sorted(subset)  # every label held out once, nothing else
    assert all(set(idx) <= set(subset) for idx, _ in seen)
    assert chosen.rounds and chosen.rounds[0] >= 1 and len(chosen.fold_scores) == 3
    seen.clear()
    fit = method.final({}, 60, seed=1, rounds=chosen.rounds)
    (train, _), (test, _) = seen
    assert sorted(train) == sorted(subset) and np.array_equal(test, target.splits.test)
    assert "val_acc" not in fit.metrics and fit.epochs == chosen.rounds[0]
    # The old protocol, as an explicit choice, does read the validation split.
    cfg_v, prep_v = _prepared(small_data, tmp_path, "strategy=[full]", "protocol=fixed_val")
    seen.clear()
    NeuralMethod(prep_v, cfg_v, strategies(cfg_v)[0]).select({}, 60, seed=1)
    assert any(np.array_equal(idx, prep_v.target.splits.val) for idx, _ in seen)


def test_the_baseline_is_scored_on_the_same_folds(small_data, tmp_path, monkeypatch):
    cfg, prep = _prepared(small_data, tmp_path, "strategy=[scratch]", "baseline=tfidf_logreg")
    fitted = []
    real = methods_mod.baseline.fit
    monkeypatch.setattr(methods_mod.baseline, "fit",
                        lambda texts, labels, train, *a: fitted.append(train) or
                        real(texts, labels, train, *a))
    method = BaselineMethod(prep, cfg)
    chosen = method.select({"C": 10.0}, 60, seed=2)
    subset = method.subset(60, seed=2)
    assert len(fitted) == 3 and all(set(t) <= set(subset) and len(t) == 40 for t in fitted)
    assert chosen.rounds is None and 0 < chosen.score <= 1


def _rewrite_test_texts(path: Path, test_rows: set[int], out: Path) -> Path:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for i in test_rows:
        rows[i]["text"] = f"zebra quokka narwhal {i} axolotl " + rows[i]["text"]
    with open(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def _trained_weights(data, tmp_path, name, monkeypatch, *extra):
    """Vocabulary, source key and the final weights of a `full` fit on fresh caches."""
    captured = {}
    real = methods_mod.fit_and_test

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        captured["state"] = result.state_dict
        return result

    monkeypatch.setattr(methods_mod, "fit_and_test", spy)
    cfg = compose_config([*small_study_overrides(data, tmp_path / name, tmp_path / f"cache-{name}"),
                          "strategy=[full]", "embeddings.corpus=target", *extra])
    prep = prepare(cfg, strategies(cfg), [60])
    NeuralMethod(prep, cfg, strategies(cfg)[0]).final({}, 60, seed=0, rounds=[2])
    return prep, captured["state"]


def test_changing_the_test_texts_changes_no_trained_weight(small_data, tmp_path, monkeypatch):
    prep, weights = _trained_weights(small_data, tmp_path, "a", monkeypatch)
    test_rows = set(prep.target.splits.test.tolist())
    changed = dict(small_data, target=_rewrite_test_texts(small_data["target"], test_rows,
                                                           tmp_path / "target-changed.csv"))
    prep2, weights2 = _trained_weights(changed, tmp_path, "b", monkeypatch)
    assert prep2.vocab == prep.vocab and prep2.source_model.key == prep.source_model.key
    assert prep2.vectors.identity == prep.vectors.identity  # word2vec on the target pool only
    assert weights.keys() == weights2.keys()
    assert all(torch.equal(weights[k], weights2[k]) for k in weights)
    # The transductive opt-in does read them: the same change reaches the vocabulary.
    prep3, _ = _trained_weights(changed, tmp_path, "c", monkeypatch, "protocol.transductive=true")
    assert "quokka" in prep3.vocab.words and "quokka" not in prep.vocab.words


def test_a_texts_logits_do_not_depend_on_its_batch_neighbours():
    torch.manual_seed(0)
    model = TextCNN(vocab_size=50, num_classes=2, embedding_dim=8, windows=(3, 4, 5), maps=6)
    model.eval()
    short = torch.tensor([[5, 6, 7, 8]])                    # shorter than the widest window
    longer = torch.randint(2, 50, (3, 40))
    batch = torch.zeros(4, 40, dtype=torch.long)
    batch[0, :4] = short[0]
    batch[1:] = longer
    with torch.no_grad():
        alone, together = model(short), model(batch)[:1]
    # Equal to float32 rounding: the convolution kernel may sum in another order for another
    # input width (oneDNN), so bitwise equality across batch shapes is not promised. Max-pooling
    # over padding (the old encoder) moves these logits by ~1e-2.
    assert torch.allclose(alone, together, rtol=0, atol=1e-6)
    # Windows wider than every text in the batch work too (the model pads for itself).
    wide = TextCNN(vocab_size=50, num_classes=2, embedding_dim=8, windows=(7, 9), maps=4).eval()
    with torch.no_grad():
        assert wide(torch.tensor([[3, 4]])).shape == (1, 2)


def test_rounds_hold_at_least_min_steps_at_every_size():
    assert passes_per_round(50, 50, 30, 300) == 10     # 1 step a pass: 10 passes, 300 steps
    assert passes_per_round(200, 50, 30, 300) == 3     # 4 steps a pass: 360 steps in 30 rounds
    assert passes_per_round(1000, 50, 30, 300) == 1    # 20 steps a pass: epochs as before
    for n in (7, 33, 50, 133, 667, 1000):
        passes = passes_per_round(n, 50, 30, 300)
        assert 30 * passes * -(-n // 50) >= 300


def test_fit_flags_name_cut_short_and_below_majority_fits():
    fit = Fit({"test_acc": 0.5}, 4, 4, 0.1)
    assert fit_flags({"best_value": 0.55, "majority": 0.6, "at_cap": False}, fit) == \
        ["below_majority"]
    assert fit_flags({"best_value": 0.7, "majority": 0.6, "at_cap": True}, fit) == ["at_cap"]
    assert fit_flags({"best_value": 0.7, "majority": 0.6}, fit) == []


def test_a_fit_still_improving_at_its_cap_is_flagged_in_records_and_report(small_data, tmp_path):
    args = [*small_study_overrides(small_data, tmp_path / "results", tmp_path / "cache"),
            "strategy=[scratch]", "data.sizes=[60]", "seeds=[0]", "train.max_epochs=2",
            "train.min_epochs=2", "train.min_steps=2", "train.lr=1e-4"]
    proc = run_cli("sweep", *args)
    assert proc.returncode == 0, proc.stderr
    (record,) = [r for r in map(json.loads, (tmp_path / "results/small/records.jsonl").open())
                 if r["strategy"] != "majority"]
    assert "at_cap" in record["flags"] and record["labels"] == {"train": 60, "validation": 0,
                                                                "total": 60}
    assert len(record["test_predictions"]) == 100 and set(record["test_predictions"]) <= {"0", "1"}
    report = run_cli("report", str(tmp_path / "results/small"), "--no-plots")
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "results/small/report/table.md").read_text()
    assert "Protocol budget: labels per cell = n (training and selection)." in table
    assert "scratch n=60: at_cap (0)" in table


def test_a_redefined_strategy_is_refused_and_its_cells_have_a_new_identity(small_data, tmp_path):
    args = [*small_study_overrides(small_data, tmp_path / "results", tmp_path / "cache"),
            "strategy=[partial]", "data.sizes=[30]", "seeds=[0]"]
    first = run_cli("sweep", *args)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "results/small/records.jsonl").read_text()
    again = run_cli("sweep", *args, "strategy.partial.trainable=1")
    assert again.returncode == 2
    (line,) = again.stderr.strip().splitlines()
    assert "strategy 'partial'" in line and "trainable: 2 -> 1" in line and "own name" in line
    assert (tmp_path / "results/small/records.jsonl").read_text() == before
    base = compose_config(args)
    assert cell_hash(base, "partial") != cell_hash(
        compose_config([*args, "strategy.partial.trainable=1"]), "partial")
    assert cell_hash(base, "partial") != cell_hash(compose_config([*args, "protocol.folds=4"]),
                                                   "partial")
    assert cell_hash(base, "partial") != cell_hash(
        compose_config([*args, "+trainer.precision=bf16-mixed"]), "partial")
    assert cell_hash(base, "partial") == cell_hash(compose_config([*args, "seeds=[5]"]), "partial")


def test_two_configurations_on_one_storage_never_share_trials(small_data, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    for i, decay in enumerate(("0.0", "0.001")):
        args = [*small_study_overrides(small_data, tmp_path / f"results{i}", tmp_path / "cache",
                                       hpo="tpe"),
                "strategy=[scratch]", "data.sizes=[30]", "seeds=[0]", "hpo.n_trials=2",
                f"hpo.storage={url}", f"train.weight_decay={decay}"]
        proc = run_cli("sweep", *args)
        assert proc.returncode == 0, proc.stderr
    summaries = optuna.study.get_all_study_summaries(url)
    assert len(summaries) == 2
    assert len({s.study_name for s in summaries}) == 2
    assert all(s.n_trials == 2 for s in summaries)


@pytest.mark.parametrize("name", sorted(PRUNERS))
def test_every_documented_pruner_accepts_the_default_config_and_prunes(name):
    spec = {**compose_config(["hpo=tpe", f"hpo.pruner.name={name}"]).hpo.pruner}
    pruner = make_pruner(spec)
    study = optuna.create_study(direction="maximize", pruner=pruner,
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        quality = trial.suggest_float("q", 0, 1)
        for step in range(30):
            trial.report(quality * step / 30, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return quality

    study.optimize(objective, n_trials=12)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) >= 1
    if name != "none":
        assert optuna.trial.TrialState.PRUNED in states


def test_a_pruner_argument_it_does_not_take_is_a_one_line_error():
    proc = run_cli("sweep", "experiment=movie_to_amazon", "hpo=tpe", "hpo.pruner.name=hyperband",
                   "+hpo.pruner.patience=3")
    assert proc.returncode == 2
    assert "hpo.pruner.patience is not an argument of the hyperband pruner" in proc.stderr
