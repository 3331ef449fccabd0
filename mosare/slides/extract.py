"""Patch-feature extraction: slide -> tissue tile grid -> encoder -> ``<out>/<slide>.h5`` (TRIDENT/CLAM layout).

Pipeline per slide: :func:`mosare.slides.tissue.tile_slide` picks tissue tiles on a thumbnail; a DataLoader
whose workers each open their own OpenSlide handle decodes raw ``uint8`` tiles; on the device the tiles are
resized once (antialiased bilinear, straight to the encoder's input size), normalised and encoded in batches.
Features are written atomically, so an interrupted run leaves no partial file and resumes where it stopped.

Distributed runs (``torchrun``) need no process group: each rank takes ``sorted(slides)[rank::world_size]``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from mosare.errors import InputError, MosareError
from mosare.io.atomic import remove_stale_temps
from mosare.io.features import write_features_h5
from mosare.io.slides import open_slide
from mosare.slides.discovery import collect_slides, shard, slide_stem
from mosare.slides.encoders import Encoder, get_encoder
from mosare.slides.tiles import SLIDE_ERRORS, TileDataset, make_loader
from mosare.slides.tissue import MissingMppWarning, TileGrid, save_qc_thumbnail, tile_slide
from mosare.types import resolve_device

THUMB_MAX = 2048


# ----------------------------------------------------------------------------------------------- encoding




@dataclass
class LoadedEncoder:
    """An encoder spec with its module built on ``device``; :meth:`encode` maps raw tiles to features."""

    spec: Encoder
    model: nn.Module
    device: torch.device
    compiled: bool = False
    random_weights: bool = False
    _scale: torch.Tensor = field(init=False, repr=False)
    _shift: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        mean = torch.tensor(self.spec.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * std)  # (x / 255 - mean) / std as one multiply-add
        self._shift = -mean / std

    def preprocess(self, tiles: torch.Tensor) -> torch.Tensor:
        """``[B, 3, s, s]`` uint8 (any device) -> ``[B, 3, S, S]`` float32 normalised, channels-last on the device."""
        x = tiles.to(self.device, non_blocking=True).float()
        size = self.spec.input_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return torch.addcmul(self._shift, x, self._scale).contiguous(memory_format=torch.channels_last)

    @torch.inference_mode()
    def encode(self, tiles: torch.Tensor) -> torch.Tensor:
        """``[B, 3, s, s]`` uint8 tiles -> ``[B, dim]`` float32 features on the device."""
        x = self.preprocess(tiles)
        use_bf16 = self.device.type == "cuda" and self.spec.autocast
        with torch.autocast("cuda", dtype=torch.bfloat16) if use_bf16 else contextlib.nullcontext():
            out = self.model(x)
        return out.float()


def load_encoder(name: str | Encoder, device: torch.device, weights: str | Path | None = None, *,
                 compile: bool = False, random_weights: bool = False) -> LoadedEncoder:
    """Build encoder ``name`` on ``device`` (channels-last on CUDA), optionally ``torch.compile``d."""
    spec = get_encoder(name) if isinstance(name, str) else name
    model = spec.build(device, weights, random_weights=random_weights)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return LoadedEncoder(spec, model, device, compiled=compile, random_weights=random_weights)


@contextlib.contextmanager
def cpu_threads(device: torch.device, workers: int) -> Iterator[None]:
    """On CPU, leave one core per decoding worker: torch threads = cores - workers (at least 1), restored after.
    Oversubscribed intra-op threads wait on descheduled peers and halve the end-to-end rate."""
    if device.type != "cpu" or workers <= 0:
        yield
        return
    before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, min(before, cores - workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def encode_tiles(loader: DataLoader, encoder: LoadedEncoder, *, name: str, progress: bool = True,
                 on_progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Features ``[N, dim]`` float32 of every tile of ``loader``, in order. Raises :class:`InputError` on the
    first tile that could not be decoded. ``on_progress(done, total)`` is called after every batch."""
    total = len(loader.dataset)  # type: ignore[arg-type]
    batch_size = loader.batch_size or 1
    chunks: list[torch.Tensor] = []
    # disable=None: a bar only on a terminal, so logs redirected to files stay clean
    with tqdm(total=total, unit="tile", desc=name, leave=False, disable=None if progress else True,
              dynamic_ncols=True) as bar:
        for tiles, errors in loader:
            if errors:
                raise InputError(errors[0])
            n = tiles.shape[0]
            if encoder.compiled and n < batch_size:  # one static shape: no recompilation for the last batch
                tiles = torch.cat([tiles, tiles[-1:].expand(batch_size - n, -1, -1, -1)])
            chunks.append(encoder.encode(tiles)[:n])
            bar.update(n)
            if on_progress is not None:
                on_progress(bar.n, total)
    return torch.cat(chunks).cpu().numpy()


# ----------------------------------------------------------------------------------------------- one slide


def _feature_attrs(grid: TileGrid, encoder: LoadedEncoder, slide_name: str) -> dict:
    """TRIDENT / CLAM compatible attributes of one slide's feature file."""
    mag = None if grid.slide_mpp is None else round(10.0 / grid.slide_mpp, 4)
    return {
        "encoder": encoder.spec.name,
        "encoder_dim": encoder.spec.dim,
        "encoder_pathology_pretrained": bool(encoder.spec.pathology_pretrained and not encoder.random_weights),
        "encoder_provenance": encoder.spec.provenance,
        "patch_size": int(grid.patch_size),
        "patch_size_level0": int(grid.patch_size_level0),
        "patch_level": int(grid.read_level),
        "read_level": int(grid.read_level),
        "read_size": int(grid.read_size),
        "target_mpp": float(grid.target_mpp),
        "target_magnification": round(10.0 / float(grid.target_mpp), 4),
        "slide_mpp": None if grid.slide_mpp is None else float(grid.slide_mpp),
        "mpp": None if grid.slide_mpp is None else float(grid.slide_mpp),
        "mpp_source": str(grid.mpp_source),
        "level0_magnification": mag,
        "overlap": 0,
        "name": slide_name,
    }


def _grid_and_qc(path: Path, *, patch_size: int, target_mpp: float, mpp_override: float | None,
                 min_tissue: float, qc_path: Path | None) -> TileGrid:
    """Tile grid of the slide; writes the QC thumbnail. :class:`InputError` when no tile has tissue.
    A missing-MPP warning is logged as one line."""
    with open_slide(path) as slide:
        thumb = slide.thumbnail(THUMB_MAX)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", MissingMppWarning)
            grid = tile_slide(slide, patch_size=patch_size, target_mpp=target_mpp, mpp_override=mpp_override,
                              min_tissue=min_tissue, thumb_max=THUMB_MAX, thumb_rgb=thumb)
        for w in caught:
            if issubclass(w.category, MissingMppWarning):
                _log(str(w.message))
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if qc_path is not None:
        save_qc_thumbnail(grid, thumb, qc_path)
    if len(grid.coords) == 0:
        raise InputError(f"{path.name}: no tissue found (no {patch_size}-px tile has >= {min_tissue:.0%} tissue)")
    return grid


def extract_slide(path: str | Path, out_dir: str | Path, encoder: LoadedEncoder, *, batch_size: int = 64,
                  workers: int = 2, mpp_override: float | None = None, patch_size: int = 256,
                  target_mpp: float = 0.5, min_tissue: float = 0.25, qc_dir: str | Path | None = None,
                  progress: bool = True, prefetch_factor: int = 4,
                  on_progress: Callable[[int, int], None] | None = None) -> Path:
    """Extract one slide's patch features to ``<out_dir>/<stem>.h5`` (atomic) and its QC PNG to ``<qc_dir>/<stem>.png``.

    Writes ``features`` [N, dim] float32 and ``coords`` [N, 2] int64 (level-0 top-left), plus attributes
    (encoder, patch geometry, MPP). The device is ``encoder.device``. Returns the feature file's path.
    Raises :class:`InputError` for an unreadable slide, a decode failure or a slide without tissue.
    """
    path, out_dir = Path(path), Path(out_dir)
    stem = slide_stem(path)
    qc_path = None if qc_dir is None else Path(qc_dir) / f"{stem}.png"
    grid = _grid_and_qc(path, patch_size=patch_size, target_mpp=target_mpp, mpp_override=mpp_override,
                        min_tissue=min_tissue, qc_path=qc_path)
    dataset = TileDataset(path, grid.coords, grid.read_level, grid.read_size)
    loader = make_loader(dataset, batch_size=batch_size, workers=workers, device=encoder.device,
                         prefetch_factor=prefetch_factor)
    try:
        feats = encode_tiles(loader, encoder, name=stem, progress=progress, on_progress=on_progress)
    finally:
        dataset.close()
        del loader  # shuts persistent workers down now, not at garbage collection
    return write_features_h5(out_dir / f"{stem}.h5", feats, grid.coords, _feature_attrs(grid, encoder, path.name))


def _storage_fits(ds: h5py.Dataset, file_size: int) -> bool:
    """Whether a contiguous dataset's bytes lie inside the file (a truncated copy fails this)."""
    offset = ds.id.get_offset()
    return offset is None or offset + ds.id.get_storage_size() <= file_size


def finished_encoder(h5_path: Path) -> str | None:
    """The encoder named in a complete feature file (``""`` if unnamed); ``None`` if absent, unreadable,
    truncated or not a complete features + coords pair (such a file is extracted again)."""
    if not h5_path.is_file():
        return None
    try:
        size = h5_path.stat().st_size
        with h5py.File(h5_path, "r") as f:
            feats, coords = f.get("features"), f.get("coords")
            if not isinstance(feats, h5py.Dataset) or not isinstance(coords, h5py.Dataset):
                return None
            if feats.ndim != 2 or feats.shape[0] == 0 or coords.shape != (feats.shape[0], 2):
                return None
            if not (_storage_fits(feats, size) and _storage_fits(coords, size)):
                return None
            name = f.attrs.get("encoder", "")
            return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - any damage (h5py raises OSError, KeyError, RuntimeError, ...) means redo
        return None


@dataclass
class ExtractReport:
    """Outcome of :func:`run_extract` on this rank: written files, slides skipped as already done, failures."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)
    rank: int = 0
    world_size: int = 1

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def summary(self) -> str:
        return (f"{len(self.done)} extracted, {len(self.skipped)} already done, {len(self.failed)} failed"
                + (f" (rank {self.rank} of {self.world_size})" if self.world_size > 1 else ""))


def _one_line(name: str, err: BaseException) -> str:
    msg = " ".join(str(err).split()) or type(err).__name__
    return msg if msg.startswith(name) else f"{name}: {msg}"


def _log(message: str) -> None:
    tqdm.write(message, file=sys.stderr)


def run_extract(slides: str | Path | Sequence[str | Path], out_dir: str | Path, encoder_name: str = "handcrafted", *,
                batch_size: int = 64, workers: int = 2, device: str = "auto", mpp: float | None = None,
                skip_errors: bool = False, encoder_weights: str | Path | None = None, rank: int | None = None,
                world_size: int | None = None, progress: bool = True, patch_size: int = 256,
                target_mpp: float = 0.5, min_tissue: float = 0.25, qc_dir: str | Path | None = None,
                compile: bool = False) -> ExtractReport:
    """Extract features for every slide of ``slides`` (folders, ``slide_path`` CSVs, files) into ``out_dir``.

    Resumable: a slide whose ``<stem>.h5`` is complete (same encoder) is skipped; an unreadable or truncated
    ``<stem>.h5`` is extracted again, and temporary files left by a killed run are removed. QC thumbnails go to
    ``qc_dir`` (default ``<out_dir>/qc``). A failing slide prints one line ``<name>: <message>`` to stderr and
    the run goes on with ``skip_errors``; without it the first failure raises :class:`MosareError`.
    """
    if batch_size < 1 or workers < 0:
        raise MosareError("--batch-size must be >= 1 and --workers >= 0")
    if mpp is not None and not mpp > 0:
        raise MosareError(f"--mpp must be positive, got {mpp}")
    out_dir = Path(out_dir)
    qc = Path(qc_dir) if qc_dir is not None else out_dir / "qc"
    mine, rank, world_size = shard(collect_slides(slides), rank, world_size)
    report = ExtractReport(rank=rank, world_size=world_size)
    spec = get_encoder(encoder_name)
    # temporaries of this rank's own slides only: other ranks may be writing theirs in the same folders
    stale = (remove_stale_temps(out_dir, [f"{slide_stem(p)}.h5" for p in mine])
             + remove_stale_temps(qc, [f"{slide_stem(p)}.png" for p in mine]))
    if stale:
        _log(f"removed {len(stale)} temporary file(s) left by an interrupted run")
    todo: list[Path] = []
    for path in mine:
        h5_path = out_dir / f"{slide_stem(path)}.h5"
        have = finished_encoder(h5_path)
        if have is None:
            if h5_path.exists():
                _log(f"{h5_path.name}: incomplete or unreadable feature file; extracting it again")
            todo.append(path)
        elif have in ("", spec.name):
            report.skipped.append(path)
        else:
            err = MosareError(f"{out_dir / (slide_stem(path) + '.h5')} holds {have} features, not {spec.name}; "
                              "remove it or choose another --out")
            _fail(report, path, err, skip_errors)
    if not todo:
        return report
    dev = resolve_device(device)
    encoder = load_encoder(spec, dev, encoder_weights, compile=compile)
    show = progress and rank == 0
    with cpu_threads(dev, workers):
        _extract_all(todo, out_dir, encoder, report, skip_errors=skip_errors, batch_size=batch_size,
                     workers=workers, mpp_override=mpp, patch_size=patch_size, target_mpp=target_mpp,
                     min_tissue=min_tissue, qc_dir=qc, progress=show)
    return report


def _extract_all(todo: list[Path], out_dir: Path, encoder: LoadedEncoder, report: ExtractReport, *,
                 skip_errors: bool, **kwargs) -> None:
    """Extract each slide of ``todo`` in turn, recording results and failures in ``report``."""
    for path in todo:
        start = time.perf_counter()
        try:
            out = extract_slide(path, out_dir, encoder, **kwargs)
        except SLIDE_ERRORS as err:
            _fail(report, path, err, skip_errors)
            continue
        report.done.append(out)
        seconds = time.perf_counter() - start
        n = _n_rows(out)
        _log(f"{path.name}: {n} tiles in {seconds:.1f} s ({n / max(seconds, 1e-9):.0f} tiles/s) -> {out}")


def _fail(report: ExtractReport, path: Path, err: BaseException, skip_errors: bool) -> None:
    line = _one_line(path.name, err)
    if not skip_errors:
        raise MosareError(line) from None
    report.failed.append((path, line))
    _log(line)


def _n_rows(h5_path: Path) -> int:
    with h5py.File(h5_path, "r") as f:
        return int(f["features"].shape[0])

