"""LR schedules per step, and groups added by gradual unfreezing following them."""

from __future__ import annotations


import pytest
import torch
from lightning.pytorch.callbacks import Callback

from test_strategies import VOCAB, _train, configured, make_model

from bench.config import compose_config, study_hash, study_identity
from bench.training.schedule import slanted_triangular
from bench.training.strategies import Strategy, build_model
from bench.models.textcnn import TextCNN


def test_slanted_triangular_follows_ulmfit_equation_3():
    f = slanted_triangular(100, cut_frac=0.1, ratio=32)
    assert f(0) == pytest.approx(1 / 32)             # starts at the lowest LR
    assert f(5) == pytest.approx((1 + 0.5 * 31) / 32)  # halfway up the short rise
    assert f(10) == pytest.approx(1.0)                # the peak at cut = 10 steps
    assert f(55) == pytest.approx((1 + 0.5 * 31) / 32)  # halfway down the long decay
    assert f(100) == pytest.approx(1 / 32) and f(500) == pytest.approx(1 / 32)
    rise, fall = [f(t) for t in range(11)], [f(t) for t in range(10, 101)]
    assert rise == sorted(rise) and fall == sorted(fall, reverse=True)


class StepLRs(Callback):
    """Every optimizer group's (name, lr) at every training step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.steps.append({g["name"]: g["lr"] for g in trainer.optimizers[0].param_groups})


def _fit(strategy: Strategy, schedule, epochs: int, lr: float) -> StepLRs:
    """16 examples in batches of 4: four optimizer steps per epoch."""
    torch.manual_seed(0)
    model = build_model(strategy, make_model, torch.randn(VOCAB, 8), make_model().state_dict())
    return _train(model, strategy, epochs, lr, schedule=schedule, recorder=StepLRs(), batch=4)


def test_groups_added_by_gradual_unfreezing_follow_the_schedule():
    """4 steps per epoch, 6 epochs: 24 steps; the encoder joins at epoch 2 (step 8), the
    embedding at epoch 4 (step 16), at LR / 2 and / 4 (lr_decay 2), on the same curve."""
    strategy = Strategy.from_config("g", {"unfreeze_every": 2, "lr_decay": 2.0}, TextCNN.blocks)
    spec = {"name": "slanted_triangular", "cut_frac": 0.25, "ratio": 8}
    rec = _fit(strategy, spec, epochs=6, lr=0.01)
    f = slanted_triangular(24, 0.25, 8)
    assert len(rec.steps) == 24
    for step, lrs in enumerate(rec.steps):
        assert lrs["head"] == pytest.approx(0.01 * f(step))
        expected = {"head"} | ({"encoder"} if step >= 8 else set()) | (
            {"embedding"} if step >= 16 else set())
        assert set(lrs) == expected
        if "encoder" in lrs:  # without follow_new_group it would stay at 0.005 while head moves
            assert lrs["encoder"] == pytest.approx(0.005 * f(step))
        if "embedding" in lrs:
            assert lrs["embedding"] == pytest.approx(0.0025 * f(step))
    assert len({round(s["encoder"], 12) for s in rec.steps[8:]}) > 10  # it really is scheduled


@pytest.mark.parametrize("spec", [{"name": "linear_warmup", "warmup_frac": 0.25},
                                  {"name": "slanted_triangular", "cut_frac": 0.25, "ratio": 8}])
def test_a_shorter_final_fit_follows_the_selection_fits_lr_path(spec):
    """The budget protocol's final fit runs the rounds cross-validation chose (here 2 of 6);
    its LR must be what the selection fits had in those rounds, not a schedule squeezed into
    2 rounds (which would skip the warm-up and decay at once)."""
    strategy = Strategy.from_config("f", {"transfer": "none"}, TextCNN.blocks)

    def fit(epochs: int, rounds: int | None):
        torch.manual_seed(0)
        model = build_model(strategy, make_model, None, None)
        return _train(model, strategy, epochs, 0.01, schedule=spec, recorder=StepLRs(),
                      batch=4, schedule_rounds=rounds).steps

    selection, final, squeezed = fit(6, 6), fit(2, 6), fit(2, None)
    assert len(final) == 8 and final == selection[:8]
    assert squeezed != final


def test_linear_warmup_rises_from_zero_then_decays_to_zero():
    strategy = Strategy.from_config("f", {"transfer": "none"}, TextCNN.blocks)
    torch.manual_seed(0)
    steps = _train(build_model(strategy, make_model, None, None), strategy, 5, 0.01,
                   schedule={"name": "linear_warmup", "warmup_frac": 0.2},
                   recorder=StepLRs(), batch=4).steps
    lrs = [s["head"] for s in steps]  # 20 steps: 4 rising, 16 falling
    assert lrs[0] == 0.0 and lrs[4] == pytest.approx(0.01)
    assert lrs[:5] == sorted(lrs[:5]) and lrs[4:] == sorted(lrs[4:], reverse=True)
    assert lrs[-1] == pytest.approx(0.01 / 16)


def test_constant_schedule_keeps_every_group_at_its_lr():
    rec = _fit(configured("gradual"), {"name": "constant"}, epochs=3, lr=0.01)
    assert all(v == pytest.approx(0.01) for lrs in rec.steps for v in lrs.values())


def test_a_constant_schedule_is_left_out_of_the_study_identity():
    """A constant LR is what every study did before train.schedule existed: at its default it is
    not part of the identity (so such studies resume); any other schedule is."""
    cfg = compose_config(["experiment=movie_to_amazon_strategies"])
    assert "schedule" not in study_identity(cfg)["train"]
    assert study_hash(compose_config(["experiment=movie_to_amazon_strategies",
                                      "train.schedule.name=slanted_triangular"])) != study_hash(cfg)
