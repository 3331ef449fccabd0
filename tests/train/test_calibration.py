"""Temperature scaling, split-conformal prediction sets and ECE against hand computations."""

import numpy as np
import pytest

from mosare.errors import MosareError
from mosare.train.calibration import (
    apply_temperature,
    conformal_quantile,
    expected_calibration_error,
    fit_temperature,
    prediction_sets,
    set_label,
)


def test_conformal_quantile_and_sets_match_a_hand_computation():
    # 9 validation cases; scores 1 - p(true): 0.1, 0.2, ..., 0.9 (sorted). alpha = 0.2: rank ceil(10 * 0.8) = 8 -> 0.8
    p_true = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    probs = np.stack([p_true, 1 - p_true], 1)
    labels = np.zeros(9, int)
    assert conformal_quantile(labels, probs, alpha=0.2) == pytest.approx(0.8)
    # alpha = 0.05: rank ceil(10 * 0.95) = 10 > 9 cases -> every class in every set
    assert conformal_quantile(labels, probs, alpha=0.05) == 1.0
    # q = 0.8: a class is in when p >= 0.2
    sets = prediction_sets(np.array([[0.95, 0.05], [0.7, 0.3], [0.15, 0.85]]), 0.8)
    assert sets.tolist() == [[True, False], [True, True], [False, True]]
    assert [set_label(r, ("IDC", "ILC")) for r in sets] == ["IDC", "IDC or ILC", "ILC"]
    # never empty: with q = 0 the top class is still in
    assert prediction_sets(np.array([[0.6, 0.4]]), 0.0).tolist() == [[True, False]]
    with pytest.raises(MosareError):
        conformal_quantile(labels, probs, alpha=1.5)


def test_conformal_sets_cover_at_the_target_rate_on_exchangeable_cases():
    rng = np.random.default_rng(0)
    n = 4000
    p1 = rng.uniform(0, 1, n)
    y = (rng.uniform(0, 1, n) < p1).astype(int)  # calibrated by construction
    probs = np.stack([1 - p1, p1], 1)
    q = conformal_quantile(y[:2000], probs[:2000], alpha=0.1)
    sets = prediction_sets(probs[2000:], q)
    coverage = sets[np.arange(2000), y[2000:]].mean()
    assert 0.88 <= coverage <= 0.92


def test_temperature_scaling_undoes_overconfidence_and_lowers_ece():
    rng = np.random.default_rng(1)
    p1 = rng.uniform(0.02, 0.98, 3000)
    y = (rng.uniform(0, 1, 3000) < p1).astype(int)
    true = np.stack([1 - p1, p1], 1)
    sharp = apply_temperature(true, 0.4)  # over-confident version of calibrated probabilities
    t = fit_temperature(y, sharp)
    assert 2.2 < t < 2.9  # recovers (about) the sharpening: log p / 0.4 / t ~ log p at t = 2.5
    assert expected_calibration_error(y, apply_temperature(sharp, t)) < expected_calibration_error(y, sharp)
    assert np.allclose(apply_temperature(true, 1.0), true)


def test_ece_hand_computation():
    # two bins: confidence 0.9 (2 cases, 1 right) and 0.6 (2 cases, 2 right): ECE = 0.5*|0.5-0.9| + 0.5*|1-0.6| = 0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(labels, probs, bins=10) == pytest.approx(0.4)
