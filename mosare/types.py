"""Plain data containers shared by every layer.

Modalities are always indexed in the order of :data:`mosare.MODALITIES` (``wsi``, ``rna``, ``rpt``).
Which modalities a case has is an explicit boolean mask; a missing modality is a zero tensor plus
``present[:, m] == False`` — never ``None`` flowing through layers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mosare import MODALITIES
from mosare.errors import MosareError


def _f32(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def pad_bags(bags: list[np.ndarray], dim: int) -> tuple[Tensor, Tensor]:
    """Variable-length bags [n_i, dim] → padded [B, N, dim] float32 and mask [B, N] bool (True = real row)."""
    n = max([len(b) for b in bags] + [0])
    out = np.zeros((len(bags), n, dim), np.float32)
    mask = np.zeros((len(bags), n), bool)
    for i, b in enumerate(bags):
        out[i, : len(b)] = b
        mask[i, : len(b)] = True
    return torch.from_numpy(out), torch.from_numpy(mask)


@dataclass
class Batch:
    """A padded mini-batch of B cases. Tensors of a modality the cohort lacks have width 0.

    Shapes (Nw patches, Dw patch-feature dim, G genes, Ns sentences, Dt text dim, C local tokens):
        present       [B, 3] bool   — modality observed (after any artificial masking), MODALITIES order
        labels        [B] long      — class index (-1 when unknown, e.g. at inference)
        wsi_bag       [B, Nw, Dw]   — patch features, zero-padded
        wsi_bag_mask  [B, Nw] bool  — real (non-padding) patches
        wsi_local     [B, C, Dw]    — per-slide GMM means (local tokens)
        rna           [B, G]        — expression vector
        rpt_bag       [B, Ns, Dt]   — sentence embeddings, zero-padded
        rpt_bag_mask  [B, Ns] bool
        rpt_global    [B, Dt]       — whole-report embedding
        rpt_local     [B, C, Dt]    — per-report GMM means over sentence embeddings
    """

    present: Tensor
    labels: Tensor
    wsi_bag: Tensor
    wsi_bag_mask: Tensor
    wsi_local: Tensor
    rna: Tensor
    rpt_bag: Tensor
    rpt_bag_mask: Tensor
    rpt_global: Tensor
    rpt_local: Tensor

    @classmethod
    def collate(cls, present: np.ndarray, labels: np.ndarray, *, wsi_bags: list[np.ndarray], wsi_local: np.ndarray,
                rna: np.ndarray, rpt_bags: list[np.ndarray], rpt_global: np.ndarray, rpt_local: np.ndarray,
                wsi_dim: int, rpt_dim: int) -> Batch:
        """The one road from per-case arrays to a Batch, for training (``mosare.train.data.make_batch``) and
        prediction (``mosare.inference.Predictor.batch``) alike: bags padded with their masks, every array float32,
        inputs of absent modalities zeroed. ``present`` [B, 3] bool, ``labels`` [B] (-1 when unknown), bags
        [n_i, D] per case, the other arrays with a leading B."""
        wsi_bag, wsi_mask = pad_bags(wsi_bags, wsi_dim)
        rpt_bag, rpt_mask = pad_bags(rpt_bags, rpt_dim)
        batch = cls(present=torch.from_numpy(np.ascontiguousarray(present, dtype=bool)),
                    labels=torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
                    wsi_bag=wsi_bag, wsi_bag_mask=wsi_mask, wsi_local=_f32(wsi_local), rna=_f32(rna),
                    rpt_bag=rpt_bag, rpt_bag_mask=rpt_mask, rpt_global=_f32(rpt_global), rpt_local=_f32(rpt_local))
        return batch.with_present(batch.present)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str) -> Batch:
        return Batch(**{f.name: getattr(self, f.name).to(device, non_blocking=True) for f in fields(self)})

    def with_present(self, present: Tensor) -> Batch:
        """The same batch with another presence mask; inputs of now-absent modalities are zeroed."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["present"] = present
        keep = present.float()
        for m, name in enumerate(MODALITIES):
            k = keep[:, m]
            for key in _MODALITY_FIELDS[name]:
                t = out[key]
                if t.dtype == torch.bool:
                    out[key] = t & present[:, m].view(-1, *([1] * (t.dim() - 1)))
                elif t.numel():
                    out[key] = t * k.view(-1, *([1] * (t.dim() - 1)))
        return Batch(**out)


_MODALITY_FIELDS: dict[str, tuple[str, ...]] = {
    "wsi": ("wsi_bag", "wsi_bag_mask", "wsi_local"),
    "rna": ("rna",),
    "rpt": ("rpt_bag", "rpt_bag_mask", "rpt_global", "rpt_local"),
}


@dataclass
class ModelOutput:
    """What every model (MoSARe and baselines) returns.

    logits [B, K]; probs [B, K]; ``aux`` holds the intermediate tensors a model's loss needs (MoSARe:
    :class:`mosare.model.mosare.Intermediates`; None for the baselines);
    ``attention`` holds the maps the dashboard draws (see :class:`mosare.model.mosare.MoSARe`).
    """

    logits: Tensor
    probs: Tensor
    aux: Any = None
    attention: dict[str, Tensor] = field(default_factory=dict)



def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """``auto`` -> CUDA if available else CPU; on CUDA ``local_rank`` (or ``$LOCAL_RANK``) picks the GPU."""
    if name not in ("auto", "cpu", "cuda") and not name.startswith("cuda:"):
        raise MosareError(f"unknown device {name!r}; use auto, cpu or cuda")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise MosareError("--device cuda requested but no CUDA GPU is available (use --device auto or cpu)")
    if name.startswith("cuda:"):
        return torch.device(name)
    if local_rank is None and os.environ.get("LOCAL_RANK", "").isdigit():
        local_rank = int(os.environ["LOCAL_RANK"])
    return torch.device("cuda", (local_rank or 0) % torch.cuda.device_count())
