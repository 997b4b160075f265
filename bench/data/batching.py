"""Batches cut from cached token tensors: texts of similar length together, each batch
trimmed to its longest text, so a batch costs what its texts need and not the longest text of
the study; and how many passes make one round of at least ``min_steps`` optimizer steps."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler, TensorDataset


def trim_ids(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """A padded id matrix cut to its longest text (dynamic padding).

    The model, not the loader, pads further when it needs a minimum width (a convolution
    window), and masks padding, so a text's logits do not depend on its batch neighbours.
    """
    return ids[:, :max(int((ids != pad_id).sum(dim=1).max()), 1)]


def trim_states(states: torch.Tensor) -> torch.Tensor:
    """Cached per-token states (mask in the last channel) cut to their longest text, as
    :func:`trim_ids` cuts token ids: the layers above see the widths the live model would."""
    return states[:, :max(int(states[..., -1].sum(dim=1).max()), 1)]


class _Trim:
    """Collate: a batch's ids through :func:`trim_ids`."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return trim_ids(batch[0], self.pad_id), batch[1]


def _whole(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch[0], batch[1]


def _trim_states(batch: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return trim_states(batch[0]), batch[1]


class BucketBatchSampler(Sampler[list[int]]):
    """Shuffled batches of similar-length texts, so little of each batch is padding.

    Each epoch: shuffle, cut into pools of ``pool_batches`` batches, sort each pool by length,
    cut it into batches and shuffle the batches. Batch composition stays random (a text meets
    different neighbours every epoch) while the padded width tracks the texts' own lengths.
    PyTorch and Lightning ship no such sampler (torchtext's BucketIterator is gone).
    """

    def __init__(self, lengths: torch.Tensor, batch_size: int, seed: int,
                 pool_batches: int = 50, passes: int = 1, per_epoch: int | None = None) -> None:
        self.lengths, self.batch_size, self.passes = lengths, batch_size, passes
        self.pool = batch_size * pool_batches
        self.generator = torch.Generator().manual_seed(seed)
        # ``per_epoch``: each epoch is the next that many batches of one endless stream of
        # shuffled passes (a fit counted in optimizer steps, cut into equal rounds): a round
        # may end mid-pass, and the next one goes on where it stopped.
        self.per_epoch = per_epoch
        self._stream: Iterator[list[int]] | None = None

    def __len__(self) -> int:
        if self.per_epoch is not None:
            return self.per_epoch
        return self.passes * -(-len(self.lengths) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.per_epoch is not None:
            if self._stream is None:
                self._stream = self._endless()
            for _ in range(self.per_epoch):
                yield next(self._stream)
            return
        for _ in range(self.passes):  # a round of several shuffled passes (small training sets)
            yield from self._one_pass()

    def _endless(self) -> Iterator[list[int]]:
        while True:
            yield from self._one_pass()

    def _one_pass(self) -> Iterator[list[int]]:
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


def passes_per_round(n_train: int, batch_size: int, max_rounds: int, min_steps: int) -> int:
    """Shuffled passes over the training set per round (one validation per round).

    Chosen so that ``max_rounds`` rounds hold at least ``min_steps`` optimizer steps: with 50
    examples and batch 50 an epoch is one step, and 30 bare epochs are 30 steps, far from
    convergence; a 1,000-example fit gets 20 steps an epoch. Rounds, patience and the pruner's
    warm-up then mean the same at every size.
    """
    steps = -(-n_train // batch_size)
    return max(1, -(-min_steps // (steps * max_rounds)))


def batches_per_pass(n_train: int, batch_size: int) -> int:
    return -(-n_train // batch_size)


def steps_at(length: int, n_train: int, n_full: int, batch_size: int) -> int:
    """Optimizer steps of a fit on ``n_train`` texts that makes as many passes over them as
    ``length`` steps make over ``n_full``: a fold's fit of a candidate length trains the
    same number of epochs as the final fit on all n labels will (at least one step)."""
    ratio = batches_per_pass(n_train, batch_size) / batches_per_pass(n_full, batch_size)
    return max(1, int(round(length * ratio)))


def loader(ids: torch.Tensor, labels: torch.Tensor, batch_size: int, shuffle: bool,
           seed: int = 0, passes: int = 1, pad_id: int = 0,
           lengths: torch.Tensor | None = None, per_epoch: int | None = None) -> DataLoader:
    """Whole batches are indexed out of the tensors at once: no per-example Python work.

    Training batches are length-bucketed, ``passes`` shuffled passes per epoch (a *round*, see
    :func:`passes_per_round`); evaluation batches go through the texts sorted by length (order
    does not change a metric, and the padding all but disappears). Float rows (cached frozen
    features, or per-token states of a frozen prefix) and bare row numbers (a model that looks
    its rows up itself) are batched by their texts' ``lengths``, so they meet the same
    neighbours. ``per_epoch``: training epochs of exactly that many batches, cut from one
    endless shuffled stream (see :class:`BucketBatchSampler`).
    """
    dataset = TensorDataset(ids, labels)
    rows = ids.dim() == 1  # row numbers of a model that looks its rows up itself
    if rows and lengths is None:
        raise ValueError("row numbers need their texts' lengths")
    features = ids.is_floating_point() or rows
    if lengths is None:
        lengths = torch.ones(len(ids), dtype=torch.long) if features else (ids != pad_id).sum(1)
    if shuffle:
        sampler: Any = BucketBatchSampler(lengths, batch_size, seed, passes=passes,
                                           per_epoch=per_epoch)
    else:
        by_length = torch.argsort(lengths, stable=True).tolist()
        sampler = BatchSampler(by_length, batch_size, False)
    collate = (_trim_states if ids.dim() == 3 else _whole) if features else _Trim(pad_id)
    return DataLoader(dataset, batch_size=None, sampler=sampler, collate_fn=collate)
