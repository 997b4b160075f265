"""The statistics behind every report: intervals over seeds and test examples, paired tests,
multiple comparisons, variance components, data efficiency.

One estimator serves every number a table shows. A cell's runs give a matrix ``Y`` of
per-example test scores (seeds x test examples: 1 where the prediction is right; for a
comparison, the difference of two strategies' matrices over matched seeds and the same
examples). Its mean estimates what a new seed scores on a new test set drawn like this one, so
the interval counts two kinds of noise, taken apart with a two-way random-effects ANOVA
(seeds crossed with examples; Bouthillier et al. 2021 on counting the test set's own noise):

* the seed part ``V_seed = max(MS_seed - MS_error, 0) / (S N)``, estimated from S seeds;
* the test-sample part ``V_test = MS_example / (S N)``, estimated from N examples.

The half-width is ``sqrt(t_{S-1}^2 V_seed + t_{N-1}^2 V_test)``: each part with the quantile
of its own degrees of freedom. With S = 3..10 seeds this covers at 94-96% where a
Satterthwaite t-interval covers 92-95% and a percentile bootstrap over seed means 57-85%
(simulated in ``tests/test_stats.py``; table in ``results/coverage.md``). The p-value is the
level at which the interval's edge reaches 0, so the CI excludes 0 exactly when p < alpha: CI,
p, verdict and tie mark can never disagree.
Macro-F1 is not a mean over examples, so its matrix holds each example's linearised
contribution instead (:func:`macro_f1_contributions`, the delta method): each row's mean is the
run's macro-F1 exactly, and the same estimator then counts the same two kinds of noise.
Records without per-example predictions (older studies) get the plain t-interval over seed
means, which counts seed noise only; the report says which was used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps

LEVEL = 0.95


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval and the two-sided p-value of "the mean is 0"."""

    mean: float
    low: float
    high: float
    p: float
    seeds: int
    examples: int          # test examples scored per seed; 0: seed means only
    var_seed: float        # variance of the mean from seed noise
    var_test: float        # ... from the test sample (0 when examples == 0)

    @property
    def counts_test_noise(self) -> bool:
        return self.examples > 0


def _nan(mean: float, seeds: int, examples: int) -> Estimate:
    return Estimate(mean, math.nan, math.nan, math.nan, seeds, examples, math.nan, math.nan)


def _halfwidth(alpha: float, var_seed: float, df_seed: int, var_test: float,
               df_test: int) -> float:
    q_seed = sps.t.isf(alpha / 2, df_seed) if var_seed > 0 else 0.0
    q_test = sps.t.isf(alpha / 2, df_test) if var_test > 0 else 0.0
    return math.hypot(q_seed * math.sqrt(var_seed), q_test * math.sqrt(var_test))


def _estimate(mean: float, var_seed: float, df_seed: int, var_test: float, df_test: int,
              seeds: int, examples: int, level: float) -> Estimate:
    if var_seed + var_test <= 0:  # no spread at all: a point; a pure shift is total evidence
        return Estimate(mean, mean, mean, 1.0 if mean == 0 else 0.0, seeds, examples,
                        var_seed, var_test)
    half = _halfwidth(1 - level, var_seed, df_seed, var_test, df_test)
    if mean == 0:
        p = 1.0
    else:  # the alpha at which the interval's edge touches 0 (the half-width falls with alpha)
        def edge(alpha: float) -> float:
            return _halfwidth(alpha, var_seed, df_seed, var_test, df_test) - abs(mean)

        p = 0.0 if edge(1e-300) < 0 else float(optimize.brentq(edge, 1e-300, 1.0, xtol=1e-14,
                                                                 rtol=1e-12))
    return Estimate(mean, mean - half, mean + half, p, seeds, examples, var_seed, var_test)


def seed_estimate(values: Sequence[float], level: float = LEVEL) -> Estimate:
    """The t-interval over per-seed values (seed noise only): for records without predictions."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return _nan(float(x.mean()) if len(x) else math.nan, len(x), 0)
    return _estimate(float(x.mean()), float(x.var(ddof=1)) / len(x), len(x) - 1, 0.0, 1,
                     len(x), 0, level)


def crossed_parts(y: np.ndarray) -> tuple[float, float, float]:
    """Mean squares of a seeds x examples matrix: (seed, example, error)."""
    s, n = y.shape
    grand, rows, cols = y.mean(), y.mean(axis=1), y.mean(axis=0)
    ms_seed = n * float(((rows - grand) ** 2).sum()) / (s - 1)
    ms_example = s * float(((cols - grand) ** 2).sum()) / (n - 1)
    residual = y - rows[:, None] - cols[None, :] + grand
    ms_error = float((residual ** 2).sum()) / ((s - 1) * (n - 1))
    return ms_seed, ms_example, ms_error


def crossed_estimate(y: np.ndarray, level: float = LEVEL) -> Estimate:
    """The interval of the mean of a seeds x test-examples matrix (see the module docstring)."""
    y = np.asarray(y, dtype=float)
    s, n = y.shape
    if s < 2 or n < 2:
        return _nan(float(y.mean()) if y.size else math.nan, s, n)
    ms_seed, ms_example, ms_error = crossed_parts(y)
    return _estimate(float(y.mean()), max(ms_seed - ms_error, 0.0) / (s * n), s - 1,
                     ms_example / (s * n), n - 1, s, n, level)


def macro_f1_contributions(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Each test example's linearised contribution to macro-F1; their mean is the macro-F1.

    Per class c, F1_c = 2 TP / (2 TP + FP + FN) is a ratio of two example means, a / b; its
    delta-method influence of example i is F1_c + (2 tp_i - F1_c d_i) / b with d_i the
    example's share of the denominator (1 for each of "is c" and "predicted c"). Averaged over
    the classes scikit-learn's macro average uses (those in ``truth`` or ``predicted``). Why:
    the seeds x examples matrix of these goes through :func:`crossed_estimate` as 0/1
    correctness does for accuracy, so a macro-F1 interval also counts the test sample's noise.
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    classes = np.union1d(truth, predicted)
    total = np.zeros(len(truth))
    for c in classes:
        is_c, said_c = truth == c, predicted == c
        tp = (is_c & said_c).astype(float)
        d = is_c.astype(float) + said_c
        b = d.mean()
        f1 = 2 * tp.mean() / b
        total += f1 + (2 * tp - f1 * d) / b
    return total / len(classes)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and is not counted)."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(~np.isnan(p))
    adjusted = np.full(len(p), np.nan)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (len(ok) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


# Parts of one run's score, in the order tables show them.
PARTS = ("seed", "source", "seed x source", "tuning", "test sample")


def variance_components(runs: pd.DataFrame, example_noise: float = 0.0) -> dict[str, float] | None:
    """Variance of one run's score, split by what varies between runs (method of moments).

    ``runs``: one row per run with ``seed``, ``source_seed`` (None/NaN: one source model),
    ``tuning`` and ``score``, and optionally ``test_var`` (the run's per-example score variance
    divided by the test size: what a fresh test set of the same size adds). The design must be
    balanced: every seed with every source model and tuning replicate; else None. Balanced
    random-effects ANOVA, seeds crossed with source models, tuning replicates nested in each
    (seed, source) pair; negative estimates are set to 0. A part the design cannot separate is
    NaN (one source model: no source part; one tuning: tuning noise stays in the seed part).

    ``example_noise``: the run x example interaction variance over the test size (the error
    mean square of the runs x examples matrix / N). Every run's score carries that much noise
    of its own on a fixed test set, so the innermost part holds it; it is taken out there,
    because ``test_var`` already counts it.
    """
    frame = runs.assign(source_seed=runs["source_seed"].fillna(-1))
    seeds = sorted(frame["seed"].unique())
    sources = sorted(frame["source_seed"].unique())
    tunings = sorted(frame["tuning"].unique())
    s, k, t = len(seeds), len(sources), len(tunings)
    if s < 2 or len(frame) != s * k * t or frame.duplicated(["seed", "source_seed", "tuning"]).any():
        return None
    y = (frame.set_index(["seed", "source_seed", "tuning"])["score"]
         .reindex(pd.MultiIndex.from_product([seeds, sources, tunings])).to_numpy()
         .reshape(s, k, t))
    grand = y.mean()
    cell = y.mean(axis=2)                       # (seed, source) means
    by_seed, by_source = y.mean(axis=(1, 2)), y.mean(axis=(0, 2))
    ms_e = float(((y - cell[:, :, None]) ** 2).sum()) / (s * k * (t - 1)) if t > 1 else math.nan
    out = dict.fromkeys(PARTS, math.nan)
    if t > 1:
        out["tuning"] = ms_e
    within = ms_e if t > 1 else 0.0             # what the next level up must subtract
    ms_a = k * t * float(((by_seed - grand) ** 2).sum()) / (s - 1)
    if k > 1:
        ms_b = s * t * float(((by_source - grand) ** 2).sum()) / (k - 1)
        inter = cell - by_seed[:, None] - by_source[None, :] + grand
        ms_ab = t * float((inter ** 2).sum()) / ((s - 1) * (k - 1))
        out["seed x source"] = max(ms_ab - within, 0.0) / t
        out["seed"] = max(ms_a - ms_ab, 0.0) / (k * t)
        out["source"] = max(ms_b - ms_ab, 0.0) / (s * t)
    else:
        out["seed"] = max(ms_a - within, 0.0) / t
    innermost = "tuning" if t > 1 else "seed x source" if k > 1 else "seed"
    out[innermost] = max(out[innermost] - example_noise, 0.0)
    if "test_var" in frame and frame["test_var"].notna().all():
        out["test sample"] = float(frame["test_var"].mean())
    return out


def labels_needed(sizes: Sequence[float], scores: Sequence[float], target: float) -> float | None:
    """Smallest size at which a learning curve reaches ``target``, interpolated on log size.

    ``sizes`` ascending. Returns None when the curve never reaches it within the measured sizes;
    a curve already at or above ``target`` at its first size returns that first size (the answer
    is "at most this many").
    """
    xs, ys = np.log(np.asarray(sizes, dtype=float)), np.asarray(scores, dtype=float)
    if ys[0] >= target:
        return float(sizes[0])
    for i in range(1, len(xs)):
        if ys[i] >= target:
            frac = (target - ys[i - 1]) / (ys[i] - ys[i - 1])
            return float(math.exp(xs[i - 1] + frac * (xs[i] - xs[i - 1])))
    return None


def expected_max(values: Sequence[float], k: int) -> float:
    """Expected best of ``k`` draws with replacement from ``values`` (Dodge et al., 2019).

    Valid only for i.i.d. trials (random search, no pruning): TPE's trials depend on each
    other, and a pruned trial's value is not what it would have reached.
    """
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    ranks = np.arange(1, n + 1)
    weights = (ranks / n) ** k - ((ranks - 1) / n) ** k
    return float(np.sum(weights * v))
