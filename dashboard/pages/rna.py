"""RNA — genes and pathways the RNA attention heads look at."""

from __future__ import annotations

import streamlit as st

from dashboard import resources, state
from mosare.explain.rna import bar_figure, gene_attention, pathway_attention
from mosare.preprocess.rna import load_pathways

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
st.plotly_chart(bar_figure(list(genes.index[:k]), [float(v) for v in genes.values[:k]],
                           "Top genes by attention (mean over the 16 heads)", "attention"), key="rna_genes")
pw = pathway_attention(genes, load_pathways())
if pw.empty:
    st.info("None of the 331 pathways has at least 3 of this model's genes (e.g. synthetic gene names).")
else:
    top = pw.head(k)
    st.plotly_chart(bar_figure(list(top.pathway), [float(v) for v in top.score],
                               "Top pathways (mean gene attention × number of genes; 1 = uniform)", "relative attention"),
                    key="rna_pathways")
