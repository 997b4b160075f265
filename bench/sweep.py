"""A study: load everything once, then train and test every (strategy, size, seed) cell.

Records are keyed by (strategy, size, seed); running the same command again skips the cells
already recorded, so an interrupted study resumes where it stopped.
"""

from __future__ import annotations

import json
import os
import platform
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

from bench import config as config_mod
from bench.cache import atomic_write_text, cache_root
from bench.data.sources import load_dataset
from bench.data.splits import training_subset
from bench.data.task import Task, make_task
from bench.data.text import Vocab
from bench.embeddings import Vectors, coverage, embedding_matrix, load_vectors
from bench.errors import BenchError
from bench.lit import TextClassifier, fit_and_test, quiet_lightning
from bench.pretrain import SourceModel, pretrain_source
from bench.results import RECORDS, append_record, load_records, markdown_table, record_key
from bench.strategies import FreezeBlocks, Strategy, build_model

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
    make_model: Callable[[], torch.nn.Module]


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

    def make_model() -> torch.nn.Module:
        return instantiate(cfg.model, vocab_size=len(vocab), num_classes=target.num_classes,
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


def run_cell(prep: Prepared, cfg: DictConfig, strategy: Strategy, size: int | str,
             seed: int) -> dict[str, Any]:
    """Train one strategy on one seeded training subset; evaluate once on test."""
    target = prep.target
    n = resolve_size(size, target)
    subset = training_subset(target.data.labels, target.splits.pool, n, seed)
    L.seed_everything(seed, workers=True, verbose=False)
    model = build_model(strategy, prep.make_model, prep.matrix,
                        prep.source_model.state_dict if prep.source_model else None)
    module = TextClassifier(model, target.num_classes, float(cfg.train.lr),
                            float(cfg.train.weight_decay), strategy.lr_mult)
    blocks = model.blocks
    frozen = [b for b in blocks if b not in strategy.trainable_blocks(blocks)]
    bs = int(cfg.train.batch_size)
    result = fit_and_test(module, target.loader(subset, bs, True, seed),
                          target.loader(target.splits.val, 500), target.loader(target.splits.test, 500),
                          trainer_kwargs(cfg), int(cfg.train.max_epochs), int(cfg.train.patience),
                          int(cfg.train.min_epochs), callbacks=[FreezeBlocks(frozen)])
    return {
        "study": cfg.study, "strategy": strategy.name, "size": size, "n_train": n, "seed": seed,
        "metrics": {k: round(v, 6) for k, v in result.metrics.items()},
        "epochs": result.epochs, "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 3), "lr": float(cfg.train.lr),
        "strategy_spec": {"transfer": strategy.transfer, "trainable": strategy.trainable_blocks(blocks),
                          "lr_mult": dict(strategy.lr_mult)},
        "source": None if prep.source_model is None or strategy.transfer != "network" else {
            "key": prep.source_model.key, **prep.source_model.metrics},
        "vectors": None if prep.vectors is None or strategy.transfer == "none" else {
            "description": prep.vectors.description, "coverage": prep.coverage},
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


def _writable_dir(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise BenchError(f"cannot write to the results directory {out} ({exc.strerror}); "
                         "set paths.results to a writable folder") from None


def run_study(cfg: DictConfig, console: Console | None = None) -> Path:
    """Check, prepare, run the missing cells, write records and the table; return the study dir."""
    console = console or Console(stderr=True)
    quiet_lightning()
    config_mod.check(cfg)
    strategies = config_mod.strategies(cfg)
    sizes = config_mod.sizes(cfg)
    out = Path(cfg.paths.results) / str(cfg.study)
    _claim_study_dir(out, cfg)
    prep = prepare(cfg, strategies, sizes, console)
    _writable_dir(out)
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

    records_path = out / RECORDS
    done = {record_key(r) for r in load_records(records_path)}
    cells = [(s, size, seed) for size in sizes for s in strategies for seed in cfg.seeds]
    todo = [c for c in cells if (c[0].name, str(c[1]), int(c[2])) not in done]
    if prep.source_model is not None:
        m = prep.source_model.metrics
        state = "from cache" if prep.source_model.from_cache else \
            f"trained in {prep.source_model.train_seconds:.0f} s"
        console.print(f"source model {prep.source_model.key} ({state}): "
                      f"val acc {m['val_acc']:.3f}, test acc {m['test_acc']:.3f}")
    console.print(f"{cfg.study}: {len(cells)} cells, {len(cells) - len(todo)} already recorded")
    start = time.perf_counter()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, disable=not cfg.progress) as bar:
        task = bar.add_task("cells", total=len(todo))
        for strategy, size, seed in todo:
            bar.update(task, description=f"{strategy.name:>8} n={size} seed={seed}")
            append_record(records_path, run_cell(prep, cfg, strategy, size, seed))
            bar.advance(task)
    records = load_records(records_path)
    order = [s.name for s in strategies]
    table = markdown_table(records, "test_acc", order)
    title = (f"# {cfg.study}: test accuracy, mean ± std (seeds)\n\n"
             f"target {prep.target.data.name}, source {prep.source.data.name}\n\n")
    atomic_write_text(out / TABLE_FILE, title + table + "\n")
    console.print(f"{len(todo)} cells in {time.perf_counter() - start:.0f} s; records in {records_path}")
    print(table)
    return out
