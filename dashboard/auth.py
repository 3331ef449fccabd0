"""Optional sign-in: Streamlit's OIDC (`st.login`) when `[auth]` is configured in secrets, plus an allow-list.

Without an `[auth]` section the app is open to whoever reaches it (bind it to 127.0.0.1, the default, or
put it behind a proxy that authenticates). See README, "Running the dashboard on a shared server".
"""

from __future__ import annotations

import os

import streamlit as st


def _auth_configured() -> bool:
    try:
        return "auth" in st.secrets
    except Exception:  # noqa: BLE001 - no secrets.toml at all
        return False


def allowed_emails() -> set[str]:
    """``MOSARE_ALLOWED_EMAILS`` (comma-separated) or ``[mosare] allowed_emails`` in secrets; empty = anyone signed in."""
    raw = os.environ.get("MOSARE_ALLOWED_EMAILS", "")
    if not raw:
        try:
            raw = ",".join(st.secrets.get("mosare", {}).get("allowed_emails", []))
        except Exception:  # noqa: BLE001
            raw = ""
    return {e.strip().lower() for e in raw.split(",") if e.strip()}


def require_sign_in() -> None:
    """Stop the page unless sign-in is off, or the user is signed in and on the allow-list."""
    if not _auth_configured():
        return
    if not st.user.get("is_logged_in", False):
        st.title("MoSARe")
        st.write("Sign in to use this server.")
        st.button("Sign in", on_click=st.login, type="primary")
        st.stop()
    allowed = allowed_emails()
    email = str(st.user.get("email", "")).lower()
    if allowed and email not in allowed:
        st.error("Your account is not on this server's allow-list; ask the administrator.")
        st.button("Sign out", on_click=st.logout)
        st.stop()
    with st.sidebar:
        st.caption(f"Signed in as {email or 'unknown'}")
        st.button("Sign out", on_click=st.logout, key="sign_out")
