"""Data checked before training: delimiters, dropped rows, classes, duplicates, lengths, sizes;
and records files whose unreadable lines are reported instead of dropped silently."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.analysis import report
from bench.cli import main
from bench.data.inspect import format_report, inspect_data
from bench.data.sources import LabelledTexts, _read_vader, load_dataset, load_table
from bench.data.splits import Splits
from bench.errors import BenchError
from bench.folder import load_records
from conftest import write_sentiment_csv

ROWS = [("a fine, warm and funny film", "pos"), ("dull, slow, and far too long", "neg"),
        ("the cast, the music, the light: all great", "pos"), ("I want, badly, my money back", "neg"),
        ("lovely, simply lovely", "pos"), ("a mess, start to finish", "neg")]


def _write(path: Path, delimiter: str, rows=ROWS, header=("text", "label")) -> Path:
    lines = [delimiter.join(header)] + [delimiter.join(r) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _texts(texts: list[str], labels: list[int], name: str = "t") -> LabelledTexts:
    classes = [f"c{i}" for i in range(max(labels) + 1)]
    return LabelledTexts(name, texts, np.array(labels), classes)


def _splits(pool, val, test) -> Splits:
    return Splits(*(np.array(list(x), dtype=np.int64) for x in (pool, val, test)))


# --- delimiters and dropped rows ---------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt"])
def test_a_tab_separated_file_with_commas_in_its_texts_parses_right(tmp_path, suffix):
    # Read as comma-separated this file used to end in a TypeError traceback.
    data = load_table(_write(tmp_path / f"d{suffix}", "\t"), "text", "label")
    assert data.texts == [t for t, _ in ROWS]
    assert [data.classes[i] for i in data.labels] == [y for _, y in ROWS]
    assert data.dropped == {}


@pytest.mark.parametrize("delimiter, given", [(";", ";"), ("|", "|"), ("\t", "\\t"), ("\t", "tab")])
def test_an_explicit_delimiter_is_used(tmp_path, delimiter, given):
    path = _write(tmp_path / "d.csv", delimiter)
    data = load_dataset({"name": "file", "path": str(path), "text_column": "text",
                         "label_column": "label", "delimiter": given}, tmp_path)
    assert data.texts == [t for t, _ in ROWS] and data.dropped == {}


def test_a_wrong_delimiter_is_one_line_naming_the_fix(tmp_path):
    path = _write(tmp_path / "d.csv", "\t")
    with pytest.raises(BenchError) as err:
        load_table(path, "text", "label", delimiter=",")
    message = str(err.value)
    assert "\n" not in message and "comma-separated" in message and "delimiter" in message
    plain = _write(tmp_path / "p.csv", "\t", rows=[("good", "pos"), ("bad", "neg")])
    with pytest.raises(BenchError, match=r"no text column 'text' \(columns read comma-separated"):
        load_table(plain, "text", "label", delimiter=",")
    with pytest.raises(BenchError, match="not one character"):
        load_table(plain, "text", "label", delimiter=";;")


def test_dropped_rows_are_counted_by_reason(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\n"
                    "good one,pos\n"
                    ",pos\n"                 # empty text
                    "   ,neg\n"              # empty text
                    "no label,\n"            # missing label
                    "too,many,fields\n"      # unparseable
                    "too few\n"              # unparseable
                    "\n"                     # blank: not a row
                    "trailing comma,neg,\n"  # a trailing delimiter is fine
                    "bad one,neg\n")
    data = load_table(path, "text", "label")
    assert data.texts == ["good one", "trailing comma", "bad one"]
    assert data.dropped == {"empty text": 2, "missing label": 1,
                            "unparseable line (too many fields)": 1,
                            "unparseable line (too few fields)": 1}


def test_registry_parser_counts_ambiguous_and_unparseable_lines(tmp_path):
    path = tmp_path / "vader.txt"
    path.write_bytes(b"1\t1.5\tgreat\r\n2\t-0.2\tmeh\r\n3\t0.4\tok\r\n4\t-2.0\tawful\r\n"
                     b"garbage\r\n5\tn/a\tno rating\r\n\r\n6\t0\tzero\r\n")
    dropped: dict[str, int] = {}
    texts, labels = _read_vader(path, 0.5, dropped)
    assert texts == ["great", "awful"] and labels == ["positive", "negative"]
    assert dropped == {"ambiguous rating |r|<0.5": 3, "unparseable line": 2}


# --- inspection ---------------------------------------------------------------------------------

def test_duplicates_within_and_across_splits_and_with_the_source_are_counted():
    texts = ["Hello world", "second text", "third text", "dup", "DUP", "dup ",    # pool 0-5
             "other a", "other b", "other c", "other d",                          # pool 6-9
             "third   TEXT", "val b", "val c", "val d",                           # val 10-13
             " hello WORLD", "Second text", "same", "same", "from source", "t"]   # test 14-19
    labels = [0, 1] * 10
    target = _texts(texts, labels)
    splits = _splits(range(10), range(10, 14), range(14, 20))
    # "Val B" is in the source's test split: the source model never sees it, so not counted.
    source = _texts(["FROM source", "unrelated", "other b", "Val B"], [0, 1, 0, 1], "s")
    result = inspect_data(source, target, target_splits=splits, target_max_len=50,
                          source_splits=_splits([0, 1], [2], [3]), source_max_len=50)
    t = result.target
    assert t.duplicates == {"pool": 2, "val": 0, "test": 1}
    assert t.leaks == {"val": 1, "test": 2}
    assert t.conflicting == 2  # 'dup' and 'same' carry both labels
    assert result.source_overlap == {"pool": 1, "val": 0, "test": 1}
    warnings = " | ".join(result.warnings)
    assert "leakage: 2 of 6 test rows" in warnings and "leakage: 1 of 4 val rows" in warnings
    assert "pool 2, test 1" in warnings and "the source model has seen them" in warnings
    assert "source s trains on target t texts (pool 1, val 0, test 1 rows)" in warnings
    assert not result.errors


def test_a_class_too_rare_for_a_size_is_a_warning_and_a_size_beyond_the_pool_an_error():
    labels = [0] * 95 + [1] * 5 + [0] * 20 + [1] * 20  # pool: 95 + 5; val/test balanced
    target = _texts([f"text {i}" for i in range(len(labels))], labels)
    splits = _splits(range(100), list(range(100, 110)) + list(range(120, 130)),
                     list(range(110, 120)) + list(range(130, 140)))
    result = inspect_data(None, target, target_splits=splits, target_max_len=10,
                          sizes=[50, 60, "all"])
    assert result.sizes == [50, 60, 100]
    assert not result.errors
    (warning,) = [w for w in result.warnings if "would have about" in w]
    assert "at size 50 class 'c1' would have about 2.5 examples" in warning
    assert "use sizes >= 60" in warning
    too_big = inspect_data(None, target, target_splits=splits, target_max_len=10, sizes=[101])
    assert "size 101 is larger than the training pool (100 examples)" in too_big.errors[0]


def test_a_class_missing_from_the_pool_is_an_error():
    target = _texts(["a", "b", "c", "d", "e", "f"], [0, 0, 0, 1, 1, 2])
    result = inspect_data(None, target, target_splits=_splits([0, 1, 3], [4], [2, 5]),
                          target_max_len=10)
    assert any("class 'c2' has no example in the training pool" in e for e in result.errors)
    assert result.warnings == ["target t: class 'c0' has no example in the val split, which "
                               "cannot measure it",
                               "target t: class 'c1' has no example in the test split, which "
                               "cannot measure it",
                               "target t: class 'c2' has a single example, so the splits cannot "
                               "be stratified"]


def test_truncation_share_on_texts_of_known_length():
    texts = [" ".join(["word"] * n) for n in range(1, 11)] + ["-- ..."]  # 1..10 tokens, and 0
    target = _texts(texts, [0, 1] * 5 + [0])
    result = inspect_data(None, target, target_splits=_splits(range(11), [], []),
                          target_max_len=7)
    assert result.target.truncated == pytest.approx(3 / 11)
    assert result.target.empty == 1
    assert result.target.lengths == {"median": 5, "p95": 9, "max": 10}
    assert any("27.3% of texts are longer than max_len=7" in w for w in result.warnings)
    assert "max_len 7: 27.3% truncated, 1 empty" in format_report(result)
    fine = inspect_data(None, target, target_splits=_splits(range(11), [], []),
                        target_max_len=10)
    assert fine.target.truncated == 0 and not any("max_len" in w for w in fine.warnings)


def test_dropped_rows_become_a_warning_unless_the_dataset_defines_them():
    target = _texts(["a b", "c d", "e f", "g h", "i j", "k l"], [0, 1] * 3)
    target.dropped = {"empty text": 2, "ambiguous rating |r|<0.5": 40}
    result = inspect_data(None, target, target_splits=_splits([0, 1], [2, 3], [4, 5]),
                          target_max_len=5)
    assert result.warnings == ["target t: 2 rows dropped: 2 empty text"]
    assert "6 rows kept, 42 dropped (40 ambiguous rating |r|<0.5, 2 empty text)" \
        in format_report(result)


# --- the command --------------------------------------------------------------------------------

def test_inspect_cli_refuses_an_id_like_label_column_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRANSFER_BENCH_DEBUG", raising=False)
    path = write_sentiment_csv(tmp_path / "d.csv", 80, seed=0, row_id=lambda i: f"r{i:03d}")
    with pytest.raises(SystemExit) as exit_:
        main(["data", "inspect", "--file", str(path), "--label-column", "row_id",
              "--sizes", "20", "--cache", str(tmp_path / "cache")])
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "80 distinct values in 80 rows: it looks like an id" in err
    assert "errors: 1" in out


def test_inspect_cli_prints_the_report_and_passes_clean_data(tmp_path, capsys):
    rows = [(f"{w} film number {i}, truly {w}", y) for i in range(60)
            for w, y in (("good", "pos"), ("bad", "neg"))]
    path = _write(tmp_path / "d.tsv", "\t", rows=rows)
    main(["data", "inspect", "--file", str(path), "--sizes", "20", "84", "all",
          "--max-len", "5", "--cache", str(tmp_path / "cache")])
    out, err = capsys.readouterr()
    assert "target: d: 120 rows kept, 0 dropped" in out and "errors: none" in out
    assert "100.0% of texts are longer than max_len=5" in out  # a warning, exit status 0
    assert "target sizes checked: 20, 84, 86" in out


# --- records --------------------------------------------------------------------------------------

def _record(strategy: str, seed: int, acc: float) -> str:
    return json.dumps({"strategy": strategy, "size": 50, "seed": seed, "n_train": 50,
                       "metrics": {"test_acc": acc}})


def test_unreadable_record_lines_are_reported_but_a_torn_last_line_is_not(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    lines = [_record("scratch", 0, 0.6), "this is not json", _record("scratch", 1, 0.62),
             '{"strategy": "full", "size": 50', _record("full", 0, 0.7), _record("full", 1, 0.72),
             '{"strategy": "full", "si']  # torn by a killed writer: no newline
    (study / "records.jsonl").write_text("\n".join(lines))
    problems: list[str] = []
    records = load_records(study / "records.jsonl", problems)
    assert len(records) == 4
    assert problems == ["records.jsonl line 2: not JSON",
                        "records.jsonl line 4: cut off (an interrupted write)"]
    assert load_records(study / "records.jsonl") == records  # the old call still works
    _, _, notes = report.write(study)
    assert notes == problems
    (study / "records.jsonl").write_text("\n".join(lines) + "\n")  # complete: not torn
    problems.clear()
    load_records(study / "records.jsonl", problems)
    assert problems[-1] == "records.jsonl line 7: cut off (an interrupted write)"
