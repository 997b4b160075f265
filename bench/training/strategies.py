"""Transfer strategies as data: what is transferred, which blocks train, at what LR multiplier.

A strategy is a ``conf/strategy/<name>.yaml`` node::

    transfer: none | vectors | network   # what comes from upstream
    trainable: all | [block, ...] | k    # k = the top k blocks
    lr_mult: {block: factor}             # optional per-block learning-rate multipliers
    train: {lr: ..., ...}                # optional: this strategy's own train.* defaults
    space: {name: {path, low, high}}     # optional: its own search ranges (replace hpo.space's)

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
from bench.training.schedule import follow_new_group

TRANSFERS = ("none", "vectors", "network")


KEYS = ("transfer", "trainable", "lr_mult", "lr_decay", "unfreeze_every", "lp_ft", "l2sp",
        "lora", "bitfit", "train", "space")


@dataclass(frozen=True)
class Strategy:
    name: str
    transfer: str = "network"
    trainable: Any = "all"
    lr_mult: Mapping[str, float] = field(default_factory=dict)
    lr_decay: float = 1.0               # discriminative LRs: each block down divides the LR
    unfreeze_every: int | None = None   # gradual unfreezing: one more block every E epochs
    lp_ft: Mapping[str, float] | None = None   # {ft_lr_mult}: linear probe, then fine-tune
    l2sp: Mapping[str, float] | None = None    # {alpha, beta}: pull towards the source weights
    lora: Mapping[str, float] | None = None    # {rank, alpha}: low-rank adapters train, not weights
    bitfit: bool = False                       # only bias terms (and the head) train
    train: Mapping[str, Any] = field(default_factory=dict)  # own train.* defaults (untuned fits,
    # and the first trial of every tuning): a LoRA adapter or a probe wants larger steps
    space: Mapping[str, Any] = field(default_factory=dict)  # own or extra tuned keys

    @classmethod
    def from_config(cls, name: str, cfg: Mapping[str, Any], blocks: tuple[str, ...]) -> "Strategy":
        unknown = set(cfg) - set(KEYS)
        if unknown:
            raise BenchError(f"strategy {name!r} has unknown keys {sorted(unknown)}; "
                             f"allowed: {', '.join(KEYS)}")
        strategy = cls(name, cfg.get("transfer", "network"), cfg.get("trainable", "all"),
                       dict(cfg.get("lr_mult") or {}), cfg.get("lr_decay", 1.0),
                       cfg.get("unfreeze_every"), cfg.get("lp_ft"), cfg.get("l2sp"),
                       cfg.get("lora"), cfg.get("bitfit", False), dict(cfg.get("train") or {}),
                       dict(cfg.get("space") or {}))
        strategy.trainable_blocks(blocks)  # validate now, not mid-study
        if strategy.transfer not in TRANSFERS:
            raise BenchError(f"strategy {name!r}: transfer={strategy.transfer!r}; "
                             f"use one of {', '.join(TRANSFERS)}")
        bad = set(strategy.lr_mult) - set(blocks)
        if bad:
            raise BenchError(f"strategy {name!r}: lr_mult names unknown blocks {sorted(bad)}; "
                             f"blocks are {', '.join(blocks)}")
        _number(name, "lr_decay", strategy.lr_decay, low=1e-9)
        if strategy.unfreeze_every is not None:
            _number(name, "unfreeze_every", strategy.unfreeze_every, low=1, integer=True)
        for key, spec, fields in (("lp_ft", strategy.lp_ft, ("ft_lr_mult",)),
                                  ("l2sp", strategy.l2sp, ("alpha", "beta")),
                                  ("lora", strategy.lora, ("rank", "alpha"))):
            if spec is None:
                continue
            if not isinstance(spec, Mapping) or set(spec) != set(fields):
                raise BenchError(f"strategy {name!r}: {key} needs exactly {', '.join(fields)}")
            for f in fields:
                _number(name, f"{key}.{f}", spec[f], low=1e-12 if key == "lp_ft" else 0.0)
        if strategy.lora:
            _number(name, "lora.rank", strategy.lora["rank"], low=1, integer=True)
            _number(name, "lora.alpha", strategy.lora["alpha"], low=1e-12)
        for key, value in strategy.train.items():
            if key in ("lr", "weight_decay"):
                _number(name, f"train.{key}", value, low=1e-12 if key == "lr" else 0.0)
            elif key in ("lengths", "probe_lengths"):
                if value is not None and not (isinstance(value, (list, tuple)) and value):
                    raise BenchError(f"strategy {name!r}: train.{key}={value!r}; give a list "
                                     "of optimizer steps")
            elif key in ("batch_size", "min_steps", "max_epochs", "patience", "min_epochs",
                         "extend_epochs"):
                _number(name, f"train.{key}", value, low=0 if key == "extend_epochs" else 1,
                        integer=True)
            else:
                raise BenchError(f"strategy {name!r}: train.{key} is not a training default a "
                                 "strategy may set; use lr, weight_decay, batch_size, min_steps, "
                                 "min_epochs, max_epochs, extend_epochs, patience, lengths or "
                                 "probe_lengths")
        if not isinstance(strategy.bitfit, bool):
            raise BenchError(f"strategy {name!r}: bitfit={strategy.bitfit!r}; use true or false")
        if strategy.unfreeze_every and strategy.lp_ft:
            raise BenchError(f"strategy {name!r}: choose unfreeze_every or lp_ft, not both")
        if strategy.lora and strategy.bitfit:
            raise BenchError(f"strategy {name!r}: choose lora or bitfit, not both")
        if (strategy.lora or strategy.bitfit) and strategy.transfer != "network":
            raise BenchError(f"strategy {name!r}: lora and bitfit adapt a transferred network; "
                             "set transfer: network")
        return strategy

    @property
    def defaults(self) -> dict[str, Any]:
        """The strategy's own training defaults as ``{config path: value}``."""
        return {f"train.{k}": v for k, v in self.train.items()}

    def trains_parameter(self, name: str) -> bool:
        """Inside a trainable block below the head: may this parameter train? (LoRA: adapter
        weights only; BitFit: bias terms only; otherwise every parameter.)"""
        if self.lora:
            return "lora_" in name
        if self.bitfit:
            return name.endswith("bias")
        return True

    @property
    def probes_only(self) -> bool:
        """Only the new head trains, on a body that never changes: its features can be cached."""
        return (self.transfer != "none" and self.trainable in (["head"], ("head",))
                and not (self.lora or self.bitfit or self.lp_ft or self.unfreeze_every
                         or self.l2sp))

    @property
    def probe_stage_cacheable(self) -> bool:
        """LP-FT's probe stage trains the head on the transferred body, which it leaves as is."""
        return bool(self.lp_ft) and self.transfer != "none" and not (
            self.lora or self.bitfit or self.l2sp)

    @property
    def unfreezes_from_pretrained(self) -> bool:
        """Gradual unfreezing alone: each block keeps its transferred weights until its round
        comes, so in every round the blocks still frozen compute what they computed at the
        start, and their output can be cached once per text for all rounds."""
        return bool(self.unfreeze_every) and self.transfer != "none" and not (
            self.lora or self.bitfit or self.lp_ft or self.l2sp)

    def frozen_layers(self, blocks: tuple[str, ...]) -> int:
        """Encoder layers that stay frozen for the whole fit under the embeddings while every
        block above them trains (``partial``): their output can be computed once per text.
        0 for every other shape of strategy (probes have their own cache; LoRA, BitFit,
        gradual unfreezing, LP-FT and L2-SP change or unfreeze what lies below)."""
        if (self.transfer == "none" or self.probes_only or self.lora or self.bitfit
                or self.lp_ft or self.unfreeze_every or self.l2sp):
            return 0
        blocks = tuple(blocks)
        trainable = self.trainable_blocks(blocks)
        first = blocks.index(trainable[0])
        if tuple(trainable) != blocks[first:] or first < 2 or blocks[0] != "embeddings":
            return 0
        return first - 1

    def unfreeze_schedule(self, blocks: tuple[str, ...]) -> list[tuple[int, str]]:
        """(epoch, block) pairs: gradual unfreezing from the top, one block every E epochs."""
        if not self.unfreeze_every:
            return []
        order = list(reversed(self.trainable_blocks(blocks)))  # top first
        return [(i * self.unfreeze_every, b) for i, b in enumerate(order) if i > 0]

    def lr_factor(self, block: str, blocks: tuple[str, ...]) -> float:
        """The LR multiplier of ``block``: ``lr_mult`` times ``1 / lr_decay`` per block below the top."""
        depth = len(blocks) - 1 - blocks.index(block)
        return float(self.lr_mult.get(block, 1.0)) / float(self.lr_decay) ** depth

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


def _number(name: str, key: str, value: Any, low: float, integer: bool = False) -> None:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < low:
        raise BenchError(f"strategy {name!r}: {key}={value!r}; it must be "
                         f"{'an integer' if integer else 'a number'} >= {low:g}")


def build_model(strategy: Strategy, make_model: Callable[[], nn.Module],
                vectors: torch.Tensor | None, source_state: Mapping[str, torch.Tensor] | None,
                head: str = "head", lora_targets: Any = ("query", "value")) -> nn.Module:
    """A fresh model initialised as the strategy says. Call under the replicate seed."""
    model = make_model()
    if strategy.transfer == "vectors":
        if vectors is None:
            raise BenchError(f"strategy {strategy.name!r} needs word vectors; set embeddings")
        from bench.models import copy_vectors

        copy_vectors(model, vectors)
    elif strategy.transfer == "network":
        if source_state is None:
            raise BenchError(f"strategy {strategy.name!r} needs a source model")
        below_head = {k: v for k, v in source_state.items() if not k.startswith(head + ".")}
        missing, unexpected = model.load_state_dict(below_head, strict=False)
        if unexpected or any(not k.startswith(head + ".") for k in missing):
            raise BenchError("the source model does not match the target model's shape")
    if strategy.lora:
        from bench.models.transformer import add_lora

        add_lora(model, int(strategy.lora["rank"]), float(strategy.lora["alpha"]), lora_targets)
    return model


class FreezeBlocks(BaseFinetuning):
    """Freezes the blocks a strategy does not train, before the optimizer is built, and
    unfreezes scheduled ones later, each as a new optimizer group at its own LR."""

    def __init__(self, frozen: list[str], unfreeze: list[tuple[int, str, float]] = (),
                 keep: Callable[[str], bool] | None = None, head: str = "head") -> None:
        super().__init__()
        self.frozen = frozen
        self.unfreeze = list(unfreeze)  # (epoch, block, lr)
        self.keep, self.head = keep, head  # parameter filter below the head (LoRA, BitFit)

    def freeze_before_training(self, pl_module: Any) -> None:
        model = pl_module.model
        self.make_trainable(model)  # a model may arrive frozen (LP-FT's phase 2)
        later = [b for _, b, _ in self.unfreeze]
        modules = [model.block(b) for b in [*self.frozen, *later]]
        if modules:
            self.freeze(modules, train_bn=False)
        if self.keep is not None:
            for name in model.blocks:
                if name != self.head:
                    for pname, p in model.block(name).named_parameters():
                        p.requires_grad = p.requires_grad and self.keep(pname)

    def finetune_function(self, pl_module: Any, epoch: int, optimizer: Any) -> None:
        no_decay = tuple(getattr(pl_module, "no_decay", ()) or ())
        for at, block, lr in self.unfreeze:
            if epoch == at:
                module = pl_module.model.block(block)
                if not no_decay:
                    self.unfreeze_and_add_param_group(module, optimizer, lr=lr,
                                                      initial_denom_lr=1.0, train_bn=True)
                    added = [optimizer.param_groups[-1]]
                    added[0]["name"] = block
                else:  # the block's biases and norm weights in a group of their own, no decay
                    self.make_trainable(module)
                    decayed, kept = split_decay(module.named_parameters(), no_decay)
                    added = []
                    for params, name, extra in ((decayed, block, {}),
                                                (kept, f"{block}:no_decay", {"weight_decay": 0.0})):
                        if params:
                            optimizer.add_param_group({"params": params, "lr": lr, "name": name,
                                                       **extra})
                            added.append(optimizer.param_groups[-1])
                module.train()  # frozen blocks ran in eval mode
                for group in added:
                    for config in pl_module.trainer.lr_scheduler_configs:  # LR schedules include it
                        if config.scheduler.optimizer is optimizer:
                            follow_new_group(config.scheduler, group)


def freeze_callback(strategy: Strategy, blocks: tuple[str, ...], lr: float) -> FreezeBlocks:
    trainable = strategy.trainable_blocks(blocks)
    schedule = [(epoch, b, lr * strategy.lr_factor(b, blocks))
                for epoch, b in strategy.unfreeze_schedule(blocks)]
    keep = None if not (strategy.lora or strategy.bitfit) else strategy.trains_parameter
    return FreezeBlocks([b for b in blocks if b not in trainable], schedule, keep)


def split_decay(named: Any, no_decay: tuple[str, ...]) -> tuple[list, list]:
    """(decayed, not decayed) trainable parameters: a name containing one of ``no_decay``
    (``bias``, ``LayerNorm.weight``) takes no weight decay."""
    decayed, kept = [], []
    for pname, p in named:
        if p.requires_grad:
            (kept if any(k in pname for k in no_decay) else decayed).append(p)
    return decayed, kept


def param_groups(model: nn.Module, blocks: tuple[str, ...], lr: float,
                 strategy: Strategy | None = None,
                 no_decay: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """One optimizer group per block with trainable parameters, named for inspection; with
    ``no_decay``, a block's biases and norm weights go in a second group without decay."""
    groups = []
    for name in blocks:
        factor = strategy.lr_factor(name, blocks) if strategy else 1.0
        if not no_decay:
            params = [p for p in model.block(name).parameters() if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr * factor, "name": name})
            continue
        decayed, kept = split_decay(model.block(name).named_parameters(), no_decay)
        if decayed:
            groups.append({"params": decayed, "lr": lr * factor, "name": name})
        if kept:
            groups.append({"params": kept, "lr": lr * factor, "name": f"{name}:no_decay",
                           "weight_decay": 0.0})
    return groups


class L2SP:
    """Li et al. (2018): alpha/2 ||w - w0||^2 on transferred weights, beta/2 ||w||^2 on the head.

    ``w0`` is a snapshot of the model when this object is made: make it right after
    :func:`build_model`, so ``w0`` are the source weights.
    """

    def __init__(self, model: nn.Module, alpha: float, beta: float, head: str = "head") -> None:
        self.alpha, self.beta, self.head = float(alpha), float(beta), head + "."
        self.start = {k: p.detach().clone() for k, p in model.named_parameters()
                      if not k.startswith(self.head)}

    def __call__(self, model: nn.Module) -> torch.Tensor:
        pull, decay = [], []
        for k, p in model.named_parameters():
            if k in self.start:
                if self.start[k].device != p.device:  # moved once, on the first call
                    self.start[k] = self.start[k].to(p.device)
                pull.append(((p - self.start[k]) ** 2).sum())
            elif k.startswith(self.head):
                decay.append((p ** 2).sum())
        zero = torch.zeros((), device=next(model.parameters()).device)
        return (self.alpha / 2 * (sum(pull) if pull else zero)
                + self.beta / 2 * (sum(decay) if decay else zero))
