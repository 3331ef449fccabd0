"""The Cohort page backend (mosare.explain.cohort) on a hand-made predictions table, and the page itself.

The table below (classes A, B; B is the positive class) was worked out by hand:

fold 0: P1 A p_B .25 | P2 A .65 | P3 B .75 | P4 B .35      fold 1: P5 A .15 | P6 A .35 | P7 B .85 | P8 B .95
* prediction = arg-max of p → confusion (rows truth A, B; columns predicted A, B) [[3, 1], [1, 3]].
* AUC fold 0: B {.75, .35} vs A {.25, .65} → 3 of 4 pairs ordered = 75 %; fold 1: 100 %; mean 87.5,
  sd (ddof 1) √312.5 = 17.68. Pooled: 14 ordered pairs + one tie (.35 vs .35, counts ½) of 16 = 90.625 %.
* raw ECE, 10 bins: (.6,.7] P2 ✗ P4 ✗ P6 ✓ conf .65 acc ⅓; (.7,.8] P1 P3 conf .75 acc 1; (.8,.9] P5 P7 .85 / 1;
  (.9,1] P8 .95 / 1 → (3·.31667 + 2·.25 + 2·.15 + .05) / 8 = 1.8 / 8 = 0.225.
* calibrated: every cal_ confidence is .55 with the same arg-max → one bin, acc 6/8 → |.75 − .55| = 0.2.
* sets: P2, P6 "A or B"; P4 "A" (misses its truth B) → coverage 7/8, mean size 10/8, unsure 2/8.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mosare.errors import InputError, MosareError
from mosare.explain import cohort
from tests.conftest import REPO_ROOT

P_B = [0.25, 0.65, 0.75, 0.35, 0.15, 0.35, 0.85, 0.95]
TRUTH = list("AABBAABB")
SETS = ["A", "A or B", "B", "A", "A", "A or B", "B", "B"]
SUBSETS = ["rna+rpt"] * 4 + ["rna", "rna", "rpt", "rpt"]


def _frame() -> pd.DataFrame:
    cal_b = [0.55 if p > 0.5 else 0.45 for p in P_B]
    mosare = pd.DataFrame({
        "model": "mosare", "scenario": "complete", "mask_rate": 0.0, "fold": [0] * 4 + [1] * 4,
        "patient_id": [f"P{i}" for i in range(1, 9)], "truth": TRUTH, "prediction": ["B" if p > 0.5 else "A" for p in P_B],
        "subset": SUBSETS, "p_A": [1 - p for p in P_B], "p_B": P_B, "cal_A": [1 - c for c in cal_b], "cal_B": cal_b,
        "prediction_set": SETS, "map_x": np.linspace(-1, 1, 8), "map_y": np.linspace(1, -1, 8)})
    snn = mosare.assign(model="snn", scenario="masked-masked", mask_rate=0.3, map_x=np.nan, map_y=np.nan)
    return pd.concat([mosare, snn], ignore_index=True)


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "runs" / "exp"
    d.mkdir(parents=True)
    _frame().to_csv(d / "predictions.csv", index=False)
    pd.DataFrame({"model": ["mosare", "snn"], "scenario": ["complete", "masked-masked"], "mask_rate": [0.0, 0.3],
                  "fold": [0, 0], "status": "ok", "conformal_alpha": [0.1, 0.2]}).to_csv(d / "runs.csv", index=False)
    return d


@pytest.fixture
def sel(folder):
    return cohort.select(cohort.load_predictions(folder), "mosare", "complete", 0.0)


def test_load_and_choices(folder):
    preds = cohort.load_predictions(folder / "predictions.csv")  # the CSV itself works too
    assert cohort.classes_of(preds) == ["A", "B"]
    assert cohort.choices(preds) == [("mosare", "complete", 0.0), ("snn", "masked-masked", 0.3)]
    assert preds["patient_id"].tolist()[:2] == ["P1", "P2"] and preds["fold"].dtype == np.int64
    with pytest.raises(MosareError, match="no predictions for model mosare, scenario masked-masked"):
        cohort.select(preds, "mosare", "masked-masked", 0.3)


def test_missing_file_or_columns_is_a_one_line_error(tmp_path):
    (tmp_path / "metrics.csv").write_text("model\n")
    with pytest.raises(InputError) as err:
        cohort.load_predictions(tmp_path)
    assert "no predictions.csv" in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(InputError, match="experiment folder not found"):
        cohort.load_predictions(tmp_path / "nowhere")
    _frame().drop(columns=["prediction_set", "cal_B"]).to_csv(tmp_path / "predictions.csv", index=False)
    with pytest.raises(InputError) as err:
        cohort.load_predictions(tmp_path)
    assert "prediction_set" in str(err.value) and "cal_<class>" in str(err.value) and "\n" not in str(err.value)
    _frame().assign(truth="C").to_csv(tmp_path / "predictions.csv", index=False)
    with pytest.raises(InputError, match="'C' are not among the classes"):
        cohort.load_predictions(tmp_path)


def test_case_table_and_confusion(sel):
    table = cohort.case_table(sel)
    assert list(table.columns) == ["patient", "fold", "truth", "prediction", "probability", "prediction set",
                                   "modalities", "correct"]
    assert table["correct"].tolist() == [True, False, True, False, True, True, True, True]
    assert np.allclose(table["probability"], 0.55)  # calibrated probability of the predicted class
    assert table["modalities"].tolist()[3:] == ["RNA-seq + Report", "RNA-seq", "RNA-seq", "Report", "Report"]
    assert cohort.confusion(sel).to_numpy().tolist() == [[3, 1], [1, 3]]
    fig = cohort.confusion_figure(sel)
    assert fig.data[0].text[0] == ["3<br>75%", "1<br>25%"]


def test_auc_pooled_and_per_fold(sel):
    assert cohort.fold_aucs(sel).tolist() == pytest.approx([75.0, 100.0])
    s = cohort.summary(sel)
    assert s["auc_pooled"] == pytest.approx(90.625)
    assert s["auc_fold_mean"] == pytest.approx(87.5) and s["auc_fold_sd"] == pytest.approx(math.sqrt(312.5))
    fig = cohort.roc_figure(sel)
    assert "pooled AUC 90.6 %" in fig.layout.title.text and "87.5 ± 17.7 %" in fig.layout.title.text
    pooled = next(t for t in fig.data if t.name == "pooled")
    assert (pooled.x[-1], pooled.y[-1]) == (1.0, 1.0) and sum(t.name.startswith("fold") for t in fig.data) == 2


def test_calibration_and_conformal(sel, folder):
    assert cohort.calibration_errors(sel) == pytest.approx((0.225, 0.2))
    names = [t.name for t in cohort.reliability_figure(sel).data]
    assert "raw (ECE 0.225)" in names and "temperature-scaled (ECE 0.200)" in names
    s = cohort.summary(sel, cohort.load_runs(folder))
    assert s["coverage"] == pytest.approx(7 / 8) and s["mean_set_size"] == pytest.approx(1.25)
    assert s["unsure"] == pytest.approx(0.25) and s["target_coverage"] == pytest.approx(0.9)
    assert s["n"] == 8 and s["n_folds"] == 2 and s["accuracy"] == pytest.approx(0.75)
    assert cohort.summary(sel)["target_coverage"] is None  # no runs.csv


def test_map(sel, folder):
    fig = cohort.map_figure(sel, "correct")
    assert {t.name for t in fig.data} == {"correct", "wrong"}
    assert sum(len(t.x) for t in fig.data) == 8 and len(fig.layout.annotations) == 2  # one panel per fold
    assert any("P2<br>truth A, predicted B (0.55)<br>set: A or B" in h for t in fig.data for h in t.text)
    assert {t.name for t in cohort.map_figure(sel, "subset").data} == {"RNA-seq + Report", "RNA-seq", "Report"}
    with pytest.raises(ValueError):
        cohort.map_figure(sel, "colour")
    snn = cohort.select(cohort.load_predictions(folder), "snn", "masked-masked", 0.3)
    assert cohort.has_map(sel) and not cohort.has_map(snn)


def test_find_experiments(folder, tmp_path):
    hidden = tmp_path / "runs" / "exp" / "checkpoints" / "x"
    hidden.mkdir(parents=True)
    (hidden / "predictions.csv").write_text("")
    assert cohort.find_experiments([tmp_path / "runs", tmp_path / "missing"]) == [folder]


def test_page_is_registered_after_scenarios():
    lines = (REPO_ROOT / "streamlit_app.py").read_text().splitlines()
    at = [i for i, line in enumerate(lines) if '"dashboard/pages/cohort.py"' in line]
    assert len(at) == 1 and "scenarios.py" in lines[at[0] - 1] and 'title="Cohort"' in lines[at[0]]


def test_cohort_page(folder, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    import streamlit
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("MOSARE_MODEL_DIRS", str(tmp_path / "runs"))
    monkeypatch.setenv("MOSARE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cohort, "SHIPPED", tmp_path / "not-shipped-yet")
    at = AppTest.from_file(str(REPO_ROOT / "dashboard" / "pages" / "cohort.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [f"{tmp_path / 'not-shipped-yet'}: experiment folder not found"]
    box = at.selectbox(key="co_source")
    box.set_value(str(folder)).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert len(at.dataframe) == 1 and len(at.dataframe[0].value) == 8
    assert len(at.get("plotly_chart")) == 4  # confusion, ROC, reliability, map
    assert [m.value for m in at.metric][:2] == ["8", "90.6 %"]
    at.selectbox(key="co_model").set_value("snn").run()
    assert not at.exception and any("no fused embedding" in i.value for i in at.info)
    at.selectbox(key="co_model").set_value("mosare").run()
    at.session_state["co_table"] = {"selection": {"rows": [1], "columns": []}}  # the user clicks row 2 (P2)
    at.run()
    switched = []
    monkeypatch.setattr(streamlit, "switch_page", switched.append)
    at.button(key="co_open").click().run()
    assert not at.exception, at.exception
    assert at.session_state["open_case"] == {"patient_id": "P2", "source": str(folder)}
    assert switched == ["dashboard/pages/case.py"]
