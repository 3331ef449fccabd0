"""Models by name: ``mosare`` and the baselines."""

from __future__ import annotations

from collections.abc import Sequence

from mosare.config import ModelConfig
from mosare.errors import MosareError
from mosare.model.base import SubtypingModel
from mosare.model.baselines import BASELINES, not_applicable_reason
from mosare.model.mosare import MoSARe

MODELS: dict[str, type[SubtypingModel]] = {"mosare": MoSARe, **BASELINES}


def build_model(name: str, cfg: ModelConfig) -> SubtypingModel:
    if name not in MODELS:
        raise MosareError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](cfg)


def applicability(name: str, cohort_modalities: Sequence[str]) -> str | None:
    """None when ``name`` can run on a cohort with these modalities, else the reason it cannot."""
    if name not in MODELS:
        raise MosareError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return None if name == "mosare" else not_applicable_reason(name, cohort_modalities)
