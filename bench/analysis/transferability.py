"""Transferability estimates: would this source help this target, judged before fine-tuning?

Each estimator reads the frozen source network's features of a cell's n labelled target texts
(and, where it needs them, the source head's class probabilities) with those n labels, and
nothing else: no validation or test label, no training.

* LogME (You et al. 2021): the log marginal likelihood (evidence) per example of a Bayesian
  linear regression from features to each one-hot class column, maximised over its prior and
  noise precisions (their ratio searched relative to the features' spectrum, so the value does
  not depend on the features' scale); averaged over classes.
* H-score (Bao et al. 2019): ``tr(cov(f)^-1 cov(E[f | y]))``, how far apart the class means
  sit relative to the features' spread; cov(f) shrunk (Ledoit-Wolf, as Ibrahim et al. 2022
  advise), since with fewer labels than feature dimensions it is singular.
* LEEP (Nguyen et al. 2020): the mean log-likelihood of the target labels under the "expected
  empirical predictor" built from the source head's soft predictions and the empirical
  conditional P(y | z).
* NCE (Tran et al. 2019): the negative conditional entropy -H(Y | Z) of the target labels given
  the source head's hard predictions.
* ``linear_cv`` / ``knn_cv``: stratified k-fold accuracy of a logistic regression / 5-nearest-
  neighbour classifier on the features, inside the n labels (scikit-learn).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable, Mapping

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from bench.errors import BenchError


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """Log marginal likelihood of ``target`` under y = F w + e, w ~ N(0, I/alpha),
    e ~ N(0, I/beta), computed through the SVD (n log-determinant terms, no n x n matrix)."""
    n, d = features.shape
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    sigma = s ** 2
    z = u.T @ target                      # the target in the features' column space
    k = len(sigma)
    # the part no weight vector can reach (none when the n x n u is square)
    rest = 0.0 if k == n else float(np.sum((target - u @ z) ** 2))
    # Covariance of y: u diag(sigma/alpha + 1/beta) u^T + (I - u u^T)/beta.
    variances = sigma / alpha + 1.0 / beta
    return float(-0.5 * (n * np.log(2 * np.pi) + np.sum(np.log(variances))
                         + (n - k) * np.log(1.0 / beta) + np.sum(z ** 2 / variances)
                         + rest * beta))


# LogME's search over the ratio lam = beta / alpha, in units of the features' own spectrum so
# that a rescaling F -> c F (absorbed exactly by alpha -> c^2 alpha) changes nothing.
LOGME_SPAN = 30.0   # lam runs from e^-30 / sigma_max to e^30 / sigma_min
LOGME_STEP = 0.25   # grid step in log lam, before the refinement
LOGME_XTOL = 1e-12  # Brent's method stops once log lam is known to within this
LOGME_TIE = 1e-12   # a finite maximum must beat a limit by this (relative) to be preferred


def _spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left singular vectors and squared singular values of ``features`` above its numerical
    rank (numpy's ``matrix_rank`` cut-off, relative to the largest: unchanged by a rescaling),
    largest first."""
    n, d = features.shape
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    top = float(s[0]) if len(s) else 0.0
    keep = s > top * max(n, d) * np.finfo(float).eps
    return u[:, keep], s[keep] ** 2


def _max_evidence(u: np.ndarray, sigma: np.ndarray,
                  targets: np.ndarray) -> list[tuple[float, float, float]]:
    """(max log evidence, alpha, beta) for each column of ``targets`` (n x C), given the
    features' ``_spectrum``. See ``logme_column``."""
    from scipy.optimize import brentq

    n, k = u.shape
    z2 = (u.T @ targets) ** 2                                    # k x C
    norms = np.sum(targets ** 2, axis=0)
    rest = (np.zeros(targets.shape[1]) if k == n
            else np.sum((targets - u @ (u.T @ targets)) ** 2, axis=0))
    const = n * (np.log(2 * np.pi) + 1.0)
    if k:
        grid = np.arange(-np.log(sigma[0]) - LOGME_SPAN,
                         -np.log(sigma[-1]) + LOGME_SPAN + LOGME_STEP / 2, LOGME_STEP)
        scaled = np.exp(grid)[:, None] * sigma                   # lam sigma_i, G x k
        profile = -0.5 * (const + n * np.log((1.0 / (1.0 + scaled) @ z2 + rest) / n)
                          + np.log1p(scaled).sum(axis=1)[:, None])
    out = []
    for c in range(targets.shape[1]):
        if not norms[c] > 0:
            raise ValueError("LogME of an all-zero target column: the evidence is unbounded")
        w2, r0 = z2[:, c], float(rest[c])

        def fit(log_lam: float) -> tuple[float, float, float, float]:
            """(profile log evidence, d/d log lam, alpha, beta) at lam = e^log_lam."""
            ls = np.exp(log_lam) * sigma
            q = 1.0 / (1.0 + ls)
            r = float(w2 @ q) + r0                               # beta = n / r
            value = -0.5 * (const + n * np.log(r / n) + float(np.sum(np.log1p(ls))))
            slope = 0.5 * (n * float(w2 @ (ls * q * q)) / r - float(np.sum(ls * q)))
            beta = n / r
            return value, slope, beta / np.exp(log_lam), beta

        # the limits: lam -> 0 (alpha -> inf, no weights: y ~ N(0, I/beta)) and, with n
        # independent feature rows, lam -> inf (beta -> inf: the noise-free fit y = F w)
        limits = [(-0.5 * (const + n * np.log(norms[c] / n)), math.inf, n / norms[c])]
        if k == n:
            a = float(np.sum(w2 / sigma))                        # y^T (F F^T)^-1 y
            limits.append((-0.5 * (const + n * np.log(a / n) + float(np.sum(np.log(sigma)))),
                           n / a, math.inf))
        best = max(limits, key=lambda t: t[0])
        if k:
            i = int(np.argmax(profile[:, c]))
            x = float(grid[i])
            if 0 < i < len(grid) - 1:
                lo, hi = float(grid[i - 1]), float(grid[i + 1])
                if fit(lo)[1] > 0 > fit(hi)[1]:
                    x = brentq(lambda t: fit(t)[1], lo, hi, xtol=LOGME_XTOL, maxiter=200)
            value, _, alpha, beta = fit(x)
            if value > best[0] + LOGME_TIE * max(1.0, abs(best[0])):
                best = (value, alpha, beta)
        out.append((float(best[0]), float(best[1]), float(best[2])))
    return out


def logme_column(features: np.ndarray, target: np.ndarray) -> tuple[float, float, float]:
    """(max log evidence / n, alpha, beta) for one target column.

    Scale-free: with lam = beta / alpha the evidence's maximum over beta is in closed form,
    beta = n / (sum_i z_i^2 / (1 + lam sigma_i) + |y - U z|^2) (sigma_i the squared singular
    values, z = U^T y), which leaves one dimension, log lam. Its stationary points are
    exactly MacKay's fixed points (gamma = alpha |m|^2, n - gamma = beta |F m - y|^2). The
    profile is evaluated on a grid of step 0.25 in log lam over lam sigma_max >= e^-30 and
    lam sigma_min <= e^30 (bounds relative to the spectrum, so a rescaling F -> c F gives the
    same value, with alpha -> c^2 alpha), the best grid point refined by Brent's method on
    the analytic derivative until log lam is known to 1e-12 (so alpha and beta to about
    1e-12 relative and the evidence to rounding), and compared with the two limits:

    * lam -> 0 (alpha = inf returned): no weights, y ~ N(0, I / beta), beta = n / |y|^2. The
      maximum for a column the features do not explain.
    * lam -> inf (beta = inf returned), only when the n feature rows are linearly independent
      (n <= d, as with 50 or 200 labels on 300 features): every column is fitted exactly and
      the evidence tends to a finite limit, the noise-free evidence max over alpha of
      log N(y; 0, F F^T / alpha), at alpha = n / y^T (F F^T)^-1 y. Depending on the column
      this limit is the supremum, or the evidence peaks at a finite beta above it, or at
      alpha -> inf: it does not keep rising with beta in general.

    A limit is returned when the finite maximum does not beat it by more than 1e-12
    (relative). With fewer independent rows than n (repeated rows) and a column inside the
    features' span (repeated rows with equal labels) the evidence is unbounded; the search
    then stops at its bound lam sigma_min = e^30.
    MacKay's iteration itself is not used: where the supremum is a limit it never converges
    (alpha or beta drifts off), and on 50 x 384 features its interior maxima took 400-700
    iterations to 1e-10 in log alpha and log beta.
    """
    n, _ = features.shape
    u, sigma = _spectrum(np.asarray(features, dtype=np.float64))
    value, alpha, beta = _max_evidence(u, sigma, np.asarray(target, np.float64)[:, None])[0]
    return value / n, alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the mean over classes of each one-hot column's max log evidence per example
    (``logme_column``; one SVD shared by the columns)."""
    features = np.asarray(features, dtype=np.float64)
    classes = np.unique(labels)
    u, sigma = _spectrum(features)
    onehot = (np.asarray(labels)[:, None] == classes[None, :]).astype(float)
    return float(np.mean([v for v, _, _ in _max_evidence(u, sigma, onehot)]) / len(features))


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """``tr(cov(f)^-1 cov(E[f|y]))`` (Bao et al. 2019, eq. 2) in its regularised form
    (Ibrahim et al. 2022): cov(f) the Ledoit-Wolf estimate with shrinkage a, cov(E[f|y])
    scaled by 1 - a. With more feature dimensions than labels the plain sample covariance is
    singular and the score collapses to (classes - 1) for any features."""
    from sklearn.covariance import LedoitWolf

    shrunk = LedoitWolf().fit(features)
    cov_f, alpha = shrunk.covariance_, float(shrunk.shrinkage_)
    means = np.zeros_like(features)
    for c in np.unique(labels):
        means[labels == c] = features[labels == c].mean(axis=0)
    centred_g = means - means.mean(axis=0)
    cov_g = centred_g.T @ centred_g / len(features)
    return float(np.trace(np.linalg.solve(cov_f, (1 - alpha) * cov_g)))


def _joint(labels: np.ndarray, source_probs: np.ndarray) -> np.ndarray:
    """Empirical joint P(y, z) = mean over examples of [y_i = y] * theta(x_i)_z."""
    classes = int(labels.max()) + 1
    onehot = np.eye(classes)[labels]
    return onehot.T @ source_probs / len(labels)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: mean_i log sum_z P(y_i | z) theta(x_i)_z (Nguyen et al. 2020, eq. 2)."""
    joint = _joint(labels, source_probs)
    conditional = joint / np.clip(joint.sum(axis=0, keepdims=True), 1e-300, None)  # P(y | z)
    likelihood = np.sum(source_probs * conditional[labels], axis=1)
    return float(np.mean(np.log(np.clip(likelihood, 1e-300, None))))


def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE: -H(Y | Z) with Z the source head's hard prediction (Tran et al. 2019)."""
    z = source_probs.argmax(axis=1)
    hard = np.eye(source_probs.shape[1])[z]
    joint = _joint(labels, hard)
    pz = joint.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / pz), 0.0)
    return float(terms.sum())


FOLDS = 3


def _cv(model: Callable[[], object], features: np.ndarray, labels: np.ndarray,
        seed: int) -> float:
    """3-fold stratified CV accuracy. A class with fewer members than folds (Reuters R8 at 50
    labels has classes with 0-2) is kept: the folds that miss it score its examples wrong, as
    a probe trained without that class would; only fewer than 3 examples per fold, on
    average, or a single class give no estimate (NaN)."""
    if len(labels) < 3 * FOLDS or len(np.unique(labels)) < 2:
        return float("nan")
    split = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # "least populated class has only 1 member": intended
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return float(np.mean(cross_val_score(model(), features, labels, cv=split,
                                             error_score="raise")))


def linear_cv(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Linear-probe accuracy: logistic regression on the frozen features, 3-fold CV in the n."""
    return _cv(lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
               features, labels, seed)


def knn_cv(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """5-nearest-neighbour accuracy on the standardised frozen features, 3-fold CV in the n."""
    return _cv(lambda: make_pipeline(StandardScaler(), KNeighborsClassifier(5)),
               features, labels, seed)


FEATURE_ESTIMATORS = {"logme": logme, "h_score": h_score}
PROBABILITY_ESTIMATORS = {"leep": leep, "nce": nce}
CV_ESTIMATORS = {"linear_cv": linear_cv, "knn_cv": knn_cv}
ESTIMATORS = (*FEATURE_ESTIMATORS, *PROBABILITY_ESTIMATORS, *CV_ESTIMATORS)


def check_names(names: list[str]) -> None:
    unknown = [n for n in names if n not in ESTIMATORS]
    if unknown:
        raise BenchError(f"unknown transferability estimator(s) {unknown}; known: "
                         f"{', '.join(ESTIMATORS)}")


def estimate(features: np.ndarray, labels: np.ndarray, source_probs: np.ndarray | None,
             names: list[str], seed: int) -> dict[str, Mapping[str, float]]:
    """Each named estimator's value and seconds on one cell's n labelled examples. LEEP and NCE
    need a source head (``source_probs``); without one (a transformer's hub weights) they are
    left out."""
    features = np.asarray(features, dtype=np.float64)
    labels = np.asarray(labels)
    _, labels = np.unique(labels, return_inverse=True)
    out: dict[str, Mapping[str, float]] = {}
    for name in names:
        start = time.perf_counter()
        if name in FEATURE_ESTIMATORS:
            value = FEATURE_ESTIMATORS[name](features, labels)
        elif name in PROBABILITY_ESTIMATORS:
            if source_probs is None:
                continue
            value = PROBABILITY_ESTIMATORS[name](np.asarray(source_probs, np.float64), labels)
        else:
            value = CV_ESTIMATORS[name](features, labels, seed)
        out[name] = {"value": round(float(value), 6),
                     "seconds": round(time.perf_counter() - start, 4)}
    return out
