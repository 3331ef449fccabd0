"""Module-level jobs for tests/app/test_sandbox.py (a spawned child must be able to import them)."""

from __future__ import annotations

import os
import signal
import time


def crash(*, progress) -> None:
    progress(1, 2)
    os.kill(os.getpid(), signal.SIGSEGV)


def hog(n_gib: float, *, progress) -> int:
    blocks = []
    for _ in range(int(n_gib * 16)):
        blocks.append(bytearray(64 << 20))  # touched: resident
    return len(blocks)


def sleep(seconds: float, *, progress) -> None:
    time.sleep(seconds)


def add(a: int, b: int, *, progress) -> int:
    progress(a, b)
    return a + b


def fail(*, progress) -> None:
    raise ValueError("bad header\nsecond line")
