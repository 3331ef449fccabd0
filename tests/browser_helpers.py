"""The dashboard in a real browser, shared by the browser tests (tests/browser/test_browser.py, tests/browser/test_concurrency.py)
and the benchmarks (bench/dashboard.py, bench/sessions.py): a ``streamlit run`` server as a subprocess, finding
Chromium, its launch options, and the front-end checks run in the page (idle, heatmap painted).

No pytest here (the benchmarks import it too): a server that exits or never gets healthy raises
:class:`ServerError`, a missing browser :class:`BrowserMissing`; each caller turns that into its own outcome
(``pytest.fail`` / ``pytest.skip`` in the tests, a one-line ``sys.exit`` in the benchmarks).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking"]
VIEWPORT = {"width": 1400, "height": 1000}

# The front end is idle when no status widget (the "Running..." indicator) is shown, the script is not running
# or about to rerun, the websocket is connected, and no element of an earlier run is still on screen (stale).
IDLE_JS = """() => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return false;
  const script = app.getAttribute('data-test-script-state');
  const conn = app.getAttribute('data-test-connection-state');
  return !document.querySelector('[data-testid="stStatusWidget"]')
      && script !== 'running' && script !== 'rerunRequested'
      && (conn === null || conn === 'CONNECTED')
      && !document.querySelector('[data-stale="true"]');
}"""

# The plotly heatmap has painted: its <image> (the go.Image trace, drawn as a data-URL PNG inside the main svg)
# exists, has a data URL and a non-empty box on screen.
HEATMAP_PAINTED_JS = """() => {
  const img = document.querySelector('[data-testid="stPlotlyChart"] svg.main-svg image');
  if (!img) return false;
  const href = img.getAttribute('href') || img.getAttribute('xlink:href') || '';
  const box = img.getBoundingClientRect();
  return href.startsWith('data:image/') && box.width > 10 && box.height > 10;
}"""


class BrowserMissing(RuntimeError):
    """The playwright package or the Chromium binary is not available; the message says which."""


class ServerError(RuntimeError):
    """The streamlit server exited, or did not answer its health check in time; the message names the log."""


def find_chromium() -> str:
    """Path of the Chromium binary (the Debian ``chromium`` on PATH), once playwright is known to import."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise BrowserMissing("the playwright package is not installed") from None
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise BrowserMissing("chromium not found on PATH")
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StreamlitServer:
    """``streamlit run streamlit_app.py`` with ``make demo``'s options on a free port of 127.0.0.1, started at
    construction in its own process group (so :meth:`stop` ends it with anything it started), output to
    ``log_path``.

    ``cache`` becomes ``MOSARE_CACHE``; ``default_model`` ``MOSARE_DEFAULT_MODEL`` (the sidebar's first model;
    "" for the app's default); ``env``: further variables; ``session_ttl``: ``server.disconnectedSessionTTL``
    in seconds (None: Streamlit's default); ``watch_files=False`` turns Streamlit's file watcher off.
    """

    def __init__(self, log_path: Path, cache: Path, *, default_model: str = "", env: Mapping[str, str] | None = None,
                 session_ttl: int | None = None, watch_files: bool = True):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cache = cache
        self.log_path = log_path
        environ = dict(os.environ, MOSARE_CACHE=str(cache), MOSARE_DEFAULT_MODEL=default_model, PYTHONUNBUFFERED="1",
                       STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
        environ.update(env or {})
        cmd = [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.address", "127.0.0.1",
               "--server.port", str(self.port), "--server.headless", "true"]
        if session_ttl is not None:
            cmd += ["--server.disconnectedSessionTTL", str(session_ttl)]
        if not watch_files:
            cmd += ["--server.fileWatcherType", "none"]
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=environ, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def healthy(self, timeout_s: float = 5.0) -> bool:
        """Whether ``/_stcore/health`` answers ``ok`` now."""
        try:
            with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=timeout_s) as r:
                return r.read().strip() == b"ok"
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_healthy(self, timeout_s: float = 120.0, poll_s: float = 0.1) -> float:
        """Seconds from the start until the server is healthy; :class:`ServerError` if the process exits first
        or ``timeout_s`` (counted from the start) runs out."""
        while time.perf_counter() - self.started < timeout_s:
            if self.proc.poll() is not None:
                raise ServerError(f"streamlit exited with code {self.proc.returncode} before it was healthy; "
                                  f"log: {self.log_path}")
            if self.healthy(timeout_s=2.0):
                return time.perf_counter() - self.started
            time.sleep(poll_s)
        raise ServerError(f"streamlit not healthy after {timeout_s:g} s; log: {self.log_path}")

    def tail(self, lines: int = 60) -> str:
        """The last ``lines`` lines of the server's log, under a header."""
        text = self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""
        return "----- streamlit log (tail) -----\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after ``grace_s`` seconds; closes the log."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def wait_idle(page, timeout_s: float = 120.0, polling_ms: int = 100) -> None:
    """Wait until the app in ``page`` is idle (see ``IDLE_JS``)."""
    page.wait_for_function(IDLE_JS, timeout=timeout_s * 1000, polling=polling_ms)


def wait_for_app(page, expected=None, *, timeout: float = 60.0, settle: float = 0.5) -> None:
    """Wait for Streamlit to finish rendering: the app idle and ``expected`` (a locator that only exists once the
    awaited run has drawn it) visible; then ``settle`` seconds (the front end finishes painting: plotly,
    transitions), and idle still."""
    ms = timeout * 1000
    if expected is not None:
        expected.first.wait_for(state="visible", timeout=ms)
    wait_idle(page, timeout)
    time.sleep(settle)
    wait_idle(page, timeout)
    if expected is not None:
        expected.first.wait_for(state="visible", timeout=ms)
