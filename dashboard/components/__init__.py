"""Reusable UI pieces: modality badges, the slide viewer, the report view."""
