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
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bench.cache import atomic_write_text, file_lock, sha256_file
from bench.hardware import describe as hardware
from bench.redact import redact as redact  # re-exported: records and messages mask with it too

MANIFEST = "manifest.json"
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
    import torch

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = str(torch.backends.cudnn.version()) if torch.cuda.is_available() else None
    return out


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
