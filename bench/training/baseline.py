"""The classical baseline every table shows: TF-IDF features + logistic regression (scikit-learn).

It runs on the same fixed splits, the same nested training subsets and the same seeds as the
neural strategies, and its C is tuned by the same Optuna machinery inside the same protocol
(the same cross-validation folds, or the fixed validation split).
"""

from __future__ import annotations

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


def fit(texts: Sequence[str], labels: np.ndarray, train: np.ndarray, C: float,
        settings: Mapping[str, Any], seed: int) -> Pipeline:
    """The pipeline fitted on the ``train`` indices."""
    pipeline = make_pipeline(C, int(settings.get("ngram_max", 2)), int(settings.get("min_df", 1)),
                             seed)
    return pipeline.fit([texts[i] for i in train], labels[train])


def scores(pipeline: Pipeline, texts: Sequence[str], labels: np.ndarray, index: np.ndarray,
           split: str) -> tuple[dict[str, float], np.ndarray]:
    """Accuracy and macro-F1 on the ``index`` texts, and the predictions."""
    predicted = pipeline.predict([texts[i] for i in index])
    truth = labels[index]
    return ({f"{split}_acc": float(accuracy_score(truth, predicted)),
             f"{split}_f1": float(f1_score(truth, predicted, average="macro"))}, predicted)
