"""``manifest.json``: everything needed to trace and rerun a study, one entry per run.

A study directory can be filled by several runs (resume, extra seeds, parallel workers); each
run adds its own entry under ``runs`` (keyed by ``run_id``, which every record carries) with its
command line, code version, software, hardware and timing. What all runs share -- the composed
config, its hash, the data and vectors checksums -- sits at the top level.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench.cache import atomic_write_text, file_lock, sha256_file
from bench.redact import redact as redact  # re-exported: records and messages mask with it too

MANIFEST = "manifest.json"
# CPU features that pick different kernels (vector width, fused multiply-add, bf16/AMX paths) in
# ATen, MKL and oneDNN, and hence a different floating-point summation order. x86 and Arm names.
NUMERIC_ISA = frozenset({
    "fma", "f16c", "avx", "avx2", "avx_vnni", "avx512f", "avx512cd", "avx512dq", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm"})
# Environment switches that cap or pin the kernels those libraries choose.
NUMERIC_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
               "DNNL_MAX_CPU_ISA")
PACKAGES = ("torch", "lightning", "optuna", "optuna-integration", "gensim", "hydra-core",
            "omegaconf", "scikit-learn", "numpy", "pandas", "torchmetrics")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def git_state() -> dict[str, Any]:
    """Commit and dirtiness of the checkout the package runs from (None outside git)."""
    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                  text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None
    return out


def _cpuinfo(field: str) -> str | None:
    """The first ``field`` line of /proc/cpuinfo (None where there is none, e.g. macOS)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.split(":", 1)[0].strip() == field:
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def _torch_build() -> dict[str, Any]:
    """The CPU math libraries torch was built with, from its build summary."""
    show = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([\d.]+)", show)
    onednn = re.search(r"MKL-DNN (v[\w.]+)", show)
    blas = re.search(r"BLAS_INFO=(\w+)", show)
    return {"blas": blas and blas[1], "mkl": torch.backends.mkl.is_available(),
            "mkl_version": mkl and mkl[1], "mkldnn": torch.backends.mkldnn.is_available(),
            "onednn_version": onednn and onednn[1]}


def _nvidia_driver() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = done.stdout.split() if done.returncode == 0 else []
    return lines[0] if lines else None


def _cuda_identity() -> dict[str, Any] | None:
    """GPU, driver and CUDA/cuDNN runtime: each changes which kernels run (None without CUDA)."""
    if not torch.cuda.is_available():
        return None
    return {"devices": [{"name": torch.cuda.get_device_name(i),
                         "capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
                        for i in range(torch.cuda.device_count())],
            "driver": _nvidia_driver(), "runtime": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()}


def numerics_identity() -> dict[str, Any]:
    """What decides the floating-point results of a CPU (or GPU) run, beyond the code.

    The CPU model name alone is not enough: two hosts both reporting "AMD EPYC" can differ in
    AVX-512, which makes torch, MKL and oneDNN pick other kernels and sum in another order. Two
    runs with equal identities (and equal software versions) can be expected to agree bit for
    bit; see :func:`same_numerics`.
    """
    flags = (_cpuinfo("flags") or _cpuinfo("Features") or "").split()
    return {"cpu": cpu_model(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "isa": sorted(NUMERIC_ISA.intersection(flags)),
            "torch": torch.__version__, "torch_build": _torch_build(),
            "threads": torch.get_num_threads(),
            "env": {v: os.environ.get(v) for v in NUMERIC_ENV},
            "cuda": _cuda_identity()}


def _differences(a: Any, b: Any, key: str) -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [line for k in sorted(a.keys() | b.keys(), key=str)
                for line in _differences(a.get(k, "(missing)"), b.get(k, "(missing)"),
                                         f"{key}.{k}" if key else str(k))]
    if a == b:
        return []
    if isinstance(a, list) and isinstance(b, list):  # ISA flags: name what only one side has
        a, b = ([str(x) for x in xs if x not in ys] for xs, ys in ((a, b), (b, a)))
        return [f"{key} {' '.join(a) or '(none)'} vs {' '.join(b) or '(none)'}"]
    return [f"{key} {a} vs {b}"]


def same_numerics(a: dict[str, Any], b: dict[str, Any]) -> tuple[bool, list[str]]:
    """Whether two :func:`numerics_identity` results promise bitwise-equal results, and if not,
    one line per differing field ("cpu_capability AVX512 vs AVX2"). A field only one side has
    counts as a difference, so identities from different versions of this code never match."""
    out = _differences(a, b, "")
    return not out, out


def hardware() -> dict[str, Any]:
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "gpus": gpus,
            "threads": {"torch": torch.get_num_threads(),
                        "torch_interop": torch.get_num_interop_threads(),
                        **{v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}},
            "numerics": numerics_identity()}


def file_checksums(paths: dict[str, str]) -> dict[str, str]:
    return {name: sha256_file(Path(p)) for name, p in sorted(paths.items()) if Path(p).is_file()}


def read(study_dir: Path) -> dict[str, Any] | None:
    path = study_dir / MANIFEST
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def update(study_dir: Path, shared: dict[str, Any], run_id: str, run: dict[str, Any]) -> None:
    """Merge this run's entry (and the shared part, first writer wins) into the manifest.

    Everything written passes through :func:`redact`: configs, argv and overrides may carry a
    storage URL with its password, and the manifest is meant to be shared.
    """
    path = study_dir / MANIFEST
    with file_lock(path.with_suffix(".lock")):  # workers of one study: read-modify-write
        current = read(study_dir) or {}
        merged = {**shared, **{k: v for k, v in current.items() if k != "runs"}}
        runs = current.get("runs", {})
        runs[run_id] = {**runs.get(run_id, {}), **run}
        merged["runs"] = runs
        atomic_write_text(path, json.dumps(redact(merged), indent=2, sort_keys=True,
                                           default=str) + "\n")


def run_entry(argv: list[str] | None = None) -> dict[str, Any]:
    return {"started": now(), "finished": None, "argv": list(argv if argv is not None else sys.argv),
            "git": git_state(), "versions": versions(), "hardware": hardware(), "pid": os.getpid()}
