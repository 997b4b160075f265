"""A task: a dataset tensorised over the shared vocabulary, with its fixed splits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader

from bench.data.sources import LabelledTexts
from bench.data.splits import Splits, fixed_splits
from bench.data.batching import loader


@dataclass
class Task:
    data: LabelledTexts
    ids: torch.Tensor     # [N, max_len] token ids, right-padded with pad_id
    labels: torch.Tensor  # [N]
    splits: Splits
    pad_id: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.data.classes)

    def loader(self, index: np.ndarray, batch_size: int, shuffle: bool = False,
               seed: int = 0, passes: int = 1, per_epoch: int | None = None) -> DataLoader:
        idx = torch.as_tensor(index, dtype=torch.long)
        return loader(self.ids[idx], self.labels[idx], batch_size, shuffle, seed, passes,
                      self.pad_id, per_epoch=per_epoch)


def split(data: LabelledTexts, cfg: Mapping[str, Any], split_seed: int) -> Splits:
    """The dataset's fixed splits: drawn from the labels alone, before any text is read."""
    return fixed_splits(data.labels, cfg["test_size"], cfg["val_size"], split_seed, data.split,
                        data.name)


def make_task(data: LabelledTexts, cfg: Mapping[str, Any], backbone: Any, splits: Splits,
              cache: Path) -> Task:
    """Tokenised the backbone's way (word ids over the study's vocabulary, or subword ids)."""
    ids = backbone.tensorize(data.texts, int(cfg["max_len"]), cache, data.name)
    return Task(data, ids, torch.from_numpy(data.labels), splits, backbone.pad_id)
