"""The study loop: load everything once; for each (strategy, size) cell and replicate seed,
choose the setting inside the protocol (tuned or not), fit it, test it once, append a record.

Preparation lives in :mod:`bench.study.prepare`, the methods a cell runs in :mod:`bench.study.methods`,
the study folder's rules in :mod:`bench.study.claim`, the record schema in :mod:`bench.folder`.

Records are keyed by (strategy, size, seed) and carry the cell's identity hash; running the same
command again skips what is recorded and continues each Optuna study, so an interrupted study
resumes where it stopped, and several workers can share one study. A strategy whose definition
changed under the same name is refused (``study.json`` keeps every definition it ran).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import config as config_mod
from bench import manifest as manifest_mod
from bench import search_space
from bench.study import claim as studydir
from bench.study import tune as tune_mod
from bench.cache import file_lock, stable_hash
from bench.errors import BenchError
from bench.training.fit import Diverged, quiet_lightning
from bench.study.methods import (BaselineMethod, MajorityMethod, Method, NeuralMethod, Selection,
                           with_params)
from bench.study.prepare import data_provenance, prepare, resolve_size
from bench.folder import (DEFAULTS, RECORDS, Key, append_record, encode_labels, load_records,
                          record_key)
from bench.study.records import make_record


def publish_report(out: Path, console: Console, plots: bool = True) -> None:
    """The study's report (``transfer-bench report``'s tables and figures) from every record so
    far, its table printed. Why here: the table a sweep ends with should be the one with the
    intervals and tests, not a second, weaker summary. A report problem costs only the report."""
    from bench.analysis import publish

    try:
        # Parallel launcher jobs of one study each end here: one report at a time, or one
        # job's figures read the tables another job is rewriting.
        with file_lock(out / "report.lock"):
            folder, _, notes = publish.publish(out, plots=plots)
    except BenchError as exc:
        console.print(f"warning: no report ({exc}); the records are kept: run transfer-bench "
                      f"report {out}")
        return
    if not plots:
        notes.append(f"no figures (plots=false): transfer-bench report {out} draws them")
    for note in notes:
        console.print(f"note: {note}")
    print((folder / "table.md").read_text(), end="")
    console.print(f"report written to {folder} (what each file holds: docs/results.md)")


def tune(method: Method, cfg: DictConfig, size: int | str, n: int, seed: int, storage: Any,
         study_dir: Path, tuning: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tune one replicate of one cell inside the protocol; returns (best params, summary).

    Tuning is per replicate: under the budget protocol the replicate's n labels are all it may
    use, so another replicate's (or a shared tuning subset's) labels must not choose its
    setting. Tuning replicate ``tuning`` > 0 is another independent tuning of the same
    replicate (its own Optuna study and sampler seed): the spread between them is the tuning
    variance. The summary carries the chosen training length (``rounds``) and the fit flags.
    """
    hpo = cfg.hpo
    cell = config_mod.cell_hash(cfg, method.name)
    # Axes a one-source, one-tuning study lacks stay out of the name and the sampler seed, so
    # such studies keep the names (and sampled settings) they always had.
    replicate = replicate_path(method, size, seed, tuning)
    extra = replicate.split("/")[3:]  # source=<k>, tuning=<t>
    name = f"{cfg.study}/{cell}/{replicate}"
    attrs = {"config_hash": config_mod.study_hash(cfg), "cell_hash": cell,
             "strategy": method.name, "size": str(size), "n_train": n, "seed": seed,
             "source_seed": method.source_seed, "tuning": tuning,
             "protocol": cfg.protocol.name, "target": cfg.data.target.name,
             "source": cfg.data.source.name, "vectors": cfg.embeddings.kind,
             "metric": "held-out accuracy"}
    pruner = search_space.make_pruner(OmegaConf.to_container(hpo.pruner, resolve=True) if method.prunes
                                  else None)
    warmup = int(OmegaConf.select(cfg, "hpo.pruner.n_warmup_steps", default=0) or 0)
    # Each (cell, size, replicate) gets its own sampler seed: cells must not all try the same
    # first settings (issue: identical start-up trials across strategies).
    sampler_seed = int(stable_hash([int(hpo.seed), cell, str(size), seed, *extra], 8), 16) % 2**31
    startup = search_space.startup_trials(OmegaConf.select(cfg, "hpo.startup_trials",
                                                           default=None), int(hpo.n_trials))
    study = tune_mod.open_study(name, storage, sampler_seed, pruner, attrs,
                                worker_id=int(hpo.worker_id),
                                sampler=str(OmegaConf.select(cfg, "hpo.sampler", default="tpe")),
                                startup=startup)
    # fed each fold's score: a pruner made for it, or any pruner where fits run whole lengths
    # (no round-by-round validation to report)
    by_fold = method.prunes and (
        str(OmegaConf.select(cfg, "hpo.pruner.name", default="none")) in search_space.FOLD_PRUNERS
        or (isinstance(method, NeuralMethod) and method.counts_steps(with_params(cfg, method.defaults))))

    if start_at_default(cfg) and not study.get_trials(deepcopy=False):
        # the untuned setting first: what tuning finds is then never worse on the selection
        # score than hpo=none (skip_if_exists: a second worker does not queue it again)
        study.enqueue_trial(default_setting(method, cfg), user_attrs={"default": True},
                            skip_if_exists=True)

    def objective(trial: optuna.Trial) -> float:
        params = search_space.suggest(trial, method.space)
        trial.set_user_attr("params", params)
        callbacks = [tune_mod.PruneAfterWarmup(trial, "val_acc", warmup)] \
            if method.prunes and not by_fold else []
        try:
            chosen = method.select(params, n, seed, first_callbacks=callbacks,
                                   on_fold=tune_mod.FoldReporter(trial) if by_fold else None)
        except Diverged as exc:  # pruned, so the sampler learns to avoid the region
            trial.set_user_attr("pruned_reason", f"diverged: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        if chosen.grown:  # the length the selection grew to is part of the setting
            trial.set_user_attr("params", {**params, **chosen.grown})
        trial.set_user_attr("selection", _selection_attrs(chosen))
        trial.set_user_attr("epochs", chosen.epochs)
        return chosen.score

    tune_mod.run_trials(study, objective, int(hpo.n_trials), hpo.timeout)
    info = tune_mod.summary(study)
    if info["best_value"] is None:
        raise BenchError(f"no trial of {name} finished; see the study in {study_dir}")
    info.update(study.best_trial.user_attrs.get("selection", {}))
    first = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
             if t.user_attrs.get("default")]
    if first:  # the untuned setting's own selection: its final fit is the `default` record
        info["default"] = {"trial": first[0].number, "value": first[0].value,
                           "params": dict(first[0].user_attrs.get("params", {})),
                           **first[0].user_attrs.get("selection", {})}
    return info["best_params"], info


def default_fit(cfg: DictConfig) -> bool:
    return start_at_default(cfg) and bool(OmegaConf.select(cfg, "hpo.default_fit", default=False))


def record_default(method: Method, cfg: DictConfig, size: int | str, n: int, seed: int,
                   tuning: int, info: dict[str, Any], tuned: dict[str, Any], out: Path,
                   run_id: str, labels: dict[str, int], console: Console) -> None:
    """The replicate's final fit at its untuned setting, beside the tuned one (``defaults.jsonl``):
    the report pairs the two per seed to show what tuning bought. The untuned setting went
    through the same selection (the first trial), so its training length is its own. When
    tuning kept the default, the tuned fit is that fit (same setting, seed and length)."""
    path = out / DEFAULTS
    if record_key(tuned) in _recorded(path):
        return
    default = info["default"]
    if default["trial"] == info.get("best_trial"):
        record = {**tuned, "params": default["params"], "default_is_best": True}
    else:
        summary = {"n_trials": 0, **{k: default.get(k) for k in (
            "rounds", "at_cap", "majority", "fold_scores")}, "best_value": default["value"]}
        try:
            fit = method.final(default["params"], n, seed, default.get("rounds"))
        except Diverged as exc:
            console.print(f"warning: {method.name} n={size} seed={seed} at its default setting "
                          f"diverged ({exc}); no default record")
            return
        record = {**make_record(cfg, method, size, n, seed, fit, default["params"], summary,
                                run_id, labels, tuning), "default_is_best": False}
    append_record(path, record)


def finish_default(method: Method, cfg: DictConfig, size: int | str, n: int, seed: int,
                   tuning: int, records_path: Path, out: Path, run_id: str,
                   labels: dict[str, int], console: Console) -> None:
    """The default record of an already tuned replicate, from what its record kept of the
    first trial (setting, length): no tuning is repeated."""
    wanted = (method.name, str(size), seed, method.source_seed, tuning)
    tuned = next((r for r in load_records(records_path) if record_key(r) == wanted), None)
    info = (tuned or {}).get("hpo") or {}
    if tuned is None or not info.get("default"):
        return  # record_default skips a replicate whose default is recorded
    record_default(method, cfg, size, n, seed, tuning, info, tuned, out, run_id, labels, console)


def start_at_default(cfg: DictConfig) -> bool:
    return bool(OmegaConf.select(cfg, "hpo.start_at_default", default=False))


def default_setting(method: Method, cfg: DictConfig) -> dict[str, Any]:
    """``{parameter name: value}`` of the method's untuned setting in its search space (the
    baseline's own keys, e.g. ``C``, live in ``baseline.*``)."""
    if isinstance(method, BaselineMethod):
        return search_space.default_trial(method.space, OmegaConf.create(method.settings))
    return search_space.default_trial(method.space, with_params(cfg, method.defaults))


def _selection_attrs(chosen: Selection) -> dict[str, Any]:
    return {"rounds": chosen.rounds, "at_cap": chosen.at_cap, "majority": chosen.majority,
            "fold_scores": [round(v, 6) for v in chosen.fold_scores],
            **({"profile": chosen.profile} if chosen.profile is not None else {})}


def replicate_path(method: Method, size: int | str, seed: int, tuning: int = 0) -> str:
    """``<strategy>/n=<size>/seed=<seed>[/source=<k>][/tuning=<t>]``: a replicate's name in
    Optuna study names and log folders; axes a study does not vary are left out."""
    return "/".join([method.name, f"n={size}", f"seed={seed}",
                     *([f"source={method.source_seed}"] if method.source_seed is not None else []),
                     *([f"tuning={tuning}"] if tuning else [])])


def tunings(method: Method, cfg: DictConfig) -> range:
    """The tuning replicates a method runs: ``hpo.replicates`` when it is tuned, else one."""
    tuned = int(cfg.hpo.n_trials) > 0 and method.selects and not getattr(method, "grid", None)
    return range(config_mod.tuning_replicates(cfg) if tuned else 1)


def choose(method: Method, cfg: DictConfig, size: int | str, n: int, seed: int, storage: Any,
           study_dir: Path, tuning: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """The setting and training length of one replicate: tuned, or the fixed ``train.*``
    values with only the length chosen inside the protocol (``hpo.n_trials=0``)."""
    if not method.selects:
        return {}, {"n_trials": 0}
    if getattr(method, "grid", None):
        return method.select_on_grid(n, seed)
    if int(cfg.hpo.n_trials) > 0:
        return tune(method, cfg, size, n, seed, storage, study_dir, tuning)
    if method.prep.protocol.uses_validation_split:  # the final fit early-stops on it anyway
        return {}, {"n_trials": 0}
    chosen = method.select({}, n, seed)
    return dict(chosen.grown), {"best_value": chosen.score, "n_trials": 0,
                                "seconds": round(chosen.seconds, 3), **_selection_attrs(chosen)}


def _recorded(path: Path) -> set[Key]:
    return {record_key(r) for r in load_records(path)}


def task_overrides() -> list[str] | None:
    """The command-line overrides of this Hydra run (None when composed without Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def multirun_study_name(study: str, swept: list[str], overrides: list[str]) -> str:
    """A multirun job's own study folder (``sweep -m train.lr=1e-3,3e-3``: one study per LR,
    ``<study>/train.lr=0.001``): the job's values of the swept keys that change results, like
    Hydra's ``override_dirname``. Jobs that differ only in grid keys (strategies, sizes, seeds,
    where results go) or in the experiment share or name their study as before."""
    own = []
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        grid = key in config_mod.GRID_KEYS or key.startswith(("paths.", "hydra."))
        if key in swept and not grid and key not in ("experiment", "study"):
            own.append(override.lstrip("+~"))
    if not own:
        return study
    name = ",".join(sorted(own))
    return f"{study}/{''.join(c if c.isalnum() or c in '._=,+-' else '_' for c in name)}"


def run_study(cfg: DictConfig, console: Console | None = None,
              overrides: list[str] | None = None) -> Path:
    """Check, prepare, run the missing cells, write records and the table; return the study dir."""
    console = console or Console(stderr=True)
    started = manifest_mod.now()
    quiet_lightning()
    config_mod.check(cfg)
    config_mod.check_schedule_length(cfg)
    strategies = config_mod.strategies(cfg)
    sizes = config_mod.sizes(cfg)
    out = Path(cfg.paths.results) / str(cfg.study)
    studydir.claim(out, cfg)
    studydir.check_location(out)  # before minutes of preparation, without creating anything
    prep = prepare(cfg, strategies, sizes, console)
    first_source = next(iter(prep.sources)) if prep.multi_source else None
    for strategy in strategies:  # adapters on module names the model lacks: say so before
        if strategy.lora:        # anything is written, not at the first fit (the fits' build)
            NeuralMethod(prep, cfg, strategy, None, first_source)._build(strategy, cfg)
    studydir.make_writable(out)
    tuning = int(cfg.hpo.n_trials) > 0
    storage = tune_mod.open_storage(OmegaConf.to_container(cfg.hpo, resolve=True), out) \
        if tuning or cfg.hpo.mode == "pareto" else None
    study_info = {
            "study": cfg.study, "study_hash": config_mod.study_hash(cfg),
            "config": config_mod.study_identity(cfg), "protocol": prep.protocol.describe(),
            "source_model": None if prep.source_model is None else {
                "key": prep.source_model.key, "metrics": prep.source_model.metrics,
                "train_seconds": prep.source_model.train_seconds},
            "vectors": None if prep.vectors is None else {
                "description": prep.vectors.description, "identity": prep.vectors.identity,
                "coverage": prep.coverage},
            "source_models": {str(k): {"key": m.key, "metrics": m.metrics}
                              for k, m in prep.source_models.items()}
            if config_mod.source_seeds(cfg) else None,
            "vocab_size": len(prep.vocab) if prep.vocab else None,
            **({"sources": {name: {str(k): {"key": m.key, "metrics": m.metrics}
                                   for k, m in side.models.items()}
                            for name, side in prep.sources.items()}}
               if prep.multi_source else {}),
            "test_labels": encode_labels(prep.target.data.labels[prep.target.splits.test])}
    studydir.remember(out, cfg, study_info)

    run_id = manifest_mod.new_run_id()
    run_info = {**manifest_mod.run_entry(), "started": started,
                "overrides": overrides if overrides is not None else task_overrides(),
                "config": OmegaConf.to_container(cfg, resolve=True)}
    shared = {"study": cfg.study, "study_hash": config_mod.study_hash(cfg),
              "config": config_mod.study_identity(cfg), "data": data_provenance(prep, cfg),
              "seeds": {"replicates": list(cfg.seeds), "split": int(cfg.data.split_seed),
                        "source": config_mod.source_seeds(cfg) or int(cfg.source.seed),
                        "hpo": int(cfg.hpo.get("seed", 0)),
                        "tuning_replicates": config_mod.tuning_replicates(cfg)}}
    manifest_mod.update(out, shared, run_id, run_info)
    records_path = out / RECORDS
    done = _recorded(records_path)
    many = config_mod.source_seeds(cfg)
    names = list(prep.sources) if prep.multi_source else [None]
    methods: list[Method] = [NeuralMethod(prep, cfg, s, k, name) for s in strategies
                             for name in (names if s.transfer == "network" else [None])
                             for k in (many if many and s.transfer == "network" else [None])]
    if cfg.baseline.name != "none":
        methods.append(BaselineMethod(prep, cfg))
    methods.append(MajorityMethod(prep, cfg))
    for name, side in prep.sources.items():
        for k, source_model in side.models.items():
            m = source_model.metrics
            if not m:  # a transformer's hub weights, no source step
                console.print(f"transferred network: the pretrained weights ({source_model.key})")
                break
            state = "from cache" if source_model.from_cache else \
                f"trained in {source_model.train_seconds:.0f} s"
            console.print(f"source model {source_model.key} ({name}, seed {k}, {state}): "
                          f"val acc {m['val_acc']:.3f}, test acc {m['test_acc']:.3f}")
    if int(OmegaConf.select(cfg, "hpo.worker_id", default=0) or 0) == 0:
        from bench.study.estimates import record_estimates

        record_estimates(prep, cfg, sizes, out, console)  # seconds, before any fine-tuning
    if cfg.hpo.mode == "pareto":
        from bench.study.pareto import run_pareto

        run_pareto([m for m in methods if m.selects], cfg, prep, storage, out, console)
        return out
    def key(m: Method, size: int | str, seed: int, t: int) -> Key:
        return (m.name, str(size), int(seed), m.source_seed, t)

    # The baselines first, every size (seconds in all): a study stopped early still has its
    # floor and its classical reference; then the neural cells size by size.
    cheap = [m for m in methods if isinstance(m, (BaselineMethod, MajorityMethod))]
    cells = [(m, size) for m in cheap for size in sizes] + \
        [(m, size) for size in sizes for m in methods if m not in cheap]
    # a tuned neural replicate also owes its default's fit (hpo.default_fit)
    owed = _recorded(out / DEFAULTS) if default_fit(cfg) and tuning else None

    def missing(m: Method, size: int | str, seed: int, t: int) -> bool:
        k = key(m, size, seed, t)
        return k not in done or (owed is not None and isinstance(m, NeuralMethod)
                                 and k not in owed)

    todo = [(m, size) for m, size in cells
            if any(missing(m, size, seed, t) for seed in cfg.seeds for t in tunings(m, cfg))]
    # Workers sharing the study start at their own share of the list, so they seldom run the
    # same cell at once (one that is recorded meanwhile is skipped); tuned cells would share
    # trials anyway, untuned ones would otherwise all run the same fits.
    worker = int(OmegaConf.select(cfg, "hpo.worker_id", default=0) or 0)
    count = int(OmegaConf.select(cfg, "hpo.worker_count", default=1) or 1)
    offset = (worker * len(todo) // count) % max(len(todo), 1)
    todo = todo[offset:] + todo[:offset]
    console.print(f"{cfg.study}: {len(cells)} cells x {len(cfg.seeds)} seeds, "
                  f"{len(cells) - len(todo)} cells already complete; protocol "
                  f"{prep.protocol.describe()}"
                  + (f"; tuning {cfg.hpo.n_trials} trials per cell and seed" if tuning else ""))
    start = time.perf_counter()
    n_val = len(prep.target.splits.val)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not cfg.progress) as bar:
        task = bar.add_task("cells", total=len(todo))
        for method, size in todo:
            n = resolve_size(size, prep.target)
            for seed, t in ((s, t) for s in cfg.seeds for t in tunings(method, cfg)):
                if key(method, size, seed, t) in done | _recorded(records_path):
                    if default_fit(cfg):  # a run stopped between a tuned fit and its default's
                        finish_default(method, cfg, size, n, int(seed), t, records_path, out,
                                       run_id, prep.protocol.labels_used(n, n_val), console)
                    continue  # recorded before this run, or meanwhile by another worker
                where = "".join(f" {axis}" for axis in
                                replicate_path(method, size, seed, t).split("/")[3:])
                bar.update(task, description=f"{method.name:>12} n={size} seed={seed}{where}")
                try:
                    params, info = choose(method, cfg, size, n, int(seed), storage, out, t)
                    fit = method.final(params, n, int(seed), info.get("rounds"),
                                       log_as=replicate_path(method, size, seed, t))
                except Diverged as exc:
                    console.print(f"warning: {method.name} n={size} seed={seed}{where} diverged "
                                  f"({exc}); no record written")
                    continue
                if fit.diverged:
                    console.print(f"warning: {method.name} n={size} seed={seed}{where}: {fit.diverged}; "
                                  "evaluated from its best checkpoint before that")
                record = make_record(cfg, method, size, n, int(seed), fit, params, info,
                                     run_id, prep.protocol.labels_used(n, n_val), t)
                append_record(records_path, record)
                if default_fit(cfg) and info.get("default"):
                    record_default(method, cfg, size, n, int(seed), t, info, record, out,
                                   run_id, prep.protocol.labels_used(n, n_val), console)
            bar.advance(task)
    manifest_mod.update(out, shared, run_id, {"finished": manifest_mod.now(),
                                              "cells_run": len(todo)})
    console.print(f"{len(todo)} cells in {time.perf_counter() - start:.0f} s; records in {records_path}")
    if int(cfg.hpo.worker_count) > 1:
        return out  # one of several workers: the process that started them writes the report
    publish_report(out, console, plots=bool(cfg.get("plots", True)))
    return out
