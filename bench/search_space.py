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
           "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
           # judges a trial on the folds run so far, paired against the best trial's same folds
           # (signed-rank test): it stops a setting only on evidence. With 3 folds its smallest
           # one-sided p is 1/8, so at p_threshold 0.1 every trial runs every fold.
           "wilcoxon": optuna.pruners.WilcoxonPruner}
# Pruners fed one value per fold (the fold's score) rather than one per round of the first fold.
FOLD_PRUNERS = ("wilcoxon",)
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


def entries(space: Mapping[str, Any] | None) -> dict[str, Any]:
    """A space's searched keys: an entry set to null is not searched (an experiment pinned to
    an older search drops a key its model config adds)."""
    return {k: v for k, v in (space or {}).items() if v is not None}


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
        path = spec.get("path", name)
        if path.endswith("weight_decay") and low < 0:
            raise BenchError(f"{where}.{name}: weight decay below 0 (low={low}); give low >= 0")
        if path.endswith("warmup_frac") and not (0 <= low and high < 1):
            raise BenchError(f"{where}.{name}: a warm-up fraction must lie in [0, 1) "
                             f"(got {low}, {high})")


def startup_trials(value: Any, n_trials: int) -> int | None:
    """TPE's random start-up trials: ``null`` keeps Optuna's 10 (what studies before the key
    ran: at 4 or 8 trials a whole search at random), ``auto`` a third of the budget (at least
    2, the default trial counting), so the model of the landscape steers most trials."""
    if value is None:
        return None
    if value == "auto":
        return max(2, round(n_trials / 3))
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BenchError(f"hpo.startup_trials={value!r}; give an integer >= 1, auto or null")
    return value


def make_sampler(name: str, seed: int, startup: int | None = None) -> optuna.samplers.BaseSampler:
    """Seeded TPE (the default; ``startup``: its random start-up trials), random search
    (i.i.d. trials, which the expected-best-of-k budget curve assumes, Dodge et al. 2019), or
    scrambled Sobol points (QMC: spread evenly over a small budget, not clumped)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "qmc":
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed,
                                          warn_independent_sampling=False)
    extra = {} if startup is None else {"n_startup_trials": startup}
    return optuna.samplers.TPESampler(seed=seed, multivariate=True, **extra)
