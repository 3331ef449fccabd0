"""Cross-modal attention at the global and local level (eqs. 3–8).

The paper writes the pairwise interaction as X_a + (X_aᵀ X_b) X_b. We implement the idea with learned
projections and multiple heads (as the authors' MCAN-style block does): X_a attends to X_b, the results over
all *present* partner modalities are averaged (eqs. 5–7), then residual + LayerNorm + feed-forward.
Global tokens (one per modality) use a sigmoid score, which acts as a gate; local tokens use a softmax over
the partner's kept tokens. A missing modality neither attends nor is attended to, and its output is zero.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossModalAttention(nn.Module):
    """forward(x [B, M, T, H], present [B, M] bool, token_mask [B, M, T] bool)
    -> (out [B, M, T, H] zero for missing modalities, attn [B, M, M, T, T] head-averaged, a→b).

    ``attn[:, a, b, i, j]`` is how much token i of modality a attends to token j of modality b
    (zero on the diagonal a == b and for pairs with a missing modality).
    """

    def __init__(self, dim: int, heads: int = 4, mode: str = "softmax", dropout: float = 0.1) -> None:
        super().__init__()
        if mode not in ("softmax", "sigmoid"):
            raise ValueError(mode)
        self.heads, self.mode = heads, mode
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def _split(self, x: Tensor) -> Tensor:  # [B, M, T, H] -> [B, M, heads, T, H/heads]
        b, m, t, h = x.shape
        return x.view(b, m, t, self.heads, h // self.heads).transpose(2, 3)

    def forward(self, x: Tensor, present: Tensor, token_mask: Tensor) -> tuple[Tensor, Tensor]:
        b, m, t, h = x.shape
        # one matmul for the three projections (same parameters as three Linear layers)
        qkv = F.linear(x, torch.cat([self.q.weight, self.k.weight, self.v.weight]), torch.cat([self.q.bias, self.k.bias, self.v.bias]))
        q, k, v = (self._split(z) for z in qkv.split(h, dim=-1))
        # scores[b, a, c, head, i, j]: token i of modality a against token j of modality c
        scores = torch.einsum("bahid,bchjd->bachij", q, k) / math.sqrt(h // self.heads)
        key_ok = (token_mask & present[:, :, None])[:, None, :, None, None, :]  # over (c, j)
        if self.mode == "sigmoid":
            attn = torch.sigmoid(scores) * key_ok
        else:
            # finite fill (not -inf) so a query with no valid key gives zeros, not NaN, in both passes
            attn = torch.softmax(scores.masked_fill(~key_ok, -1e4), dim=-1) * key_ok
        pair_ok = present[:, :, None] & present[:, None, :] & ~torch.eye(m, dtype=torch.bool, device=x.device)
        attn = attn * pair_ok[:, :, :, None, None, None]
        inter = torch.einsum("bachij,bchjd->bachid", attn, v)  # [B, a, c, heads, T, d]
        n_partners = pair_ok.sum(dim=2).clamp(min=1)  # [B, a]
        inter = inter.sum(dim=2) / n_partners[:, :, None, None, None]  # eqs. 5–7: mean over present partners
        inter = self.out(inter.transpose(2, 3).reshape(b, m, t, h))
        y = self.norm1(x + self.drop(inter))
        y = self.norm2(y + self.drop(self.ffn(y)))
        y = y * present[:, :, None, None]
        return y, attn.detach().mean(dim=3)  # a map for display: no gradient
