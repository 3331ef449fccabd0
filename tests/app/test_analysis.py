"""A case's analysis on the shipped real BRCA model: each modality's contribution is measured on the probabilities
the Case page shows (temperature-scaled), so the headline, the contribution and "prediction without it" agree."""

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
    for m, delta in a.contributions.items():
        assert delta == pytest.approx(float(p.calibrated[k] - a.without[m].calibrated[k]))
        assert delta != pytest.approx(float(p.probs[k] - a.without[m].probs[k]))  # not the raw probabilities
