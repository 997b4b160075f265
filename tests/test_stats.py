"""The statistics module against truth: simulated coverage, closed forms, textbook values."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from scipy.special import expit

from scipy import optimize

from bench.analysis.stats import (PARTS, crossed_estimate, crossed_parts, crossed_variance,
                         detectable, difference_interval, expected_max, holm, interval, labels_needed,
                         seed_estimate, variance_components, variance_parts)


def _percentile_bootstrap(x: np.ndarray) -> tuple[float, float]:
    """The method the report used before: a percentile bootstrap over seed means."""
    res = sps.bootstrap((x,), np.mean, n_resamples=2000, method="percentile",
                        rng=np.random.default_rng(0))
    return res.confidence_interval.low, res.confidence_interval.high


def test_percentile_bootstrap_over_five_seeds_under_covers_and_the_t_interval_does_not():
    rng = np.random.default_rng(7)
    reps, old, new = 1000, 0, 0
    for _ in range(reps):
        x = rng.normal(0.7, 0.02, size=5)
        low, high = _percentile_bootstrap(x)
        old += low <= 0.7 <= high
        est = seed_estimate(x)
        new += est.low <= 0.7 <= est.high
    assert old / reps < 0.90          # 0.83: why it was replaced
    assert 0.93 <= new / reps <= 0.97


X, W = np.polynomial.hermite_e.hermegauss(60)
W = W / W.sum()
SD_EXAMPLE = 1.5   # example difficulty, logit scale
GAP = 0.5          # a pair's second strategy: this much lower on the logit scale
ALPHA = 0.05


def _truth(mu: float, sd_seed: float, sd_example: float = SD_EXAMPLE) -> float:
    """E[sigmoid(mu + a + b)], a ~ N(0, sd_seed), b ~ N(0, sd_example): Gauss-Hermite."""
    return float(W @ expit(mu + sd_seed * X[:, None] + sd_example * X[None, :]) @ W)


def _mu(accuracy: float, sd_seed: float) -> float:
    """The logit location whose population mean accuracy is ``accuracy``."""
    return optimize.brentq(lambda m: _truth(m, sd_seed) - accuracy, -12, 12)


def _draw(rng, reps: int, seeds: int, sd_seed: float, n: int, accuracy: float,
          rho: float | None = None, gap: float = GAP) -> tuple[np.ndarray, float]:
    """``reps`` simulated studies, each on a freshly drawn test set: per-example correctness
    from a logistic model with a seed effect and an example (difficulty) effect. ``rho`` None:
    one strategy's matrices and its population mean accuracy. Else a pair: strategy B is
    ``gap`` lower on the logit scale, its seed effects independent of A's, its example
    difficulties correlated ``rho`` with A's; the difference matrices and the population
    gain."""
    mu = _mu(accuracy, sd_seed)
    b = rng.normal(0, SD_EXAMPLE, (reps, 1, n))
    ya = rng.random((reps, seeds, n)) < expit(mu + rng.normal(0, sd_seed, (reps, seeds, 1)) + b)
    if rho is None:
        return ya.astype(float), accuracy
    b2 = rho * b + math.sqrt(1 - rho ** 2) * rng.normal(0, SD_EXAMPLE, (reps, 1, n))
    yb = rng.random((reps, seeds, n)) < expit(mu - gap + rng.normal(0, sd_seed, (reps, seeds, 1))
                                              + b2)
    return ya.astype(float) - yb.astype(float), accuracy - _truth(mu - gap, sd_seed)


def previous_interval(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The estimator every report used before: seed part max(MS_seed - MS_error, 0)/(SN) with
    t_{S-1} (no widening when that is 0), test part MS_example/(SN) with t_{N-1}, quadratic
    combination, linear scale. Kept here to show where it fails."""
    s, n = y.shape[-2:]
    ms_seed, ms_example, ms_error = crossed_parts(y)
    v_seed, v_test = np.maximum(ms_seed - ms_error, 0) / (s * n), ms_example / (s * n)
    q_seed = np.where(v_seed > 0, sps.t.isf(ALPHA / 2, s - 1), 0.0)
    half = np.hypot(q_seed * np.sqrt(v_seed), sps.t.isf(ALPHA / 2, n - 1) * np.sqrt(v_test))
    m = y.mean(axis=(-2, -1))
    return m - half, m + half


def report_interval(y: np.ndarray, bounded: bool) -> tuple[np.ndarray, np.ndarray]:
    """What every table uses: :func:`crossed_estimate`'s parts and interval, on a stack."""
    s, n = y.shape[-2:]
    mean, v_seed, v_test = crossed_variance(y)
    return interval(mean, v_seed, s - 1, v_test, n - 1, bounded=bounded, examples=n)


SEED_SPREADS, TEST_SIZES, ACCURACIES, RHOS = (0.0, 0.2, 0.5, 1.0), (50, 200, 1000), \
    (0.6, 0.85, 0.96), (1.0, 0.7)
REPS = 1000
# 1,000 studies per setting: a true coverage of 0.95 is read with a Monte-Carlo sd of 0.007.
SLACK = 2 * math.sqrt(0.95 * 0.05 / REPS)


def coverage_grid(seeds: int, kind: str, reps: int = REPS) -> list[dict]:
    """Coverage of the report's interval and of the previous one over the issue's grid."""
    rng = np.random.default_rng({"mean": 1, "pair": 2}[kind] * 100 + seeds)
    rows = []
    for sd_seed in SEED_SPREADS:
        for n in TEST_SIZES:
            for accuracy in ACCURACIES:
                for rho in ((None,) if kind == "mean" else RHOS):
                    y, truth = _draw(rng, reps, seeds, sd_seed, n, accuracy, rho)
                    got = {}
                    for name, (low, high) in (("report", report_interval(y, kind == "mean")),
                                              ("previous", previous_interval(y))):
                        got[name] = float(np.mean((low <= truth) & (truth <= high)))
                        if name == "report" and kind == "mean":
                            assert (low >= 0).all() and (high <= 1).all()
                    rows.append({"kind": kind, "seeds": seeds, "seed sd": sd_seed, "N": n,
                                 "accuracy": accuracy, "rho": rho, **got})
    return rows


@pytest.mark.parametrize("kind", ["mean", "pair"])
@pytest.mark.parametrize("seeds", [3, 5, 10])
def test_interval_covers_at_three_to_ten_seeds_near_the_ceiling_and_on_small_test_sets(seeds, kind):
    """The report's interval covers [0.93, 0.97] of the time (within two Monte-Carlo sds) in
    every setting: seed spread 0-1.0, N = 50-1,000, accuracy 0.6-0.96, for a cell's mean and
    for paired differences with example correlation 1.0 and 0.7; never outside [0, 1] for a
    mean. The previous estimator misses this window at 3 seeds (paired differences, 0.90-0.92)
    and near the ceiling (means, 0.84-0.89)."""
    rows = coverage_grid(seeds, kind)
    bad = [r for r in rows if not 0.93 - SLACK <= r["report"] <= 0.97 + SLACK]
    assert not bad, bad
    assert 0.94 <= np.mean([r["report"] for r in rows]) <= 0.965
    if seeds == 3 or kind == "mean":  # where the previous estimator failed
        assert min(r["previous"] for r in rows) < 0.93 - SLACK


def test_crossed_estimate_is_the_stacked_interval_and_stays_in_range():
    rng = np.random.default_rng(9)
    y, _ = _draw(rng, 5, 3, 0.5, 60, 0.96)
    low, high = report_interval(y, bounded=True)
    for i in range(5):
        est = crossed_estimate(y[i], bounded=True)
        assert (est.low, est.high) == pytest.approx((low[i], high[i]), abs=1e-12)
        assert 0 <= est.low <= est.mean <= est.high <= 1 and math.isnan(est.p)
    # All right: no spread to measure, so the Clopper-Pearson bound of N of N right.
    est = crossed_estimate(np.ones((3, 50)), bounded=True)
    assert (est.low, est.high) == pytest.approx((0.025 ** (1 / 50), 1.0))
    assert est.high - est.low > 0.05
    est = crossed_estimate(np.zeros((3, 50)), bounded=True)
    assert (est.low, est.high) == pytest.approx((0.0, 1 - 0.025 ** (1 / 50)))
    # Identical predictions everywhere: the difference is bounded by the discordance rate.
    est = crossed_estimate(np.zeros((3, 50)))
    assert est.p == 1.0 and est.low == pytest.approx(-(1 - 0.025 ** (1 / 50)))


def test_detectable_difference_is_detected_with_the_stated_power():
    """The smallest detectable difference printed under a table: a true gap of that size is
    found at the stated level about 80% of the time (3 seeds, N = 200, Holm's first step over
    8 comparisons)."""
    rng = np.random.default_rng(21)
    seeds, n, sd_seed, level = 3, 200, 0.3, ALPHA / 8
    y, _ = _draw(rng, 300, seeds, sd_seed, n, 0.8, rho=0.8, gap=0.0)
    # The report pools a size's comparisons: the mean of their variance parts.
    parts = np.array([crossed_variance(d)[1:] for d in y]).mean(axis=0)
    mdd = detectable(parts[0], seeds - 1, parts[1], n - 1, level)
    gap = optimize.brentq(lambda g: 0.8 - _truth(_mu(0.8, sd_seed) - g, sd_seed) - mdd, 0, 5)
    y, truth = _draw(rng, 1000, seeds, sd_seed, n, 0.8, rho=0.8, gap=gap)
    assert truth == pytest.approx(mdd, rel=1e-6)
    power = np.mean([crossed_estimate(d).p < level for d in y])
    assert 0.7 <= power <= 0.9, (mdd, power)


def test_variance_component_intervals_cover():
    """The modified large-sample interval of a seed component (3 seeds x 3 tuning replicates)
    and the exact one of the tuning component cover at about 95%."""
    rng = np.random.default_rng(4)
    hits = {"seed": 0, "tuning": 0}
    reps, sd_seed, sd_tuning = 1000, 0.02, 0.015
    for _ in range(reps):
        a = rng.normal(0, sd_seed, 3)
        rows = [{"seed": i, "source_seed": None, "tuning": r,
                 "score": 0.7 + a[i] + rng.normal(0, sd_tuning)} for i in range(3) for r in range(3)]
        parts = variance_parts(pd.DataFrame(rows))
        hits["seed"] += parts["seed"].low <= sd_seed ** 2 <= parts["seed"].high
        hits["tuning"] += parts["tuning"].low <= sd_tuning ** 2 <= parts["tuning"].high
        assert parts["seed"].df == 2 and parts["tuning"].df == 6
    assert 0.93 <= hits["seed"] / reps <= 0.985, hits
    assert 0.93 <= hits["tuning"] / reps <= 0.97, hits


def test_difference_interval_reduces_to_the_chi_square_interval():
    low, high = difference_interval(1.0, 2.0, 7, 0.0, 0.0, 1)
    assert (low, high) == pytest.approx((2.0 * 7 / sps.chi2.isf(0.025, 7),
                                         2.0 * 7 / sps.chi2.ppf(0.025, 7)))


def test_ci_and_p_value_agree_at_every_level():
    rng = np.random.default_rng(3)
    for _ in range(30):
        y = (rng.random((4, 200)) < 0.55).astype(float) - (rng.random((4, 200)) < 0.5)
        est = crossed_estimate(y)
        assert (est.low > 0 or est.high < 0) == (est.p < 0.05)
        for level in (0.8, 0.99):  # the p-value is where the edge of the interval meets 0
            other = crossed_estimate(y, level=level)
            assert (other.low > 0 or other.high < 0) == (est.p < 1 - level)


def test_seed_estimate_is_the_textbook_t_interval_and_t_test():
    x = np.array([0.61, 0.66, 0.70, 0.64, 0.69])
    est = seed_estimate(x)
    half = sps.t.ppf(0.975, 4) * x.std(ddof=1) / math.sqrt(5)
    assert (est.low, est.high) == pytest.approx((x.mean() - half, x.mean() + half), abs=1e-12)
    d = np.array([0.02, 0.05, -0.01, 0.03, 0.04])
    assert seed_estimate(d).p == pytest.approx(sps.ttest_1samp(d, 0).pvalue, rel=1e-8)


def test_crossed_estimate_reduces_to_known_cases():
    rng = np.random.default_rng(5)
    # One effect only per row: rows constant across examples -> seed noise only, t over rows.
    rows = rng.normal(0.7, 0.03, 4)
    y = np.repeat(rows[:, None], 50, axis=1)
    assert (crossed_estimate(y).low, crossed_estimate(y).high) == pytest.approx(
        (seed_estimate(rows).low, seed_estimate(rows).high), abs=1e-12)
    # Identical rows -> test-sample noise only: the t-interval over the examples.
    col = (rng.random(300) < 0.7).astype(float)
    est = crossed_estimate(np.tile(col, (3, 1)))
    half = sps.t.ppf(0.975, 299) * col.std(ddof=1) / math.sqrt(300)
    assert (est.low, est.high) == pytest.approx((col.mean() - half, col.mean() + half), abs=1e-12)
    # No spread at all: a point; zero difference is no evidence, a constant shift is total.
    assert crossed_estimate(np.zeros((3, 10))).p == 1.0
    assert seed_estimate([0.1] * 4).p == 0.0
    assert math.isnan(seed_estimate([0.5]).low)  # one seed: no interval


def test_variance_components_recover_known_parts():
    """A balanced seeds x sources x tunings design with known variances (many seeds and
    sources, so the method-of-moments estimates are close)."""
    rng = np.random.default_rng(2)
    s, k, t = 60, 40, 3
    sd = {"seed": 0.02, "source": 0.01, "seed x source": 0.005, "tuning": 0.015}
    a, b = rng.normal(0, sd["seed"], s), rng.normal(0, sd["source"], k)
    ab = rng.normal(0, sd["seed x source"], (s, k))
    rows = [{"seed": i, "source_seed": j, "tuning": r,
             "score": 0.7 + a[i] + b[j] + ab[i, j] + rng.normal(0, sd["tuning"])}
            for i in range(s) for j in range(k) for r in range(t)]
    parts = parts_full = variance_components(pd.DataFrame(rows))
    for part, value in sd.items():
        assert math.sqrt(parts[part]) == pytest.approx(value, rel=0.15), part
    assert math.isnan(parts["test sample"])
    # One source model: no source part; tuning nested in seed.
    one = pd.DataFrame([r for r in rows if r["source_seed"] == 0]).assign(source_seed=None)
    parts = variance_components(one)
    assert math.isnan(parts["source"]) and math.isnan(parts["seed x source"])
    assert math.sqrt(parts["seed"]) == pytest.approx(math.hypot(sd["seed"], sd["seed x source"]),
                                                     rel=0.25)
    # Per-run noise of the test examples sits in the innermost part and is taken out there.
    noisy = variance_components(pd.DataFrame(rows), example_noise=1e-4)
    assert noisy["tuning"] == pytest.approx(max(parts_full["tuning"] - 1e-4, 0))
    assert noisy["seed"] == parts_full["seed"]
    # Unbalanced: refused rather than guessed.
    assert variance_components(pd.DataFrame(rows[:-1])) is None
    assert set(parts) == set(PARTS)


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


if __name__ == "__main__":  # results/coverage.md: python tests/test_stats.py > results/coverage.md
    print(f"Coverage of 95% intervals: {REPS:,} simulated studies per row, each on a freshly "
          f"drawn test set; per-example correctness from a logistic model with a seed effect "
          f"(sd below) and an example difficulty effect (sd {SD_EXAMPLE}), both on the logit "
          f"scale. mean: a cell's population mean accuracy; pair: the population gain of A over "
          f"B, B {GAP} lower on the logit scale, independent seed effects, example difficulties "
          f"correlated rho. report: the interval every table uses now; previous: the one before "
          f"(seed part truncated at MS_seed - MS_error, linear scale). Monte-Carlo sd of a "
          f"coverage near 0.95: {SLACK / 2:.3f}. Regenerate: `python tests/test_stats.py`.\n")
    print("| kind | seeds | seed sd | N | accuracy | rho | report | previous |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in ("mean", "pair"):
        for seeds in (3, 5, 10):
            for r in coverage_grid(seeds, kind):
                rho = "-" if r["rho"] is None else r["rho"]
                print(f"| {kind} | {seeds} | {r['seed sd']} | {r['N']} | {r['accuracy']} | {rho} "
                      f"| {r['report']:.3f} | {r['previous']:.3f} |")


def test_macro_f1_contributions_average_to_scikit_learns_macro_f1():
    from sklearn.metrics import f1_score

    from bench.analysis.stats import macro_f1_contributions

    rng = np.random.default_rng(3)
    for k, n in ((2, 40), (5, 300), (8, 120)):
        truth = rng.choice(k, size=n, p=np.r_[0.5, np.full(k - 1, 0.5 / (k - 1))])
        predicted = np.where(rng.random(n) < 0.6, truth, rng.integers(0, k + 1, n))  # k: unseen
        want = f1_score(truth, predicted, average="macro", zero_division=0)
        assert macro_f1_contributions(truth, predicted).mean() == pytest.approx(want, abs=1e-12)


def _population_macro_f1(priors: np.ndarray, right: np.ndarray) -> float:
    """Macro-F1 of a classifier on the population: class c predicted correctly with
    probability right[c], otherwise one of the other classes uniformly."""
    k = len(priors)
    joint = np.outer(priors * (1 - right) / (k - 1), np.ones(k))  # true x predicted
    np.fill_diagonal(joint, priors * right)
    tp = np.diag(joint)
    return float(np.mean(2 * tp / (2 * tp + (joint.sum(0) - tp) + (joint.sum(1) - tp))))


def test_macro_f1_interval_covers_the_population_value_and_seed_only_does_not():
    """Imbalanced classes (5% rarest), 5 seeds on one test set of 400, each example with a
    difficulty shared by every seed (logit sd 3), small seed effects: the crossed interval on the
    contributions covers E_seed[population macro-F1] at about 95%; the t-interval over the 5
    runs' macro-F1 (what a seed-only report shows) misses far more often."""
    from bench.analysis.stats import macro_f1_contributions

    priors = np.array([0.6, 0.25, 0.1, 0.05])
    base = np.array([1.5, 0.8, 0.5, 0.3])  # logit of a right answer per class
    k, seeds, n, reps, sd_seed, sd_example = 4, 5, 400, 300, 0.1, 3.0
    # The truth: the expectation over seed and example effects, by Gauss-Hermite quadrature.
    x, w = np.polynomial.hermite_e.hermegauss(40)
    w = w / w.sum()

    def right(shift: float) -> np.ndarray:
        return np.array([np.sum(w / (1 + np.exp(-(b + shift + sd_example * x)))) for b in base])

    truth_value = sum(wi * _population_macro_f1(priors, right(sd_seed * xi)) for xi, wi in zip(x, w))
    rng = np.random.default_rng(11)
    covered = {"crossed": 0, "seeds": 0}
    for _ in range(reps):
        labels = rng.choice(k, size=n, p=priors)
        z = rng.normal(0, sd_example, n)
        rows, scores = [], []
        for s in range(seeds):
            p_right = 1 / (1 + np.exp(-(base[labels] + rng.normal(0, sd_seed) + z)))
            other = (labels + rng.integers(1, k, n)) % k
            predicted = np.where(rng.random(n) < p_right, labels, other)
            rows.append(macro_f1_contributions(labels, predicted))
            scores.append(rows[-1].mean())
        for name, est in (("crossed", crossed_estimate(np.array(rows), bounded=True)),
                          ("seeds", seed_estimate(scores, bounded=True))):
            covered[name] += est.low <= truth_value <= est.high
    assert 0.92 <= covered["crossed"] / reps <= 0.985, covered  # measured: 0.967
    assert covered["seeds"] / reps < 0.8, covered  # measured: 0.65
