"""Transferability estimates: would this source help this target, judged before fine-tuning?

Each estimator reads the frozen source network's features of a cell's n labelled target texts
(and, where it needs them, the source head's class probabilities) with those n labels, and
nothing else: no validation or test label, no training.

* LogME (You et al. 2021): the log marginal likelihood (evidence) per example of a Bayesian
  linear regression from features to each one-hot class column, maximised over its prior and
  noise precisions by MacKay's fixed point; averaged over classes.
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

import time
import warnings
from typing import Any, Callable, Mapping

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
    rest = float(target @ target - z @ z)  # the part no weight vector can reach
    # Covariance of y: u diag(sigma/alpha + 1/beta) u^T + (I - u u^T)/beta.
    variances = sigma / alpha + 1.0 / beta
    k = len(sigma)
    return float(-0.5 * (n * np.log(2 * np.pi) + np.sum(np.log(variances))
                         + (n - k) * np.log(1.0 / beta) + np.sum(z ** 2 / variances)
                         + rest * beta))


def logme_column(features: np.ndarray, target: np.ndarray, iterations: int = 100,
                 tol: float = 1e-6) -> tuple[float, float, float]:
    """(max log evidence / n, alpha, beta) for one target column, by MacKay's fixed point.

    With at least as many feature dimensions as examples the column is fitted exactly and
    the evidence keeps rising as the noise precision beta grows: alpha and beta are then held
    within [1e-8, 1e8], where the evidence has all but reached its limit."""
    n, _ = features.shape
    u, s, _ = np.linalg.svd(features, full_matrices=False)
    sigma = s ** 2
    z = u.T @ target
    rest = max(float(target @ target - z @ z), 0.0)
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        shrink = alpha + beta * sigma
        gamma = float(np.sum(beta * sigma / shrink))
        m2 = float(np.sum((beta * s * z / shrink) ** 2))              # |m|^2
        residual = float(np.sum((alpha * z / shrink) ** 2)) + rest    # |F m - y|^2
        new_alpha = float(np.clip(gamma / max(m2, 1e-300), 1e-8, 1e8))
        new_beta = float(np.clip(max(n - gamma, 1e-12) / max(residual, 1e-300), 1e-8, 1e8))
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return log_evidence(features, target, alpha, beta) / n, alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the mean over classes of each one-hot column's max log evidence per example."""
    classes = np.unique(labels)
    return float(np.mean([logme_column(features, (labels == c).astype(float))[0]
                          for c in classes]))


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
    return _cv(lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
               features, labels, seed)


def knn_cv(features: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
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


# --- a study's estimates ----------------------------------------------------------------------

ESTIMATES = "transferability.jsonl"


def source_outputs(prep: Any, model_cfg: Any, name: str, seed_model: Any,
                   rows: np.ndarray) -> tuple[Any, Any]:
    """Frozen features of the target texts ``rows`` under one source network, and its head's
    class probabilities over the source classes (None without a source head: hub weights)."""
    import torch

    from bench.models.transformer import frozen_features

    side = prep.sources[name]
    model = prep.make_model(model_cfg, side.task.num_classes)
    # a trained source model has its head; hub weights have none (the head stays random)
    model.load_state_dict(seed_model.state_dict, strict=bool(seed_model.metrics))
    features = frozen_features(model, prep.target.ids[torch.as_tensor(rows)])
    probs = None
    if seed_model.metrics:  # trained on the source task: its head is the source classifier
        model.eval()
        with torch.no_grad():
            probs = torch.softmax(model.head(features), dim=1).numpy()
    return features.numpy(), probs


def estimate_key(r: Mapping[str, Any]) -> tuple[str, Any, str, int]:
    return (r["source"], r.get("source_seed"), str(r["size"]), int(r["seed"]))


def record_estimates(prep: Any, cfg: Any, sizes: list, out: Any, console: Any) -> int:
    """Estimates for every (source, source seed, size, seed) not yet in ``transferability.jsonl``,
    each on exactly the n labels that replicate's cells train on. Returns how many were added."""
    from bench.config import source_seeds
    from bench.data.splits import training_subset
    from bench.prepare import resolve_size
    from bench.results import append_record, load_records

    names = list(cfg.get("transferability") or [])
    if not names or not any(s.models for s in prep.sources.values()):
        return 0
    path = out / ESTIMATES
    done = {estimate_key(r) for r in load_records(path, key=estimate_key)}
    seeds_axis = source_seeds(cfg)
    target, added = prep.target, 0
    for name, side in prep.sources.items():
        for source_seed, model in side.models.items():
            recorded_seed = source_seed if seeds_axis else None
            todo = [(size, seed) for size in sizes for seed in cfg.seeds
                    if (name, recorded_seed, str(size), int(seed)) not in done]
            if not todo:
                continue
            subsets = {(size, seed): training_subset(target.data.labels, target.splits.pool,
                                                     resolve_size(size, target), int(seed))
                       for size, seed in todo}
            rows = np.unique(np.concatenate(list(subsets.values())))  # only texts a cell uses
            start = time.perf_counter()
            features, probs = source_outputs(prep, cfg.model, name, model, rows)
            extract = time.perf_counter() - start
            for (size, seed), idx in subsets.items():
                n, at = len(idx), np.searchsorted(rows, idx)
                values = estimate(features[at], target.data.labels[idx],
                                  None if probs is None else probs[at], names, int(seed))
                append_record(path, {"source": name, "source_seed": recorded_seed,
                                     "size": size, "n_train": n, "seed": int(seed),
                                     "source_key": model.key, "estimates": values,
                                     "features_seconds": round(extract, 3)}, estimate_key)
                added += 1
    if added and console:
        console.print(f"transferability: {added} estimates written to {path}")
    return added
