"""Shared test fixtures.

Real data lives in ``../shared/data`` beside the repository (or wherever ``MOSARE_SHARED_DATA`` points).
A user's fresh clone has no such folder: tests that need it are skipped there, but on CI
(``CI=true``), where the data is always present, a missing file is a failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
# tests/ mirrors the package (tests/model, tests/train, ...); their shared helpers (helpers.py) live here
sys.path.append(str(Path(__file__).resolve().parent))


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def shared_data_dir() -> Path:
    """The shared data folder: ``$MOSARE_SHARED_DATA`` or ``<repo>/../shared/data``."""
    env = os.environ.get("MOSARE_SHARED_DATA")
    if env:
        return Path(env).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def _missing(reason: str, on_ci: str = "the shared data must be present") -> None:
    """Skip the test on a developer machine; on CI (where ``on_ci`` holds) fail it."""
    if _on_ci():
        pytest.fail(f"{reason} (CI=true: {on_ci})", pytrace=False)
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
    from mosare.app.demo import ensure_demo_cases

    cache = tmp_path_factory.mktemp("mosare-cache")
    ensure_demo_cases(cache)
    return cache


@pytest.fixture
def chromium() -> str:
    """Path of the Chromium binary for the browser tests (skips, or fails on CI, when it or playwright is
    missing: the CI image installs both)."""
    from tests.browser_helpers import BrowserMissing, find_chromium

    try:
        return find_chromium()
    except BrowserMissing as err:
        _missing(str(err), on_ci="the browser test must run")


@pytest.fixture
def start_streamlit(tmp_path):
    """Starts dashboard servers for a browser test: ``start_streamlit(cache, default_model="")`` returns a healthy
    :class:`tests.browser_helpers.StreamlitServer` (``MOSARE_CACHE=cache``, log ``tmp_path/streamlit.log``, no model
    folders but the shipped ones, no file watcher), or fails the test with the server log's tail. Every server it
    started is stopped after the test."""
    from tests.browser_helpers import ServerError, StreamlitServer

    servers: list[StreamlitServer] = []

    def start(cache: Path, default_model: str = "") -> StreamlitServer:
        log = tmp_path / (f"streamlit-{len(servers)}.log" if servers else "streamlit.log")
        server = StreamlitServer(log, cache, default_model=default_model,
                                 env={"MOSARE_MODEL_DIRS": str(tmp_path / "no-models")}, watch_files=False)
        servers.append(server)
        try:
            server.wait_healthy(60.0, poll_s=0.25)  # `streamlit run` to a healthy server
        except ServerError as err:
            pytest.fail(f"{err}\n{server.tail()}", pytrace=False)
        return server

    yield start
    for server in servers:
        server.stop(grace_s=3.0)  # a clean stop takes a few seconds; the tests need none of it
