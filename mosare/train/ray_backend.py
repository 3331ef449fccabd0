"""The experiment grid on a Ray cluster: ``mosare experiment --backend ray [--ray-address ADDRESS]``.

Every run (one model trained for one fold, training setting and mask rate, then scored on each scenario that
setting serves) is a Ray task asking for ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs (a fraction shares a
GPU: 0.25 puts four runs on one). A task computes exactly what the serial loop computes
(:func:`mosare.train.experiment._run_setting` for that one model: same seeds, same checkpoint and result record),
so metrics.csv equals a serial run's. Runs finished earlier (their records match, see :mod:`mosare.train.resume`)
and models not applicable to the cohort are settled by the driver and never sent; a driver killed mid-grid
therefore resumes where it stopped.

Without an address the driver joins ``$RAY_ADDRESS`` if set (a KubeRay RayJob sets it), else starts a local Ray on
this machine and stops it at the end. On a cluster the output folder and any slide feature files must lie on a
filesystem every node sees, and every node must run the same mosare code (each worker checks it).

Ray is optional: this module imports it at the top and is itself imported only for ``backend="ray"``.
"""

from __future__ import annotations

import socket
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import ray
import torch

from mosare.errors import MosareError
from mosare.train.experiment import Fold, _run_setting
from mosare.train.ray_cluster import connect
from mosare.train.resume import checkpoint_stem, code_fingerprint, load_result, run_fingerprint

ACC_KEYS = ("rows", "runs", "subsets", "predictions", "history")


def run_device(device: str, gpus_per_run: float) -> torch.device:
    """The device of every run: CUDA when runs ask for a GPU (Ray makes the assigned one ``cuda:0``), else CPU."""
    if gpus_per_run < 0:
        raise MosareError("--gpus-per-run must be >= 0")
    if device == "cuda" and gpus_per_run == 0:
        raise MosareError("--device cuda with --backend ray needs --gpus-per-run (e.g. 1, or 0.25 for four runs per GPU)")
    if device == "cpu" and gpus_per_run > 0:
        raise MosareError("--device cpu contradicts --gpus-per-run; drop one of them")
    return torch.device("cuda" if gpus_per_run > 0 else "cpu")


def check_resources(cpus: float, gpus: float) -> str:
    """Refuse a request no node can meet (the tasks would wait forever); -> a one-line cluster summary."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    if not any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        have = ", ".join(f"{r.get('CPU', 0):g} CPU + {r.get('GPU', 0):g} GPU" for r in nodes) or "none alive"
        raise MosareError(f"no node of the Ray cluster has {cpus:g} CPU + {gpus:g} GPU for one run (nodes: {have}); "
                          "lower --cpus-per-run / --gpus-per-run or add such a node")
    total = ray.cluster_resources()
    return f"{len(nodes)} node(s), {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU"


# Worker-process state: the experiment's shared inputs (fetched once per worker and experiment) and a fold cache.
_STATE: dict = {}


def _worker_state(key: str, ref: ray.ObjectRef) -> dict:
    if _STATE.get("key") != key:
        _STATE.clear()
        shared = ray.get(ref)
        node = socket.gethostname()
        if shared["code"] != code_fingerprint():
            raise MosareError(f"the mosare code on Ray node {node} differs from the driver's: install the same "
                              "checkout on every node")
        if not Path(shared["out"]).is_dir():
            raise MosareError(f"Ray node {node} does not see the output folder {shared['out']}: put --out on a "
                              "filesystem every node mounts at the same path")
        _STATE.update(shared, key=key, fold=None)
    return _STATE


@ray.remote(max_retries=2)
def _run_task(key: str, shared: list, k: int, training: str, rate: float, scenarios: tuple[str, ...], name: str,
              threads: int, device: str) -> tuple[dict, list[str]]:
    """One run, as :func:`_run_setting` computes it for model ``name``; -> (its results, its progress lines)."""
    torch.set_num_threads(threads)
    s = _worker_state(key, shared[0])
    train_all, test_idx = s["folds"][k]
    if s["fold"] is None or s["fold"][0] != k:  # kept for the next run of the same fold (same features)
        s["fold"] = (k, Fold(s["cohort"], s["cfg"], s["mcfg"], k, train_all))
    messages: list[str] = []
    acc = _run_setting(s["cohort"], replace(s["cfg"], models=(name,)), s["mcfg"], k, s["fold"][1], test_idx, training,
                       rate, scenarios, s["out"], s["text_model"], torch.device(device), s["reasons"],
                       on_run_done=messages.append, base_fingerprint=s["base_fingerprint"])
    return acc, messages


def _merge(parts: list[dict]) -> dict:
    """One (fold, training setting)'s results from its per-model parts, in model order: as the serial loop."""
    acc = {key: [r for p in parts for r in p[key]] for key in ACC_KEYS}
    acc["resumed"] = sum(p["resumed"] for p in parts)
    return acc


def run_grid(cohort, cfg, mcfg, folds, grid, out: Path, text_model: str, reasons: dict, base_fingerprint: str | None,
             done, *, address: str | None = None, gpus_per_run: float = 0.0, cpus_per_run: float = 1.0) -> list[dict]:
    """Results of every (fold, training setting) in serial order (see :func:`run_experiment`); ``done(message)``
    is called once per run as it finishes (for the progress bar)."""
    if cpus_per_run <= 0:
        raise MosareError("--cpus-per-run must be > 0")
    device = run_device(cfg.train.device, gpus_per_run)
    started = connect(address)
    pending: list = []
    try:
        summary = check_resources(cpus_per_run, gpus_per_run)
        key = uuid.uuid4().hex
        shared = ray.put({"cohort": cohort, "cfg": cfg, "mcfg": mcfg, "folds": folds, "out": out,
                          "text_model": text_model, "reasons": reasons, "base_fingerprint": base_fingerprint,
                          "code": code_fingerprint()})
        task = _run_task.options(num_cpus=cpus_per_run, num_gpus=gpus_per_run)
        threads = max(1, int(cpus_per_run))
        blocks: list[list] = []
        cpu = torch.device("cpu")
        for k, (train_all, test_idx) in enumerate(folds):
            fold = Fold(cohort, cfg, mcfg, k, train_all)
            for training, rate, scen in grid:
                block = []
                for name in cfg.models:
                    fp = base_fingerprint and run_fingerprint(base_fingerprint, name, training, rate, k)
                    if reasons[name] or (fp and load_result(checkpoint_stem(out, name, training, rate, k), fp)):
                        block.append(_run_setting(cohort, replace(cfg, models=(name,)), mcfg, k, fold, test_idx,
                                                  training, rate, scen, out, text_model, cpu, reasons,
                                                  on_run_done=done, base_fingerprint=base_fingerprint))
                    else:
                        block.append(task.remote(key, [shared], k, training, rate, scen, name, threads, str(device)))
                blocks.append(block)
        pending = [r for b in blocks for r in b if isinstance(r, ray.ObjectRef)]
        print(f"ray: {len(pending)} run(s) as tasks of {cpus_per_run:g} CPU + {gpus_per_run:g} GPU on {summary}",
              file=sys.stderr)
        finished: dict = {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                acc, messages = ray.get(ready[0])
            except ray.exceptions.RayTaskError as err:
                if isinstance(err.cause, MosareError):
                    raise err.cause from None
                raise
            finished[ready[0]] = acc
            for m in messages:
                done(m)
        return [_merge([finished[p] if isinstance(p, ray.ObjectRef) else p for p in b]) for b in blocks]
    finally:
        for ref in pending:  # an error or an interrupt: stop what is still queued or running
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - finished meanwhile, or the cluster is gone: nothing to stop
                pass
        if started:
            ray.shutdown()
