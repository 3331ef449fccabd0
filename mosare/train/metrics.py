"""Metrics in percent: AUC from probabilities (macro one-vs-rest for > 2 classes), macro F1, accuracy.

Two-class F1 and accuracy use a decision threshold chosen on the validation split (``choose_threshold``),
so they are not hostage to class imbalance (81 % IDC in BRCA); with more classes the arg-max is used.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, roc_auc_score


def auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC (%) from class probabilities [N, K]; NaN when only one class is present."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probs.shape[1] == 2:
        return 100 * roc_auc_score(labels, probs[:, 1])
    return 100 * roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1]))


def predict_labels(probs: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Class per row: P(class 1) >= threshold for two classes with a threshold, else the arg-max."""
    if threshold is not None and probs.shape[1] == 2:
        return (probs[:, 1] >= threshold).astype(int)
    return probs.argmax(axis=1)


def choose_threshold(labels: np.ndarray, probs: np.ndarray) -> float | None:
    """The P(class 1) threshold with the highest macro F1 on (validation) cases; ties go to the one closest to
    0.5. None for more than two classes or a single-class split."""
    if probs.shape[1] != 2 or len(np.unique(labels)) < 2:
        return None
    candidates = np.unique(np.concatenate([probs[:, 1], [0.5]]))
    f1 = [f1_score(labels, (probs[:, 1] >= t).astype(int), average="macro", zero_division=0) for t in candidates]
    best = np.flatnonzero(np.isclose(f1, max(f1)))
    return float(candidates[best[np.argmin(np.abs(candidates[best] - 0.5))]])


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    pred = predict_labels(probs, threshold)
    return {
        "auc": auc(labels, probs),
        "f1": 100 * f1_score(labels, pred, average="macro", labels=np.arange(probs.shape[1]), zero_division=0),
        "acc": 100 * accuracy_score(labels, pred),
    }


def subset_aucs(labels: np.ndarray, probs: np.ndarray, subsets: Sequence[str]) -> list[dict]:
    """AUC per modality subset of the cases (e.g. "rna+rpt", "rna", "rpt"), plus "all": [{subset, n, auc}]."""
    subsets = np.asarray(subsets)
    rows = [{"subset": "all", "n": len(labels), "auc": auc(labels, probs)}]
    for name in sorted(set(subsets.tolist())):
        m = subsets == name
        rows.append({"subset": name, "n": int(m.sum()), "auc": auc(labels[m], probs[m])})
    return rows
