"""Attention-based multiple-instance pooling (Ilse et al., 2018), gated variant, with a padding mask."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class GatedAttentionPool(nn.Module):
    """Gated ABMIL: a_i = w^T (tanh(V h_i) ⊙ σ(U h_i)), softmax over real instances, one or more heads.

    forward(h [B, N, D], mask [B, N] bool) -> (pooled [B, heads, D], attention [B, heads, N]).
    A bag with no real instance pools to zeros (attention all zero) instead of NaN.
    """

    def __init__(self, dim: int, attn_dim: int = 128, heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(dim, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.gate_branch = nn.Sequential(nn.Linear(dim, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(attn_dim, heads)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.score(self.tanh_branch(h) * self.gate_branch(h))  # [B, N, heads]
        logits = logits.transpose(1, 2).masked_fill(~mask[:, None, :], float("-inf"))  # [B, heads, N]
        has_any = mask.any(dim=1)[:, None, None]
        attn = torch.softmax(torch.where(has_any, logits, torch.zeros_like(logits)), dim=-1)
        attn = torch.where(has_any, attn, torch.zeros_like(attn))
        return attn @ h, attn


class ABMILEncoder(nn.Module):
    """Instance projection (Linear → LayerNorm → GELU → Dropout) then single-head gated ABMIL.

    forward(bag [B, N, D_in], mask [B, N]) -> (embedding [B, H], attention [B, N]).
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm_in = nn.LayerNorm(in_dim, elementwise_affine=False)  # z-score each instance over its features
        self.project = nn.Sequential(nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(dropout))
        self.pool = GatedAttentionPool(hidden, attn_dim=hidden, heads=1)

    def forward(self, bag: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h = self.project(self.norm_in(bag))
        pooled, attn = self.pool(h, mask)
        return pooled[:, 0], attn[:, 0]
