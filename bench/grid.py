"""The experiment grid serial vs on Ray, on this machine; and on a GPU, fractional GPU requests vs one run at a time.

usage: python bench/grid.py [--workers 2] [--patients 120] [--genes 200] [--folds 3] [--epochs 10]
                            [--models mosare,snn] [--runs-per-gpu 4] [--gpu-folds 5]

CPU part (always): the same small grid (a synthetic RNA cohort; models × {complete, masked 0.3} × folds) run
serially in this process (torch on every core), with the local process backend (``--workers`` processes, one torch
thread each), and as Ray tasks on a local Ray with ``--workers`` CPUs (one CPU and one torch thread per run).
Prints the wall times side by side, Ray's start-up, and the overhead per task: the round trip of an empty Ray
task (scheduling alone), and the grid's wall time per task on Ray beyond the process backend at the same
parallelism, (Ray wall − processes wall) × workers / tasks.

GPU part (only where CUDA is visible; printed as skipped otherwise): a larger grid (``--gpu-folds``) on one GPU
as Ray tasks, once with ``--gpus-per-run 1`` (one run at a time) and once with ``1/--runs-per-gpu`` (that many runs
share the GPU); prints runs per minute for each, and whether metrics.csv came out the same.
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
# run as `python bench/grid.py`: the repository root on the path, for the tests' synthetic cohorts (tests.helpers)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mosare.data.cohort import Cohort  # noqa: E402
from mosare.config import ExperimentConfig, ModelConfig, TrainConfig  # noqa: E402
from mosare.train.experiment import run_experiment  # noqa: E402
from tests import helpers  # noqa: E402  (the tests' synthetic cohorts)


def rna_cohort(n: int, genes: int, seed: int = 0) -> Cohort:
    """Two classes, the first ten genes carrying a weak signal, every patient with RNA only."""
    return helpers.rna_cohort(n, genes, seed, signal_genes=10, shift=0.6)


def grid_config(args: argparse.Namespace, folds: int, device: str) -> ExperimentConfig:
    return ExperimentConfig(classes=("A", "B"), folds=folds, models=tuple(args.models.split(",")),
                            scenarios=("complete", "masked-unmasked"), mask_rates=(0.3,),
                            model=ModelConfig(hidden=32, gene_token_dim=8),
                            train=TrainConfig(epochs=args.epochs, patience=args.epochs, batch_size=16, device=device))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def cpu_part(args: argparse.Namespace, work: Path) -> None:
    import ray

    cohort = rna_cohort(args.patients, args.genes)
    cfg = grid_config(args, args.folds, "cpu")
    n_runs = args.folds * 2 * len(cfg.models)
    cores = torch.get_num_threads()
    serial_s, serial = timed(lambda: run_experiment(cohort, cfg, work / "serial", progress=False, resume=False))
    procs_s, _ = timed(lambda: run_experiment(cohort, cfg, work / "procs", progress=False, resume=False,
                                              workers=args.workers))
    start_s, _ = timed(lambda: ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False))
    try:
        grid_s, on_ray = timed(lambda: run_experiment(cohort, cfg, work / "ray", progress=False, resume=False,
                                                      backend="ray"))

        @ray.remote(num_cpus=1)
        def noop(x):
            return x

        ray.get([noop.remote(i) for i in range(2 * args.workers)])  # workers up
        rt_s, _ = timed(lambda: [ray.get(noop.remote(i)) for i in range(50)])
        batch_s, _ = timed(lambda: ray.get([noop.remote(i) for i in range(500)]))
    finally:
        ray.shutdown()
    same = all((work / d / "metrics.csv").read_bytes() == (work / "serial" / "metrics.csv").read_bytes()
               for d in ("procs", "ray"))
    extra = (grid_s - procs_s) * args.workers / n_runs
    print(f"grid: {n_runs} runs ({len(cfg.models)} models x 2 training settings x {args.folds} folds; "
          f"{args.patients} patients, {args.genes} genes, {args.epochs} epochs), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    rows = [(f"serial (1 process, torch on {cores} threads)", serial_s),
            (f"local, --workers {args.workers} (1 thread each)", procs_s),
            (f"ray, {args.workers} workers, grid only", grid_s),
            (f"ray, {args.workers} workers, incl. start-up", start_s + grid_s)]
    print(f"{'backend':<42}{'wall s':>8}{'runs/min':>10}")
    for name, secs in rows:
        print(f"{name:<42}{secs:>8.1f}{60 * n_runs / secs:>10.1f}")
    mean_run = serial_s / n_runs
    print(f"overhead per task: {1000 * rt_s / 50:.1f} ms, an empty Ray task's round trip "
          f"({1000 * batch_s / 500:.2f} ms each when 500 are submitted together), "
          f"{100 * rt_s / 50 / mean_run:.2f} % of a mean run ({mean_run:.2f} s serially); Ray start-up {start_s:.1f} s")
    print(f"grid on Ray vs the process backend at the same {args.workers} workers: (Ray wall - processes wall) x "
          f"workers / tasks = {extra:+.2f} s per task (the process backend starts its workers, and a manager process, "
          "inside its wall time; Ray workers fit a fold's features per task, not per training setting)")
    print(f"metrics.csv identical (serial, processes, ray): {'yes' if same else 'NO'}")
    if not same:
        print(pd.concat({"serial": serial, "ray": on_ray}, axis=1).to_string(), file=sys.stderr)


def gpu_part(args: argparse.Namespace, work: Path) -> None:
    if not torch.cuda.is_available():
        print("GPU part skipped: no CUDA device visible (fractional --gpus-per-run vs one run at a time)")
        return
    import ray

    cohort = rna_cohort(args.patients * 4, args.genes * 5)
    cfg = grid_config(args, args.gpu_folds, "cuda")
    n_runs = args.gpu_folds * 2 * len(cfg.models)
    ray.init(num_gpus=1, num_cpus=max(args.runs_per_gpu, os.cpu_count() or 1), include_dashboard=False,
             log_to_driver=False)
    try:
        rows = []
        for gpus in (1.0, 1.0 / args.runs_per_gpu):
            secs, _ = timed(lambda g=gpus: run_experiment(cohort, cfg, work / f"gpu-{g:g}", progress=False,
                                                           resume=False, backend="ray", gpus_per_run=g))
            rows.append((gpus, secs))
    finally:
        ray.shutdown()
    same = (work / "gpu-1" / "metrics.csv").read_text() == \
        (work / f"gpu-{1.0 / args.runs_per_gpu:g}" / "metrics.csv").read_text()
    print(f"GPU ({torch.cuda.get_device_name(0)}): {n_runs} runs, {cohort.rna.shape[0]} patients, "
          f"{cohort.rna.shape[1]} genes")
    for gpus, secs in rows:
        print(f"  --gpus-per-run {gpus:<6g} ({round(1 / gpus)} at a time): {secs:7.1f} s, {60 * n_runs / secs:6.1f} runs/min")
    print(f"  metrics.csv identical: {'yes' if same else 'no (GPU kernels are not bit-reproducible across runs)'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray (one run per CPU)")
    p.add_argument("--patients", type=int, default=120)
    p.add_argument("--genes", type=int, default=200)
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--models", default="mosare,snn")
    p.add_argument("--runs-per-gpu", type=int, default=4)
    p.add_argument("--gpu-folds", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mosare-grid-bench-") as tmp:
        cpu_part(args, Path(tmp))
        gpu_part(args, Path(tmp))


if __name__ == "__main__":
    main()
