"""Checkpoints: ``<stem>.safetensors`` (weights and named extra arrays) + ``<stem>.json`` (config and metadata).

Never pickle: a ``.pt``/``.pth``/``.ckpt``/``.bin`` file is refused without being opened as a pickle.

Both files are written atomically, the ``.json`` first and the ``.safetensors`` last, so a ``.safetensors``
file always has its ``.json``; both carry the same ``save_id``, so a pair mixed by a save that was killed
between its two writes is refused on loading instead of being read with the wrong config.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from mosare.config import ModelConfig, from_dict, to_dict
from mosare.errors import CheckpointError, MosareError
from mosare.io.atomic import atomic_path, atomic_write_text
from mosare.model.registry import build_model

FORMAT = "mosare-checkpoint/1"
# ModelConfig fields added after the first checkpoints were written, with the value those checkpoints were
# trained with (the paper's choices): a config without the key gets it, so old checkpoints load unchanged.
LEGACY_DEFAULTS = {"fusion": "sum", "linear_path": False, "rna_sample_norm": True, "input_dropout": 0.0, "linear_l2": 0.0,
                   "linear_aux": 0.0, "linear_detach": False, "text_linear_path": False}
_EXTRA = "extra."
_SAVE_ID = "mosare_save_id"


@dataclass
class CheckpointMeta:
    """The JSON half of a checkpoint, typed (what every reader needs; the rest stays in ``extra``).

    ``training``: the training setting of the run ("complete", "masked-0.3", ...); ``threshold``, ``temperature``,
    ``conformal_q``: fitted on the run's validation split (None when the run had none); ``test_metrics``: one row
    per scenario the run was scored on; ``text_encoder``: the fold-fitted TF-IDF encoder's settings (None: a
    sentence model, ``text_model``)."""

    model: str
    classes: list[str]
    config: dict[str, Any]
    genes: list[str] = field(default_factory=list)
    encoder: str | None = None
    text_model: str = ""
    text_encoder: dict[str, Any] | None = None
    scrub_terms: list[str] = field(default_factory=list)
    fold: int | None = None
    training: str | None = None
    mask_rate: float | None = None
    threshold: float | None = None
    temperature: float | None = None
    conformal_q: float | None = None
    conformal_alpha: float = 0.1
    test_metrics: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "checkpoint") -> CheckpointMeta:
        """One-line CheckpointError when a required key is missing or has the wrong type."""
        names = {f.name for f in fields(cls)} - {"extra"}
        if not isinstance(doc.get("model"), str) or not isinstance(doc.get("config"), dict):
            raise CheckpointError(f"{where}: the checkpoint config lacks its model name or model config")
        classes = doc.get("classes")
        if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
            raise CheckpointError(f"{where}: the checkpoint config lists no class names")
        known = {k: v for k, v in doc.items() if k in names}
        if "training" not in known and isinstance(doc.get("scenario"), str):  # checkpoints of one scenario
            known["training"] = doc["scenario"]
        rows = known.get("test_metrics")
        known["test_metrics"] = [rows] if isinstance(rows, dict) else list(rows or [])
        for key in ("genes", "scrub_terms"):
            known[key] = [str(x) for x in known.get(key) or []]
        if known.get("conformal_alpha") is None:
            known.pop("conformal_alpha", None)
        return cls(**known, extra={k: v for k, v in doc.items() if k not in names})


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def save_checkpoint(path: str | Path, model: torch.nn.Module, model_name: str, cfg: ModelConfig,
                    meta: dict[str, Any], extras: dict[str, np.ndarray] | None = None) -> Path:
    """Write metadata, then weights, each atomically; returns the ``.safetensors`` path."""
    stem = _stem(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    for k, v in (extras or {}).items():
        tensors[_EXTRA + k] = torch.from_numpy(np.ascontiguousarray(v))
    weights = stem.with_suffix(".safetensors")
    save_id = uuid.uuid4().hex
    doc = {"format": FORMAT, "model": model_name, "config": to_dict(cfg), **meta, "save_id": save_id}
    atomic_write_text(stem.with_suffix(".json"), json.dumps(doc, indent=1))
    with atomic_path(weights) as tmp:  # last: the weights file is what marks a checkpoint as written
        save_file(tensors, str(tmp), metadata={"format": "pt", _SAVE_ID: save_id})
    return weights


def read_checkpoint_meta(path: str | Path) -> tuple[dict[str, Any], Path]:
    """-> (metadata dict, weights path) of a complete checkpoint pair, without loading the weights.

    One-line CheckpointError when a file is missing, the JSON is not a MoSARe checkpoint config, the weights
    header is unreadable or the two files come from different saves."""
    path = Path(path)
    if path.suffix in (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin"):
        raise CheckpointError(f"{path}: pickle-based checkpoints are refused (they can run code); "
                              "use a MoSARe .safetensors + .json checkpoint")
    stem = _stem(path)
    weights, meta_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not weights.is_file():
        raise CheckpointError(f"{weights}: checkpoint weights not found")
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: checkpoint config (.json next to the weights) not found")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise CheckpointError(f"{meta_path}: not a MoSARe checkpoint config (format {found!r})")
    try:
        with safe_open(str(weights), framework="pt") as fh:
            weights_id = (fh.metadata() or {}).get(_SAVE_ID)
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({str(err).splitlines()[0]})") from None
    if weights_id and meta.get("save_id") and weights_id != meta["save_id"]:
        raise CheckpointError(f"{weights}: the weights and {meta_path.name} come from different saves "
                              "(a save was interrupted between the two files); save the checkpoint again")
    return meta, weights


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """-> (model in eval mode, metadata dict, extras dict of numpy arrays). One-line CheckpointError on any problem."""
    meta, weights = read_checkpoint_meta(path)
    meta_path = weights.with_suffix(".json")
    try:
        tensors = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({str(err).splitlines()[0]})") from None

    try:
        cfg = from_dict(ModelConfig, {**LEGACY_DEFAULTS, **meta["config"]})
        model = build_model(meta["model"], cfg)
    except (MosareError, KeyError, TypeError) as err:
        raise CheckpointError(f"{meta_path}: invalid model config ({err})") from None
    extras = {k[len(_EXTRA):]: v.cpu().numpy() for k, v in tensors.items() if k.startswith(_EXTRA)}
    state = {k: v for k, v in tensors.items() if not k.startswith(_EXTRA)}
    for k, v in state.items():
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{weights}: weight {k} contains NaN or infinite values")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and expected[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        detail = (f"missing {missing[:2]}" if missing else f"unexpected {unexpected[:2]}" if unexpected
                  else f"shape mismatch for {wrong[:2]}")
        raise CheckpointError(f"{weights}: weights do not match a {meta['model']} with this config ({detail})")
    model.load_state_dict(state)
    return model.to(map_location).eval(), meta, extras
