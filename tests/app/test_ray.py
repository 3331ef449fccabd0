"""Ray: the experiment grid as Ray tasks (same results as the serial run, resumable after a killed driver) and the
dashboard's jobs on a Ray actor (own result per session, "server busy" when full, out-of-memory reported).

A 2-CPU Ray cluster is started on 127.0.0.1 in this process once for the module and stopped after it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

# Ray would bind the cluster to this machine's network address; this keeps it on the loopback (127.0.0.1). Set
# before Ray is imported (it reads the variable at import) and passed on to the driver processes below.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import rna_cohort  # noqa: E402
from mosare.config import ExperimentConfig, ModelConfig, TrainConfig  # noqa: E402
from mosare.errors import MosareError  # noqa: E402
from mosare.app.jobs import BusyError, GpuMemoryError, make_job_queue  # noqa: E402

ray = pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[2]
DEMO_MODEL = REPO / "assets" / "demo" / "model" / "mosare.safetensors"


@pytest.fixture(scope="module")
def ray_address():
    """A local 2-worker (2-CPU) Ray cluster on 127.0.0.1; -> its address for other drivers."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    try:
        address = ray.get_runtime_context().gcs_address
        assert address.startswith("127.0.0.1:"), address
        yield address
    finally:
        ray.shutdown()


def _env() -> dict[str, str]:
    """This process's environment: with the loopback setting above, and RAY_AUTH_MODE=token (Ray sets it when it
    starts the cluster), so the driver presents the cluster's token (~/.ray/auth_token)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def _wait_until_idle(timeout: float = 60) -> None:
    """Until every CPU of the test cluster is free again (fails after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while ray.available_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, "tasks kept running"
        time.sleep(0.1)


@contextmanager
def _one_thread():
    """Torch on one thread, as in a Ray run with 1 CPU: with another thread count float32 sums (hence the
    records' raw probabilities) can differ in the last bit; the rounded metrics do not."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _records(out: Path) -> str:
    """Every run's result record as JSON text (NaN == NaN there; run durations dropped: they always differ)."""
    found = {}
    for path in sorted(out.rglob("*.result.json")):
        rec = json.loads(path.read_text())
        for run in rec["runs"]:
            run.pop("seconds", None)
        found[str(path.relative_to(out))] = {k: rec[k] for k in ("fingerprint", "rows", "runs", "subsets", "predictions")}
    return json.dumps(found, sort_keys=True)


# ----------------------------------------------------------------------------------------------- the grid


@pytest.mark.slow  # ~25 s: the serial grid, then the same grid as Ray tasks (worker start-up dominates)
def test_grid_on_a_two_worker_ray_cluster_equals_the_serial_run(ray_address, tmp_path: Path, capsys) -> None:
    from mosare.train.experiment import run_experiment

    cohort = rna_cohort(n=40, genes=12)
    cfg = ExperimentConfig(classes=("A", "B"), folds=2, models=("mosare", "abmil", "snn"),  # abmil: NA (no slides)
                           scenarios=("complete", "masked-masked", "masked-unmasked"), mask_rates=(0.3,),
                           model=ModelConfig(hidden=8, gene_token_dim=4),
                           train=TrainConfig(epochs=2, batch_size=16, lr=1e-3, align_warmup=1, device="cpu"))
    with _one_thread():
        serial = run_experiment(cohort, cfg, tmp_path / "serial", progress=False)
    on_ray = run_experiment(cohort, cfg, tmp_path / "ray", progress=False, backend="ray")
    pd.testing.assert_frame_equal(serial, on_ray)
    for name in ("metrics.csv", "subsets.csv", "predictions.csv", "summary.md"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "serial" / name).read_bytes(), name
    runs = [pd.read_csv(tmp_path / d / "runs.csv").drop(columns="seconds") for d in ("serial", "ray")]
    pd.testing.assert_frame_equal(*runs)
    records = _records(tmp_path / "serial")
    assert records.count(".result.json") == 8 and records == _records(tmp_path / "ray")  # per-run records too
    assert json.loads((tmp_path / "ray" / "timing.json").read_text())["backend"] == "ray"
    # a run no node can host (this cluster has no GPU): one line, before the data (missing here) is read
    capsys.readouterr()
    assert _exit_code(["experiment", "--rna", str(tmp_path / "missing.csv"), "--classes", "A,B", "--out",
                       str(tmp_path / "o"), "--backend", "ray", "--gpus-per-run", "1"]) == 2
    err = capsys.readouterr().err
    assert "no node of the Ray cluster has 1 CPU + 1 GPU" in err and len(err.strip().splitlines()) == 1, err
    _wait_until_idle()  # nothing left running (a finished task hands its CPU back a moment later)


@pytest.mark.slow  # ~40 s: a driver process killed mid-grid, the resumed grid, the serial reference
def test_ray_driver_killed_mid_grid_resumes_to_the_same_metrics(ray_address, tmp_path: Path, capsys) -> None:
    from mosare.cli import main
    from mosare.synthetic.cohort import write_demo_cohort

    write_demo_cohort(tmp_path / "cohort", n_cases=40, seed=2, slides=False)
    args = ["experiment", "--rna", str(tmp_path / "cohort" / "rna.csv.gz"), "--label-column", "label",
            "--classes", "A,B", "--folds", "2", "--epochs", "3", "--hidden", "16", "--models", "mosare,snn",
            "--scenarios", "complete,masked-unmasked", "--mask-rates", "0.3", "--device", "cpu"]
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    ray_args = ["--backend", "ray", "--ray-address", ray_address]

    with open(tmp_path / "run1.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "mosare", *args, "--out", str(killed), *ray_args], cwd=REPO,
                                env=_env(), stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not any(killed.rglob("*.result.json")):
                assert proc.poll() is None, (tmp_path / "run1.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "timed out waiting for the first run"
                time.sleep(0.02)
            proc.kill()  # SIGKILL: no cleanup code runs in the driver
            assert proc.wait(timeout=60) < 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not (killed / "metrics.csv").exists(), "the grid finished before its driver was killed"
    _wait_until_idle()  # the cluster stops the dead driver's tasks
    n_done = len(list(killed.rglob("*.result.json")))
    assert 1 <= n_done < 8

    capsys.readouterr()
    assert main([*args, "--out", str(killed), *ray_args]) == 0  # the same command again: resumes
    assert f"resumed {n_done} of 8 runs" in capsys.readouterr().err
    with _one_thread():
        assert main([*args, "--out", str(reference), "--workers", "1"]) == 0  # serial reference, never interrupted
    for name in ("metrics.csv", "subsets.csv", "summary.md"):
        assert (killed / name).read_bytes() == (reference / name).read_bytes(), name
    assert _records(killed) == _records(reference)


def _exit_code(argv: list[str]) -> int:
    from mosare.cli import main

    try:
        return main(argv)
    except SystemExit as stop:  # argparse's refusals
        return int(stop.code)


def test_ray_backend_refuses_bad_requests_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """Unreachable cluster, impossible requests, ray missing: a one-line error and exit code 2, before any data
    is read (the table named here does not exist)."""
    import mosare.train

    base = ["experiment", "--rna", str(tmp_path / "missing.csv"), "--classes", "A,B", "--out", str(tmp_path / "o")]
    cases = [(["--backend", "ray", "--ray-address", "127.0.0.1:9"], "cannot reach the Ray cluster at 127.0.0.1:9"),
             (["--backend", "ray", "--ray-address", "nonsense"], "expected host:port"),
             (["--backend", "ray", "--device", "cuda"], "needs --gpus-per-run"),
             (["--backend", "ray", "--gpus-per-run", "-1"], "expected a number >= 0"),
             (["--ray-address", "127.0.0.1:9"], "need --backend ray")]
    for extra, message in cases:
        assert _exit_code([*base, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    # as if ray were not installed
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.delitem(sys.modules, "mosare.train.ray_backend", raising=False)
    monkeypatch.delattr(mosare.train, "ray_backend", raising=False)
    monkeypatch.delitem(sys.modules, "mosare.app.ray_jobs", raising=False)
    assert _exit_code([*base, "--backend", "ray"]) == 2
    assert "needs the ray package" in capsys.readouterr().err
    monkeypatch.setenv("MOSARE_RAY_ADDRESS", "127.0.0.1:9")
    with pytest.raises(MosareError, match="ray package is not installed"):
        make_job_queue()
    monkeypatch.delenv("MOSARE_RAY_ADDRESS")
    local = make_job_queue()
    assert type(local).__name__ == "JobQueue"  # without the variable nothing changes
    local.shutdown()


# ----------------------------------------------------------------------------------------------- dashboard jobs


def _slow_square(x: float, gate: str, on_progress=None) -> float:
    """Waits for the file ``gate`` (reporting progress meanwhile), then returns x²."""
    while not os.path.exists(gate):
        if on_progress is not None:
            on_progress(1, 2, 5.0)
        time.sleep(0.02)
    return x * x


def _out_of_memory(kind: str) -> None:
    held = torch.zeros(1000)  # noqa: F841 - what an out-of-memory job leaves behind
    if kind == "torch":
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    raise RuntimeError("CUDA error: out of memory")


def test_dashboard_jobs_on_a_ray_actor(ray_address, tmp_path: Path, monkeypatch) -> None:
    """Two sessions' jobs on one actor each get their own result; a full queue says "server busy"; an
    out-of-memory job is reported and the next succeeds; the model stays loaded in the actor."""
    from mosare.inference import Case, Predictor
    from mosare.app.ray_jobs import RayJobQueue
    from mosare.app.workbench import analyse

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the actor cannot import this test module
    monkeypatch.setenv("MOSARE_RAY_ADDRESS", ray_address)
    queue = make_job_queue(max_pending=2)
    assert isinstance(queue, RayJobQueue)
    try:
        predictor = Predictor(DEMO_MODEL)  # the dashboard's copy: the actor loads its own from the same path
        rng = np.random.default_rng(0)
        cases = [Case(present=np.array([False, True, False]), rna=rng.normal(size=len(predictor.genes)).astype(np.float32))
                 for _ in range(2)]
        results: dict[int, object] = {}

        def session(i: int) -> None:
            results[i] = queue.run(analyse, predictor, cases[i])

        threads = [threading.Thread(target=session, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for i in range(2):
            np.testing.assert_allclose(results[i].prediction.probs, analyse(predictor, cases[i]).prediction.probs,
                                       atol=1e-5)
        assert not np.allclose(results[0].prediction.probs, results[1].prediction.probs)
        assert results[0].prediction.probs.flags.writeable  # as from the local queue

        gate, seen = tmp_path / "gate", []
        first = queue.submit(_slow_square, 3.0, str(gate), on_progress=lambda *v: seen.append(v))
        second = queue.submit(_slow_square, 4.0, str(gate))
        with pytest.raises(BusyError, match="server is busy"):
            queue.submit(_slow_square, 5.0, str(gate))
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:  # the actor's progress reaches this process
            time.sleep(0.05)
        gate.touch()
        assert (first.result(60), second.result(60)) == (9.0, 16.0) and seen[0] == (1, 2, 5.0)

        for kind in ("torch", "runtime"):
            with pytest.raises(GpuMemoryError, match="memory freed"):
                queue.run(_out_of_memory, kind)
        assert queue.run(analyse, predictor, cases[0]).prediction.label == results[0].prediction.label
        with pytest.raises(MosareError, match="no modality left"):  # a job's own error arrives as itself
            queue.run(analyse, predictor, cases[0], np.zeros(3, bool))
        assert queue.pending == 0
        [actor] = queue.actors()
        assert actor["models"] == [str(DEMO_MODEL.resolve())] and actor["device"] == "cpu"
    finally:
        queue.shutdown()


@pytest.mark.slow  # the session's demo cases (~25 s once) and a slide decoded on the actor's node
def test_slide_encoding_job_on_a_ray_actor(ray_address, demo_cache: Path, tmp_path: Path) -> None:
    """load_case with a slide on the actor: decoded in the isolated child there, progress relayed here, the
    same features as on this machine."""
    from mosare.app.demo import MODEL_PATH, ensure_demo_cases
    from mosare.inference import Predictor
    from mosare.app.ray_jobs import RayJobQueue
    from mosare.app.workbench import load_case

    case = next(c for c in ensure_demo_cases(demo_cache) if c.slide_path)
    predictor = Predictor(MODEL_PATH)
    queue = RayJobQueue(ray_address, max_pending=2)
    try:
        seen: list[tuple] = []
        remote = queue.run(load_case, predictor, slide_path=case.slide_path, cache_dir=tmp_path / "ray-cache",
                           on_progress=lambda *v: seen.append(v))
    finally:
        queue.shutdown()
    local = load_case(predictor, slide_path=case.slide_path, cache_dir=tmp_path / "local-cache")
    np.testing.assert_array_equal(remote.case.patches, local.case.patches)
    np.testing.assert_array_equal(remote.view.thumbnail, local.view.thumbnail)
    assert seen and seen[-1][1] == len(local.case.patches)  # (done, total, tiles/s) from the actor
