"""The study folder: who may write into it, and what it remembers about the study.

A folder holds one configuration (``study.json``): another configuration, a strategy
redefined under a name the study already ran, or a changed test split is refused before
anything is written, and an unwritable location fails before minutes of preparation.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bench import config as config_mod
from bench.cache import atomic_write_text, file_lock
from bench.errors import BenchError
from bench.folder import STUDY_FILE, read_study



def claim(out: Path, cfg: DictConfig) -> None:
    """Refuse to mix records of a different configuration into an existing study directory,
    including a strategy redefined under a name the study already ran."""
    identity = config_mod.study_hash(cfg)
    existing = read_study(out)  # a damaged study.json is named, not taken for another study
    if not existing:
        return
    if existing.get("study_hash") != identity:
        raise BenchError(f"{out} holds a study with a different configuration; choose another "
                         f"name with study=NAME (or move the old one away)")
    ran = existing.get("strategies") or {}
    for name, definition in config_mod.strategy_definitions(cfg).items():
        if name in ran and ran[name] != definition:
            raise BenchError(f"strategy {name!r} in {out} was run with another definition "
                             f"({difference(ran[name], definition)}); give the new one its own "
                             f"name (a new file in conf/strategy/) or use study=NAME")


def difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


def remember(out: Path, cfg: DictConfig, info: dict[str, Any]) -> None:
    """Add this run's strategy definitions and the test labels to ``study.json`` (under a lock).

    The test labels (one character per test text, like the records' predictions) let the
    report score every record per test example; a study whose test split changed is refused.
    """
    with file_lock(out / (STUDY_FILE + ".lock")):
        current = json.loads((out / STUDY_FILE).read_text()) if (out / STUDY_FILE).exists() \
            else info
        merged = {**config_mod.strategy_definitions(cfg), **(current.get("strategies") or {})}
        known = current.get("test_labels")
        if known is not None and known != info["test_labels"]:
            raise BenchError(f"the test split of {cfg.data.target.name} differs from the one "
                             f"{out} was scored on (test_labels in {STUDY_FILE}); the data "
                             "changed: use a new study=NAME")
        updated = {**current, "strategies": merged, "test_labels": info["test_labels"]}
        sources = {**(current.get("source_models") or {}), **(info.get("source_models") or {})}
        if sources:  # a source seed added later is listed with the others
            updated["source_models"] = sources
        if updated != current:
            atomic_write_text(out / STUDY_FILE, json.dumps(updated, indent=2, sort_keys=True)
                              + "\n")


def check_location(out: Path) -> None:
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


def make_writable(out: Path) -> None:
    """Create the study folder (the same probe as :func:`check_location` then runs in it)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BenchError(f"cannot create the results directory {out} ({exc.strerror}); "
                         "set paths.results to a writable folder") from None
    check_location(out)
