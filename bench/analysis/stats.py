"""The statistics behind every report: intervals over seeds and test examples, paired tests,
multiple comparisons, power, variance components, data efficiency.

One estimator serves every number a table shows. A cell's runs give a matrix ``Y`` of
per-example test scores (seeds x test examples: 1 where the prediction is right; for a
comparison, the difference of two strategies' matrices over matched seeds and the same
examples). Its mean estimates the population mean: what the strategy scores on average over new
seeds and new test sets drawn like this one. The interval counts both kinds of noise, taken
apart with a two-way random-effects ANOVA (seeds crossed with examples; Bouthillier et al.
2021 on counting the test set's own noise):

* the seed part ``V_seed = MS_seed / (S N)``: the variance of the seed (row) means, never
  truncated, with ``t_{S-1}``;
* the test-sample part ``V_test = max(MS_example - MS_error, 0) / (S N)`` with ``t_{N-1}``.

Together they are unbiased for the mean's variance. The quantile is the Cochran-Cox weighted
mean of the two parts' t quantiles, ``q = (t_{S-1} V_seed + t_{N-1} V_test) / (V_seed +
V_test)``: an approximation to the Behrens-Fisher distribution of a mean with two variance
parts of different degrees of freedom. An earlier version truncated the seed part at
``MS_seed - MS_error`` and lost the ``t_{S-1}`` widening whenever that came out negative (20-50%
of draws at 3 seeds): paired differences covered 0.90-0.93. Welch-Satterthwaite on these parts
covers 0.91-0.93 at 3 seeds; the quadratic combination ``sqrt(t1^2 V1 + t2^2 V2)`` over-covers.

A cell's accuracy or macro-F1 lies in [0, 1], so its interval is built on the logit scale (the
same parts through the delta method, back-transformed) and never leaves the range; a matrix
with every score 1 (or 0) has no spread to measure, and gets the Clopper-Pearson bound of "all
N test examples right": ``[(alpha/2)^(1/N), 1]``. A cell's mean has no p-value (0 is not a
hypothesis about an accuracy). Paired differences stay on the linear scale (clipped to
[-1, 1]), and their p-value is the level at which the interval's edge reaches 0, so CI, p,
verdict and mark can never disagree. Coverage is simulated in ``tests/test_stats.py``
(``results/coverage.md``).

Macro-F1 is not a mean over examples, so its matrix holds each example's linearised
contribution instead (:func:`macro_f1_contributions`, the delta method): each row's mean is the
run's macro-F1 exactly, and the same estimator then counts the same two kinds of noise.
Records without per-example predictions (older studies) get the plain t-interval over seed
means (on the logit scale for a cell), which counts seed noise only; the report says which.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sps
from scipy.special import expit, logit

LEVEL = 0.95
POWER = 0.8
TINY = 1e-15  # p-values below this are reported as 0 (t quantiles lose precision beyond it)


@dataclass(frozen=True)
class Estimate:
    """A mean with its interval and, for a difference, the two-sided p-value of "it is 0"."""

    mean: float
    low: float
    high: float
    p: float               # NaN for a bounded cell mean (no test of 0)
    seeds: int
    examples: int          # test examples scored per seed; 0: seed means only
    var_seed: float        # variance of the mean: the seed (row-mean) part ...
    var_test: float        # ... and the test-sample part (0 when examples == 0)
    df_seed: int = 1
    df_test: int = 1

    @property
    def counts_test_noise(self) -> bool:
        return self.examples > 0

    def detectable(self, alpha: float, power: float = POWER) -> float:
        """The smallest true difference a two-sided test at ``alpha`` of a mean this noisy
        rejects with probability ``power``: :func:`detectable`."""
        return detectable(self.var_seed, self.df_seed, self.var_test, self.df_test, alpha, power)


def detectable(var_seed: float, df_seed: int, var_test: float, df_test: int, alpha: float,
               power: float = POWER) -> float:
    """Smallest detectable difference: ``delta sd`` where a noncentral t with the parts'
    Welch-Satterthwaite degrees of freedom and noncentrality ``delta`` passes the test's own
    critical value (the Cochran-Cox quantile at ``alpha``) with probability ``power``."""
    total = var_seed + var_test
    if not total > 0:
        return math.nan
    df = total ** 2 / (var_seed ** 2 / df_seed + var_test ** 2 / df_test)
    critical = float(_quantile(alpha / 2, var_seed, df_seed, var_test, df_test))

    # P(|Z + delta| > critical * U), U = sqrt(chi2_df / df), by quadrature over U's quantiles
    # (scipy's noncentral t loses precision at the large noncentralities few seeds need).
    u = np.sqrt(sps.chi2.ppf((np.arange(400) + 0.5) / 400, df) / df)

    def short(delta: float) -> float:
        reach = sps.norm.sf(critical * u - delta) + sps.norm.cdf(-critical * u - delta)
        return float(reach.mean()) - power

    return float(optimize.brentq(short, 0.0, 4 * critical + 10)) * math.sqrt(total)


def _nan(mean: float, seeds: int, examples: int) -> Estimate:
    return Estimate(mean, math.nan, math.nan, math.nan, seeds, examples, math.nan, math.nan)


def _quantile(tail, var_seed, df_seed, var_test, df_test):
    """Cochran-Cox: the parts' upper-``tail`` t quantiles weighted by their variances (arrays
    or floats)."""
    var_seed, var_test = np.asarray(var_seed, dtype=float), np.asarray(var_test, dtype=float)
    total = np.maximum(var_seed + var_test, 1e-300)
    seed = np.where(var_seed > 0, sps.t.isf(tail, df_seed) * var_seed, 0.0)
    test = np.where(var_test > 0, sps.t.isf(tail, df_test) * var_test, 0.0)
    return (seed + test) / total


def crossed_parts(y: np.ndarray) -> tuple:
    """Mean squares of a seeds x examples matrix (or a stack of them, the last two axes):
    (seed, example, error)."""
    y = np.asarray(y, dtype=float)
    s, n = y.shape[-2:]
    grand = y.mean(axis=(-2, -1))
    rows, cols = y.mean(axis=-1), y.mean(axis=-2)
    ms_seed = n * ((rows - grand[..., None]) ** 2).sum(-1) / (s - 1)
    ms_example = s * ((cols - grand[..., None]) ** 2).sum(-1) / (n - 1)
    residual = y - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
    ms_error = (residual ** 2).sum((-2, -1)) / ((s - 1) * (n - 1))
    if np.ndim(grand) == 0:
        return float(ms_seed), float(ms_example), float(ms_error)
    return ms_seed, ms_example, ms_error


def crossed_variance(y: np.ndarray) -> tuple:
    """(mean, V_seed, V_test) of a seeds x examples matrix or a stack of them."""
    y = np.asarray(y, dtype=float)
    s, n = y.shape[-2:]
    ms_seed, ms_example, ms_error = crossed_parts(y)
    return (y.mean(axis=(-2, -1)), np.asarray(ms_seed) / (s * n),
            np.maximum(np.asarray(ms_example) - ms_error, 0.0) / (s * n))


def interval(mean, var_seed, df_seed, var_test, df_test, level: float = LEVEL,
             bounded: bool = False, examples: int = 0):
    """(low, high) from a mean and its two variance parts (arrays or floats). ``bounded``: a
    score in [0, 1], interval on the logit scale; a mean of exactly 0 or 1 gets the
    Clopper-Pearson bound over ``examples`` (or, without examples, a point)."""
    alpha = 1 - level
    mean = np.asarray(mean, dtype=float)
    sd = np.sqrt(var_seed + var_test)
    half = _quantile(alpha / 2, var_seed, df_seed, var_test, df_test) * sd
    if not bounded:
        return np.clip(mean - half, -1.0, 1.0), np.clip(mean + half, -1.0, 1.0)
    inside = np.clip(mean, 1e-12, 1 - 1e-12)
    centre, scaled = logit(inside), half / (inside * (1 - inside))
    low, high = expit(centre - scaled), expit(centre + scaled)
    edge = (alpha / 2) ** (1 / examples) if examples else 1.0
    low = np.where(mean >= 1, edge, np.where(mean <= 0, 0.0, low))
    high = np.where(mean <= 0, 1 - edge, np.where(mean >= 1, 1.0, high))
    return low, high


def _estimate(mean: float, var_seed: float, df_seed: int, var_test: float, df_test: int,
              seeds: int, examples: int, level: float, bounded: bool) -> Estimate:
    low, high = (float(v) for v in interval(mean, var_seed, df_seed, var_test, df_test, level,
                                            bounded, examples))
    if bounded:
        p = math.nan
    elif var_seed + var_test <= 0:  # no spread at all: a shift seen on every example and seed
        p = 1.0 if mean == 0 else 0.0
        if mean == 0 and examples:  # identical everywhere: |difference| <= discordance bound
            bound = 1 - ((1 - level) / 2) ** (1 / examples)
            low, high = -bound, bound
    elif mean == 0:
        p = 1.0
    else:  # the alpha at which the interval's edge touches 0 (the half-width falls with alpha)
        sd = math.sqrt(var_seed + var_test)

        def edge(alpha: float) -> float:
            return float(_quantile(alpha / 2, var_seed, df_seed, var_test, df_test)) * sd - abs(mean)

        p = 0.0 if edge(TINY) < 0 else float(optimize.brentq(edge, TINY, 1.0, xtol=1e-16,
                                                               rtol=1e-12))
    return Estimate(mean, low, high, p, seeds, examples, float(var_seed), float(var_test),
                    df_seed, df_test)


def seed_estimate(values: Sequence[float], level: float = LEVEL,
                  bounded: bool = False) -> Estimate:
    """The t-interval over per-seed values (seed noise only): for records without predictions.
    ``bounded``: a cell's score in [0, 1], interval on the logit scale."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return _nan(float(x.mean()) if len(x) else math.nan, len(x), 0)
    return _estimate(float(x.mean()), float(x.var(ddof=1)) / len(x), len(x) - 1, 0.0, 1,
                     len(x), 0, level, bounded)


def crossed_estimate(y: np.ndarray, level: float = LEVEL, bounded: bool = False) -> Estimate:
    """The interval of the mean of a seeds x test-examples matrix (see the module docstring).
    ``bounded=True`` for a cell's own scores (accuracy, macro-F1), False for a difference."""
    y = np.asarray(y, dtype=float)
    s, n = y.shape
    if s < 2 or n < 2:
        return _nan(float(y.mean()) if y.size else math.nan, s, n)
    mean, var_seed, var_test = crossed_variance(y)
    return _estimate(float(mean), float(var_seed), s - 1, float(var_test), n - 1, s, n, level,
                     bounded)


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


def difference_interval(c1: float, ms1: float, df1: float, c2: float, ms2: float, df2: float,
                        level: float = LEVEL) -> tuple[float, float]:
    """Interval of ``c1 E[MS1] - c2 E[MS2]`` from two independent mean squares: the modified
    large-sample method (Ting, Burdick, Graybill, Jeyaratnam & Lu 1990; Burdick & Graybill 1992,
    sec. 3.2), exact when ``c2 = 0``; the lower end is held at 0 (a variance)."""
    a = (1 - level) / 2
    theta = c1 * ms1 - c2 * ms2
    up1, lo1 = sps.chi2.isf(a, df1) / df1, sps.chi2.ppf(a, df1) / df1   # F_{df1, inf}
    g1, h1 = 1 - 1 / up1, 1 / lo1 - 1
    var_low, var_high = (g1 * c1 * ms1) ** 2, (h1 * c1 * ms1) ** 2
    if c2 and ms2:
        up2, lo2 = sps.chi2.isf(a, df2) / df2, sps.chi2.ppf(a, df2) / df2
        g2, h2 = 1 - 1 / up2, 1 / lo2 - 1
        f_up, f_lo = sps.f.isf(a, df1, df2), sps.f.ppf(a, df1, df2)
        g12 = ((f_up - 1) ** 2 - g1 ** 2 * f_up ** 2 - h2 ** 2) / f_up
        h12 = ((1 - f_lo) ** 2 - h1 ** 2 * f_lo ** 2 - g2 ** 2) / f_lo
        var_low += (h2 * c2 * ms2) ** 2 + g12 * c1 * c2 * ms1 * ms2
        var_high += (g2 * c2 * ms2) ** 2 + h12 * c1 * c2 * ms1 * ms2
    return (max(theta - math.sqrt(max(var_low, 0.0)), 0.0),
            max(theta + math.sqrt(max(var_high, 0.0)), 0.0))


@dataclass(frozen=True)
class Component:
    """One variance part: its estimate (negative ones held at 0), the degrees of freedom of
    the mean square it rests on, and a confidence interval (:func:`difference_interval`)."""

    value: float
    df: int
    low: float
    high: float


def variance_parts(runs: pd.DataFrame, example_noise: float = 0.0, noise_df: int = 10 ** 6,
                   level: float = LEVEL) -> dict[str, Component] | None:
    """Variance of one run's score, split by what varies between runs (method of moments).

    ``runs``: one row per run with ``seed``, ``source_seed`` (None/NaN: one source model),
    ``tuning`` and ``score``, and optionally ``test_var`` (the run's per-example score variance
    divided by the test size: what a fresh test set of the same size adds). The design must be
    balanced: every seed with every source model and tuning replicate; else None. Balanced
    random-effects ANOVA, seeds crossed with source models, tuning replicates nested in each
    (seed, source) pair; negative estimates are set to 0. A part the design cannot separate is
    absent (one source model: no source part; one tuning: tuning noise stays in the seed part).

    ``example_noise``: the run x example interaction variance over the test size (the error
    mean square of the runs x examples matrix / N). Every run's score carries that much noise
    of its own on a fixed test set, so the innermost part holds it; it is taken out there
    (the innermost part subtracts nothing else, so it becomes ``MS - noise`` and its interval
    the two-mean-square one, the noise with ``noise_df`` = (runs - 1)(N - 1) degrees of
    freedom), because ``test_var`` already counts it.
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
    # Each part: (MS1, df1, MS2, df2, divisor): value = (MS1 - MS2) / divisor.
    specs: dict[str, tuple[float, int, float, int, float]] = {}
    within, df_within = (0.0, 0)
    if t > 1:
        within = float(((y - cell[:, :, None]) ** 2).sum()) / (s * k * (t - 1))
        df_within = s * k * (t - 1)
        specs["tuning"] = (within, df_within, 0.0, 0, 1.0)
    ms_a = k * t * float(((by_seed - grand) ** 2).sum()) / (s - 1)
    if k > 1:
        ms_b = s * t * float(((by_source - grand) ** 2).sum()) / (k - 1)
        inter = cell - by_seed[:, None] - by_source[None, :] + grand
        ms_ab = t * float((inter ** 2).sum()) / ((s - 1) * (k - 1))
        df_ab = (s - 1) * (k - 1)
        specs["seed x source"] = (ms_ab, df_ab, within, df_within, float(t))
        specs["seed"] = (ms_a, s - 1, ms_ab, df_ab, float(k * t))
        specs["source"] = (ms_b, k - 1, ms_ab, df_ab, float(s * t))
    else:
        specs["seed"] = (ms_a, s - 1, within, df_within, float(t))
    innermost = "tuning" if t > 1 else "seed x source" if k > 1 else "seed"
    out: dict[str, Component] = {}
    for part in PARTS:
        if part not in specs:
            continue
        ms1, df1, ms2, df2, div = specs[part]
        if part == innermost and example_noise > 0:  # nothing else is subtracted there
            ms2, df2 = example_noise * div, noise_df
        low, high = difference_interval(1 / div, ms1, df1, 1 / div, ms2, max(df2, 1), level)
        out[part] = Component(max((ms1 - ms2) / div, 0.0), df1, low, high)
    if "test_var" in frame and frame["test_var"].notna().all() and "n_test" in frame:
        n = int(frame["n_test"].iloc[0])
        value = float(frame["test_var"].mean())
        df = len(frame) * (n - 1)
        a = (1 - level) / 2
        out["test sample"] = Component(value, df, value * df / sps.chi2.isf(a, df),
                                       value * df / sps.chi2.ppf(a, df))
    elif "test_var" in frame and frame["test_var"].notna().all():
        out["test sample"] = Component(float(frame["test_var"].mean()), 0, math.nan, math.nan)
    return out


def variance_components(runs: pd.DataFrame, example_noise: float = 0.0) -> dict[str, float] | None:
    """The point values of :func:`variance_parts` for every part in ``PARTS`` (NaN: a part the
    design does not vary)."""
    parts = variance_parts(runs, example_noise)
    if parts is None:
        return None
    return {part: parts[part].value if part in parts else math.nan for part in PARTS}


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
