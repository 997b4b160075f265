"""Transfer strategies as data: what is transferred, which blocks train, at what LR multiplier.

A strategy is a ``conf/strategy/<name>.yaml`` node::

    transfer: none | vectors | network   # what comes from upstream
    trainable: all | [block, ...] | k    # k = the top k blocks
    lr_mult: {block: factor}             # optional per-block learning-rate multipliers

One mechanism serves them all: :func:`build_model` decides what is initialised from where, and
:class:`FreezeBlocks` (Lightning's ``BaseFinetuning``) freezes what must not train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn

from bench.errors import BenchError

TRANSFERS = ("none", "vectors", "network")


@dataclass(frozen=True)
class Strategy:
    name: str
    transfer: str = "network"
    trainable: Any = "all"
    lr_mult: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], blocks: tuple[str, ...]) -> "Strategy":
        unknown = set(cfg) - {"transfer", "trainable", "lr_mult"}
        if unknown:
            raise BenchError(f"strategy {name!r} has unknown keys {sorted(unknown)}; "
                             "allowed: transfer, trainable, lr_mult")
        strategy = cls(name, cfg.get("transfer", "network"), cfg.get("trainable", "all"),
                       dict(cfg.get("lr_mult") or {}))
        strategy.trainable_blocks(blocks)  # validate now, not mid-study
        if strategy.transfer not in TRANSFERS:
            raise BenchError(f"strategy {name!r}: transfer={strategy.transfer!r}; "
                             f"use one of {', '.join(TRANSFERS)}")
        bad = set(strategy.lr_mult) - set(blocks)
        if bad:
            raise BenchError(f"strategy {name!r}: lr_mult names unknown blocks {sorted(bad)}; "
                             f"blocks are {', '.join(blocks)}")
        return strategy

    def trainable_blocks(self, blocks: tuple[str, ...]) -> list[str]:
        """Block names that train, bottom to top."""
        t = self.trainable
        if t == "all":
            return list(blocks)
        if isinstance(t, int) and not isinstance(t, bool):
            if not 1 <= t <= len(blocks):
                raise BenchError(f"strategy {self.name!r}: trainable={t} but the model has "
                                 f"{len(blocks)} blocks; use 1..{len(blocks)}")
            return list(blocks[-t:])
        if isinstance(t, (list, tuple)) and t and all(b in blocks for b in t):
            return [b for b in blocks if b in t]
        raise BenchError(f"strategy {self.name!r}: trainable={t!r}; use 'all', a number of top "
                         f"blocks, or a list of blocks from {', '.join(blocks)}")


def build_model(strategy: Strategy, make_model: Callable[[], nn.Module],
                vectors: torch.Tensor | None, source_state: Mapping[str, torch.Tensor] | None,
                head: str = "head") -> nn.Module:
    """A fresh model initialised as the strategy says. Call under the replicate seed."""
    model = make_model()
    if strategy.transfer == "vectors":
        if vectors is None:
            raise BenchError(f"strategy {strategy.name!r} needs word vectors; set embeddings")
        with torch.no_grad():
            model.embedding.weight.copy_(vectors)
    elif strategy.transfer == "network":
        if source_state is None:
            raise BenchError(f"strategy {strategy.name!r} needs a source model")
        below_head = {k: v for k, v in source_state.items() if not k.startswith(head + ".")}
        missing, unexpected = model.load_state_dict(below_head, strict=False)
        if unexpected or any(not k.startswith(head + ".") for k in missing):
            raise BenchError("the source model does not match the target model's shape")
    return model


class FreezeBlocks(BaseFinetuning):
    """Freezes the blocks a strategy does not train, before the optimizer is built."""

    def __init__(self, frozen: list[str]) -> None:
        super().__init__()
        self.frozen = frozen

    def freeze_before_training(self, pl_module: Any) -> None:
        modules = [pl_module.model.block(b) for b in self.frozen]
        if modules:
            self.freeze(modules, train_bn=False)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
        """No schedule: the set of trainable blocks is fixed for these strategies."""


def param_groups(model: nn.Module, blocks: tuple[str, ...], lr: float,
                 lr_mult: Mapping[str, float]) -> list[dict[str, Any]]:
    """One optimizer group per block with trainable parameters, named for inspection."""
    groups = []
    for name in blocks:
        params = [p for p in model.block(name).parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": lr * float(lr_mult.get(name, 1.0)), "name": name})
    return groups
