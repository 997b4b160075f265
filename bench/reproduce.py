"""``transfer-bench reproduce <study dir>``: rerun recorded cells from the manifest alone.

For each chosen record, the configuration of the run that wrote it (``manifest.json``) is
rebuilt, the data, vectors and source model are rebuilt in a fresh cache (only the verified
download archives are reused), and the cell is retrained with the record's tuned parameters and
seed, then evaluated on test. The comparison goes to stdout and to ``reproduce.{md,json}`` in a
fresh folder; the original study is only read.

Tolerance (:func:`decide_tolerance`): exact (to the 6 decimals records keep) when the software
versions and the numerics identity (:func:`bench.hardware.numerics_identity`: CPU capability and
ISA flags, torch build, threads, GPU/driver/CUDA) match the manifest's; otherwise a stated bound
(default 0.02 accuracy), because different BLAS kernels, CPU instruction sets and GPU kernels
change floating-point summation order, which moves a few borderline test predictions. The CPU
model name alone is not enough: two hosts both called "AMD EPYC", one with AVX-512, differed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
from omegaconf import OmegaConf
from rich.console import Console

from bench import config as config_mod
from bench import hardware as hardware_mod
from bench import manifest as manifest_mod
from bench.cache import atomic_write_text, cache_root, sha256_file
from bench.errors import BenchError
from bench.folder import RECORDS, load_records

# Measured between two "AMD EPYC" hosts with equal software, AVX2 vs AVX-512: up to 0.006 on single
# reproduced cells and 0.011 on the table's means (6-11 flipped predictions of a 1000-example test
# set). 0.02 leaves about twice the largest difference seen; it is not derived from a model of
# the noise, so --tolerance overrides it.
CROSS_MACHINE_TOLERANCE = 0.02
METRICS = ("test_acc", "val_acc")


def select(records: list[dict[str, Any]], strategies: Sequence[str] = (),
           sizes: Sequence[str] = (), seeds: Sequence[int] = ()) -> list[dict[str, Any]]:
    """The records of the given strategies (record names, e.g. ``frozen@tweets``), sizes and
    seeds; an empty filter keeps all. Nothing left is a one-line error naming what there is."""
    wanted = [("strategy", [str(v) for v in strategies], lambda r: str(r["strategy"])),
              ("size", [str(v) for v in sizes], lambda r: str(r["size"])),
              ("seed", [str(v) for v in seeds], lambda r: str(int(r["seed"])))]
    narrowed = False
    for flag, values, of in wanted:
        have = list(dict.fromkeys(of(r) for r in records))
        unknown = [v for v in values if v not in have]
        if unknown:
            among = "the records the other filters leave" if narrowed else "the records"
            raise BenchError(f"--{flag} {' '.join(unknown)}: no such {flag} among {among}; "
                             f"they have {', '.join(have)}")
        records = [r for r in records if not values or of(r) in values]
        narrowed = narrowed or bool(values)
    return records


def choose(records: list[dict[str, Any]], cells: int, everything: bool) -> list[dict[str, Any]]:
    """All records, or ``cells`` cells spread over strategies and sizes, one seed (the lowest)."""
    if everything:
        return records
    seed = min(int(r["seed"]) for r in records)
    pool = [r for r in records if int(r["seed"]) == seed]
    strategies = list(dict.fromkeys(r["strategy"] for r in pool))
    sizes = list(dict.fromkeys(str(r["size"]) for r in pool))
    picked: list[dict[str, Any]] = []
    for i in range(len(strategies) * len(sizes)):  # walk the grid diagonally
        s, z = strategies[i % len(strategies)], sizes[(i // len(strategies) + i) % len(sizes)]
        match = [r for r in pool if r["strategy"] == s and str(r["size"]) == z and r not in picked]
        picked += match[:1]
        if len(picked) >= cells:
            break
    return picked


def _version_differences(old: dict[str, Any], here: dict[str, Any]) -> list[str]:
    return [f"{name} {here.get(name)} here, {v} in the manifest"
            for name, v in sorted(old.items()) if here.get(name) != v]


def environment_differences(run: dict[str, Any], here_versions: dict[str, Any] | None = None,
                            here_hardware: dict[str, Any] | None = None) -> list[str]:
    """What differs between the recording run and this machine, one line each (warnings)."""
    here_versions = here_versions or manifest_mod.versions()
    here_hardware = here_hardware or hardware_mod.describe()
    out = _version_differences(run.get("versions") or {}, here_versions)
    old_hw = run.get("hardware") or {}
    if isinstance(old_hw.get("numerics"), dict):  # names CPU and GPUs too, and more
        return out + [f"numerics {d} (manifest vs here)" for d in hardware_mod.same_numerics(
            old_hw["numerics"], here_hardware.get("numerics") or {})[1]]
    for key in ("cpu", "gpus"):
        old, here = old_hw.get(key), here_hardware.get(key)
        if old != here:
            out.append(f"{key} {here!r} here, {old!r} in the manifest")
    return out


def decide_tolerance(run: dict[str, Any], here_versions: dict[str, Any],
                     here_numerics: dict[str, Any],
                     requested: float | None = None) -> tuple[float, str]:
    """The tolerance for reruns of manifest entry ``run`` on this machine, and why, in words.

    Exact only when bitwise equality can be expected: same software versions, same numerics
    identity, and a CPU run (GPU kernels are compared within tolerance, see docs/reproducibility.md). A
    manifest without a numerics identity (older versions recorded only the CPU model name, which
    proved too coarse) gets the tolerance too.
    """
    if requested is not None:
        return requested, f"tolerance {requested} as asked (--tolerance)"
    instead = f"tolerance {CROSS_MACHINE_TOLERANCE} instead of exact"
    versions = _version_differences(run.get("versions") or {}, here_versions)
    if versions:
        return CROSS_MACHINE_TOLERANCE, f"software differs: {'; '.join(versions)}; {instead}"
    hardware = run.get("hardware") or {}
    recorded = hardware.get("numerics")
    if not isinstance(recorded, dict):
        return CROSS_MACHINE_TOLERANCE, (
            f"unknown numerics: the manifest records only the CPU model {hardware.get('cpu')!r}, "
            f"not its instruction set, kernels or threads; {instead}")
    accelerator = ((run.get("config") or {}).get("trainer") or {}).get("accelerator")
    here = here_numerics
    if accelerator == "cpu":  # a GPU beside a CPU run changes nothing in its numbers
        recorded, here = ({k: v for k, v in d.items() if k != "cuda"} for d in (recorded, here))
    elif recorded.get("cuda"):
        devices = ", ".join(d.get("name", "?") for d in recorded["cuda"].get("devices") or [])
        return CROSS_MACHINE_TOLERANCE, (
            f"the run used a GPU ({devices or 'unnamed'}), whose kernels are not all "
            f"deterministic (trainer deterministic: warn); {instead}")
    same, diffs = hardware_mod.same_numerics(recorded, here)
    if not same:
        return CROSS_MACHINE_TOLERANCE, (
            f"numerics differ (manifest vs here): {'; '.join(diffs)}; {instead}")
    return 0.0, "same software versions and numerics identity as the manifest; exact"


def _fresh_cache(root: Path, source_cache: Path) -> Path:
    """A new cache holding only the download archives (re-verified by checksum on use)."""
    archives = source_cache / "archives"
    if archives.is_dir():
        (root / "archives").mkdir(parents=True, exist_ok=True)
        for f in archives.iterdir():
            if f.is_file():
                os.symlink(f.resolve(), root / "archives" / f.name)
    return root


def _check_data(manifest: dict[str, Any], cache: Path) -> None:
    """The archives this machine would read must be the ones the study read."""
    entries: list[tuple[str, Any]] = []
    for role, entry in (manifest.get("data") or {}).items():
        if role == "sources" and isinstance(entry, dict):  # several sources: one entry each
            entries += [(f"source {name}", e) for name, e in entry.items()]
        else:
            entries.append((role, entry))
    for role, entry in entries:
        archive = (entry or {}).get("archive") if isinstance(entry, dict) else None
        if not archive:
            continue
        path = cache / "archives" / archive["file"]
        if path.exists() and sha256_file(path) != archive["sha256"]:
            raise BenchError(f"{path} does not match the manifest's SHA-256 for {role} data; "
                             "delete it so it is fetched again")


# What a rerun reads from a record besides its key (strategy, size, seed). Fields added later
# (source_seed, tuning, rounds) are optional: records written before them are still rerun.
NEEDED = ("run_id", "params", "n_train", "metrics")


def _check_records(records: list[dict[str, Any]], runs: dict[str, Any]) -> None:
    for r in records:
        lacking = [k for k in NEEDED if r.get(k) is None]
        if lacking:
            raise BenchError(f"the record of {r['strategy']} n={r['size']} seed={r['seed']} in "
                             f"{RECORDS} has no {', '.join(lacking)}; it cannot be rerun")
    missing = sorted({r["run_id"] for r in records if r["run_id"] not in runs}, key=str)
    if missing:
        raise BenchError(f"records name runs {missing} that {manifest_mod.MANIFEST} lacks; "
                         "the manifest does not belong to these records")


OTHER_VERSION = ("the study was made by another version of transfer-bench and cannot be "
                 "reproduced by this version")


def _run_config(run_id: str, entry: dict[str, Any], study_hash: Any, cache: Path,
                out: Path) -> Any:
    """Run ``run_id``'s composed config, pointed at ``cache`` and ``out``, checked by this
    version and hashing to the manifest's study_hash."""
    if not isinstance(entry.get("config"), dict):
        raise BenchError(f"run {run_id} in {manifest_mod.MANIFEST} has no config to rebuild it "
                         "from")
    cfg = OmegaConf.create(entry["config"])
    cfg.paths.cache = str(cache)
    cfg.paths.results = str(out)
    cfg.progress = False
    try:
        config_mod.check(cfg)
    except BenchError as exc:
        raise BenchError(f"run {run_id}'s config fails this version's checks ({exc}); "
                         f"{OTHER_VERSION}") from None
    if config_mod.study_hash(cfg) != study_hash:
        raise BenchError(f"run {run_id}'s config does not hash to the manifest's study_hash: "
                         f"the manifest was edited, or {OTHER_VERSION}")
    return cfg


def run(study_dir: Path, cells: int = 3, everything: bool = False, out: Path | None = None,
        tolerance: float | None = None, reuse_cache: bool = False,
        console: Console | None = None, strategies: Sequence[str] = (),
        sizes: Sequence[str] = (), seeds: Sequence[int] = ()) -> tuple[pd.DataFrame, Path, bool]:
    """Rerun the chosen records (``strategies``/``sizes``/``seeds`` filter them first) and
    compare. Everything that can be refused is checked before ``out`` is created: a refusal
    writes nothing. The rebuilt cache is deleted afterwards, also when a rerun fails."""
    console = console or Console(stderr=True)
    manifest = manifest_mod.read(study_dir)
    if manifest is None:
        raise BenchError(f"{study_dir} has no readable {manifest_mod.MANIFEST}; only studies run "
                         "with a manifest can be reproduced")
    records = load_records(study_dir / RECORDS)
    if not records:
        raise BenchError(f"{study_dir} has no records to reproduce")
    chosen = choose(select(records, strategies, sizes, seeds), cells, everything)
    runs = manifest.get("runs") or {}
    _check_records(chosen, runs)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = out or study_dir / "reproductions" / stamp
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BenchError(f"{out} is not an empty folder; reproduce writes into a fresh folder")
    user_cache = cache_root(None)
    cache = user_cache if reuse_cache else out / "cache"
    by_run: dict[str, list[dict[str, Any]]] = {}
    for r in chosen:
        by_run.setdefault(r["run_id"], []).append(r)
    configs = {run_id: _run_config(run_id, runs[run_id], manifest.get("study_hash"), cache, out)
               for run_id in by_run}

    created = [d for d in (out, *out.parents) if not d.exists()]  # e.g. <study>/reproductions
    out.mkdir(parents=True, exist_ok=True)
    try:
        if not reuse_cache:
            _fresh_cache(cache, user_cache)
        _check_data(manifest, cache)
        rows, warnings, reasons = _rerun(by_run, runs, configs, tolerance, console)
    except BaseException:  # a rerun that fails (or Ctrl-C) leaves no rebuilt cache behind
        if not reuse_cache:
            shutil.rmtree(cache, ignore_errors=True)
        for folder in created:  # innermost first; only what this call made and left empty
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    table = pd.DataFrame(rows)
    ok = bool(table["within"].all())
    text = (f"# reproduction of {study_dir.name}\n\n" + table.to_markdown(index=False) + "\n\n"
            f"{int(table['within'].sum())}/{len(table)} comparisons within tolerance"
            + ("" if not warnings else "; environment differs: " + "; ".join(sorted(warnings)))
            + "\n\n" + "".join(f"run {k}: {v}\n" for k, v in reasons.items()))
    atomic_write_text(out / "reproduce.md", text)
    atomic_write_text(out / "reproduce.json", json.dumps(
        manifest_mod.redact({"study": str(study_dir), "ok": ok,
                             "environment_differences": sorted(warnings),
                             "tolerance_reasons": reasons, "run": manifest_mod.run_entry(),
                             "rows": rows}), indent=2, default=str) + "\n")
    if not reuse_cache:
        shutil.rmtree(cache, ignore_errors=True)  # rebuilt data: large and disposable
    return table, out, ok


def _rerun(by_run: dict[str, list[dict[str, Any]]], runs: dict[str, Any],
           configs: dict[str, Any], tolerance: float | None,
           console: Console) -> tuple[list[dict[str, Any]], set[str], dict[str, str]]:
    """Retrain each record's final fit under its run's config: comparison rows, environment
    warnings, and each run's tolerance reason."""
    from bench.study.methods import BaselineMethod, MajorityMethod, NeuralMethod
    from bench.study.prepare import prepare

    rows: list[dict[str, Any]] = []
    warnings: set[str] = set()
    reasons: dict[str, str] = {}
    here_versions, here_hardware = manifest_mod.versions(), hardware_mod.describe()
    for run_id, recs in by_run.items():
        entry, cfg = runs[run_id], configs[run_id]
        for d in environment_differences(entry, here_versions, here_hardware):
            if d not in warnings:
                console.print(f"warning: {d}")
                warnings.add(d)
        defined = {s.name: s for s in config_mod.strategies(cfg)}
        # Only what these records use is rebuilt: a scratch cell trains no source model, a
        # frozen@tweets cell only the tweets one (the vocabulary still covers every pool).
        methods = [config_mod.split_method(r["strategy"]) for r in recs]
        used = [defined[b] for b in dict.fromkeys(b for b, _ in methods) if b in defined]
        sources = {s for b, s in methods if b in defined and defined[b].transfer == "network"}
        prep = prepare(cfg, used, [r["size"] for r in recs], console,
                       None if None in sources else sources)
        tol, reasons[run_id] = decide_tolerance(entry, here_versions, here_hardware["numerics"],
                                                tolerance)
        console.print(f"run {run_id}: {reasons[run_id]}")
        for r in recs:
            base, source_name = config_mod.split_method(r["strategy"])
            if base in defined:
                method = NeuralMethod(prep, cfg, defined[base], r.get("source_seed"),
                                      source_name)
            elif r["strategy"] == MajorityMethod.name:
                method = MajorityMethod(prep, cfg)
            else:
                method = BaselineMethod(prep, cfg)
            # Records from before source seeds and tuning replicates have neither field.
            source_seed, tuning = r.get("source_seed"), r.get("tuning") or 0
            where = ((f" source={source_seed}" if source_seed is not None else "")
                     + (f" tuning={tuning}" if tuning else ""))
            console.print(f"rerun {r['strategy']} n={r['size']} seed={r['seed']}{where}")
            # The final fit alone: the recorded setting and training length (rounds) that the
            # replicate's own tuning chose; the tuning is not rerun.
            fit = method.final(dict(r["params"]), int(r["n_train"]), int(r["seed"]),
                               r.get("rounds"))
            compared = [m for m in METRICS if m in r["metrics"]]
            if not compared:
                raise BenchError(f"the record of {r['strategy']} n={r['size']} seed={r['seed']} "
                                 f"has none of {', '.join(METRICS)} to compare")
            for metric in compared:
                new = round(fit.metrics[metric], 6)
                old = r["metrics"][metric]
                diff = new - old
                rows.append({"strategy": r["strategy"], "size": str(r["size"]), "seed": r["seed"],
                             "source_seed": source_seed, "tuning": tuning,
                             "metric": metric, "original": old, "rerun": new,
                             "difference": round(diff, 6), "tolerance": tol,
                             "within": abs(diff) <= tol + 1e-9})
    return rows, warnings, reasons
