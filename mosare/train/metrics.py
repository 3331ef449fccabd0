"""Metrics in percent: AUC from probabilities (macro one-vs-rest for > 2 classes), macro F1, accuracy."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC (%) from class probabilities [N, K]; NaN when only one class is present."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return 100 * roc_auc_score(labels, probs[:, 1])
    return 100 * roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1]))


def classification_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    pred = probs.argmax(axis=1)
    return {
        "auc": auc(labels, probs),
        "f1": 100 * f1_score(labels, pred, average="macro", labels=np.arange(probs.shape[1]), zero_division=0),
        "acc": 100 * accuracy_score(labels, pred),
    }
