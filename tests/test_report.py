"""`transfer-bench report`: tables, statistics and plots, checked against the records."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import run_cli

from bench.folder import load_records
from bench.analysis.stats import crossed_estimate, holm


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def reported(tuned_study):
    records_bytes = (tuned_study / "records.jsonl").read_bytes()
    proc = run_cli("report", str(tuned_study))
    assert proc.returncode == 0, proc.stderr
    assert (tuned_study / "records.jsonl").read_bytes() == records_bytes  # read-only on results
    return tuned_study / "report", proc


def test_report_writes_every_table_and_figure(reported):
    out, proc = reported
    names = {p.name for p in out.iterdir()}
    for stem in ("table", "gains", "efficiency"):
        assert {f"{stem}.md", f"{stem}.csv"} <= names
    assert {"table.tex", "budget.md", "tuning.md"} <= names
    for fig in ("learning_curves", "lr_sensitivity"):
        assert (out / f"{fig}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{fig}.pdf").read_bytes()[:5] == b"%PDF-"
    # TPE with pruning: its trials are not i.i.d., so no budget-adequacy curve, and it says why
    assert not (out / "expected_best_vs_trials.png").exists()
    assert "no expected-best-vs-trials plot: tpe trials depend on each other" in proc.stderr
    tex = (out / "table.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    assert (out / "table.md").read_text() in proc.stdout


def _correct(study: Path, strategy: str, size: str) -> np.ndarray:
    """Seeds x test examples, 1 where the record's prediction equals the test label."""
    import json

    labels = np.array(list(json.loads((study / "study.json").read_text())["test_labels"]))
    rows = sorted((r for r in load_records(study / "records.jsonl")
                   if r["strategy"] == strategy and str(r["size"]) == size), key=lambda r: r["seed"])
    return np.array([np.array(list(r["test_predictions"])) == labels for r in rows], dtype=float)


def test_table_cells_are_the_records_statistics(reported, tuned_study):
    out, _ = reported
    table = pd.read_csv(out / "table.csv", dtype={"size": str})
    records = load_records(tuned_study / "records.jsonl")
    assert len(table) == 5 * 3  # (scratch, frozen, full, tfidf_logreg, majority) x 3 sizes
    for _, row in table.iterrows():
        scores = [r["metrics"]["test_acc"] for r in sorted(records, key=lambda r: r["seed"])
                  if r["strategy"] == row["strategy"] and str(r["size"]) == row["size"]]
        assert row["seeds"] == len(scores) == 3
        assert row["mean"] == pytest.approx(np.mean(scores), abs=1e-6)
        assert row["std"] == pytest.approx(np.std(scores, ddof=1), abs=1e-6)
        # The interval counts the test sample: it is the estimator applied to the records'
        # per-example predictions scored against the study's test labels.
        matrix = _correct(tuned_study, row["strategy"], row["size"])
        assert matrix.mean(axis=1) == pytest.approx(scores, abs=1e-6)
        est = crossed_estimate(matrix, bounded=True)  # a cell's score: the logit-scale interval
        assert (row["ci_low"], row["ci_high"]) == pytest.approx((est.low, est.high), abs=1e-6)
        assert 0 <= row["ci_low"] <= row["mean"] <= row["ci_high"] <= 1
        if row["strategy"] in ("majority", "tfidf_logreg"):
            assert pd.isna(row["trials"])  # nothing to tune, or C chosen over its fixed grid
        else:
            assert row["trials"] == 2 * 3  # 2 trials per replicate, each tuned on its own labels
    for size, g in table.groupby("size"):
        best = g.loc[g["mean"].idxmax()]
        assert g["best"].sum() == 1 and bool(best["best"])
        others = g[g.index != best.name]
        best_matrix = _correct(tuned_study, best["strategy"], size)
        ps = [crossed_estimate(_correct(tuned_study, s, size) - best_matrix).p
              for s in others["strategy"]]
        for (_, row), p in zip(others.iterrows(), holm(ps)):
            assert row["p_vs_best"] == pytest.approx(p, abs=1e-6)
            assert bool(row["indistinguishable"]) == (p >= 0.05)
    assert "majority" in (out / "table.md").read_text()


def test_variance_table_splits_seed_and_test_sample(reported, tuned_study):
    out, _ = reported
    text = (out / "variance.md").read_text()
    frame = pd.read_csv(out / "variance.csv", dtype={"size": str})
    # one source model, one tuning per replicate: only the seed and test-sample parts
    assert [c for c in frame.columns if c.startswith("sd ")] == [
        "sd seed", "sd seed low", "sd seed high", "sd test sample", "sd test sample low",
        "sd test sample high", "sd total"]
    row = frame[(frame["strategy"] == "full") & (frame["size"] == "100")].iloc[0]
    matrix = _correct(tuned_study, "full", "100")
    scores = matrix.mean(axis=1)
    # the seed part of a fixed test set's score, less the run x example noise that the
    # test-sample part already counts (error mean square of the runs x examples matrix / N)
    n = matrix.shape[1]
    resid = matrix - matrix.mean(1, keepdims=True) - matrix.mean(0, keepdims=True) + matrix.mean()
    noise = (resid ** 2).sum() / ((len(matrix) - 1) * (n - 1)) / n
    assert row["sd seed"] == pytest.approx(np.sqrt(max(np.var(scores, ddof=1) - noise, 0)),
                                           abs=1e-4)
    assert row["sd test sample"] == pytest.approx(
        np.sqrt(np.mean([np.var(r, ddof=1) / len(r) for r in matrix])), abs=1e-4)
    assert "test sample" in text and "majority" not in set(frame["strategy"])
    # 3 seeds: the seed part rests on 2 degrees of freedom, and its interval says how little
    # that pins down (it holds the point value, and reaches far above it)
    assert row["df seed"] == 2 and row["df test sample"] == 3 * (n - 1)
    assert row["sd seed low"] <= row["sd seed"] <= row["sd seed high"]
    # with a positive estimate, 2 df leave its upper end far above it (chi-square_2's 2.5%
    # point is 0.05: a variance up to ~40x the mean square); a seed spread smaller than the
    # test noise can give 0 with an upper end of 0 (the run-to-run spread is all test noise)
    seeded = frame[(frame["df seed"] == 2) & (frame["sd seed"] > 0)]
    assert not seeded.empty
    assert (seeded["sd seed high"] > 2 * seeded["sd seed"]).all()
    assert "(2)" in text


def _mean_paired_difference(study, strategy: str, reference: str, size: str) -> float:
    """From the records: mean over seeds 0-2 of strategy minus reference test accuracy."""
    score = {(r["strategy"], str(r["size"]), r["seed"]): r["metrics"]["test_acc"]
             for r in load_records(study / "records.jsonl")}
    return float(np.mean([score[(strategy, size, s)] - score[(reference, size, s)]
                          for s in (0, 1, 2)]))


def test_gains_are_paired_differences_with_holm_correction(reported, tuned_study):
    out, _ = reported
    gains = pd.read_csv(out / "gains.csv", dtype={"size": str})
    assert set(gains["strategy"]) == {"frozen", "full", "tfidf_logreg"}  # not the majority floor
    for _, g in gains.iterrows():
        assert g["gain"] == pytest.approx(
            _mean_paired_difference(tuned_study, g["strategy"], "scratch", g["size"]), abs=1e-6)
        assert g["p_holm"] >= g["p"] - 1e-12
        assert (g["ci_low"] > 0 or g["ci_high"] < 0) == (g["p"] < 0.05)  # one analysis
        assert g["verdict"] in ("better", "worse", "no significant difference")
        if g["verdict"] != "no significant difference":
            assert g["p_holm"] < 0.05 and (g["verdict"] == "better") == (g["gain"] > 0)


def test_report_is_byte_for_byte_reproducible(reported, tuned_study, tmp_path):
    out, _ = reported
    first = _digest(out)
    again = run_cli("report", str(tuned_study))
    assert again.returncode == 0, again.stderr
    assert _digest(out) == first


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "nowhere", "is not a study directory"),
    (lambda p: p, "has no records"),
])
def test_report_on_a_wrong_folder_is_one_line_exit_2(tmp_path, make, message):
    proc = run_cli("report", str(make(tmp_path)))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and message in proc.stderr


def test_against_compares_every_strategy_with_the_chosen_one(reported, tuned_study):
    out, _ = reported
    before = (out / "gains.csv").read_bytes()
    proc = run_cli("report", str(tuned_study), "--no-plots", "--against", "full")
    assert proc.returncode == 0, proc.stderr
    assert (out / "gains.csv").read_bytes() == before  # the scratch comparison is unchanged
    vs_full = pd.read_csv(out / "gains_vs_full.csv", dtype={"size": str})
    assert (out / "gains_vs_full.md").read_text() in proc.stdout
    assert set(vs_full["strategy"]) == {"scratch", "frozen", "tfidf_logreg"}
    for _, g in vs_full.iterrows():
        assert g["gain"] == pytest.approx(
            _mean_paired_difference(tuned_study, g["strategy"], "full", g["size"]), abs=1e-6)
    # scratch vs full is the mirror image of full vs scratch
    vs_scratch = pd.read_csv(out / "gains.csv", dtype={"size": str})
    mirror = vs_scratch[vs_scratch["strategy"] == "full"].set_index("size")["gain"]
    for _, g in vs_full[vs_full["strategy"] == "scratch"].iterrows():
        assert g["gain"] == pytest.approx(-mirror[g["size"]], abs=1e-6)


def test_against_an_unknown_strategy_is_one_line_exit_2(reported, tuned_study):
    out, _ = reported
    before = _digest(out)
    proc = run_cli("report", str(tuned_study), "--against", "magic")
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "--against magic" in proc.stderr and "full" in proc.stderr
    assert _digest(out) == before


def test_side_by_side_puts_each_studys_cells_next_to_each_other(reported, tuned_study, tmp_path):
    import json
    import shutil

    other = tmp_path / "other"
    shutil.copytree(tuned_study, other, ignore=shutil.ignore_patterns("report", "reproductions"))
    lines = []  # the same records relabelled as the fixed-validation protocol, one score moved
    for line in (other / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        r["protocol"], r["labels"]["validation"] = "fixed_val", 100
        r["labels"]["total"] = r["n_train"] + 100
        if (r["strategy"], r["size"], r["seed"]) == ("full", 100, 0):
            r["metrics"]["test_acc"] = 0.0
        lines.append(json.dumps(r))
    (other / "records.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "sbs.md"
    proc = run_cli("report", str(tuned_study), str(other), "--no-plots", "--side-by-side", str(out))
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "labels per cell = n (training and selection)" in text
    assert "labels per cell = n + 100 validation" in text
    table = pd.read_csv(reported[0] / "table.csv", dtype={"size": str})
    row = [l for l in text.splitlines() if l.startswith("| full ")][0].split("|")
    header = [l for l in text.splitlines() if l.startswith("| strategy")][0].split("|")
    col = {h.strip(): i for i, h in enumerate(header)}
    full = table[(table["strategy"] == "full") & (table["size"] == "100")].iloc[0]
    assert row[col["n=100 budget"]].strip().startswith(f"{full['mean']:.3f} [")
    scores = {r["seed"]: r["metrics"]["test_acc"] for r in load_records(tuned_study /
                                                                          "records.jsonl")
              if r["strategy"] == "full" and r["size"] == 100}
    moved = (sum(scores.values()) - scores[0]) / 3  # seed 0 set to 0.0
    assert row[col["n=100 fixed_val"]].strip().startswith(f"{moved:.3f} [")
    one = run_cli("report", str(tuned_study), "--no-plots", "--side-by-side", str(out))
    assert one.returncode == 2 and "two or more" in one.stderr


def test_a_tuned_value_at_the_edge_of_its_range_is_flagged(reported, tuned_study, tmp_path):
    import json
    import shutil

    other = tmp_path / "edge"
    shutil.copytree(tuned_study, other, ignore=shutil.ignore_patterns("report", "reproductions"))
    space = json.loads((other / "study.json").read_text())["config"]["hpo"]["space"]["lr"]
    lines = []
    for line in (other / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["hpo"]:  # every tuning well inside the range ...
            r["hpo"]["best_params"] = {k: (space["low"] * space["high"]) ** 0.5 if k == "train.lr"
                                       else v for k, v in r["hpo"]["best_params"].items()}
            if (r["strategy"], r["size"], r["seed"]) == ("full", 100, 1):  # ... but one
                r["hpo"]["best_params"]["train.lr"] = space["high"] * 0.99
        lines.append(json.dumps(r))
    (other / "records.jsonl").write_text("\n".join(lines) + "\n")
    proc = run_cli("report", str(other), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    text = (other / "report" / "edges.md").read_text()
    rows = [l for l in text.splitlines() if l.startswith("| full")]
    assert len(rows) == 1 and "| train.lr " in rows[0] and "| 1 " in rows[0]
    assert not any(l.startswith(("| scratch", "| frozen")) for l in text.splitlines())


def test_side_by_side_keeps_two_runs_of_one_study_apart(reported, tuned_study, tmp_path):
    """The same study name in two results folders: both get columns, named by their folders."""
    import shutil

    for where in ("w1", "w2"):
        shutil.copytree(tuned_study, tmp_path / where / "small",
                        ignore=shutil.ignore_patterns("report", "reproductions"))
    out = tmp_path / "sbs.md"
    proc = run_cli("report", str(tmp_path / "w1" / "small"), str(tmp_path / "w2" / "small"),
                   "--no-plots", "--side-by-side", str(out))
    assert proc.returncode == 0, proc.stderr
    header = [l for l in out.read_text().splitlines() if l.startswith("| strategy")][0]
    assert "n=20 w1/small" in header and "n=20 w2/small" in header
    twice = run_cli("report", str(tuned_study), str(tuned_study), "--no-plots", "--side-by-side",
                    str(out))
    assert twice.returncode == 2 and "the same study twice" in twice.stderr


def test_rows_follow_the_study_not_the_order_workers_recorded_them():
    from bench.analysis.report import strategy_order

    def rec(name, baseline=False):
        return {"strategy": name, "strategy_spec": {"baseline": name} if baseline else {}}

    # two workers interleaved: the second source's frozen cell and TF-IDF came first
    records = [rec("frozen@b"), rec("tfidf_logreg", True), rec("full@b"), rec("majority", True),
               rec("frozen@a"), rec("scratch"), rec("full@a"), rec("frozen@c")]
    names = [r["strategy"] for r in records]
    assert strategy_order(names, records, ["a", "b", "c"]) == [
        "scratch", "frozen@a", "frozen@b", "frozen@c", "full@a", "full@b", "tfidf_logreg",
        "majority"]
    # without the study's list: sources in the order they first appear
    assert strategy_order(names, records)[:4] == ["scratch", "frozen@b", "frozen@a", "frozen@c"]


def test_a_report_before_any_transferring_records_has_no_source_table(tuned_study, tmp_path):
    """Estimates are recorded before fine-tuning: a report made while only scratch has records
    (a parallel launcher job's, say) must not fail on the empty source table."""
    copy = tmp_path / "early"
    shutil.copytree(tuned_study, copy, ignore=shutil.ignore_patterns("report"))
    assert (copy / "transferability.jsonl").exists()
    lines = (copy / "records.jsonl").read_text().splitlines(keepends=True)
    (copy / "records.jsonl").write_text("".join(
        line for line in lines if json.loads(line)["strategy"] in ("scratch", "majority")))
    proc = run_cli("report", str(copy), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    assert not (copy / "report" / "transferability.md").exists()


def test_side_by_side_pairs_two_studies_on_the_same_subsets_and_test_texts(tmp_path):
    """A second copy of the reference study whose `full` answers every test text right: the
    paired rows must give exactly 1 - `full`'s accuracy per size, called higher, and list every
    untouched strategy as identical; a study on other test labels is not paired, and says why."""
    from conftest import REPO
    from bench.analysis import report

    study = REPO / "results" / "movie_to_amazon_reference"
    a, b = (shutil.copytree(study, tmp_path / n, ignore=shutil.ignore_patterns("report"))
            for n in ("base", "perfect"))
    truth = json.loads((a / "study.json").read_text())["test_labels"]
    lines, accuracy = [], {}
    for line in (b / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["strategy"] == "full":
            accuracy.setdefault(str(r["size"]), []).append(r["metrics"]["test_acc"])
            r["test_predictions"], r["metrics"]["test_acc"] = truth, 1.0
        lines.append(json.dumps(r))
    (b / "records.jsonl").write_text("\n".join(lines) + "\n")

    md = report.side_by_side([a, b])
    paired = md[md.index("`perfect` minus `base`, paired"):]
    rows = {(c[1], c[2]): c for c in (
        [x.strip() for x in line.split("|")] for line in paired.splitlines()
        if line.startswith("| ") and "strategy" not in line)}
    for size, scores in accuracy.items():
        row = rows[(size, "full")]
        assert row[6] == f"{1 - np.mean(scores):+.3f}"
        assert float(row[7].strip("[]").split(",")[0]) > 0 and row[10] == "higher"
    assert not any(strategy == "frozen" for _, strategy in rows)  # untouched: not a row
    assert ("Identical runs in both studies (every paired seed, the same test predictions): "
            "`scratch`, `frozen`, `partial`, `tfidf_logreg`, `majority`.") in paired

    info = json.loads((b / "study.json").read_text())
    info["test_labels"] = ("1" if truth[0] == "0" else "0") + truth[1:]
    (b / "study.json").write_text(json.dumps(info))
    assert ("`perfect` minus `base`, paired: not possible, their test labels differ"
            in report.side_by_side([a, b]))
