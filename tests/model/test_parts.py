"""The model's building blocks, each against a hand computation: sparse MoE routing, the activation gate,
cross-modal attention over present modalities, and gated-attention MIL pooling with padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mosare.model.abmil import ABMILEncoder, GatedAttentionPool
from mosare.model.cma import CrossModalAttention
from mosare.model.moe import ActivationGate, SparseMoE


def test_sparse_moe_is_the_weighted_sum_of_the_top_k_experts_only():
    torch.manual_seed(0)
    moe = SparseMoE(dim=8, n_experts=5, top_k=2)
    x = torch.randn(3, 4, 8)
    z, idx, w = moe(x)
    assert idx.shape == w.shape == (3, 4, 2) and torch.allclose(w.sum(-1), torch.ones(3, 4))
    probs = torch.softmax(moe.gate(x), -1)
    assert torch.equal(idx, probs.topk(2, -1).indices)  # the two most probable experts
    def expert(e, v):
        return F.gelu(v @ moe.w1[e] + moe.b1[e]) @ moe.w2[e] + moe.b2[e]
    by_hand = torch.stack([sum(w[b, t, s] * expert(int(idx[b, t, s]), x[b, t]) for s in range(2))
                           for b in range(3) for t in range(4)]).view(3, 4, 8)
    assert torch.allclose(z, by_hand, atol=1e-5)


def test_activation_gate_keeps_the_k_best_scored_tokens_in_order_and_passes_gradient_to_the_scorer():
    torch.manual_seed(0)
    gate = ActivationGate(dim=6, keep=2)
    z = torch.randn(2, 5, 6, requires_grad=True)
    kept, mask, idx = gate(z)
    scores = gate.score(z).squeeze(-1)
    assert torch.equal(idx, scores.topk(2, -1).indices.sort(-1).values)
    assert torch.allclose(mask.detach(), torch.zeros(2, 5).scatter(1, idx, 1.0), atol=1e-6)  # forward: the hard 0/1 mask
    assert torch.allclose(kept, torch.gather(z, 1, idx[..., None].expand(-1, -1, 6)))
    kept.sum().backward()
    assert gate.score.weight.grad is not None and gate.score.weight.grad.abs().sum() > 0  # straight-through


def test_cross_modal_attention_ignores_missing_modalities_and_padded_tokens():
    torch.manual_seed(0)
    cma = CrossModalAttention(dim=8, heads=2, mode="softmax", dropout=0.0).eval()
    x = torch.randn(2, 3, 4, 8)
    present = torch.tensor([[True, True, False], [True, True, True]])
    tokens = torch.ones(2, 3, 4, dtype=torch.bool)
    tokens[1, 2, 3] = False  # a padded token of modality 2 in case 1
    y, attn = cma(x, present, tokens)
    assert torch.all(y[0, 2] == 0)  # a missing modality's output is zero ...
    assert torch.all(attn[0, 2] == 0) and torch.all(attn[0, :, 2] == 0)  # ... and it neither attends nor is attended
    assert torch.all(attn[:, [0, 1, 2], [0, 1, 2]] == 0)  # no self-pairs
    assert torch.all(attn[1, :, 2, :, 3] == 0)  # nobody attends to the padded token
    assert torch.allclose(attn[0, 0, 1].sum(-1), torch.ones(4))  # softmax over the partner's tokens
    x2 = x.clone()
    x2[0, 2] = 100.0  # whatever the missing modality's input holds, the present ones are unchanged
    assert torch.allclose(cma(x2, present, tokens)[0][0], y[0], atol=1e-6)


def test_gated_attention_pool_sums_to_one_over_real_instances_and_ignores_padding():
    torch.manual_seed(0)
    pool = GatedAttentionPool(dim=6, attn_dim=4, heads=1)
    h = torch.randn(2, 5, 6)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    pooled, attn = pool(h, mask)
    attn = attn.reshape(2, 5)
    assert torch.allclose(attn.sum(-1), torch.ones(2)) and torch.all(attn[1, 3:] == 0)
    h2 = h.clone()
    h2[1, 3:] = 50.0  # padding content does not matter
    assert torch.allclose(pool(h2, mask)[0][1], pooled[1], atol=1e-6)
    enc = ABMILEncoder(in_dim=6, hidden=8, dropout=0.0).eval()
    emb, a = enc(h, mask)
    assert emb.shape == (2, 8) and a.shape == (2, 5) and torch.allclose(a.sum(-1), torch.ones(2))
