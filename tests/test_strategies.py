"""Each strategy initialises and trains exactly the parameters it claims to."""

from __future__ import annotations

import pytest
import torch

from bench.config import compose_config, strategies
from bench.lit import TextClassifier, fit_and_test, loader
from bench.models.textcnn import TextCNN
from bench.strategies import FreezeBlocks, Strategy, build_model, param_groups
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
    module = TextClassifier(model, CLASSES, lr=0.1, lr_mult=strategy.lr_mult)
    fit_and_test(module, loader(ids, labels, 8, True), loader(ids, labels, 16, False), None,
                 {"accelerator": "cpu", "deterministic": True, "max_steps": 2}, max_epochs=1,
                 patience=1, callbacks=[FreezeBlocks(frozen)])
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


EXPECTED_TRAINABLE = {"scratch": {"embedding", "encoder", "head"}, "frozen": {"head"},
                      "partial": {"encoder", "head"}, "full": {"embedding", "encoder", "head"}}


@pytest.mark.parametrize("name", ["scratch", "frozen", "partial", "full"])
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
    groups = param_groups(make_model(), TextCNN.blocks, 1e-3, strategy.lr_mult)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("embedding", pytest.approx(1e-4)), ("encoder", 1e-3), ("head", 1e-3)]


@pytest.mark.parametrize("spec, message", [
    ({"transfer": "weights"}, "transfer='weights'"),
    ({"trainable": 4}, "trainable=4"),
    ({"trainable": ["decoder"]}, "trainable=['decoder']"),
    ({"lr_mult": {"decoder": 2}}, "unknown blocks"),
    ({"freeze": True}, "unknown keys"),
])
def test_bad_strategy_definitions_are_named(spec, message):
    with pytest.raises(BenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Strategy.from_config("bad", spec, TextCNN.blocks)
