"""`transfer-bench reproduce`: rerun recorded cells from the manifest, compare, and say so."""

from __future__ import annotations

import json
import shutil

from conftest import run_cli

from bench import manifest
from bench import reproduce as rep
from bench.results import load_records


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
    proc = run_cli("reproduce", str(copy))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "manifest.json" in proc.stderr


def _recorded(accelerator: str = "cpu") -> dict:
    """A manifest run entry of this machine, as read back from manifest.json."""
    entry = {**manifest.run_entry(["transfer-bench", "sweep"]),
             "config": {"trainer": {"accelerator": accelerator}}}
    return json.loads(json.dumps(entry, default=str))


def test_exact_only_where_the_numerics_identity_matches():
    here_v, here_n = manifest.versions(), manifest.numerics_identity()
    assert rep.decide_tolerance(_recorded(), here_v, here_n) == (
        0.0, "same software versions and numerics identity as the manifest; exact")

    # the case: same CPU name, but the recording host had AVX-512 kernels
    avx512 = _recorded()
    numerics = avx512["hardware"]["numerics"]
    numerics["cpu_capability"] = "AVX512" if here_n["cpu_capability"] != "AVX512" else "AVX2"
    numerics["isa"] = sorted(set(numerics["isa"]) ^ {"avx512f"})
    assert avx512["hardware"]["cpu"] == manifest.cpu_model()
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
    tol, why = rep.decide_tolerance(old, manifest.versions(), manifest.numerics_identity())
    assert tol == rep.CROSS_MACHINE_TOLERANCE
    assert why.startswith("unknown numerics") and repr(manifest.cpu_model()) in why


def test_other_software_or_a_gpu_run_gets_the_tolerance_and_an_explicit_one_wins():
    here_v, here_n = manifest.versions(), manifest.numerics_identity()
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
