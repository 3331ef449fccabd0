"""A case's analysis on the shipped real BRCA model: each modality's contribution is the change in log-odds of the
probabilities the Case page shows (temperature-scaled), so the headline, the contribution and "prediction without
it" agree, in the attributions' unit."""

from __future__ import annotations

import numpy as np
import pytest

from mosare.app.demo_brca import MODEL_PATH, brca_cases
from mosare.app.workbench import analyse, load_case
from mosare.inference import Predictor


def test_contributions_use_the_calibrated_probabilities_the_page_shows(tmp_path):
    pred = Predictor(MODEL_PATH)
    assert pred.info.temperature is not None  # the shipped model carries a temperature
    case = next(c for c in brca_cases(tmp_path) if c.rna_path is not None and c.report_text)
    lc = load_case(pred, rna_path=case.rna_path, report_text=case.report_text, cache_dir=tmp_path)
    a = analyse(pred, lc.case)
    p, k = a.prediction, int(a.prediction.probs.argmax())
    assert p.calibrated is not None and np.array_equal(p.shown, p.calibrated)
    assert set(a.contributions) == {"rna", "rpt"}
    def log_odds(q):  # from the shown probabilities (float32, fine away from P ≈ 1)
        q = q.astype(np.float64)
        return np.log(q[k]) - np.log(1 - q[k])

    for m, delta in a.contributions.items():
        assert delta == pytest.approx(log_odds(p.calibrated) - log_odds(a.without[m].calibrated), abs=1e-4)
        assert delta != pytest.approx(log_odds(p.probs) - log_odds(a.without[m].probs), abs=1e-4)  # not the raw ones


def test_log_odds_keep_their_digits_where_the_probability_rounds_to_one():
    from mosare.inference import Prediction

    logits = np.array([0.0, 40.0])  # P(1) = 1 − 4e-18: float32 and float64 probabilities both read 1.0
    log_probs = logits - np.log(np.exp(logits - 40).sum()) - 40
    pred = Prediction(classes=["a", "b"], probs=np.array([0.0, 1.0], np.float32), present=np.ones(3, bool),
                      reconstructed=[], attention={}, log_shown=log_probs)
    assert pred.log_odds(1) == pytest.approx(40.0)
    assert pred.log_odds(0) == pytest.approx(-40.0)
