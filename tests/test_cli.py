"""The CLI as a user meets it: composed config, Hydra overrides, and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.config import compose_config, study_hash
from conftest import run_cli, run_main, small_study_overrides


def test_cfg_job_prints_the_composed_config_and_runs_nothing(tmp_path):
    proc = run_cli("sweep", "--cfg", "job", "strategy=frozen", "data.sizes=[50,100]",
                   "trainer=cpu", "embeddings=word2vec", f"paths.results={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "study: movie_to_amazon" in out and "accelerator: cpu" in out
    assert "frozen:" in out and "full:" not in out and "kind: word2vec" in out
    assert "- 50\n  - 100" in out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("experiment, target, chosen", [
    ("movie_to_amazon", "amazon_reviews", ["scratch", "frozen", "full"]),
    ("movie_to_amazon_reference", "amazon_reviews", ["scratch", "frozen", "partial", "full"]),
    ("newsgroups_to_reuters", "reuters_r8", ["scratch", "frozen", "partial", "full"])])
def test_experiments_compose(experiment, target, chosen):
    cfg = compose_config([f"experiment={experiment}"])
    assert cfg.study == experiment and cfg.data.target.name == target
    assert list(cfg.strategy) == chosen and cfg.protocol.name == "budget"
    fixed = compose_config(["experiment=movie_to_amazon_reference_fixed_val"])
    assert fixed.protocol.name == "fixed_val" and list(fixed.strategy) == list(
        compose_config(["experiment=movie_to_amazon_reference"]).strategy)


def test_grid_settings_do_not_change_the_study_identity():
    base = study_hash(compose_config([]))
    assert study_hash(compose_config(["strategy=[full]", "data.sizes=[50]", "seeds=[3]",
                                      "trainer=cpu"])) == base
    assert study_hash(compose_config(["train.lr=0.01"])) != base


def _bad_vectors(tmp: Path) -> list[str]:
    path = tmp / "vectors.txt"
    path.write_text("this is a readme, not vectors\nsecond line\n")
    return ["embeddings=file", f"embeddings.path={path}"]


def _one_class(tmp: Path) -> list[str]:
    path = tmp / "one.csv"
    path.write_text("text,label\n" + "".join(f"text number {i},same\n" for i in range(50)))
    return [f"data.target.path={path}"]


def _csv(name: str, text: str, *extra: str):
    def make(tmp: Path) -> list[str]:
        path = tmp / name
        path.write_text(text)
        return [f"data.target.path={path}", *extra]
    return make


def _truncated_vectors(tmp: Path) -> list[str]:
    path = tmp / "cut.txt"  # the header promises 5 vectors of 16 numbers; the file stops early
    path.write_text("5 16\ngood " + " ".join(["0.1"] * 16) + "\nbad 0.1 0.2\n")
    return ["embeddings=file", f"embeddings.path={path}"]


def _results_under_a_file(tmp: Path) -> list[str]:
    blocker = tmp / "blocker"
    blocker.write_text("a file where the results folder should go")
    return [f"paths.results={blocker / 'results'}"]


BAD_INPUTS = {
    "unknown strategy": (lambda t: ["strategy=[scratch,magic]"], "strategy/magic"),
    "unknown experiment": (lambda t: ["experiment=nope"], "experiment/nope"),
    "typo in a key": (lambda t: ["data.sizez=[50]"], "Key 'sizez' is not in struct"),
    "negative size": (lambda t: ["data.sizes=[-5]"], "data.sizes contains -5"),
    "size over the pool": (lambda t: ["data.sizes=[50,5000]"], "larger than the training pool"),
    "non-numeric lr": (lambda t: ["train.lr=fast"], "train.lr='fast'"),
    "unknown LR schedule": (lambda t: ["train.schedule.name=cosine"],
                            "train.schedule.name='cosine'; use one of constant, slanted_triangular"),
    "schedule rising past the end": (lambda t: ["train.schedule.name=slanted_triangular",
                                                "train.schedule.cut_frac=1.5"],
                                     "train.schedule.cut_frac=1.5"),
    "missing CSV column": (lambda t: ["data.target.label_column=sentiment"],
                           "no label column 'sentiment'"),
    "vectors file that is not one": (_bad_vectors, "is not a vectors file"),
    "dimension mismatch": (lambda t: ["model.embedding_dim=32"], "dimension 16 but model.embedding_dim=32"),
    "single-class dataset": (_one_class, "single class"),
    "broken override syntax": (lambda t: ["data.sizes=[50"], "data.sizes=[50"),
    "non-numeric lr bound": (lambda t: ["hpo=tpe", "hpo.space.lr.low=tiny"],
                             "hpo.space.lr: low='tiny'"),
    "search space names no key": (lambda t: ["hpo=tpe", "+hpo.space.wd={path:train.wd,low:1,high:2}"],
                                  "'train.wd', which is not a config key"),
    "unknown pruner": (lambda t: ["hpo=tpe", "hpo.pruner.name=sometimes"],
                       "hpo.pruner.name='sometimes'"),
    "zero size": (lambda t: ["data.sizes=[0,50]"], "data.sizes contains 0"),
    "CSV without the text column": (lambda t: ["data.target.text_column=body"],
                                    "no text column 'body'"),
    "empty data file": (_csv("empty.csv", ""), "data file is empty"),
    "labels only in the test split": (
        _csv("split.csv", "text,label,part\n" + "".join(
            f"text {i},{'a' if i % 2 else 'b'},train\n" for i in range(300))
            + "".join(f"odd text {i},c,test\n" for i in range(10)), "data.target.split_column=part"),
        "labels ['c'] occur only in the test split"),
    "truncated vectors file": (_truncated_vectors, "is not a readable word2vec vectors file"),
    "results folder under a file": (_results_under_a_file, "is a file, not a folder"),
}


# Through the console command as a user types it (a new interpreter); the rest call the same
# entry point in this process, which refuses them identically without importing torch anew.
AS_A_USER = ("unknown strategy", "missing CSV column")


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, small_data, cache):
    make_extra, message = BAD_INPUTS[case]
    extra = make_extra(tmp_path)
    results = tmp_path / "results"
    base = small_study_overrides(small_data, results, cache)
    groups = {a.split("=")[0] for a in extra if "=" in a and "." not in a.split("=")[0]}
    # a group chosen anew replaces the base choice, and the base's keys of the old option
    base = [a for a in base if a.split("=")[0].split(".")[0] not in groups]
    proc = (run_cli if case in AS_A_USER else run_main)("sweep", *base, *extra)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert message in lines[0]
    assert "Traceback" not in proc.stderr
    assert not results.exists()


def test_report_reads_records_without_hydra(tmp_path, small_data, cache):
    args = small_study_overrides(small_data, tmp_path, cache)
    assert run_cli("sweep", *args, "strategy=[scratch]", "data.sizes=[20]").returncode == 0
    proc = run_cli("report", str(tmp_path / "small"), "--metric", "test_f1")
    assert proc.returncode == 0, proc.stderr
    assert "small: test_f1" in proc.stdout and "| scratch" in proc.stdout and "(2)" in proc.stdout
    report = tmp_path / "small" / "report"
    f1_table = (report / "test_f1" / "table.md").read_text()
    assert f1_table.startswith("small: test_f1")
    assert "seed noise and the test sample's own noise" in f1_table  # macro-F1 contributions
    assert run_cli("report", str(tmp_path / "small"), "--no-plots").returncode == 0
    # the accuracy report goes to report/, beside (not over) the F1 one
    assert (report / "table.md").read_text().startswith("small: test_acc")
    assert (report / "test_f1" / "table.md").read_text().startswith("small: test_f1")
    empty = run_cli("report", str(tmp_path / "nothing"))
    assert empty.returncode == 2 and "is not a study directory" in empty.stderr


def test_unknown_command_and_data_list():
    assert run_cli("frobnicate").returncode == 2
    proc = run_cli("data", "list")
    assert proc.returncode == 0 and "movie_reviews" in proc.stdout and "reuters_r8" in proc.stdout
