"""Lightning glue: batches cut from cached tensors, the classifier module, and one fit + test."""

from __future__ import annotations

import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import lightning.pytorch as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch import nn
from torch.utils.data import BatchSampler, DataLoader, Sampler, TensorDataset
from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

from bench.schedule import is_constant, make_scheduler
from bench.strategies import Strategy, param_groups


def quiet_lightning() -> None:
    """No banners, tips or worker-count advice: the study prints one progress display."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # Deterministic cuBLAS needs this set before the first CUDA call.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _trim(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut the padded id matrix to the longest text in this batch (dynamic padding)."""
    ids, labels = batch
    width = max(int((ids != 0).sum(dim=1).max()), 5)
    return ids[:, :width], labels


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length texts, so little of each batch is padding.

    Each epoch: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by length,
    cut it into batches and shuffle the batches. Batch composition stays random (a text meets
    different neighbours every epoch) while the padded width tracks the texts' own lengths.
    PyTorch and Lightning ship no such sampler (torchtext's BucketIterator is gone).
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int,
                 pool_batches: int = 50) -> None:
        self.lengths, self.batch_size = lengths, batch_size
        self.pool = batch_size * pool_batches
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator)
        batches = []
        for start in range(0, len(order), self.pool):
            chunk = order[start:start + self.pool]
            chunk = chunk[torch.argsort(self.lengths[chunk], stable=True)]
            batches += [chunk[i:i + self.batch_size].tolist()
                        for i in range(0, len(chunk), self.batch_size)]
        for i in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[i]


# Evaluation batches run over length-sorted texts: smaller batches track the lengths more closely
# (a single 500-text batch pads everything to the longest one, ~3x the convolution work).
EVAL_BATCH = 100


def loader(ids: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
           seed: int = 0) -> DataLoader:
    """Whole batches are indexed out of the tensors at once: no per-example Python work.

    Training batches are length-bucketed; evaluation batches go through the texts sorted by
    length (order does not change a metric, and the padding all but disappears).
    """
    dataset = TensorDataset(ids, labels)
    lengths = (ids != 0).sum(dim=1)
    if shuffle:
        sampler: Any = BucketBatchSampler(lengths, batch_size, seed)
    else:
        by_length = torch.argsort(lengths, stable=True).tolist()
        sampler = BatchSampler(by_length, batch_size, False)
    return DataLoader(dataset, batch_size=None, sampler=sampler, collate_fn=_trim)


class TextClassifier(L.LightningModule):
    """Cross-entropy training with Adam; per-epoch validation accuracy and macro-F1."""

    def __init__(self, model: nn.Module, num_classes: int, lr: float, weight_decay: float = 0.0,
                 strategy: Strategy | None = None,
                 penalty: Callable[[nn.Module], torch.Tensor] | None = None,
                 schedule: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.strategy = strategy  # per-block LR factors (lr_mult, lr_decay)
        self.penalty = penalty    # e.g. L2-SP, added to the training loss
        self.schedule = schedule  # train.schedule; None or constant = no scheduler
        for split in ("val", "test"):
            setattr(self, f"{split}_acc", MulticlassAccuracy(num_classes, average="micro"))
            setattr(self, f"{split}_f1", MulticlassF1Score(num_classes, average="macro"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ids, y = batch
        loss = F.cross_entropy(self.model(ids), y)
        return loss if self.penalty is None else loss + self.penalty(self.model)

    # Metrics are accumulated per batch and logged once per epoch: Lightning's ``self.log``
    # costs about 1.5 ms a call on CPU, more than a small model's validation batch.
    def _update(self, batch: Any, split: str) -> None:
        ids, y = batch
        logits = self.model(ids)
        getattr(self, f"{split}_acc").update(logits, y)
        getattr(self, f"{split}_f1").update(logits, y)

    def _log_epoch(self, split: str) -> None:
        values = {}
        for metric in ("acc", "f1"):
            m = getattr(self, f"{split}_{metric}")
            values[f"{split}_{metric}"] = m.compute()
            m.reset()
        self.log_dict(values)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._update(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._update(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> Any:
        groups = param_groups(self.model, self.model.blocks, self.lr, self.strategy)
        # The fused kernel updates all parameters in one pass: on CPU the step is ~7x faster
        # than the per-tensor loop (the 1M-weight embedding dominates), same arithmetic.
        optimizer = torch.optim.Adam(groups, lr=self.lr, weight_decay=self.weight_decay, fused=True)
        if is_constant(self.schedule):
            return optimizer
        scheduler = make_scheduler(optimizer, self.schedule,
                                   int(self.trainer.estimated_stepping_batches))
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


@dataclass
class FitResult:
    metrics: dict[str, float]  # val_acc, val_f1 (best checkpoint), test_acc, test_f1
    epochs: int
    best_epoch: int
    seconds: float
    state_dict: dict[str, torch.Tensor]
    diverged: str | None = None  # why training stopped early, if the loss blew up


def fit_and_test(module: TextClassifier, train: DataLoader, val: DataLoader, test: DataLoader | None,
                 trainer_cfg: Mapping[str, Any], max_epochs: int, patience: int,
                 min_epochs: int = 1, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train with early stopping on validation accuracy; evaluate the best checkpoint."""
    quiet_lightning()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="transfer-bench-ckpt-") as workdir:
        stop = EarlyStopping(monitor="val_acc", mode="max", patience=patience)
        # A tuning trial (no test split) needs only the best validation score, which early
        # stopping tracks: no checkpoint is written.
        best = None if test is None else ModelCheckpoint(
            dirpath=workdir, monitor="val_acc", mode="max", save_top_k=1, save_weights_only=True,
            filename="best")
        trainer = L.Trainer(max_epochs=max_epochs, min_epochs=min(min_epochs, max_epochs),
                            callbacks=[StopOnDivergence(), *callbacks, stop,
                                       *([best] if best else [])], logger=False,
                            enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=best is not None,
                            num_sanity_val_steps=0, default_root_dir=workdir, **trainer_cfg)
        diverged = None
        try:
            trainer.fit(module, train, val)
        except Diverged as exc:
            # A tuning trial reports it (the caller prunes it); a final fit falls back to its
            # best checkpoint from before the divergence, if it validated at least once.
            if best is None or not best.best_model_path:
                raise
            diverged = str(exc)
        epochs = trainer.current_epoch
        if best is None:
            return FitResult({"val_acc": float(stop.best_score)}, epochs,
                             max(epochs - stop.wait_count, 1), time.perf_counter() - start, {})
        state = torch.load(best.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        metrics = {k: float(v) for k, v in
                   trainer.validate(module, val, verbose=False)[0].items()}
        metrics.update({k: float(v) for k, v in
                        trainer.test(module, test, verbose=False)[0].items()})
    # Epochs run minus those spent waiting for an improvement that never came.
    best_epoch = max(epochs - stop.wait_count, 1)
    return FitResult(metrics, epochs, best_epoch, time.perf_counter() - start,
                     {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")},
                     diverged)
