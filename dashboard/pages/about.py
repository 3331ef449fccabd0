"""About — the model card of the selected checkpoint."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import resources
from mosare.app import demo_brca
from mosare.app.workbench import MODALITY_NAMES, encoder_for
from mosare.errors import MosareError
from mosare.slides.encoders import get_encoder

st.title("About / model card")
path = Path(st.session_state.get("model_path", str(demo_brca.MODEL_PATH)))
try:
    pred = resources.predictor(str(path), resources.device())
except MosareError as err:
    st.error(f"Cannot load the model: {err}")
    st.stop()
info = pred.info
st.warning("**Research use only.** Not a medical device; not for diagnosis or treatment decisions. Attention maps "
           "show where the model looked, not why: attention is not a causal explanation.")
st.markdown(f"**Model**: `{info.model}` · **classes**: {', '.join(pred.classes)} · **modalities**: "
            f"{', '.join(MODALITY_NAMES[m] for m in pred.cfg.modalities)} · **checkpoint**: `{path.name}`")
if "wsi" in pred.cfg.modalities:
    try:
        enc = get_encoder(encoder_for(pred))
        st.markdown(f"**Patch encoder**: `{enc.name}` ({enc.dim}-d) — {enc.provenance}")
    except MosareError as err:
        st.markdown(f"**Patch encoder**: unknown ({err})")
text_encoder = f"{pred.text_encoder.description} fitted on the training fold" if pred.text_encoder else None
st.markdown(f"**Report encoder**: `{text_encoder or info.text_model or 'all-MiniLM-L6-v2 (offline default)'}`")
demo = info.extra.get("demo")
if demo:
    st.markdown(f"**Training data**: {demo['note']} Cohort seed {demo['seed']}, {demo['n_cases']} synthetic cases.")
elif path == demo_brca.MODEL_PATH:
    st.markdown(f"**Training data**: TCGA-BRCA, invasive ductal (IDC) vs invasive lobular (ILC) carcinoma — RNA-seq "
                f"z-scores (PORPOISE tables, GPL-3.0) and pathology reports (TCGA-Reports, Kefeli & Tatonetti 2024, MIT) "
                f"of 970 patients with either modality, with natural missingness. This model is fold {info.fold} "
                f"of the shipped 5-fold experiment (`assets/results/tcga-brca`): trained on the other four folds at the "
                f"default settings; the cases offered on the Case page are this fold's held-out patients.")
else:
    st.markdown(f"**Training data**: fold {info.fold} of a `mosare experiment` run, training "
                f"setting {info.training} at mask rate {info.mask_rate}.")
for m in info.test_metrics:  # one row per scenario the run was scored on
    scored = " · ".join(f"{k.upper()} {v:.1f}" for k, v in m.items() if k in ("auc", "f1", "acc") and isinstance(v, (int, float)))
    st.markdown(f"**Held-out test fold**{' (' + m['scenario'] + ')' if m.get('scenario') else ''}: {scored}")
if info.temperature is not None:
    q = info.conformal_q if info.conformal_q is not None else float("nan")
    st.markdown(f"**Calibration**: temperature T = {info.temperature:.2f} and a split-conformal quantile "
                f"q = {q:.3f} ({1 - info.conformal_alpha:.0%} target "
                f"coverage), both fitted on the validation split; decision threshold {info.threshold}.")
with st.expander("Configuration"):
    st.json({"model": info.config, "training": info.extra.get("train")})
st.markdown("**How it works**: each modality is encoded into a global vector and local tokens (GMM clusters of "
            "patches and sentences, RNA attention heads); a sparse mixture of experts and an activation gate pick "
            "informative local tokens; cross-modal attention aligns the modalities; a missing modality is "
            "reconstructed from the others; a final mixture of experts gives the prediction.")
