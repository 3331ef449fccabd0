"""Decoupled reconstruction (eqs. 11–14): decode each modality from the aggregate, fill only missing ones."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DecoupledReconstruction(nn.Module):
    """One two-layer ReLU perceptron ψ_m per modality.

    forward(x_agg [B, H]) -> recon [B, M, H]          (eq. 11)
    complete(observed [B, M, H], recon, present [B, M]) -> final [B, M, H]   (eq. 14)
    loss(observed, recon, present) -> scalar, squared error on present modalities only (eq. 12)
    """

    def __init__(self, dim: int, n_modalities: int) -> None:
        super().__init__()
        self.decoders = nn.ModuleList(
            nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim)) for _ in range(n_modalities)
        )

    def forward(self, x_agg: Tensor) -> Tensor:
        return torch.stack([dec(x_agg) for dec in self.decoders], dim=1)

    @staticmethod
    def complete(observed: Tensor, recon: Tensor, present: Tensor) -> Tensor:
        p = present[:, :, None].to(observed.dtype)
        return p * observed + (1 - p) * recon

    @staticmethod
    def loss(observed: Tensor, recon: Tensor, present: Tensor) -> Tensor:
        err = (observed - recon).pow(2).mean(dim=-1)  # [B, M]
        return (err * present).sum() / present.sum().clamp(min=1)
