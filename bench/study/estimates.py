"""A study's transferability estimates: each source network's features and source-class
probabilities on exactly the labels each replicate's cells train on, scored by the pure
estimators of :mod:`bench.analysis.transferability`, one line each in ``transferability.jsonl``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console

from bench.analysis.transferability import estimate
from bench.config import source_seeds
from bench.data.splits import training_subset
from bench.folder import ESTIMATES, append_record, estimate_key, load_records
from bench.models.transformer import frozen_features
from bench.study.prepare import Prepared, resolve_size


def source_outputs(prep: Prepared, model_cfg: Any, name: str, seed_model: Any,
                   rows: np.ndarray) -> tuple[Any, Any]:
    """Frozen features of the target texts ``rows`` under one source network, and its head's
    class probabilities over the source classes (None without a source head: hub weights)."""
    side = prep.sources[name]
    model = prep.make_model(model_cfg, side.task.num_classes)
    # a trained source model has its head; hub weights have none (the head stays random)
    model.load_state_dict(seed_model.state_dict, strict=bool(seed_model.metrics))
    features = frozen_features(model, prep.target.ids[torch.as_tensor(rows)])
    probs = None
    if seed_model.metrics:  # trained on the source task: its head is the source classifier
        model.eval()
        with torch.no_grad():
            probs = torch.softmax(model.head(features), dim=1).numpy()
    return features.numpy(), probs


def record_estimates(prep: Prepared, cfg: DictConfig, sizes: list, out: Path,
                     console: Console | None) -> int:
    """Estimates for every (source, source seed, size, seed) not yet in ``transferability.jsonl``,
    each on exactly the n labels that replicate's cells train on. Returns how many were added."""
    names = list(cfg.get("transferability") or [])
    if not names or not any(s.models for s in prep.sources.values()):
        return 0
    path = out / ESTIMATES
    done = {estimate_key(r) for r in load_records(path, key=estimate_key)}
    seeds_axis = source_seeds(cfg)
    target, added = prep.target, 0
    for name, side in prep.sources.items():
        for source_seed, model in side.models.items():
            recorded_seed = source_seed if seeds_axis else None
            todo = [(size, seed) for size in sizes for seed in cfg.seeds
                    if (name, recorded_seed, str(size), int(seed)) not in done]
            if not todo:
                continue
            subsets = {(size, seed): training_subset(target.data.labels, target.splits.pool,
                                                     resolve_size(size, target), int(seed))
                       for size, seed in todo}
            rows = np.unique(np.concatenate(list(subsets.values())))  # only texts a cell uses
            start = time.perf_counter()
            features, probs = source_outputs(prep, cfg.model, name, model, rows)
            extract = time.perf_counter() - start
            for (size, seed), idx in subsets.items():
                n, at = len(idx), np.searchsorted(rows, idx)
                values = estimate(features[at], target.data.labels[idx],
                                  None if probs is None else probs[at], names, int(seed))
                append_record(path, {"source": name, "source_seed": recorded_seed,
                                     "size": size, "n_train": n, "seed": int(seed),
                                     "source_key": model.key, "estimates": values,
                                     "features_seconds": round(extract, 3)}, estimate_key)
                added += 1
    if added and console:
        console.print(f"transferability: {added} estimates written to {path}")
    return added
