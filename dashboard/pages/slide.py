"""Slide — attention heatmap over the tiles of the loaded case, and below it what moved the prediction (tile
occlusion of the highest-attention tiles)."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.components.attribution import ATTENTION_TITLE, ATTRIBUTION_TITLE, case_attribution, legend
from dashboard.components.slide_viewer import slide_viewer, tile_attribution

st.title("Slide")
cs = state.get()
if cs is None or cs.analysis is None:
    st.info("Load a case and press Run on the Case page first.")
elif cs.view is None:
    if "wsi" in cs.analysis.prediction.reconstructed:
        st.info("Slide missing: this case has no slide or patch features; the model reconstructed the slide's "
                "tokens from the other modalities (see the Case page).")
    else:
        st.info("Slide missing: this case has no slide or patch features, and this model has no slide branch (the "
                "TCGA-BRCA tables it was trained on carry expression and reports only): it predicts from what is present.")
else:
    st.caption(f"{cs.name} · prediction **{cs.analysis.prediction.label}**")
    st.subheader(ATTENTION_TITLE)
    slide_viewer(cs.view, cs.analysis.prediction, (cs.truth or {}).get("slide_region_bbox"))
    st.subheader(f"{ATTRIBUTION_TITLE} (occlusion)")
    result = case_attribution(cs, "wsi")
    if result is None:
        st.info("The slide was not given to the model (switched off): nothing to attribute.")
    else:
        st.caption(legend(result, "wsi"))
        tile_attribution(cs.view, result)
