"""Single-modality baselines: SNN on RNA, ABMIL on slides, gated ABMIL on report sentences.

A case lacking the model's modality gets a zero embedding (zero-imputation, see
:mod:`mosare.model.baselines.common`), so its logits are the classifier bias.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mosare.config import ModelConfig
from mosare.model.base import linear_path
from mosare.model.abmil import ABMILEncoder
from mosare.model.baselines.common import (
    Baseline,
    SNNEncoder,
    bag_of,
    impute_zeros,
    lecun_normal_,
    mlp,
    present_of,
)
from mosare.types import Batch, ModelOutput


class SNNBaseline(Baseline):
    """SNN (Klambauer et al., 2017) on the expression vector.

    rna [B, G] -> 2 × (Linear → SELU → AlphaDropout) -> [B, H] -> Linear -> logits [B, K].
    Whole network LeCun-normal initialised, no normalisation layers.
    """

    name = "snn"
    default_lr = 1e-3  # bench/sweep.py (assets/results/lr-sweep)
    requires = ("rna",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.encoder = SNNEncoder(cfg.rna_dim, cfg.hidden, n_layers=2, dropout=cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, cfg.n_classes)
        lecun_normal_(self.classifier)

    def forward(self, batch: Batch) -> ModelOutput:
        emb = impute_zeros(self.encoder(batch.rna), present_of(batch, "rna"))  # [B, H]
        return self.finish(self.classifier(emb))


class ABMILBaseline(Baseline):
    """ABMIL (Ilse et al., 2018) on slide patches.

    wsi_bag [B, Nw, Dw], wsi_bag_mask [B, Nw] -> ABMILEncoder -> [B, H] -> Dropout → Linear -> logits [B, K].
    attention["wsi_patch"] [B, Nw] (zero for padding and for cases without a slide).
    """

    name = "abmil"
    requires = ("wsi",)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.encoder = ABMILEncoder(cfg.wsi_dim, cfg.hidden, dropout=cfg.dropout)
        self.classifier = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.n_classes))

    def forward(self, batch: Batch) -> ModelOutput:
        bag, mask = bag_of(batch, "wsi")
        present = present_of(batch, "wsi")
        emb, attn = self.encoder(bag, mask)  # [B, H], [B, Nw]
        emb = impute_zeros(emb, present)
        return self.finish(self.classifier(emb), {"wsi_patch": impute_zeros(attn, present)})


class TextBaseline(Baseline):
    """Report-only model: gated ABMIL over sentence embeddings plus a projection of the whole-report
    embedding, and (``text_linear_path``) a logistic regression on the report vector beside them.

    rpt_bag [B, Ns, Dt], rpt_bag_mask [B, Ns] -> ABMILEncoder -> [B, H];
    rpt_global [B, Dt] -> LayerNorm → Linear → ReLU → Dropout -> [B, H];
    concat [B, 2H] -> Linear → ReLU → Dropout -> [B, H] -> Linear -> logits [B, K];
    + linear path rpt_global [B, Dt] -> Dropout → Linear -> [B, K] (MoSARe's, with its settings: ridge
    ``linear_l2``, step ``linear_lr_scale`` × lr, own cross-entropy ``linear_aux``; with ``linear_detach`` the
    network's loss does not train it). Zero for a case without a report. aux: the linear logits [B, K].
    attention["rpt_sentence"] [B, Ns].
    """

    name = "text"
    requires = ("rpt",)
    default_lr = 1e-3  # bench/sweep.py, re-swept on the character encoder (assets/results/text-encoder/text-lr.csv)
    default_weight_decay = 5.0  # bench/sweep.py, 3 seeds × 5 folds: lower validation loss on 15 of 15 (assets/results/text-weight-decay)
    refit_features = True  # bench/refit_features.py: validation loss lower on 5 of 5 folds (assets/results/refit-features)

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.sentences = ABMILEncoder(cfg.rpt_dim, cfg.hidden, dropout=cfg.dropout)
        self.global_proj = nn.Sequential(nn.LayerNorm(cfg.rpt_dim, elementwise_affine=False), mlp(cfg.rpt_dim, cfg.hidden, cfg.dropout))
        self.head = mlp(2 * cfg.hidden, cfg.hidden, cfg.dropout)
        self.classifier = nn.Linear(cfg.hidden, cfg.n_classes)
        self.linear = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.rpt_dim, cfg.n_classes)) \
            if cfg.text_linear_path else None

    def forward(self, batch: Batch) -> ModelOutput:
        bag, mask = bag_of(batch, "rpt")
        present = present_of(batch, "rpt")
        pooled, attn = self.sentences(bag, mask)  # [B, H], [B, Ns]
        emb = impute_zeros(torch.cat([pooled, self.global_proj(batch.rpt_global)], dim=-1), present)  # [B, 2H]
        logits = self.classifier(self.head(emb))
        linear = None
        if self.linear is not None:  # [B, K] each
            linear, fused = linear_path(self.linear, batch.rpt_global, present[:, None], self.cfg.linear_detach)
            logits = logits + fused
        out = self.finish(logits, {"rpt_sentence": impute_zeros(attn, present)})
        out.aux = linear
        return out

    def loss(self, batch: Batch, out: ModelOutput, epoch: int) -> tuple[Tensor, dict[str, float]]:
        """Cross-entropy of the logits; with the linear path, + its ridge and its own cross-entropy (cases with a
        report) weighted by ``linear_aux``."""
        total, parts = super().loss(batch, out, epoch)
        if self.linear is None:
            return total, parts
        total = total + self.cfg.linear_l2 * self.linear[1].weight.pow(2).sum()
        here = present_of(batch, "rpt")
        if self.cfg.linear_aux > 0 and here.any():
            uni = F.cross_entropy(out.aux[here], batch.labels[here])
            total = total + self.cfg.linear_aux * uni
            parts["uni"] = float(uni.detach())
        return total, parts

    def lr_scale(self, param_name: str) -> float:
        """The linear path is a logistic regression: it needs a larger step than the network to converge."""
        return self.cfg.linear_lr_scale if param_name.startswith("linear.") else 1.0
