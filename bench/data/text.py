"""Text -> token ids: tokeniser, vocabulary from the data, and padded id tensors (cached)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch

from bench.cache import cached, stable_hash

PAD, UNK = "<pad>", "<unk>"
_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z]+)?|[!?]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (keeping contractions like ``don't``) plus ``!`` and ``?``."""
    return _TOKEN.findall(text.lower())


@dataclass(frozen=True)
class Vocab:
    """Index 0 is padding, 1 unknown; the rest in order of frequency, ties alphabetically."""

    words: tuple[str, ...]

    @classmethod
    def build(cls, corpora: Iterable[Sequence[str]], min_freq: int = 1) -> "Vocab":
        counts: Counter[str] = Counter()
        for texts in corpora:
            for text in texts:
                counts.update(tokenize(text))
        kept = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        return cls((PAD, UNK, *kept))

    def __len__(self) -> int:
        return len(self.words)

    @property
    def index(self) -> dict[str, int]:
        return {w: i for i, w in enumerate(self.words)}

    @property
    def digest(self) -> str:
        return stable_hash(self.words)


def tensorize(texts: Sequence[str], vocab: Vocab, max_len: int, min_len: int = 1) -> torch.Tensor:
    """Padded id matrix ``[len(texts), L]``; ``L`` is the longest text, capped at ``max_len``.

    Models that need a minimum width (a convolution window) pad for themselves.
    """
    index = vocab.index
    rows = [[index.get(t, 1) for t in tokenize(text)][:max_len] for text in texts]
    width = max(min_len, max((len(r) for r in rows), default=0))
    out = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def cached_tensorize(texts: Sequence[str], vocab: Vocab, max_len: int, cache: Path,
                     label: str) -> torch.Tensor:
    """:func:`tensorize` once per (texts, vocab, max_len); later runs load the tensor."""
    key = stable_hash([stable_hash(list(texts)), vocab.digest, max_len])
    path = cache / "tensors" / f"{label}-{key}.pt"
    return cached(path, lambda: tensorize(texts, vocab, max_len),
                  lambda t, p: torch.save(t, p), lambda p: _load_ids(p, len(texts)))


def _load_ids(path: Path, rows: int) -> torch.Tensor:
    ids = torch.load(path, weights_only=True)
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != rows:
        raise ValueError(f"cached tensor {path} has the wrong shape")
    return ids

