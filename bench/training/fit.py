"""Lightning glue: the classifier module and one fit + test (batches: :mod:`bench.data.batching`)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from bench.hardware import PeakMemory
from bench.data.batching import EVAL_BATCH, loader, passes_per_round  # noqa: F401
from bench.training.schedule import is_constant, make_scheduler
from bench.training.strategies import Strategy, param_groups


def quiet_lightning() -> None:
    """No banners, tips or worker-count advice: the study prints one progress display."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*but have no `val_dataloader`.*")  # final fits
    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")  # frozen blocks
    # Deterministic cuBLAS needs this set before the first CUDA call.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


class TextClassifier(L.LightningModule):
    """Cross-entropy training with Adam; per-round held-out loss, accuracy and macro-F1."""

    def __init__(self, model: nn.Module, num_classes: int, lr: float, weight_decay: float = 0.0,
                 strategy: Strategy | None = None,
                 penalty: Callable[[nn.Module], torch.Tensor] | None = None,
                 schedule: Mapping[str, Any] | None = None, optimizer: str = "adam",
                 schedule_rounds: int | None = None, schedule_steps: int | None = None,
                 no_decay: Sequence[str] = ()) -> None:
        super().__init__()
        self.model = model
        self.optimizer_name = optimizer  # adam (TextCNN) | adamw (transformers)
        self.lr, self.weight_decay = lr, weight_decay
        self.strategy = strategy  # per-block LR factors (lr_mult, lr_decay)
        self.penalty = penalty    # e.g. L2-SP, added to the training loss
        self.schedule = schedule  # train.schedule; None or constant = no scheduler
        # The schedule spans this many rounds even when the fit runs fewer: a final fit of the
        # chosen length then follows the very LR path its selection fits did up to that round.
        # (Configs recorded before train.lengths: every fit since spans the steps it runs.)
        self.schedule_rounds = schedule_rounds
        self.schedule_steps = schedule_steps  # the optimizer steps this fit runs, exactly
        # parameter names (substrings) that weight decay skips: biases and LayerNorm weights,
        # as transformers' Trainer does (decaying a LayerNorm's gain towards 0 is no prior)
        self.no_decay = tuple(no_decay)
        self.lr_peak = self.lr_last = 0.0  # the first group's LR: highest seen and last used
        for split in ("val", "test"):
            setattr(self, f"{split}_acc", MulticlassAccuracy(num_classes, average="micro"))
            setattr(self, f"{split}_f1", MulticlassF1Score(num_classes, average="macro"))
            setattr(self, f"{split}_loss", MeanMetric())
        self.train_loss = MeanMetric()  # per-epoch training curve, only when a logger listens

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def train(self, mode: bool = True) -> "TextClassifier":
        """Blocks with nothing to train stay in eval mode (no dropout): a frozen feature
        extractor computes the same features in every epoch, as its cached features assume."""
        super().train(mode)
        if mode:
            for name in self.model.blocks:
                block = self.model.block(name)
                if not any(p.requires_grad for p in block.parameters()):
                    block.eval()
        return self

    def on_fit_start(self) -> None:
        self.train()  # after the callbacks froze their blocks (Lightning keeps module modes)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """The LR this step uses (the scheduler steps after it): where a schedule ended is
        read from the fit itself, not computed from its formula."""
        lr = float(optimizer.param_groups[0]["lr"])
        self.lr_peak, self.lr_last = max(self.lr_peak, lr), lr

    @property
    def lr_end_frac(self) -> float | None:
        """The last step's LR as a fraction of the highest the fit used (1.0: constant)."""
        return round(self.lr_last / self.lr_peak, 6) if self.lr_peak > 0 else None

    def on_train_end(self) -> None:
        """What the fit cost in weights: those that trained at the end (gradual unfreezing
        adds blocks on the way), the head included."""
        self.trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ids, y = batch
        loss = F.cross_entropy(self.model(ids), y)
        if self.logger is not None:
            self.train_loss.update(loss.detach(), weight=len(y))
        return loss if self.penalty is None else loss + self.penalty(self.model)

    def on_train_epoch_end(self) -> None:
        if self.logger is not None:
            self.log("train_loss", self.train_loss.compute())
            self.train_loss.reset()

    # Metrics are accumulated per batch and logged once per epoch: Lightning's ``self.log``
    # costs about 1.5 ms a call on CPU, more than a small model's validation batch.
    def _update(self, batch: Any, split: str) -> torch.Tensor:
        ids, y = batch
        logits = self.model(ids)
        getattr(self, f"{split}_acc").update(logits, y)
        getattr(self, f"{split}_f1").update(logits, y)
        getattr(self, f"{split}_loss").update(F.cross_entropy(logits, y), weight=len(y))
        return logits

    def _log_epoch(self, split: str) -> None:
        values = {}
        for metric in ("acc", "f1", "loss"):
            m = getattr(self, f"{split}_{metric}")
            values[f"{split}_{metric}"] = m.compute()
            m.reset()
        self.log_dict(values)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._update(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_start(self) -> None:
        self._predicted: list[torch.Tensor] = []

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._predicted.append(self._update(batch, "test").argmax(dim=1))

    @property
    def test_predictions(self) -> np.ndarray:
        """Predicted classes of the last test run, in the test loader's order."""
        return torch.cat(self._predicted).cpu().numpy()

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        groups = param_groups(self.model, self.model.blocks, self.lr, self.strategy,
                              no_decay=self.no_decay)
        # The fused kernel updates all parameters in one pass: on CPU the step is ~7x faster
        # than the per-tensor loop (the 1M-weight embedding dominates), same arithmetic.
        kind = torch.optim.AdamW if self.optimizer_name == "adamw" else torch.optim.Adam
        optimizer = kind(groups, lr=self.lr, weight_decay=self.weight_decay, fused=True)
        if is_constant(self.schedule):
            return optimizer
        steps = int(self.trainer.estimated_stepping_batches)
        if self.schedule_steps:
            steps = self.schedule_steps
        elif self.schedule_rounds:
            steps = self.schedule_rounds * int(self.trainer.num_training_batches)
        scheduler = make_scheduler(optimizer, self.schedule, steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnDivergence(Callback):
    """Stop at the first non-finite training loss instead of training on garbage.

    Validation accuracy of a NaN model is not NaN (argmax picks some class), so early stopping's
    own finiteness check never fires; the loss is what shows the divergence.
    """

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, Mapping) else outputs
        if loss is not None and not torch.isfinite(loss).all():
            raise Diverged(f"training loss became {float(loss)} at epoch "
                           f"{trainer.current_epoch + 1}, step {batch_idx + 1}")


class History(Callback):
    """Every round's held-out loss and accuracy, to read the accuracy at the chosen round."""

    def __init__(self) -> None:
        self.rounds: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.rounds.append({k: float(trainer.callback_metrics[k]) for k in
                                ("val_loss", "val_acc")})


# Training length and checkpoints are chosen on held-out *loss*: with the 17 held-out texts of
# a 50-label cell's fold, accuracy moves in steps of 0.06 and ties (kept at their first round)
# stopped fits after a handful of steps; the loss is continuous. Settings are still compared
# on held-out accuracy at the chosen round.
MONITOR = "val_loss"


@dataclass
class FitResult:
    metrics: dict[str, float]  # val_acc, val_f1 (best checkpoint), test_acc, test_f1
    epochs: int                # rounds run
    best_epoch: int            # the round of the best validation score (= epochs without one)
    seconds: float
    state_dict: dict[str, torch.Tensor]
    diverged: str | None = None  # why training stopped early, if the loss blew up
    at_cap: bool = False         # still improving when the last round allowed ended it
    test_predictions: np.ndarray | None = None  # predicted class per test text, in input order
    steps: int = 0               # optimizer steps taken
    trainable: int = 0           # weights that trained (at the end of the fit)
    memory: dict[str, Any] | None = None  # the training's peak (hardware.PeakMemory.record)


class ExtendWhileImproving(Callback):
    """Past ``max_epochs`` rounds, a fit goes on only while each round still lowers the
    held-out loss, up to the trainer's hard limit: a fit still improving at its nominal cap
    gets more room by default instead of only a flag. Place it after the EarlyStopping."""

    def __init__(self, stop: EarlyStopping, max_epochs: int) -> None:
        self.stop, self.max_epochs = stop, max_epochs

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.current_epoch + 1 >= self.max_epochs and self.stop.wait_count > 0:
            trainer.should_stop = True


def fit_and_test(module: TextClassifier, train: DataLoader, val: DataLoader | None,
                 test: DataLoader | None, trainer_cfg: Mapping[str, Any], max_epochs: int,
                 patience: int, min_epochs: int = 1, callbacks: Sequence[Callback] = (),
                 logger: Any = False, extend: int = 0, steps: int | None = None) -> FitResult:
    """Train, then evaluate.

    With ``val``: early stopping on validation accuracy; the best checkpoint is evaluated (or,
    without ``test``, only the best validation score is returned: a selection fit). Without
    ``val``: exactly ``max_epochs`` rounds, and the final weights are tested -- the budget
    protocol's final fit, whose length cross-validation chose. ``extend`` > 0 (with ``val``):
    up to that many rounds past ``max_epochs`` while every round improves (at_cap then means
    the hard limit, ``max_epochs + extend``).

    ``steps``: a fit of exactly that many optimizer steps (its length, chosen among candidates
    that each decay over their own length), cut into ``max_epochs`` rounds; nothing stops it
    early, and the last weights are scored on ``val`` (a selection fit) and ``test``.
    """
    if steps is not None:
        return _fit_for_steps(module, train, val, test, trainer_cfg, max_epochs, steps,
                              callbacks, logger)
    quiet_lightning()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transfer-bench-ckpt-") as workdir:
        stop = None if val is None else EarlyStopping(monitor=MONITOR, mode="min",
                                                      patience=patience)
        history = History()
        # A selection fit (no test split) needs only the best validation score, which early
        # stopping tracks: no checkpoint is written. Nor is one without validation.
        best = None if test is None or val is None else ModelCheckpoint(
            dirpath=workdir, monitor=MONITOR, mode="min", save_top_k=1, save_weights_only=True,
            filename="best")
        grow = ExtendWhileImproving(stop, max_epochs) if stop is not None and extend else None
        extra = [c for c in (stop, grow, history, best) if c is not None]
        limit = max_epochs + (extend if grow is not None else 0)
        trainer = L.Trainer(max_epochs=limit,
                            min_epochs=max_epochs if val is None else min(min_epochs, max_epochs),
                            callbacks=[StopOnDivergence(), *callbacks, *extra], logger=logger,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=best is not None,
                            limit_val_batches=0 if val is None else None,
                            num_sanity_val_steps=0, default_root_dir=workdir, **trainer_cfg)
        diverged = None
        memory = PeakMemory(trainer.strategy.root_device.type)
        try:
            with memory:
                trainer.fit(module, train, val)
        except Diverged as exc:
            # A selection fit reports it (the caller prunes it); a final fit falls back to its
            # best checkpoint from before the divergence, if it validated at least once.
            if best is None or not best.best_model_path:
                raise
            diverged = str(exc)
        epochs = trainer.current_epoch
        # Rounds run minus those spent waiting for an improvement that never came.
        best_epoch = epochs if stop is None else max(epochs - stop.wait_count, 1)
        at_cap = stop is not None and epochs >= limit and stop.wait_count == 0
        cost = {"steps": int(trainer.global_step), "trainable": int(getattr(module, "trainable", 0)),
                "memory": memory.record()}
        if test is None:
            metrics = {} if stop is None else history.rounds[best_epoch - 1]
            return FitResult(metrics, epochs, best_epoch, time.perf_counter() - start,
                             _model_state(module), diverged, at_cap, **cost)
        metrics: dict[str, float] = {}
        if best is not None:
            state = torch.load(best.best_model_path, map_location="cpu",
                               weights_only=True)["state_dict"]
            module.load_state_dict(state)
            metrics.update({k: float(v) for k, v in
                            trainer.validate(module, val, verbose=False)[0].items()})
        metrics.update({k: float(v) for k, v in
                        trainer.test(module, test, verbose=False)[0].items()})
    return FitResult(metrics, epochs, best_epoch, time.perf_counter() - start,
                     _model_state(module), diverged, at_cap, _predictions(module, test), **cost)


def _fit_for_steps(module: TextClassifier, train: DataLoader, val: DataLoader | None,
                   test: DataLoader | None, trainer_cfg: Mapping[str, Any], rounds: int,
                   steps: int, callbacks: Sequence[Callback], logger: Any) -> FitResult:
    quiet_lightning()
    start = time.perf_counter()
    module.schedule_steps = steps
    with tempfile.TemporaryDirectory(prefix="transfer-bench-fit-") as workdir:
        trainer = L.Trainer(max_steps=steps, max_epochs=rounds, min_epochs=1,
                            callbacks=[StopOnDivergence(), *callbacks], logger=logger,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False,
                            num_sanity_val_steps=0, default_root_dir=workdir, **trainer_cfg)
        memory = PeakMemory(trainer.strategy.root_device.type)
        with memory:
            trainer.fit(module, train)
        if int(trainer.global_step) != steps:
            raise RuntimeError(f"the fit ran {trainer.global_step} steps of {steps}: its rounds "
                               "hold too few batches")
        metrics: dict[str, float] = {}
        for loader_, run in ((val, trainer.validate), (test, trainer.test)):
            if loader_ is not None:
                metrics.update({k: float(v) for k, v in run(module, loader_, verbose=False)[0].items()})
    cost = {"steps": int(trainer.global_step), "trainable": int(getattr(module, "trainable", 0)),
            "memory": memory.record()}
    epochs = int(trainer.current_epoch)
    predictions = None if test is None else _predictions(module, test)
    return FitResult(metrics, epochs, epochs, time.perf_counter() - start, _model_state(module),
                     None, False, predictions, **cost)


def _predictions(module: TextClassifier, test: DataLoader) -> np.ndarray:
    """The last test run's predicted classes in the test split's order (its batches run
    length-sorted)."""
    order = np.fromiter((i for batch in test.sampler for i in batch), dtype=np.int64)
    predictions = np.empty(len(order), dtype=np.int64)
    predictions[order] = module.test_predictions
    return predictions


def _model_state(module: TextClassifier) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v.detach().clone() for k, v in module.state_dict().items()
            if k.startswith("model.")}
