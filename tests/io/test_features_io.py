"""Reading and writing per-slide patch features (own / TRIDENT / CLAM layouts)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mosare.errors import InputError
from mosare.io.features import SlideFeatures, read_features, write_features_h5


def _grid(n: int) -> np.ndarray:
    return np.stack([np.arange(n) % 10, np.arange(n) // 10], axis=1).astype(np.int64) * 256


def test_h5_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(37, 16)).astype(np.float32)
    coords = _grid(37)
    attrs = {"encoder": "uni_v1", "patch_size": 256, "patch_size_level0": 512, "mpp": 0.25, "target_magnification": 20}
    path = write_features_h5(tmp_path / "sub" / "slide.h5", feats, coords, attrs)
    assert path.exists()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    sf = read_features(path)
    assert isinstance(sf, SlideFeatures)
    assert sf.features.dtype == np.float32 and sf.features.shape == (37, 16)
    np.testing.assert_array_equal(sf.features, feats)
    assert sf.coords is not None and sf.coords.dtype == np.int64
    np.testing.assert_array_equal(sf.coords, coords)
    assert sf.attrs["encoder"] == "uni_v1"
    assert sf.attrs["patch_size_level0"] == 512
    assert sf.attrs["mpp"] == pytest.approx(0.25)
    assert sf.n_patches == 37 and sf.dim == 16
    with h5py.File(path, "r") as f:  # TRIDENT keeps the patch geometry on the coords dataset
        assert f["coords"].attrs["patch_size_level0"] == 512


def test_trident_layout_with_leading_batch_axis(tmp_path: Path) -> None:
    path = tmp_path / "TCGA-XX-0001.h5"
    feats = np.random.default_rng(1).normal(size=(1, 12, 8)).astype(np.float16)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=feats)
        cds = f.create_dataset("coords", data=_grid(12).astype(np.int32))
        cds.attrs["patch_size"] = 256
        cds.attrs["patch_size_level0"] = 512
        cds.attrs["target_magnification"] = 20
        cds.attrs["name"] = b"TCGA-XX-0001"
    sf = read_features(path)
    assert sf.features.shape == (12, 8) and sf.features.dtype == np.float32
    np.testing.assert_allclose(sf.features, feats[0].astype(np.float32))
    assert sf.coords.shape == (12, 2) and sf.coords.dtype == np.int64
    assert sf.attrs["patch_size_level0"] == 512 and sf.attrs["target_magnification"] == 20
    assert sf.attrs["name"] == "TCGA-XX-0001"


def test_clam_h5_files(tmp_path: Path) -> None:
    path = tmp_path / "h5_files" / "slide_1.h5"
    path.parent.mkdir()
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.ones((5, 4), dtype=np.float32))
        cds = f.create_dataset("coords", data=_grid(5))
        cds.attrs["patch_level"] = 0
        cds.attrs["patch_size"] = 256
    sf = read_features(path)
    assert sf.features.shape == (5, 4) and sf.attrs["patch_level"] == 0


def test_clam_pt_files(tmp_path: Path) -> None:
    path = tmp_path / "pt_files" / "slide_1.pt"
    path.parent.mkdir()
    tensor = torch.randn(9, 6)
    torch.save(tensor, path)
    sf = read_features(path)
    assert sf.coords is None
    assert sf.features.dtype == np.float32 and sf.features.shape == (9, 6)
    np.testing.assert_allclose(sf.features, tensor.numpy())


class NotATensor:
    """An arbitrary pickled object: weights_only loading must refuse it."""


def test_pt_with_pickled_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"features": NotATensor()}, path)
    with pytest.raises(InputError, match="evil.pt"):
        read_features(path)


def _h5(path: Path, **datasets: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        for name, data in datasets.items():
            f.create_dataset(name, data=data)
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "not found"),
        ("not_hdf5", "not an HDF5 file"),
        ("no_features", "no 'features' dataset"),
        ("wrong_ndim", "must be \\[N, D\\]"),
        ("nan", "NaN or inf"),
        ("inf", "NaN or inf"),
        ("empty", "N = 0"),
        ("coords_mismatch", "4 coords for 5 feature rows"),
        ("pt_wrong_ndim", "must be \\[N, D\\]"),
        ("pt_garbage", "cannot load"),
    ],
)
def test_errors(tmp_path: Path, case: str, message: str) -> None:
    good = np.zeros((5, 3), dtype=np.float32)
    path = tmp_path / f"{case}.h5"
    if case == "not_hdf5":
        path.write_text("patient_id,features\n")
    elif case == "no_features":
        _h5(path, coords=_grid(5))
    elif case == "wrong_ndim":
        _h5(path, features=np.zeros((2, 5, 3), dtype=np.float32))
    elif case == "nan":
        bad = good.copy()
        bad[2, 1] = np.nan
        _h5(path, features=bad)
    elif case == "inf":
        bad = good.copy()
        bad[0, 0] = np.inf
        _h5(path, features=bad)
    elif case == "empty":
        _h5(path, features=np.zeros((0, 3), dtype=np.float32))
    elif case == "coords_mismatch":
        _h5(path, features=good, coords=_grid(4))
    elif case == "pt_wrong_ndim":
        path = tmp_path / "x.pt"
        torch.save(torch.zeros(3), path)
    elif case == "pt_garbage":
        path = tmp_path / "x.pt"
        path.write_bytes(b"this is not a torch file")
    with pytest.raises(InputError, match=message) as info:
        read_features(path)
    text = str(info.value)
    assert path.name in text
    assert "\n" not in text


def test_write_rejects_bad_arrays(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        write_features_h5(tmp_path / "a.h5", np.zeros((0, 4)), None, {})
    with pytest.raises(InputError):
        write_features_h5(tmp_path / "a.h5", np.zeros((3, 4)), np.zeros((2, 2)), {})
    with pytest.raises(InputError):
        write_features_h5(tmp_path / "a.h5", np.full((3, 4), np.nan), None, {})
    assert not (tmp_path / "a.h5").exists()
