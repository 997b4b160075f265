"""Each transferability estimator against an independent computation of what it claims."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from bench.transferability import (estimate, h_score, knn_cv, leep, linear_cv, log_evidence,
                                   logme, logme_column, nce)


def test_log_evidence_is_the_gaussian_marginal_likelihood():
    rng = np.random.default_rng(0)
    for n, d in ((30, 5), (8, 12)):  # more examples than features, and fewer
        f, y = rng.normal(size=(n, d)), rng.normal(size=n)
        for alpha, beta in ((0.3, 2.0), (5.0, 0.1)):
            cov = f @ f.T / alpha + np.eye(n) / beta
            direct = stats.multivariate_normal(np.zeros(n), cov).logpdf(y)
            assert log_evidence(f, y, alpha, beta) == pytest.approx(direct, rel=1e-9)


def test_logme_finds_the_maximum_evidence_over_alpha_and_beta():
    """MacKay's fixed point against a grid over (log alpha, log beta) refined by Nelder-Mead on
    the direct multivariate-normal density."""
    rng = np.random.default_rng(1)
    n, d = 40, 6
    f = rng.normal(size=(n, d))
    y = (f @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0).astype(float)

    def minus(log_ab):
        a, b = np.exp(log_ab)
        return -stats.multivariate_normal(np.zeros(n), f @ f.T / a + np.eye(n) / b).logpdf(y)

    grid = [(la, lb) for la in np.linspace(-6, 6, 25) for lb in np.linspace(-6, 6, 25)]
    start = min(grid, key=minus)
    best = optimize.minimize(minus, start, method="Nelder-Mead",
                             options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
    value, alpha, beta = logme_column(f, y)
    assert value * n == pytest.approx(-best.fun, abs=1e-5)
    assert math.log(alpha) == pytest.approx(best.x[0], abs=1e-3)
    assert math.log(beta) == pytest.approx(best.x[1], abs=1e-3)


def test_logme_with_more_dimensions_than_examples_stays_finite_and_maximal():
    """n < d: the column is fitted exactly; the evidence approaches its supremum as beta grows
    (the fixed point is held at beta <= 1e8) and no grid point beats it."""
    rng = np.random.default_rng(6)
    n, d = 12, 30
    f = rng.normal(size=(n, d))
    y = (rng.random(n) > 0.5).astype(float)
    value, alpha, beta = logme_column(f, y)
    assert np.isfinite(value)
    grid = max(log_evidence(f, y, a, b) for a in np.logspace(-6, 6, 49)
               for b in np.logspace(-6, 8, 57))
    assert value * n >= grid - 1e-6


def test_logme_ranks_informative_features_above_noise():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 3, 300)
    good = np.eye(3)[labels] * 2 + rng.normal(size=(300, 3))
    noise = rng.normal(size=(300, 3))
    assert logme(good, labels) > logme(noise, labels)


def test_h_score_is_the_correlation_ratio_in_one_dimension():
    # class 0 at {0, 2}, class 1 at {4, 6}: between-class variance 4, total variance 5
    f = np.array([[0.0], [2.0], [4.0], [6.0]])
    assert h_score(f, np.array([0, 0, 1, 1])) == pytest.approx(0.8)


def test_h_score_of_gaussian_classes_approaches_its_closed_form():
    """Two equally likely classes at +-mu with identity noise: cov(f) = I + mu mu^T,
    cov(E[f|y]) = mu mu^T, so H = |mu|^2 / (1 + |mu|^2)."""
    rng = np.random.default_rng(3)
    mu = np.array([1.0, -0.5, 0.25])
    labels = rng.integers(0, 2, 200_000)
    f = np.where(labels[:, None] == 1, mu, -mu) + rng.normal(size=(len(labels), 3))
    truth = mu @ mu / (1 + mu @ mu)
    assert h_score(f, labels) == pytest.approx(truth, abs=0.005)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # nor on a rotation (shrinkage towards a
    assert h_score(f @ q, labels) == pytest.approx(h_score(f, labels), rel=1e-9)  # scaled I)


def test_h_score_stays_informative_with_fewer_labels_than_dimensions():
    """The plain sample covariance is singular for n < d and gives (classes - 1) whatever the
    features; the shrunk one still ranks class-separating features above noise."""
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 10)
    noise = rng.normal(size=(20, 50))
    signal = noise + 2.0 * labels[:, None] * (np.arange(50) < 5)
    assert h_score(signal, labels) > 2 * h_score(noise, labels)
    assert h_score(noise, labels) < 0.9


def test_leep_on_an_exact_empirical_joint():
    """Four examples, two source classes, written out by the definition."""
    theta = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 0, 1])
    joint = {(yy, z): sum(theta[i, z] for i in range(4) if y[i] == yy) / 4
             for yy in (0, 1) for z in (0, 1)}
    pz = {z: joint[(0, z)] + joint[(1, z)] for z in (0, 1)}
    expected = sum(math.log(sum(joint[(y[i], z)] / pz[z] * theta[i, z] for z in (0, 1)))
                   for i in range(4)) / 4
    assert leep(theta, y) == pytest.approx(expected, rel=1e-12)


def test_nce_textbook_cases_and_leep_on_hard_predictions():
    z = np.array([0, 0, 1, 1, 2, 2, 2, 0])
    hard = np.eye(3)[z]
    function_of_z = np.array([1, 1, 0, 0, 1, 1, 1, 1])  # y determined by z: H(Y|Z) = 0
    assert nce(hard, function_of_z) == pytest.approx(0.0)
    z2 = np.array([0, 0, 1, 1])
    independent = np.array([0, 1, 0, 1])  # y independent of z: -H(Y) = -log 2
    assert nce(np.eye(2)[z2], independent) == pytest.approx(-math.log(2))
    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    assert leep(hard, y) == pytest.approx(nce(hard, y))  # one-hot theta: LEEP = NCE


def test_cross_validated_probes_and_the_estimate_record():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 30)
    f = np.c_[labels * 3.0 + rng.normal(size=60), rng.normal(size=(60, 4))]
    assert linear_cv(f, labels) > 0.9 and knn_cv(f, labels) > 0.8  # Bayes rate 0.93
    assert linear_cv(rng.normal(size=(60, 5)), labels) < 0.8
    probs = np.c_[labels * 0.8 + 0.1, 0.9 - labels * 0.8]
    out = estimate(f, labels * 7 + 3, probs, ["logme", "h_score", "leep", "nce", "knn_cv"], 0)
    assert set(out) == {"logme", "h_score", "leep", "nce", "knn_cv"}
    assert all(v["seconds"] >= 0 for v in out.values())
    assert set(estimate(f, labels, None, ["leep", "logme"], 0)) == {"logme"}  # no source head


def test_cross_validated_probes_keep_a_class_rarer_than_the_folds():
    """Reuters R8 at 50 labels has classes with one example: the probes still give a value,
    and the fold holding that example, trained without its class, scores it wrong."""
    labels = np.r_[np.zeros(25, int), np.ones(24, int), 2]  # 50 examples, class 2 once
    f = np.eye(3)[labels] * 10.0 + np.random.default_rng(0).normal(0, 0.1, (50, 3))
    for probe in (linear_cv, knn_cv):
        wrong = 1 - probe(f, labels)
        # one of the three folds (16 or 17 examples) has one error: 1/3 of 1/17 .. 1/16
        assert 1 / 51 - 1e-9 <= wrong <= 1 / 48 + 1e-9, probe.__name__
    assert np.isnan(linear_cv(f[:8], labels[:8]))  # under 3 per fold: no estimate
