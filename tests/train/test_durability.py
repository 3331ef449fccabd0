"""Durability: atomic writes, and extraction / training killed with SIGKILL leave no partial file and resume.

The two end-to-end tests start ``python -m mosare`` as a child process, kill it (SIGKILL: no cleanup code
runs) once it has written some outputs, check that every output present is complete, then run the same
command again and check that it finishes, skips what was done and gives the same results.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import rna_cohort
from mosare.config import ExperimentConfig, ModelConfig, TrainConfig
from mosare.errors import CheckpointError
from mosare.io.atomic import (atomic_path, atomic_write_bytes, atomic_write_text, current_umask, is_temp_name,
                              remove_stale_temps)
from mosare.io.features import read_features, write_features_h5

REPO = Path(__file__).resolve().parents[2]
EXPERIMENT_ARGS = ["--label-column", "label", "--classes", "A,B", "--folds", "2", "--epochs", "3", "--hidden", "16",
                   "--models", "mosare,snn", "--scenarios", "complete,masked-unmasked", "--mask-rates", "0.3",
                   "--device", "cpu", "--workers", "1"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    return env


def _start(args: list[str], log: Path) -> subprocess.Popen:
    fh = open(log, "wb")  # noqa: SIM115 - closed by _finish / the caller
    proc = subprocess.Popen([sys.executable, "-m", "mosare", *args], cwd=REPO, env=_env(), stdout=fh,
                            stderr=subprocess.STDOUT)
    proc.log_handle = fh  # type: ignore[attr-defined]
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 600) -> int:
    try:
        return proc.wait(timeout=timeout)
    finally:
        proc.log_handle.close()  # type: ignore[attr-defined]


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fail if it ended on its own first."""
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                pytest.fail(f"the process ended (exit {proc.returncode}) before it could be killed mid-run")
            if time.monotonic() > deadline:
                pytest.fail("timed out waiting for the first outputs")
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.log_handle.close()  # type: ignore[attr-defined]


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and is_temp_name(p.name)]


# ----------------------------------------------------------------------------------------------- atomic writes


def test_atomic_write_keeps_old_file_when_the_rename_fails(tmp_path: Path, monkeypatch) -> None:
    import mosare.io.atomic as atomic

    target = tmp_path / "result.csv"
    atomic_write_text(target, "old\n")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new contents")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.csv"]  # no temporary file left


def test_atomic_path_keeps_old_file_when_the_writer_fails_midway(tmp_path: Path) -> None:
    target = tmp_path / "features.h5"
    atomic_write_bytes(target, b"complete old file")
    with pytest.raises(RuntimeError, match="encoder crashed"):
        with atomic_path(target) as tmp:
            assert is_temp_name(tmp.name) and tmp.parent == tmp_path
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("encoder crashed")
    assert target.read_bytes() == b"complete old file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.h5"]


def test_atomic_files_get_ordinary_permissions(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert current_umask() == 0o022
        atomic_write_text(tmp_path / "a.json", "{}")
        with atomic_path(tmp_path / "b.h5") as tmp:
            tmp.write_bytes(b"x")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
        assert stat.S_IMODE((tmp_path / "b.h5").stat().st_mode) == 0o644
        os.umask(0o027)
        atomic_write_text(tmp_path / "c.json", "{}")
        assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)


def test_writers_killed_midway_leave_the_old_file_and_a_recognisable_temporary(tmp_path: Path) -> None:
    """A child process SIGKILLs itself in the middle of writing a feature file and a checkpoint."""
    from mosare.model.checkpoint import load_checkpoint, save_checkpoint
    from mosare.model.registry import build_model

    cfg = ModelConfig(modalities=("rna",), rna_dim=6, hidden=8, gene_token_dim=4)
    write_features_h5(tmp_path / "slide.h5", np.ones((3, 4), np.float32), np.zeros((3, 2)), {"encoder": "old"})
    save_checkpoint(tmp_path / "fold0", build_model("snn", cfg), "snn", cfg, meta={"classes": ["A", "B"]})
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        root = {str(tmp_path)!r}

        def die(*args, **kwargs):  # called while the new file is being written
            os.kill(os.getpid(), signal.SIGKILL)

        if sys.argv[1] == "h5":
            import mosare.io.features as features
            features._attr_value = die  # after the datasets were written, before the attributes
            features.write_features_h5(root + "/slide.h5", np.full((50, 4), 2, np.float32), np.zeros((50, 2)),
                                       {{"encoder": "new"}})
        else:
            import mosare.model.checkpoint as checkpoint
            from mosare.config import ModelConfig
            from mosare.model.registry import build_model
            real = checkpoint.save_file
            def half(tensors, path, metadata=None):  # a partial weights file, then the kill
                real(tensors, path, metadata=metadata)
                with open(path, "r+b") as fh:
                    fh.truncate(os.path.getsize(path) // 2)
                die()
            checkpoint.save_file = half
            cfg = ModelConfig(modalities=("rna",), rna_dim=6, hidden=8, gene_token_dim=4)
            checkpoint.save_checkpoint(root + "/fold0", build_model("snn", cfg), "snn", cfg, meta={{"classes": ["A", "B"]}})
    """)
    for what in ("h5", "checkpoint"):
        proc = subprocess.run([sys.executable, "-c", script, what], cwd=REPO, env=_env(), capture_output=True)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    # the old feature file is intact: never a partial one at the final name
    sf = read_features(tmp_path / "slide.h5")
    assert sf.attrs["encoder"] == "old" and sf.n_patches == 3
    # the checkpoint's .json was replaced (it is written first), its weights not: the pair is refused, not misread
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(tmp_path / "fold0.safetensors")
    leftovers = sorted(_temp_files(tmp_path))  # what a kill can leave: hidden .tmp-<name>.<random>.tmp files
    assert len(leftovers) == 2, leftovers
    assert leftovers[0].name.startswith(".tmp-fold0.safetensors.") and leftovers[1].name.startswith(".tmp-slide.h5.")
    (tmp_path / ".tmp-other.h5.abc.tmp").write_bytes(b"someone else's")
    removed = remove_stale_temps(tmp_path, ["slide.h5", "fold0.safetensors"])
    assert sorted(removed) == sorted(leftovers)
    assert [p.name for p in _temp_files(tmp_path)] == [".tmp-other.h5.abc.tmp"]  # other names are not touched


def test_checkpoint_pair_from_different_saves_is_refused(tmp_path: Path) -> None:
    from mosare.model.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
    from mosare.model.registry import build_model

    cfg = ModelConfig(modalities=("rna",), rna_dim=6, hidden=8, gene_token_dim=4)
    save_checkpoint(tmp_path / "a", build_model("snn", cfg), "snn", cfg, meta={"classes": ["A", "B"]})
    save_checkpoint(tmp_path / "b", build_model("snn", cfg), "snn", cfg, meta={"classes": ["A", "B"]})
    meta, weights = read_checkpoint_meta(tmp_path / "a")
    assert weights == tmp_path / "a.safetensors" and meta["save_id"]
    load_checkpoint(tmp_path / "a.safetensors")
    os.replace(tmp_path / "b.json", tmp_path / "a.json")
    with pytest.raises(CheckpointError, match="different saves"):
        load_checkpoint(tmp_path / "a.safetensors")
    assert not _temp_files(tmp_path)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~current_umask() for p in tmp_path.iterdir())


def test_truncated_or_corrupt_feature_file_is_not_taken_as_done(tmp_path: Path) -> None:
    from mosare.slides.extract import finished_encoder

    good = write_features_h5(tmp_path / "good.h5", np.ones((400, 64), np.float32), np.zeros((400, 2)),
                             {"encoder": "handcrafted"})
    data = good.read_bytes()
    assert finished_encoder(good) == "handcrafted"
    for name, blob in [("half.h5", data[: len(data) // 2]), ("head.h5", data[:600]), ("zero.h5", b""),
                       ("junk.h5", b"\x89HDF\r\n\x1a\n" + b"\0" * 100)]:
        (tmp_path / name).write_bytes(blob)
        assert finished_encoder(tmp_path / name) is None, name


# ----------------------------------------------------------------------------------------------- extraction


@pytest.mark.slow  # ~18 s: a real extraction killed with SIGKILL, then resumed
def test_extraction_killed_leaves_no_partial_file_and_resumes(tmp_path: Path) -> None:
    from mosare.synthetic.cohort import write_demo_cohort

    write_demo_cohort(tmp_path / "cohort", n_cases=12, seed=1, slides=True)
    slides = sorted((tmp_path / "cohort" / "slides").glob("*.tiff"))
    assert len(slides) >= 6
    out = tmp_path / "features"
    args = ["extract", "--slides", str(tmp_path / "cohort" / "slides"), "--out", str(out),
            "--encoder", "handcrafted", "--workers", "0", "--device", "cpu"]

    proc = _start(args, tmp_path / "run1.log")
    _kill_when(proc, lambda: len(list(out.glob("*.h5"))) >= 2)

    first = sorted(out.glob("*.h5"))
    assert 2 <= len(first) < len(slides), (tmp_path / "run1.log").read_text()
    for h5 in first:  # every feature file present is complete
        sf = read_features(h5)
        assert sf.n_patches > 0 and sf.coords is not None and sf.attrs["encoder"] == "handcrafted"
    partial = [p for p in out.rglob("*") if p.is_file() and not is_temp_name(p.name)
               and p.suffix not in (".h5", ".png")]
    assert not partial, partial  # nothing but complete outputs (and possibly recognisable temporaries)
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in first}

    # a killed writer's leftover and a truncated feature file copied in by hand: cleaned up / redone
    todo = [s.stem for s in slides if not (out / f"{s.stem}.h5").exists()]
    (out / f".tmp-{todo[0]}.h5.k1ll3d__.tmp").write_bytes(b"half-written")
    (out / f"{todo[1]}.h5").write_bytes(first[0].read_bytes()[:1000])

    proc = _start(args, tmp_path / "run2.log")
    assert _finish(proc) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    log = (tmp_path / "run2.log").read_text()
    assert f"{len(slides) - len(first)} extracted, {len(first)} already done, 0 failed" in log, log[-2000:]
    assert f"{todo[1]}.h5: incomplete or unreadable" in log
    assert "temporary file(s) left by an interrupted run" in log
    for s in slides:
        sf = read_features(out / f"{s.stem}.h5")
        assert sf.n_patches > 0 and sf.attrs["encoder"] == "handcrafted"
    for name, (mtime, data) in before.items():  # the first run's files were skipped, not rewritten
        assert (out / name).stat().st_mtime_ns == mtime and (out / name).read_bytes() == data
    assert not _temp_files(out)
    mask = current_umask()
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask for p in out.glob("*.h5"))


# ----------------------------------------------------------------------------------------------- training


def _assert_complete_outputs(out: Path) -> int:
    """Every checkpoint present loads with its .json; every run record matches its checkpoint. -> n records."""
    from mosare.model.checkpoint import load_checkpoint

    for w in out.rglob("*.safetensors"):
        model, meta, _ = load_checkpoint(w)
        assert meta["model"] in ("mosare", "snn")
    records = list(out.rglob("*.result.json"))
    for r in records:
        rec = json.loads(r.read_text())
        assert all(row["auc"] >= 0 for row in rec["rows"])
        assert r.with_name(r.name.replace(".result.json", ".safetensors")).is_file()
    if (out / "metrics.csv").exists():  # only ever complete
        assert len(pd.read_csv(out / "metrics.csv")) == 2 * 2 * 2
    strays = [p for p in out.rglob("*") if p.is_file() and not is_temp_name(p.name)
              and not p.name.endswith((".safetensors", ".json", ".csv", ".md"))]
    assert not strays, strays
    return len(records)


@pytest.mark.slow  # three `python -m mosare experiment` processes: 97-216 s on the shared 2-core machine
def test_experiment_killed_leaves_no_partial_file_and_resumes_to_the_same_metrics(tmp_path: Path) -> None:
    from mosare.synthetic.cohort import write_demo_cohort

    write_demo_cohort(tmp_path / "cohort", n_cases=40, seed=2, slides=False)
    data = ["--rna", str(tmp_path / "cohort" / "rna.csv.gz"), "--slides", str(tmp_path / "cohort" / "slides.csv")]
    killed, reference = tmp_path / "killed", tmp_path / "reference"

    # the uninterrupted reference runs alongside (same arguments, another folder)
    ref = _start(["experiment", *data, "--out", str(reference), *EXPERIMENT_ARGS], tmp_path / "reference.log")
    try:
        proc = _start(["experiment", *data, "--out", str(killed), *EXPERIMENT_ARGS], tmp_path / "run1.log")
        _kill_when(proc, lambda: any(killed.rglob("*.result.json")))
        assert not (killed / "metrics.csv").exists(), "the first run finished before it was killed"
        n_done = _assert_complete_outputs(killed)
        assert 1 <= n_done < 8

        proc = _start(["experiment", *data, "--out", str(killed), *EXPERIMENT_ARGS], tmp_path / "run2.log")
        assert _finish(proc) == 0, (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        rc = _finish(ref)
    assert rc == 0, (tmp_path / "reference.log").read_text()[-3000:]
    log = (tmp_path / "run2.log").read_text()
    assert f"resumed {n_done} of 8 runs" in log, log[-2000:]
    assert _assert_complete_outputs(killed) == 8 and not _temp_files(killed)
    resumed = pd.read_csv(killed / "metrics.csv")
    expected = pd.read_csv(reference / "metrics.csv")
    pd.testing.assert_frame_equal(resumed, expected)
    pd.testing.assert_frame_equal(pd.read_csv(killed / "runs.csv").drop(columns="seconds"),
                                  pd.read_csv(reference / "runs.csv").drop(columns="seconds"))
    assert (killed / "summary.md").read_text() == (reference / "summary.md").read_text()


def _small_config() -> ExperimentConfig:
    return ExperimentConfig(classes=("A", "B"), folds=2, models=("mosare", "snn"), scenarios=("complete",),
                            mask_rates=(0.3,), model=ModelConfig(hidden=8, gene_token_dim=4),
                            train=TrainConfig(epochs=2, batch_size=16, lr=1e-3, align_warmup=1, device="cpu"))


def test_resume_reuses_only_runs_with_the_same_config_and_data(tmp_path: Path) -> None:
    from mosare.train.experiment import run_experiment

    cohort, cfg, out = rna_cohort(n=40, genes=12), _small_config(), tmp_path / "run"
    first = run_experiment(cohort, cfg, out, progress=False)
    assert first.attrs["resumed"] == 0 and len(list(out.rglob("*.result.json"))) == 4
    again = run_experiment(cohort, cfg, out, progress=False)
    assert again.attrs["resumed"] == 4
    pd.testing.assert_frame_equal(first, again)

    # a run whose checkpoint is gone is trained again, the others are reused
    (out / "checkpoints" / "snn" / "complete-0" / "fold1.safetensors").unlink()
    assert run_experiment(cohort, cfg, out, progress=False).attrs["resumed"] == 3

    # another config (here: the number of epochs) or other data reuses nothing
    longer = replace(cfg, train=replace(cfg.train, epochs=3))
    assert run_experiment(cohort, longer, out, progress=False).attrs["resumed"] == 0
    assert run_experiment(cohort, longer, out, progress=False).attrs["resumed"] == 4
    flipped = rna_cohort(n=40, genes=12)
    flipped.labels = 1 - flipped.labels
    assert run_experiment(flipped, longer, out, progress=False).attrs["resumed"] == 0
    assert not _temp_files(out)


@pytest.mark.slow  # ~25 s; parallel = serial is also checked (faster) by tests/train/test_training.py
def test_resume_with_parallel_workers(tmp_path: Path) -> None:
    """Worker processes reuse the records of a serial run, and write records a serial run reuses."""
    from mosare.train.experiment import run_experiment

    cohort, cfg, out = rna_cohort(n=40, genes=12), _small_config(), tmp_path / "run"
    serial = run_experiment(cohort, cfg, out, progress=False)
    (out / "checkpoints" / "mosare" / "complete-0" / "fold0.result.json").unlink()  # as if killed before it
    parallel = run_experiment(cohort, cfg, out, progress=False, workers=2)
    assert parallel.attrs["resumed"] == 3
    pd.testing.assert_frame_equal(serial, parallel, atol=1e-3)
    assert run_experiment(cohort, cfg, out, progress=False).attrs["resumed"] == 4
    assert not _temp_files(out)


def test_changed_epochs_on_the_command_line_does_not_reuse_records(tmp_path: Path) -> None:
    """Through the CLI: ``--epochs`` changes config.json, so the records of the first run are stale."""
    from mosare.cli import main

    cohort_dir = tmp_path / "cohort"
    from mosare.synthetic.cohort import write_demo_cohort

    write_demo_cohort(cohort_dir, n_cases=24, seed=3, slides=False)
    base = ["experiment", "--rna", str(cohort_dir / "rna.csv.gz"), "--label-column", "label", "--classes", "A,B",
            "--out", str(tmp_path / "out"), "--folds", "2", "--hidden", "8", "--models", "snn",
            "--scenarios", "complete", "--device", "cpu", "--workers", "1"]
    assert main([*base, "--epochs", "2"]) == 0
    cfg1 = json.loads((tmp_path / "out" / "config.json").read_text())
    rec1 = json.loads((tmp_path / "out" / "checkpoints" / "snn" / "complete-0" / "fold0.result.json").read_text())
    assert main([*base, "--epochs", "3"]) == 0
    cfg2 = json.loads((tmp_path / "out" / "config.json").read_text())
    rec2 = json.loads((tmp_path / "out" / "checkpoints" / "snn" / "complete-0" / "fold0.result.json").read_text())
    assert cfg1["train"]["epochs"] == 2 and cfg2["train"]["epochs"] == 3
    assert rec1["fingerprint"] != rec2["fingerprint"] and rec2["runs"][0]["epochs_run"] == 3
