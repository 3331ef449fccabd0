"""One road for a case: a held-out patient predicted from its raw files by the saved checkpoint (the road of
`mosare predict` and the dashboard: Predictor.make_case → Batch.collate) gets the probabilities the experiment
itself wrote for that patient (fold-fitted features → make_batch → Batch.collate)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mosare.cli import main
from mosare.inference import Predictor
from mosare.synthetic.cohort import write_demo_cohort


def test_a_held_out_case_from_its_raw_files_gets_the_experiments_probabilities(tmp_path):
    paths = write_demo_cohort(tmp_path / "cohort", n_cases=40, seed=3, slides=False)
    out = tmp_path / "run"
    assert main(["experiment", "--rna", str(paths["rna"]), "--reports", str(paths["reports"]), "--label-column", "label",
                 "--classes", "A,B", "--out", str(out), "--folds", "2", "--epochs", "2", "--models", "mosare",
                 "--scenarios", "complete", "--device", "cpu", "--hidden", "32"]) == 0
    pred = pd.read_csv(out / "predictions.csv")
    pred = pred[(pred.model == "mosare") & (pred.fold == 0)]
    ckpt = next((out / "checkpoints" / "mosare").rglob("fold0.safetensors"))
    predictor = Predictor(ckpt)
    rna = pd.read_csv(paths["rna"]).set_index("patient_id").drop(columns=["label"])
    reports = pd.read_csv(paths["reports"]).set_index("patient_id")["text"]
    checked = {"rna+rpt": 0, "rna": 0, "rpt": 0}
    for row in pred.itertuples():
        if checked.get(row.subset, 9) >= 2:
            continue
        case_rna = None
        if row.patient_id in rna.index:
            case_rna = tmp_path / f"{row.patient_id}.csv"
            rna.loc[[row.patient_id]].to_csv(case_rna, index=False)
        text = reports.get(row.patient_id)
        case = predictor.make_case(rna=case_rna, report_text=text if isinstance(text, str) else None)
        probs = predictor.predict(case).probs
        np.testing.assert_allclose(probs, [row.p_A, row.p_B], atol=2e-4, err_msg=f"{row.patient_id} ({row.subset})")
        checked[row.subset] += 1
    assert checked["rna+rpt"] == 2 and sum(checked.values()) >= 4, checked
    assert pytest.approx(1.0) == float(probs.sum())
