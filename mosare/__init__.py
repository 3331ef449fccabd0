"""MoSARe: Mixture of Experts, Symmetric Aligning and Reconstruction for multimodal cancer subtyping
with missing modalities (Moradinasab et al., 2025).

Layers follow the data flow (tests/test_layering.py enforces the order): core (config, types, errors) → ``io`` →
``text`` / ``slides`` → ``data`` / ``synthetic`` → ``model`` → ``train`` → ``inference`` → ``explain`` → ``app`` →
``cli``. The package never imports streamlit.
"""

__version__ = "0.1.0"

MODALITIES: tuple[str, ...] = ("wsi", "rna", "rpt")
"""Canonical modality order everywhere a mask or a per-modality tensor appears."""
