"""Shared pieces of the comparison models (paper Table 1).

Missing modalities: none of these baselines has a native mechanism for a case that lacks a modality, so
every baseline uses **zero-imputation** — when ``batch.present[:, m]`` is False for a case, the unimodal
embedding of modality ``m`` for that case is replaced by zeros before fusion (and its attention map, if
any, is zeroed too). The model never reads the inputs of an absent modality: a case's output is the same
whatever numbers sit in the tensors of its missing modalities.

Applicability: a baseline needs every modality in ``requires`` and, where ``requires_any`` is non-empty,
at least one of those (the "bag" modality: slides or reports) in the cohort.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mosare import MODALITIES
from mosare.config import ModelConfig
from mosare.errors import MosareError
from mosare.model.base import SubtypingModel
from mosare.types import Batch, ModelOutput

MODALITY_LABEL: dict[str, str] = {"wsi": "slides", "rna": "RNA expression", "rpt": "reports"}
"""Human words for each modality, used in "needs ..." reasons."""

ATTENTION_KEY: dict[str, str] = {"wsi": "wsi_patch", "rpt": "rpt_sentence"}
"""Key of ``ModelOutput.attention`` holding the instance attention [B, N] over a bag modality."""

BAG_MODALITIES: tuple[str, ...] = ("wsi", "rpt")


def _needs(modality: str) -> str:
    return f"{MODALITY_LABEL[modality]} ({modality})"


def requirement_reason(
    requires: Sequence[str], requires_any: Sequence[str], cohort_modalities: Sequence[str]
) -> str | None:
    """None when the cohort has all of ``requires`` and (if given) one of ``requires_any``, else why not."""
    have = set(cohort_modalities)
    missing = [_needs(m) for m in requires if m not in have]
    if requires_any and not have.intersection(requires_any):
        missing.append(" or ".join(_needs(m) for m in requires_any))
    return f"needs {' and '.join(missing)}" if missing else None


def bag_modality(cohort_modalities: Sequence[str]) -> str | None:
    """The bag modality a two-modality fusion baseline pairs with RNA: slides when the cohort has them,
    otherwise the report's sentence bag stands in for the image bag; None when the cohort has neither."""
    for m in BAG_MODALITIES:
        if m in cohort_modalities:
            return m
    return None


def modality_index(modality: str) -> int:
    return MODALITIES.index(modality)


def present_of(batch: Batch, modality: str) -> Tensor:
    """[B] bool — which cases have ``modality``."""
    return batch.present[:, modality_index(modality)].bool()


def bag_of(batch: Batch, modality: str) -> tuple[Tensor, Tensor]:
    """(bag [B, N, D], mask [B, N] bool) of a bag modality; the mask is cleared for cases lacking it."""
    if modality == "wsi":
        bag, mask = batch.wsi_bag, batch.wsi_bag_mask
    elif modality == "rpt":
        bag, mask = batch.rpt_bag, batch.rpt_bag_mask
    else:
        raise ValueError(f"{modality!r} is not a bag modality")
    mask = mask.bool() & present_of(batch, modality)[:, None]
    return bag, mask


def impute_zeros(x: Tensor, present: Tensor) -> Tensor:
    """Zero-imputation: x [B, ...] with the rows of cases where ``present`` [B] is False set to zero.

    Uses ``torch.where`` (not a multiplication) so a non-finite value in an absent row cannot leak.
    """
    keep = present.view(-1, *([1] * (x.dim() - 1)))
    return torch.where(keep, x, torch.zeros_like(x))


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean over real instances: h [B, N, D], mask [B, N] -> [B, D]; an empty bag gives zeros."""
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)


def lecun_normal_(module: nn.Module) -> None:
    """LeCun-normal init (normal, std 1/sqrt(fan_in), zero bias) of every Linear in ``module`` — the
    initialisation self-normalising networks need."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=1.0 / math.sqrt(max(m.in_features, 1)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SNNEncoder(nn.Module):
    """Self-normalising network (Klambauer et al., 2017): ``n_layers`` × (Linear → SELU → AlphaDropout),
    no normalisation layers, LeCun-normal init.

    forward(x [B, D_in]) -> [B, hidden].
    """

    def __init__(self, in_dim: int, hidden: int, n_layers: int = 2, dropout: float = 0.25) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_layers):
            layers += [nn.Linear(d, hidden), nn.SELU(), nn.AlphaDropout(dropout)]
            d = hidden
        self.net = nn.Sequential(*layers)
        lecun_normal_(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class InstanceProjection(nn.Module):
    """Per-instance projection without attention: z-score each instance over its features, then
    Linear → ReLU → Dropout.

    forward(bag [B, N, D_in]) -> [B, N, hidden]. Zero padding rows stay finite (LayerNorm of a constant
    row is zero).
    """

    def __init__(self, in_dim: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim, elementwise_affine=False), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout)
        )

    def forward(self, bag: Tensor) -> Tensor:
        return self.net(bag)


def mlp(in_dim: int, hidden: int, dropout: float, depth: int = 1) -> nn.Sequential:
    """``depth`` × (Linear → ReLU → Dropout): [.., in_dim] -> [.., hidden]."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(depth):
        layers += [nn.Linear(d, hidden), nn.ReLU(), nn.Dropout(dropout)]
        d = hidden
    return nn.Sequential(*layers)


class Baseline(SubtypingModel):
    """Base of the Table 1 comparison models.

    Class attributes: ``requires`` (modalities the cohort must have), ``requires_any`` (the cohort must
    have at least one of these, when non-empty) and ``uses`` (every modality the model may read). After
    construction the instance attribute ``uses`` narrows to the modalities this instance actually reads for
    its cohort (e.g. ``bp`` on a cohort with slides reads ``("wsi", "rna")`` and ignores reports).

    Building a baseline for a cohort it cannot serve raises :class:`MosareError` with the reason.
    """

    requires_any: tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.uses:  # a model that declares (or inherits) no `uses` reads exactly what it requires
            cls.uses = cls.requires

    def __init__(self, cfg: ModelConfig) -> None:
        reason = self.not_applicable_reason(cfg.modalities)
        if reason is not None:
            raise MosareError(f"baseline {self.name!r} does not apply to a cohort with {list(cfg.modalities)}: {reason}")
        super().__init__(cfg)

    @classmethod
    def not_applicable_reason(cls, cohort_modalities: Sequence[str]) -> str | None:
        return requirement_reason(cls.requires, cls.requires_any, cohort_modalities)

    @staticmethod
    def finish(logits: Tensor, attention: dict[str, Tensor] | None = None) -> ModelOutput:
        """ModelOutput with softmax probabilities: logits [B, K] -> probs [B, K]."""
        return ModelOutput(logits=logits, probs=torch.softmax(logits, dim=-1), attention=attention or {})


class BagRNABaseline(Baseline):
    """Base of the baselines that fuse RNA with one bag modality (``bp``, ``mcat``, ``porpoise``).

    After construction ``self.bag`` is the bag modality chosen by :func:`bag_modality` (slides when the
    cohort has them, else reports) and ``uses`` narrows to that modality and RNA. Adds no parameters.
    """

    requires = ("rna",)
    requires_any = BAG_MODALITIES
    uses = MODALITIES

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        bag = bag_modality(cfg.modalities)
        assert bag is not None  # guaranteed by the applicability check
        self.bag = bag
        self.uses = tuple(m for m in MODALITIES if m in (bag, "rna"))
