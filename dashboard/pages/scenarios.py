"""Scenarios — compare models trained and tested with missing modalities (the paper's Tables 1 and 2)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from dashboard.settings import Settings
from mosare.errors import MosareError
from mosare.explain.history import history_figure, history_runs, load_history
from mosare.explain.scenarios import baseline_table, grid_table, load_metrics, metric_vs_rate_figure

settings = Settings.from_env()
st.title("Scenarios")
st.caption("masked: a modality is hidden at random for a share of cases; removed: those cases are dropped; "
           "the second word is the test set (unmasked = complete test data). Mean ± std over folds; "
           "AUC from probabilities; temperature, threshold and conformal sets fitted on a validation split inside "
           "each training fold, never on the test fold.")
SHIPPED = {"experiment": "synthetic demo", "ablations": "synthetic demo: MoSARe ablations",
           "tcga-brca": "TCGA-BRCA IDC vs ILC (union cohort)", "tcga-brca-table2": "TCGA-BRCA: Table 2 (complete-only)",
           "tcga-brca-ablations": "TCGA-BRCA: ablations (complete-only)"}
known = {SHIPPED.get(p.name, str(p)): p for p in settings.experiment_dirs if (p / "metrics.csv").is_file()}
picked = st.multiselect("Experiment output folders", list(known), default=list(known)[:1], key="sc_pick")
extra = st.text_input("…or another `mosare experiment` output folder on the server", key="sc_extra")
frames = []
for name in picked:
    frames.append(load_metrics(known[name], name))
if extra.strip():
    try:
        frames.append(load_metrics(Path(extra.strip()).expanduser()))
    except MosareError as err:
        st.error(str(err))
if not frames:
    st.info("Pick at least one experiment.")
    st.stop()
metrics = pd.concat(frames, ignore_index=True)
metric = st.radio("Metric", ["auc", "f1", "acc"], horizontal=True, key="sc_metric",
                  format_func=lambda m: {"auc": "AUC", "f1": "F1", "acc": "Accuracy"}[m])
for name, part in metrics.groupby("experiment", sort=False):
    st.subheader(str(name))
    st.plotly_chart(metric_vs_rate_figure(part, metric), key=f"sc_fig_{name}")
    st.markdown("**Scenario × mask rate** (Table 2 layout)")
    st.dataframe(grid_table(part, metric))
    st.markdown("**Complete data: model comparison** (Table 1 layout)")
    st.dataframe(baseline_table(part))
    ablations = sorted(m for m in part.model.unique() if m.startswith("mosare-"))
    if ablations:
        st.markdown("**Ablations** (complete data; `mosare-no-X` = MoSARe without component X)")
        st.dataframe(baseline_table(part[part.model.isin(["mosare", *ablations])]))
    else:
        st.caption("No ablation runs in this experiment (pick “synthetic demo: MoSARe ablations”, or run "
                   "`mosare experiment --models mosare,mosare-no-moe,mosare-no-cma,mosare-no-align,mosare-no-recon`).")
    history = load_history(known[name]) if name in known else None
    if history is not None and not history.empty:
        with st.expander("Training history (every loss part, validation loss and AUC, learning rate per epoch)"):
            options = history_runs(history)
            pick = st.selectbox("Run", options, key=f"sc_hist_{name}",
                                format_func=lambda s: f"{s[0]} · trained {s[1]}" + (f" at {s[2] * 100:g} %" if s[2] else ""))
            st.plotly_chart(history_figure(history, *pick), key=f"sc_hist_fig_{name}")
