"""Patient-level folds, the validation split inside a training fold, and missing-modality scenarios (Table 2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from mosare.errors import MosareError

SCENARIOS = ("complete", "masked-masked", "masked-unmasked", "removed-unmasked")


def patient_folds(labels: np.ndarray, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified, seeded folds over patients (one row = one patient, so no patient spans two folds)."""
    if np.bincount(labels).min() < n_folds:
        raise MosareError(f"{n_folds} folds need at least {n_folds} patients per class (have {np.bincount(labels).tolist()})")
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in skf.split(np.zeros(len(labels)), labels)]


def train_val_split(train_idx: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Carve a stratified validation split out of the training fold (model selection never sees the test fold)."""
    tr, va = train_test_split(train_idx, test_size=val_fraction, stratify=labels[train_idx], random_state=seed)
    return np.sort(tr), np.sort(va)


def mask_modalities(present: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Drop each present modality independently with probability ``rate`` (eq. 21), never all of a case's
    modalities: a case that would lose everything gets one of its modalities back at random."""
    drop = (rng.random(present.shape) < rate) & present
    out = present & ~drop
    for i in np.where(~out.any(axis=1) & present.any(axis=1))[0]:
        out[i, rng.choice(np.where(present[i])[0])] = True
    return out


@dataclass
class ScenarioSplit:
    """Presence masks and patients for one scenario of one fold. ``train_idx`` may shrink (removed-train)."""

    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    present: np.ndarray  # [P, 3] presence used for train/val (after masking)
    test_present: np.ndarray  # [P, 3] presence used at test time
    not_applicable: str | None = None


def make_scenario(scenario: str, rate: float, present: np.ndarray, labels: np.ndarray, train_idx: np.ndarray,
                  val_idx: np.ndarray, test_idx: np.ndarray, seed: int) -> ScenarioSplit:
    """masked-masked: mask train/val and test; masked-unmasked: mask train/val only; removed-unmasked: mask
    train/val, then drop every training/validation case missing any modality the cohort has; complete: no
    artificial masking. Natural missingness is always kept."""
    if scenario not in SCENARIOS:
        raise MosareError(f"unknown scenario {scenario!r}; choose from {', '.join(SCENARIOS)}")
    rng = np.random.default_rng(seed)
    if scenario == "complete" or rate == 0:
        return ScenarioSplit(train_idx, val_idx, test_idx, present, present)
    masked = mask_modalities(present, rate, rng)
    test_present = masked if scenario == "masked-masked" else present
    if scenario != "removed-unmasked":
        return ScenarioSplit(train_idx, val_idx, test_idx, masked, test_present)
    cohort_mods = present.any(axis=0)
    complete = masked[:, cohort_mods].all(axis=1)
    tr, va = train_idx[complete[train_idx]], val_idx[complete[val_idx]]
    n_classes = labels.max() + 1
    reason = None
    if len(tr) == 0:
        reason = "removing incomplete cases leaves no training case"
    elif np.bincount(labels[tr], minlength=n_classes).min() == 0 or np.bincount(labels[va], minlength=n_classes).min() == 0:
        reason = "removing incomplete cases leaves a class without training or validation cases"
    return ScenarioSplit(tr, va, test_idx, masked, present, not_applicable=reason)
