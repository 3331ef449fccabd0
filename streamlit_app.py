"""MoSARe dashboard — the router and the frame shared by every page (`streamlit run streamlit_app.py`)."""

from __future__ import annotations

import streamlit as st

from dashboard import resources
from dashboard.auth import require_sign_in
from dashboard.settings import Settings

st.set_page_config(page_title="MoSARe", page_icon=":material/biotech:", layout="wide")
require_sign_in()

settings = Settings.from_env()
models = resources.find_models(settings.model_dirs)
with st.sidebar:
    st.markdown("### MoSARe")
    st.caption("Multimodal subtyping that keeps working when data is missing. Research use only.")
    labels = list(models)
    first = next((i for i, x in enumerate(labels) if settings.default_model and settings.default_model.lower() in x.lower()), 0)
    label = st.selectbox("Model", labels, index=first, key="model_label", help="the embedded demo model, or any checkpoint "
                         "from `mosare experiment` found under MOSARE_MODEL_DIRS (default: runs/)")
    st.session_state["model_path"] = models[label]
    st.caption(f"Device: **{resources.device_label()}**")

pages = [
    st.Page("dashboard/pages/case.py", title="Case", icon=":material/upload_file:", default=True),
    st.Page("dashboard/pages/slide.py", title="Slide", icon=":material/grid_on:"),
    st.Page("dashboard/pages/report.py", title="Report", icon=":material/article:"),
    st.Page("dashboard/pages/rna.py", title="RNA", icon=":material/genetics:"),
    st.Page("dashboard/pages/scenarios.py", title="Scenarios", icon=":material/query_stats:"),
    st.Page("dashboard/pages/cohort.py", title="Cohort", icon=":material/groups:"),
    st.Page("dashboard/pages/about.py", title="About / model card", icon=":material/info:"),
]
st.navigation(pages).run()
