"""Methods a cell can run, behind one small interface: score a setting, then fit it for real.

``select(params, n, seed)`` scores a setting inside the protocol (k-fold CV inside the n
labels, or the fixed validation split) and says how many rounds training should last;
``final(params, n, seed, rounds)`` trains on the n labels and evaluates once on test. A neural
method is a transfer strategy applied to the study's backbone (TextCNN or transformer) with one
source model (a study with several source models has one method per strategy and source
seed); the baselines are TF-IDF +
logistic regression on the same subsets and folds, and the majority class of the n labels.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from sklearn.metrics import f1_score

from bench.training import baseline
from bench import config as config_mod
from bench.data.splits import training_subset
from bench.data.batching import steps_at
from bench.training.fit import EVAL_BATCH, TextClassifier, fit_and_test, loader, passes_per_round
from bench.models.transformer import (DepthCached, PrefixCached, Probe, folder_config,
                                      frozen_features, prefix_states)
from bench.study.prepare import Prepared, trainer_kwargs
from bench.training.schedule import is_constant, warmup_steps
from bench.training.strategies import L2SP, FreezeBlocks, Strategy, build_model, freeze_callback


def with_params(cfg: DictConfig, params: dict[str, Any]) -> DictConfig:
    """A copy of ``cfg`` with tuned values set at their config paths."""
    cell = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    for path, value in params.items():
        OmegaConf.update(cell, path, value, merge=False)
    return cell


def _memory_bytes() -> int:
    """Physical memory (Linux, macOS); where unknown, as if 8 GiB."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _round_cache_bytes(prep: Prepared) -> int:
    """Gradual unfreezing's cache at its largest: float32 states (and the mask) of every
    target text at every depth below the top layer."""
    ids = prep.target.ids
    hidden = int(folder_config(str(prep.backbone.folder)).get("hidden_size") or 0)
    return len(ids) * ids.shape[1] * (hidden + 1) * 4 * (len(prep.backbone.blocks) - 1)


@dataclass
class Fit:
    metrics: dict[str, float]
    epochs: int | None             # rounds run, all phases
    best_epoch: int | None
    seconds: float
    diverged: str | None = None
    rounds: list[int] | None = None  # best round per phase (LP-FT has two phases)
    at_cap: bool = False
    test_predictions: np.ndarray | None = None
    steps: int | None = None       # optimizer steps, all phases (neural fits)
    trainable: int | None = None   # weights that trained
    memory: dict[str, Any] | None = None  # peak over all phases (hardware.PeakMemory.record)
    # per phase, where its LR schedule went: {steps, warmup_steps, lr_end_frac}
    schedule: list[dict[str, Any]] | None = None
    state: dict[str, torch.Tensor] | None = None  # LP-FT's probe stage alone: its weights


def _peak_of(first: dict[str, Any] | None, last: dict[str, Any] | None) -> dict[str, Any] | None:
    """A two-phase fit's memory: the higher peak, from the first phase's start."""
    if first is None or last is None:
        return last if first is None else None
    return {**last, "peak_mib": max(first["peak_mib"], last["peak_mib"]),
            "start_mib": first["start_mib"]}


@dataclass
class Selection:
    """A setting's score inside the protocol, and the training length it chose."""

    score: float                      # mean held-out accuracy over the selection splits
    rounds: list[int] | None          # median best round per phase over the splits
    at_cap: bool                      # some split ended at max rounds still improving
    majority: float                   # majority-class rate of the held-out labels
    fold_scores: list[float] = field(default_factory=list)
    epochs: int = 0
    seconds: float = 0.0
    grown: dict[str, Any] = field(default_factory=dict)  # config paths the selection lengthened
    # train.lengths: per phase, each candidate length's mean held-out accuracy (and loss)
    profile: list[dict[str, list[float]]] | None = None
    steps: int = 0                    # optimizer steps the selection ran, all fits


def majority_rate(labels: np.ndarray) -> float:
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else float("nan")


class _Method:
    """What every method shares: the cell's subset and the protocol's splits of it."""

    name: str
    prep: Prepared
    source_seed: int | None = None  # recorded when the study has several source models
    selects = True                  # False: nothing to choose (no setting, no training length)
    defaults: dict[str, Any] = {}   # its own untuned setting at config paths (a strategy's train)

    def subset(self, n: int, seed: int) -> np.ndarray:
        target = self.prep.target
        return training_subset(target.data.labels, target.splits.pool, n, seed)

    def select(self, params: dict[str, Any], n: int, seed: int,
               first_callbacks: Sequence[Any] = (), on_fold: Any = None) -> Selection:
        """Score ``params`` on the protocol's selection splits; ``first_callbacks`` (the
        pruner's) watch the first split only, so every trial is judged on the same data.
        ``on_fold(i, score)``: told each split's score as it finishes (a pruner that judges
        on the folds so far); methods that choose no length ignore it."""
        target = self.prep.target
        splits = self.prep.protocol.selection_splits(target.data.labels, self.subset(n, seed),
                                                     target.splits.val, seed)
        fits = [self._fit(params, train, held_out, seed, test=False,
                          callbacks=first_callbacks if i == 0 else ())
                for i, (train, held_out) in enumerate(splits)]
        rounds = None
        if fits[0].rounds is not None:
            rounds = [int(round(statistics.median(f.rounds[p] for f in fits)))
                      for p in range(len(fits[0].rounds))]
        held = np.concatenate([h for _, h in splits])
        scores = [f.metrics["val_acc"] for f in fits]
        return Selection(float(np.mean(scores)), rounds, any(f.at_cap for f in fits),
                         majority_rate(target.data.labels[held]), scores,
                         sum(f.epochs or 0 for f in fits), sum(f.seconds for f in fits))

    def final(self, params: dict[str, Any], n: int, seed: int,
              rounds: list[int] | None = None, log_as: str | None = None) -> Fit:
        """Train on the n labels (length from ``rounds`` or the fixed validation split); test.
        ``log_as``: the replicate's path under ``<study>/logs`` when ``logger`` is not none."""
        target = self.prep.target
        val = self.prep.protocol.final_validation(target.splits.val)
        return self._fit(params, self.subset(n, seed), val, seed, test=True,
                         rounds=None if val is not None else rounds, log_as=log_as)

    def _fit(self, params: dict[str, Any], train: np.ndarray, val: np.ndarray | None,
             seed: int, test: bool, rounds: list[int] | None = None,
             callbacks: Sequence[Any] = (), log_as: str | None = None) -> Fit:
        raise NotImplementedError


def fit_logger(cfg: DictConfig, log_as: str | None) -> Any:
    """Lightning's CSV, TensorBoard or MLflow logger for one final fit, or False
    (``logger=none``). MLflow: one experiment per study, the replicate's identity as tags."""
    kind = OmegaConf.select(cfg, "logger.name", default="none")
    if log_as is None or kind == "none":
        return False
    from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger

    study_dir = Path(cfg.paths.results) / str(cfg.study)
    if kind == "mlflow":
        strategy, *axes = log_as.split("/")
        tags = {"study": str(cfg.study), "strategy": strategy,
                **dict(a.split("=", 1) for a in axes)}
        tags["size"] = tags.pop("n")
        uri = OmegaConf.select(cfg, "logger.tracking_uri", default=None) or \
            f"sqlite:///{(study_dir / 'mlflow.db').resolve()}"
        return MLFlowLogger(experiment_name=str(cfg.study), run_name=log_as, tracking_uri=uri,
                            tags=tags, artifact_location=(study_dir / "mlruns").resolve().as_uri())
    root = study_dir / "logs"
    return (CSVLogger if kind == "csv" else TensorBoardLogger)(str(root), name=log_as)


class NeuralMethod(_Method):
    """A transfer strategy applied to the study's backbone.

    On a transformer, a strategy that trains the head alone on a body that never changes
    (``frozen``) runs the body once per text (:meth:`features`) and trains the head on those
    cached features: the same model and the same arithmetic, seconds instead of minutes.
    LP-FT's first stage (the head alone on the transferred body) runs on the same cache, and
    a strategy whose bottom layers stay frozen while those above train (``partial``) runs them
    once per text too (:meth:`prefix`) and trains the layers above on their cached states.
    """

    def __init__(self, prep: Prepared, cfg: DictConfig, strategy: Strategy,
                 source_seed: int | None = None, source_name: str | None = None) -> None:
        self.prep, self.cfg, self.strategy, self.name = prep, cfg, strategy, strategy.name
        network = strategy.transfer == "network"
        self.source_seed = source_seed if network else None
        self.source_name = source_name if network else None
        if self.source_name is not None:  # a study with several sources: one row per source
            self.name = f"{strategy.name}{config_mod.SOURCE_MARK}{source_name}"
        models = prep.source_models if source_name is None else \
            prep.sources[source_name].models
        self.source = None if not network else (
            next(iter(models.values()), None) if source_seed is None else models[source_seed])
        from bench.search_space import entries

        self.space = {**(entries(OmegaConf.to_container(cfg.hpo.space)) if "space" in cfg.hpo
                         else {}),
                      **dict(strategy.space)}  # a strategy may tune its own keys too
        self.defaults = strategy.defaults
        self.prunes = True
        self.caches = prep.backbone.caches_features and strategy.probes_only
        self.caches_probe_stage = prep.backbone.caches_features and strategy.probe_stage_cacheable
        self._features: torch.Tensor | None = None
        self.caches_prefix = prep.backbone.caches_prefix and not self.caches
        # gradual unfreezing: each round's still-frozen blocks from a per-depth cache. Measured
        # on a CPU only (on a GPU each batch's lookup crosses the bus: it runs live there), and
        # only where every depth's states of every target text fit in an eighth of the memory
        self.caches_rounds = (self.caches_prefix and strategy.unfreezes_from_pretrained
                              and not torch.cuda.is_available()
                              and _round_cache_bytes(prep) <= _memory_bytes() / 8)
        self._prefix: dict[int, torch.Tensor] = {}

    def counts_steps(self, cell: DictConfig) -> bool:
        """A decaying schedule with ``train.lengths``: each fit runs exactly one candidate
        length, its schedule laid over that length (configs recorded before the key decay
        over the nominal rounds instead, and reproduce as they ran)."""
        return (not is_constant(config_mod.schedule_spec(cell))
                and OmegaConf.select(cell, "train.lengths", default=None) is not None)

    def ladders(self, cell: DictConfig) -> list[list[int]]:
        """The candidate lengths per phase, in optimizer steps of a fit on all n labels:
        ``train.lengths``; LP-FT's probe stage first, on ``train.probe_lengths`` (a probe's
        budget: a softmax layer on fixed features needs many cheap steps)."""
        ladder = [int(v) for v in cell.train.lengths]
        if self.strategy.lp_ft:
            probe = OmegaConf.select(cell, "train.probe_lengths", default=None) or ladder
            return [[int(v) for v in probe], ladder]
        return [ladder]

    def final(self, params: dict[str, Any], n: int, seed: int,
              rounds: list[int] | None = None, log_as: str | None = None) -> Fit:
        cell = with_params(self.cfg, {**self.defaults, **params})
        if not self.counts_steps(cell) or self.prep.protocol.final_validation(
                self.prep.target.splits.val) is not None:
            return super().final(params, n, seed, rounds, log_as)
        if not rounds:
            raise ValueError("a fit counted in steps needs its chosen lengths")
        return self._fit_steps(cell, self.subset(n, seed), None, seed, True, list(rounds), n,
                               log_as=log_as)

    def select(self, params: dict[str, Any], n: int, seed: int,
               first_callbacks: Sequence[Any] = (), on_fold: Any = None) -> Selection:
        cell = with_params(self.cfg, {**self.defaults, **params})
        if self.counts_steps(cell) and not self.prep.protocol.uses_validation_split:
            return self._select_length(cell, n, seed, on_fold, first_callbacks)
        return self._select_rounds(params, n, seed, first_callbacks)

    def _select_length(self, cell: DictConfig, n: int, seed: int, on_fold: Any,
                       first_callbacks: Sequence[Any] = ()) -> Selection:
        """Every candidate length on every split, each fit decaying over its own length; the
        length with the best mean held-out accuracy wins (ties: the lower mean held-out
        loss). LP-FT chooses its probe stage's length first, then fine-tunes every split
        from that split's probe. ``at_cap``: the longest candidate won (the ladder may be
        too short)."""
        target = self.prep.target
        splits = self.prep.protocol.selection_splits(target.data.labels, self.subset(n, seed),
                                                     target.splits.val, seed)
        ladders = self.ladders(cell)
        chosen: list[int] = []
        probes: list[Any] = [None] * len(splits)
        profile, epochs, steps, seconds = [], 0, 0, 0.0
        for phase, ladder in enumerate(ladders):
            last = phase == len(ladders) - 1
            acc = np.zeros((len(splits), len(ladder)))
            loss = np.zeros_like(acc)
            states: dict[tuple[int, int], Any] = {}
            for i, (train, held) in enumerate(splits):
                for j, length in enumerate(ladder):
                    fit = self._fit_steps(cell, train, held, seed, False, [*chosen, length], n,
                                          probe_only=not last, probe=probes[i],
                                          callbacks=first_callbacks if i == 0 and last else ())
                    acc[i, j], loss[i, j] = fit.metrics["val_acc"], fit.metrics["val_loss"]
                    epochs, steps, seconds = (epochs + (fit.epochs or 0), steps + (fit.steps or 0),
                                              seconds + fit.seconds)
                    if not last:
                        states[i, j] = fit.state
                if last and on_fold is not None:  # the split's score at its own best length
                    on_fold(i, float(acc[i].max()))
            mean_acc, mean_loss = acc.mean(axis=0), loss.mean(axis=0)
            best = max(range(len(ladder)), key=lambda j: (mean_acc[j], -mean_loss[j], -j))
            chosen.append(ladder[best])
            profile.append({"lengths": list(ladder), "acc": [round(float(v), 6) for v in mean_acc],
                            "loss": [round(float(v), 6) for v in mean_loss]})
            if not last:
                probes = [states[i, best] for i in range(len(splits))]
        held = np.concatenate([h for _, h in splits])
        return Selection(float(mean_acc[best]), chosen,
                         any(c == lad[-1] and len(lad) > 1 for c, lad in zip(chosen, ladders)),
                         majority_rate(target.data.labels[held]),
                         [float(v) for v in acc[:, best]], epochs, seconds, profile=profile,
                         steps=steps)

    def _select_rounds(self, params: dict[str, Any], n: int, seed: int,
                       first_callbacks: Sequence[Any] = ()) -> Selection:
        """Configs without ``train.lengths``: as every method's, plus room under a decaying LR
        schedule. There a fit cannot run on past its cap (the LR has decayed to about 0), so a
        selection that ends at its cap still improving is run again with twice the rounds,
        each round as long as before (``train.min_steps`` doubled too) and the schedule laid
        over all of them, while
        ``train.max_epochs + train.extend_epochs`` (the hard limit) allows. The grown length
        becomes part of the chosen setting (``grown``), so the final fit lays its schedule
        the same way. The reruns are not reported to the pruner; their cost is counted."""
        chosen = _Method.select(self, params, n, seed, first_callbacks)
        cell = with_params(self.cfg, {**self.defaults, **params})
        if is_constant(config_mod.schedule_spec(cell)):
            return chosen  # fit_and_test extends a constant-LR fit itself
        rounds, steps = int(cell.train.max_epochs), int(cell.train.min_steps)
        limit = rounds + int(cell.train.get("extend_epochs") or 0)
        epochs, seconds, grown = chosen.epochs, chosen.seconds, {}
        while chosen.at_cap and 2 * rounds <= limit:
            rounds, steps = 2 * rounds, 2 * steps
            grown = {"train.max_epochs": rounds, "train.min_steps": steps}
            chosen = _Method.select(self, {**params, **grown}, n, seed)
            epochs, seconds = epochs + chosen.epochs, seconds + chosen.seconds
        chosen.epochs, chosen.seconds, chosen.grown = epochs, seconds, grown
        return chosen

    def features(self) -> torch.Tensor:
        """The frozen body's features of every target text: computed once, in eval mode."""
        if self._features is None:
            model = self._build(self.strategy, self.cfg)
            self._features = frozen_features(model, self.prep.target.ids)
        return self._features

    def prefix(self, layers: int) -> torch.Tensor:
        """The states of every target text after the embeddings and the bottom ``layers``
        encoder layers (frozen, eval mode), with the token mask: computed once per depth."""
        if layers not in self._prefix:
            model = self._build(self.strategy, self.cfg)
            self._prefix[layers] = prefix_states(model, self.prep.target.ids, layers)
        return self._prefix[layers]

    def _prefix_mid_fit(self, layers: int) -> torch.Tensor:
        """:meth:`prefix` while a fit runs: building the body draws random numbers, so the
        fit's own stream (its dropout masks) is set aside and restored; and the states are
        computed in float32 outside the fit's autocast, as every other cache is."""
        if layers in self._prefix:
            return self._prefix[layers]
        with torch.random.fork_rng(devices=[]), torch.autocast("cpu", enabled=False):
            return self.prefix(layers)

    def _build(self, strategy: Strategy, cell: DictConfig) -> torch.nn.Module:
        prep = self.prep
        return build_model(strategy, lambda: prep.make_model(cell.model), prep.matrix,
                           self.source.state_dict if self.source else None,
                           lora_targets=list(cell.model.get("lora_targets") or ()))

    def _loaders(self, model: torch.nn.Module, train_idx: np.ndarray, val_idx: np.ndarray | None,
                 bs: int, seed: int, passes: int, test: bool,
                 frozen_layers: int = 0, rows: bool = False,
                 per_epoch: int | None = None) -> tuple[torch.nn.Module, Any, Any, Any]:
        """(model, train, validation, test loaders): over token ids, over cached features
        with the head alone as the model, over a frozen prefix's cached states with the
        layers above it as the model, or (``rows``: gradual unfreezing) over target rows that
        the model looks up in the cache of whatever is frozen in that round."""
        target = self.prep.target
        if self.caches or frozen_layers or rows:
            return self._feature_loaders(model, train_idx, val_idx, bs, seed, passes, test,
                                         frozen_layers, rows, per_epoch)
        return (model, target.loader(train_idx, bs, True, seed, passes, per_epoch),
                None if val_idx is None else target.loader(val_idx, EVAL_BATCH),
                target.loader(target.splits.test, EVAL_BATCH) if test else None)

    def _feature_loaders(self, model: torch.nn.Module, train_idx: np.ndarray,
                         val_idx: np.ndarray | None, bs: int, seed: int, passes: int,
                         test: bool, frozen_layers: int = 0, rows: bool = False,
                         per_epoch: int | None = None) -> tuple[torch.nn.Module, Any, Any, Any]:
        target = self.prep.target
        x = (torch.arange(len(target.ids)) if rows else
             self.prefix(frozen_layers) if frozen_layers else self.features())
        y = target.labels
        lengths = (target.ids != target.pad_id).sum(dim=1)

        def over(index: np.ndarray, shuffle: bool, size: int) -> Any:
            # batched by the texts' lengths: the very batches the live model would see
            idx = torch.as_tensor(index, dtype=torch.long)
            return loader(x[idx], y[idx], size, shuffle, seed, passes if shuffle else 1,
                          lengths=lengths[idx], per_epoch=per_epoch if shuffle else None)

        net = (DepthCached(model, target.ids, self._prefix_mid_fit) if rows else
               PrefixCached(model, frozen_layers) if frozen_layers else Probe(model.head))
        return (net,
                over(train_idx, True, bs),
                None if val_idx is None else over(val_idx, False, EVAL_BATCH),
                over(target.splits.test, False, EVAL_BATCH) if test else None)

    def _fit(self, params: dict[str, Any], train_idx: np.ndarray, val_idx: np.ndarray | None,
             seed: int, test: bool, rounds: list[int] | None = None,
             callbacks: Sequence[Any] = (), log_as: str | None = None) -> Fit:
        prep = self.prep
        cell = with_params(self.cfg, {**self.defaults, **params})
        # Rebuilt from the cell's config: tuning may set strategy keys (lr_decay, l2sp.alpha...).
        strategy = Strategy.from_config(
            self.strategy.name,
            OmegaConf.to_container(cell.strategy[self.strategy.name], resolve=True) or {},
            prep.backbone.blocks)
        target = prep.target
        frozen_layers = strategy.frozen_layers(prep.backbone.blocks) if self.caches_prefix else 0
        if self.caches or self.caches_probe_stage:  # before seeding: building the body for
            self.features()  # its features draws random numbers, shifting the dropout masks
        if frozen_layers:
            self.prefix(frozen_layers)  # the same, for a frozen prefix's states
        L.seed_everything(seed, workers=True, verbose=False)
        model = self._build(strategy, cell)
        lr, bs = float(cell.train.lr), int(cell.train.batch_size)
        max_rounds = int(cell.train.max_epochs)
        schedule = config_mod.schedule_spec(cell)
        # Extension only at a constant LR: a decaying schedule (linear warm-up and decay, the
        # slanted triangle) is laid over max_epochs and ends near 0, where more rounds cannot
        # help; stretching it instead would change the LR path of every fit, short ones too.
        extend = int(cell.train.get("extend_epochs") or 0) if is_constant(schedule) else 0
        passes = passes_per_round(len(train_idx), bs, max_rounds, int(cell.train.min_steps))
        rows = self.caches_rounds and strategy.unfreezes_from_pretrained
        model, train, val, test_loader = self._loaders(model, train_idx, val_idx, bs, seed,
                                                       passes, test, frozen_layers, rows)
        blocks = model.blocks
        optimizer = str(cell.model.get("optimizer", "adam"))
        run = dict(trainer_cfg=trainer_kwargs(cell), max_epochs=max_rounds,
                   patience=int(cell.train.patience), min_epochs=int(cell.train.min_epochs),
                   extend=extend)
        horizon = max_rounds  # a decaying LR schedule spans the nominal rounds
        phases = list(rounds) if rounds else None  # fixed lengths: no validation at all
        penalty = (L2SP(model, strategy.l2sp["alpha"], strategy.l2sp["beta"])
                   if strategy.l2sp else None)
        epochs, chosen, steps, first = 0, [], 0, None
        if strategy.lp_ft:  # phase 1, linear probing: the head alone
            stage = [model, train, val]
            if self.caches_probe_stage:  # the same fit on the body's cached features
                stage = list(self._feature_loaders(model, train_idx, val_idx, bs, seed, passes,
                                                   False)[:3])
            probe = TextClassifier(stage[0], target.num_classes, lr,
                                   float(cell.train.weight_decay), strategy, penalty, schedule,
                                   optimizer, horizon)
            head_only = FreezeBlocks([b for b in stage[0].blocks if b != "head"])
            first = fit_and_test(probe, stage[1], stage[2], stage[2], callbacks=[head_only],
                                 **{**run, **({"max_epochs": phases[0]} if phases else {})})
            stage[0].load_state_dict(first.state_dict)  # phase 2 starts from the best head
            epochs, lr = first.epochs, lr * float(strategy.lp_ft["ft_lr_mult"])
            steps = first.steps
            chosen.append(first.best_epoch)
            phases = phases[1:] if phases else None
        module = TextClassifier(model, target.num_classes, lr, float(cell.train.weight_decay),
                                strategy, penalty, schedule, optimizer, horizon)
        result = fit_and_test(module, train, val, test_loader,
                              callbacks=[freeze_callback(strategy, blocks, lr), *callbacks],
                              logger=fit_logger(self.cfg, log_as),
                              **{**run, **({"max_epochs": phases[0]} if phases else {})})
        chosen.append(result.best_epoch)
        return Fit(result.metrics, epochs + result.epochs, epochs + result.best_epoch,
                   result.seconds, result.diverged, chosen, result.at_cap,
                   result.test_predictions, steps + result.steps, result.trainable,
                   _peak_of(first.memory if first else None, result.memory))

    def _fit_steps(self, cell: DictConfig, train_idx: np.ndarray, val_idx: np.ndarray | None,
                   seed: int, test: bool, lengths: list[int], n_full: int,
                   probe_only: bool = False, probe: dict[str, torch.Tensor] | None = None,
                   log_as: str | None = None, callbacks: Sequence[Any] = ()) -> Fit:
        """A fit counted in optimizer steps: ``lengths`` (one per phase, in steps of a fit on
        ``n_full`` texts) become this fit's own steps at the same number of passes; each
        phase's schedule spans exactly its steps, warm-up included. LP-FT: ``probe_only``
        stops after the probe stage (its weights in ``state``); ``probe`` starts the
        fine-tuning stage from such weights instead of training the probe again."""
        prep, target = self.prep, self.prep.target
        strategy = Strategy.from_config(
            self.strategy.name,
            OmegaConf.to_container(cell.strategy[self.strategy.name], resolve=True) or {},
            prep.backbone.blocks)
        frozen_layers = strategy.frozen_layers(prep.backbone.blocks) if self.caches_prefix else 0
        if self.caches or self.caches_probe_stage:  # before seeding, as in _fit
            self.features()
        if frozen_layers:
            self.prefix(frozen_layers)
        L.seed_everything(seed, workers=True, verbose=False)
        model = self._build(strategy, cell)
        lr, bs = float(cell.train.lr), int(cell.train.batch_size)
        decay, rounds_cap = float(cell.train.weight_decay), int(cell.train.max_epochs)
        schedule = config_mod.schedule_spec(cell)
        optimizer = str(cell.model.get("optimizer", "adam"))
        no_decay = tuple(OmegaConf.select(cell, "model.no_decay", default=None) or ())
        penalty = (L2SP(model, strategy.l2sp["alpha"], strategy.l2sp["beta"])
                   if strategy.l2sp else None)
        rows = self.caches_rounds and strategy.unfreezes_from_pretrained
        run = dict(trainer_cfg=trainer_kwargs(cell), patience=1)
        phases: list[dict[str, Any]] = []

        def shape(length: int) -> tuple[int, int, int]:
            steps = steps_at(length, len(train_idx), n_full, bs)
            rounds = min(rounds_cap, steps)
            return steps, rounds, -(-steps // rounds)

        def trace(module: TextClassifier, steps: int) -> dict[str, Any]:
            return {"steps": steps, "warmup_steps": warmup_steps(schedule, steps),
                    "lr_end_frac": module.lr_end_frac}

        steps_before, epochs_before, first = 0, 0, None
        if strategy.lp_ft:  # phase 1, linear probing: the head alone
            steps, rounds, per = shape(lengths[0])
            if self.caches_probe_stage:
                stage = list(self._feature_loaders(model, train_idx, val_idx, bs, seed, 1,
                                                   False, per_epoch=per)[:3])
            else:
                stage = list(self._loaders(model, train_idx, val_idx, bs, seed, 1, False,
                                           per_epoch=per)[:3])
            head_only = FreezeBlocks([b for b in stage[0].blocks if b != "head"])
            if probe is None:
                module = TextClassifier(stage[0], target.num_classes, lr, decay, strategy,
                                        penalty, schedule, optimizer, no_decay=no_decay)
                first = fit_and_test(module, stage[1], stage[2] if probe_only else None, None,
                                     callbacks=[head_only], max_epochs=rounds, steps=steps, **run)
                phases.append(trace(module, steps))
                if probe_only:
                    return Fit(first.metrics, first.epochs, first.epochs, first.seconds,
                               steps=first.steps, schedule=phases, state=first.state_dict)
                stage[0].load_state_dict(first.state_dict)
                steps_before, epochs_before = first.steps, first.epochs
            else:
                stage[0].load_state_dict(probe)  # this split's probe, trained once
            lr = lr * float(strategy.lp_ft["ft_lr_mult"])
            lengths = lengths[1:]
        steps, rounds, per = shape(lengths[0])
        model, train, val, test_loader = self._loaders(model, train_idx, val_idx, bs, seed, 1,
                                                       test, frozen_layers, rows, per_epoch=per)
        module = TextClassifier(model, target.num_classes, lr, decay, strategy, penalty,
                                schedule, optimizer, no_decay=no_decay)
        result = fit_and_test(module, train, val, test_loader,
                              callbacks=[freeze_callback(strategy, model.blocks, lr), *callbacks],
                              logger=fit_logger(self.cfg, log_as), max_epochs=rounds,
                              steps=steps, **run)
        phases.append(trace(module, steps))
        seconds = result.seconds + (first.seconds if first else 0.0)
        return Fit(result.metrics, epochs_before + result.epochs, epochs_before + result.epochs,
                   seconds, None, None, False, result.test_predictions,
                   steps_before + result.steps, result.trainable,
                   _peak_of(first.memory if first else None, result.memory), phases)

    def describe(self) -> dict[str, Any]:
        prep, blocks = self.prep, self.prep.backbone.blocks
        return {
            "strategy_spec": {"transfer": self.strategy.transfer,
                              "trainable": self.strategy.trainable_blocks(blocks),
                              "lr_mult": dict(self.strategy.lr_mult),
                              **{k: getattr(self.strategy, k) for k in (
                                  "lr_decay", "unfreeze_every", "lp_ft", "l2sp", "lora",
                                  "bitfit") if _set(getattr(self.strategy, k))}},
            "source": None if self.source is None
            else {"key": self.source.key, **self.source.metrics,
                  **({"name": self.source_name} if self.source_name else {})},
            "vectors": None if prep.vectors is None or self.strategy.transfer == "none" else {
                "description": prep.vectors.description, "coverage": prep.coverage},
        }


def _set(value: Any) -> bool:
    """A strategy key worth recording: not its neutral default (None, False, lr_decay 1)."""
    return value is not None and value is not False and not (
        isinstance(value, float) and value == 1.0)


class BaselineMethod(_Method):
    """TF-IDF + logistic regression on the same subsets and folds (see :mod:`bench.training.baseline`)."""

    name = baseline.NAME
    prunes = False

    def __init__(self, prep: Prepared, cfg: DictConfig) -> None:
        self.prep = prep
        self.settings = OmegaConf.to_container(cfg.baseline, resolve=True)
        self.space = self.settings.get("space", {})
        self.grid = [float(c) for c in self.settings.get("grid") or []]

    def select_on_grid(self, n: int, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """C chosen over the whole fixed grid on the protocol's splits, whatever ``trials``
        says: milliseconds a value, so the baseline is tuned completely in every study, and
        studies sharing target, protocol, splits and seeds get the same records. Ties go to
        the smaller C (the stronger regularisation)."""
        start = time.perf_counter()
        scored = [(C, self.select({"C": C}, n, seed)) for C in sorted(self.grid)]
        best_c, best = max(scored, key=lambda cs: cs[1].score)  # first maximum: smallest C
        info = {"n_trials": 0, "grid": {f"{c:g}": round(sel.score, 6) for c, sel in scored},
                "best_value": best.score, "best_params": {"C": best_c},
                "majority": best.majority, "fold_scores": [round(v, 6) for v in best.fold_scores],
                "at_cap": False, "rounds": None,
                "seconds": round(time.perf_counter() - start, 3)}
        return {"C": best_c}, info

    def _fit(self, params: dict[str, Any], train: np.ndarray, val: np.ndarray | None,
             seed: int, test: bool, rounds: list[int] | None = None,
             callbacks: Sequence[Any] = (), log_as: str | None = None) -> Fit:
        target = self.prep.target
        start = time.perf_counter()
        pipeline = baseline.fit(target.data.texts, target.data.labels, train,
                                float(params.get("C", self.settings["C"])), self.settings, seed)
        metrics: dict[str, float] = {}
        if val is not None:
            metrics.update(baseline.scores(pipeline, target.data.texts, target.data.labels,
                                           val, "val")[0])
        predictions = None
        if test:
            scores, predictions = baseline.scores(pipeline, target.data.texts,
                                                  target.data.labels, target.splits.test, "test")
            metrics.update(scores)
        return Fit(metrics, None, None, time.perf_counter() - start,
                   test_predictions=predictions)

    def describe(self) -> dict[str, Any]:
        return {"strategy_spec": {"baseline": self.settings["name"],
                                  "ngram_max": self.settings["ngram_max"]},
                "source": None, "vectors": None}


class MajorityMethod(_Method):
    """Always the majority class of the n training labels: the floor every table shows."""

    name = "majority"
    prunes = False
    selects = False
    space: dict[str, Any] = {}

    def __init__(self, prep: Prepared, cfg: DictConfig) -> None:
        self.prep = prep

    def _fit(self, params: dict[str, Any], train: np.ndarray, val: np.ndarray | None,
             seed: int, test: bool, rounds: list[int] | None = None,
             callbacks: Sequence[Any] = (), log_as: str | None = None) -> Fit:
        labels = self.prep.target.data.labels
        guess = int(np.bincount(labels[train]).argmax())  # ties: the smallest label
        metrics: dict[str, float] = {}
        for split, index in (("val", val), ("test", self.prep.target.splits.test if test else None)):
            if index is not None:
                truth = labels[index]
                metrics[f"{split}_acc"] = float(np.mean(truth == guess))
                metrics[f"{split}_f1"] = float(f1_score(truth, np.full(len(truth), guess),
                                                        average="macro", zero_division=0))
        predictions = np.full(len(self.prep.target.splits.test), guess) if test else None
        return Fit(metrics, None, None, 0.0, test_predictions=predictions)

    def describe(self) -> dict[str, Any]:
        return {"strategy_spec": {"baseline": self.name}, "source": None, "vectors": None}


Method = NeuralMethod | BaselineMethod | MajorityMethod
