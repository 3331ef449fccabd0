"""One badge per modality: present / missing / switched off."""

from __future__ import annotations

import streamlit as st

from mosare.app.workbench import MODALITY_NAMES

_COLOURS = {"present": "green", "missing": "gray", "switched off": "orange", "not used by model": "gray"}
_ICONS = {"present": ":material/check_circle:", "missing": ":material/block:", "switched off": ":material/toggle_off:",
          "not used by model": ":material/remove:"}


def modality_badges(status: dict[str, str]) -> None:
    cols = st.columns(len(status))
    for col, (m, s) in zip(cols, status.items()):
        col.badge(f"{MODALITY_NAMES[m]}: {s}", icon=_ICONS[s], color=_COLOURS[s])
