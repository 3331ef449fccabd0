"""Run a job through the shared queue while this page shows its progress (polled: no Streamlit calls
happen on the queue's thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st

from dashboard import resources

T = TypeVar("T")


def run_queued(fn: Callable[..., T], *args: Any, label: str, unit: str = "tiles", **kwargs: Any) -> T:
    """``fn(*args, on_progress=callback, **kwargs)`` on the shared queue; a progress bar follows the callback's
    (done, total, rate in ``unit`` per second) and shows the place in the queue while waiting."""
    queue = resources.job_queue()
    latest: dict[str, Any] = {}
    lock = threading.Lock()

    def on_progress(done: int, total: int, rate: float) -> None:
        with lock:
            latest.update(done=done, total=total, rate=rate)

    ahead = queue.pending
    future = queue.submit(fn, *args, on_progress=on_progress, **kwargs)
    bar = st.progress(0.0, text=f"waiting for {ahead} job(s) ahead of this one" if ahead else label)
    while not future.done():
        with lock:
            snap = dict(latest)
        if snap:
            rate = f"{snap['rate']:.0f}" if snap["rate"] >= 10 else f"{snap['rate']:.1f}"
            bar.progress(snap["done"] / max(1, snap["total"]),
                         text=f"{label}: {snap['done']}/{snap['total']} {unit} · {rate} {unit}/s")
        time.sleep(0.1)
    bar.empty()
    return future.result()
