"""Records: one JSON line per replicate of a cell, appended atomically; tables from them.

A replicate is (seed, source model seed, tuning replicate): the source seed is ``None`` for a
strategy that uses no source model or a study with one source model, the tuning replicate 0
unless ``hpo.replicates`` asks for several independent tunings.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd
STUDY_FILE = "study.json"      # the composed config, identities, per-strategy definitions
RECORDS = "records.jsonl"
DEFAULTS = "defaults.jsonl"    # per tuned replicate: its final fit at the untuned setting
ESTIMATES = "transferability.jsonl"  # per source, seed and size: the estimators' scores
PARETO_FILE = "pareto.json"
STORAGE_FILE = "optuna.db"     # the default Optuna storage, beside the records


def estimate_key(r: dict[str, Any]) -> tuple[str, Any, str, int]:
    return (r["source"], r.get("source_seed"), str(r["size"]), int(r["seed"]))


def default_storage(study_dir: Path) -> str:
    """The SQLite URL a study's tuning uses unless ``hpo.storage`` names another."""
    return f"sqlite:///{(Path(study_dir) / STORAGE_FILE).resolve()}"


def read_study(study_dir: Path) -> dict[str, Any]:
    """``study.json`` of a study folder ({} where there is none yet); a damaged one is an
    error that names the file and what is wrong with it."""
    from bench.errors import BenchError

    path = Path(study_dir) / STUDY_FILE
    if not path.exists():
        return {}
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchError(f"{path} is not readable JSON ({exc}); restore it from git or the "
                         "study's manifest.json") from None
    if not isinstance(info, dict):
        raise BenchError(f"{path} holds a {type(info).__name__}, not the study's JSON object; "
                         "restore it from git")
    return info


SOURCE_MARK = "@"  # "full@tweets": strategy full transferred from source tweets


def split_method(name: str) -> tuple[str, str | None]:
    """A method's record name as (strategy, source): ``full@tweets`` -> (full, tweets); a
    one-source study's names carry no source."""
    strategy, mark, source = name.partition(SOURCE_MARK)
    return strategy, source if mark else None


def dataset_label(entry: dict[str, Any]) -> str:
    """A dataset's display name: its registry name, or a file dataset's title (else stem)."""
    if entry.get("name") == "file":
        return str(entry.get("title") or Path(str(entry.get("path"))).stem)
    return str(entry["name"])




Key = tuple[str, str, int, "int | None", int]


def record_key(record: dict[str, Any]) -> Key:
    """(strategy, size, seed, source seed, tuning replicate); older records lack the last two."""
    source = record.get("source_seed")
    return (record["strategy"], str(record["size"]), int(record["seed"]),
            None if source is None else int(source), int(record.get("tuning") or 0))


_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def encode_labels(labels: Any) -> str | None:
    """One character per test text (class 0-9, then a-z, A-Z): 1,000 predictions in 1 kB."""
    if labels is None:
        return None
    return "".join(_DIGITS[int(p)] for p in labels)


def decode_labels(text: str) -> list[int]:
    return [_DIGITS.index(c) for c in text]


def append_record(path: Path, record: dict[str, Any],
                  key: Callable[[dict[str, Any]], Any] | None = None) -> bool:
    """Append one line under an exclusive lock, in one ``write`` call, then fsync.

    Concurrent writers (parallel cells, several workers) never interleave; a process killed
    mid-write can leave at most a torn last line, which :func:`load_records` drops. A record
    whose key (``key``, default :func:`record_key`) is already there is not written again:
    returns False.
    """
    key = key or record_key
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        if key(record) in {key(r) for r in load_records(path, key=key)}:
            return False
        # A torn line left by a killed writer must not swallow this record.
        if os.fstat(fd).st_size and _last_byte(path) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
        os.fsync(fd)
        return True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1)


def load_records(path: Path, problems: list[str] | None = None,
                 key: Callable[[dict[str, Any]], Any] | None = None) -> list[dict[str, Any]]:
    """All complete records; blank lines skipped, duplicates keep the first.

    A torn last line (no newline: a writer killed mid-write) is dropped silently. Every other
    line that is not a record is dropped too, but, when ``problems`` is given, appended to it
    as ``"records.jsonl line N: why"``: silently losing a record would bias the tables.
    ``key`` identifies a record (default :func:`record_key`).
    """
    identify = key or record_key
    if not path.exists():
        return []
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    torn = len(lines) - 1 if lines[-1] else None  # the last line, unless the file ends in "\n"
    out, seen = [], {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        why = None
        try:
            record = json.loads(line)
            this = identify(record)
        except json.JSONDecodeError:
            cut = line.lstrip().startswith("{") and not line.rstrip().endswith("}")
            why = "cut off (an interrupted write)" if cut else "not JSON"
        except (KeyError, TypeError, ValueError, AttributeError):
            why = "not a record (needs strategy, size and seed)"
        else:
            if this in seen:
                why = f"a second record for {this}, ignored (line {seen[this]} is kept)"
            else:
                seen[this] = number
                out.append(record)
        if why and problems is not None and number - 1 != torn:
            problems.append(f"{path.name} line {number}: {why}")
    return out


def record_problems(path: Path) -> list[str]:
    """The lines of a records file that :func:`load_records` could not use, one note each."""
    problems: list[str] = []
    load_records(path, problems)
    return problems


def size_order(size: str) -> tuple[int, int]:
    """Sizes in order, ``all`` (the whole pool) last."""
    return (1, 0) if size == "all" else (0, int(size))


def to_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    rows = [{"strategy": r["strategy"], "size": str(r["size"]), "n_train": r["n_train"],
             "seed": r["seed"], **r["metrics"]} for r in records]
    return pd.DataFrame(rows)


def hpo_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per tuning: per replicate (``seed``) under the current protocols, per cell
    (``all``) in older studies, whose seeds shared one tuning. Trials, pruning ledger, best
    held-out score and parameters."""
    rows = {}
    for r in records:
        info = r.get("hpo")
        if info:
            shared = "/seed=" not in str(info.get("study_name", ""))
            name = str(info.get("study_name", ""))
            rows[info.get("study_name") or (r["strategy"], str(r["size"]))] = {
                "strategy": r["strategy"], "size": str(r["size"]),
                # the replicate, e.g. "2" or "2/source=1/tuning=1"
                "seed": "all" if shared else name.split("/seed=", 1)[1],
                "trials": info["n_trials"],
                "pruned": info["n_pruned"], "epochs run": info["epochs_run"],
                "epochs unpruned (est.)": info["epochs_unpruned_estimate"],
                "best held-out acc": round(info["best_value"], 4),
                "best params": ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                         for k, v in sorted(info["best_params"].items())),
                "tuning s": round(info["seconds"]),
            }
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows.values())
    frame["_order"] = frame["size"].map(size_order)
    return (frame.sort_values(["_order", "strategy", "seed"], kind="stable")
            .drop(columns="_order").reset_index(drop=True))


def compute_seconds(record: dict[str, Any]) -> float:
    """What a replicate cost: its tuning's trials (or its one selection) plus its final fit."""
    tuned = float((record.get("hpo") or {}).get("seconds") or 0.0)
    selected = float((record.get("selection") or {}).get("seconds") or 0.0)
    return (tuned if tuned > 0 else selected) + float(record.get("seconds") or 0.0)


def duration_text(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def progress(records: list[dict[str, Any]]) -> pd.DataFrame:
    """A running study's progress per (method, size): replicates recorded and their compute,
    for deciding what a resumed run still has to do."""
    rows = [{"strategy": r["strategy"], "size": str(r["size"]),
             "seconds": compute_seconds(r)} for r in records]
    if not rows:
        return pd.DataFrame(columns=["strategy", "size", "records", "seconds"])
    frame = pd.DataFrame(rows)
    return (frame.groupby(["strategy", "size"], sort=False)
            .agg(records=("seconds", "size"), seconds=("seconds", "sum")).reset_index())
