"""Check the data before any training: can these datasets, splits and sizes support the study?

A study on data that cannot support it still prints a table: a label column that is really an
id, a class too rare to appear in a 50-example subset, test texts that also sit in the training
pool. :func:`inspect_data` finds such problems in seconds; each finding is an *error* (the study
would be meaningless: stop) or a *warning* (suspicious: read it). Duplicates are exact matches
after lower-casing and collapsing whitespace.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from bench.data.sources import LabelledTexts, load_dataset
from bench.data.splits import Splits, fixed_splits
from bench.data.text import tokenize
from bench.errors import BenchError

ERROR, WARNING = "error", "warning"
SPLITS = ("pool", "val", "test")
TRUNCATION_WARN = 0.05       # a few long outliers are normal; more means max_len cuts the signal
INTENDED_DROPS = ("ambiguous rating", "rating 0")  # dropped by the dataset's own definition
SHOWN_CLASSES = 30


@dataclass(frozen=True)
class Finding:
    level: str    # ERROR or WARNING
    message: str  # one line


@dataclass
class TaskReport:
    """What one dataset looks like under its splits."""

    role: str                      # "source" or "target"
    name: str
    kept: int
    dropped: dict[str, int]        # reason -> rows the loader left out
    classes: list[str]
    counts: dict[str, list[int]]   # split -> examples per class
    duplicates: dict[str, int]     # split -> rows repeating an earlier text of the same split
    leaks: dict[str, int]          # "val"/"test" -> rows whose text is also in the pool
    conflicting: int               # texts that occur with more than one label
    max_len: int
    lengths: dict[str, int]        # "median", "p95", "max" tokens
    truncated: float               # share of texts longer than max_len
    empty: int                     # texts with no token at all


@dataclass
class Inspection:
    target: TaskReport
    source: TaskReport | None
    source_overlap: dict[str, int]  # target split -> rows whose text the source model trains on
    sizes: list[int]
    folds: int
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [f.message for f in self.findings if f.level == ERROR]

    @property
    def warnings(self) -> list[str]:
        return [f.message for f in self.findings if f.level == WARNING]

    def raise_for_errors(self) -> None:
        """One-line :class:`BenchError` naming the first error (and how many more) if any."""
        errors = self.errors
        if errors:
            more = f" (and {len(errors) - 1} more; `transfer-bench data inspect` lists them)" \
                if len(errors) > 1 else ""
            raise BenchError(f"the data cannot support this study: {errors[0]}{more}")


def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def inspect_data(source: LabelledTexts | None, target: LabelledTexts, *, target_splits: Splits,
                 target_max_len: int, source_splits: Splits | None = None,
                 source_max_len: int | None = None, sizes: Sequence[int | str] = (),
                 tokenizer: Callable[[str], list[str]] = tokenize, folds: int = 3) -> Inspection:
    """Inspect ``target`` (and ``source``) under their fixed splits and the requested sizes.

    ``sizes`` are target training-set sizes (``"all"`` = the whole pool); a size is an error when
    the expected count of a class in it is below ``folds`` (stratified cross-validation inside
    the subset would have a fold without that class).
    """
    findings: list[Finding] = []
    tgt = _task("target", target, target_splits, target_max_len, tokenizer, findings)
    src = None
    overlap: dict[str, int] = {}
    if source is not None:
        if source_splits is None or source_max_len is None:
            raise TypeError("inspect_data needs source_splits and source_max_len with a source")
        src = _task("source", source, source_splits, source_max_len, tokenizer, findings)
        overlap = _source_overlap(source, source_splits, target, target_splits, findings)
    resolved = [len(target_splits.pool) if s == "all" else int(s) for s in sizes]
    if not _id_like(target):
        _check_sizes(target, target_splits, resolved, folds, findings)
    return Inspection(tgt, src, overlap, resolved, folds, findings)


def _id_like(data: LabelledTexts) -> bool:
    """More classes than half the rows: an id or free-text column, not a label (two never are)."""
    return len(data.classes) > 2 and len(data.classes) * 2 > len(data)


def _task(role: str, data: LabelledTexts, splits: Splits, max_len: int,
          tokenizer: Callable[[str], list[str]], findings: list[Finding]) -> TaskReport:
    what = f"{role} {data.name}"

    def add(level: str, message: str) -> None:
        findings.append(Finding(level, f"{what}: {message}"))

    k = len(data.classes)
    index = {"pool": splits.pool, "val": splits.val, "test": splits.test}
    counts = {s: np.bincount(data.labels[i], minlength=k).tolist() for s, i in index.items()}
    if _id_like(data):
        add(ERROR, f"the label column has {k} distinct values in {len(data)} rows: it looks "
                   "like an id, not a class; choose the label column (--label-column, "
                   "data.*.label_column)")
    else:
        _class_findings(data, counts, add)

    odd = {r: n for r, n in data.dropped.items() if not r.startswith(INTENDED_DROPS)}
    if odd:
        add(WARNING, f"{sum(odd.values())} rows dropped: "
                     + ", ".join(f"{n} {r}" for r, n in sorted(odd.items())))

    norm = [normalise(t) for t in data.texts]
    dupes = {s: len(i) - len({norm[j] for j in i}) for s, i in index.items()}
    pool_texts = {norm[j] for j in splits.pool}
    leaks = {s: sum(norm[j] in pool_texts for j in index[s]) for s in ("val", "test")}
    labels_of: dict[str, set[int]] = {}
    for text, label in zip(norm, data.labels.tolist()):
        labels_of.setdefault(text, set()).add(label)
    conflicting = sum(len(v) > 1 for v in labels_of.values())
    if any(dupes.values()):
        add(WARNING, "duplicate texts within a split: "
                     + ", ".join(f"{s} {n}" for s, n in dupes.items() if n))
    for s, n in leaks.items():
        if n:
            add(WARNING, f"leakage: {n} of {len(index[s])} {s} rows repeat a text of the "
                         "training pool")
    if conflicting:
        add(WARNING, f"{conflicting} texts occur with different labels")

    lengths = np.array([len(tokenizer(t)) for t in data.texts])
    truncated = float((lengths > max_len).mean()) if len(lengths) else 0.0
    empty = int((lengths == 0).sum())
    p95 = int(np.percentile(lengths, 95)) if len(lengths) else 0
    if truncated > TRUNCATION_WARN:
        add(WARNING, f"{truncated:.1%} of texts are longer than max_len={max_len} tokens and "
                     f"get cut (95% are within {p95}); raise max_len if the end matters")
    if empty:
        add(WARNING, f"{empty} texts have no token the tokenizer keeps: the model sees padding")
    return TaskReport(role, data.name, len(data), dict(data.dropped), list(data.classes), counts,
                      dupes, leaks, conflicting, max_len,
                      {"median": int(np.median(lengths)) if len(lengths) else 0, "p95": p95,
                       "max": int(lengths.max()) if len(lengths) else 0},
                      truncated, empty)


def _class_findings(data: LabelledTexts, counts: dict[str, list[int]],
                    add: Callable[[str, str], None]) -> None:
    total = np.bincount(data.labels, minlength=len(data.classes))

    def names(where: list[int]) -> str:
        return ", ".join(repr(data.classes[c]) for c in where)

    unlearnable = [c for c, n in enumerate(counts["pool"]) if n == 0]
    if unlearnable:
        add(ERROR, f"class {names(unlearnable)} has no example in the training pool (too rare "
                   "for the splits); drop or merge it, or add data")
    for split in ("val", "test"):
        missing = [c for c, n in enumerate(counts[split]) if n == 0 and c not in unlearnable]
        if missing:
            add(WARNING, f"class {names(missing)} has no example in the {split} split, which "
                         "cannot measure it")
    single = [c for c, n in enumerate(total) if n < 2]
    if single:
        add(WARNING, f"class {names(single)} has a single example, so the splits cannot be "
                     "stratified")


def _source_overlap(source: LabelledTexts, source_splits: Splits, target: LabelledTexts,
                    splits: Splits, findings: list[Finding]) -> dict[str, int]:
    """Target rows whose text the source model fits or selects on (its pool and val split).

    Why not every source text: a source that shares a corpus with the target (Reuters R52
    holds all of R8) has the target's test texts in its own test split, which the source
    model never sees; counting them would cry wolf, and would hide the rows that matter.
    """
    seen = {normalise(source.texts[i]) for part in (source_splits.pool, source_splits.val)
            for i in part}
    index = {"pool": splits.pool, "val": splits.val, "test": splits.test}
    overlap = {s: sum(normalise(target.texts[j]) in seen for j in i) for s, i in index.items()}
    if any(overlap.values()):
        findings.append(Finding(WARNING, f"source {source.name} trains on target {target.name} "
                                f"texts (pool {overlap['pool']}, val {overlap['val']}, test "
                                f"{overlap['test']} rows): the source model has seen them, "
                                "with the source's labels"))
    return overlap


def _check_sizes(data: LabelledTexts, splits: Splits, sizes: list[int], folds: int,
                 findings: list[Finding]) -> None:
    pool = len(splits.pool)
    counts = np.bincount(data.labels[splits.pool], minlength=len(data.classes))
    present = [c for c in range(len(counts)) if counts[c] > 0]
    for n in sizes:
        if n < 1 or n > pool:
            findings.append(Finding(ERROR, f"target {data.name}: size {n} is larger than the "
                                    f"training pool ({pool} examples); use at most {pool} or "
                                    "'all'" if n > pool else f"target {data.name}: size {n} "
                                    "must be at least 1"))
            continue
        # Integer form of n * share < folds: the expected count of the class in the subset.
        rare = [c for c in present if n * counts[c] < folds * pool]
        if not rare:
            continue
        c = min(rare, key=lambda c: counts[c])
        need = -(-folds * pool // int(counts[c]))
        fix = f"use sizes >= {need}" if need <= pool else "the pool cannot support it at any size"
        more = f" ({len(rare) - 1} more classes too)" if len(rare) > 1 else ""
        # A warning, not an error: few-shot studies of imbalanced tasks (Reuters R8 at 50
        # labels) are legitimate; such a class is missing from some folds or from the subset.
        findings.append(Finding(WARNING, f"target {data.name}: at size {n} class "
                                f"{data.classes[c]!r} would have about {n * counts[c] / pool:.1f}"
                                f" examples{more}; stratified {folds}-fold cross-validation "
                                f"needs {folds} per class to see it in every fold: {fix}"))


def inspect_configs(source_cfg: Mapping[str, Any] | None, target_cfg: Mapping[str, Any],
                    sizes: Sequence[int | str], cache: Path, split_seed: int = 0,
                    folds: int = 3) -> Inspection:
    """Load and split datasets from their ``conf/dataset/*.yaml`` nodes, then inspect them."""
    def load(cfg: Mapping[str, Any]) -> tuple[LabelledTexts, Splits]:
        data = load_dataset(cfg, cache)
        return data, fixed_splits(data.labels, cfg["test_size"], cfg["val_size"], split_seed,
                                  data.split, data.name)

    target, target_splits = load(target_cfg)
    source = source_splits = None
    if source_cfg is not None:
        source, source_splits = load(source_cfg)
    return inspect_data(source, target, target_splits=target_splits,
                        target_max_len=int(target_cfg["max_len"]), source_splits=source_splits,
                        source_max_len=None if source_cfg is None else int(source_cfg["max_len"]),
                        sizes=sizes, folds=folds)


def format_report(result: Inspection) -> str:
    """The inspection as plain text: per dataset, then sizes, errors and warnings."""
    lines: list[str] = []
    for task in (result.source, result.target):
        if task is not None:
            lines += _format_task(task) + [""]
    if result.source is not None:
        o = result.source_overlap
        lines.append(f"target rows whose text the source model trains on: pool {o['pool']}, "
                     f"val {o['val']}, test {o['test']}")
    if result.sizes:
        lines.append(f"target sizes checked: {', '.join(map(str, result.sizes))} "
                     f"(at least {result.folds} expected per class)")
    for title, items in (("errors", result.errors), ("warnings", result.warnings)):
        lines.append(f"{title}: {len(items) or 'none'}")
        lines += [f"  - {m}" for m in items]
    return "\n".join(lines)


def _format_task(t: TaskReport) -> list[str]:
    dropped = sum(t.dropped.values())
    why = f" ({', '.join(f'{n} {r}' for r, n in sorted(t.dropped.items()))})" if dropped else ""
    lines = [f"{t.role}: {t.name}: {t.kept} rows kept, {dropped} dropped{why}"]
    width = max([5, *(len(c) for c in t.classes[:SHOWN_CLASSES])])
    lines.append(f"  {'class':<{width}} " + " ".join(f"{s:>7}" for s in SPLITS))
    for c, name in enumerate(t.classes[:SHOWN_CLASSES]):
        lines.append(f"  {name:<{width}} " + " ".join(f"{t.counts[s][c]:>7}" for s in SPLITS))
    if len(t.classes) > SHOWN_CLASSES:
        lines.append(f"  ... {len(t.classes) - SHOWN_CLASSES} more classes")
    lines.append(f"  {'all':<{width}} " + " ".join(f"{sum(t.counts[s]):>7}" for s in SPLITS))
    lines.append("  duplicate texts within a split: "
                 + ", ".join(f"{s} {t.duplicates[s]}" for s in SPLITS)
                 + f"; also in the pool: val {t.leaks['val']}, test {t.leaks['test']}"
                 + f"; with different labels: {t.conflicting}")
    lines.append(f"  tokens per text: median {t.lengths['median']}, 95% {t.lengths['p95']}, "
                 f"max {t.lengths['max']}; max_len {t.max_len}: {t.truncated:.1%} truncated, "
                 f"{t.empty} empty")
    return lines
