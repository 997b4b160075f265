"""Source pretraining: train once per (source data, vocabulary, vectors, model, settings, seed).

The trained weights and their validation/test scores are cached under a hash of exactly those
inputs, so every cell of every study that shares them reuses one source model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import lightning.pytorch as L
import torch
from torch import nn

from bench.cache import cached, stable_hash
from bench.data.task import Task
from bench.training.fit import EVAL_BATCH, TextClassifier, fit_and_test


@dataclass
class SourceModel:
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, float]
    key: str
    train_seconds: float  # what training cost when it ran
    from_cache: bool


# Bump when the training loop changes what a source model comes out as (batching, optimizer):
# cached models from an older recipe are then retrained rather than silently reused.
RECIPE = 3  # 3: checkpoint on validation loss, padding-masked max pooling


def pretrain_source(task: Task, make_model: Callable[[], nn.Module],
                    key_parts: Mapping[str, Any], settings: Mapping[str, Any],
                    trainer_cfg: Mapping[str, Any], cache: Path,
                    optimizer: str = "adam") -> SourceModel:
    """Return the cached source model for these inputs, training it first if needed.

    ``make_model`` returns the network the source step starts from (word vectors or pretrained
    weights already in place; called under the source seed); ``key_parts`` name every input."""
    key = stable_hash({**key_parts, "settings": dict(settings), "recipe": RECIPE,
                       **({"optimizer": optimizer} if optimizer != "adam" else {})})
    built = False

    def build() -> dict[str, Any]:
        nonlocal built
        built = True
        L.seed_everything(int(settings["seed"]), workers=True, verbose=False)
        model = make_model()
        module = TextClassifier(model, task.num_classes, float(settings["lr"]),
                                float(settings["weight_decay"]), optimizer=optimizer)
        bs = int(settings["batch_size"])
        result = fit_and_test(module, task.loader(task.splits.pool, bs, True, int(settings["seed"])),
                              task.loader(task.splits.val, EVAL_BATCH),
                              task.loader(task.splits.test, EVAL_BATCH),
                              trainer_cfg, int(settings["max_epochs"]), int(settings["patience"]),
                              int(settings["min_epochs"]))
        return {"state_dict": result.state_dict, "metrics": result.metrics,
                "seconds": result.seconds, "epochs": result.epochs}

    blob = cached(cache / "source_models" / f"{key}.pt", build, lambda b, p: torch.save(b, p),
                  lambda p: torch.load(p, map_location="cpu", weights_only=True))
    return SourceModel(blob["state_dict"], blob["metrics"], key, float(blob["seconds"]), not built)
