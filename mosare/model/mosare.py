"""MoSARe — Mixture of Experts, Symmetric Aligning and Reconstruction (Moradinasab et al., 2025).

The whole forward pass is in :meth:`MoSARe.forward_features`, top to bottom:

    1. modality encoders      → global X^G_m [B, M, H] and local X^L_m [B, M, C, H]       (§3.1, eq. 2)
    2. local sparse MoE + activation gate keep the top-k local tokens                     (eqs. 9–10)
    3. cross-modal attention at both levels over the present modalities                   (eqs. 3–7)
    4. aggregate X^G_agg, X^L_agg = Σ_m                                                    (eq. 8)
    5. decoupled reconstruction fills *missing* modalities only                           (eqs. 11–14)
    6. final sparse MoE over the 2M completed tokens, summed (paper) or concatenated → X_out (§3.4)

``forward_head`` maps X_out to logits; ``loss`` is eq. 20. M is the number of modalities the model was
built for (``cfg.modalities``); ``batch.present`` is the explicit boolean mask of what each case has.
Where the paper is silent we follow its text; choices are noted inline and in the README.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mosare import MODALITIES
from mosare.config import ModelConfig
from mosare.model.abmil import ABMILEncoder, GatedAttentionPool
from mosare.model.base import SubtypingModel, linear_path
from mosare.model.cma import CrossModalAttention
from mosare.model.losses import PrototypeMemory, symmetric_contrastive
from mosare.model.moe import ActivationGate, SparseMoE
from mosare.model.reconstruction import DecoupledReconstruction
from mosare.types import Batch, ModelOutput


@dataclass
class Intermediates:
    """What MoSARe's loss reads besides the logits (``ModelOutput.aux``); M modalities, H hidden, K classes.

    x_out [B, H] (sum fusion) or [B, 2MH] (concat)   the fused representation before the head
    cma_g, cma_l [B, M, H]     each modality after cross-modal attention (local: mean of its kept tokens)
    agg_g, agg_l [B, H]        their sums over modalities (eq. 8)
    rec_g, rec_l [B, M, H]     every modality decoded from the aggregate (eqs. 11–14)
    final_g, final_l [B, M, H] observed where present, reconstructed where missing
    present [B, M] bool        the mask the forward pass used
    linear [B, M, K]           each modality's linear-path logits (zero where absent or the path is off)
    """

    x_out: Tensor
    cma_g: Tensor
    cma_l: Tensor
    agg_g: Tensor
    agg_l: Tensor
    rec_g: Tensor
    rec_l: Tensor
    final_g: Tensor
    final_l: Tensor
    present: Tensor
    linear: Tensor | None = None


def _mlp(in_dim: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    """``layers`` × (Linear → LayerNorm → ReLU → Dropout)."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(in_dim if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*mods)


class SlideEncoder(nn.Module):
    """WSI: global = gated ABMIL over patch features; local = projected per-slide GMM means.

    forward(batch) -> (global [B, H], local [B, C, H], {"wsi_patch": [B, N]})
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.abmil = ABMILEncoder(cfg.wsi_dim, cfg.hidden, dropout=0.1)
        self.local = nn.Sequential(nn.LayerNorm(cfg.wsi_dim, elementwise_affine=False), nn.Linear(cfg.wsi_dim, cfg.hidden))

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        g, attn = self.abmil(batch.wsi_bag, batch.wsi_bag_mask)
        return g, self.local(batch.wsi_local), {"wsi_patch": attn}


class RNAEncoder(nn.Module):
    """RNA: global = 3-layer MLP φ; local = 16-head ABMIL over gene tokens, ψ_j(t) = Σ_k α_jk W_j t_k (eq. 2).

    Each gene k becomes a token t_k = value_k · u_k + e_k (learned per-gene value direction u_k and identity
    embedding e_k; a scalar alone would carry no gene identity). Attention pools the small tokens per head,
    then W_j lifts each head's pool to H (W_j is linear, so pooling first is the same sum and far cheaper).

    forward(batch) -> (global [B, H], local [B, heads, H], {"rna_gene": [B, heads, G]})
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        g, d = cfg.rna_dim, cfg.gene_token_dim
        # per-sample LayerNorm over genes (the authors z-score every input vector over its features); off when the
        # input is already standardised per gene with training statistics
        self.norm_in = nn.LayerNorm(g, elementwise_affine=False) if cfg.rna_sample_norm else nn.Identity()
        self.global_mlp = _mlp(g, cfg.hidden, layers=3, dropout=cfg.dropout)
        self.value_dir = nn.Parameter(torch.randn(g, d) * d**-0.5)
        self.gene_embed = nn.Parameter(torch.randn(g, d) * 0.02)
        self.pool = GatedAttentionPool(d, attn_dim=d, heads=cfg.rna_heads, dropout=0.0)  # G tokens: dropout here costs more than the rest
        self.head_proj = nn.Parameter(torch.randn(cfg.rna_heads, d, cfg.hidden) * d**-0.5)  # W_j

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        t = self.norm_in(batch.rna)  # [B, G]
        pool = self.pool
        # the pool's first layers are linear in the token t_k u_k + e_k, so V(t_k u_k + e_k) = t_k (V u_k) + V e_k:
        # [G, a] terms computed once per step instead of a Linear over B·G tokens (same function, far cheaper)
        # (laid out [B, a, G] so the per-head scores come out as [B, heads, G] without a transpose)
        v_lin, u_lin = pool.tanh_branch[0], pool.gate_branch[0]
        a = t[:, None, :] * (v_lin.weight @ self.value_dir.T)[None] + (v_lin.weight @ self.gene_embed.T + v_lin.bias[:, None])
        b = t[:, None, :] * (u_lin.weight @ self.value_dir.T)[None] + (u_lin.weight @ self.gene_embed.T + u_lin.bias[:, None])
        logits = pool.score.weight @ (torch.tanh(a) * torch.sigmoid(b)) + pool.score.bias[:, None]  # [B, heads, G]
        attn = torch.softmax(logits, dim=-1)  # [B, heads, G]: every gene is a real token
        pooled = (attn * t[:, None, :]) @ self.value_dir + attn @ self.gene_embed  # Σ_k α_jk (t_k u_k + e_k): [B, heads, d]
        local = torch.einsum("bjd,jdh->bjh", pooled, self.head_proj)
        return self.global_mlp(t), local, {"rna_gene": attn}


class ReportEncoder(nn.Module):
    """Report: global = MLP over the whole-report embedding; local = projected per-report GMM means.

    forward(batch) -> (global [B, H], local [B, C, H], {})
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        norm = lambda: nn.LayerNorm(cfg.rpt_dim, elementwise_affine=False)  # noqa: E731
        self.global_mlp = nn.Sequential(norm(), _mlp(cfg.rpt_dim, cfg.hidden, layers=2, dropout=cfg.dropout))
        self.local = nn.Sequential(norm(), nn.Linear(cfg.rpt_dim, cfg.hidden))

    def forward(self, batch: Batch) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return self.global_mlp(batch.rpt_global), self.local(batch.rpt_local), {}


ENCODERS: dict[str, type[nn.Module]] = {"wsi": SlideEncoder, "rna": RNAEncoder, "rpt": ReportEncoder}


class MoSARe(SubtypingModel):
    """The MoSARe model. ``attention`` in its output holds (M = len(cfg.modalities), C local tokens, k kept):

    wsi_patch [B, Nw]            ABMIL attention per patch
    rna_gene [B, 16, G]          attention of each RNA head over genes
    local_cma [B, M, C]          cross-modal attention each local token receives from the other modalities
                                 (0 for tokens the activation gate dropped)
    local_pair [B, M, M, k, k]   token-level cross-modal attention between kept tokens, modality a → b
    local_kept_idx [B, M, k]     which of the C local tokens were kept (ascending)
    global_pair [B, M, M]        global cross-modal gate, modality a → b
    local_keep [B, M, C]         activation-gate mask (1 = kept local token)
    local_experts / local_expert_w [B, M, C, top-k]   local MoE gate choices
    final_experts / final_expert_w [B, 2M, top-k]     final MoE gate choices (tokens: M global then M local)
    reconstructed [B, M]         True where the modality was missing and reconstructed

    Where the defaults depart from the paper (each a ModelConfig field; ``mosare-paper`` restores the paper):
    X_out is the LayerNorm of the *concatenated* 2M final tokens (paper: of their sum); a per-modality linear
    path with a ridge penalty adds W_m x_m to the logits — by default (``linear_detach``) each W_m is trained only by
    its own modality's cross-entropy, as a logistic regression of its own, and the network learns the rest; the
    expression vector is not LayerNorm'd per sample (it is z-scored per gene with training-fold statistics);
    feature dropout on the expression and report vectors while training.
    """

    name = "mosare"
    default_lr = 1e-4  # bench/sweep.py: lowest mean validation loss of 1e-4 / 3e-4 / 1e-3 (assets/results/lr-sweep)
    requires: tuple[str, ...] = ()
    uses = MODALITIES
    align_from_epoch: int = 10  # the trainer sets it from TrainConfig.align_warmup

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        h, mods = cfg.hidden, cfg.modalities
        self.mod_index = [MODALITIES.index(m) for m in mods]
        self.encoders = nn.ModuleDict({m: ENCODERS[m](cfg) for m in mods})
        self.local_moe = nn.ModuleDict({m: SparseMoE(h, cfg.n_experts, cfg.expert_top_k) for m in mods})
        self.act_gate = nn.ModuleDict({m: ActivationGate(h, cfg.local_keep) for m in mods})
        self.cma_global = CrossModalAttention(h, cfg.cma_heads, mode="sigmoid")
        self.cma_local = CrossModalAttention(h, cfg.cma_heads, mode="softmax")
        self.recon_global = DecoupledReconstruction(h, len(mods))
        self.recon_local = DecoupledReconstruction(h, len(mods))
        self.final_moe = SparseMoE(h, cfg.n_experts, cfg.expert_top_k)
        out_dim = h if cfg.fusion == "sum" else 2 * len(mods) * h
        self.norm_out = nn.LayerNorm(out_dim)
        self.head = nn.Linear(out_dim, cfg.n_classes)
        # optional linear path: one logistic regression per modality on its input vector, added to the logits
        self.linear = nn.ModuleDict({m: nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(cfg.dim(m), cfg.n_classes))
                                     for m in mods}) if cfg.linear_path else None
        self.head_global = nn.ModuleList(nn.Linear(h, cfg.n_classes) for _ in mods)
        self.head_local = nn.ModuleList(nn.Linear(h, cfg.n_classes) for _ in mods)
        self.prototypes = PrototypeMemory(cfg.n_classes, cfg.prototypes_per_class, out_dim, cfg.prototype_momentum)

    def forward_features(self, batch: Batch) -> tuple[Tensor, Intermediates, dict[str, Tensor]]:
        cfg = self.cfg
        if self.training and cfg.input_dropout > 0:  # feature dropout on the expression and report vectors
            batch = replace(batch, rna=F.dropout(batch.rna, cfg.input_dropout),
                            rpt_global=F.dropout(batch.rpt_global, cfg.input_dropout))
        present = batch.present[:, self.mod_index]  # [B, M] bool
        pf = present.float()
        attention: dict[str, Tensor] = {}

        # 1. modality encoders → X^G [B, M, H], X^L [B, M, C, H]; missing modalities are zeroed
        glob, loc = [], []
        for m in cfg.modalities:
            g, l, maps = self.encoders[m](batch)
            glob.append(g)
            loc.append(l)
            attention.update(maps)
        x_g = torch.stack(glob, 1) * pf[:, :, None]
        x_l = torch.stack(loc, 1) * pf[:, :, None, None]

        # 2. local sparse MoE (eq. 9) and activation gate keeping the top-k tokens (eq. 10); only kept tokens go on
        B, M, C = x_l.shape[:3]
        if cfg.use_moe:
            outs, keeps, kept_idx, experts, expert_w = [], [], [], [], []
            for i, m in enumerate(cfg.modalities):
                z, idx, w = self.local_moe[m](x_l[:, i])
                z, k, kidx = self.act_gate[m](z)
                outs.append(z)
                keeps.append(k)
                kept_idx.append(kidx)
                experts.append(idx)
                expert_w.append(w)
            x_l, keep, kept_idx = torch.stack(outs, 1), torch.stack(keeps, 1), torch.stack(kept_idx, 1)  # [B, M, k, H]
            attention["local_experts"], attention["local_expert_w"] = torch.stack(experts, 1), torch.stack(expert_w, 1)
        else:
            keep = torch.ones(B, M, C, device=x_l.device)
            kept_idx = torch.arange(C, device=x_l.device).expand(B, M, C)
        attention["local_keep"] = keep.detach()
        token_ok = torch.ones(x_l.shape[:3], dtype=torch.bool, device=x_l.device)  # every kept token is valid

        # 3. cross-modal attention over present modalities (eqs. 3–7); identity when switched off
        if cfg.use_cma:
            cma_g, pair_g = self.cma_global(x_g[:, :, None], present, torch.ones_like(present)[:, :, None])
            cma_g = cma_g[:, :, 0]
            cma_l, pair_l = self.cma_local(x_l, present, token_ok)  # pair_l [B, a, b, k, k]
            attention["global_pair"] = pair_g[..., 0, 0]
            attention["local_pair"] = pair_l
            attention["local_kept_idx"] = kept_idx
            # attention a kept token receives, averaged over the present querying modalities and their tokens,
            # scattered back to the C local tokens (dropped tokens receive none)
            received = (pair_l.sum(3) / pair_l.shape[3]).sum(1)  # [B, b, k]
            n_partners = (present.sum(1, keepdim=True) - 1).clamp(min=1)
            attention["local_cma"] = torch.zeros(B, M, C, device=x_l.device).scatter(
                2, kept_idx, received / n_partners[:, :, None])
        else:
            cma_g, cma_l = x_g, x_l
        # a modality's local vector = mean of its kept tokens (the authors sum them)
        cma_l_vec = cma_l.mean(2)  # [B, M, H]

        # 4. aggregate (eq. 8)
        agg_g, agg_l = cma_g.sum(1), cma_l_vec.sum(1)

        # 5. decoupled reconstruction: decode every modality, use it only where missing (eqs. 11–14)
        rec_g, rec_l = self.recon_global(agg_g), self.recon_local(agg_l)
        if cfg.use_recon:
            final_g = DecoupledReconstruction.complete(cma_g, rec_g, present)
            final_l = DecoupledReconstruction.complete(cma_l_vec, rec_l, present)
        else:
            final_g, final_l = cma_g, cma_l_vec
        attention["reconstructed"] = ~present if cfg.use_recon else torch.zeros_like(present)

        # 6. final MoE over the 2M completed tokens → X_out: their sum (paper) or concatenation
        tokens = torch.cat([final_g, final_l], dim=1)  # [B, 2M, H]
        if cfg.use_moe:
            tokens, idx, w = self.final_moe(tokens)
            attention["final_experts"], attention["final_expert_w"] = idx, w
        x_out = self.norm_out(tokens.sum(1) if cfg.fusion == "sum" else tokens.flatten(1))  # [B, H] or [B, 2MH]

        aux = Intermediates(x_out=x_out, cma_g=cma_g, cma_l=cma_l_vec, agg_g=agg_g, agg_l=agg_l, rec_g=rec_g,
                            rec_l=rec_l, final_g=final_g, final_l=final_l, present=present)
        return x_out, aux, attention

    def forward_head(self, x_out: Tensor) -> Tensor:
        return self.head(x_out)

    def linear_logits(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """Each modality's linear logits W_m x_m + b_m [B, M, K] on its input vector (mean patch feature, expression,
        report vector), zero where the modality is absent, twice: as trained by ``linear_aux``, and as added to the
        head's logits — the same numbers, but with ``linear_detach`` the weights are cut from the fused loss's graph
        (the inputs are not, so gradient attributions still see the linear path)."""
        out = batch.labels.new_zeros((batch.size, len(self.cfg.modalities), self.cfg.n_classes), dtype=torch.float32)
        if self.linear is None:
            return out, out
        fused = out.clone() if self.cfg.linear_detach else out
        for i, m in enumerate(self.cfg.modalities):
            if m == "wsi":
                mask = batch.wsi_bag_mask[..., None].float()
                x = (batch.wsi_bag * mask).sum(1) / mask.sum(1).clamp(min=1)
            else:
                x = batch.rna if m == "rna" else batch.rpt_global
            out[:, i], fused[:, i] = linear_path(self.linear[m], x, batch.present[:, MODALITIES.index(m), None],
                                                 self.cfg.linear_detach)  # fused is out unless detached
        return out, fused

    def hide_modalities(self, batch: Batch) -> Batch:
        """Modality dropout while training (``modality_dropout``): each present modality of a case is hidden with
        that probability, never all of a case's, so each branch also learns to stand alone (for the cases that
        arrive with one modality)."""
        p = self.cfg.modality_dropout
        kept = batch.present & (torch.rand(batch.present.shape, device=batch.present.device) >= p)
        return batch.with_present(torch.where(~kept.any(1, keepdim=True), batch.present, kept))

    def forward(self, batch: Batch) -> ModelOutput:
        if self.training and self.cfg.modality_dropout > 0:
            batch = self.hide_modalities(batch)
        x_out, aux, attention = self.forward_features(batch)
        linear, fused = self.linear_logits(batch)  # [B, M, K] each
        aux.linear = linear.to(x_out.dtype)
        logits = self.forward_head(x_out) + fused.to(x_out.dtype).sum(1)
        return ModelOutput(logits=logits, probs=torch.softmax(logits, -1), aux=aux, attention=attention)

    def loss(self, batch: Batch, out: ModelOutput, epoch: int) -> tuple[Tensor, dict[str, float]]:
        """Eq. 20: λ1 SymCL + λ2 MCL + λ3 rec + λ4 (cls^G + cls^L + cls^agg); aligning after the warm-up."""
        cfg, a, y = self.cfg, out.aux, batch.labels
        present = a.present
        cls_g = torch.stack([F.cross_entropy(h(a.final_g[:, i]), y) for i, h in enumerate(self.head_global)]).mean()
        cls_l = torch.stack([F.cross_entropy(h(a.final_l[:, i]), y) for i, h in enumerate(self.head_local)]).mean()
        cls = cls_g + cls_l + F.cross_entropy(out.logits, y)
        zero = out.logits.new_zeros(())
        # the reconstruction target is the observed token, held fixed (stop-gradient): the decoders learn to
        # predict it; the encoders are not pulled toward whatever the decoders can produce
        rec = (DecoupledReconstruction.loss(a.cma_g.detach(), a.rec_g, present)
               + DecoupledReconstruction.loss(a.cma_l.detach(), a.rec_l, present)) if cfg.use_recon else zero
        symcl = mcl = zero
        if cfg.use_align and epoch >= self.align_from_epoch:
            terms = [symmetric_contrastive(getattr(a, f"cma_{lv}")[:, i], getattr(a, f"agg_{lv}"), present[:, i], cfg.symcl_temperature)
                     for lv in ("g", "l") for i in range(len(cfg.modalities))]
            symcl = torch.stack(terms).mean()  # eq. 16
            mcl = self.prototypes.loss(a.x_out, y, cfg.mcl_temperature)
        l1, l2, l3, l4 = cfg.lambdas
        total = l1 * symcl + l2 * mcl + l3 * rec + l4 * cls
        if self.linear is not None and cfg.linear_l2 > 0:  # ridge penalty of the linear path (a logistic regression's L2)
            total = total + cfg.linear_l2 * sum(lin[1].weight.pow(2).sum() for lin in self.linear.values())
        uni = zero
        if self.linear is not None and cfg.linear_aux > 0:  # each modality's linear path also classifies on its own
            uni = torch.stack([F.cross_entropy(a.linear[present[:, i], i], y[present[:, i]])
                               for i in range(len(cfg.modalities)) if present[:, i].any()]).mean()
            total = total + cfg.linear_aux * uni
        parts = {"cls": cls, "rec": rec, "symcl": symcl, "mcl": mcl, "uni": uni}
        return total, {k: float(v.detach()) for k, v in parts.items()}

    def lr_scale(self, param_name: str) -> float:
        """The linear path is a logistic regression: it needs a larger step than the network to converge."""
        return self.cfg.linear_lr_scale if param_name.startswith("linear.") else 1.0

    def on_batch_end(self, batch: Batch, out: ModelOutput, epoch: int) -> None:
        if self.cfg.use_align:
            self.prototypes.update(out.aux.x_out, batch.labels)
