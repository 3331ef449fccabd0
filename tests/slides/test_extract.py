"""Patch-feature extraction: encoders, ``mosare extract`` end to end on real slides, errors, resume, sharding."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT, require_data
from mosare.cli import main
from mosare.errors import InputError, MosareError
from mosare.io.features import read_features, write_features_h5
from mosare.io.slides import open_slide
from mosare.slides import encoders as enc_mod
from mosare.slides import extract as ext_mod
from mosare.slides.encoders import get_encoder, list_encoders, load_state_dict_file
from mosare.slides.discovery import collect_slides, shard
from mosare.slides.extract import finished_encoder
from mosare.slides.tissue import MissingMppWarning, tile_slide

CMU = "slides/cmu-1-small-region.svs"
TCGA = "slides/tcga-cr-7395-01a-01-ts1.svs"
BAD = ("broken.svs", "unopenable.tiff", "unreadable.svs")
FAST = ["--batch-size", "32", "--workers", "1", "--device", "cpu"]


def _link(folder: Path, *sources: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for src in sources:
        (folder / src.name).symlink_to(src)
    return folder


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.run([sys.executable, "-m", "mosare", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def _lines(text: str) -> list[str]:
    return [part.strip() for part in re.split(r"[\r\n]", text) if part.strip()]


# ----------------------------------------------------------------------------------------------- encoders


def test_registry_and_cheap_encoders() -> None:
    names = [e.name for e in list_encoders()]
    assert {"uni", "handcrafted", "random-resnet18"} <= set(names)
    assert get_encoder("uni").dim == 1024 and get_encoder("uni").pathology_pretrained
    with pytest.raises(MosareError, match="choose from .*handcrafted"):
        get_encoder("nope")
    state = torch.random.get_rng_state()
    for name in ("handcrafted", "random-resnet18"):
        spec = get_encoder(name)
        assert not spec.pathology_pretrained and spec.provenance.startswith("not pathology-pretrained")
        x = torch.rand(2, 3, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(1))
        with torch.inference_mode():
            a, b = spec.build("cpu")(x), spec.build("cpu")(x)
        assert a.shape == (2, spec.dim) and torch.isfinite(a).all()
        torch.testing.assert_close(a, b)  # seeded: the same random weights every build
    assert torch.equal(torch.random.get_rng_state(), state)  # building does not move the caller's RNG


def test_weights_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    save_file(src.state_dict(), tmp_path / "w.safetensors")
    load_state_dict_file(dst, tmp_path / "w.safetensors", "t")
    torch.testing.assert_close(dst.weight, src.weight)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "w.pth")
    load_state_dict_file(torch.nn.Linear(3, 2), tmp_path / "w.pth", "t")
    torch.save({"weight": torch.zeros(5, 5)}, tmp_path / "bad.bin")
    with pytest.raises(InputError, match="does not match"):
        load_state_dict_file(torch.nn.Linear(3, 2), tmp_path / "bad.bin", "t")
    torch.save({"weight": object()}, tmp_path / "pickle.bin")  # arbitrary pickles are refused (weights_only)
    with pytest.raises(InputError, match="cannot load weights"):
        load_state_dict_file(torch.nn.Linear(3, 2), tmp_path / "pickle.bin", "t")


def test_uni_without_weights_fails_fast(tmp_path: Path, monkeypatch, capsys) -> None:
    slides = _link(tmp_path / "s", require_data(CMU))
    monkeypatch.delenv("MOSARE_UNI_WEIGHTS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    assert main(["extract", "--slides", str(slides), "--out", str(tmp_path / "o"), "--encoder", "uni"]) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert "encoder uni needs its weights" in err and "huggingface.co/MahmoodLab/UNI" in err
    assert "--encoder-weights PATH" in err and "MOSARE_UNI_WEIGHTS" in err and len(_lines(err)) == 1
    # Not flagged offline: a 1 s network probe (or, with network, the missing token) still fails at once.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(enc_mod, "_hf_token", lambda: None)
    start = time.perf_counter()
    with pytest.raises(MosareError, match="needs its weights"):
        get_encoder("uni").build("cpu")
    assert time.perf_counter() - start < 5


def test_list_encoders(capsys) -> None:
    assert main(["extract", "--list-encoders"]) == 0
    out = capsys.readouterr().out
    assert "not pathology-pretrained" in out
    for e in list_encoders():
        assert re.search(rf"^{re.escape(e.name)}\s+{e.dim}\s+(yes|no)\s", out, re.M)


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def extracted(tmp_path_factory) -> Path:
    """``mosare extract`` over a folder holding cmu-1 and the TCGA slide (no MPP metadata)."""
    root = tmp_path_factory.mktemp("e2e")
    slides = _link(root / "slides", require_data(CMU), require_data(TCGA))
    assert main(["extract", "--slides", str(slides), "--out", str(root / "out"), *FAST]) == 0
    return root / "out"


def _check_output(h5: Path, slide_path: Path, mpp: float | None) -> dict:
    got = read_features(h5)
    assert got.features.dtype == np.float32 and got.features.shape[1] == 64 and np.isfinite(got.features).all()
    with open_slide(slide_path) as slide, warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingMppWarning)
        grid = tile_slide(slide, mpp_override=mpp)
    np.testing.assert_array_equal(got.coords, grid.coords)
    assert got.attrs["patch_size_level0"] == grid.patch_size_level0 and got.attrs["read_level"] == grid.read_level
    for key in ("encoder", "encoder_pathology_pretrained", "patch_size", "target_mpp", "slide_mpp", "mpp_source",
                "level0_magnification"):
        assert key in got.attrs, key
    assert got.attrs["encoder"] == "handcrafted" and got.attrs["encoder_pathology_pretrained"] is False
    # Every tile lies on tissue: its mask window is covered, and well-covered tiles have tissue at the centre.
    d, size = grid.mask_downsample, grid.patch_size_level0
    for x, y in got.coords:
        window = grid.mask[int(y / d): int(np.ceil((y + size) / d)), int(x / d): int(np.ceil((x + size) / d))]
        assert window.mean() >= 0.25 - 0.02
    centres = ((got.coords + size / 2) / d).astype(int)
    on = grid.mask[np.clip(centres[:, 1], 0, grid.mask.shape[0] - 1), np.clip(centres[:, 0], 0, grid.mask.shape[1] - 1)]
    assert on[grid.tissue_fraction >= 0.75].mean() >= 0.9
    assert (h5.parent / "qc" / f"{h5.stem}.png").is_file()
    return got.attrs


def test_extract_end_to_end(extracted: Path) -> None:
    assert sorted(p.name for p in extracted.glob("*.h5")) == ["cmu-1-small-region.h5", "tcga-cr-7395-01a-01-ts1.h5"]
    cmu = _check_output(extracted / "cmu-1-small-region.h5", require_data(CMU), None)
    assert cmu["mpp_source"] == "metadata" and cmu["level0_magnification"] == pytest.approx(10 / 0.499, rel=1e-3)
    tcga = _check_output(extracted / "tcga-cr-7395-01a-01-ts1.h5", require_data(TCGA), None)
    assert tcga["mpp_source"] == "assumed" and tcga["slide_mpp"] == 0.5
    assert not list(extracted.glob(".*.tmp"))  # atomic writes leave no temporary file


def test_extract_mpp_override_from_csv(tmp_path: Path) -> None:
    tcga = require_data(TCGA)
    _link(tmp_path / "data", tcga)
    (tmp_path / "slides.csv").write_text(f"slide_path,patient\ndata/{tcga.name},p1\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["extract", "--slides", str(tmp_path / "slides.csv"), "--out", str(out), "--mpp", "0.25", *FAST]) == 0
    attrs = _check_output(out / f"{tcga.stem}.h5", tcga, 0.25)
    assert attrs["mpp_source"] == "override" and attrs["slide_mpp"] == 0.25 and attrs["level0_magnification"] == 40
    assert attrs["patch_size_level0"] == 512 and attrs["read_level"] == 1


# ----------------------------------------------------------------------------------------------- errors, resume


@pytest.fixture()
def batch(tmp_path: Path) -> Path:
    slides = require_data("slides")
    return _link(tmp_path / "batch", require_data(CMU), *(slides / name for name in BAD))


def test_skip_errors_then_resume(batch: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    proc = _run_cli("extract", "--slides", str(batch), "--out", str(out), "--skip-errors", *FAST)
    assert proc.returncode == 1, proc.stderr
    lines = _lines(proc.stderr)
    for name in BAD:
        assert len([line for line in lines if line.startswith(f"{name}: ")]) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    h5 = out / "cmu-1-small-region.h5"
    assert read_features(h5).n_patches > 0
    mtime = h5.stat().st_mtime_ns

    assert main(["extract", "--slides", str(batch), "--out", str(out), "--skip-errors", *FAST]) == 1
    err = capsys.readouterr().err
    assert "0 extracted, 1 already done, 3 failed" in err
    assert h5.stat().st_mtime_ns == mtime


def test_first_error_stops_with_exit_2(batch: Path, tmp_path: Path) -> None:
    proc = _run_cli("extract", "--slides", str(batch), "--out", str(tmp_path / "out"), *FAST)
    assert proc.returncode == 2
    errors = [line for line in _lines(proc.stderr) if "error" in line]
    assert errors == [errors[0]] and errors[0].startswith("mosare: error: broken.svs: ")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "cmu-1-small-region.h5").exists()  # sorted order: broken.svs came first


# ----------------------------------------------------------------------------------------------- inputs, sharding


def test_collect_slides(tmp_path: Path) -> None:
    cmu = require_data(CMU)
    dcm = [require_data(f"slides/boxes_{i}.dcm") for i in (0, 1)]
    root = _link(tmp_path / "root", cmu)
    _link(root / "case7", *dcm)  # a DICOM series: the folder is one slide
    (root / "notes.txt").write_text("not a slide")
    assert collect_slides(root) == [root / "case7", root / cmu.name]
    (tmp_path / "dup").mkdir()
    (tmp_path / "dup" / cmu.name).symlink_to(cmu)
    with pytest.raises(InputError, match="two slides would write"):
        collect_slides([root, tmp_path / "dup"])
    (tmp_path / "t.csv").write_text("path\nx.svs\n")
    with pytest.raises(InputError, match="slide_path"):
        collect_slides(tmp_path / "t.csv")
    with pytest.raises(InputError, match="no slides found"):
        collect_slides(_link(tmp_path / "empty"))


def test_finished_encoder(tmp_path: Path) -> None:
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    assert finished_encoder(tmp_path / "junk.h5") is None and finished_encoder(tmp_path / "none.h5") is None
    write_features_h5(tmp_path / "ok.h5", np.ones((2, 4), np.float32), np.zeros((2, 2)), {"encoder": "uni"})
    assert finished_encoder(tmp_path / "ok.h5") == "uni"


def test_torchrun_sharding_by_env(tmp_path: Path, monkeypatch) -> None:
    cmu = require_data(CMU)
    folder = tmp_path / "three"
    folder.mkdir()
    for stem in ("a", "b", "c"):
        (folder / f"{stem}.svs").symlink_to(cmu)
    seen: list[str] = []

    def fake_extract(path, out_dir, encoder, **kwargs):
        seen.append(Path(path).name)
        return write_features_h5(Path(out_dir) / f"{Path(path).stem}.h5", np.ones((1, 64), np.float32),
                                 np.zeros((1, 2)), {"encoder": encoder.spec.name})

    monkeypatch.setattr(ext_mod, "extract_slide", fake_extract)
    monkeypatch.setenv("WORLD_SIZE", "2")
    done = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        report = ext_mod.run_extract(folder, tmp_path / "out", "handcrafted", device="cpu", progress=False)
        done[rank] = sorted(p.name for p in report.done)
        assert report.world_size == 2 and report.rank == rank
    assert done == {0: ["a.h5", "c.h5"], 1: ["b.h5"]} and sorted(seen) == ["a.svs", "b.svs", "c.svs"]
    assert shard([Path("z"), Path("y"), Path("x")], 1, 2)[0] == [Path("y")]
    with pytest.raises(MosareError, match="invalid rank"):
        shard([Path("x")], 2, 2)
