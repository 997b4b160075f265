"""A study: load everything once; tune each (strategy, size) cell; retrain and test every seed.

Records are keyed by (strategy, size, seed); running the same command again skips what is
recorded and continues each cell's Optuna study, so an interrupted study resumes where it
stopped, and several workers can share one study.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import lightning.pytorch as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import optuna

from bench import baseline
from bench import config as config_mod
from bench import manifest as manifest_mod
from bench import tune as tune_mod
from bench.cache import atomic_write_text, cache_root
from bench.data.sources import load_dataset
from bench.data.splits import training_subset
from bench.data.task import Task, make_task
from bench.data.text import Vocab
from bench.embeddings import Vectors, coverage, embedding_matrix, load_vectors
from bench.errors import BenchError
from bench.lit import EVAL_BATCH, Diverged, TextClassifier, fit_and_test, quiet_lightning
from bench.models.textcnn import TextCNN
from bench.pretrain import SourceModel, pretrain_source
from bench.results import RECORDS, append_record, load_records, markdown_table, record_key
from bench.strategies import L2SP, FreezeBlocks, Strategy, build_model, freeze_callback

STUDY_FILE = "study.json"
TABLE_FILE = "table.md"


@dataclass
class Prepared:
    """Everything a cell needs, loaded once per process and shared by all cells."""

    vocab: Vocab
    source: Task
    target: Task
    vectors: Vectors | None
    matrix: torch.Tensor | None
    coverage: dict[str, float]
    source_model: SourceModel | None
    make_model: Callable[[Any], torch.nn.Module]  # model config -> a fresh target model


def prepare(cfg: DictConfig, strategies: list[Strategy], sizes: list[int | str],
            console: Console | None = None) -> Prepared:
    """Load data, vectors and the source model once; every size is checked before any training."""
    cache = cache_root(cfg.paths.cache)
    source_data = load_dataset(OmegaConf.to_container(cfg.data.source, resolve=True), cache)
    target_data = load_dataset(OmegaConf.to_container(cfg.data.target, resolve=True), cache)
    # The vocabulary is every word the data uses: equivalent to a full-vocabulary model for
    # pretrained vectors, at a fraction of the memory and time.
    vocab = Vocab.build([source_data.texts, target_data.texts])
    seed = int(cfg.data.split_seed)
    source = make_task(source_data, cfg.data.source, vocab, seed, cache)
    target = make_task(target_data, cfg.data.target, vocab, seed, cache)
    for size in sizes:
        resolve_size(size, target)

    def make_model(model_cfg: Any) -> torch.nn.Module:
        return instantiate(model_cfg, vocab_size=len(vocab), num_classes=target.num_classes,
                           _convert_="all")

    transfers = {s.transfer for s in strategies}
    vectors = matrix = None
    cover: dict[str, float] = {}
    if transfers & {"vectors", "network"} and cfg.embeddings.kind != "none":
        corpora = {"source": lambda: source_data.texts, "target": lambda: target_data.texts,
                   "newsgroups": lambda: load_dataset({"name": "newsgroups"}, cache).texts}
        vectors = load_vectors(OmegaConf.to_container(cfg.embeddings, resolve=True), cache, corpora)
        if vectors.dim != cfg.model.embedding_dim:
            raise BenchError(f"the word vectors have dimension {vectors.dim} but "
                             f"model.embedding_dim={cfg.model.embedding_dim}; set "
                             f"model.embedding_dim={vectors.dim}")
        matrix = embedding_matrix(vectors, vocab, int(cfg.source.seed))
        cover = {"source": coverage(vectors, source_data.texts),
                 "target": coverage(vectors, target_data.texts)}
    elif "vectors" in transfers:
        raise BenchError("a selected strategy transfers word vectors but embeddings=none")

    source_model = None
    if "network" in transfers:
        if console:
            console.print(f"source model on {source_data.name} ({len(source.splits.pool)} "
                          "training texts): trained once, then cached")

        def make_source_model() -> torch.nn.Module:
            return instantiate(cfg.model, vocab_size=len(vocab), num_classes=source.num_classes,
                               _convert_="all")

        key_parts = {"data": OmegaConf.to_container(cfg.data.source, resolve=True),
                     "split_seed": seed, "vocab": vocab.digest,
                     "vectors": vectors.identity if vectors else None,
                     "model": OmegaConf.to_container(cfg.model, resolve=True)}
        source_model = pretrain_source(source, make_source_model, matrix, key_parts,
                                       OmegaConf.to_container(cfg.source, resolve=True),
                                       trainer_kwargs(cfg), cache)
    return Prepared(vocab, source, target, vectors, matrix, cover, source_model, make_model)


def trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.trainer, resolve=True)


def resolve_size(size: int | str, target: Task) -> int:
    pool = len(target.splits.pool)
    if size == "all":
        return pool
    if int(size) > pool:
        raise BenchError(f"data.sizes has {size}, larger than the training pool of "
                         f"{target.data.name} ({pool} examples); use at most {pool} or 'all'")
    return int(size)


def with_params(cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with tuned values set at their config paths."""
    cell = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for path, value in params.items():
        OmegaConf.update(cell, path, value, merge=False)
    return cell


@dataclass
class Fit:
    metrics: dict[str, float]
    epochs: int | None
    best_epoch: int | None
    seconds: float
    diverged: str | None = None


class NeuralMethod:
    """A transfer strategy applied to the TextCNN."""

    def __init__(self, prep: Prepared, cfg: DictConfig, strategy: Strategy) -> None:
        self.prep, self.cfg, self.strategy, self.name = prep, cfg, strategy, strategy.name
        self.space = {**(OmegaConf.to_container(cfg.hpo.space) if "space" in cfg.hpo else {}),
                      **dict(strategy.space)}  # a strategy may tune its own keys too
        self.prunes = True

    def fit(self, params: dict[str, Any], n: int, seed: int, test: bool,
            callbacks: list[Any] = ()) -> Fit:
        prep = self.prep
        cell = with_params(self.cfg, params)
        # Rebuilt from the cell's config: tuning may set strategy keys (lr_decay, l2sp.alpha...).
        strategy = Strategy.from_config(
            self.name, OmegaConf.to_container(cell.strategy[self.name], resolve=True) or {},
            TextCNN.blocks)
        target = prep.target
        subset = training_subset(target.data.labels, target.splits.pool, n, seed)
        L.seed_everything(seed, workers=True, verbose=False)
        model = build_model(strategy, lambda: prep.make_model(cell.model), prep.matrix,
                            prep.source_model.state_dict if prep.source_model else None)
        blocks, lr, bs = model.blocks, float(cell.train.lr), int(cell.train.batch_size)
        train, val = target.loader(subset, bs, True, seed), target.loader(target.splits.val,
                                                                          EVAL_BATCH)
        run = dict(trainer_cfg=trainer_kwargs(cell), max_epochs=int(cell.train.max_epochs),
                   patience=int(cell.train.patience), min_epochs=int(cell.train.min_epochs))
        penalty = (L2SP(model, strategy.l2sp["alpha"], strategy.l2sp["beta"])
                   if strategy.l2sp else None)
        schedule = config_mod.schedule_spec(cell)
        epochs = 0
        if strategy.lp_ft:  # phase 1, linear probing: the head alone until validation stalls
            probe = TextClassifier(model, target.num_classes, lr, float(cell.train.weight_decay),
                                   strategy, penalty, schedule)
            head_only = FreezeBlocks([b for b in blocks if b != "head"])
            first = fit_and_test(probe, train, val, val, callbacks=[head_only], **run)
            model.load_state_dict(first.state_dict)  # phase 2 starts from the best head
            epochs, lr = first.epochs, lr * float(strategy.lp_ft["ft_lr_mult"])
        module = TextClassifier(model, target.num_classes, lr, float(cell.train.weight_decay),
                                strategy, penalty, schedule)
        result = fit_and_test(module, train, val,
                              target.loader(target.splits.test, EVAL_BATCH) if test else None,
                              callbacks=[freeze_callback(strategy, blocks, lr), *callbacks], **run)
        return Fit(result.metrics, epochs + result.epochs, epochs + result.best_epoch,
                   result.seconds, result.diverged)

    def describe(self) -> dict[str, Any]:
        prep, blocks = self.prep, TextCNN.blocks
        return {
            "strategy_spec": {"transfer": self.strategy.transfer,
                              "trainable": self.strategy.trainable_blocks(blocks),
                              "lr_mult": dict(self.strategy.lr_mult),
                              **{k: getattr(self.strategy, k) for k in (
                                  "lr_decay", "unfreeze_every", "lp_ft", "l2sp")
                                 if getattr(self.strategy, k) not in (None, 1.0)}},
            "source": None if prep.source_model is None or self.strategy.transfer != "network"
            else {"key": prep.source_model.key, **prep.source_model.metrics},
            "vectors": None if prep.vectors is None or self.strategy.transfer == "none" else {
                "description": prep.vectors.description, "coverage": prep.coverage},
        }


class BaselineMethod:
    """TF-IDF + logistic regression on the same subsets (see :mod:`bench.baseline`)."""

    name = baseline.NAME
    prunes = False

    def __init__(self, prep: Prepared, cfg: DictConfig) -> None:
        self.prep = prep
        self.settings = OmegaConf.to_container(cfg.baseline, resolve=True)
        self.space = self.settings.get("space", {})

    def fit(self, params: dict[str, Any], n: int, seed: int, test: bool,
            callbacks: list[Any] = ()) -> Fit:
        target = self.prep.target
        subset = training_subset(target.data.labels, target.splits.pool, n, seed)
        metrics, seconds = baseline.fit_and_score(
            target.data.texts, target.data.labels, subset, target.splits.val,
            target.splits.test if test else None, float(params.get("C", self.settings["C"])),
            self.settings, seed)
        return Fit(metrics, None, None, seconds)

    def describe(self) -> dict[str, Any]:
        return {"strategy_spec": {"baseline": self.settings["name"],
                                  "ngram_max": self.settings["ngram_max"]},
                "source": None, "vectors": None}


Method = NeuralMethod | BaselineMethod


def tune(method: Method, cfg: DictConfig, size: int | str, n: int, storage: Any,
         study_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tune one cell on the validation split; returns (best params, tuning summary)."""
    hpo = cfg.hpo
    name = f"{cfg.study}/{method.name}/n={size}"
    attrs = {"config_hash": config_mod.study_hash(cfg), "strategy": method.name, "size": str(size),
             "n_train": n, "target": cfg.data.target.name, "source": cfg.data.source.name,
             "vectors": cfg.embeddings.kind, "metric": "val_acc"}
    pruner = tune_mod.make_pruner(OmegaConf.to_container(hpo.pruner, resolve=True) if method.prunes
                                  else None)
    warmup = int(OmegaConf.select(cfg, "hpo.pruner.n_warmup_steps", default=0) or 0)
    study = tune_mod.open_study(name, storage, int(hpo.seed), pruner, attrs,
                                worker_id=int(hpo.worker_id))

    def objective(trial: optuna.Trial) -> float:
        params = tune_mod.suggest(trial, method.space)
        trial.set_user_attr("params", params)
        callbacks = [tune_mod.PruneAfterWarmup(trial, "val_acc", warmup)] if method.prunes else []
        try:
            fit = method.fit(params, n, int(hpo.seed), test=False, callbacks=callbacks)
        except Diverged as exc:  # pruned, so the sampler learns to avoid the region
            trial.set_user_attr("pruned_reason", f"diverged: {exc}")
            raise optuna.TrialPruned(str(exc)) from None
        if fit.epochs is not None:
            trial.set_user_attr("epochs", fit.epochs)
        return fit.metrics["val_acc"]

    tune_mod.run_trials(study, objective, int(hpo.n_trials), hpo.timeout)
    info = tune_mod.summary(study)
    if info["best_value"] is None:
        raise BenchError(f"no trial of {name} finished; see the study in {study_dir}")
    return info["best_params"], info


def record(cfg: DictConfig, method: Method, size: int | str, n: int, seed: int, fit: Fit,
           params: dict[str, Any], hpo_info: dict[str, Any] | None, run_id: str) -> dict[str, Any]:
    return {
        "study": cfg.study, "study_hash": config_mod.study_hash(cfg),  # config: study.json
        "run_id": run_id,  # this run's entry in manifest.json
        "strategy": method.name, "size": size, "n_train": n, "seed": seed,
        "metrics": {k: round(v, 6) for k, v in fit.metrics.items()},
        "epochs": fit.epochs, "best_epoch": fit.best_epoch, "seconds": round(fit.seconds, 3),
        "diverged": fit.diverged,
        "params": params, "hpo": hpo_info, **method.describe(),
        "device": _device_name(cfg),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _device_name(cfg: DictConfig) -> str:
    if cfg.trainer.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def _claim_study_dir(out: Path, cfg: DictConfig) -> None:
    """Refuse to mix records of a different configuration into an existing study directory."""
    identity = config_mod.study_hash(cfg)
    info = out / STUDY_FILE
    if info.exists():
        try:
            existing = json.loads(info.read_text())["study_hash"]
        except (json.JSONDecodeError, KeyError):
            existing = None
        if existing != identity:
            raise BenchError(f"{out} holds a study with a different configuration; choose another "
                             f"name with study=NAME (or move the old one away)")


def _recorded(path: Path) -> set[tuple[str, str, int]]:
    return {record_key(r) for r in load_records(path)}


def _check_results_location(out: Path) -> None:
    """Fail fast if the study folder could not be created or written, leaving no trace."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    hint = "set paths.results to a writable folder"
    if not existing.is_dir():
        raise BenchError(f"cannot create the results directory {out}: {existing} is a file, "
                         f"not a folder; {hint}")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".transfer-bench-probe-").cleanup()
    except OSError as exc:
        raise BenchError(f"cannot write to the results directory {out} ({exc.strerror} in "
                         f"{existing}); {hint}") from None


def _writable_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"cannot write to the results directory {out} ({exc.strerror}); "
                         "set paths.results to a writable folder") from None


def data_provenance(prep: Prepared, cfg: DictConfig) -> dict[str, Any]:
    """Archives (pinned package and its SHA-256) and the SHA-256 of every file read."""
    from bench.data.sources import REGISTRY

    out: dict[str, Any] = {}
    for role, task in (("source", prep.source), ("target", prep.target)):
        name = cfg.data[role].name
        pkg = REGISTRY[name][0] if name in REGISTRY else None
        out[role] = {"name": task.data.name, "examples": len(task.data),
                     "archive": None if pkg is None else {"package": pkg.spec, "file": pkg.filename,
                                                          "sha256": pkg.sha256},
                     "files_sha256": manifest_mod.file_checksums(task.data.files)}
    if prep.vectors is not None:
        out["vectors"] = {"description": prep.vectors.description,
                          "identity": prep.vectors.identity}
        if cfg.embeddings.kind == "file":
            out["vectors"]["files_sha256"] = manifest_mod.file_checksums(
                {Path(cfg.embeddings.path).name: str(Path(cfg.embeddings.path).expanduser())})
    return out


def _overrides() -> list[str] | None:
    """The command-line overrides of this Hydra run (None when composed without Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def run_study(cfg: DictConfig, console: Console | None = None,
              overrides: list[str] | None = None) -> Path:
    """Check, prepare, run the missing cells, write records and the table; return the study dir."""
    console = console or Console(stderr=True)
    started = manifest_mod.now()
    quiet_lightning()
    config_mod.check(cfg)
    strategies = config_mod.strategies(cfg)
    sizes = config_mod.sizes(cfg)
    out = Path(cfg.paths.results) / str(cfg.study)
    _claim_study_dir(out, cfg)
    _check_results_location(out)  # before minutes of preparation, without creating anything
    prep = prepare(cfg, strategies, sizes, console)
    _writable_dir(out)
    tuning = int(cfg.hpo.n_trials) > 0
    storage = tune_mod.open_storage(OmegaConf.to_container(cfg.hpo, resolve=True), out) \
        if tuning or cfg.hpo.mode == "pareto" else None
    if not (out / STUDY_FILE).exists():
        info = {"study": cfg.study, "study_hash": config_mod.study_hash(cfg),
                "config": config_mod.study_identity(cfg),
                "source_model": None if prep.source_model is None else {
                    "key": prep.source_model.key, "metrics": prep.source_model.metrics,
                    "train_seconds": prep.source_model.train_seconds},
                "vectors": None if prep.vectors is None else {
                    "description": prep.vectors.description, "identity": prep.vectors.identity,
                    "coverage": prep.coverage},
                "vocab_size": len(prep.vocab)}
        atomic_write_text(out / STUDY_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")

    run_id = manifest_mod.new_run_id()
    run_info = {**manifest_mod.run_entry(), "started": started,
                "overrides": overrides if overrides is not None else _overrides(),
                "config": OmegaConf.to_container(cfg, resolve=True)}
    shared = {"study": cfg.study, "study_hash": config_mod.study_hash(cfg),
              "config": config_mod.study_identity(cfg), "data": data_provenance(prep, cfg),
              "seeds": {"replicates": list(cfg.seeds), "split": int(cfg.data.split_seed),
                        "source": int(cfg.source.seed), "hpo": int(cfg.hpo.get("seed", 0))}}
    manifest_mod.update(out, shared, run_id, run_info)
    records_path = out / RECORDS
    done = _recorded(records_path)
    methods: list[Method] = [NeuralMethod(prep, cfg, s) for s in strategies]
    if cfg.baseline.name != "none":
        methods.append(BaselineMethod(prep, cfg))
    if prep.source_model is not None:
        m = prep.source_model.metrics
        state = "from cache" if prep.source_model.from_cache else \
            f"trained in {prep.source_model.train_seconds:.0f} s"
        console.print(f"source model {prep.source_model.key} ({state}): "
                      f"val acc {m['val_acc']:.3f}, test acc {m['test_acc']:.3f}")
    if cfg.hpo.mode == "pareto":
        from bench.pareto import run_pareto

        run_pareto(methods, cfg, prep, storage, out, console)
        return out
    cells = [(m, size) for size in sizes for m in methods]
    todo = [(m, size) for m, size in cells
            if any((m.name, str(size), int(seed)) not in done for seed in cfg.seeds)]
    console.print(f"{cfg.study}: {len(cells)} cells x {len(cfg.seeds)} seeds, "
                  f"{len(cells) - len(todo)} cells already complete"
                  + (f"; tuning {cfg.hpo.n_trials} trials per cell" if tuning else ""))
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not cfg.progress) as bar:
        task = bar.add_task("cells", total=len(todo))
        for method, size in todo:
            n = resolve_size(size, prep.target)
            bar.update(task, description=f"{method.name:>12} n={size}")
            params, info = tune(method, cfg, size, n, storage, out) if tuning else ({}, None)
            for seed in cfg.seeds:
                if (method.name, str(size), int(seed)) in done | _recorded(records_path):
                    continue  # recorded before this run, or meanwhile by another worker
                bar.update(task, description=f"{method.name:>12} n={size} seed={seed}")
                try:
                    fit = method.fit(params, n, int(seed), test=True)
                except Diverged as exc:
                    console.print(f"warning: {method.name} n={size} seed={seed} diverged before "
                                  f"its first validation ({exc}); no record written")
                    continue
                if fit.diverged:
                    console.print(f"warning: {method.name} n={size} seed={seed}: {fit.diverged}; "
                                  "evaluated from its best checkpoint before that")
                append_record(records_path, record(cfg, method, size, n, int(seed), fit, params, info,
                                                   run_id))
            bar.advance(task)
    records = load_records(records_path)
    order = [m.name for m in methods]
    table = markdown_table(records, "test_acc", order)
    title = (f"# {cfg.study}: test accuracy, mean ± std (seeds)\n\n"
             f"target {prep.target.data.name}, source {prep.source.data.name}\n\n")
    atomic_write_text(out / TABLE_FILE, title + table + "\n")
    manifest_mod.update(out, shared, run_id, {"finished": manifest_mod.now(),
                                              "cells_run": len(todo)})
    console.print(f"{len(todo)} cells in {time.perf_counter() - start:.0f} s; records in {records_path}")
    print(table)
    return out
