"""Typed access to ``st.session_state``: one :class:`CaseState` per browser session."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import streamlit as st

from mosare.inference import Case
from mosare.app.workbench import Analysis, SlideView

_KEY = "mosare_case"


@dataclass
class CaseState:
    """The loaded case, which model it was built for, what is switched on and the last analysis."""

    name: str
    model_path: str
    case: Case
    view: SlideView | None = None
    report_text: str | None = None  # as given (shown with removed words struck through)
    report_removed: list[tuple[int, int]] = field(default_factory=list)
    truth: dict[str, Any] | None = None  # demo cases: label, planted region, planted sentence
    use: np.ndarray = field(default_factory=lambda: np.ones(3, bool))
    analysis: Analysis | None = None
    notes: list[str] = field(default_factory=list)  # e.g. extraction throughput
    # (modality selection, modality) -> its CaseAttribution: computed once per case, kept across switches
    attributions: dict[tuple, Any] = field(default_factory=dict)


def get() -> CaseState | None:
    return st.session_state.get(_KEY)


def put(cs: CaseState | None) -> None:
    st.session_state[_KEY] = cs
