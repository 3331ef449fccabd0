"""Shared, read-only resources (models, the sentence encoder), cached across sessions and bounded."""

from __future__ import annotations

import json
import os
from pathlib import Path

import streamlit as st
import torch

from mosare.app import demo_brca
from mosare.app.demo import MODEL_PATH, DemoCase, ensure_demo_cases
from mosare.app.jobs import JobQueue, make_job_queue
from mosare.errors import MosareError
from mosare.inference import Predictor
from mosare.model.checkpoint import CheckpointMeta
from mosare.text.embed import ReportEmbedder
from mosare.types import resolve_device


@st.cache_resource(max_entries=4, show_spinner="Loading the model…")
def predictor(path: str, device: str) -> Predictor:
    """A loaded checkpoint. Shared by every session: never mutated after loading (eval mode, no_grad)."""
    return Predictor(path, device)


@st.cache_resource(max_entries=2, show_spinner="Preparing the demo cases (first launch only)…")
def demo_cases(cache_dir: str) -> list[DemoCase]:
    """The demo cases (written on first launch, then read once per server, not on every rerun)."""
    return ensure_demo_cases(cache_dir)


@st.cache_resource(max_entries=2, show_spinner="Preparing the TCGA-BRCA cases (first launch only)…")
def brca_cases(cache_dir: str) -> list[demo_brca.RealCase]:
    """The real demo's held-out TCGA-BRCA patients (one-row expression tables written once per cache)."""
    return demo_brca.brca_cases(cache_dir)


@st.cache_resource(show_spinner="Connecting to the Ray cluster…")
def job_queue() -> JobQueue:
    """The one queue every session's model and slide jobs go through (one job on the device at a time); with
    ``MOSARE_RAY_ADDRESS`` set, the same queue served by actors on that Ray cluster (one per GPU)."""
    return make_job_queue(max_pending=16)


@st.cache_resource(max_entries=1, show_spinner="Loading the sentence encoder…")
def embedder() -> ReportEmbedder:
    return ReportEmbedder()


def device() -> str:
    return str(resolve_device("auto"))


def device_label() -> str:
    ray_address = os.environ.get("MOSARE_RAY_ADDRESS", "").strip()
    if ray_address:
        return f"Ray cluster at {ray_address}"
    if torch.cuda.is_available():
        return f"CUDA — {torch.cuda.get_device_name(0)}"
    return "CPU (no GPU found)"


@st.cache_data(ttl=60, max_entries=8)
def find_models(dirs: tuple[Path, ...]) -> dict[str, str]:
    """Label → checkpoint path: the embedded demo model, then every MoSARe-family checkpoint under ``dirs``."""
    found = {"Demo: MoSARe on TCGA-BRCA (real RNA + reports)": str(demo_brca.MODEL_PATH),
             "Demo: MoSARe on the synthetic cohort (with slides)": str(MODEL_PATH)}
    for d in dirs:
        if not d.is_dir():
            continue
        for p in sorted(d.rglob("*.safetensors"))[:500]:
            meta = p.with_suffix(".json")
            run = p.parents[3].name if len(p.parents) > 3 else p.parent.name  # <run>/checkpoints/<model>/<setting>/
            try:
                doc = json.loads(meta.read_text(encoding="utf-8"))
                info = CheckpointMeta.from_dict(doc if isinstance(doc, dict) else {}, str(meta))
            except (OSError, ValueError, MosareError):  # listed anyway: choosing it shows why it cannot be loaded
                found[f"unreadable checkpoint · {p.name} · {run}"] = str(p)
                continue
            # "training": one model serves masked-masked and masked-unmasked
            label = (f"{info.model} · {info.training or '?'} {'' if info.mask_rate is None else info.mask_rate} · "
                     f"fold {'?' if info.fold is None else info.fold} · {run}")
            found[label] = str(p)
    return found
