"""Per-cell tuning with Optuna: seeded TPE, pruning, a shared storage, resume and parallel workers.

Tuning lives inside each cell, where the trial object is; Hydra only composes and launches. One
Optuna study per (study, strategy, size) cell, named ``<study>/<strategy>/n=<size>``, in one
storage per results directory (SQLite by default; any SQLAlchemy URL, PostgreSQL included).

Resume and parallel workers rest on Optuna's own machinery: heartbeats mark the trials of a
killed process as failed and ``RetryHeartbeatStaleTrialCallback`` re-queues them with the same
parameters. On top, :func:`run_trials` guarantees exactly ``n_trials`` finished trials however
many workers share a study: a trial whose number comes after ``n_trials`` live ones is surplus
and is closed at once instead of run.
"""

from __future__ import annotations

import fcntl
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna
from optuna_integration import PyTorchLightningPruningCallback
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback, fail_stale_trials
from optuna.trial import FrozenTrial, Trial, TrialState

from bench.errors import BenchError
from bench.folder import default_storage
from bench.redact import redact_text
from bench.search_space import make_sampler

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
LIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class SurplusTrial(Exception):
    """This trial would exceed ``n_trials``: other workers already hold every slot."""


def storage_url(hpo: Mapping[str, Any], study_dir: Path | None) -> str:
    if hpo.get("storage"):
        return str(hpo["storage"])
    if study_dir is None:
        raise BenchError("no Optuna storage: set hpo.storage or give a study directory")
    return default_storage(study_dir)


def open_storage(hpo: Mapping[str, Any], study_dir: Path | None) -> RDBStorage:
    """The study's storage with heartbeats on.

    Opening it creates the schema the first time. Concurrent first-time creation on SQLite fails,
    so for a file database the opening is serialised across processes with a lock file: the
    first worker creates, the others wait and then find it created.
    """
    url = storage_url(hpo, study_dir)
    if not url.startswith("sqlite:///"):
        return _open_rdb(url, hpo)
    db = Path(url[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _open_rdb(url, hpo)


def _open_rdb(url: str, hpo: Mapping[str, Any], attempts: int = 3) -> RDBStorage:
    """Open an RDB storage. A server database has no file to lock, so when several workers
    create its schema at the same moment the losers fail on a duplicate table: they retry,
    and then find the schema the winner created."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            return RDBStorage(url, engine_kwargs=engine,
                              heartbeat_interval=int(hpo.get("heartbeat_interval", 10)),
                              grace_period=int(hpo.get("grace_period", 30)),
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(
                                  max_retry=int(hpo.get("max_retry", 2))))
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many types for a bad URL
            error = exc
            if "IntegrityError" not in type(exc).__name__ and "already exists" not in str(exc):
                break
            time.sleep(0.5 + attempt)
    safe = redact_text(url)
    raise BenchError(f"cannot open the Optuna storage {safe!r} ({type(error).__name__}: "
                     f"{str(error).splitlines()[0][:150]}); check hpo.storage")


def open_study(name: str, storage: RDBStorage, seed: int, pruner: optuna.pruners.BasePruner,
               attrs: Mapping[str, Any], directions: list[str] | None = None,
               worker_id: int = 0, sampler: str = "tpe",
               startup: int | None = None) -> optuna.Study:
    """Create or load a study. The sampler's seed moves on with the trials already stored, so a
    resumed (or second) worker does not replay the first worker's random start."""
    existing = 0
    try:
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        pass
    sampler = make_sampler(sampler, seed + 7919 * worker_id + existing, startup)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                load_if_exists=True,
                                directions=directions or ["maximize"])
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    return study


def run_trials(study: optuna.Study, objective: Callable[[Trial], Any], n_trials: int,
               timeout: float | None = None, poll: float = 1.0) -> None:
    """Run trials until ``n_trials`` are finished (complete or pruned), sharing with any workers.

    When every remaining slot is held by another worker's running trial, wait for it: either it
    finishes, or its heartbeat goes stale, it is failed and re-queued, and someone runs it.
    """
    deadline = None if timeout is None else time.monotonic() + float(timeout)

    def guarded(trial: Trial) -> Any:
        before = [t for t in study.get_trials(deepcopy=False, states=LIVE) if t.number < trial.number]
        if len(before) >= n_trials:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"n_trials={n_trials} already taken by other workers")
        return objective(trial)

    while True:
        fail_stale_trials(study)  # no-op without heartbeats
        trials = study.get_trials(deepcopy=False)
        finished = sum(t.state in FINISHED for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if finished >= n_trials or (deadline is not None and time.monotonic() > deadline):
            return
        if finished + running >= n_trials and not waiting:
            time.sleep(poll)
            continue
        study.optimize(guarded, n_trials=1, catch=(SurplusTrial,), gc_after_trial=False)


def summary(study: optuna.Study) -> dict[str, Any]:
    """Counts, best value and the pruning ledger of a finished single-objective cell study.

    ``epochs_unpruned_estimate`` counts each pruned trial at the median epochs of the completed
    trials (which ran until early stopping), or at its own epochs if that is larger: an estimate
    of what the same trials would have cost without pruning.
    """
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    def epochs(t: FrozenTrial) -> int:  # a pruned trial reported its last epoch (0-based step)
        if "epochs" in t.user_attrs:
            return int(t.user_attrs["epochs"])
        return max(t.intermediate_values) + 1 if t.intermediate_values else 0

    typical = statistics.median(epochs(t) for t in complete) if complete else 0
    run = sum(epochs(t) for t in complete + pruned)
    unpruned = sum(epochs(t) for t in complete) + sum(max(epochs(t), typical) for t in pruned)
    best: FrozenTrial | None = study.best_trial if complete else None
    return {
        "study_name": study.study_name, "n_trials": len(complete) + len(pruned),
        "n_complete": len(complete), "n_pruned": len(pruned),
        "n_failed": sum(t.state == TrialState.FAIL and not t.user_attrs.get("surplus")
                        for t in trials),
        "best_value": None if best is None else best.value,
        "best_trial": None if best is None else best.number,
        "best_params": {} if best is None else dict(best.user_attrs.get("params", best.params)),
        "epochs_run": run, "epochs_unpruned_estimate": unpruned,
        "seconds": round(sum((t.duration.total_seconds() if t.duration else 0.0)
                             for t in complete + pruned), 3),
    }


class PruneAfterWarmup(PyTorchLightningPruningCallback):
    """optuna-integration's Lightning pruning callback, silent before the pruner's warm-up.

    Before epoch ``first_epoch`` the pruner always answers "go on", yet asking (a report and a
    read of every trial) costs ~15 ms an epoch on SQLite: a sixth of a small cell's epoch. One
    consequence: the median pruner judges a trial by its best score *since the warm-up* (it
    never saw the earlier ones), which is the score early stopping can still act on.
    """

    def __init__(self, trial: optuna.Trial, monitor: str, first_epoch: int = 0) -> None:
        super().__init__(trial, monitor=monitor)
        self.first_epoch = first_epoch

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch >= self.first_epoch:
            super().on_validation_end(trainer, pl_module)


class FoldReporter:
    """A trial's score on each fold as it finishes, for a pruner that compares trials fold by
    fold (``wilcoxon``): pruned only when the folds so far say the setting is worse."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial

    def __call__(self, fold: int, score: float) -> None:
        self.trial.report(score, fold)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"worse than the best trial on folds 1..{fold + 1} "
                                     "(signed-rank test)")
