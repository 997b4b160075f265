"""Several sources for one target: one source model each, strategy@source cells, estimates
before fine-tuning on the cells' own labels only, the source-choice analysis, negative
transfer, and bad source lists."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import file_source as source
from conftest import run_cli, run_main, small_study_overrides, write_sentiment_csv

from bench.folder import encode_labels


@pytest.fixture(scope="module")
def three_sources(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    return {"clean": write_sentiment_csv(root / "clean.csv", 600, seed=1),
            "noisy": write_sentiment_csv(root / "noisy.csv", 600, seed=3, noise=0.35),
            "random": write_sentiment_csv(root / "random.csv", 600, seed=4, noise=0.5),
            "target": write_sentiment_csv(root / "target.csv", 400, seed=2, cue_words=1)}


def multi(data: dict[str, Path], results: Path, cache: Path, *extra: str) -> list[str]:
    entries = ",".join(source(data[k], k) for k in ("clean", "noisy", "random"))
    return [*small_study_overrides({"source": data["clean"], "target": data["target"]}, results,
                                   cache),
            f"data.sources=[{entries}]", "strategy=[scratch,frozen,full]", "seeds=[0,1,2]",
            *extra]


@pytest.fixture(scope="module")
def multi_study(three_sources, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("multi")
    proc = run_cli("sweep", *multi(three_sources, root / "r", root / "c"))
    assert proc.returncode == 0, proc.stderr
    report = run_cli("report", str(root / "r" / "small"))
    assert report.returncode == 0, report.stderr
    return root / "r" / "small"


def records(study: Path, name: str = "records.jsonl") -> list[dict]:
    return [json.loads(line) for line in (study / name).read_text().splitlines()]


def test_one_source_model_per_source_and_a_row_per_strategy_and_source(multi_study):
    recs = records(multi_study)
    names = {r["strategy"] for r in recs}
    assert names == {"scratch", "majority", *(f"{s}@{src}" for s in ("frozen", "full")
                                              for src in ("clean", "noisy", "random"))}
    keys = {r["strategy"]: r["source"]["key"] for r in recs if r.get("source")}
    assert len({keys[f"frozen@{s}"] for s in ("clean", "noisy", "random")}) == 3
    assert all(keys[f"frozen@{s}"] == keys[f"full@{s}"] for s in ("clean", "noisy", "random"))
    assert {r["source"]["name"] for r in recs if r.get("source")} == {"clean", "noisy", "random"}
    info = json.loads((multi_study / "study.json").read_text())
    assert set(info["sources"]) == {"clean", "noisy", "random"}
    table = (multi_study / "report" / "table.md").read_text()
    assert "| full@noisy" in table and "| frozen@random" in table


def test_estimates_cover_every_source_size_and_seed_before_fine_tuning(multi_study):
    est = records(multi_study, "transferability.jsonl")
    assert {(e["source"], str(e["size"]), e["seed"]) for e in est} == {
        (s, n, k) for s in ("clean", "noisy", "random") for n in ("20", "100") for k in (0, 1, 2)}
    assert all(set(e["estimates"]) == {"logme", "h_score", "leep", "nce", "linear_cv", "knn_cv"}
               for e in est)
    text = (multi_study / "report" / "transferability.md").read_text()
    assert "Kendall tau" in text and "regret" in text
    assert (multi_study / "report" / "transferability.png").exists()
    agree = (multi_study / "report" / "transferability_agreement.csv").read_text()
    assert agree.count("\n") == 1 + 2 * 6  # header + 6 estimators x 2 sizes


def test_estimates_use_only_the_cells_training_labels(three_sources, tmp_path):
    """Flip the label of every validation and test text of the target (fixed by a split
    column): no estimate may move."""
    import pandas as pd

    from bench.config import compose_config, sizes, strategies
    from bench.study.prepare import prepare
    from bench.study.estimates import record_estimates

    frame = pd.read_csv(three_sources["target"])
    frame["split"] = [("test", "val", "train", "train")[i % 4] for i in range(len(frame))]
    held = frame["split"] != "train"
    flipped = frame.copy()
    flipped.loc[held, "label"] = frame.loc[held, "label"].map({"pos": "neg", "neg": "pos"})

    def estimates(table: pd.DataFrame, out: Path) -> dict:
        path = tmp_path / f"{out.name}.csv"
        table.to_csv(path, index=False)
        data = {**three_sources, "target": path}
        cfg = compose_config([o for o in multi(data, out, tmp_path / "c")
                              if not o.startswith("seeds")]
                             + ["seeds=[0,1]", "data.target.split_column=split"])
        prep = prepare(cfg, strategies(cfg), sizes(cfg))
        out.mkdir(parents=True, exist_ok=True)
        assert record_estimates(prep, cfg, sizes(cfg), out, None) == 12
        return {(r["source"], str(r["size"]), r["seed"]): {k: v["value"] for k, v in
                                                           r["estimates"].items()}
                for r in records(out, "transferability.jsonl")}

    first, second = estimates(frame, tmp_path / "a"), estimates(flipped, tmp_path / "b")
    assert first == second and len(first) == 12


@pytest.mark.parametrize("case,message", [
    ("target", "is the target itself"), ("twice", "twice"),
    ("estimator", "unknown transferability estimator"), ("unknown", "not a dataset")])
def test_bad_source_lists_are_one_line_and_write_nothing(case, message, three_sources, tmp_path):
    args = multi(three_sources, tmp_path / "r", tmp_path / "c")
    if case == "target":
        args.append(f"data.sources=[{source(three_sources['clean'], 'clean')},"
                    f"{source(three_sources['target'], 'target')}]")
        args.append("data.target.title=target")
    elif case == "twice":
        args.append(f"data.sources=[{source(three_sources['clean'], 'clean')},"
                    f"{source(three_sources['clean'], 'clean')}]")
    elif case == "estimator":
        args.append("transferability=[logme,leap]")
    else:
        args.append("data.sources=[movie_reviews,no_such_set]")
    proc = run_main("sweep", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "r" / "small").exists()


def test_negative_transfer_is_marked_and_listed(tmp_path):
    """Controlled records: ``frozen@bad`` is right on 40% of 400 test texts, scratch on 80%,
    ``frozen@good`` on 82%: only the first is negative transfer."""
    study = tmp_path / "neg"
    study.mkdir()
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 2, 400)
    (study / "study.json").write_text(json.dumps({"test_labels": encode_labels(truth)}))
    lines = []
    for name, rate, transfer in (("scratch", 0.8, "none"), ("frozen@bad", 0.4, "network"),
                                 ("frozen@good", 0.82, "network")):
        for seed in range(5):
            right = rng.random(400) < rate + rng.normal(0, 0.01)
            predicted = np.where(right, truth, 1 - truth)
            lines.append(json.dumps({
                "strategy": name, "size": 50, "n_train": 50, "seed": seed, "protocol": "budget",
                "labels": {"total": 50}, "metrics": {"test_acc": float(right.mean())},
                "strategy_spec": {"transfer": transfer},
                "test_predictions": encode_labels(predicted)}))
    (study / "records.jsonl").write_text("\n".join(lines) + "\n")
    proc = run_cli("report", str(study), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    table = (study / "report" / "table.md").read_text()
    row = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("|")}
    assert "†" in row["frozen@bad"] and "†" not in row["frozen@good"] and "†" not in row["scratch"]
    listed = (study / "report" / "negative_transfer.md").read_text()
    assert "frozen@bad" in listed and "frozen@good" not in listed


def test_vectorised_rank_correlations_equal_scipys_with_ties_and_constant_rows():
    from scipy import stats as sps

    from bench.analysis.source_choice import kendall_tau_b, spearman_rho

    rng = np.random.default_rng(5)
    constant_rows = 0
    for k in (3, 4, 6):
        a = rng.integers(0, 3, size=(400, k)).astype(float)  # many ties and constant rows
        b = rng.normal(size=(400, k)).round(1)
        tau, rho = kendall_tau_b(a, b), spearman_rho(a, b)
        for row in range(len(a)):
            constant = len(set(a[row])) < 2 or len(set(b[row])) < 2
            want_tau = np.nan if constant else sps.kendalltau(a[row], b[row]).statistic
            want_rho = np.nan if constant else sps.spearmanr(a[row], b[row]).statistic
            np.testing.assert_allclose(tau[row], want_tau, atol=1e-12)
            np.testing.assert_allclose(rho[row], want_rho, atol=1e-12)
        constant_rows += int(np.isnan(tau).sum())
        assert not np.isnan(tau).all()
    assert constant_rows > 10  # the NaN case was exercised too
    a[0, 1] = np.nan
    assert np.isnan(kendall_tau_b(a, b)[0]) and np.isnan(spearman_rho(a, b)[0])


def test_an_estimator_without_values_at_a_size_is_left_out_not_fatal(tmp_path):
    """Controlled records, three sources whose measured gains rank c > b > a; LogME ranks them
    the same way, the CV probe has no value at this size (NaN, as at 50 Reuters labels)."""
    study = tmp_path / "choice"
    study.mkdir()
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 400)
    (study / "study.json").write_text(json.dumps({"test_labels": encode_labels(truth)}))
    lines, estimates = [], []
    rates = {"scratch": 0.7, "frozen@a": 0.72, "frozen@b": 0.8, "frozen@c": 0.9}
    for name, rate in rates.items():
        for seed in range(5):
            right = rng.random(400) < rate
            lines.append(json.dumps({
                "strategy": name, "size": 50, "n_train": 50, "seed": seed, "protocol": "budget",
                "labels": {"total": 50}, "metrics": {"test_acc": float(right.mean())},
                "strategy_spec": {"transfer": "none" if name == "scratch" else "network"},
                "test_predictions": encode_labels(np.where(right, truth, 1 - truth))}))
            if name != "scratch":
                estimates.append(json.dumps({
                    "source": name.split("@")[1], "source_seed": None, "size": 50, "seed": seed,
                    "estimates": {"logme": {"value": rate + rng.normal(0, 0.001), "seconds": 0.1},
                                  "knn_cv": {"value": float("nan"), "seconds": 0.1}}}))
    (study / "records.jsonl").write_text("\n".join(lines) + "\n")
    (study / "transferability.jsonl").write_text("\n".join(estimates) + "\n")
    proc = run_cli("report", str(study), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    agree = (study / "report" / "transferability_agreement.csv").read_text().splitlines()
    header, rows = agree[0].split(","), [dict(zip(agree[0].split(","), r.split(","))) for r in agree[1:]]
    assert [r["estimator"] for r in rows] == ["logme"] and "picks" in header
    assert rows[0]["picks"] == "c" and float(rows[0]["regret"]) == 0.0
    assert float(rows[0]["tau"]) == 1.0
