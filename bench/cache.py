"""The on-disk cache (archives, parsed data, tensors, vectors, source models) and atomic writes.

Everything written here goes to a temporary name first and is renamed into place, so an
interrupted process never leaves a half-written file that a later run would trust.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from bench.errors import BenchError

T = TypeVar("T")

ENV_VAR = "TRANSFER_BENCH_CACHE"


def cache_root(configured: str | os.PathLike | None = None) -> Path:
    """The cache folder: config value, else $TRANSFER_BENCH_CACHE, else ~/.cache/transfer-bench."""
    if configured:
        root = Path(configured)
    elif os.environ.get(ENV_VAR):
        root = Path(os.environ[ENV_VAR])
    else:
        root = Path.home() / ".cache" / "transfer-bench"
    return root.expanduser()


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short SHA-256 of a JSON-able object, independent of dict order."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise BenchError(f"no space left on the device writing {path.parent} ({path.name} "
                             "kept as it was)") from None
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def cached(path: Path, build: Callable[[], T], save: Callable[[T, Path], None],
           load: Callable[[Path], T]) -> T:
    """Load ``path`` if it exists and reads back cleanly; otherwise build, save atomically, return.

    A cache file that fails to load (truncated, corrupt, from an incompatible version) is not
    trusted: it is rebuilt and replaced.
    """
    if path.exists():
        try:
            return load(path)
        except Exception:  # noqa: BLE001 - any failure to read a cache file means "rebuild it"
            path.unlink(missing_ok=True)
    value = build()
    atomic_write(path, lambda tmp: save(value, tmp))
    return value


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if absent) across processes, for read-modify-write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
