"""Protocols: which target labels a cell may use to choose its setting and its training length.

``budget`` (the default): a cell of size n sees its n labels and nothing else. Each tuning
trial is scored by stratified k-fold cross-validation inside the n (early stopping inside each
fold); the final fit trains on all n for the number of rounds the folds chose, and is evaluated
once on test. Model selection on a large validation split overstates few-shot results (Perez,
Kiela & Cho 2021; FLEX, Bragg et al. 2021), so the honest protocol is the default.

``fixed_val``: the dataset's fixed validation split drives tuning, early stopping and the
checkpoint choice, as most transfer papers do. A cell then uses n + |validation| labels, and
every record and table says so.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from sklearn.model_selection import StratifiedKFold

from bench.errors import BenchError

PROTOCOLS = ("budget", "fixed_val")


@dataclass(frozen=True)
class Protocol:
    name: str = "budget"
    folds: int = 3
    transductive: bool = False  # vocabulary and word2vec corpora from every text, test included

    @classmethod
    def from_config(cls, node: Mapping[str, Any] | None) -> "Protocol":
        """``cfg.protocol``; configs older than the key meant the fixed validation split."""
        if node is None:
            return cls("fixed_val", 0, True)
        name, folds = node.get("name"), node.get("folds", 3)
        if name not in PROTOCOLS:
            raise BenchError(f"protocol.name={name!r}; use one of {', '.join(PROTOCOLS)}")
        if name == "budget" and (isinstance(folds, bool) or not isinstance(folds, int)
                                 or folds < 2):
            raise BenchError(f"protocol.folds={folds!r}; cross-validation needs an integer >= 2")
        transductive = node.get("transductive", False)
        if not isinstance(transductive, bool):
            raise BenchError(f"protocol.transductive={transductive!r}; use true or false")
        return cls(name, int(folds) if name == "budget" else 0, transductive)

    @property
    def uses_validation_split(self) -> bool:
        return self.name == "fixed_val"

    def check_size(self, n: int, where: str) -> None:
        """k-fold CV inside n needs at least two examples per fold's held-out part."""
        if self.name == "budget" and n < 2 * self.folds:
            raise BenchError(f"{where}: {n} labels cannot be split into {self.folds} "
                             f"cross-validation folds; use sizes >= {2 * self.folds} or fewer "
                             "protocol.folds")

    def selection_splits(self, labels: np.ndarray, subset: np.ndarray, val: np.ndarray,
                         seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """(train, held-out) index pairs on which a setting is scored, seeded by the replicate.

        Every trial of one replicate's tuning sees the same folds, so settings are compared on
        the same data (and the pruner compares like with like on the first fold).
        """
        if self.name == "fixed_val":
            return [(subset, val)]
        folds = StratifiedKFold(n_splits=self.folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # a class rarer than k is simply absent from some folds
            warnings.filterwarnings("ignore", message=".*least populated class.*")
            pairs = list(folds.split(np.zeros(len(subset)), labels[subset]))
        return [(subset[train], subset[held_out]) for train, held_out in pairs]

    def final_validation(self, val: np.ndarray) -> np.ndarray | None:
        """What the final fit validates on: the fixed split, or nothing (length chosen by CV)."""
        return val if self.uses_validation_split else None

    def labels_used(self, n: int, n_val: int) -> dict[str, int]:
        validation = n_val if self.uses_validation_split else 0
        return {"train": n, "validation": validation, "total": n + validation}

    def describe(self) -> str:
        vocab = "transductive vocabulary (test texts read)" if self.transductive \
            else "inductive (training pools only)"
        if self.name == "budget":
            return (f"budget: {self.folds}-fold stratified CV inside the n labels for tuning and "
                    f"training length, final fit on all n; {vocab}")
        return ("fixed_val: the fixed validation split for tuning, early stopping and checkpoint "
                f"choice (labels used = n + validation); {vocab}")

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "folds": self.folds, "transductive": self.transductive}
