"""Run work on untrusted files (slide decoding) in a child process with memory and time limits.

OpenSlide and libtiff are C libraries: a malformed file can crash them (SIGSEGV) or make them allocate
without bound. In a child process such a failure kills only that job; the caller gets a one-line
:class:`~mosare.errors.InputError` instead of losing the server.
"""

from __future__ import annotations

import functools
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mosare.errors import InputError, MosareError

GIB = 1 << 30


@dataclass(frozen=True)
class Limits:
    """memory_bytes: resident-memory ceiling of the child (also its address-space limit on CPU jobs);
    seconds: wall-clock limit."""

    memory_bytes: int = 8 * GIB
    seconds: float = 900.0
    address_space_limit: bool = True  # off for CUDA jobs: the CUDA runtime reserves huge virtual ranges


# Modules the fork server imports once, so that each job starts in milliseconds instead of re-importing torch.
PRELOAD = ("torch", "mosare.app.workbench", "mosare.slides.extract")


@functools.lru_cache(maxsize=1)
def _context() -> mp.context.BaseContext:
    """A fork server (Linux): a clean single-threaded process that imported PRELOAD and forks each job. Never
    fork this process itself (it may hold torch threads or CUDA state); spawn where there is no fork server."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(list(PRELOAD))
        return ctx
    return mp.get_context("spawn")


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _child(conn, fn: Callable[..., Any], args: tuple, kwargs: dict, limits: Limits) -> None:
    if limits.address_space_limit:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        except (ImportError, ValueError, OSError):
            pass

    def progress(*values: Any) -> None:
        conn.send(("progress", values))

    try:
        conn.send(("ok", fn(*args, progress=progress, **kwargs)))
    except MemoryError:
        conn.send(("error", f"ran out of memory (limit {limits.memory_bytes / GIB:.1f} GiB)"))
    except MosareError as err:
        conn.send(("error", str(err)))
    except Exception as err:  # noqa: BLE001 - reported to the parent as one line
        last = traceback.extract_tb(err.__traceback__)[-1:] or [None]
        where = f" in {os.path.basename(last[0].filename)}" if last[0] else ""
        conn.send(("error", f"{type(err).__name__}{where}: {str(err).splitlines()[0][:300] if str(err) else ''}"))
    finally:
        conn.close()


def run_isolated(fn: Callable[..., Any], *args: Any, what: str, limits: Limits = Limits(),
                 on_progress: Callable[..., None] | None = None, **kwargs: Any) -> Any:
    """``fn(*args, progress=callback, **kwargs)`` in a child process; returns its (picklable) result.

    ``fn`` must be importable (module level). ``callback(*values)`` calls in the child reach ``on_progress`` here.
    Raises :class:`InputError` "<what>: ..." when the child raises, crashes, exceeds its memory or time.
    """
    ctx = _context()
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, fn, args, kwargs, limits), daemon=True)
    proc.start()
    child.close()
    deadline = time.monotonic() + limits.seconds
    outcome: tuple[str, Any] | None = None
    try:
        while outcome is None:
            if time.monotonic() > deadline:
                raise InputError(f"{what}: stopped after {limits.seconds:.0f} s (time limit)")
            if _rss_bytes(proc.pid) > limits.memory_bytes:
                raise InputError(f"{what}: stopped at {limits.memory_bytes / GIB:.1f} GiB of memory (memory limit)")
            if parent.poll(0.1):
                try:
                    kind, payload = parent.recv()
                except (EOFError, OSError):
                    break
                if kind == "progress":
                    if on_progress is not None:
                        on_progress(*payload)
                else:
                    outcome = (kind, payload)
            elif not proc.is_alive() and not parent.poll(0):
                break
    finally:
        if proc.is_alive() and outcome is None:
            proc.kill()
        proc.join(timeout=10)
        parent.close()
    if outcome is None:
        code = proc.exitcode
        if code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
            raise InputError(f"{what}: the slide decoder crashed ({name}); the file is probably damaged")
        raise InputError(f"{what}: the decoder process ended unexpectedly (exit code {code})")
    kind, payload = outcome
    if kind == "error":
        raise InputError(payload if payload.startswith(what) else f"{what}: {payload}")
    return payload
