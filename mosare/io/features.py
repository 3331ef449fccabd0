"""Per-slide patch features: read TRIDENT / CLAM / own files, write our own HDF5.

On-disk layout written by :func:`write_features_h5` (the TRIDENT / CLAM convention):

- dataset ``features``: float32 ``[N, D]``, one row per patch;
- dataset ``coords``: int64 ``[N, 2]``, the (x, y) top-left corner of each patch in level-0 pixels;
- attributes (encoder, patch_size, patch_size_level0, mpp, target_magnification, ...) on the file root,
  the patch-geometry ones also on the ``coords`` dataset, where TRIDENT keeps them.

:func:`read_features` also accepts TRIDENT files whose ``features`` is ``[1, N, D]`` and CLAM ``pt_files``
(a ``[N, D]`` tensor saved with ``torch.save``; loaded with ``weights_only=True``, never unpickled).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from mosare.errors import InputError
from mosare.io.atomic import atomic_path

PT_SUFFIXES = (".pt", ".pth")
MAX_PATCHES = 1_000_000
"""Most patches read from one feature file (a 40x gigapixel slide has a few hundred thousand)."""
MAX_FEATURE_BYTES = 8 * 2**30
"""Largest feature matrix read (as float32), checked on the HDF5 header before reading."""
_COORD_ATTRS = (
    "patch_size",
    "patch_size_level0",
    "patch_level",
    "level0_magnification",
    "target_magnification",
    "mpp",
    "level0_mpp",
    "overlap",
)


@dataclass
class SlideFeatures:
    """Patch features of one slide.

    features: float32 ``[N, D]``; coords: int64 ``[N, 2]`` (x, y in level-0 px) or ``None`` when the
    source has none (CLAM .pt); attrs: metadata merged from the file, the ``features`` and ``coords`` datasets.
    """

    features: np.ndarray
    coords: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def n_patches(self) -> int:
        return int(self.features.shape[0])

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


# ----------------------------------------------------------------------------------------------- writing


def _attr_value(value: Any) -> Any:
    """An HDF5-storable version of an attribute value (None is dropped by the caller)."""
    if isinstance(value, (str, bool, int, float, np.generic)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            return arr
    return json.dumps(value, default=str)


def write_features_h5(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray | None = None,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write ``features`` ``[N, D]`` (stored float32) and ``coords`` ``[N, 2]`` (stored int64, level-0 px)
    to ``path`` atomically. ``attrs`` (e.g. encoder, patch_size, patch_size_level0, mpp,
    target_magnification) go on the file root; patch-geometry keys also on ``coords``. Returns ``path``."""
    path = Path(path)
    feats = np.asarray(features, dtype=np.float32)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise InputError(f"features for {path} must be a non-empty [N, D] array, got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise InputError(f"features for {path} contain NaN or inf values")
    xy = None
    if coords is not None:
        xy = np.asarray(coords)
        if xy.ndim != 2 or xy.shape != (feats.shape[0], 2):
            raise InputError(f"coords for {path} must have shape [{feats.shape[0]}, 2], got {xy.shape}")
        xy = np.rint(xy).astype(np.int64)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=feats)
            cds = f.create_dataset("coords", data=xy) if xy is not None else None
            for key, value in (attrs or {}).items():
                if value is None:
                    continue
                stored = _attr_value(value)
                f.attrs[key] = stored
                if cds is not None and key in _COORD_ATTRS:
                    cds.attrs[key] = stored
    return path


# ----------------------------------------------------------------------------------------------- reading


def _plain(value: Any) -> Any:
    """Convert an HDF5 attribute to a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SO":
            return [_plain(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _squeeze_leading(arr: np.ndarray, ndim: int) -> np.ndarray:
    while arr.ndim > ndim and arr.shape[0] == 1:
        arr = arr[0]
    return arr


def _validate(path: Path, feats: np.ndarray, coords: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    feats = _squeeze_leading(feats, 2)
    if feats.ndim != 2:
        raise InputError(f"{path}: features must be [N, D] (or [1, N, D]), got shape {tuple(feats.shape)}")
    if feats.dtype.kind not in "biuf":
        raise InputError(f"{path}: features must be numeric, got dtype {feats.dtype}")
    if feats.shape[0] == 0:
        raise InputError(f"{path}: features hold no patches (N = 0)")
    if feats.shape[1] == 0:
        raise InputError(f"{path}: features have dimension 0")
    feats = feats.astype(np.float32, copy=False)
    finite = np.isfinite(feats)
    if not finite.all():
        n_nan, n_inf = int(np.isnan(feats).sum()), int(np.isinf(feats).sum())
        row = int(np.nonzero(~finite.all(axis=1))[0][0])
        raise InputError(f"{path}: features contain NaN or inf values ({n_nan:,} NaN, {n_inf:,} inf; "
                         f"first in patch {row} of {feats.shape[0]:,})")
    if coords is not None:
        coords = _squeeze_leading(coords, 2)
        if coords.ndim != 2 or coords.shape[1] < 2:
            raise InputError(f"{path}: coords must be [N, 2], got shape {tuple(coords.shape)}")
        if coords.shape[0] != feats.shape[0]:
            raise InputError(f"{path}: {coords.shape[0]} coords for {feats.shape[0]} feature rows")
        if coords.dtype.kind not in "biuf" or not np.isfinite(coords).all():
            raise InputError(f"{path}: coords must be finite numbers")
        coords = np.rint(coords[:, :2]).astype(np.int64)
    return feats, coords


def _check_declared(path: Path, fds: h5py.Dataset) -> None:
    """Refuse a features dataset whose declared type or size is wrong, before reading it (a small file can
    declare a huge dataset)."""
    if fds.dtype.kind not in "biuf":
        raise InputError(f"{path}: features must be numeric, got dtype {fds.dtype}")
    shape = tuple(int(n) for n in fds.shape)
    lead = shape[:-2] if len(shape) > 2 else ()
    if len(shape) < 2 or any(n != 1 for n in lead):
        raise InputError(f"{path}: features must be [N, D] (or [1, N, D]), got shape {shape}")
    n, d = shape[-2], shape[-1]
    if n > MAX_PATCHES:
        raise InputError(f"{path}: too many patches ({n:,}; limit {MAX_PATCHES:,})")
    if n * d * 4 > MAX_FEATURE_BYTES:
        raise InputError(f"{path}: features too large ({n:,} x {d:,} values; limit {MAX_FEATURE_BYTES // 2**30} GiB "
                         "as float32)")


def _read_h5(path: Path) -> SlideFeatures:
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file (expected a TRIDENT/CLAM .h5 or a CLAM .pt)")
    try:
        with h5py.File(path, "r") as f:
            if "features" not in f or not isinstance(f["features"], h5py.Dataset):
                raise InputError(f"{path}: no 'features' dataset (found: {', '.join(sorted(f.keys())) or 'nothing'})")
            fds = f["features"]
            _check_declared(path, fds)  # shape and size from the header, before any value is read
            feats = fds[()]
            attrs: dict[str, Any] = {}
            coords = None
            if "coords" in f and isinstance(f["coords"], h5py.Dataset):
                cds = f["coords"]
                if cds.size > 4 * MAX_PATCHES:
                    raise InputError(f"{path}: coords too large ({cds.shape}; limit {MAX_PATCHES:,} patches)")
                coords = cds[()]
                attrs.update({k: _plain(v) for k, v in cds.attrs.items()})
            attrs.update({k: _plain(v) for k, v in fds.attrs.items()})
            attrs.update({k: _plain(v) for k, v in f.attrs.items()})
    except InputError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(f"{path}: cannot read HDF5 features: {err}") from None
    feats, coords = _validate(path, np.asarray(feats), None if coords is None else np.asarray(coords))
    return SlideFeatures(features=feats, coords=coords, attrs=attrs, path=path)


def _read_pt(path: Path) -> SlideFeatures:
    import torch  # heavy; only needed for CLAM pt_files

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on the pickle protocol: not the user's concern
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any load failure is a bad input file
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "weights only load failed" in msg.lower():  # torch's text suggests weights_only=False: never
            msg = "it holds pickled objects other than tensors, which are refused (they could run code)"
        raise InputError(f"{path}: cannot load as a tensor file (torch.load, weights_only): {msg[:200]}") from None
    coords = None
    if isinstance(obj, dict):
        if "features" not in obj:
            raise InputError(f"{path}: .pt file holds a dict without a 'features' tensor")
        coords = obj.get("coords")
        obj = obj["features"]
    if not isinstance(obj, torch.Tensor):
        raise InputError(f"{path}: .pt file must hold a [N, D] tensor, got {type(obj).__name__}")
    feats = obj.detach().to(torch.float32).numpy() if obj.is_floating_point() else obj.detach().numpy()
    if isinstance(coords, torch.Tensor):
        coords = coords.detach().numpy()
    elif coords is not None:
        coords = np.asarray(coords)
    feats, coords = _validate(path, feats, coords)
    return SlideFeatures(features=feats, coords=coords, attrs={}, path=path)


def read_features(path: str | Path) -> SlideFeatures:
    """Read one slide's patch features from our/TRIDENT/CLAM ``.h5`` or a CLAM ``.pt``.

    Returns features float32 ``[N, D]``, coords int64 ``[N, 2]`` (or ``None``) and the attributes.
    Raises :class:`InputError` (one line naming the file) for a missing or unreadable file, a missing
    ``features`` dataset, a wrong shape, NaN/inf values, zero patches or a coords/features length mismatch.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"features file not found: {path}")
    if not path.is_file():
        raise InputError(f"features path is not a file: {path}")
    if path.suffix.lower() in PT_SUFFIXES:
        return _read_pt(path)
    return _read_h5(path)
