"""The dashboard's jobs (inference, attribution, slide encoding) on a Ray cluster: set ``MOSARE_RAY_ADDRESS``.

:class:`RayJobQueue` has the interface of :class:`mosare.app.jobs.JobQueue` (``submit``, ``run``, ``pending``,
``max_pending``, ``shutdown``) and keeps its promises: at most ``max_pending`` jobs queued or running (then
:class:`~mosare.app.jobs.BusyError`, "the server is busy"), a job that runs out of GPU memory is stopped, its memory
freed and :class:`~mosare.app.jobs.GpuMemoryError` raised, and the next job runs normally.

The jobs run on :class:`JobActor` s, one per GPU of the cluster (one on a CPU-only cluster), each running one job
at a time and keeping what jobs need loaded: a :class:`~mosare.inference.Predictor` or
:class:`~mosare.text.embed.ReportEmbedder` passed to ``submit`` travels as a reference (checkpoint path,
model folder) and the actor uses its own copy, loaded on its first job and kept (least recently used first out)
for the next. Paths (checkpoints, slides, the cache folder) must therefore mean the same on the dashboard's host
and the cluster's nodes (a shared filesystem). ``on_progress`` callbacks are polled from the actor and called
here. Arguments, results and exceptions travel by Ray's own serialisation (the cluster is trusted: token
authentication, see the README); results are copied on arrival, so arrays come back writable (Ray hands out
read-only zero-copy views), as from the local queue.
"""

from __future__ import annotations

import copy
import os
import socket
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import ray
import torch

from mosare.app.jobs import OOM_MESSAGE, BoundedQueue, GpuMemoryError, free_accelerator_memory, is_out_of_memory
from mosare.errors import MosareError
from mosare.inference import Predictor
from mosare.text.embed import ReportEmbedder
from mosare.train.ray_cluster import connect, one_line
from mosare.types import resolve_device

T = TypeVar("T")
MAX_MODELS = 4  # checkpoints an actor keeps loaded


@dataclass(frozen=True)
class PredictorRef:
    """A Predictor sent to an actor: the actor loads (once) and uses its own copy on its device."""

    checkpoint: str


@dataclass(frozen=True)
class EmbedderRef:
    model_path: str
    cache_dir: str
    batch_size: int


def to_refs(value: Any) -> Any:
    if isinstance(value, Predictor):
        return PredictorRef(str(value.checkpoint))
    if isinstance(value, ReportEmbedder):
        return EmbedderRef(str(value.path), str(value.cache_dir), value.batch_size)
    return value


def _portable(err: Exception) -> Exception:
    """The exception, or a MosareError with its one-line message when it cannot be rebuilt on the other side (an
    exception class whose ``__init__`` does not take its ``args`` fails there; a copy fails the same way here)."""
    try:
        copy.deepcopy(err)
        return err
    except Exception:  # noqa: BLE001 - any exception type may come out of a job
        return MosareError(f"{type(err).__name__}: {one_line(err)}")


@ray.remote(max_restarts=-1, max_task_retries=0, concurrency_groups={"status": 2})
class JobActor:
    """Runs jobs one at a time (the default concurrency group); ``progress`` and ``info`` answer meanwhile."""

    def __init__(self, threads: int = 1) -> None:
        torch.set_num_threads(max(1, threads))
        self.device = resolve_device("auto")  # Ray sets CUDA_VISIBLE_DEVICES to this actor's GPU
        self._predictors: OrderedDict[str, Predictor] = OrderedDict()
        self._embedders: dict[EmbedderRef, ReportEmbedder] = {}
        self._progress: dict[str, tuple] = {}
        self._completed = 0

    def _resolve(self, value: Any) -> Any:
        if isinstance(value, PredictorRef):
            if value.checkpoint not in self._predictors:
                while len(self._predictors) >= MAX_MODELS:
                    self._predictors.popitem(last=False)
                self._predictors[value.checkpoint] = Predictor(value.checkpoint, self.device)
            self._predictors.move_to_end(value.checkpoint)
            return self._predictors[value.checkpoint]
        if isinstance(value, EmbedderRef):
            if value not in self._embedders:
                self._embedders[value] = ReportEmbedder(value.model_path, value.cache_dir, device=str(self.device),
                                                        batch_size=value.batch_size)
            return self._embedders[value]
        return value

    def run(self, job_id: str, fn: Callable[..., Any], args: list, kwargs: dict, progress: bool) -> tuple[str, Any]:
        """-> ("ok", result) | ("error", exception) | ("oom", message)."""
        try:
            args = [self._resolve(a) for a in args]
            kwargs = {k: self._resolve(v) for k, v in kwargs.items()}
            if progress:
                kwargs["on_progress"] = lambda *values: self._progress.__setitem__(job_id, values)
            return "ok", fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - reported to the caller, the actor stays up
            if not is_out_of_memory(err):
                return "error", _portable(err)
        finally:
            self._progress.pop(job_id, None)
            self._completed += 1
        args = kwargs = None  # out of the except block: nothing holds the job's tensors any more
        free_accelerator_memory()
        return "oom", OOM_MESSAGE

    @ray.method(concurrency_group="status")
    def progress(self, job_id: str) -> tuple | None:
        return self._progress.get(job_id)

    @ray.method(concurrency_group="status")
    def info(self) -> dict:
        return {"node": socket.gethostname(), "device": str(self.device), "models": list(self._predictors),
                "completed": self._completed}


class RayJobQueue(BoundedQueue):
    """:class:`mosare.app.jobs.JobQueue`'s interface, served by :class:`JobActor` s on the Ray cluster at ``address``.

    ``actors``: default one per GPU of the cluster (one on a CPU-only cluster); ``cpus_per_actor`` (default
    ``$MOSARE_RAY_ACTOR_CPUS`` or 1) CPUs and torch threads each. A job goes to the actor with the fewest."""

    def __init__(self, address: str, max_pending: int = 16, *, actors: int | None = None,
                 cpus_per_actor: float | None = None, poll_seconds: float = 0.2, name: str = "mosare-ray-jobs") -> None:
        super().__init__(max_pending)
        self.poll_seconds = poll_seconds
        self._connected = connect(address)
        cpus = cpus_per_actor if cpus_per_actor is not None else float(os.environ.get("MOSARE_RAY_ACTOR_CPUS", "1"))
        gpus = int(ray.cluster_resources().get("GPU", 0))
        options = {"num_cpus": cpus, "num_gpus": 1 if gpus else 0}
        self._actors = [JobActor.options(**options).remote(int(cpus)) for _ in range(actors or max(1, gpus))]
        self._load = [0] * len(self._actors)
        self._waiters = ThreadPoolExecutor(max_workers=max_pending, thread_name_prefix=name)

    def submit(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> Future[T]:
        """Queue ``fn(*args, **kwargs)`` on an actor. Raises :class:`BusyError` at once when the queue is full."""
        self._take()
        with self._lock:
            i = min(range(len(self._actors)), key=self._load.__getitem__)
            self._load[i] += 1
        try:
            on_progress = kwargs.pop("on_progress", None)
            job_id = uuid.uuid4().hex
            ref = self._actors[i].run.remote(job_id, fn, [to_refs(a) for a in args],
                                             {k: to_refs(v) for k, v in kwargs.items()}, on_progress is not None)
            future = self._waiters.submit(self._wait, i, job_id, ref, on_progress)
        except BaseException:
            self._release_actor(i)
            raise
        future.add_done_callback(lambda _: self._release_actor(i))
        return future

    def _release_actor(self, i: int) -> None:
        with self._lock:
            self._load[i] -= 1
        self._release()

    def _wait(self, i: int, job_id: str, ref: ray.ObjectRef, on_progress: Callable[..., None] | None) -> Any:
        while not ray.wait([ref], timeout=self.poll_seconds)[0]:
            if on_progress is not None:
                try:
                    values = ray.get(self._actors[i].progress.remote(job_id), timeout=10)
                except ray.exceptions.RayError:
                    values = None
                if values:
                    on_progress(*values)
        try:
            kind, payload = ray.get(ref)
        except ray.exceptions.RayActorError as err:
            raise MosareError(f"the Ray worker running this job stopped ({one_line(err)[:120]}); it is being "
                              "restarted: try again") from None
        except ray.exceptions.RayError as err:
            raise MosareError(f"the job failed on the Ray cluster: {one_line(err)}") from None
        if kind == "ok":
            return copy.deepcopy(payload)  # writable arrays, not Ray's read-only views
        if kind == "oom":
            raise GpuMemoryError(payload)
        raise payload

    def actors(self) -> list[dict]:
        """Each actor's node, device, loaded checkpoints and jobs done."""
        return ray.get([a.info.remote() for a in self._actors])

    def shutdown(self) -> None:
        """Stop the actors (a job still running ends with an error) and, if this queue connected, Ray."""
        for actor in self._actors:
            ray.kill(actor)
        self._waiters.shutdown(wait=True, cancel_futures=True)
        if self._connected:
            ray.shutdown()
