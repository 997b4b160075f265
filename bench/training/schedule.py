"""Learning-rate schedules per optimizer step, and keeping them right when groups are added.

Gradual unfreezing adds a parameter group to the optimizer mid-training (Lightning's
``BaseFinetuning.unfreeze_and_add_param_group``). A ``LambdaLR`` built before that knows only
the groups it saw and silently leaves a new one at its constant starting LR. :func:`follow_new_group`
registers the new group with the scheduler, so it follows the same schedule from the current
step on, at its own base LR.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR

from bench.errors import BenchError

SCHEDULES = ("constant", "slanted_triangular", "linear_warmup")


def is_constant(spec: Mapping[str, Any] | None) -> bool:
    """No spec (configs older than ``train.schedule``) and ``name: constant`` mean a fixed LR."""
    return spec is None or spec.get("name", "constant") == "constant"


def check(spec: Mapping[str, Any] | None, where: str = "train.schedule") -> None:
    if spec is None:
        return
    name = spec.get("name")
    if name not in SCHEDULES:
        raise BenchError(f"{where}.name={name!r}; use one of {', '.join(SCHEDULES)}")
    if name == "linear_warmup":
        frac = spec.get("warmup_frac")
        if not isinstance(frac, (int, float)) or isinstance(frac, bool) or not 0 <= frac < 1:
            raise BenchError(f"{where}.warmup_frac={frac!r}; it must be a number in [0, 1)")
    if name == "slanted_triangular":
        cut, ratio = spec.get("cut_frac"), spec.get("ratio")
        if not isinstance(cut, (int, float)) or isinstance(cut, bool) or not 0 < cut < 1:
            raise BenchError(f"{where}.cut_frac={cut!r}; it must be a number between 0 and 1")
        if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or ratio < 1:
            raise BenchError(f"{where}.ratio={ratio!r}; it must be a number >= 1")


def slanted_triangular(total_steps: int, cut_frac: float, ratio: float) -> Callable[[int], float]:
    """Howard & Ruder (2018), eq. 3, as a multiplier of the base LR: a short linear rise from
    1/ratio to 1 over ``cut_frac`` of the steps, then a long linear decay back to 1/ratio."""
    total = max(int(total_steps), 1)
    cut = max(int(total * cut_frac), 1)

    def factor(step: int) -> float:
        t = min(step, total)
        p = t / cut if t < cut else 1 - (t - cut) / max(total - cut, 1)
        return (1 + max(p, 0.0) * (ratio - 1)) / ratio

    return factor


def warmup_steps(spec: Mapping[str, Any] | None, total_steps: int) -> int:
    """Steps spent rising to the peak LR: what :func:`make_scheduler` lays over the fit."""
    if is_constant(spec):
        return 0
    total = max(int(total_steps), 1)
    frac = spec["warmup_frac"] if spec["name"] == "linear_warmup" else spec["cut_frac"]
    steps = int(total * float(frac))
    return steps if spec["name"] == "linear_warmup" else max(steps, 1)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: Mapping[str, Any],
                   total_steps: int) -> LambdaLR:
    """The scheduler a non-constant ``spec`` names."""
    if spec["name"] == "linear_warmup":  # transformers' own: linear rise, then linear decay to 0
        from transformers import get_linear_schedule_with_warmup

        total = max(int(total_steps), 1)
        return get_linear_schedule_with_warmup(optimizer, warmup_steps(spec, total), total)
    factor = slanted_triangular(total_steps, float(spec["cut_frac"]), float(spec["ratio"]))
    return LambdaLR(optimizer, factor)


def follow_new_group(scheduler: Any, group: dict[str, Any]) -> None:
    """Put a group added after ``scheduler`` was built on the schedule, at the current step."""
    if not isinstance(scheduler, LambdaLR):
        raise BenchError(f"cannot add a parameter group to a {type(scheduler).__name__} schedule; "
                         "use train.schedule.name=slanted_triangular or constant")
    base = group.setdefault("initial_lr", group["lr"])
    scheduler.base_lrs.append(base)
    scheduler.lr_lambdas.append(scheduler.lr_lambdas[-1])
    group["lr"] = base * scheduler.lr_lambdas[-1](scheduler.last_epoch)
    scheduler._last_lr.append(group["lr"])
