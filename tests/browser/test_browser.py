"""The dashboard in a real browser: `streamlit run` as a subprocess, driven by headless Chromium (playwright).

What AppTest (tests/dashboard/test_dashboard.py) cannot see: the page as a user gets it, i.e. the front end rendering the
prediction metric and probability bars, the plotly heatmap actually painting its image, and the report's
highlighted sentences. Two flows: the default real demo (a held-out TCGA-BRCA patient: Case -> RNA -> Report ->
Slide "missing" -> Cohort) and the synthetic three-modality demo (Load demo case -> Run -> Slide heatmap -> Report),
with screenshots.

Screenshots go to the test's ``tmp_path`` and, when ``$MOSARE_SCREENSHOT_DIR`` is set, are copied there too
(CI artefacts, README images). Without Chromium (or the playwright package) the test is skipped on a developer
machine and fails on CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser_helpers import CHROMIUM_ARGS, HEATMAP_PAINTED_JS, REPO_ROOT, VIEWPORT, StreamlitServer, wait_for_app

pytestmark = pytest.mark.browser

FIRST_PAGE_S = 120.0  # first page on a fresh cache: includes materialising the demo cases (~20 s on 2 cores)
STEP_S = 60.0  # any other step (load, run, page switch)


@pytest.fixture
def streamlit_server(chromium, start_streamlit, demo_cache) -> StreamlitServer:
    """A dashboard server on a free port with the session's demo cache (the cold first launch is timed by
    bench/dashboard.py); stopped after the test, whatever it did.
    (Asks for ``chromium`` first, so a machine without a browser skips before starting a server.)"""
    return start_streamlit(demo_cache)


# ----------------------------------------------------------------------------------------------- the browser


def _shoot(page, name: str, out_dir: Path, copies: list[Path]) -> Path:
    path = out_dir / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    copies.append(path)
    return path


@contextlib.contextmanager
def _explain_failure(server: StreamlitServer, page, out_dir: Path) -> Iterator[None]:
    """On any failure: a screenshot of the page as it was, and the server log's tail in the test output."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(out_dir / "failure.png"), full_page=True)
            print(f"screenshot of the failure: {out_dir / 'failure.png'}")
        print(server.tail())
        raise


@contextlib.contextmanager
def _browser_page(chromium: str, server: StreamlitServer, shots_dir: Path) -> Iterator:
    """A headless Chromium page (failures explained with a screenshot and the server log); closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(STEP_S * 1000)
            with _explain_failure(server, page, shots_dir):
                yield page
        finally:
            browser.close()


def _nav(page, name: str) -> None:
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=name, exact=True).click()


def _copy_shots(shots: list[Path]) -> None:
    target = os.environ.get("MOSARE_SCREENSHOT_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in shots:
            shutil.copy2(shot, Path(target) / shot.name)


@pytest.mark.slow  # ~26 s: `make test` stayed near its 5-minute limit on a slow day; CI runs the browser flows in the slow tier
def test_real_brca_case_in_a_real_browser(chromium: str, streamlit_server: StreamlitServer, tmp_path: Path):
    """The app's default demo: a held-out TCGA-BRCA patient (RNA + report, no slide) through every page."""
    from playwright.sync_api import expect

    genes = json.loads((REPO_ROOT / "assets/demo-brca/model/mosare.json").read_text(encoding="utf-8"))["genes"]
    shots_dir = tmp_path / "screenshots"
    shots_dir.mkdir()
    shots: list[Path] = []
    with _browser_page(chromium, streamlit_server, shots_dir) as page:
        page.goto(streamlit_server.url, wait_until="domcontentloaded")
        load = page.get_by_role("button", name="Load patient", exact=True)
        wait_for_app(page, load, timeout=FIRST_PAGE_S)
        load.click()
        run = page.get_by_role("button", name="Run", exact=True)
        wait_for_app(page, run)
        for label in ("RNA-seq", "Report"):
            expect(page.get_by_role("checkbox", name=label)).to_be_checked()
        expect(page.get_by_role("checkbox", name="Slide")).to_be_disabled()
        run.click()
        probabilities = page.locator(".st-key-probabilities")
        wait_for_app(page, probabilities.get_by_text("P(ILC) ="))
        metric = page.locator('[data-testid="stMetric"]').filter(has_text="Prediction")
        assert metric.locator('[data-testid="stMetricValue"]').inner_text().strip() in ("IDC", "ILC")
        expect(page.get_by_text("Prediction set (90% coverage)")).to_be_visible()
        expect(page.get_by_text("held out from training").first).to_be_visible()
        _shoot(page, "dashboard-case", shots_dir, shots)

        _nav(page, "RNA")
        chart = page.locator('[data-testid="stPlotlyChart"]')
        wait_for_app(page, chart)
        shown = " ".join(chart.all_inner_texts())
        assert any(g in shown.split() for g in genes), "no real gene symbol drawn on the RNA page"
        _shoot(page, "dashboard-rna", shots_dir, shots)

        _nav(page, "Report")
        top = page.locator(".mosare-report .mosare-top")
        wait_for_app(page, top)
        assert top.count() >= 1
        expect(top.first).to_be_visible()
        assert len(top.first.inner_text().split()) >= 3  # a real sentence, not a token
        _shoot(page, "dashboard-report", shots_dir, shots)

        _nav(page, "Slide")
        missing = page.get_by_text("Slide missing")
        wait_for_app(page, missing)
        expect(missing).to_be_visible()

        _nav(page, "Cohort")
        charts = page.locator('[data-testid="stPlotlyChart"]')
        wait_for_app(page, charts)
        assert charts.count() >= 1
        expect(charts.first.locator("svg.main-svg").first).to_be_visible()
        _shoot(page, "dashboard-cohort", shots_dir, shots)
        assert page.locator('[data-testid="stException"]').count() == 0
    _copy_shots(shots)
    print(f"screenshots: {shots_dir}")


@pytest.mark.slow  # ~21 s; CI runs it in the slow tier
def test_synthetic_demo_case_in_a_real_browser(chromium: str, streamlit_server: StreamlitServer, tmp_path: Path):
    from playwright.sync_api import expect

    shots_dir = tmp_path / "screenshots"
    shots_dir.mkdir()
    shots: list[Path] = []
    timings: dict[str, float] = {}
    with _browser_page(chromium, streamlit_server, shots_dir) as page:
        t = time.monotonic()
        page.goto(streamlit_server.url, wait_until="domcontentloaded")
        wait_for_app(page, page.get_by_role("button", name="Load patient", exact=True), timeout=FIRST_PAGE_S)
        page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.click()
        page.get_by_role("option", name="Demo: MoSARe on the synthetic cohort (with slides)").click()
        load = page.get_by_role("button", name="Load demo case", exact=True)
        wait_for_app(page, load, timeout=FIRST_PAGE_S)  # the first page loads the model
        timings["first page"] = time.monotonic() - t

        t = time.monotonic()
        load.click()
        run = page.get_by_role("button", name="Run", exact=True)
        wait_for_app(page, run)
        for label in ("Slide", "RNA-seq", "Report"):
            expect(page.get_by_role("checkbox", name=label)).to_be_checked()
        timings["load case"] = time.monotonic() - t

        t = time.monotonic()
        run.click()
        probabilities = page.locator(".st-key-probabilities")
        wait_for_app(page, probabilities.get_by_text("P(B) ="))
        timings["run"] = time.monotonic() - t
        metric = page.locator('[data-testid="stMetric"]').filter(has_text="Prediction")
        expect(metric).to_be_visible()
        assert metric.locator('[data-testid="stMetricValue"]').inner_text().strip() in ("A", "B")
        expect(page.get_by_text("Probability of")).to_be_visible()
        bars = probabilities.locator('[data-testid="stProgress"]')
        expect(bars).to_have_count(2)
        values = {}
        for cls in ("A", "B"):
            label = probabilities.get_by_text(f"P({cls}) =")
            expect(label).to_be_visible()
            text = label.inner_text().strip()
            assert text.startswith(f"P({cls}) = 0.") or text == f"P({cls}) = 1.000", text
            values[cls] = float(text.split("=")[-1])
        assert abs(sum(values.values()) - 1.0) < 3e-3, values
        for bar in bars.all():
            box = bar.bounding_box()
            assert box is not None and box["width"] > 50 and box["height"] > 0
        _shoot(page, "dashboard-synthetic-case", shots_dir, shots)

        t = time.monotonic()
        page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Slide", exact=True).click()
        chart = page.locator('[data-testid="stPlotlyChart"]')
        wait_for_app(page, chart)
        page.wait_for_function(HEATMAP_PAINTED_JS, timeout=STEP_S * 1000, polling=100)
        wait_for_app(page, chart)
        timings["slide page"] = time.monotonic() - t
        image = chart.locator("svg.main-svg image").first
        box = image.bounding_box()
        assert box is not None and box["width"] > 100 and box["height"] > 100, box
        assert page.locator('[data-testid="stImage"] img').count() >= 3  # colour bar + tile galleries
        _shoot(page, "dashboard-slide", shots_dir, shots)

        t = time.monotonic()
        page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Report", exact=True).click()
        top = page.locator(".mosare-report .mosare-top")
        wait_for_app(page, top)
        timings["report page"] = time.monotonic() - t
        expect(top).to_have_count(3)
        for span in top.all():
            expect(span).to_be_visible()
            colour = span.evaluate("e => getComputedStyle(e).backgroundColor")
            assert colour not in ("transparent", "rgba(0, 0, 0, 0)"), colour
            assert not colour.startswith("rgba(") or float(colour.rstrip(")").split(",")[-1]) > 0.1, colour
        _shoot(page, "dashboard-synthetic-report", shots_dir, shots)
    _copy_shots(shots)
    print("browser flow (s): " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()))
    print(f"screenshots: {shots_dir}")
