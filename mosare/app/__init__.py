"""What the dashboard needs that is not UI: the prediction workbench, the bounded job queue (local or Ray), the
slide sandbox and the demo assets. Never imports streamlit."""
