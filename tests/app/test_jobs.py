"""The shared job queue: one job at a time, bounded, out-of-memory freed and reported, next job fine."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from mosare.app.jobs import BusyError, GpuMemoryError, JobQueue


def test_one_job_at_a_time_in_order():
    q = JobQueue(max_pending=8)
    running, peak, order = [0], [0], []
    lock = threading.Lock()

    def job(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        order.append(i)
        with lock:
            running[0] -= 1
        return i * i

    futures = [q.submit(job, i) for i in range(8)]
    assert [f.result() for f in futures] == [i * i for i in range(8)]
    assert peak[0] == 1 and order == list(range(8)) and q.pending == 0


def test_bounded_backlog_refuses_with_a_message():
    q = JobQueue(max_pending=2)
    gate = threading.Event()
    a, b = q.submit(gate.wait), q.submit(lambda: 1)
    with pytest.raises(BusyError, match="busy"):
        q.submit(lambda: 2)
    gate.set()
    a.result(), b.result()
    assert q.submit(lambda: 3).result() == 3  # room again


def test_out_of_memory_frees_and_the_next_job_succeeds(monkeypatch):
    freed = []
    monkeypatch.setattr("mosare.app.jobs.free_accelerator_memory", lambda: freed.append(True))
    q = JobQueue()
    held = []

    def greedy():
        held.append(torch.zeros(1000))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    with pytest.raises(GpuMemoryError, match="memory freed"):
        q.run(greedy)
    assert freed == [True]
    assert q.run(lambda: "ok") == "ok" and q.pending == 0


def test_other_exceptions_pass_through_and_free_the_slot():
    q = JobQueue(max_pending=1)
    with pytest.raises(ValueError):
        q.run(lambda: (_ for _ in ()).throw(ValueError("bad")))
    assert q.run(lambda: 5) == 5
