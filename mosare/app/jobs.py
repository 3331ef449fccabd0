"""One job at a time on the accelerator, through a bounded queue shared by every session of a server.

A dashboard on a shared GPU server must not run two models at once (GPU memory) nor let a burst of requests
pile up without bound. :class:`JobQueue` runs jobs on one worker thread in arrival order, refuses new ones
when ``max_pending`` are waiting, and turns CUDA out-of-memory into a one-line error after freeing the memory,
so that the next job starts clean.

:func:`make_job_queue` picks the queue: this one, or with ``MOSARE_RAY_ADDRESS`` set the same interface served by
actors on a Ray cluster (:mod:`mosare.app.ray_jobs`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import torch

from mosare.errors import MosareError

T = TypeVar("T")


class BusyError(MosareError):
    """The queue is full: the caller should try again shortly."""


class GpuMemoryError(MosareError):
    """A job ran out of accelerator memory; the memory was freed."""


OOM_MESSAGE = ("out of GPU memory for this job: it was stopped and the memory freed; try a smaller input or switch "
               "to the CPU")


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA out-of-memory, as PyTorch raises it (its own class, or a RuntimeError from older code paths)."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower())


def free_accelerator_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class BoundedQueue:
    """The promise every job queue keeps: at most ``max_pending`` jobs queued or running, :class:`BusyError` at once
    beyond that. A subclass calls :meth:`_take` before queueing a job and :meth:`_release` when it is done."""

    def __init__(self, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError("max_pending must be at least 1")
        self.max_pending = max_pending
        self._slots = threading.BoundedSemaphore(max_pending)
        self._lock = threading.Lock()
        self._pending = 0
        self.completed = 0

    @property
    def pending(self) -> int:
        """Jobs queued or running now."""
        with self._lock:
            return self._pending

    def _take(self) -> None:
        if not self._slots.acquire(blocking=False):
            raise BusyError(f"the server is busy ({self.max_pending} jobs waiting); try again in a moment")
        with self._lock:
            self._pending += 1

    def _release(self, _: Future | None = None) -> None:
        with self._lock:
            self._pending -= 1
            self.completed += 1
        self._slots.release()

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        raise NotImplementedError

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Queue and wait for the result (exceptions are re-raised here)."""
        return self.submit(fn, *args, **kwargs).result()


class JobQueue(BoundedQueue):
    """Run callables one at a time, in order; at most ``max_pending`` queued or running."""

    def __init__(self, max_pending: int = 16, name: str = "mosare-jobs") -> None:
        super().__init__(max_pending)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)``. Raises :class:`BusyError` at once when the queue is full."""
        self._take()
        try:
            future = self._pool.submit(self._run, fn, args, kwargs)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return future

    @staticmethod
    def _run(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            # out of memory: leave the except block first, its traceback keeps the job's tensors alive
        free_accelerator_memory()
        raise GpuMemoryError(OOM_MESSAGE)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def make_job_queue(max_pending: int = 16, ray_address: str | None = None):
    """The dashboard's queue: a :class:`JobQueue` on this machine, or with ``ray_address`` (default
    ``$MOSARE_RAY_ADDRESS``) a :class:`mosare.app.ray_jobs.RayJobQueue` (same interface) on that Ray cluster."""
    address = ray_address if ray_address is not None else os.environ.get("MOSARE_RAY_ADDRESS", "").strip()
    if not address:
        return JobQueue(max_pending=max_pending)
    try:
        from mosare.app.ray_jobs import RayJobQueue
    except ImportError as err:
        if err.name != "ray":
            raise
        raise MosareError("MOSARE_RAY_ADDRESS is set but the ray package is not installed: pip install "
                          "'ray==2.60.0' (or unset the variable to run jobs on this machine)") from None
    return RayJobQueue(address, max_pending=max_pending)
