"""RNA — per gene, what moved the prediction (integrated gradients) beside what the RNA attention heads look at."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import resources, state
from dashboard.components.attribution import (ATTENTION_COLOUR, ATTENTION_TITLE, ATTRIBUTION_TITLE, case_attribution,
                                              legend)
from mosare.explain.attribution import probability
from mosare.explain.rna import bar_figure, gene_attention, pathway_attention, signed_bar_figure
from mosare.data.rna import load_pathways

st.title("RNA")
cs = state.get()
if cs is None or cs.analysis is None:
    st.info("Load a case and press Run on the Case page first.")
    st.stop()
pred = cs.analysis.prediction
if not pred.present[1] or "rna_gene" not in pred.attention:
    st.info("RNA was not given to the model (missing or switched off).")
    st.stop()
model = resources.predictor(cs.model_path, resources.device())
genes = gene_attention(pred.attention["rna_gene"], model.genes)
k = st.slider("How many", 5, 40, 15, key="rna_k")
result = case_attribution(cs, "rna")

left, right = st.columns(2)
with left:
    st.markdown(f"**{ATTRIBUTION_TITLE} (integrated gradients)**")
    if result is not None:
        m = result.modalities["rna"]
        top = np.argsort(-np.abs(m.attribution), kind="stable")[:k]
        st.plotly_chart(signed_bar_figure([m.items[i] for i in top], [float(m.attribution[i]) for i in top],
                                          f"Top genes by |attribution| (Δ log-odds({result.label}))",
                                          f"Δ log-odds({result.label})"),
                        key="rna_attr_genes")
        st.caption(legend(result, "rna"))
        st.caption(f"Completeness: the attributions sum to {m.attribution.sum():+.3f}; the log-odds of {result.label} "
                   f"is {m.reference:+.3f} with this expression (P = {probability(m.reference):.4f}) and "
                   f"{m.baseline:+.3f} with every gene at its training mean (P = {probability(m.baseline):.4f}), a "
                   f"difference of {m.reference - m.baseline:+.3f}; a gap is where the model's top-k routing jumps on "
                   "the way, which gradients cannot see.")
    else:
        st.info("No attribution for this selection.")
with right:
    st.markdown(f"**{ATTENTION_TITLE}**")
    heads = np.shape(pred.attention["rna_gene"])[0] if np.ndim(pred.attention["rna_gene"]) == 2 else 1
    fig = bar_figure(list(genes.index[:k]), [float(v) for v in genes.values[:k]],
                     f"Top genes by attention (mean over the {heads} heads)", "attention")
    fig.update_traces(marker_color=ATTENTION_COLOUR)
    st.plotly_chart(fig, key="rna_genes")
pw = pathway_attention(genes, load_pathways())
if pw.empty:
    st.info("None of the 331 pathways has at least 3 of this model's genes (e.g. synthetic gene names).")
else:
    top = pw.head(k)
    st.plotly_chart(bar_figure(list(top.pathway), [float(v) for v in top.score],
                               "Top pathways by attention (mean gene attention × number of genes; 1 = uniform)",
                               "relative attention"), key="rna_pathways")
