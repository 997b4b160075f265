"""``workers=K``: one ``sweep`` command fills the machine with K worker processes on one study.

The workers are ordinary sweeps of the same configuration with distinct ``hpo.worker_id``s, so
everything that makes several workers safe is the machinery they already share: one Optuna
storage (exact trial counts, heartbeats, retried trials), locked record appends keyed by
replicate. This module only starts them with a fair share of threads (and, on a GPU machine,
spreads them over the visible GPUs), shows their common progress, stops them all on Ctrl-C, and
then writes the table once from the records.

Worker 0 starts first and the others once it has prepared (data, vectors, source models: trained
once and cached) and opened the storage, so no two processes build the same cache entry or
create the storage schema at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import config as config_mod
from bench.errors import BenchError
from bench.folder import RECORDS, load_records

LOG_DIR = "workers"
# GPU: processes per device when ``workers=auto``. One process leaves a GPU mostly idle on this
# small model; a plain-PyTorch TextCNN loop on an H100 gave 14.8k examples/s with one process,
# 58k with 4 and 102k with 8 (design notes). Not measured through the suite: no GPU was lent.
GPU_WORKERS_PER_DEVICE = 4


def resolve(value: Any, gpus: int, cpus: int) -> int:
    """``workers`` (checked by :func:`bench.config.check`) as a count: ``auto`` is one per CPU
    core (one thread each) on a CPU machine, ``GPU_WORKERS_PER_DEVICE`` per GPU on a GPU one."""
    if value == "auto":
        return gpus * GPU_WORKERS_PER_DEVICE if gpus else max(1, cpus)
    return int(value)


def planned_runs(cfg: DictConfig) -> int:
    """How many records the study will hold when complete (for the common progress bar)."""
    sizes, seeds = len(config_mod.sizes(cfg)), len(cfg.seeds)
    tuned = int(cfg.hpo.n_trials) > 0
    tunings = config_mod.tuning_replicates(cfg) if tuned else 1
    sources = len(config_mod.source_seeds(cfg) or [None]) * len(config_mod.source_configs(cfg))
    total = sum(sizes * seeds * tunings * (sources if s.transfer == "network" else 1)
                for s in config_mod.strategies(cfg))
    if cfg.baseline.name != "none":
        total += sizes * seeds * tunings
    return total + sizes * seeds  # the majority floor


def _commands(overrides: Sequence[str], k: int, gpus: int, cpus: int) -> list[tuple[list[str], dict]]:
    exe = str(Path(sys.executable).with_name("transfer-bench"))
    keep = [o for o in overrides
            if not o.lstrip("+~").startswith(("workers=", "hpo.worker_id=", "hpo.worker_count=",
                                              "progress="))]
    return [([exe, "sweep", *keep, "workers=1", f"hpo.worker_id={i}", f"hpo.worker_count={k}",
              "progress=false"], share_env(i, k, gpus, cpus)) for i in range(k)]


def share_env(i: int, k: int, gpus: int, cpus: int) -> dict[str, str]:
    """The environment of process ``i`` of ``k`` sharing a machine: ``cpus // k`` torch
    threads each (one on a GPU machine), GPUs handed out round-robin."""
    threads = str(max(1, cpus // k)) if not gpus else "1"
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
    return env


def machine_share() -> tuple[int, int]:
    """(GPUs torch sees, CPU cores this process may use)."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return gpus, cpus or 1


def _stop(procs: list[subprocess.Popen], sig: int = signal.SIGINT, grace: float = 30.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(sig)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _last_line(path: Path) -> str:
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def run(cfg: DictConfig, overrides: Sequence[str], console: Console | None = None) -> Path:
    """Start ``cfg.workers`` sweeps of this study, wait for all, then write its report."""
    from bench.study.sweep import run_study

    console = console or Console(stderr=True)
    config_mod.check(cfg)  # bad input: one line before any process starts or file is written
    gpus, cpus = machine_share()
    if cfg.trainer.accelerator not in ("gpu", "cuda", "auto"):
        gpus = 0
    k = resolve(cfg.workers, gpus, cpus)
    out = Path(cfg.paths.results) / str(cfg.study)
    logs = out / LOG_DIR
    logs.mkdir(parents=True, exist_ok=True)
    total = planned_runs(cfg)
    place = f"{gpus} GPU(s)" if gpus else f"{cpus} CPU cores, {max(1, cpus // k)} thread(s) each"
    console.print(f"{cfg.study}: {k} workers on {place}; logs in {logs}")
    procs: list[subprocess.Popen] = []
    manifest = out / "manifest.json"
    before = manifest.stat().st_mtime if manifest.exists() else 0.0
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, disable=not cfg.progress) as bar:
            task = bar.add_task("records", total=total)
            for i, (command, env) in enumerate(_commands(overrides, k, gpus, cpus)):
                if i == 1:  # the others wait until worker 0 has prepared and opened the storage
                    while procs[0].poll() is None and not (
                            manifest.exists() and manifest.stat().st_mtime > before):
                        time.sleep(0.2)
                    if procs[0].returncode not in (None, 0):
                        break
                with open(logs / f"worker-{i}.log", "w") as log:
                    procs.append(subprocess.Popen(command, env=env, stdout=log,
                                                  stderr=subprocess.STDOUT))
            while any(p.poll() is None for p in procs):
                bar.update(task, completed=len(load_records(out / RECORDS)),
                           description=f"records ({sum(p.poll() is None for p in procs)} "
                                       "workers running)")
                if any(p.returncode not in (None, 0) for p in procs):
                    break
                time.sleep(1.0)
            bar.update(task, completed=len(load_records(out / RECORDS)))
    except KeyboardInterrupt:
        _stop(procs)
        raise BenchError(f"interrupted; {len(load_records(out / RECORDS))} records kept in "
                         f"{out}; run the same command again to resume") from None
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
    if failed:
        _stop(procs, signal.SIGTERM)
        i, code = failed[0]
        raise BenchError(f"worker {i} exited with status {code}: "
                         f"{_last_line(logs / f'worker-{i}.log')} (see {logs})")
    # Every cell is recorded now: this resumes nothing and writes the study's report once.
    return run_study(cfg, console, list(overrides))
