"""The classical baseline every table shows: TF-IDF features + logistic regression (scikit-learn).

It runs on the same fixed splits, the same nested training subsets and the same seeds as the
neural strategies, and its C is tuned by the same Optuna machinery on the validation split.
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import Pipeline

from bench.data.text import tokenize

NAME = "tfidf_logreg"


def make_pipeline(C: float, ngram_max: int = 2, min_df: int = 1, seed: int = 0) -> Pipeline:
    return Pipeline([
        ("tfidf", TfidfVectorizer(tokenizer=tokenize, token_pattern=None, lowercase=False,
                                  ngram_range=(1, ngram_max), min_df=min_df, sublinear_tf=True)),
        ("logreg", LogisticRegression(C=C, max_iter=2000, random_state=seed)),
    ])


def scores(pipeline: Pipeline, texts: Sequence[str], labels: np.ndarray, split: str) -> dict[str, float]:
    predicted = pipeline.predict(list(texts))
    return {f"{split}_acc": float(accuracy_score(labels, predicted)),
            f"{split}_f1": float(f1_score(labels, predicted, average="macro"))}


def fit_and_score(texts: Sequence[str], labels: np.ndarray, train: np.ndarray, val: np.ndarray,
                  test: np.ndarray | None, C: float, settings: Mapping[str, Any],
                  seed: int) -> tuple[dict[str, float], float]:
    """Fit on ``train`` indices; score on val (and test). Returns metrics and seconds."""
    start = time.perf_counter()
    pipeline = make_pipeline(C, int(settings.get("ngram_max", 2)), int(settings.get("min_df", 1)), seed)
    pipeline.fit([texts[i] for i in train], labels[train])
    metrics = scores(pipeline, [texts[i] for i in val], labels[val], "val")
    if test is not None:
        metrics.update(scores(pipeline, [texts[i] for i in test], labels[test], "test"))
    return metrics, time.perf_counter() - start
