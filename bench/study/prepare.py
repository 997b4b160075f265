"""Preparation, once per process: data and fixed splits, vocabulary, vectors, the source model.

Inductive by default: the vocabulary, a word2vec corpus drawn from the study's data and so the
cached source model are built from the training pools only (source pool, target pool). Test and
validation texts are read to be scored, nothing else; ``protocol.transductive=true`` is the
explicit, recorded opt-out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from bench import config as config_mod
from bench import manifest as manifest_mod
from bench.cache import cache_root
from bench.data.inspect import inspect_data
from bench.data.sources import LabelledTexts, load_dataset
from bench.data.task import Task, make_task, split
from bench.data.text import Vocab
from bench.data.embeddings import Vectors, coverage, embedding_matrix, load_vectors
from bench.errors import BenchError
from bench.models import Backbone, is_transformer, textcnn_backbone, transformer_backbone
from bench.training.pretrain import SourceModel, pretrain_source
from bench.training.protocol import Protocol
from bench.training.strategies import Strategy


@dataclass
class Source:
    """One source task and the network(s) trained on it (one per source seed)."""

    task: Task
    models: dict[int, SourceModel]


@dataclass
class Prepared:
    """Everything a cell needs, loaded once per process and shared by all cells."""

    vocab: Vocab | None  # the TextCNN's word vocabulary (a transformer brings its own)
    target: Task
    vectors: Vectors | None
    matrix: torch.Tensor | None
    coverage: dict[str, float]
    protocol: Protocol
    backbone: Backbone
    sources: dict[str, Source]  # by name: one, or several with ``data.sources``

    def make_model(self, model_cfg: Any, classes: int | None = None) -> torch.nn.Module:
        """A fresh random network with a head for the target's classes (or ``classes``)."""
        return self.backbone.build(model_cfg, self.target.num_classes if classes is None
                                   else classes)

    @property
    def multi_source(self) -> bool:
        return len(self.sources) > 1

    @property
    def source(self) -> Task:
        """The source task of a one-source study (the first of several)."""
        return next(iter(self.sources.values())).task

    @property
    def source_models(self) -> dict[int, SourceModel]:
        """The first source's models by source seed: one, or one per ``source.seeds``."""
        return next(iter(self.sources.values())).models

    @property
    def source_model(self) -> SourceModel | None:
        """The source model of a one-source study (the first of several)."""
        return next(iter(self.source_models.values()), None)


def training_texts(data: LabelledTexts, pool: np.ndarray, protocol: Protocol) -> list[str]:
    """The texts preparation may learn from: the training pool, or all under transductive."""
    return list(data.texts) if protocol.transductive else [data.texts[i] for i in pool]


def prepare(cfg: DictConfig, strategies: list[Strategy], sizes: list[int | str],
            console: Console | None = None,
            train_sources: Collection[str] | None = None) -> Prepared:
    """Load data, vectors and the source model once; every size is checked before any training.

    Vectors and source models are built only for what ``strategies`` transfer, and source models
    only for the sources in ``train_sources`` (None: every source). The vocabulary always covers
    every source's pool and the target's, so a subset changes no number, only what is trained
    (``reproduce`` rebuilds what its chosen records use, nothing more).
    """
    cache = cache_root(cfg.paths.cache)
    protocol = Protocol.from_config(OmegaConf.to_container(cfg.protocol, resolve=True)
                                    if "protocol" in cfg else None)
    source_cfgs = config_mod.source_configs(cfg)
    source_data = {name: load_dataset(c, cache) for name, c in source_cfgs.items()}
    target_data = load_dataset(OmegaConf.to_container(cfg.data.target, resolve=True), cache)
    seed = int(cfg.data.split_seed)
    source_splits = {name: split(source_data[name], c, seed) for name, c in source_cfgs.items()}
    target_splits = split(target_data, cfg.data.target, seed)
    shown: set[str] = set()
    for name, c in source_cfgs.items():
        checked = inspect_data(source_data[name], target_data, target_splits=target_splits,
                               target_max_len=int(cfg.data.target.max_len),
                               source_splits=source_splits[name],
                               source_max_len=int(c["max_len"]), sizes=sizes,
                               folds=max(protocol.folds, 1))
        checked.raise_for_errors()  # data that cannot support the study: one line, no training
        for warning in checked.warnings:
            if console and warning not in shown:  # the target's own, once for all sources
                shown.add(warning)
                console.print(f"data warning: {warning}")
    texts_by_source = {name: training_texts(source_data[name], source_splits[name].pool,
                                            protocol) for name in source_cfgs}
    source_texts = [t for texts in texts_by_source.values() for t in texts]
    target_texts = training_texts(target_data, target_splits.pool, protocol)
    vocab = None
    if is_transformer(cfg.model):
        backbone = transformer_backbone(cfg.model, cache)
    else:
        # Every word the training pools use: words seen only in test texts map to <unk>.
        vocab = Vocab.build([*texts_by_source.values(), target_texts])
        backbone = textcnn_backbone(vocab)
    tasks = {name: make_task(source_data[name], c, backbone, source_splits[name], cache)
             for name, c in source_cfgs.items()}
    target = make_task(target_data, cfg.data.target, backbone, target_splits, cache)
    for size in sizes:
        protocol.check_size(resolve_size(size, target), f"data.sizes has {size}")

    transfers = {s.transfer for s in strategies}
    vectors = matrix = None
    cover: dict[str, float] = {}
    if backbone.kind == "transformer":
        pass  # the encoder embeds its own subwords: no word vectors
    elif transfers & {"vectors", "network"} and cfg.embeddings.kind != "none":
        corpora = {"source": lambda: source_texts, "target": lambda: target_texts,
                   "newsgroups": lambda: _newsgroups_train(cache)}
        vectors = load_vectors(OmegaConf.to_container(cfg.embeddings, resolve=True), cache, corpora)
        if vectors.dim != cfg.model.embedding_dim:
            raise BenchError(f"the word vectors have dimension {vectors.dim} but "
                             f"model.embedding_dim={cfg.model.embedding_dim}; set "
                             f"model.embedding_dim={vectors.dim}")
        matrix = embedding_matrix(vectors, vocab, int(cfg.source.seed))
        cover = {"source": coverage(vectors, source_texts),
                 "target": coverage(vectors, target_texts)}
    elif "vectors" in transfers:
        raise BenchError("a selected strategy transfers word vectors but embeddings=none")

    sources = {name: Source(task, {}) for name, task in tasks.items()}
    seeds = config_mod.source_seeds(cfg) or [int(cfg.source.seed)]
    if "network" in transfers and backbone.kind == "transformer" \
            and not cfg.model.get("intermediate"):
        # No source step: "transferred" is the pretrained encoder itself (seed-free).
        hub = SourceModel(backbone.pretrained(), {}, f"hub-{backbone.identity}", 0.0, True)
        for side in sources.values():
            side.models = {k: hub for k in seeds}
    elif "network" in transfers:
        settings = OmegaConf.to_container(cfg.source, resolve=True)
        settings.pop("seeds", None)  # each model's own seed is its "seed"; keys stay as before
        for name, side in sources.items():
            if train_sources is not None and name not in train_sources:
                continue
            task = side.task
            if console:
                console.print(f"source model on {name} ({len(task.splits.pool)} training "
                              "texts): trained once, then cached")

            def make_source_model(task: Task = task) -> torch.nn.Module:
                # The TextCNN starts from the word vectors, a transformer from its hub weights
                # (STILTs); both with a fresh head for the source classes.
                return backbone.start(backbone.build(cfg.model, task.num_classes), matrix)

            key_parts = {"data": source_cfgs[name], "split_seed": seed,
                         "vocab": vocab.digest if vocab else backbone.identity,
                         "vectors": vectors.identity if vectors else None,
                         "model": OmegaConf.to_container(cfg.model, resolve=True)}
            for source_seed in seeds:
                side.models[source_seed] = pretrain_source(
                    task, make_source_model, key_parts, {**settings, "seed": source_seed},
                    trainer_kwargs(cfg), cache, str(cfg.model.get("optimizer", "adam")))
    return Prepared(vocab, target, vectors, matrix, cover, protocol, backbone, sources)


def _newsgroups_train(cache: Path) -> Sequence[str]:
    """20 Newsgroups' official training split: an external unlabelled corpus for word2vec."""
    data = load_dataset({"name": "newsgroups"}, cache)
    return [t for t, s in zip(data.texts, data.split) if s == "train"]


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


def data_provenance(prep: Prepared, cfg: DictConfig) -> dict[str, Any]:
    """Archives (pinned package and its SHA-256) and the SHA-256 of every file read."""
    from bench.data.sources import REGISTRY

    def entry(task: Task, name: str) -> dict[str, Any]:
        pkg = REGISTRY[name][0] if name in REGISTRY else None
        return {"name": task.data.name, "examples": len(task.data),
                "archive": None if pkg is None else {"package": pkg.spec, "file": pkg.filename,
                                                     "sha256": pkg.sha256},
                "files_sha256": manifest_mod.file_checksums(task.data.files)}

    out: dict[str, Any] = {"target": entry(prep.target, cfg.data.target.name)}
    if prep.multi_source:
        configs = config_mod.source_configs(cfg)
        out["sources"] = {name: entry(side.task, configs[name]["name"])
                          for name, side in prep.sources.items()}
    else:
        out = {"source": entry(prep.source, cfg.data.source.name), **out}
    if prep.vectors is not None:
        out["vectors"] = {"description": prep.vectors.description,
                          "identity": prep.vectors.identity}
        if cfg.embeddings.kind == "file":
            out["vectors"]["files_sha256"] = manifest_mod.file_checksums(
                {Path(cfg.embeddings.path).name: str(Path(cfg.embeddings.path).expanduser())})
    return out
