"""The statistics module against answers known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bench.stats import bootstrap_ci, expected_max, holm, labels_needed, paired_t_pvalue


def test_bootstrap_ci_of_a_constant_is_a_point():
    assert bootstrap_ci([0.7] * 5) == (0.7, 0.7)
    assert bootstrap_ci([0.3]) == (0.3, 0.3)


def test_bootstrap_ci_of_a_large_normal_sample_matches_the_analytic_interval():
    x = np.random.default_rng(1).normal(10.0, 2.0, size=2000)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(len(x))
    low, high = bootstrap_ci(x, resamples=4000)
    assert low == pytest.approx(x.mean() - half, abs=0.02)
    assert high == pytest.approx(x.mean() + half, abs=0.02)


def test_bootstrap_ci_is_seeded_and_contains_the_mean():
    x = [0.61, 0.66, 0.70, 0.64, 0.69]
    assert bootstrap_ci(x) == bootstrap_ci(x)
    low, high = bootstrap_ci(x)
    assert low < np.mean(x) < high and min(x) <= low and high <= max(x)


def test_paired_test_on_identical_arrays_is_not_significant():
    a = [0.61, 0.66, 0.70, 0.64, 0.69]
    assert paired_t_pvalue(a, a) == 1.0


def test_paired_test_finds_a_consistent_shift_and_ignores_noise():
    rng = np.random.default_rng(0)
    base = rng.normal(0.65, 0.03, size=5)
    shifted = base + 0.05 + rng.normal(0, 0.005, size=5)
    assert paired_t_pvalue(shifted, base) < 0.001
    assert paired_t_pvalue(base + 0.05, base) == 0.0  # exact shift, zero spread
    noise = base + rng.normal(0, 0.03, size=5)
    assert paired_t_pvalue(noise, base) > 0.05
    # the same number scipy gives in the regular case
    assert paired_t_pvalue(shifted, base) == pytest.approx(sps.ttest_rel(shifted, base).pvalue)


def test_holm_matches_the_textbook_example():
    # p sorted 0.01, 0.02, 0.03, 0.04 with m=4: 0.04, 0.06, 0.06, 0.06
    assert holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    adjusted = holm([0.5, math.nan])
    assert adjusted[0] == 0.5 and math.isnan(adjusted[1])


def test_labels_needed_interpolates_on_log_size():
    sizes, scores = [50, 200, 800], [0.60, 0.70, 0.80]
    assert labels_needed(sizes, scores, 0.70) == pytest.approx(200)
    assert labels_needed(sizes, scores, 0.65) == pytest.approx(100)  # geometric midpoint
    assert labels_needed(sizes, scores, 0.85) is None  # never reached: "more than measured"
    assert labels_needed(sizes, scores, 0.55) == 50


def test_expected_max_is_the_mean_for_one_draw_and_tends_to_the_max():
    v = [0.5, 0.6, 0.9]
    assert expected_max(v, 1) == pytest.approx(np.mean(v))
    assert expected_max(v, 2) == pytest.approx((1 * 0.5 + 3 * 0.6 + 5 * 0.9) / 9)
    assert expected_max(v, 200) == pytest.approx(0.9)
