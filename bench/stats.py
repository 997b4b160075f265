"""The statistics behind every report: bootstrap intervals, paired tests, data efficiency.

All resampling is seeded, so a report computed twice from the same records is identical.

Why a paired t-test for the verdict: the natural non-parametric test over matched seeds, the exact
sign-flip permutation test, cannot reach p < 0.0625 with 5 seeds (2^5 sign patterns), so it
could never call anything significant at the default budget. The t-test on the per-seed
differences uses the same pairing; Holm's step-down method then controls the family-wise error
over all comparisons of a study. The intervals stay non-parametric (bootstrap).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as sps

LEVEL = 0.95
RESAMPLES = 10_000
SEED = 0


def bootstrap_ci(values: Sequence[float], level: float = LEVEL, resamples: int = RESAMPLES,
                 seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean. One value (or a constant) gives a point."""
    x = np.asarray(values, dtype=float)
    if len(x) == 0:
        return (math.nan, math.nan)
    if len(x) == 1 or np.all(x == x[0]):
        return (float(x[0]), float(x[0]))
    res = sps.bootstrap((x,), np.mean, confidence_level=level, n_resamples=resamples,
                        method="percentile", rng=np.random.default_rng(seed))
    return (float(res.confidence_interval.low), float(res.confidence_interval.high))


def paired_t_pvalue(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided paired t-test of mean(a - b) = 0, with the degenerate cases made explicit."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) < 2:
        return math.nan
    if np.all(d == d[0]):  # zero spread: identical arrays are no evidence, a pure shift is total
        return 1.0 if d[0] == 0 else 0.0
    return float(sps.ttest_rel(a, b).pvalue)


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
    """Expected best of ``k`` draws with replacement from ``values`` (Dodge et al., 2019)."""
    v = np.sort(np.asarray(values, dtype=float))
    n = len(v)
    ranks = np.arange(1, n + 1)
    weights = (ranks / n) ** k - ((ranks - 1) / n) ** k
    return float(np.sum(weights * v))
