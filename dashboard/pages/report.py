"""Report — sentences highlighted by attention, the top sentences, and the words removed before the model."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from mosare.explain import heatmap
from mosare.explain.report import highlight_html, rank_sentences, struck_html

st.title("Report")
cs = state.get()
if cs is None or cs.analysis is None:
    st.info("Load a case and press Run on the Case page first.")
    st.stop()
if not cs.case.sentences:
    st.info("This case has no report.")
    st.stop()
pred = cs.analysis.prediction
scores = pred.sentence_scores
if scores is None:
    st.info("The report was not given to the model (switched off), or the model has no cross-modal attention: "
            "shown without highlights.")
st.markdown("**What the model read** — one hue, intensity = cross-modal attention of the sentence's local "
            "clusters (percentile within this report).")
st.html(highlight_html(cs.case.sentences, None if scores is None else heatmap.normalise(scores, "percentile")))
if scores is not None:
    st.markdown("**Top sentences**")
    st.dataframe(rank_sentences(cs.case.sentences, scores, k=5), hide_index=True)
    planted = (cs.truth or {}).get("planted_sentence")
    if planted:
        st.caption(f"Planted class-signal sentence of this synthetic case: “{planted}”")
with st.expander("The report as given — words removed before the model (label leaks) struck through"):
    st.html(struck_html(cs.report_text or "", cs.report_removed))
