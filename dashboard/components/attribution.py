"""Attributions on the explanation pages: computed through the shared job queue once per case, modality selection
and modality, then kept in the session (switching a modality off and on again, or revisiting a page, reuses it)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from dashboard import resources, state
from dashboard.components.jobs import run_queued
from mosare import MODALITIES
from mosare.errors import MosareError
from mosare.explain.attribution import CaseAttribution, attribute

ATTRIBUTION_TITLE = "Attribution — what moved the prediction"
ATTENTION_TITLE = "Attention — what the model looked at"
HOW = {"rpt": "Occlusion: each sentence removed in turn and the report re-encoded",
       "rna": "Integrated gradients from the training-mean expression (each bar: the gene's share of the change in "
              "log-odds between that baseline and this case)",
       "wsi": "Occlusion: each of the highest-attention tiles removed from the slide's bag in turn"}
SCALE = {"rpt": "colour intensity = |Δ log-odds| relative to the strongest sentence",
         "rna": "bar length = Δ log-odds",
         "wsi": "colour = Δ log-odds relative to the strongest tile, white = no effect"}
UNIT = ("Scores are changes in the log-odds of the predicted class, log P − log(1 − P): ±1 multiplies or divides its "
        "odds by e ≈ 2.7, whatever the probability (a probability barely moves once a case is confident).")
ATTENTION_COLOUR = "#e66100"  # the report's attention hue: attention never in the attribution's red / blue


def case_attribution(cs: state.CaseState, modality: str) -> CaseAttribution | None:
    """The attribution of ``modality`` for the session's case under its current modality selection (None when the
    modality was not given to the model, or the attribution failed: a warning says why)."""
    a = cs.analysis
    if a is None or not a.used[MODALITIES.index(modality)]:
        return None
    key = (tuple(bool(x) for x in a.used), modality)
    if key not in cs.attributions:
        predictor = resources.predictor(cs.model_path, resources.device())
        embedder = resources.embedder() if modality == "rpt" and predictor.text_encoder is None else None
        try:
            cs.attributions[key] = run_queued(attribute, predictor, cs.case, np.asarray(a.used), (modality,),
                                              embedder=embedder, label="Computing the attribution", unit="modality")
        except (MosareError, ValueError) as err:
            st.warning(f"No attribution: {err}")
            return None
    result = cs.attributions[key]
    return result if modality in result.modalities else None


def legend(result: CaseAttribution, modality: str) -> str:
    """One caption line: the method, the colours' meaning and the scale of the scores."""
    m = result.modalities[modality]
    strongest = float(np.nanmax(np.abs(m.attribution))) if len(m.attribution) else 0.0
    return (f"{HOW[modality]}. Red: pushed toward **{result.label}**, blue: away from it; {SCALE[modality]} "
            f"(Δ log-odds({result.label}) up to ±{strongest:.3g}). {UNIT} Computed in {m.seconds:.2f} s.")
