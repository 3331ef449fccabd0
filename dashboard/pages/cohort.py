"""Cohort — every held-out case of an experiment: table, confusion matrix, ROC, calibration, conformal sets, map."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.settings import Settings
from mosare.errors import MosareError
from mosare.explain import cohort

settings = Settings.from_env()
st.title("Cohort")
st.caption("The held-out (test-fold) cases of one experiment run setting, all folds pooled: each case was predicted "
           "by the model of the fold that did not train on it. Probabilities are temperature-scaled and prediction "
           "sets split-conformal, both fitted on each run's validation split.")


@st.cache_data(ttl=60, show_spinner=False)
def _experiments(dirs: tuple[Path, ...]) -> list[str]:
    return [str(p) for p in cohort.find_experiments(dirs)]


@st.cache_data(max_entries=8, show_spinner="Reading the predictions…")
def _load(folder: str, mtimes: tuple[float, float]) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(predictions, runs) of ``folder``; ``mtimes`` (of both files) only keys the cache."""
    return cohort.load_predictions(folder), cohort.load_runs(folder)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


SHIPPED_LABEL = "TCGA-BRCA IDC vs ILC (shipped results)"
sources = {SHIPPED_LABEL: str(cohort.SHIPPED)}
sources.update({p: p for p in _experiments(settings.model_dirs) if Path(p) != cohort.SHIPPED})
label = st.selectbox("Experiment", list(sources), key="co_source",
                     help="the shipped TCGA-BRCA experiment, or any `mosare experiment` output folder with a "
                          "predictions.csv under MOSARE_MODEL_DIRS (default: runs/)")
folder = sources[label]
try:
    preds, runs = _load(folder, (_mtime(Path(folder) / "predictions.csv"), _mtime(Path(folder) / "runs.csv")))
except MosareError as err:
    st.error(str(err).splitlines()[0] if str(err) else type(err).__name__)
    st.stop()
if preds.empty:
    st.info("This experiment has no held-out predictions (every run was not applicable).")
    st.stop()

options = cohort.choices(preds)
c1, c2, c3 = st.columns(3)
model = c1.selectbox("Model", list(dict.fromkeys(o[0] for o in options)), key="co_model")
scenario = c2.selectbox("Scenario", list(dict.fromkeys(o[1] for o in options if o[0] == model)), key="co_scenario")
rate = c3.selectbox("Mask rate", [o[2] for o in options if o[:2] == (model, scenario)], key="co_rate",
                    format_func=lambda r: f"{r * 100:g} %")
sel = cohort.select(preds, model, scenario, rate)
s = cohort.summary(sel, runs)

m = st.columns(6)
m[0].metric("Cases", f"{s['n']}", help=f"held-out cases of {s['n_folds']} folds")
m[1].metric("AUC pooled", f"{s['auc_pooled']:.1f} %")
m[2].metric("AUC per fold", f"{s['auc_fold_mean']:.1f} %", delta=f"± {s['auc_fold_sd']:.1f} sd", delta_color="off",
            help="mean and standard deviation over folds (how metrics.csv reports it)")
m[3].metric("ECE", f"{s['ece_calibrated']:.3f}", delta=f"{s['ece_calibrated'] - s['ece_raw']:+.3f} vs raw",
            delta_color="inverse", help="expected calibration error after temperature scaling (raw: "
                                        f"{s['ece_raw']:.3f}); lower is better")
target = s["target_coverage"]
m[4].metric("Set coverage", f"{s['coverage'] * 100:.1f} %", help="share of cases whose prediction set holds the true class"
            + (f"; target {target:.0%}" if target is not None else ""))
m[5].metric("Unsure sets", f"{s['unsure'] * 100:.1f} %", help=f"sets with more than one class; mean set size "
                                                      f"{s['mean_set_size']:.2f}")
if target is not None:
    st.caption(f"Conformal target coverage {target:.0%}; achieved {s['coverage']:.1%}. Accuracy at the validation "
               f"threshold {s['accuracy']:.1%}.")

st.subheader("Cases")
table = cohort.case_table(sel)
event = st.dataframe(
    table, key="co_table", on_select="rerun", selection_mode="single-row", hide_index=True,
    column_config={"probability": st.column_config.NumberColumn(
        "probability", format="%.3f", help="temperature-scaled probability of the predicted class"),
        "correct": st.column_config.CheckboxColumn("correct")})
rows = [r for r in (event.selection.rows if event is not None else []) if r < len(table)]  # stale after a switch
if rows:
    case = table.iloc[rows[0]]
    st.write(f"Selected **{case['patient']}**: truth {case['truth']}, predicted {case['prediction']} "
             f"({case['probability']:.2f}), set {case['prediction set']}, {case['modalities']}.")
    if st.button("Open on the Case page", key="co_open", type="primary"):
        st.session_state["open_case"] = {"patient_id": str(case["patient"]), "source": str(folder)}
        st.switch_page("dashboard/pages/case.py")
else:
    st.caption("Select a row to open that case on the Case page.")

tabs = st.tabs(["Confusion matrix", "ROC", "Calibration", "Map"])
with tabs[0]:
    st.plotly_chart(cohort.confusion_figure(sel), key="co_confusion")
with tabs[1]:
    st.plotly_chart(cohort.roc_figure(sel), key="co_roc")
with tabs[2]:
    st.plotly_chart(cohort.reliability_figure(sel), key="co_reliability")
with tabs[3]:
    if cohort.has_map(sel):
        colour = st.radio("Colour by", list(cohort.COLOUR_BY), key="co_colour", horizontal=True,
                          format_func=cohort.COLOUR_BY.get)
        st.plotly_chart(cohort.map_figure(sel, colour), key="co_map")
        st.caption("Each fold's cases lie on the first two principal axes of that fold's training cases, so the "
                   "panels do not share axes.")
    else:
        st.info(f"{model} has no fused embedding to map (a single-modality or baseline model).")
