"""The harness verbs a user expects (``--help``, ``ls``, ``validate``) and the bad inputs that
used to slip past the up-front checks."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from conftest import REPO, run_cli, run_main, small_study_overrides


def one_line_error(proc, *expected: str) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_help_is_usage_text_with_every_command_and_an_example():
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: transfer-bench COMMAND")
    for command in ("sweep", "validate", "ls", "report", "reproduce", "data", "benchmark"):
        assert f"\n  {command} " in proc.stdout, command
    assert "examples:\n  transfer-bench " in proc.stdout and "``" not in proc.stdout
    one_line_error(run_main("sweeep"), "unknown command 'sweeep'")


def test_ls_lists_what_conf_and_the_registries_hold():
    proc = run_main("ls")
    assert proc.returncode == 0, proc.stderr
    for kind, folder in (("strategies", "strategy"), ("models", "model"),
                         ("experiments", "experiment"), ("datasets", "dataset")):
        names = sorted(p.stem for p in (REPO / "conf" / folder).glob("*.yaml"))
        section = proc.stdout.split(f"{kind} (")[1].split("\n\n")[0]
        listed = [line.split()[0] for line in section.splitlines()[1:]]
        assert listed == names, kind
        assert all(len(line.split(None, 1)) == 2 for line in section.splitlines()[1:]), kind
    assert "\n  logme " in proc.stdout and "\n  knn_cv " in proc.stdout
    only = run_main("ls", "strategies")
    assert only.stdout.startswith("strategies (") and "models (" not in only.stdout
    assert "LoRA (Hu et al. 2021)" in only.stdout  # "et al." does not end the sentence
    one_line_error(run_main("ls", "backbones"), "choose from datasets, models")


def test_validate_prints_each_jobs_cells_and_labels_and_writes_nothing(tmp_path):
    results = tmp_path / "results"
    proc = run_main("validate", "-m", "experiment=movie_to_amazon_reference,"
                    "movie_to_amazon_reference_fixed_val", f"paths.results={results}",
                    f"paths.cache={tmp_path / 'cache'}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "study movie_to_amazon_reference -> " in out and "(new)" in out
    assert "6 methods x 3 sizes x 5 seeds = 90 replicates; tuning 6 trials" in out
    assert "size 50: 50 target labels per replicate" in out  # budget: the n labels only
    assert "size 50: 50 + 500 validation = 550 target labels" in out  # fixed_val adds its split
    assert out.rstrip().endswith("valid: 2 job(s); nothing was written")
    assert not results.exists() and not (tmp_path / "cache").exists()
    committed = run_main("validate", "experiment=movie_to_amazon_reference")
    assert "(90 records so far: it resumes)" in committed.stdout
    one_line_error(run_main("validate", "data.sizes=[0]"), "data.sizes contains 0")


def test_validate_shows_a_resumed_studys_progress_per_method_and_size():
    """The committed MiniLM study, part-way: each (method, size) reads the replicates its
    records hold, and the compute line sums their tuning and final-fit seconds."""
    records = [json.loads(line) for line in
               (REPO / "results" / "movie_to_amazon_minilm" / "records.jsonl").read_text()
               .splitlines()]
    out = run_main("validate", "experiment=movie_to_amazon_minilm").stdout
    table = [line.split(None, 1) for line in out.splitlines() if line.startswith("    ")]
    assert table[0][0] == "method" and table[0][1].split() == ["n=50", "n=200", "n=1000"]
    cells = {name: re.findall(r"(\d+)/5", rest) for name, rest in table[1:]}
    assert list(cells)[:3] == ["scratch", "frozen", "partial"] and "majority" in cells
    for name, counts in cells.items():
        for size, shown in zip(("50", "200", "1000"), counts):
            expected = sum(r["strategy"] == name and str(r["size"]) == size for r in records)
            assert int(shown) == expected, (name, size)
    spent = sum((r["hpo"] or {}).get("seconds") or r["selection"]["seconds"] or 0
                for r in records) + sum(r["seconds"] or 0 for r in records)
    total = re.search(r"compute recorded: ([\d.]+) (h|min)", out)
    assert float(total[1]) == pytest.approx(spent / (3600 if total[2] == "h" else 60), abs=0.051)
    fresh = run_main("validate", "experiment=movie_to_amazon_minilm", "study=elsewhere")
    assert "(new)" in fresh.stdout and "progress" not in fresh.stdout


def test_hpo_none_with_trials_says_how_to_tune():
    one_line_error(run_main("validate", "hpo=none", "hpo.n_trials=6"),
                   "hpo=none: that group has no search space", "hpo=tpe")


def test_a_damaged_study_json_is_named_by_report_and_sweep(tmp_path):
    study = tmp_path / "movie_to_amazon_reference"
    shutil.copytree(REPO / "results" / study.name, study,
                    ignore=shutil.ignore_patterns("report", "reproductions"))
    (study / "study.json").write_text('{"config": ')
    before = (study / "records.jsonl").read_bytes()
    line = one_line_error(run_cli("report", str(study), "--no-plots"), "study.json",
                          "not readable JSON")
    assert "restore it" in line
    one_line_error(run_cli("validate", "experiment=movie_to_amazon_reference",
                           f"paths.results={tmp_path}"), "study.json", "not readable JSON")
    assert (study / "records.jsonl").read_bytes() == before and not (study / "report").exists()


def test_a_multirun_over_a_value_gives_each_job_its_own_study(small_data, tmp_path):
    """``sweep -m train.lr=...,...``: one study folder per value (named as Hydra's
    override_dirname), each with its own records; a one-seed cell reads "n/a: 1 seed"."""
    base = [o for o in small_study_overrides(small_data, tmp_path / "r", tmp_path / "c")
            if o != "study=small" and not o.startswith(("data.sizes", "seeds"))]
    proc = run_cli("sweep", "-m", *base, "train.lr=0.001,0.003", "strategy=[scratch]",
                   "data.sizes=[20]", "seeds=[0]", f"hydra.sweep.dir={tmp_path / 'multirun'}")
    assert proc.returncode == 0, proc.stderr
    studies = sorted(p.parent for p in (tmp_path / "r").glob("*/*/records.jsonl"))
    assert [p.name for p in studies] == ["train.lr=0.001", "train.lr=0.003"]
    for study in studies:
        records = [json.loads(line) for line in (study / "records.jsonl").read_text().splitlines()]
        assert {r["strategy"] for r in records} == {"scratch", "majority"}
        info = json.loads((study / "study.json").read_text())
        assert info["config"]["train"]["lr"] == float(study.name.split("=")[1])
        table = (study / "report" / "table.md").read_text()
        assert "nan" not in table and "[n/a: 1 seed]" in table


def test_a_one_seed_cell_of_a_running_study_is_neither_best_nor_tested(tmp_path):
    """The reference study with frozen's 50-label cell cut to seed 0 (as a resumed study has
    it mid-way): that cell reads "n/a: 1 seed" and the bold best is another cell."""
    study = tmp_path / "movie_to_amazon_reference"
    shutil.copytree(REPO / "results" / study.name, study,
                    ignore=shutil.ignore_patterns("report", "reproductions"))
    lines = (study / "records.jsonl").read_text().splitlines()
    kept = [line for line in lines if not (json.loads(line)["strategy"] == "frozen"
                                          and json.loads(line)["size"] == 50
                                          and json.loads(line)["seed"] != 0)]
    (study / "records.jsonl").write_text("\n".join(kept) + "\n")
    proc = run_cli("report", str(study), "--no-plots")
    assert proc.returncode == 0, proc.stderr
    row = next(r for r in (study / "report" / "table.md").read_text().splitlines()
               if r.startswith("| frozen "))
    cell = row.split("|")[2]
    assert "[n/a: 1 seed] (1)" in cell and "**" not in cell and "*" not in cell and "±" not in cell
    column = [r.split("|")[2] for r in (study / "report" / "table.md").read_text().splitlines()
              if r.startswith("| ") and "strategy" not in r]
    assert sum("**" in c for c in column) == 1


@pytest.mark.parametrize("override, group", [("strategy=[full,nope]", "strategy"),
                                             ("model=nope", "model"), ("logger=nope", "logger"),
                                             ("hpo=nope", "hpo"), ("protocol=nope", "protocol")])
def test_an_unknown_name_in_any_group_lists_the_valid_ones(override, group):
    line = one_line_error(run_main("validate", override), "nope")
    names = sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))
    assert all(name in line for name in names), line
