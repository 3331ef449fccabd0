"""MCAT (Chen et al., 2021): genomic-guided co-attention over a bag of instances.

The cohort's genes are cut into 16 contiguous groups, each embedded by its own small SNN into a
genomic token; the genomic tokens query the projected bag instances (slides' patches, or — for cohorts
without slides — the report's sentences). Each side then goes through a 1-layer Transformer encoder and
gated ABMIL pooling; the two pooled vectors are concatenated and classified.

Missing modalities are zero-imputed (see :mod:`mosare.model.baselines.common`): a case without RNA gets
zero genomic tokens (queries) and a zero pooled genomic embedding; a case without the bag attends only to
a learned always-present "null" key and gets a zero pooled bag embedding. The null key also keeps a case
whose bag is empty or fully padded free of NaN.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mosare.config import ModelConfig
from mosare.model.abmil import GatedAttentionPool
from mosare.model.baselines.common import (
    BagRNABaseline,
    InstanceProjection,
    bag_of,
    impute_zeros,
    mlp,
    present_of,
)
from mosare.types import Batch, ModelOutput


def gene_groups(n_genes: int, n_groups: int) -> tuple[Tensor, int]:
    """Contiguous, near-equal gene groups (sizes differ by at most one).

    Returns (index [n_groups, S] long, S): row i lists group i's gene indices, padded at its end with
    ``n_genes`` (the index of an appended zero column); S = ceil(n_genes / n_groups), at least 1.
    With fewer genes than groups some groups are pure padding.
    """
    size = max(1, math.ceil(n_genes / n_groups))
    bounds = [(i * n_genes) // n_groups for i in range(n_groups + 1)]
    index = torch.full((n_groups, size), n_genes, dtype=torch.long)
    for i in range(n_groups):
        lo, hi = bounds[i], bounds[i + 1]
        index[i, : hi - lo] = torch.arange(lo, hi)
    return index, size


class GroupedSNN(nn.Module):
    """One independent 2-layer SNN (Linear → SELU → AlphaDropout, ×2; LeCun-normal init) per group,
    evaluated together.

    forward(x [B, n_groups, S]) -> [B, n_groups, hidden].
    """

    def __init__(self, n_groups: int, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(n_groups, in_dim, hidden) / math.sqrt(in_dim))
        self.b1 = nn.Parameter(torch.zeros(n_groups, hidden))
        self.w2 = nn.Parameter(torch.randn(n_groups, hidden, hidden) / math.sqrt(hidden))
        self.b2 = nn.Parameter(torch.zeros(n_groups, hidden))
        self.drop = nn.AlphaDropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        h = self.drop(F.selu(torch.einsum("bgi,gih->bgh", x, self.w1) + self.b1))
        return self.drop(F.selu(torch.einsum("bgi,gih->bgh", h, self.w2) + self.b2))


def _heads(dim: int, most: int = 8) -> int:
    return next(h for h in (most, 4, 2, 1) if dim % h == 0)


class MCATBaseline(BagRNABaseline):
    """MCAT co-attention.

    rna [B, G] -> 16 groups [B, 16, S] -> GroupedSNN -> genomic tokens Q [B, 16, H]
    bag [B, N, D] -> per-instance projection -> K = V [B, N, H], plus one learned null key -> [B, N+1, H]
    co-attention MultiheadAttention(Q, K, V) -> co-attended bag tokens [B, 16, H], weights [B, 16, N+1]
    bag side: TransformerEncoder(1 layer) -> gated ABMIL -> [B, H]
    genomic side: TransformerEncoder(1 layer) -> gated ABMIL -> [B, H]
    concat [B, 2H] -> 2 × (Linear → ReLU → Dropout) -> [B, H] -> Linear -> logits [B, K].
    attention["coattn"] [B, 16, N] — the co-attention of each genomic token over the real instances
    (the null key's share left out, so rows may sum to less than one).
    """

    name = "mcat"
    n_groups = 16

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        h = cfg.hidden
        index, size = gene_groups(cfg.rna_dim, self.n_groups)
        self.register_buffer("gene_index", index, persistent=False)
        self.genomic = GroupedSNN(self.n_groups, size, h, cfg.dropout)
        self.instances = InstanceProjection(cfg.dim(self.bag), h, cfg.dropout)
        self.null_key = nn.Parameter(torch.zeros(1, 1, h))
        self.coattn = nn.MultiheadAttention(h, num_heads=1, batch_first=True)
        self.bag_transformer = self._transformer(h, cfg.dropout)
        self.rna_transformer = self._transformer(h, cfg.dropout)
        self.bag_pool = GatedAttentionPool(h, attn_dim=h, heads=1, dropout=cfg.dropout)
        self.rna_pool = GatedAttentionPool(h, attn_dim=h, heads=1, dropout=cfg.dropout)
        self.head = mlp(2 * h, h, cfg.dropout, depth=2)
        self.classifier = nn.Linear(h, cfg.n_classes)

    @staticmethod
    def _transformer(dim: int, dropout: float) -> nn.TransformerEncoder:
        layer = nn.TransformerEncoderLayer(
            dim, nhead=_heads(dim), dim_feedforward=2 * dim, dropout=dropout, activation="relu", batch_first=True
        )
        return nn.TransformerEncoder(layer, num_layers=1, enable_nested_tensor=False)

    def forward(self, batch: Batch) -> ModelOutput:
        bag, mask = bag_of(batch, self.bag)  # [B, N, D], [B, N]
        has_bag, has_rna = present_of(batch, self.bag), present_of(batch, "rna")
        b = batch.size

        groups = F.pad(batch.rna, (0, 1))[:, self.gene_index]  # [B, 16, S]
        tokens = impute_zeros(self.genomic(groups), has_rna)  # [B, 16, H]

        keys = torch.cat([self.null_key.expand(b, -1, -1), self.instances(bag)], dim=1)  # [B, N+1, H]
        key_mask = torch.cat([mask.new_ones(b, 1), mask], dim=1)  # [B, N+1] True = real
        attended, weights = self.coattn(
            tokens, keys, keys, key_padding_mask=~key_mask, need_weights=True, average_attn_weights=True
        )  # [B, 16, H], [B, 16, N+1]

        all_tokens = mask.new_ones(b, self.n_groups)
        h_bag, _ = self.bag_pool(self.bag_transformer(attended), all_tokens)  # [B, 1, H]
        h_rna, _ = self.rna_pool(self.rna_transformer(tokens), all_tokens)  # [B, 1, H]
        h_bag, h_rna = impute_zeros(h_bag[:, 0], has_bag), impute_zeros(h_rna[:, 0], has_rna)

        logits = self.classifier(self.head(torch.cat([h_bag, h_rna], dim=-1)))
        coattn = impute_zeros(weights[:, :, 1:], has_bag)  # [B, 16, N]
        return self.finish(logits, {"coattn": coattn})
