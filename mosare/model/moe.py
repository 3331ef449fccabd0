"""Sparse mixture of experts (eq. 9) and the activation gate that keeps the top-k local tokens (eq. 10)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SparseMoE(nn.Module):
    """Per-token sparse MoE: z_j = Σ_{k∈S_j} Gate_k(x_j) · EXP_k(x_j), S_j = top-k experts of a softmax gate.

    The kept gate weights are renormalised to sum to 1. Experts are two-layer GELU MLPs with stacked weights
    ([E, H, H]); each expert runs only on the tokens routed to it, so a token costs k experts, not E.

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
        flat = x.reshape(-1, x.shape[-1])  # [N, H]
        idx, w = top_idx.reshape(-1, self.top_k), top_w.reshape(-1, self.top_k)  # [N, k]
        z = torch.zeros_like(flat)
        # unbind once: indexing self.w1[e] per expert would allocate a zero [E, H, H] gradient per expert
        experts = zip(self.w1.unbind(0), self.b1.unbind(0), self.w2.unbind(0), self.b2.unbind(0))
        for e, (w1, b1, w2, b2) in enumerate(experts):  # each expert runs only on the tokens routed to it (k of E)
            rows, slot = (idx == e).nonzero(as_tuple=True)
            if rows.numel() == 0:
                continue
            h = F.gelu(torch.addmm(b1, flat[rows], w1))
            z = z.index_add(0, rows, torch.addmm(b2, h, w2) * w[rows, slot, None])
        return z.reshape(x.shape), top_idx, top_w


class ActivationGate(nn.Module):
    """Keeps the k highest-scoring local tokens (eq. 10: X^{L*} = Z ⊙ 1_A, A = Top-k(Act(z_1..z_C))).

    The forward value is the hard 0/1 mask of eq. 10. A hard top-k has no gradient, which would leave the
    scoring layer at its random initialisation, so the backward pass uses a straight-through estimator:
    mask = hard + σ(s) − stopgrad(σ(s)). Only the k kept tokens are returned (gathered, in their original
    order): the dropped ones are zero and would be masked out of every later layer, so computing on them is
    waste.

    forward(z [B, C, H]) -> (z_kept [B, k, H], mask [B, C] in {0, 1}, kept_idx [B, k] long)
    """

    def __init__(self, dim: int, keep: int) -> None:
        super().__init__()
        self.keep = keep
        self.score = nn.Linear(dim, 1)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        scores = self.score(z).squeeze(-1)  # [B, C]
        idx = scores.topk(self.keep, dim=-1).indices.sort(dim=-1).values  # [B, k]
        hard = torch.zeros_like(scores).scatter(-1, idx, 1.0)
        soft = torch.sigmoid(scores)
        mask = hard + soft - soft.detach()
        kept = torch.gather(z * mask.unsqueeze(-1), 1, idx[..., None].expand(-1, -1, z.shape[-1]))
        return kept, mask, idx
