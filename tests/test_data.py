"""Loading, splitting and tensorising data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.data.sources import load_table
from bench.data.splits import fixed_splits, nested_order, training_subset
from bench.data.text import Vocab, cached_tensorize, tokenize, tensorize
from bench.errors import BenchError
from conftest import write_sentiment_csv


def test_tokenize_keeps_words_contractions_and_marks():
    assert tokenize("It's NOT good -- don't buy!!") == ["it's", "not", "good", "don't", "buy", "!", "!"]


def test_vocab_is_ordered_by_frequency_then_alphabet_with_pad_and_unk_first():
    vocab = Vocab.build([["b a b", "c b a"], ["d"]])
    assert vocab.words == ("<pad>", "<unk>", "b", "a", "c", "d")
    assert vocab.digest == Vocab.build([["b a b", "c b a"], ["d"]]).digest


def test_tensorize_pads_caps_and_maps_unknowns(tmp_path):
    vocab = Vocab.build([["a b c"]])
    ids = tensorize(["a b c d", "c", ""], vocab, max_len=3)
    assert ids.tolist() == [[2, 3, 4], [4, 0, 0], [0, 0, 0]]  # the model pads to its windows
    assert tensorize(["a " * 10], vocab, max_len=7).shape == (1, 7)
    assert tensorize(["d e"], vocab, max_len=7)[0, :2].tolist() == [1, 1]


def test_tensor_cache_is_reused_and_a_corrupt_file_rebuilt(tmp_path):
    vocab = Vocab.build([["a b c"]])
    first = cached_tensorize(["a b", "c"], vocab, 8, tmp_path, "t")
    (path,) = (tmp_path / "tensors").glob("t-*.pt")
    assert torch.equal(cached_tensorize(["a b", "c"], vocab, 8, tmp_path, "t"), first)
    path.write_bytes(b"garbage, not a tensor")
    assert torch.equal(cached_tensorize(["a b", "c"], vocab, 8, tmp_path, "t"), first)
    assert torch.equal(torch.load(path, weights_only=True), first)


def _labels(counts):
    return np.repeat(np.arange(len(counts)), counts)


def test_fixed_splits_are_stratified_disjoint_and_seed_fixed():
    labels = _labels([600, 300, 100])
    s = fixed_splits(labels, 200, 100, seed=0)
    assert len(s.test) == 200 and len(s.val) == 100 and len(s.pool) == 700
    assert not set(s.test) & set(s.val) and not set(s.pool) & (set(s.test) | set(s.val))
    assert np.bincount(labels[s.test]).tolist() == [120, 60, 20]
    again = fixed_splits(labels, 200, 100, seed=0)
    assert np.array_equal(s.test, again.test) and np.array_equal(s.val, again.val)
    assert not np.array_equal(s.test, fixed_splits(labels, 200, 100, seed=1).test)


def test_predefined_test_split_is_kept():
    labels = _labels([50, 50])
    split = np.array(["train"] * 80 + ["test"] * 20)
    s = fixed_splits(labels, 0.5, 10, seed=0, predefined=split)
    assert set(s.test) == set(range(80, 100)) and len(s.val) == 10 and len(s.pool) == 70


def test_training_subsets_are_nested_stratified_and_differ_by_seed():
    labels = _labels([700, 300])
    pool = np.arange(1000)
    small, large = (training_subset(labels, pool, n, seed=3) for n in (50, 200))
    assert set(small) <= set(large)
    assert abs(np.bincount(labels[small])[1] - 15) <= 1
    assert abs(np.bincount(labels[large])[1] - 60) <= 1
    assert set(training_subset(labels, pool, 50, seed=4)) != set(small)
    assert sorted(nested_order(labels, pool, 3)) == list(pool)
    with pytest.raises(BenchError, match="larger than the training pool"):
        training_subset(labels, pool, 1001, seed=0)


def test_csv_and_jsonl_loaders(tmp_path):
    csv_path = write_sentiment_csv(tmp_path / "d.csv", 30, seed=0,
                                   part=lambda i: "test" if i < 6 else "train")
    data = load_table(csv_path, "text", "label", "part")
    assert len(data) == 30 and data.classes == ["neg", "pos"]
    assert (data.split == "test").sum() == 6
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps({"t": f"text {i}", "y": i % 3}) for i in range(9)))
    data = load_table(jsonl, "t", "y")
    assert data.classes == ["0", "1", "2"] and data.labels.tolist()[:3] == [0, 1, 2]


def test_a_csv_with_a_long_document_is_read_whole(tmp_path):
    """A 200,000-character field is valid CSV (pandas reads it); the csv module's default
    limit (131,072) refused the file."""
    import csv

    import pandas as pd

    path = tmp_path / "long.csv"
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerow(["word " * 40_000, "pos"])
        writer.writerows([[f"short text {i}", "neg" if i % 2 else "pos"] for i in range(9)])
    assert len(pd.read_csv(path)["text"][0]) == 200_000  # valid by pandas' reading
    data = load_table(path, "text", "label")
    assert len(data) == 10 and len(data.texts[0]) >= 199_999


def test_a_numeric_label_column_is_compared_as_numbers(tmp_path):
    """1, 1.0 and 01 in one column are one class; 1.5 stays its own; words are left alone."""
    path = tmp_path / "n.csv"
    path.write_text("text,label\na,1\nb,1.0\nc,01\nd,0\ne,0.0\nf,1.5\n")
    data = load_table(path, "text", "label")
    assert data.classes == ["0", "1", "1.5"]
    assert data.labels.tolist() == [1, 1, 1, 0, 0, 2]
    words = tmp_path / "w.csv"
    words.write_text("text,label\na,1\nb,1.0\nc,one\n")
    assert load_table(words, "text", "label").classes == ["1", "1.0", "one"]


@pytest.mark.parametrize("content, args, message", [
    ("text,label\na,x\nb,y\n", ("body", "label"), "no text column 'body'"),
    ("text,label\na,x\nb,y\n", ("text", "y"), "no label column 'y'"),
    ("", ("text", "label"), "data file is empty"),
    ("text,label\n", ("text", "label"), "no data rows"),
    ("text,label\n ,x\n", ("text", "label"), "dataset 'd' is empty"),
    ("text,label\na,x\nb,x\n", ("text", "label"), "single class"),
    ("text,label,s\na,x,train\nb,y,test\n", ("text", "label", "s"), "only in the test split"),
    ("text,label,s\na,x,train\nb,y,dev\n", ("text", "label", "s"), "allowed: train, val, test"),
])
def test_bad_tables_are_named(tmp_path, content, args, message):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(BenchError, match=message):
        load_table(path, *args)


def _as_csv_reads(data):
    return ([data.texts[i] for i in range(len(data))], data.labels.tolist(), data.classes,
            None if data.split is None else data.split.tolist())


def test_parquet_and_a_datasets_folder_read_like_the_csv(tmp_path, monkeypatch):
    """The same rows as Parquet, as a ``save_to_disk`` Dataset and as a DatasetDict (its
    train / test parts are the split; ClassLabel ints read as their names) load exactly like
    the CSV, with the same checks."""
    import datasets
    import pandas as pd

    from bench.data.sources import HF_SPLIT_COLUMN

    csv_path = write_sentiment_csv(tmp_path / "d.csv", 40, seed=3,
                                   part=lambda i: "test" if i % 5 == 0 else "train")
    frame = pd.read_csv(csv_path)
    want = _as_csv_reads(load_table(csv_path, "text", "label", "part"))
    frame.to_parquet(tmp_path / "d.parquet")
    assert _as_csv_reads(load_table(tmp_path / "d.parquet", "text", "label", "part")) == want
    datasets.Dataset.from_pandas(frame).save_to_disk(str(tmp_path / "ds"))
    assert _as_csv_reads(load_table(tmp_path / "ds", "text", "label", "part")) == want
    classes = datasets.ClassLabel(names=["neg", "pos"])
    parts = {}
    for part, name in (("train", "train"), ("test", "test")):
        rows = frame[frame["part"] == part]
        parts[name] = datasets.Dataset.from_dict(
            {"text": rows["text"].tolist(), "label": [classes.str2int(v) for v in rows["label"]]},
            features=datasets.Features({"text": datasets.Value("string"), "label": classes}))
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "dd"))
    got = load_table(tmp_path / "dd", "text", "label")
    assert got.classes == ["neg", "pos"] and len(got) == 40
    assert sorted(zip(*_as_csv_reads(got)[:2])) == sorted(zip(*want[:2]))
    assert (got.split == "test").sum() == 8
    assert set(got.files) == {f"dd/{p.relative_to(tmp_path / 'dd')}"
                              for p in (tmp_path / "dd").rglob("*") if p.is_file()}
    # the same column checks, one line each
    with pytest.raises(BenchError, match=r"no text column 'body' \(columns: 'text', 'label', "):
        load_table(tmp_path / "d.parquet", "body", "label")
    with pytest.raises(BenchError, match=f"no split column 'part'.*{HF_SPLIT_COLUMN[:5]}"):
        load_table(tmp_path / "dd", "text", "label", "part")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(BenchError, match="cannot parse .*bad.parquet as Parquet"):
        load_table(tmp_path / "bad.parquet", "text", "label")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(BenchError, match="not a folder saved by datasets' save_to_disk"):
        load_table(tmp_path / "empty_dir", "text", "label")
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # the extra not installed
    with pytest.raises(BenchError, match=r"needs the datasets package \(pip install "):
        load_table(tmp_path / "ds", "text", "label")
