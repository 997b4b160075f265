"""The committed studies: their reports regenerate byte for byte from their records."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest

from conftest import REPO, run_cli

from bench.analysis.report import DEFAULT_METRIC, report_dir

TABLES = ("table.md", "table.csv", "table.tex", "gains.md", "gains.csv", "efficiency.md",
          "efficiency.csv", "budget.md", "tuning.md", "variance.md", "variance.csv")
MINILM_RECORDS = 180
COMMITTED = [  # (study, report arguments, extra tables, records)
    # 3 sizes x (4 strategies + TF-IDF + majority) x 5 seeds
    ("movie_to_amazon_reference", [], ("flags.md", "edges.md"), 3 * 6 * 5),
    ("movie_to_amazon_reference_fixed_val", [], ("flags.md", "edges.md"), 3 * 6 * 5),
    # 2 sizes x 3 seeds x 2 tunings x (3 sources x (frozen, full) + scratch), + TF-IDF (on its
    # grid: one selection per replicate) + majority
    ("movie_to_amazon_variance", [], (), 2 * 3 * 2 * (3 * 2 + 1) + 2 * 3 + 2 * 3),
    # 3 sizes x (10 strategies + TF-IDF + majority) x 5 seeds
    ("movie_to_amazon_strategies", ["--against", "full"],
     ("flags.md", "edges.md", "gains_vs_full.md", "gains_vs_full.csv"), 3 * 12 * 5),
    # all-MiniLM-L6-v2 on fair terms, as far as it has run (it resumes): the records so far
    ("movie_to_amazon_minilm", [], ("flags.md", "cost.md", "tuning_gain.md", "gains.md",
                                    "transferability.md"),
     MINILM_RECORDS),
    # 4 sources: 3 sizes x (scratch + 4 x (frozen, full) + TF-IDF + majority) x 5 seeds
    ("amazon_multisource", [], ("flags.md", "negative_transfer.md", "transferability.md",
                                "transferability.csv", "transferability_agreement.csv"),
     3 * 11 * 5),
    # 3 sources: 3 sizes x (scratch + 3 x (frozen, full) + TF-IDF + majority) x 5 seeds, its
    # report under both metrics (macro-F1 in report/test_f1/)
    *[("reuters_multisource", metric, ("flags.md", "negative_transfer.md", "transferability.md",
                                       "transferability.csv", "transferability_agreement.csv"),
       3 * 9 * 5) for metric in ([], ["--metric", "test_f1"])],
    # its 1,000-label cells with 3x the training cap: (scratch + 3 x (frozen, full) + TF-IDF +
    # majority) x 5 seeds
    *[("reuters_multisource_longer", metric,
       ("flags.md", "negative_transfer.md", "transferability.md", "transferability.csv",
        "transferability_agreement.csv"), 9 * 5) for metric in ([], ["--metric", "test_f1"])],
    # Made before the honest protocol (fixed validation split, vocabulary from every text, max
    # over padding), kept for comparison under results/legacy/.
    ("legacy/movie_to_amazon_reference", [], (), 6 * 5 * 5),  # 6 sizes x 5 methods x 5 seeds
    ("legacy/movie_to_amazon_strategies", ["--against", "full"],
     ("gains_vs_full.md", "gains_vs_full.csv"), 3 * 11 * 5),  # 3 sizes x 11 methods x 5 seeds
]


@pytest.mark.parametrize("name, args, extra, n_records", COMMITTED,
                         ids=[c[0] + "".join(f"-{a}" for a in c[1] if "-" not in a) for c in COMMITTED])
def test_committed_study_tables_regenerate_byte_for_byte(tmp_path, name, args, extra, n_records):
    study = REPO / "results" / name
    copy = tmp_path / study.name
    shutil.copytree(study, copy, ignore=shutil.ignore_patterns("report", "reproductions"))
    proc = run_cli("report", str(copy), "--no-plots", *args)
    assert proc.returncode == 0, proc.stderr
    metric = args[args.index("--metric") + 1] if "--metric" in args else DEFAULT_METRIC
    written, committed = report_dir(copy, metric), report_dir(study, metric)
    for table in (*TABLES, *extra):
        if table in TABLES and not (committed / table).exists():
            assert not (written / table).exists(), table  # e.g. tuning.md, untuned
            continue
        assert (written / table).read_bytes() == (committed / table).read_bytes(), table
    assert len((study / "records.jsonl").read_text().splitlines()) == n_records


def test_the_committed_protocol_comparison_regenerates_byte_for_byte(tmp_path):
    out = tmp_path / "protocols.md"
    studies = [REPO / "results" / name for name in ("movie_to_amazon_reference",
                                                    "movie_to_amazon_reference_fixed_val")]
    copies = []
    for study in studies:  # report writes into the study; work on copies
        copies.append(tmp_path / study.name)
        shutil.copytree(study, copies[-1], ignore=shutil.ignore_patterns("report", "reproductions"))
    proc = run_cli("report", *map(str, copies), "--no-plots", "--side-by-side", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (studies[0] / "report" / "protocols.md").read_bytes()


SIDE_BY_SIDE = [  # (studies, the committed side-by-side file)
    (("movie_to_amazon_strategies", "movie_to_amazon_minilm"),
     "movie_to_amazon_minilm/report/textcnn_vs_minilm.md"),
    (("reuters_multisource", "reuters_multisource_longer"),
     "reuters_multisource_longer/report/capped_vs_longer.md"),
]


@pytest.mark.parametrize("names, committed", SIDE_BY_SIDE, ids=[c[1].split("/")[-1] for c in SIDE_BY_SIDE])
def test_the_committed_side_by_side_tables_regenerate_byte_for_byte(tmp_path, names, committed):
    out = tmp_path / "side.md"
    copies = []
    for name in names:
        copies.append(tmp_path / name)
        shutil.copytree(REPO / "results" / name, copies[-1],
                        ignore=shutil.ignore_patterns("report", "reproductions"))
    proc = run_cli("report", *map(str, copies), "--no-plots", "--side-by-side", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (REPO / "results" / committed).read_bytes()


def test_the_committed_plain_check_is_its_log_and_the_committed_full_records():
    """docs/studies.md quotes plain_check.md: the plain script's logged runs and, on the same
    seeds, this study's own tuned `full` records at 1,000 labels as they now stand."""
    spec = importlib.util.spec_from_file_location("plain_finetune",
                                                  REPO / "scripts/plain_finetune.py")
    plain_finetune = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain_finetune)
    study = REPO / "results" / "movie_to_amazon_minilm"
    rows = [json.loads(line) for line in (study / "plain_check.jsonl").read_text().splitlines()]
    assert plain_finetune.table(rows, study) == (study / "plain_check.md").read_text()


def test_the_committed_probe_check_is_its_log_against_the_committed_frozen_records():
    """docs/studies.md quotes probe_check.md: the textbook probe's logged predictions scored
    against this study's `frozen` records as they now stand (it goes stale when they grow)."""
    spec = importlib.util.spec_from_file_location("plain_probe", REPO / "scripts/plain_probe.py")
    plain_probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain_probe)
    study = REPO / "results" / "movie_to_amazon_minilm"
    rows = [json.loads(line) for line in (study / "probe_check.jsonl").read_text().splitlines()]
    assert {(r["size"], r["seed"]) for r in rows} == {(n, s) for n in (50, 200, 1000)
                                                      for s in range(5)}
    assert plain_probe.table(rows, study) == (study / "probe_check.md").read_text()
