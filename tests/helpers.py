"""Test helpers shared by several test modules (import as ``from helpers import random_batch``)."""

from __future__ import annotations

import numpy as np
import torch

from mosare import MODALITIES
from mosare.data.cohort import Cohort
from mosare.config import ModelConfig
from mosare.types import Batch

MAX_PATCHES = 10
MAX_SENTENCES = 7


def random_batch(
    cfg: ModelConfig, batch_size: int, present: torch.Tensor | None = None, seed: int = 0
) -> Batch:
    """A random padded :class:`Batch` for the cohort ``cfg.modalities``.

    * ``present`` [B, 3] bool (MODALITIES order), ANDed with the cohort's modalities; default: every cohort
      modality present for every case.
    * Bags have random lengths: 1..10 patches (``wsi``), 1..7 sentences (``rpt``), zero-padded to the
      longest bag in the batch, with masks marking the real instances.
    * Local tokens have C = ``cfg.n_local`` rows; labels are uniform in ``[0, cfg.n_classes)``.
    * A modality the cohort lacks has width-0 tensors: ``wsi_bag`` [B, 0, wsi_dim], ``wsi_bag_mask``
      [B, 0], ``wsi_local`` [B, 0, wsi_dim], ``rna`` [B, 0], ``rpt_bag`` [B, 0, rpt_dim], ``rpt_bag_mask``
      [B, 0], ``rpt_global`` [B, 0], ``rpt_local`` [B, 0, rpt_dim].
    * Absent modalities of a case (``present`` False) are zero with an all-False mask (a fully padded
      bag), via :meth:`Batch.with_present`.
    """
    g = torch.Generator().manual_seed(seed)
    b = batch_size
    cohort = torch.tensor([m in cfg.modalities for m in MODALITIES], dtype=torch.bool)
    if present is None:
        present = cohort.expand(b, -1).clone()
    else:
        present = present.to(torch.bool).clone() & cohort
        if present.shape != (b, len(MODALITIES)):
            raise ValueError(f"present must be [{b}, {len(MODALITIES)}], got {list(present.shape)}")

    def bag(dim: int, max_len: int, has: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if not has:
            return torch.zeros(b, 0, dim), torch.zeros(b, 0, dtype=torch.bool)
        lengths = torch.randint(1, max_len + 1, (b,), generator=g)
        n = int(lengths.max())
        mask = torch.arange(n)[None, :] < lengths[:, None]
        x = torch.randn(b, n, dim, generator=g) * mask[..., None]
        return x, mask

    def dense(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    has_wsi, has_rna, has_rpt = (m in cfg.modalities for m in MODALITIES)
    c = cfg.n_local
    wsi_bag, wsi_mask = bag(cfg.wsi_dim, MAX_PATCHES, has_wsi)
    rpt_bag, rpt_mask = bag(cfg.rpt_dim, MAX_SENTENCES, has_rpt)
    batch = Batch(
        present=present,
        labels=torch.randint(0, cfg.n_classes, (b,), generator=g),
        wsi_bag=wsi_bag,
        wsi_bag_mask=wsi_mask,
        wsi_local=dense(b, c, cfg.wsi_dim) if has_wsi else torch.zeros(b, 0, cfg.wsi_dim),
        rna=dense(b, cfg.rna_dim) if has_rna else torch.zeros(b, 0),
        rpt_bag=rpt_bag,
        rpt_bag_mask=rpt_mask,
        rpt_global=dense(b, cfg.rpt_dim) if has_rpt else torch.zeros(b, 0),
        rpt_local=dense(b, c, cfg.rpt_dim) if has_rpt else torch.zeros(b, 0, cfg.rpt_dim),
    )
    return batch.with_present(present)


def rna_cohort(n: int = 90, genes: int = 20, seed: int = 0, signal_genes: int = 3, shift: float = 1.2) -> Cohort:
    """An RNA-only two-class cohort whose first ``signal_genes`` genes are shifted by ``shift`` in class B."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(size=(n, genes)).astype(np.float32)
    x[:, :signal_genes] += shift * y[:, None]
    present = np.zeros((n, 3), bool)
    present[:, 1] = True
    return Cohort(patient_ids=[f"P{i:03d}" for i in range(n)], labels=y.astype(np.int64), classes=("A", "B"),
                  present=present, genes=[f"G{j}" for j in range(genes)], rna=x)
