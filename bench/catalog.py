"""What exists to run (``transfer-bench ls``): datasets, models, strategies, experiments and
estimators, each with one line, read from the same places a sweep reads them (conf/ and the
registries), so the list cannot drift from what runs."""

from __future__ import annotations

import re
from pathlib import Path

from bench.errors import BenchError

KINDS = ("datasets", "models", "strategies", "experiments", "estimators")
_GROUP = {"datasets": "dataset", "models": "model", "strategies": "strategy",
          "experiments": "experiment"}
WIDTH = 96


def first_sentence(text: str, width: int = WIDTH) -> str:
    """The first sentence of ``text`` (one paragraph, joined), cut at a word near ``width``."""
    text = " ".join(text.split())
    for end in re.finditer(r"\.(\s|$)", text):  # not "et al." nor a 3-word fragment
        if end.start() >= 30 and not text[:end.start()].endswith((" al", " e.g", " i.e", " eq", " cf")):
            text = text[:end.start() + 1]
            break
    if len(text) > width:
        text = text[:width].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text


def yaml_description(path: Path) -> str:
    """The leading comment paragraph of a config file (Hydra's ``@package`` line skipped)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# @package"):
            continue
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    return first_sentence(" ".join(lines)) if lines else "(no description in the file)"


def entries(kind: str, conf: Path) -> list[tuple[str, str]]:
    """(name, one line) for each entry of ``kind``."""
    if kind not in KINDS:
        raise BenchError(f"ls {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "estimators":
        from bench.analysis import transferability as t

        table = {**t.FEATURE_ESTIMATORS, **t.PROBABILITY_ESTIMATORS, **t.CV_ESTIMATORS}
        return [(name, first_sentence((fn.__doc__ or "").strip().split("\n\n")[0]))
                for name, fn in table.items()]
    out = [(p.stem, yaml_description(p)) for p in sorted((conf / _GROUP[kind]).glob("*.yaml"))]
    if kind == "datasets":  # say where each comes from: registry package or a local file
        from bench.data.sources import REGISTRY

        out = [(name, about + (f" [{REGISTRY[name][0].spec}]" if name in REGISTRY else ""))
               for name, about in out]
    return out


def listing(kinds: list[str], conf: Path) -> str:
    blocks = []
    for kind in kinds:
        rows = entries(kind, conf)
        width = max(len(name) for name, _ in rows)
        usage = {"datasets": "dataset@data.target=NAME, dataset@data.source=NAME",
                 "models": "model=NAME", "strategies": "strategy=[NAME,...]",
                 "experiments": "experiment=NAME", "estimators": "transferability=[NAME,...]"}
        blocks.append(f"{kind} ({usage[kind]}):\n" + "\n".join(
            f"  {name:{width}}  {about}" for name, about in rows))
    return "\n\n".join(blocks)
