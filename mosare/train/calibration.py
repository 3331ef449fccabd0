"""Probabilities that mean what they say: temperature scaling, split conformal prediction sets, and ECE.

All three are fitted on a model's **validation split** (never the test fold) and stored in its checkpoint:

    t = fit_temperature(y_val, p_val)                 # Guo et al., 2017: one scalar T, softmax(log p / T)
    q = conformal_quantile(y_val, apply_temperature(p_val, t), alpha=0.1)
    sets = prediction_sets(apply_temperature(p_test, t), q)   # [N, K] bool: class k is in case i's set

Split conformal (Vovk et al.; Angelopoulos & Bates, 2021, §1): the score of a case is 1 − p(true class); q is
the ⌈(n + 1)(1 − α)⌉-th smallest of the n validation scores, and a class is in a new case's set when
1 − p(class) ≤ q. If validation and test cases are exchangeable, the set holds the true class with probability
≥ 1 − α. A set of one class is a confident call; a set of two is "unsure".
"""

from __future__ import annotations

import math

import numpy as np

from mosare.data.cohort import Cohort
from mosare.errors import MosareError
from mosare.train.metrics import choose_threshold, predict_labels

TEMPERATURES = np.exp(np.linspace(np.log(0.05), np.log(20.0), 61))  # log-spaced grid searched for T


def apply_temperature(probs: np.ndarray, t: float) -> np.ndarray:
    """[N, K] probabilities → softmax(log p / t) [N, K] (t > 1 softens, t < 1 sharpens; t = 1 is identity)."""
    z = np.log(np.clip(probs, 1e-12, 1.0)) / t
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature on :data:`TEMPERATURES` with the lowest NLL on (validation) ``labels``/``probs``."""
    if not len(labels):
        return 1.0
    losses = [nll(labels, apply_temperature(probs, t)) for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(losses))])


def calibrated_nll(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """(lowest mean negative log-likelihood over temperatures T, that T).

    Used for model selection: unlike the raw validation loss it does not punish a model for being
    over-confident (a temperature fixes that), only for ranking and separating cases badly, and unlike AUC it
    uses every case's probability, not only the order of ~30 positives.
    """
    t = fit_temperature(labels, probs)
    return nll(labels, apply_temperature(probs, t)), t


def conformal_quantile(labels: np.ndarray, probs: np.ndarray, alpha: float = 0.1) -> float:
    """Split-conformal threshold on the score 1 − p(true class): the ⌈(n+1)(1−α)⌉-th smallest validation score
    (1.0, i.e. every class in every set, when n is too small for that rank to exist)."""
    if not 0 < alpha < 1:
        raise MosareError(f"conformal alpha must lie in (0, 1), got {alpha}")
    scores = np.sort(1.0 - probs[np.arange(len(labels)), labels])
    rank = math.ceil((len(scores) + 1) * (1 - alpha))
    return float(scores[rank - 1]) if rank <= len(scores) else 1.0


def prediction_sets(probs: np.ndarray, q: float) -> np.ndarray:
    """[N, K] bool: class k is in case i's set when 1 − p_ik ≤ q. Never empty: the top class is always in."""
    sets = (1.0 - probs) <= q + 1e-12
    sets[np.arange(len(probs)), probs.argmax(1)] = True
    return sets


def set_label(row: np.ndarray, classes: tuple[str, ...] | list[str]) -> str:
    """"IDC" for a one-class set, "IDC or ILC" for a larger one."""
    return " or ".join(c for c, inside in zip(classes, row) if inside)


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Confidence bins of the predicted class: per non-empty bin its mean confidence, accuracy and size."""
    conf, pred = probs.max(1), probs.argmax(1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    out = []
    for b in range(bins):
        m = which == b
        if m.any():
            out.append({"bin": b, "low": float(edges[b]), "high": float(edges[b + 1]), "n": int(m.sum()),
                        "confidence": float(conf[m].mean()), "accuracy": float((pred[m] == labels[m]).mean())})
    return out


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE (Guo et al., 2017): Σ_b (n_b / N) |accuracy_b − confidence_b| over equal-width confidence bins."""
    n = len(labels)
    return float(sum(r["n"] / n * abs(r["accuracy"] - r["confidence"]) for r in reliability(labels, probs, bins))) if n else 0.0


def fit_calibration(labels: np.ndarray, probs: np.ndarray, alpha: float) -> dict[str, float | None]:
    """Everything a run fits on its validation predictions: the decision threshold (validation F1), the
    temperature, and the conformal quantile of the temperature-scaled probabilities at level 1 − ``alpha``."""
    t = fit_temperature(labels, probs)
    return {"threshold": choose_threshold(labels, probs), "temperature": t,
            "conformal_q": conformal_quantile(labels, apply_temperature(probs, t), alpha), "conformal_alpha": alpha}


def prediction_rows(cohort: Cohort, idx: np.ndarray, probs: np.ndarray, subsets: list[str], calib: dict,
                    base: dict) -> list[dict]:
    """One row per case of ``idx``: truth, raw probability of each class (``p_<class>``), temperature-scaled
    (``cal_<class>``), the prediction at the validation threshold, the conformal prediction set, the modality subset."""
    cal = apply_temperature(probs, calib["temperature"])
    sets = prediction_sets(cal, calib["conformal_q"])
    pred = predict_labels(probs, calib["threshold"])
    classes = cohort.classes
    return [{**base, "patient_id": cohort.patient_ids[i], "truth": classes[cohort.labels[i]],
             "prediction": classes[pred[j]], "subset": subsets[j],
             **{f"p_{c}": float(probs[j, c_i]) for c_i, c in enumerate(classes)},
             **{f"cal_{c}": float(cal[j, c_i]) for c_i, c in enumerate(classes)},
             "prediction_set": set_label(sets[j], classes)} for j, i in enumerate(idx)]
