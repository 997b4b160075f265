"""A search space as data (``{name: {path, low, high, log | choices, type, tie}}``): checked
up front, its default point, a trial's suggestion; Optuna's pruners and samplers by name.
Below both the config checks and the tuning loop, so neither imports the other."""

from __future__ import annotations

import inspect
from typing import Any, Mapping

import optuna
from optuna.trial import Trial

from bench.errors import BenchError

PRUNERS = {"none": optuna.pruners.NopPruner, "median": optuna.pruners.MedianPruner,
           "hyperband": optuna.pruners.HyperbandPruner,
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner}
# Keys of the default pruner config (conf/hpo/tpe.yaml). ``n_warmup_steps`` is also the suite's
# own warm-up (the pruning callback is silent before it), so a pruner without these arguments
# simply does not receive them; any other argument it does not take is an error.
_SHARED = ("n_startup_trials", "n_warmup_steps")


def make_pruner(spec: Mapping[str, Any] | None) -> optuna.pruners.BasePruner:
    spec = dict(spec or {"name": "none"})
    name = spec.pop("name", "none")
    if name not in PRUNERS:
        raise BenchError(f"hpo.pruner.name={name!r}; use one of {', '.join(PRUNERS)}")
    accepted = set(inspect.signature(PRUNERS[name]).parameters)
    bad = sorted(k for k in spec if k not in accepted and k not in _SHARED)
    if bad:
        raise BenchError(f"hpo.pruner.{bad[0]} is not an argument of the {name} pruner; it takes "
                         f"{', '.join(sorted(accepted)) or 'none'}")
    try:
        return PRUNERS[name](**{k: v for k, v in spec.items() if k in accepted})
    except (TypeError, ValueError) as exc:
        raise BenchError(f"hpo.pruner ({name}): {exc}") from None


def suggest(trial: Trial, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Sample every search-space entry; returns ``{config path: value}``.

    ``tie: {path: factor}`` sets other keys in proportion to the sampled value: LoRA's alpha at
    twice the rank keeps the adapter's scale alpha/rank, so a tuned rank does not also change
    the effective step size."""
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            value = trial.suggest_categorical(name, list(spec["choices"]))
        elif spec.get("type", "float") == "int":
            value = trial.suggest_int(name, spec["low"], spec["high"], log=bool(spec.get("log")))
        else:
            value = trial.suggest_float(name, float(spec["low"]), float(spec["high"]),
                                        log=bool(spec.get("log")))
        params[spec.get("path", name)] = value
        for path, factor in (spec.get("tie") or {}).items():
            params[path] = value * factor
    return params


def default_trial(space: Mapping[str, Mapping[str, Any]], cell: Any) -> dict[str, Any]:
    """The search-space values of the untuned setting (``{parameter name: value}``), read from
    the cell's config, for Optuna's ``enqueue_trial``: tuning then starts where ``hpo=none``
    would stay, so it can only add. A value outside its range raises (check_hpo says so first)."""
    from omegaconf import OmegaConf

    out = {}
    for name, spec in space.items():
        path = spec.get("path", name)
        value = OmegaConf.select(cell, path, default=None)
        if "choices" in spec:
            if value not in list(spec["choices"]):
                raise BenchError(f"the default {path}={value!r} is not among the choices "
                                 f"{list(spec['choices'])} of {name}; tuning could not start there")
        elif not (isinstance(value, (int, float)) and spec["low"] <= value <= spec["high"]):
            raise BenchError(f"the default {path}={value!r} lies outside {name}'s range "
                             f"[{spec['low']:g}, {spec['high']:g}]; tuning could not start there "
                             "(widen the range or set the strategy's train default inside it)")
        out[name] = value
    return out


def check_space(space: Mapping[str, Mapping[str, Any]], where: str = "hpo.space") -> None:
    for name, spec in space.items():
        tie = spec.get("tie") or {}
        if not isinstance(tie, Mapping) or not all(
                isinstance(f, (int, float)) and not isinstance(f, bool) and f > 0
                for f in tie.values()):
            raise BenchError(f"{where}.{name}.tie={tie!r}; give {{config path: factor > 0}}")
        if "choices" in spec:
            if not list(spec["choices"]):
                raise BenchError(f"{where}.{name}: choices is empty")
            continue
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)):
            raise BenchError(f"{where}.{name}: low={low!r}, high={high!r}; both must be numbers")
        if not low < high or (spec.get("log") and low <= 0):
            raise BenchError(f"{where}.{name}: need 0 < low < high for a log scale, "
                             f"low < high otherwise (got {low}, {high})")


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """Seeded TPE (the default), or random search: i.i.d. trials, which the expected-best-of-k
    budget curve assumes (Dodge et al. 2019)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)
