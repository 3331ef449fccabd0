"""Multimodal fusion baselines without co-attention: GSCNN (concatenation), Pathomic fusion (gated
Kronecker / bilinear) and PORPOISE (concatenation of ABMIL and SNN embeddings).

``bp`` and ``porpoise`` pair RNA with one bag modality: slides when the cohort has them; for cohorts
without slides the report's sentence bag stands in for the image bag. Missing modalities of a case are
zero-imputed at the unimodal-embedding level (see :mod:`mosare.model.baselines.common`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mosare import MODALITIES
from mosare.config import ModelConfig
from mosare.model.abmil import ABMILEncoder
from mosare.model.baselines.common import (
    ATTENTION_KEY,
    BAG_MODALITIES,
    BagRNABaseline,
    Baseline,
    InstanceProjection,
    SNNEncoder,
    bag_of,
    impute_zeros,
    masked_mean,
    mlp,
    present_of,
)
from mosare.types import Batch, ModelOutput


class GSCNNBaseline(Baseline):
    """GSCNN-style concatenation fusion (Mobadersany et al., 2018), one branch per cohort modality:

    wsi: wsi_bag [B, Nw, Dw] -> per-patch projection -> masked mean -> [B, H]  (no attention, as in GSCNN)
    rna: rna [B, G] -> SNN -> [B, H]
    rpt: rpt_bag [B, Ns, Dt] -> per-sentence projection -> masked mean -> [B, H]
    concat [B, M·H] -> 2 × (Linear → ReLU → Dropout) -> [B, H] -> Linear -> logits [B, K].
    """

    name = "gscnn"
    requires = ("rna",)
    requires_any = BAG_MODALITIES
    uses = MODALITIES

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.uses = tuple(m for m in MODALITIES if m in cfg.modalities)
        branches: dict[str, nn.Module] = {}
        for m in self.uses:
            if m == "rna":
                branches[m] = SNNEncoder(cfg.rna_dim, cfg.hidden, n_layers=2, dropout=cfg.dropout)
            else:
                branches[m] = InstanceProjection(cfg.dim(m), cfg.hidden, cfg.dropout)
        self.branches = nn.ModuleDict(branches)
        self.head = mlp(len(self.uses) * cfg.hidden, cfg.hidden, cfg.dropout, depth=2)
        self.classifier = nn.Linear(cfg.hidden, cfg.n_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        parts = []
        for m in self.uses:
            if m == "rna":
                emb = self.branches[m](batch.rna)
            else:
                bag, mask = bag_of(batch, m)
                emb = masked_mean(self.branches[m](bag), mask)
            parts.append(impute_zeros(emb, present_of(batch, m)))  # [B, H]
        return self.finish(self.classifier(self.head(torch.cat(parts, dim=-1))))


class _GatedReduce(nn.Module):
    """One side of Pathomic fusion's gating: o = ReLU(W_o (σ(x^T W_z y) ⊙ ReLU(W_h x))).

    forward(x [B, Dx], y [B, Dy]) -> [B, out]; the sigmoid gate is bilinear in both embeddings.
    """

    def __init__(self, dim_x: int, dim_y: int, out: int, dropout: float) -> None:
        super().__init__()
        self.hidden = nn.Sequential(nn.Linear(dim_x, out), nn.ReLU())
        self.gate = nn.Bilinear(dim_x, dim_y, out)
        self.out = nn.Sequential(nn.Linear(out, out), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.out(torch.sigmoid(self.gate(x, y)) * self.hidden(x))


class PathomicBPBaseline(BagRNABaseline):
    """Pathomic fusion (Chen et al., 2020): gated Kronecker (bilinear pooling) fusion of a bag embedding
    and an RNA embedding.

    bag [B, N, D] -> ABMILEncoder -> e_b [B, H];  rna [B, G] -> SNN -> e_r [B, H]   (zero-imputed if missing)
    o_b = gate(e_b | e_b, e_r) [B, 32], o_r = gate(e_r | e_r, e_b) [B, 32]; append 1 -> [B, 33] each;
    outer product [B, 33, 33] -> flatten [B, 1089] -> Dropout -> 2 × (Linear → ReLU → Dropout) -> [B, H]
    -> Linear -> logits [B, K]. The appended 1 keeps the unimodal terms next to the bimodal ones.
    attention["wsi_patch"] or ["rpt_sentence"] [B, N].
    """

    name = "bp"
    fusion_dim = 32

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        h, d = cfg.hidden, self.fusion_dim
        self.bag_encoder = ABMILEncoder(cfg.dim(self.bag), h, dropout=cfg.dropout)
        self.rna_encoder = SNNEncoder(cfg.rna_dim, h, n_layers=2, dropout=cfg.dropout)
        self.gate_bag = _GatedReduce(h, h, d, cfg.dropout)
        self.gate_rna = _GatedReduce(h, h, d, cfg.dropout)
        self.post_dropout = nn.Dropout(cfg.dropout)
        self.head = mlp((d + 1) ** 2, h, cfg.dropout, depth=2)
        self.classifier = nn.Linear(h, cfg.n_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        bag, mask = bag_of(batch, self.bag)
        has_bag, has_rna = present_of(batch, self.bag), present_of(batch, "rna")
        e_bag, attn = self.bag_encoder(bag, mask)  # [B, H], [B, N]
        e_bag = impute_zeros(e_bag, has_bag)
        e_rna = impute_zeros(self.rna_encoder(batch.rna), has_rna)  # [B, H]
        o_bag, o_rna = self.gate_bag(e_bag, e_rna), self.gate_rna(e_rna, e_bag)  # [B, 32] each
        one = o_bag.new_ones(o_bag.shape[0], 1)
        o_bag, o_rna = torch.cat([o_bag, one], dim=-1), torch.cat([o_rna, one], dim=-1)  # [B, 33]
        fused = torch.einsum("bi,bj->bij", o_bag, o_rna).flatten(1)  # [B, 1089]
        logits = self.classifier(self.head(self.post_dropout(fused)))
        return self.finish(logits, {ATTENTION_KEY[self.bag]: impute_zeros(attn, has_bag)})


class PorpoiseBaseline(BagRNABaseline):
    """PORPOISE (Chen et al., 2022) with its default concatenation fusion.

    bag [B, N, D] -> ABMILEncoder -> [B, H];  rna [B, G] -> SNN -> [B, H]   (zero-imputed if missing)
    concat [B, 2H] -> Linear → ReLU → Dropout -> [B, H] -> Linear -> logits [B, K].
    attention["wsi_patch"] or ["rpt_sentence"] [B, N].
    """

    name = "porpoise"

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.bag_encoder = ABMILEncoder(cfg.dim(self.bag), cfg.hidden, dropout=cfg.dropout)
        self.rna_encoder = SNNEncoder(cfg.rna_dim, cfg.hidden, n_layers=2, dropout=cfg.dropout)
        self.head = mlp(2 * cfg.hidden, cfg.hidden, cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, cfg.n_classes)

    def forward(self, batch: Batch) -> ModelOutput:
        bag, mask = bag_of(batch, self.bag)
        has_bag = present_of(batch, self.bag)
        e_bag, attn = self.bag_encoder(bag, mask)
        e_bag = impute_zeros(e_bag, has_bag)  # [B, H]
        e_rna = impute_zeros(self.rna_encoder(batch.rna), present_of(batch, "rna"))  # [B, H]
        logits = self.classifier(self.head(torch.cat([e_bag, e_rna], dim=-1)))
        return self.finish(logits, {ATTENTION_KEY[self.bag]: impute_zeros(attn, has_bag)})
