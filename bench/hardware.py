"""The one description of the machine: CPU, GPUs, threads and what decides its numerics.

Manifests record :func:`describe` per run, ``reproduce`` compares :func:`numerics_identity`
across machines, records name the :func:`device` that trained them and ``benchmark`` its
:func:`summary`. torch is imported inside the functions: reading a study needs none of this.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

# CPU features that pick different kernels (vector width, fused multiply-add, bf16/AMX paths) in
# ATen, MKL and oneDNN, and hence a different floating-point summation order. x86 and Arm names.
NUMERIC_ISA = frozenset({
    "fma", "f16c", "avx", "avx2", "avx_vnni", "avx512f", "avx512cd", "avx512dq", "avx512bw",
    "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
    "asimd", "asimdhp", "sve", "sve2", "bf16", "i8mm"})
# Environment switches that cap or pin the kernels those libraries choose.
NUMERIC_ENV = ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA",
               "DNNL_MAX_CPU_ISA")
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
    import torch

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
    import torch

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
    import torch

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


def describe() -> dict[str, Any]:
    """The host, its CPU and GPUs, thread settings and numerics identity (a manifest's run)."""
    import torch

    gpus = gpu_names()
    return {"host": socket.gethostname(), "platform": platform.platform(), "cpu": cpu_model(),
            "cpu_count": os.cpu_count(), "gpus": gpus,
            "threads": {"torch": torch.get_num_threads(),
                        "torch_interop": torch.get_num_interop_threads(),
                        **{v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}},
            "numerics": numerics_identity()}


def gpu_names() -> list[str]:
    import torch

    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if torch.cuda.is_available() else []


def device(accelerator: str) -> str:
    """What a fit on ``accelerator`` (the trainer's setting) ran on: the GPU's or CPU's name."""
    gpus = gpu_names() if accelerator in ("gpu", "cuda", "auto") else []
    return gpus[0] if gpus else (platform.processor() or platform.machine())


def _status_mib(field: str) -> float | None:
    """A ``Vm*`` line of /proc/self/status in MiB (None where there is none, e.g. macOS)."""
    try:
        match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    except OSError:
        return None
    return None if match is None else int(match[1]) / 1024


class PeakMemory:
    """The memory one fit needed, a part of a strategy's cost beside its seconds.

    On a CUDA device: torch's allocations there (its peak statistics reset at the start). On a
    CPU: the process's resident set, whose high-water mark Linux resets when "5" is written to
    /proc/self/clear_refs. The peak counts the whole process (weights, data, cached features);
    ``peak_mib - start_mib`` is what the fit added. :meth:`record` is None where neither can be
    read (no /proc, or clear_refs refused): an unknown peak, never a lifetime one.
    """

    def __init__(self, device_type: str) -> None:
        self.kind = "cuda" if device_type == "cuda" else "rss"
        self.start: float | None = None
        self.peak: float | None = None

    def __enter__(self) -> "PeakMemory":
        if self.kind == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats()
            self.start = torch.cuda.memory_allocated() / 2**20
            return self
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return self  # start stays None: no peak to read
        self.start = _status_mib("VmRSS")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.start is None:
            return
        if self.kind == "cuda":
            import torch

            self.peak = torch.cuda.max_memory_allocated() / 2**20
        else:
            self.peak = _status_mib("VmHWM")

    def record(self) -> dict[str, Any] | None:
        if self.start is None or self.peak is None:
            return None
        return {"kind": self.kind, "peak_mib": round(self.peak, 1),
                "start_mib": round(self.start, 1)}


def summary() -> dict[str, Any]:
    """Enough to tell two benchmark machines apart, in one table row."""
    import lightning
    import torch

    gpus = gpu_names()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpus[0] if gpus else None, "python": platform.python_version(),
            "torch": torch.__version__, "lightning": lightning.__version__,
            "platform": platform.platform()}
