"""Server memory over many browser sessions: does the dashboard give back what a closed session held?

usage: python bench/sessions.py [--cycles 200] [--run-every 10] [--slide] [--warmup 20] [--every 20]
                                [--cache DIR] [--session-ttl 120] [--settle 5] [--no-expire]

One ``streamlit run`` server (``make demo``'s options, the demo cases materialised before it starts so that
building them is not in the figures) and one headless Chromium. Each cycle opens a new browser context (a new
Streamlit session), loads the app, waits until the Case page is drawn ("Load demo case" visible, app idle)
and closes the context; every ``--run-every``-th cycle (the first included) also picks a demo case (in
turn), loads it and presses Run, waiting for the probabilities; with ``--slide`` it then also opens the
Slide page (heatmap and tile images: media files the server keeps per session).

Memory is the resident set (VmRSS from /proc) of the server's process tree: the streamlit process and every
descendant. It is read after ``--warmup`` cycles (the reference), every ``--every`` cycles, once more
``--settle`` seconds after the last cycle, and, unless ``--no-expire``, after the disconnected sessions have
expired: Streamlit keeps a closed tab's session in memory for ``server.disconnectedSessionTTL`` seconds (up
to 128 of them) in case the tab reconnects, and drops the expired ones when the next session disconnects, so
the bench waits out the TTL and opens and closes one more session. Printed: the series (MiB), growth from the
reference in % against the 10 % target, the least-squares trend of the readings per 100 cycles (RSS swings by
tens of MiB as the allocator takes and gives back memory, so one reading is a noisy reference), cycles per
second, CPU count and load average. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Run as `python bench/sessions.py`, so sys.path[0] is bench/: put the repository root first on the path so that
# the server and browser helpers shared with the browser tests import as tests.browser_helpers.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.browser_helpers import CHROMIUM_ARGS, VIEWPORT, BrowserMissing, ServerError, StreamlitServer, find_chromium, wait_idle  # noqa: E402

TARGET_PCT = 10.0
MIB = 1024 * 1024


# ----------------------------------------------------------------------------------------------- memory


def _status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of /proc/<pid>/status (0 when the process is gone or the field absent)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError, ValueError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def tree_memory(pid: int) -> tuple[float, float, int]:
    """(VmRSS of the tree, RssAnon of the tree, both MiB; number of processes)."""
    pids = descendants(pid)
    rss = sum(_status_kib(p, "VmRSS") for p in pids)
    anon = sum(_status_kib(p, "RssAnon") for p in pids)
    return rss / 1024, anon / 1024, len(pids)


# ----------------------------------------------------------------------------------------------- the sessions


def open_case_page(context, url: str, timeout_s: float):
    """A new page of ``context`` on the app, returned once the Case page is drawn and the app idle."""
    page = context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    page.goto(url, wait_until="domcontentloaded")
    page.get_by_role("button", name="Load demo case", exact=True).wait_for(state="visible")
    wait_idle(page, timeout_s)
    return page


def load_and_run(page, option: str, timeout_s: float) -> str:
    """Pick the demo case ``option``, load it, press Run; returns the probabilities' text."""
    box = page.locator('[data-testid="stSelectbox"]').filter(has_text="Synthetic demo case")
    if box.get_by_role("combobox").input_value() != option:
        box.click()
        page.get_by_role("option", name=option, exact=True).click()
        wait_idle(page, timeout_s)
    page.get_by_role("button", name="Load demo case", exact=True).click()
    page.get_by_role("button", name="Run", exact=True).wait_for(state="visible")
    wait_idle(page, timeout_s)
    page.get_by_role("button", name="Run", exact=True).click()
    probs = page.locator(".st-key-probabilities")
    probs.get_by_text("P(B) =").wait_for(state="visible")
    wait_idle(page, timeout_s)
    if page.get_by_text("the server is busy").count():
        return "BUSY"
    return " ".join(probs.inner_text().split())


def open_slide_page(page, timeout_s: float) -> None:
    """Sidebar -> Slide, until the heatmap and the tile images are drawn and the app idle."""
    page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name="Slide", exact=True).click()
    page.locator('[data-testid="stPlotlyChart"]').wait_for(state="visible")
    page.locator('[data-testid="stImage"] img').first.wait_for(state="visible")
    wait_idle(page, timeout_s)


def one_session(browser, url: str, option: str | None, slide: bool, timeout_s: float) -> str | None:
    """One session opened and closed; with ``option``, that demo case loaded and run (returns its probabilities)."""
    context = browser.new_context(viewport=VIEWPORT)
    try:
        page = open_case_page(context, url, timeout_s)
        if not option:
            return None
        shown = load_and_run(page, option, timeout_s)
        if slide:
            open_slide_page(page, timeout_s)
        return shown
    finally:
        context.close()


# ----------------------------------------------------------------------------------------------- main


def fmt_load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cycles", type=int, default=200, help="session open/close cycles")
    ap.add_argument("--run-every", type=int, default=10,
                    help="every k-th cycle (the first included) also loads a demo case and presses Run; 0: never")
    ap.add_argument("--slide", action="store_true", help="the load + Run cycles also open the Slide page")
    ap.add_argument("--warmup", type=int, default=20, help="cycles before the reference memory reading")
    ap.add_argument("--every", type=int, default=20, help="read the memory every this many cycles")
    ap.add_argument("--cache", type=Path, default=None, help="MOSARE_CACHE for the server (default: a fresh "
                    "temporary folder; the demo cases are materialised in it before the server starts)")
    ap.add_argument("--session-ttl", type=int, default=120, help="the server's server.disconnectedSessionTTL, "
                    "seconds (Streamlit's default: 120)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds to wait after the last cycle before reading")
    ap.add_argument("--no-expire", action="store_true", help="do not wait out the TTL for the final reading")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds allowed for any one step in the browser")
    args = ap.parse_args()

    try:
        chromium = find_chromium()
    except BrowserMissing as err:
        sys.exit(f"bench/sessions.py: needs a browser: {err}")
    from playwright.sync_api import sync_playwright

    from mosare.app.demo import ensure_demo_cases
    from mosare.app.workbench import MODALITY_NAMES

    print(f"machine: {os.cpu_count()} CPU cores; load average {fmt_load()}")
    print(f"plan: {args.cycles} cycles (new browser context -> Case page drawn -> close), load + Run on every "
          f"{args.run_every}-th{' (then the Slide page)' if args.slide else ''}; reference after {args.warmup} "
          f"cycles; server.disconnectedSessionTTL "
          f"{args.session_ttl} s; target: growth <= {TARGET_PCT:.0f} %")

    with tempfile.TemporaryDirectory(prefix="mosare-sessions-") as tmp:
        tmp = Path(tmp)
        cache = (args.cache or tmp / "cache").expanduser().resolve()
        t = time.perf_counter()
        cases = ensure_demo_cases(cache)
        options = [f"{c.patient_id} · {' + '.join(MODALITY_NAMES[m] for m in c.modalities)}" for c in cases]
        print(f"demo cases ready in {cache} ({len(cases)} cases, {time.perf_counter() - t:.1f} s; not measured)")

        server = StreamlitServer(tmp / "streamlit.log", cache, default_model="synthetic", session_ttl=args.session_ttl)
        series: list[tuple[str, float, float, int]] = []
        busy = failed = runs = 0
        answers: dict[str, set[str]] = {}
        try:
            try:
                server.wait_healthy(120.0)
            except ServerError as err:
                sys.exit(f"bench/sessions.py: {err}")
            start_rss = tree_memory(server.proc.pid)
            print(f"server started: tree RSS {start_rss[0]:.0f} MiB (anonymous {start_rss[1]:.0f} MiB, "
                  f"{start_rss[2]} process(es)) before any session")
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
                try:
                    t_loop = time.perf_counter()
                    reading_s = 0.0  # time spent reading memory, left out of the rates
                    t_ref = None  # (loop seconds, cycles) at the reference reading
                    for i in range(args.cycles):
                        n = i + 1
                        option = None
                        if args.run_every and i % args.run_every == 0:
                            option = options[(i // args.run_every) % len(options)]
                        try:
                            shown = one_session(browser, server.url, option, args.slide, args.timeout)
                        except Exception as err:  # noqa: BLE001 - counted and reported, the bench goes on
                            failed += 1
                            print(f"  cycle {n}: failed: {type(err).__name__}: {str(err).splitlines()[0][:200]}")
                        else:
                            if option:
                                runs += 1
                                busy += shown == "BUSY"
                                answers.setdefault(option, set()).add(shown)
                        if n == args.warmup or (n > args.warmup and n % args.every == 0) or n == args.cycles:
                            t_read = time.perf_counter()
                            looped = t_read - t_loop - reading_s
                            t_ref = t_ref or (looped, n)
                            rss, anon, nproc = tree_memory(server.proc.pid)
                            series.append((f"after {n} cycles", rss, anon, nproc))
                            print(f"  {series[-1][0]:<28} tree RSS {rss:7.1f} MiB  anonymous {anon:7.1f} MiB  "
                                  f"({nproc} proc; {looped / n:.2f} s/cycle so far; load {fmt_load()})", flush=True)
                            reading_s += time.perf_counter() - t_read
                    loop_s = time.perf_counter() - t_loop - reading_s

                    time.sleep(args.settle)
                    rss, anon, nproc = tree_memory(server.proc.pid)
                    series.append((f"{args.settle:.0f} s after the last cycle", rss, anon, nproc))
                    print(f"  {series[-1][0]:<28} tree RSS {rss:7.1f} MiB  anonymous {anon:7.1f} MiB  ({nproc} proc)")
                    if not args.no_expire:
                        wait = args.session_ttl + 5 - args.settle
                        print(f"  waiting {wait:.0f} s for the disconnected sessions to expire (TTL "
                              f"{args.session_ttl} s), then one more session to drop them", flush=True)
                        time.sleep(max(0.0, wait))
                        with contextlib.suppress(Exception):
                            one_session(browser, server.url, None, False, args.timeout)
                        time.sleep(args.settle)
                        rss, anon, nproc = tree_memory(server.proc.pid)
                        series.append(("sessions expired", rss, anon, nproc))
                        print(f"  {series[-1][0]:<28} tree RSS {rss:7.1f} MiB  anonymous {anon:7.1f} MiB  "
                              f"({nproc} proc)")
                finally:
                    browser.close()
            healthy = server.healthy()
        finally:
            server.stop()

    if not series:
        sys.exit("bench/sessions.py: no memory reading (fewer cycles than --warmup?)")
    ref_name, ref, ref_anon, _ = series[0]
    print(f"\nseries (tree RSS, MiB): {', '.join(f'{r:.0f}' for _, r, _, _ in series)}")
    print(f"reference ({ref_name}): {ref:.1f} MiB RSS, {ref_anon:.1f} MiB anonymous")
    cyc = [(int(name.split()[1]), r) for name, r, _, _ in series if name.startswith("after ")]
    if len(cyc) > 2:  # least-squares slope over the in-run readings: less sensitive to where the reference fell
        mx, my = sum(c for c, _ in cyc) / len(cyc), sum(r for _, r in cyc) / len(cyc)
        slope = sum((c - mx) * (r - my) for c, r in cyc) / sum((c - mx) ** 2 for c, _ in cyc)
        print(f"trend over the readings after {cyc[0][0]}..{cyc[-1][0]} cycles: {100 * slope:+.1f} MiB per 100 cycles "
              f"({100 * 100 * slope / ref:+.1f} % of the reference); readings span {min(r for _, r in cyc):.0f}.."
              f"{max(r for _, r in cyc):.0f} MiB")
    peak = max(series[1:] or series, key=lambda s: s[1])
    print(f"peak after the reference: {peak[1]:.1f} MiB ({peak[0]}), {100 * (peak[1] / ref - 1):+.1f} %")
    for name, rss, anon, _ in series[-2:] if len(series) > 2 else series[-1:]:
        pct = 100 * (rss / ref - 1)
        print(f"growth to '{name}': {rss - ref:+.1f} MiB = {pct:+.1f} % of the reference "
              f"({'within' if pct <= TARGET_PCT else 'OVER'} the {TARGET_PCT:.0f} % target); "
              f"anonymous {anon - ref_anon:+.1f} MiB = {100 * (anon / ref_anon - 1):+.1f} %")
    done = args.cycles - failed
    print(f"cycles: {done} completed, {failed} failed, in {loop_s:.1f} s = {done / loop_s:.2f} cycles/s "
          f"({loop_s / max(1, done):.2f} s/cycle; {runs} with load + Run, {busy} answered 'server busy')")
    if t_ref is not None and args.cycles > t_ref[1]:
        rest = loop_s - t_ref[0]
        print(f"after the warm-up ({args.cycles - t_ref[1]} cycles): {(args.cycles - t_ref[1]) / rest:.2f} cycles/s "
              f"({rest / (args.cycles - t_ref[1]):.2f} s/cycle)")
    diverged = {o: s for o, s in answers.items() if len(s) > 1}
    print(f"answers: {len(answers)} demo cases run, each always shown the same probabilities: "
          f"{'yes' if not diverged else 'NO ' + str(diverged)}")
    print(f"server healthy at the end: {'yes' if healthy else 'NO'}; load average {fmt_load()}; "
          f"{os.cpu_count()} CPU cores")


if __name__ == "__main__":
    main()
