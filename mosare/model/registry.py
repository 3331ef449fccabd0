"""Models by name: ``mosare``, its ablations (``mosare-no-<component>``) and the baselines."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from mosare.config import ModelConfig
from mosare.errors import MosareError
from mosare.model.base import SubtypingModel
from mosare.model.baselines import BASELINES, not_applicable_reason
from mosare.model.mosare import MoSARe


def _ablation(name: str, **switches: bool) -> type[MoSARe]:
    """MoSARe with components switched off (the paper's ablations); the flags are forced whatever the config says."""

    def __init__(self: MoSARe, cfg: ModelConfig) -> None:
        MoSARe.__init__(self, replace(cfg, **switches))

    doc = f"MoSARe with {', '.join(f'{k}={v}' for k, v in switches.items())}."
    return type(name.replace("-", "_"), (MoSARe,), {"__init__": __init__, "name": name, "__doc__": doc})


# The paper's architecture as published (sum fusion, per-sample LayerNorm of the expression vector, no linear path);
# `mosare` departs from it where BRCA validation said so (see ModelConfig and the README).
PAPER = _ablation("mosare-paper", fusion="sum", linear_path=False, rna_sample_norm=True, input_dropout=0.0,
                  linear_aux=0.0, linear_detach=False)
PAPER.__doc__ = "MoSARe exactly as the paper describes it (the faithful architecture)."

ABLATIONS: dict[str, type[MoSARe]] = {
    cls.name: cls
    for cls in (
        _ablation("mosare-no-moe", use_moe=False),
        _ablation("mosare-no-cma", use_cma=False),
        _ablation("mosare-no-align", use_align=False),
        _ablation("mosare-no-recon", use_recon=False),
    )
}
MODELS: dict[str, type[SubtypingModel]] = {"mosare": MoSARe, "mosare-paper": PAPER, **ABLATIONS, **BASELINES}


def build_model(name: str, cfg: ModelConfig) -> SubtypingModel:
    if name not in MODELS:
        raise MosareError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](cfg)


def applicability(name: str, cohort_modalities: Sequence[str]) -> str | None:
    """None when ``name`` can run on a cohort with these modalities, else the reason it cannot."""
    if name not in MODELS:
        raise MosareError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return None if name in ("mosare", "mosare-paper") or name in ABLATIONS else not_applicable_reason(name, cohort_modalities)
