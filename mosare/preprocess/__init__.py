"""Preprocessing: turn raw inputs (slides, RNA tables, reports) into model-ready features, and build
the synthetic demo cohort."""
