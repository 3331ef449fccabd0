"""A real CUDA out-of-memory through the shared job queue (:class:`mosare.app.jobs.JobQueue`), then a normal job.

usage: python bench/gpu_oom.py [--chunk-gib 4] [--dry-run]

On a CUDA machine, through one queue, in order:

1. a job that asks for one tensor larger than the whole card;
2. a job that fills the card in ``--chunk-gib`` pieces until the allocator refuses (plain ``cudaMalloc`` through
   PyTorch's allocator, never managed memory);
3. a normal job (a bf16 matrix product).

Checked and printed: each out-of-memory job ends in :class:`mosare.app.jobs.GpuMemoryError` with a one-line
message, the memory it held is given back (PyTorch's allocated and reserved bytes back to where they were
before, the driver's free memory back within 1 GiB), the queue is empty again, and the normal job succeeds.
Exit code 0 when every check holds, 1 otherwise.

``--dry-run`` (no GPU needed): the out-of-memory is simulated (CPU tensors, then ``torch.cuda.OutOfMemoryError``
raised by hand) to check the script and the queue's handling, not the device.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from mosare.app.jobs import GpuMemoryError, JobQueue

GIB = 2**30


class Checks:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAILED'}] {what}")
        if not ok:
            self.failed.append(what)


def expect_oom(q: JobQueue, check: Checks, job, label: str) -> float:
    """Run ``job`` through ``q``; check it ends in a one-line GpuMemoryError. Returns the seconds it took."""
    start = time.perf_counter()
    try:
        q.run(job)
    except GpuMemoryError as err:
        seconds = time.perf_counter() - start
        msg = str(err)
        print(f"  {label}: GpuMemoryError after {seconds:.2f} s: {msg}")
        check("\n" not in msg and len(msg) < 300, "the error is one line")
        return seconds
    except Exception as err:  # noqa: BLE001 - reported as a failed check
        check(False, f"{label}: expected GpuMemoryError, got {type(err).__name__}: {str(err).splitlines()[0]}")
        return time.perf_counter() - start
    check(False, f"{label}: expected GpuMemoryError, the job succeeded")
    return time.perf_counter() - start


def run_cuda(chunk_gib: float) -> Checks:
    check = Checks()
    dev = torch.device("cuda")
    torch.cuda.init()
    torch.zeros(1, device=dev)  # context created before the baseline
    free0, total = torch.cuda.mem_get_info(dev)
    alloc0, reserved0 = torch.cuda.memory_allocated(dev), torch.cuda.memory_reserved(dev)
    print(f"card: {torch.cuda.get_device_name(dev)}, {total / GIB:.1f} GiB, {free0 / GIB:.1f} GiB free; "
          f"torch {torch.__version__}")
    q = JobQueue(max_pending=4)

    def after(label: str) -> None:
        free, _ = torch.cuda.mem_get_info(dev)
        alloc, reserved = torch.cuda.memory_allocated(dev), torch.cuda.memory_reserved(dev)
        print(f"  after {label}: allocated {alloc / 2**20:.0f} MiB (before {alloc0 / 2**20:.0f}), reserved "
              f"{reserved / 2**20:.0f} MiB (before {reserved0 / 2**20:.0f}), driver free {free / GIB:.1f} GiB "
              f"(before {free0 / GIB:.1f})")
        check(alloc <= alloc0 and reserved <= reserved0, f"{label}: PyTorch's memory back to the baseline")
        check(free >= free0 - GIB, f"{label}: the driver's free memory back (within 1 GiB)")
        check(q.pending == 0, f"{label}: the queue is empty")

    print(f"1. one allocation of {(total + GIB) / GIB:.1f} GiB (more than the card has)")

    def oversized() -> None:
        torch.empty(total + GIB, dtype=torch.uint8, device=dev)

    expect_oom(q, check, oversized, "oversized job")
    after("the oversized job")

    held_peak = [0]
    chunk = int(chunk_gib * GIB)
    print(f"2. fill the card in {chunk_gib:g} GiB pieces until it refuses")

    def greedy() -> None:
        held = []
        for _ in range(int(total // chunk) + 4):
            held.append(torch.empty(chunk, dtype=torch.uint8, device=dev))
            held_peak[0] = len(held) * chunk
        raise RuntimeError(f"no out-of-memory after {len(held) * chunk / GIB:.0f} GiB")

    expect_oom(q, check, greedy, "filling job")
    print(f"  the filling job held {held_peak[0] / GIB:.0f} GiB when the allocator refused")
    check(held_peak[0] >= 0.8 * free0, "the filling job really filled the card (>= 80 % of the free memory)")
    after("the filling job")

    print("3. a normal job: 8192 x 8192 bf16 matrix product")

    def normal() -> float:
        a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
        out = (a @ a).float().abs().mean().item()
        return out

    start = time.perf_counter()
    try:
        value = q.run(normal)
        ok = value == value  # not NaN
        print(f"  normal job: ok in {time.perf_counter() - start:.2f} s (mean |a @ a| = {value:.1f})")
    except Exception as err:  # noqa: BLE001
        ok = False
        print(f"  normal job: {type(err).__name__}: {str(err).splitlines()[0]}")
    check(ok, "the normal job after the out-of-memory jobs succeeds")
    q.shutdown()
    return check


def run_dry() -> Checks:
    check = Checks()
    print("dry run: no CUDA; the out-of-memory is simulated (CPU tensors, OutOfMemoryError raised by hand)")
    q = JobQueue(max_pending=4)

    def greedy() -> None:
        held = [torch.empty(2**20, dtype=torch.uint8) for _ in range(8)]  # noqa: F841 - held until the raise
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (simulated)")

    expect_oom(q, check, greedy, "simulated out-of-memory job")
    check(q.pending == 0, "the queue is empty")
    check(q.run(lambda: 2 + 2) == 4, "the normal job after it succeeds")
    q.shutdown()
    return check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--chunk-gib", type=float, default=4.0, help="piece size of the filling job")
    ap.add_argument("--dry-run", action="store_true", help="simulate the out-of-memory (no GPU needed)")
    args = ap.parse_args()
    if args.dry_run:
        check = run_dry()
    elif not torch.cuda.is_available():
        sys.exit("bench/gpu_oom.py: no CUDA device (use --dry-run to check the script without one)")
    else:
        check = run_cuda(args.chunk_gib)
    if check.failed:
        print(f"RESULT: FAILED ({len(check.failed)} check(s): {'; '.join(check.failed)})")
        sys.exit(1)
    note = " (simulated)" if args.dry_run else ""
    print(f"RESULT: out-of-memory reported in one line, memory freed, next job fine{note}")


if __name__ == "__main__":
    main()
