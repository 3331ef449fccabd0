"""The comparison models of the paper's Table 1, adapted to a cohort's modalities.

==========  ==========================================  =======================================
name        model                                        cohort needs
==========  ==========================================  =======================================
snn         SNN on RNA (Klambauer 2017)                  rna
abmil       gated ABMIL on slide patches (Ilse 2018)     wsi
text        gated ABMIL on report sentences + global     rpt
gscnn       concatenation fusion (Mobadersany 2018)      rna and (wsi or rpt)
bp          Pathomic gated Kronecker fusion (Chen 2020)  rna and (wsi or rpt)
mcat        co-attention (Chen 2021)                     rna and (wsi or rpt)
porpoise    ABMIL + SNN concat fusion (Chen 2022)        rna and (wsi or rpt)
==========  ==========================================  =======================================

``bp``, ``mcat`` and ``porpoise`` fuse RNA with one bag modality: slides when the cohort has them, else
the report's sentence bag stands in for the image bag. ``gscnn`` concatenates every cohort modality.
None of them handles missing modalities natively: a case lacking a modality gets a zero unimodal
embedding (zero-imputation).

Every model is a :class:`~mosare.model.base.SubtypingModel` built as ``BASELINES[name](cfg)``; building
one for a cohort it does not apply to raises :class:`~mosare.errors.MosareError`.
"""

from __future__ import annotations

from collections.abc import Sequence

from mosare.errors import MosareError
from mosare.model.baselines.common import Baseline, bag_modality
from mosare.model.baselines.fusion import GSCNNBaseline, PathomicBPBaseline, PorpoiseBaseline
from mosare.model.baselines.mcat import MCATBaseline
from mosare.model.baselines.unimodal import ABMILBaseline, SNNBaseline, TextBaseline

BASELINES: dict[str, type[Baseline]] = {
    cls.name: cls
    for cls in (
        SNNBaseline,
        ABMILBaseline,
        TextBaseline,
        GSCNNBaseline,
        PathomicBPBaseline,
        MCATBaseline,
        PorpoiseBaseline,
    )
}


def not_applicable_reason(name: str, cohort_modalities: Sequence[str]) -> str | None:
    """None when baseline ``name`` can run on a cohort with these modalities, else a short reason such as
    ``"needs slides (wsi)"``. An unknown name raises :class:`MosareError`."""
    try:
        cls = BASELINES[name]
    except KeyError:
        raise MosareError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}") from None
    return cls.not_applicable_reason(cohort_modalities)


__all__ = [
    "ABMILBaseline",
    "BASELINES",
    "Baseline",
    "GSCNNBaseline",
    "MCATBaseline",
    "PathomicBPBaseline",
    "PorpoiseBaseline",
    "SNNBaseline",
    "TextBaseline",
    "bag_modality",
    "not_applicable_reason",
]
