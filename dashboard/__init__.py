"""The MoSARe dashboard: Streamlit UI only. Logic lives in :mod:`mosare` (see mosare.app.workbench, mosare.explain)."""
