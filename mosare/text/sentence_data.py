"""Sentence-level data for tuning and judging a report encoder: (sentence, class) pairs from scrubbed reports
(:func:`labelled_sentences`), a fixed sample of each report's sentences (:func:`report_sentences`), mean sentence
embeddings per report and the separability AUC of a logistic regression on them (:func:`separability_auc`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mosare.text.sentences import split_sentences

MIN_WORDS = 3  # shorter "sentences" (page numbers, stray headings) are not training examples


# ---------------------------------------------------------------------------------------------------------
# Training data
# ---------------------------------------------------------------------------------------------------------

def labelled_sentences(texts: dict[str, str], labels: dict[str, int], max_per_report: int, seed: int,
                       drop_shared: bool = True) -> tuple[list[str], list[int]]:
    """(sentence, class) pairs from already-scrubbed reports.

    Each report gives its distinct sentences of at least ``MIN_WORDS`` words, at most ``max_per_report`` of
    them (a seeded random sample). With ``drop_shared``, a sentence found in reports of more than one class
    (template text such as "Specimen received in formalin") is left out: it has no single label.
    """
    per_report: dict[str, list[str]] = {}
    classes_of: dict[str, set[int]] = {}
    for pid in sorted(texts):
        sents = [s for s in dict.fromkeys(split_sentences(texts[pid]))
                 if sum(any(ch.isalpha() for ch in w) for w in s.split()) >= MIN_WORDS]
        per_report[pid] = sents
        for s in sents:
            classes_of.setdefault(s, set()).add(labels[pid])
    rng = np.random.default_rng(seed)
    out_s: list[str] = []
    out_y: list[int] = []
    for pid, sents in per_report.items():
        if drop_shared:
            sents = [s for s in sents if len(classes_of[s]) == 1]
        if len(sents) > max_per_report:
            sents = [sents[i] for i in sorted(rng.choice(len(sents), max_per_report, replace=False))]
        out_s.extend(sents)
        out_y.extend([labels[pid]] * len(sents))
    return out_s, out_y


# ---------------------------------------------------------------------------------------------------------
# Separability figure
# ---------------------------------------------------------------------------------------------------------

def report_sentences(texts: Sequence[str], max_per_report: int, seed: int) -> list[list[str]]:
    """Per scrubbed report, its distinct sentences, at most ``max_per_report`` (a seeded random sample, the
    same for every model compared)."""
    rng = np.random.default_rng(seed)
    out = []
    for t in texts:
        sents = list(dict.fromkeys(split_sentences(t))) or [t.strip()]
        if len(sents) > max_per_report:
            sents = [sents[i] for i in sorted(rng.choice(len(sents), max_per_report, replace=False))]
        out.append(sents)
    return out


def mean_sentence_embeddings(model, per_report: Sequence[Sequence[str]], batch_size: int = 64,
                             progress: bool = False) -> np.ndarray:
    """[N, D]: per report, the mean of its L2-normalised sentence embeddings (``model``: a SentenceTransformer).
    Each distinct sentence is embedded once, longest first (less padding)."""
    uniq = list(dict.fromkeys(s for sents in per_report for s in sents))
    order = sorted(range(len(uniq)), key=lambda i: -len(uniq[i]))
    emb = np.asarray(model.encode([uniq[i] for i in order], batch_size=batch_size, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=progress), dtype=np.float64)
    row = {uniq[i]: emb[j] for j, i in enumerate(order)}
    return np.stack([np.mean([row[s] for s in sents], axis=0) for sents in per_report])


def separability_auc(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     n_classes: int) -> float | None:
    """ROC AUC (one-vs-rest macro for more than two classes) on the validation rows of a logistic
    regression fitted on the training rows; None when either side lacks a class."""
    if len(np.unique(y_train)) < n_classes or len(np.unique(y_val)) < n_classes:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=5000, class_weight="balanced"))
    clf.fit(x_train, y_train)
    p = clf.predict_proba(x_val)
    if n_classes == 2:
        return float(roc_auc_score(y_val, p[:, 1]))
    return float(roc_auc_score(y_val, p, multi_class="ovr", average="macro", labels=list(range(n_classes))))
