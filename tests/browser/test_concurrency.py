"""Ten browser sessions against one dashboard server and its one job queue: each gets its own answer.

One ``streamlit run`` server (the session's demo cache), one headless Chromium, ten pages in ten browser
contexts (ten Streamlit sessions, no shared cookies). The ten open the app together and each, once its Case
page is drawn, loads a different demo case (all ten; the loads go through the job queue as well). Then Run is
pressed in all ten pages back to back, without waiting in between, so that the ten inference jobs are queued
together in the server's single :class:`mosare.app.jobs.JobQueue` (16 slots: "the server is busy" is a failure
here). Each page must show its own case's prediction: the label and both probabilities to 3 decimals, as
computed in this process with the same model and inputs (no cross-talk between sessions). The server must
log no exception and still answer ``/_stcore/health``. The first session, once answered, switches to the
About page while the other runs are still queued: a page that needs no job is not held up by the queue.

On 2 cores this takes about two minutes, nearly all of it CPU: ten Chromium pages and the server; so it is
marked slow, and CI runs it after the default suite (`make test-slow`).
Memory over many session open/close cycles is measured by ``bench/sessions.py`` (a benchmark, not a test)."""

from __future__ import annotations

import contextlib
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.browser_helpers import CHROMIUM_ARGS, VIEWPORT, wait_for_app

# Slow: ~2 min on a quiet 2-core machine (4 min under load). CI runs it through `make test-slow`.
pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_SESSIONS = 10
FIRST_PAGE_S = 180.0  # ten first pages at once on 2 cores, the first of them loading the model
STEP_S = 120.0  # ten loads / ten runs at once, through one queue
BUSY = "the server is busy"


@dataclass(frozen=True)
class Expected:
    option: str  # the demo selectbox's label, e.g. "DEMO-0011 · Slide + RNA-seq + Report"
    patient_id: str
    label: str
    probs: dict[str, float]  # class -> probability
    observed: str  # the "Observed:" line's text

    def shown(self, cls: str) -> set[str]:
        """The text(s) the page may show for P(cls): the value rounded to 3 decimals (both neighbours when the
        value lies within 1e-5 of a rounding boundary, where float noise between processes could tip it)."""
        v = self.probs[cls]
        return {f"P({cls}) = {v - 1e-5:.3f}", f"P({cls}) = {v + 1e-5:.3f}"}


def expected_answers(cache: Path, scratch: Path) -> list[Expected]:
    """Every demo case's prediction with all its modalities, computed in this process as the Case page does
    (load_case, then analyse). The report embeddings get their own cache, so nothing is shared with the server."""
    from mosare.app.demo import MODEL_PATH, ensure_demo_cases
    from mosare.inference import Predictor
    from mosare.text.embed import ReportEmbedder
    from mosare.app.workbench import MODALITY_NAMES, analyse, load_case

    cases = ensure_demo_cases(cache)
    predictor = Predictor(MODEL_PATH, "cpu")
    embedder = ReportEmbedder(cache_dir=scratch) if any(c.report_text for c in cases) else None
    out = []
    for c in cases:
        lc = load_case(predictor, slide_path=c.slide_path, features_path=c.features_path, rna_path=c.rna_path,
                       report_text=c.report_text, embedder=embedder if c.report_text else None, cache_dir=cache)
        p = analyse(predictor, lc.case).prediction
        names = [MODALITY_NAMES[m] for m in c.modalities]
        out.append(Expected(option=f"{c.patient_id} · {' + '.join(names)}", patient_id=c.patient_id, label=p.label,
                            probs={str(k): float(v) for k, v in zip(p.classes, p.probs)},
                            observed=f"Observed: {', '.join(names)}"))
    return out


class _Background:
    """Runs a function on a thread (the expected answers, while the server starts and the pages load)."""

    def __init__(self, fn, *args):
        self._result = self._error = None
        self._thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self._thread.start()

    def _run(self, fn, *args):
        try:
            self._result = fn(*args)
        except BaseException as err:  # noqa: BLE001 - re-raised in result()
            self._error = err

    def result(self, timeout: float = 300.0):
        self._thread.join(timeout)
        if self._thread.is_alive():
            pytest.fail(f"computing the expected answers took over {timeout:.0f} s")
        if self._error is not None:
            raise self._error
        return self._result


def _fail_if_busy(pages, names) -> None:
    busy = [n for p, n in zip(pages, names) if p.get_by_text(BUSY).count()]
    if busy:
        pytest.fail(f"'{BUSY}' shown with only {N_SESSIONS} sessions (the queue holds 16): {busy}")


def _has_result(page) -> bool:
    return page.locator(".st-key-probabilities [data-testid='stProgress']").count() > 0


# Ten pages re-rendering at once on 2 cores: CSS animations and transitions (the running indicator, stale
# elements fading) cost the browser CPU that the server needs; they are switched off in these pages.
_NO_ANIMATIONS = """(() => {
  const add = () => {
    const s = document.createElement('style');
    s.textContent = '*, *::before, *::after { animation: none !important; transition: none !important; }';
    (document.head || document.documentElement).appendChild(s);
  };
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', add); else add();
})();"""


def _check_answer(page, e: Expected) -> None:
    """The page shows case ``e``: its heading, prediction, both probabilities and the modalities observed."""
    from playwright.sync_api import expect

    expect(page.get_by_role("heading", name=f"Demo case {e.patient_id}", exact=True)).to_be_visible()
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="Prediction")
    value = metric.locator('[data-testid="stMetricValue"]').inner_text().strip()
    bars = page.locator(".st-key-probabilities").locator('[data-testid="stProgress"]')
    shown = sorted(x.strip() for x in bars.all_inner_texts())
    observed = page.locator('[data-testid="stMarkdownContainer"]').filter(
        has_text=re.compile(r"^\s*Observed:")).first.inner_text().strip()
    want = sorted(" or ".join(sorted(e.shown(c))) for c in e.probs)
    assert value == e.label, f"{e.patient_id}: prediction {value!r}, expected {e.label!r}"
    assert len(shown) == len(e.probs), f"{e.patient_id}: bars {shown}"
    for cls in e.probs:
        hits = [s for s in shown if s.startswith(f"P({cls}) =")]
        assert len(hits) == 1 and hits[0] in e.shown(cls), f"{e.patient_id}: shows {shown}, expected {want}"
    assert observed == e.observed, f"{e.patient_id}: {observed!r}, expected {e.observed!r}"


def _open_and_load(page, option: str) -> None:
    """Once the page's Case page is drawn: pick the demo case ``option`` and press Load (not waiting for it)."""
    from playwright.sync_api import expect

    load = page.get_by_role("button", name="Load demo case", exact=True)
    wait_for_app(page, load, timeout=FIRST_PAGE_S, settle=0.1)
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Synthetic demo case")
    box.click()
    page.get_by_role("option", name=option, exact=True).click()
    expect(box.get_by_role("combobox")).to_have_value(option)
    wait_for_app(page, settle=0.1)  # the selection's rerun, before the click that loads it
    load.click()


def test_ten_sessions_one_queue_each_gets_its_own_answer(chromium: str, start_streamlit, demo_cache: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    from mosare.app.demo import ensure_demo_cases
    from mosare.app.workbench import MODALITY_NAMES

    t0 = time.monotonic()
    timings: dict[str, float] = {}
    cases = ensure_demo_cases(demo_cache)
    assert len(cases) == N_SESSIONS, [c.patient_id for c in cases]
    options = [f"{c.patient_id} · {' + '.join(MODALITY_NAMES[m] for m in c.modalities)}" for c in cases]
    names = [c.patient_id for c in cases]
    expected_job = _Background(expected_answers, demo_cache, tmp_path / "expected-embeddings")
    server = start_streamlit(demo_cache, default_model="synthetic")  # the synthetic demo's ten cases
    pages = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            contexts = [browser.new_context(viewport=VIEWPORT) for _ in range(N_SESSIONS)]
            for context in contexts:
                context.add_init_script(_NO_ANIMATIONS)
            pages = [c.new_page() for c in contexts]
            for page in pages:
                page.set_default_timeout(STEP_S * 1000)

            # 1. Ten sessions open the app at once; each, as soon as it is drawn, loads a different demo case
            # (all ten; the loads go through the job queue too, overlapping with the other pages opening).
            t = time.monotonic()
            for page in pages:
                page.goto(server.url, wait_until="commit")
            for page, option in zip(pages, options):
                _open_and_load(page, option)
            for page, name in zip(pages, names):
                wait_for_app(page, page.get_by_role("button", name="Run", exact=True), timeout=STEP_S, settle=0.1)
                expect(page.get_by_role("heading", name=f"Demo case {name}", exact=True)).to_be_visible()
            _fail_if_busy(pages, names)
            timings["open + load"] = time.monotonic() - t

            # 2. Run in all ten sessions back to back (a click event each, no waiting in between).
            runs = [page.get_by_role("button", name="Run", exact=True) for page in pages]
            for run in runs:
                expect(run).to_be_enabled()
            t = time.monotonic()
            for run in runs:
                run.dispatch_event("click")
            clicked = time.monotonic() - t
            not_done = sum(not _has_result(page) for page in pages)
            assert not_done >= 2, f"only {not_done} run(s) outstanding after the clicks: the jobs did not overlap"

            # 3. Each page shows its own case's answer. The first, once answered, switches to the About page
            # (no job needed) while the other sessions' runs are still queued: it must not wait for them.
            expected = {e.option: e for e in expected_job.result()}
            assert sorted(expected) == sorted(options)
            rounded = {tuple(sorted(min(e.shown(c)) for c in e.probs)) for e in expected.values()}
            assert len(rounded) == N_SESSIONS, "two demo cases share their probabilities: cross-talk would not show"
            for i, (page, option) in enumerate(zip(pages, options)):
                wait_for_app(page, page.locator(".st-key-probabilities").get_by_text("P(B) ="), timeout=STEP_S,
                             settle=0.1)
                _check_answer(page, expected[option])
                if i == 0:
                    t_about = time.monotonic()
                    page.locator('[data-testid="stSidebarNav"]').get_by_role(
                        "link", name="About / model card", exact=True).click()
                    wait_for_app(page, page.get_by_role("heading", name="About / model card"), timeout=STEP_S,
                                 settle=0.1)
                    about_s = time.monotonic() - t_about
                    left_at_about = sum(not _has_result(q) for q in pages[1:])
            timings["run"] = time.monotonic() - t
            _fail_if_busy(pages, names)
            log = server.log_path.read_text(encoding="utf-8", errors="replace")
            assert "Traceback" not in log, f"the server logged an exception\n{server.tail()}"
        except BaseException:
            for page, name in zip(pages, names):
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(tmp_path / f"failure-{name}.png"), full_page=True)
            print(f"screenshots of the failure: {tmp_path}/failure-*.png")
            print(server.tail())
            raise
        finally:
            browser.close()

    # 4. The server stayed up and healthy.
    assert server.proc.poll() is None, f"streamlit exited with {server.proc.returncode}\n{server.tail()}"
    assert server.healthy(timeout_s=10), "the server no longer answers /_stcore/health"

    print(f"{N_SESSIONS} sessions (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
          + f"; Run clicked in all {N_SESSIONS} within {clicked:.2f} s, {not_done} without a result just after; "
          f"About page rendered in {about_s:.1f} s in the first session with {left_at_about} other runs still "
          f"unanswered; total {time.monotonic() - t0:.1f} s")
