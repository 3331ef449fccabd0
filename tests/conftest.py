"""Shared test fixtures.

Real data lives in ``../shared/data`` beside the repository (or wherever ``MOSARE_SHARED_DATA`` points).
A user's fresh clone has no such folder: tests that need it are skipped there, but on CI
(``CI=true``), where the data is always present, a missing file is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def shared_data_dir() -> Path:
    """The shared data folder: ``$MOSARE_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("MOSARE_SHARED_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def _missing(reason: str) -> None:
    if _on_ci():
        pytest.fail(f"{reason} (CI=true: the shared data must be present)", pytrace=False)
    pytest.skip(reason)


def require_data(path: str | Path) -> Path:
    """Return ``path`` (relative paths are taken inside the shared data folder) if it exists;
    otherwise skip the test, or fail it on CI."""
    p = Path(path)
    if not p.is_absolute():
        p = shared_data_dir() / p
    if not p.exists():
        _missing(f"test data not found: {p}")
    return p


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared real-data folder (skips, or fails on CI, when it is absent)."""
    d = shared_data_dir()
    if not d.is_dir():
        _missing(f"shared data folder not found: {d} (set MOSARE_SHARED_DATA or place ../shared/data)")
    return d


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """A cache folder (``MOSARE_CACHE``) with the dashboard's demo cases materialised once per test session."""
    from mosare.demo import ensure_demo_cases

    cache = tmp_path_factory.mktemp("mosare-cache")
    ensure_demo_cases(cache)
    return cache
