"""Report — per sentence, what moved the prediction (occlusion) beside what the model looked at (attention), and
the words removed before the model."""

from __future__ import annotations

import streamlit as st

from dashboard import state
from dashboard.components.attribution import ATTENTION_TITLE, ATTRIBUTION_TITLE, case_attribution, legend
from mosare.explain import heatmap
from mosare.explain.report import highlight_html, rank_sentences, signed_highlight_html, struck_html

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
result = case_attribution(cs, "rpt")
sentences = cs.case.sentences

left, right = st.columns(2)
with left:
    st.markdown(f"**{ATTRIBUTION_TITLE} (occlusion)**")
    if result is None:
        st.info("The report was not given to the model (switched off): nothing to attribute.")
    else:
        st.caption(legend(result, "rpt"))
        st.html(signed_highlight_html(sentences, result.modalities["rpt"].attribution, result.label))
with right:
    st.markdown(f"**{ATTENTION_TITLE}**")
    if scores is None:
        st.info("The report was not given to the model (switched off), or the model has no cross-modal attention: "
                "shown without highlights.")
    st.caption("One hue, intensity = cross-modal attention of the sentence's local clusters (percentile within this "
               "report).")
    st.html(highlight_html(sentences, None if scores is None else heatmap.normalise(scores, "percentile")))

if result is not None or scores is not None:
    left, right = st.columns(2)
    if result is not None:
        signed = result.modalities["rpt"].attribution
        with left:
            st.markdown(f"**Top sentences toward {result.label}** (Δ log-odds when removed)")
            st.dataframe(rank_sentences(sentences, signed, k=5), hide_index=True)
            st.markdown(f"**Top sentences away from {result.label}**")
            away = rank_sentences(sentences, -signed, k=3)
            away["score"] = -away["score"]
            st.dataframe(away[away.score < 0], hide_index=True)
    if scores is not None:
        with right:
            st.markdown("**Top sentences by attention**")
            st.dataframe(rank_sentences(sentences, scores, k=5), hide_index=True)
planted = (cs.truth or {}).get("planted_sentence")
if planted:
    st.caption(f"Planted class-signal sentence of this synthetic case: “{planted}”")
with st.expander("The report as given — words removed before the model (label leaks) struck through"):
    st.html(struck_html(cs.report_text or "", cs.report_removed))
