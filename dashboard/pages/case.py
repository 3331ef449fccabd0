"""Case — load a demo case or upload one, choose which modalities the model gets, run, read the result."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import resources, state
from dashboard.components.badges import modality_badges
from dashboard.components.jobs import run_queued
from dashboard.settings import Settings
from mosare import MODALITIES
from mosare.app import demo_brca
from mosare.app.demo import MODEL_PATH
from mosare.errors import MosareError
from mosare.io.tables import decode_text
from mosare.app.workbench import (MODALITY_NAMES, analyse, confined_slide, load_case, modality_status, server_slides,
                                  store_upload)

SLIDE_TYPES = ["svs", "tif", "tiff", "ndpi", "scn", "svslide", "bif", "vms", "vmu", "mrxs", "dcm", "png", "jpg", "jpeg", "h5", "pt"]
settings = Settings.from_env()
model_path = st.session_state.get("model_path", str(demo_brca.MODEL_PATH))

st.title("Case")
try:
    pred = resources.predictor(model_path, resources.device())
except MosareError as err:
    st.error(f"Cannot load the model: {err}")
    st.stop()

cs = state.get()
if cs is not None and cs.model_path != model_path:
    cs = None
    state.put(None)
    st.info("The model changed: load the case again.")


def _load(name: str, *, slide_path=None, features_path=None, rna_path=None, report_text=None, truth=None,
          aliases: dict[str, str] | None = None) -> None:
    """Build the case (tiling and encoding a slide if needed) and keep it in the session. ``aliases`` maps
    stored upload names (content hashes) back to the names the user gave, for error messages."""

    def message(err: Exception) -> str:
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        for stored, original in (aliases or {}).items():  # full server path first, then the bare name
            text = text.replace(str(settings.cache_dir / "uploads" / stored), original).replace(stored, original)
        text = text.replace(str(settings.cache_dir), "<cache>")
        return text[:400]

    with st.status(f"Loading {name}…", expanded=True) as status:
        try:
            lc = run_queued(load_case, pred, label="tiling and encoding the slide", slide_path=slide_path,
                            features_path=features_path, rna_path=rna_path, report_text=report_text,
                            embedder=resources.embedder() if report_text else None, cache_dir=settings.cache_dir)
        except MosareError as err:
            status.update(label="Could not load the case", state="error", expanded=True)
            st.error(message(err))
            return
        except Exception as err:  # noqa: BLE001 - a bad file must never crash the page
            status.update(label="Could not load the case", state="error", expanded=True)
            st.error(f"unexpected error while reading the inputs: {type(err).__name__}: {message(err)}")
            return
        status.update(label=f"{name} loaded", state="complete", expanded=False)
    state.put(state.CaseState(name=name, model_path=model_path, case=lc.case, view=lc.view, report_text=lc.report_text,
                              report_removed=lc.report_removed, truth=truth, use=lc.case.present.copy(), notes=lc.notes))


def _real_case(c) -> None:
    _load(f"TCGA case {c.patient_id}", rna_path=c.rna_path, report_text=c.report_text,
          truth={"label": c.label, "source": f"TCGA-BRCA, held out from training (test fold {c.fold})"})


tab_demo, tab_upload = st.tabs(["Demo case", "Upload a case"])
with tab_demo:
    if Path(model_path) == demo_brca.MODEL_PATH:
        try:
            real_cases = resources.brca_cases(str(settings.cache_dir))
        except MosareError as err:
            st.error(str(err))
            real_cases = []
        wanted = st.session_state.pop("open_case", None)  # set by the Cohort page
        by_id = {c.patient_id: c for c in real_cases}
        if wanted and wanted.get("patient_id") in by_id:
            _real_case(by_id[wanted["patient_id"]])
        elif wanted:
            st.info(f"{wanted.get('patient_id')}: its inputs are not shipped with the app (only the demo model's "
                    "held-out patients are); upload its RNA row or report to run it.")
        if real_cases:
            options = {f"{c.patient_id} · {' + '.join(MODALITY_NAMES[m] for m in c.modalities)}": c for c in real_cases}
            choice = st.selectbox(f"Real TCGA-BRCA patient ({len(real_cases)} held out from training; slides are not "
                                  "part of these tables)", list(options), key="brca_choice")
            if st.button("Load patient", key="load_brca", type="primary"):
                _real_case(options[choice])
    elif Path(model_path) != MODEL_PATH:
        st.info("The demo cases belong to the demo models: pick one in the sidebar, or upload a case.")
    else:
        try:
            demo_cases = resources.demo_cases(str(settings.cache_dir))
        except MosareError as err:
            st.error(str(err))
            demo_cases = []
        if demo_cases:
            options = {f"{c.patient_id} · {' + '.join(MODALITY_NAMES[m] for m in c.modalities)}": c for c in demo_cases}
            choice = st.selectbox("Synthetic demo case (held out from training)", list(options), key="demo_choice")
            if st.button("Load demo case", key="load_demo", type="primary"):
                c = options[choice]
                _load(f"Demo case {c.patient_id}", slide_path=c.slide_path, features_path=c.features_path,
                      rna_path=c.rna_path, report_text=c.report_text,
                      truth={"label": c.label, "slide_region_bbox": c.slide_region_bbox, "planted_sentence": c.planted_sentence,
                             "source": "synthetic cohort"})

with tab_upload:
    with st.form("upload"):
        slide_file = st.file_uploader("Slide (any OpenSlide format) or its patch-feature file (.h5 / .pt)", type=SLIDE_TYPES)
        server_slide = None
        names = server_slides(settings.slide_root, tuple(SLIDE_TYPES))
        if names:
            server_slide = st.selectbox(f"…or a slide from the server folder ({settings.slide_root.name})", ["—", *names])
        rna_file = st.file_uploader("RNA-seq table (CSV/TSV, one case: genes as columns, or gene,value rows)",
                                    type=["csv", "tsv", "txt", "gz"])
        report_file = st.file_uploader("Pathology report (.txt)", type=["txt"])
        report_paste = st.text_area("…or paste the report text", height=120)
        submitted = st.form_submit_button("Load case", type="primary")
    if submitted:
        slide_path = features_path = rna_path = None
        aliases: dict[str, str] = {}
        try:
            if slide_file is not None:
                stored = store_upload(slide_file.getvalue(), Path(slide_file.name).suffix, settings.cache_dir)
                aliases[stored.name] = slide_file.name
                if stored.suffix in (".h5", ".pt"):
                    features_path = stored
                else:
                    slide_path = stored
            elif server_slide and server_slide != "—":
                slide_path = confined_slide(settings.slide_root, server_slide)
            if rna_file is not None:
                rna_path = store_upload(rna_file.getvalue(), "".join(Path(rna_file.name).suffixes[-2:]), settings.cache_dir)
                aliases[rna_path.name] = rna_file.name
            report_text = decode_text(report_file.getvalue(), "the report") if report_file is not None else report_paste
        except MosareError as err:
            st.error(str(err))
        else:
            _load("Uploaded case", slide_path=slide_path, features_path=features_path, rna_path=rna_path,
                  report_text=report_text or None, aliases=aliases)

cs = state.get()
if cs is None:
    st.info("Load a demo case or upload a case to begin.")
    st.stop()

st.divider()
st.subheader(cs.name)
modality_badges(modality_status(cs.case, cs.use, pred.cfg.modalities))
for note in cs.notes:
    st.caption(note)

with st.form("run"):
    st.markdown("**Modalities given to the model** — switch a present one off to see how the model copes without it.")
    cols = st.columns(3)
    use = []
    for i, m in enumerate(MODALITIES):
        available = bool(cs.case.present[i]) and m in pred.cfg.modalities
        use.append(cols[i].checkbox(MODALITY_NAMES[m], value=bool(cs.use[i]) and available, disabled=not available,
                                    key=f"use_{m}_{cs.name}"))
    run = st.form_submit_button("Run", type="primary")
if run:
    cs.use = np.array(use, bool) & cs.case.present
    try:
        cs.analysis = resources.job_queue().run(analyse, pred, cs.case, cs.use)
    except MosareError as err:
        cs.analysis = None
        st.error(str(err))
    state.put(cs)
    if cs.analysis is not None:
        st.rerun()  # redraw the badges with the new selection

a = cs.analysis
if a is None:
    st.stop()
p = a.prediction
k = int(p.probs.argmax())
left, right = st.columns([1, 1])
with left:
    st.metric("Prediction", p.label, help="the class with the highest probability")
    shown = p.shown
    kind = "calibrated probability" if p.calibrated is not None else "probability"
    st.markdown(f"{kind.capitalize()} of **{p.label}**: **{shown[k]:.1%}**")
    if p.prediction_set is not None:
        unsure = " or " in p.prediction_set
        text = f"**{p.prediction_set}**" + (" — unsure" if unsure else "")
        (st.warning if unsure else st.success)(f"Prediction set ({p.coverage:.0%} coverage): {text}",
                                               icon=":material/help:" if unsure else ":material/check:")
    with st.container(key="probabilities"):
        for c, v in zip(p.classes, shown.astype(float)):
            st.progress(v, text=f"P({c}) = {v:.3f}")
    if p.calibrated is not None:
        st.caption("Probabilities are temperature-scaled (T fitted on the model's validation split); the prediction "
                   "set is split-conformal on the same split. Raw: " +
                   ", ".join(f"P({c}) = {v:.3f}" for c, v in zip(p.classes, p.probs.astype(float))))
    if cs.truth:
        st.caption(f"Ground truth ({cs.truth.get('source', 'demo case')}): **{cs.truth['label']}**")
with right:
    used = [MODALITY_NAMES[m] for i, m in enumerate(MODALITIES) if a.used[i]]
    st.markdown(f"**Observed:** {', '.join(used)}")
    st.markdown(f"**Reconstructed instead of observed:** {', '.join(MODALITY_NAMES[m] for m in p.reconstructed) or 'none'}")
    if a.contributions:
        rows = [{"modality": MODALITY_NAMES[m], f"Δ log-odds({p.label})": f"{v:+.2f}",
                 f"P({p.label}) without it": f"{a.without[m].shown[k]:.1%}",
                 "prediction without it": a.without[m].label}
                for m, v in a.contributions.items()]
        st.markdown("**Each modality's contribution** (re-inference without it)")
        st.table(pd.DataFrame(rows).set_index("modality"))
        st.caption(f"Δ log-odds: the log-odds of {p.label} with every modality in use minus without this one "
                   "(+: it pushed towards the answer; the unit of the attributions below).")
    else:
        st.caption("One modality in use: no contribution to compare.")
    st.caption(f"Inference and {len(a.without)} re-inferences in {a.seconds:.2f} s on {resources.device()}.")
