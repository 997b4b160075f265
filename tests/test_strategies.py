"""Each strategy initialises and trains exactly the parameters it claims to."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from bench.config import compose_config, strategies
from bench.training.fit import TextClassifier, fit_and_test, loader
from bench.models.textcnn import TextCNN
from bench.training.strategies import (L2SP, FreezeBlocks, Strategy, build_model, freeze_callback,
                              param_groups)
from bench.errors import BenchError

VOCAB, CLASSES, DIM = 40, 3, 8


def make_model() -> TextCNN:
    return TextCNN(VOCAB, CLASSES, embedding_dim=DIM, windows=(2, 3), maps=4, dropout=0.0)


@pytest.fixture
def upstream():
    """Distinct "pretrained" vectors and a "source-trained" network (3 source classes)."""
    torch.manual_seed(123)
    vectors = torch.randn(VOCAB, DIM) * 3
    vectors[0] = 0
    source = make_model()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))
        source.embedding.weight[0].zero_()  # as after real training: padding gets no gradient
    return vectors, {k: v.clone() for k, v in source.state_dict().items()}


def configured(name: str) -> Strategy:
    cfg = compose_config([f"strategy=[{name}]"])
    return strategies(cfg)[0]


def one_step(model: TextCNN, strategy: Strategy) -> dict[str, torch.Tensor]:
    """Train for two optimizer steps through the real Lightning path; return the new weights."""
    torch.manual_seed(0)
    ids = torch.randint(2, VOCAB, (16, 7))
    ids[:, 5:] = 0  # some padding
    labels = torch.randint(0, CLASSES, (16,))
    frozen = [b for b in model.blocks if b not in strategy.trainable_blocks(model.blocks)]
    module = TextClassifier(model, CLASSES, lr=0.1, strategy=strategy)
    fit_and_test(module, loader(ids, labels, 8, True), loader(ids, labels, 16, False), None,
                 {"accelerator": "cpu", "deterministic": True, "max_steps": 2}, max_epochs=1,
                 patience=1, callbacks=[FreezeBlocks(frozen)])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


EXPECTED_TRAINABLE = {"scratch": {"embedding", "encoder", "head"}, "frozen": {"head"},
                      "partial": {"encoder", "head"}, "full": {"embedding", "encoder", "head"},
                      "vectors_static": {"encoder", "head"},
                      "vectors_nonstatic": {"embedding", "encoder", "head"}}


@pytest.mark.parametrize("name", list(EXPECTED_TRAINABLE))
def test_exactly_the_trainable_blocks_change(name, upstream):
    vectors, source_state = upstream
    strategy = configured(name)
    torch.manual_seed(7)
    model = build_model(strategy, make_model, vectors, source_state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    after = one_step(model, strategy)
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == EXPECTED_TRAINABLE[name]
    for key in before:  # every tensor of a trainable block moved, every other one did not
        moved = not torch.equal(before[key], after[key])
        assert moved == (key.split(".")[0] in EXPECTED_TRAINABLE[name]), key
    assert torch.equal(after["embedding.weight"][0], torch.zeros(DIM))  # padding row stays 0


@pytest.mark.parametrize("name", ["frozen", "partial", "full"])
def test_network_strategies_start_from_the_source_except_a_new_head(name, upstream):
    vectors, source_state = upstream
    torch.manual_seed(7)
    model = build_model(configured(name), make_model, vectors, source_state)
    state = model.state_dict()
    for key, value in source_state.items():
        assert torch.equal(state[key], value) != key.startswith("head."), key


def test_scratch_uses_no_pretrained_weights(upstream):
    vectors, source_state = upstream
    torch.manual_seed(7)
    model = build_model(configured("scratch"), make_model, vectors, source_state)
    torch.manual_seed(7)
    fresh = make_model()
    for key, value in model.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key  # exactly a random init
        if key != "embedding.weight":
            assert not torch.equal(value, source_state[key]), key
    rows = model.embedding.weight[2:]
    assert not any(torch.allclose(rows[i], vectors[2 + i]) for i in range(len(rows)))
    assert rows.abs().max() <= 0.25  # Kim's U(-0.25, 0.25), not the vectors' N(0, 9)


def test_vectors_strategy_copies_vectors_only(upstream):
    vectors, source_state = upstream
    strategy = Strategy.from_config("static", {"transfer": "vectors", "trainable": [
        "encoder", "head"]}, TextCNN.blocks)
    model = build_model(strategy, make_model, vectors, source_state)
    assert torch.equal(model.embedding.weight, vectors)
    assert not torch.equal(model.encoder.convs[0].weight, source_state["encoder.convs.0.weight"])
    after = one_step(model, strategy)
    assert torch.equal(after["embedding.weight"], vectors)


def test_lr_multipliers_become_named_param_groups():
    strategy = Strategy.from_config("disc", {"trainable": "all", "lr_mult": {"embedding": 0.1}},
                                    TextCNN.blocks)
    groups = param_groups(make_model(), TextCNN.blocks, 1e-3, strategy)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("embedding", pytest.approx(1e-4)), ("encoder", 1e-3), ("head", 1e-3)]


@pytest.mark.parametrize("spec, message", [
    ({"transfer": "weights"}, "transfer='weights'"),
    ({"trainable": 4}, "trainable=4"),
    ({"trainable": ["decoder"]}, "trainable=['decoder']"),
    ({"lr_mult": {"decoder": 2}}, "unknown blocks"),
    ({"freeze": True}, "unknown keys"),
    ({"lr_decay": 0}, "lr_decay=0"),
    ({"unfreeze_every": 1.5}, "unfreeze_every=1.5"),
    ({"l2sp": {"alpha": 0.1}}, "l2sp needs exactly alpha, beta"),
    ({"lp_ft": {"ft_lr_mult": -1}}, "lp_ft.ft_lr_mult=-1"),
])
def test_bad_strategy_definitions_are_named(spec, message):
    with pytest.raises(BenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Strategy.from_config("bad", spec, TextCNN.blocks)


class Recorder(Callback):
    """Per epoch: which blocks train, and the optimizer's (group name, lr) pairs."""

    def __init__(self) -> None:
        self.trainable: list[set[str]] = []
        self.groups: list[list[tuple[str, float]]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == 0:
            model = pl_module.model
            self.trainable.append({b for b in model.blocks
                                   if all(p.requires_grad for p in model.block(b).parameters())})
            self.groups.append([(g.get("name"), g["lr"]) for g in trainer.optimizers[0].param_groups])


def _train(model: TextCNN, strategy: Strategy, epochs: int, lr: float = 0.1,
           penalty=None, schedule=None, recorder: Callback | None = None, batch: int = 8,
           schedule_rounds: int | None = None):
    """Train on 16 random examples with the strategy's freezing; returns the recorder."""
    torch.manual_seed(0)
    ids = torch.randint(2, VOCAB, (16, 7))
    labels = torch.randint(0, CLASSES, (16,))
    recorder = recorder or Recorder()
    module = TextClassifier(model, CLASSES, lr=lr, strategy=strategy, penalty=penalty,
                            schedule=schedule, schedule_rounds=schedule_rounds)
    fit_and_test(module, loader(ids, labels, batch, True), loader(ids, labels, 16, False), None,
                 {"accelerator": "cpu", "deterministic": True}, max_epochs=epochs,
                 patience=epochs, min_epochs=epochs,
                 callbacks=[freeze_callback(strategy, model.blocks, lr), recorder])
    return recorder


def test_gradual_unfreezing_adds_one_block_from_the_top_every_e_epochs(upstream):
    vectors, source_state = upstream
    strategy = configured("gradual")  # unfreeze_every: 2
    model = build_model(strategy, make_model, vectors, source_state)
    encoder_before = model.encoder.convs[0].weight.detach().clone()
    rec = _train(model, strategy, epochs=5)
    assert rec.trainable == [{"head"}, {"head"}, {"head", "encoder"}, {"head", "encoder"},
                             {"head", "encoder", "embedding"}]
    # each newly unfrozen block is its own parameter group, at the base LR (no decay here)
    assert rec.groups[0] == [("head", 0.1)]
    assert rec.groups[2] == [("head", 0.1), ("encoder", 0.1)]
    assert rec.groups[4] == [("head", 0.1), ("encoder", 0.1), ("embedding", 0.1)]
    assert not torch.equal(model.encoder.convs[0].weight, encoder_before)  # it did train later


def test_discriminative_learning_rates_divide_per_block_below_the_top(upstream):
    vectors, source_state = upstream
    strategy = configured("discriminative")  # lr_decay: 2.6
    model = build_model(strategy, make_model, vectors, source_state)
    rec = _train(model, strategy, epochs=1, lr=0.01)
    assert [name for name, _ in rec.groups[0]] == ["embedding", "encoder", "head"]
    lrs = dict(rec.groups[0])
    assert lrs["head"] == pytest.approx(0.01)
    assert lrs["encoder"] == pytest.approx(0.01 / 2.6)
    assert lrs["embedding"] == pytest.approx(0.01 / 2.6 ** 2)
    # gradual unfreezing uses the same factors for the groups it adds
    both = Strategy.from_config("both", {"unfreeze_every": 1, "lr_decay": 2.0}, TextCNN.blocks)
    rec = _train(build_model(both, make_model, vectors, source_state), both, epochs=3, lr=0.01)
    assert rec.groups[2] == [("head", 0.01), ("encoder", 0.005), ("embedding", 0.0025)]


def test_l2sp_penalty_is_zero_at_the_source_weights_and_grows_as_they_move(upstream):
    vectors, source_state = upstream
    model = build_model(configured("l2sp"), make_model, vectors, source_state)
    penalty = L2SP(model, alpha=0.5, beta=0.0)
    assert float(penalty(model).detach()) == 0.0
    steps = []
    for delta in (0.1, 0.2, 0.4):
        with torch.no_grad():
            model.encoder.convs[0].weight.copy_(source_state["encoder.convs.0.weight"] + delta)
        steps.append(float(penalty(model).detach()))
    n = model.encoder.convs[0].weight.numel()
    assert steps == pytest.approx([0.5 / 2 * n * d ** 2 for d in (0.1, 0.2, 0.4)], rel=1e-4)
    head = sum(float((p.detach() ** 2).sum()) for p in model.head.parameters())
    with torch.no_grad():
        model.encoder.convs[0].weight.copy_(source_state["encoder.convs.0.weight"])
    assert float(L2SP(model, alpha=0.5, beta=0.2)(model).detach()) == pytest.approx(0.1 * head, rel=1e-5)


def test_l2sp_keeps_fine_tuned_weights_near_the_source(upstream):
    vectors, source_state = upstream
    strategy = configured("l2sp")
    drift = {}
    for alpha in (0.0, 10.0):
        torch.manual_seed(7)
        model = build_model(strategy, make_model, vectors, source_state)
        _train(model, strategy, epochs=3, penalty=L2SP(model, alpha=alpha, beta=0.0))
        drift[alpha] = float((model.encoder.convs[0].weight.detach()
                              - source_state["encoder.convs.0.weight"]).norm())
    assert drift[10.0] < 0.5 * drift[0.0]


def test_lp_ft_second_phase_starts_from_the_first_phases_best_head(tmp_path, small_data, cache,
                                                                    monkeypatch):
    from conftest import small_study_overrides

    from bench.study import methods
    from bench.config import check
    from bench.study.prepare import prepare

    cfg = compose_config([*small_study_overrides(small_data, tmp_path, cache), "strategy=[lp_ft]",
                          "strategy.lp_ft.lp_ft.ft_lr_mult=0.25", "protocol=fixed_val"])
    check(cfg)
    prep = prepare(cfg, strategies(cfg), [100])
    calls = []
    real = methods.fit_and_test

    def spy(module, *args, **kwargs):
        model = module.model
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        result = real(module, *args, **kwargs)
        trained = {b for b in model.blocks if any(
            not torch.equal(start[k], v) for k, v in model.state_dict().items()
            if k.startswith(b + "."))}
        calls.append({"start": start, "result": result, "lr": module.lr, "trained": trained})
        return result

    monkeypatch.setattr(methods, "fit_and_test", spy)
    fit = methods.NeuralMethod(prep, cfg, strategies(cfg)[0]).final({}, 100, seed=0)
    first, second = calls
    assert first["trained"] == {"head"}  # linear probe: everything else frozen
    for key, value in first["result"].state_dict.items():  # phase 2 starts from the best probe
        assert torch.equal(second["start"][key], value), key
    assert second["lr"] == pytest.approx(first["lr"] * 0.25)
    assert second["trained"] == {"embedding", "encoder", "head"}
    assert fit.epochs == first["result"].epochs + second["result"].epochs


ALL_STRATEGIES = ["scratch", "frozen", "partial", "full", "vectors_static", "vectors_nonstatic",
                  "gradual", "discriminative", "lp_ft", "l2sp"]


def test_the_strategies_experiment_composes_every_strategy():
    cfg = compose_config(["experiment=movie_to_amazon_strategies"])
    assert [s.name for s in strategies(cfg)] == ALL_STRATEGIES
    assert list(cfg.data.sizes) == [50, 200, 1000] and len(cfg.seeds) == 5


def test_one_study_tunes_and_reports_every_strategy(tmp_path):
    """The acceptance path: a list override puts all strategies in one tuned study, each tunes
    its own keys, and the report shows every one of them."""
    import pandas as pd
    from conftest import run_cli, small_study_overrides, write_sentiment_csv

    from bench.folder import load_records

    data = {"source": write_sentiment_csv(tmp_path / "source.csv", 600, seed=1),
            "target": write_sentiment_csv(tmp_path / "target.csv", 400, seed=2, cue_words=1)}
    args = [*small_study_overrides(data, tmp_path / "results", tmp_path / "cache", hpo="tpe"),
            f"strategy=[{','.join(ALL_STRATEGIES)}]", "data.sizes=[50]", "seeds=[0,1]",
            "hpo.n_trials=2", "hpo.pruner.name=none"]
    proc = run_cli("sweep", *args)
    assert proc.returncode == 0, proc.stderr
    study = tmp_path / "results" / "small"
    records = load_records(study / "records.jsonl")
    assert sorted((r["strategy"], r["seed"]) for r in records) == sorted(
        (s, seed) for s in (*ALL_STRATEGIES, "majority") for seed in (0, 1))
    tuned = {r["strategy"]: set(r["params"]) for r in records}
    assert tuned["discriminative"] == {"train.lr", "strategy.discriminative.lr_decay"}
    assert tuned["lp_ft"] == {"train.lr", "strategy.lp_ft.lp_ft.ft_lr_mult"}
    assert tuned["l2sp"] == {"train.lr", "strategy.l2sp.l2sp.alpha", "strategy.l2sp.l2sp.beta"}
    assert tuned["full"] == {"train.lr"}
    for r in records:
        assert 0.0 <= r["metrics"]["test_acc"] <= 1.0 and r["diverged"] is None

    report = run_cli("report", str(study), "--no-plots", "--against", "full")
    assert report.returncode == 0, report.stderr
    table = pd.read_csv(study / "report" / "table.csv")
    assert sorted(table["strategy"]) == sorted((*ALL_STRATEGIES, "majority"))
    vs_full = pd.read_csv(study / "report" / "gains_vs_full.csv")
    assert sorted(vs_full["strategy"]) == sorted(set(ALL_STRATEGIES) - {"full"})
    for name in ALL_STRATEGIES:
        assert f"| {name} " in report.stdout
