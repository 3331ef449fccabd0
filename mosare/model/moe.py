"""Sparse mixture of experts (eq. 9) and the activation gate that keeps the top-k local tokens (eq. 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SparseMoE(nn.Module):
    """Per-token sparse MoE: z_j = Σ_{k∈S_j} Gate_k(x_j) · EXP_k(x_j), S_j = top-k experts of a softmax gate.

    The kept gate weights are renormalised to sum to 1. Experts are two-layer GELU MLPs whose weights are
    stacked ([E, H, H]) so all experts run as one batched matmul: with a handful of experts and tokens that
    is far cheaper than routing tokens or looping over expert modules.

    forward(x [..., T, H]) -> (z [..., T, H], expert_idx [..., T, k] long, expert_w [..., T, k])
    """

    def __init__(self, dim: int, n_experts: int = 5, top_k: int = 2) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(dim, n_experts)
        bound = dim**-0.5
        self.w1 = nn.Parameter(torch.empty(n_experts, dim, dim).uniform_(-bound, bound))
        self.b1 = nn.Parameter(torch.zeros(n_experts, dim))
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, dim).uniform_(-bound, bound))
        self.b2 = nn.Parameter(torch.zeros(n_experts, dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        probs = torch.softmax(self.gate(x), dim=-1)  # [..., T, E]
        top_w, top_idx = probs.topk(self.top_k, dim=-1)
        top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        weights = torch.zeros_like(probs).scatter(-1, top_idx, top_w)  # sparse [..., T, E]
        flat = x.reshape(-1, x.shape[-1])  # [N, H]
        hidden = F.gelu(torch.einsum("nh,ehd->end", flat, self.w1) + self.b1[:, None])  # [E, N, H]
        expert_out = torch.einsum("end,edh->enh", hidden, self.w2) + self.b2[:, None]  # [E, N, H]
        z = torch.einsum("ne,enh->nh", weights.reshape(-1, weights.shape[-1]), expert_out)
        return z.reshape(x.shape), top_idx, top_w


class ActivationGate(nn.Module):
    """Keeps the k highest-scoring local tokens (eq. 10: X^{L*} = Z ⊙ 1_A, A = Top-k(Act(z_1..z_C))).

    The forward value is the hard 0/1 mask of eq. 10. A hard top-k has no gradient, which would leave the
    scoring layer at its random initialisation, so the backward pass uses a straight-through estimator:
    mask = hard + σ(s) − stopgrad(σ(s)).

    forward(z [B, C, H]) -> (z_kept [B, C, H], mask [B, C] in {0, 1}, scores [B, C])
    """

    def __init__(self, dim: int, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.score = nn.Linear(dim, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scores = self.score(z).squeeze(-1)  # [B, C]
        hard = torch.zeros_like(scores).scatter(-1, scores.topk(self.keep, dim=-1).indices, 1.0)
        soft = torch.sigmoid(scores)
        mask = hard + soft - soft.detach()
        return z * mask.unsqueeze(-1), mask, scores
