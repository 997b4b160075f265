"""Fixed evaluation splits per dataset and nested, stratified training subsets per seed.

The protocol: test and validation are drawn once per dataset with a dataset-level seed and never
depend on a replicate seed. The remaining pool is ordered per replicate seed so that every prefix
is (as near as possible) stratified; a subset of size n is the first n of that order, so for one
seed the 50 are inside the 100.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import train_test_split

from bench.errors import BenchError


@dataclass(frozen=True)
class Splits:
    pool: np.ndarray  # indices available for training subsets
    val: np.ndarray
    test: np.ndarray


def _size(value: int | float, total: int) -> int:
    return int(round(value * total)) if isinstance(value, float) and value < 1 else int(value)


def fixed_splits(labels: np.ndarray, test_size: int | float, val_size: int | float, seed: int,
                 predefined: np.ndarray | None = None, name: str = "dataset") -> Splits:
    """Stratified test/val/pool split. A predefined ``split`` column is honoured where present."""
    idx = np.arange(len(labels))
    if predefined is not None and (predefined == "test").any():
        test = idx[predefined == "test"]
        rest = idx[predefined != "test"]
        if (predefined == "val").any():
            val = idx[predefined == "val"]
            return Splits(np.setdiff1d(rest, val), val, test)
    else:
        n_test = _size(test_size, len(idx))
        if not 0 < n_test < len(idx):
            raise BenchError(f"{name}: test_size={test_size} leaves nothing to train on "
                             f"({len(idx)} examples)")
        rest, test = _stratified_split(idx, labels, n_test, seed, name)
    n_val = _size(val_size, len(rest))
    if not 0 < n_val < len(rest):
        raise BenchError(f"{name}: val_size={val_size} leaves nothing to train on "
                         f"({len(rest)} examples after the test split)")
    pool, val = _stratified_split(rest, labels, n_val, seed + 1, name)
    return Splits(np.sort(pool), np.sort(val), np.sort(test))


def _stratified_split(idx: np.ndarray, labels: np.ndarray, n_out: int, seed: int,
                      name: str) -> tuple[np.ndarray, np.ndarray]:
    y = labels[idx]
    # Classes too rare to stratify (a single example) would make scikit-learn refuse.
    stratify = y if _all_counts_ge(y, 2) else None
    try:
        return train_test_split(idx, test_size=n_out, random_state=seed, stratify=stratify)
    except ValueError as exc:
        raise BenchError(f"{name}: cannot split {len(idx)} examples: {exc}") from None


def _all_counts_ge(y: np.ndarray, k: int) -> bool:
    counts = np.bincount(y)
    return bool((counts[counts > 0] >= k).all())


def nested_order(labels: np.ndarray, pool: np.ndarray, seed: int) -> np.ndarray:
    """A seeded order of ``pool`` whose every prefix keeps the class proportions.

    Each class is shuffled; its k-th example gets the rank (k + u) / class_size with u uniform in
    [0, 1), and the pool is sorted by rank. Prefixes interleave the classes in proportion.
    """
    rng = np.random.default_rng(seed)
    ranks = np.empty(len(pool))
    y = labels[pool]
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        rng.shuffle(members)
        ranks[members] = (np.arange(len(members)) + rng.random(len(members))) / len(members)
    return pool[np.argsort(ranks, kind="stable")]


def training_subset(labels: np.ndarray, pool: np.ndarray, size: int, seed: int) -> np.ndarray:
    """The first ``size`` examples of the seed's nested order."""
    if size > len(pool):
        raise BenchError(f"size {size} is larger than the training pool ({len(pool)} examples)")
    return nested_order(labels, pool, seed)[:size]
