"""What the dashboard does, without the UI: turn files into a case, analyse it, and prepare the slide view.

Every function here is plain Python (no Streamlit), so the CLI, notebooks and tests can use it too.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mosare import MODALITIES
from mosare.app.sandbox import Limits, run_isolated
from mosare.errors import InputError
from mosare.inference import Case, Prediction, Predictor
from mosare.io.atomic import atomic_write_bytes, atomic_write_text
from mosare.io.features import read_features
from mosare.io.slides import open_slide
from mosare.slides.encoders import list_encoders
from mosare.slides.extract import extract_slide, load_encoder
from mosare.text.scrub import scrub, vocabulary_for
from mosare.types import resolve_device

MODALITY_NAMES = {"wsi": "Slide", "rna": "RNA-seq", "rpt": "Report"}


# ----------------------------------------------------------------------------------------------- analysis


@dataclass
class Analysis:
    """A prediction with the modalities ``used``, plus one re-inference without each used modality.

    contributions[m] = L(c | used) − L(c | used without m), L the log-odds of the predicted class c: how much
    modality m pushed the model towards its answer (negative: it pushed away), in the unit of the attributions
    (:mod:`mosare.explain.attribution`: in Δ P a confident case's evidence would read ≈ 0), on the probabilities
    shown to the reader (temperature-scaled when the checkpoint carries a temperature, as the Case page's headline).
    """

    prediction: Prediction
    used: np.ndarray  # [3] bool in MODALITIES order
    contributions: dict[str, float] = field(default_factory=dict)
    without: dict[str, Prediction] = field(default_factory=dict)
    seconds: float = 0.0


def analyse(predictor: Predictor, case: Case, use: np.ndarray | None = None) -> Analysis:
    """Predict with the modalities in ``use`` (switched-off ones are treated as missing) and measure each
    used modality's contribution. Raises :class:`InputError` when nothing usable remains."""
    start = time.perf_counter()
    want = case.present.copy() if use is None else (case.present & np.asarray(use, bool))
    model_mods = np.array([m in predictor.cfg.modalities for m in MODALITIES])
    if not (want & model_mods).any():
        raise InputError("no modality left to predict from: switch at least one present modality on")
    used = want & model_mods
    drop = [i for i in range(len(MODALITIES)) if used[i]] if used.sum() >= 2 else []
    masks = [want] + [np.where(np.arange(len(MODALITIES)) == i, False, used) for i in drop]
    pred, *others = predictor.predict_many(case, masks)  # one forward pass for the case and its ablations
    k = int(pred.probs.argmax())
    result = Analysis(prediction=pred, used=used)
    for i, other in zip(drop, others):
        m = MODALITIES[i]
        result.without[m] = other
        result.contributions[m] = pred.log_odds(k) - other.log_odds(k)
    result.seconds = time.perf_counter() - start
    return result


# ----------------------------------------------------------------------------------------------- slides


@dataclass
class SlideView:
    """What the heatmap is drawn on: a thumbnail and the tiles' geometry.

    thumbnail [h, w, 3] uint8; downsample = level-0 px per thumbnail px; coords [N, 2] level-0 top-left of the
    tiles in feature order; tile_size = tile side in level-0 px. ``slide_path`` is None for a feature file
    without its slide (the thumbnail is then a blank canvas).
    """

    thumbnail: np.ndarray
    downsample: float
    coords: np.ndarray
    tile_size: float
    slide_path: Path | None = None
    mpp: float | None = None


def tile_size_of(attrs: dict, default: float = 256.0) -> float:
    for key in ("patch_size_level0", "patch_size"):
        if attrs.get(key):
            return float(attrs[key])
    return default


def slide_view(coords: np.ndarray, tile_size: float, slide_path: str | Path | None = None,
               max_size: int = 1200) -> SlideView:
    """Thumbnail (longest side ``max_size``) of the slide, or a white canvas covering the tiles."""

    coords = np.asarray(coords)
    if slide_path is not None:
        with open_slide(slide_path) as slide:
            thumb = slide.thumbnail(max_size)
            ds = slide.dimensions[0] / thumb.shape[1]
            return SlideView(thumb, ds, coords, tile_size, Path(slide_path), slide.mpp)
    extent = (coords.max(0) + tile_size) if len(coords) else np.array([tile_size, tile_size])
    ds = max(1.0, float(extent.max()) / max_size)
    w, h = (int(np.ceil(v / ds)) for v in extent)
    return SlideView(np.full((h, w, 3), 255, np.uint8), ds, coords, tile_size)


def read_tile_region(view: SlideView, i: int, context: int = 1) -> np.ndarray:
    """Tile ``i`` with ``context`` tiles of margin, at full resolution (level 0): [h, w, 3] uint8."""

    if view.slide_path is None:
        raise InputError("no slide file for this case: only its patch features were given")
    x, y = (int(v) for v in view.coords[i])
    s = int(round(view.tile_size))
    with open_slide(view.slide_path) as slide:
        x0, y0 = max(0, x - context * s), max(0, y - context * s)
        w = min(slide.dimensions[0] - x0, (2 * context + 1) * s)
        h = min(slide.dimensions[1] - y0, (2 * context + 1) * s)
        return np.array(slide.read_region(x0, y0, 0, (w, h)))




def store_upload(data: bytes, suffix: str, cache_dir: str | Path) -> Path:
    """Keep uploaded bytes under their content hash (never the client's file name); returns the path."""
    digest = hashlib.sha256(data).hexdigest()
    suffix = "".join(ch for ch in suffix.lower() if ch.isalnum() or ch == ".")[:12]
    path = Path(cache_dir) / "uploads" / f"{digest}{suffix}"
    if not path.is_file():
        atomic_write_bytes(path, data)
    return path


def server_slides(root: Path | None, suffixes: tuple[str, ...], limit: int = 2000) -> list[str]:
    """Slide files under the server's slide folder, as paths relative to it (sorted, at most ``limit``)."""
    if root is None or not root.is_dir():
        return []
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                  if p.is_file() and p.suffix.lower().lstrip(".") in suffixes)[:limit]


def confined_slide(root: Path, name: str) -> Path:
    """``root / name`` resolved; InputError when it lies outside ``root`` (``..``, absolute paths, symlinks out)."""
    candidate = (root / name).resolve()
    if root.resolve() not in candidate.parents:
        raise InputError("that slide lies outside the configured slide folder")
    return candidate


@dataclass(frozen=True)
class SlideArtifacts:
    """What decoding a slide leaves in the cache: its patch features and a thumbnail for the heatmap."""

    features: Path
    thumbnail: Path
    downsample: float  # level-0 px per thumbnail px
    mpp: float | None


def _slide_key(path: Path) -> str:
    """Uploads are stored under their content hash already; other slides (server folder) are keyed by path,
    size and modification time — hashing a 3 GB slide would take longer than a cache hit saves."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:32]


def _decode_slide(slide_path: str, encoder: str, device: str, features_out: str, thumb_out: str,
                  thumb_max: int, *, progress: Callable[..., None]) -> dict:
    """Runs in the isolated child: tile, encode, write features and thumbnail (atomically)."""
    import io as _io

    import torch
    from PIL import Image

    torch.set_num_threads(max(1, torch.get_num_threads()))
    enc = load_encoder(encoder, torch.device(device))
    start = time.perf_counter()
    out = Path(features_out)
    tmp_dir = out.parent / f".tmp-{out.stem}"
    try:
        made = extract_slide(slide_path, tmp_dir, enc, workers=0, batch_size=64, progress=False,
                             on_progress=lambda d, t: progress(d, t, d / max(1e-9, time.perf_counter() - start)))
        with open_slide(slide_path) as slide:
            thumb = slide.thumbnail(thumb_max)
            downsample, mpp = slide.dimensions[0] / thumb.shape[1], slide.mpp
        buf = _io.BytesIO()
        Image.fromarray(thumb).save(buf, format="PNG", compress_level=1)
        atomic_write_bytes(thumb_out, buf.getvalue())
        made.replace(out)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return {"downsample": float(downsample), "mpp": mpp}


def slide_features(slide_path: str | Path, encoder: str, cache_dir: str | Path,
                   on_progress: Callable[[int, int, float], None] | None = None, *,
                   limits: Limits | None = None, thumb_max: int = 1200) -> SlideArtifacts:
    """Patch features and thumbnail of a slide, decoded in an isolated child process (memory and time limits:
    a crash in OpenSlide or libtiff kills only that job) and cached.

    ``on_progress(done, total, tiles_per_second)`` is called while encoding. Raises :class:`InputError` with a
    one-line message for an unreadable slide, a slide without tissue, a crash or a limit.
    """
    import json

    slide_path = Path(slide_path)
    if not slide_path.exists():
        raise InputError(f"slide not found: {slide_path.name}")
    folder = Path(cache_dir) / "slides" / encoder
    key = _slide_key(slide_path)
    feats, thumb, meta = folder / f"{key}.h5", folder / f"{key}.png", folder / f"{key}.json"
    if not (feats.is_file() and thumb.is_file() and meta.is_file()):
        folder.mkdir(parents=True, exist_ok=True)
        device = str(resolve_device("auto"))
        limits = limits or Limits(address_space_limit=not device.startswith("cuda"))
        info = run_isolated(_decode_slide, str(slide_path), encoder, device, str(feats), str(thumb), thumb_max,
                            what=slide_path.name, limits=limits, on_progress=on_progress)
        atomic_write_text(meta, json.dumps(info))
    info = json.loads(meta.read_text(encoding="utf-8"))
    return SlideArtifacts(feats, thumb, float(info["downsample"]), info.get("mpp"))


def modality_status(case: Case | None, use: np.ndarray | None, model_modalities: tuple[str, ...]) -> dict[str, str]:
    """Per modality: "present", "missing", "switched off" or "not used by model"."""
    out = {}
    for i, m in enumerate(MODALITIES):
        if m not in model_modalities:
            out[m] = "not used by model"
        elif case is None or not case.present[i]:
            out[m] = "missing"
        elif use is not None and not use[i]:
            out[m] = "switched off"
        else:
            out[m] = "present"
    return out


# ----------------------------------------------------------------------------------------------- a case from files


@dataclass
class LoadedCase:
    case: Case
    view: SlideView | None = None
    report_text: str | None = None
    report_removed: list[tuple[int, int]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def encoder_for(predictor: Predictor) -> str:
    """The patch encoder a checkpoint's slide features came from: recorded in the checkpoint, else the
    registered encoder with the model's feature size."""

    name = predictor.info.encoder
    if name:
        return str(name)
    dims = {e.dim: e.name for e in reversed(list_encoders())}
    if predictor.cfg.wsi_dim not in dims:
        raise InputError(f"the model expects {predictor.cfg.wsi_dim}-d patch features and no registered encoder "
                         "makes those; upload the slide's feature .h5 instead")
    return dims[predictor.cfg.wsi_dim]


def load_case(predictor: Predictor, *, slide_path: str | Path | None = None, features_path: str | Path | None = None,
              rna_path: str | Path | None = None, report_text: str | None = None, embedder=None,
              cache_dir: str | Path, on_progress: Callable[[int, int, float], None] | None = None) -> LoadedCase:
    """Build a case from whatever files were given. A slide without features is tiled and encoded (cached by
    content hash); its thumbnail is kept for the heatmap. Raises :class:`InputError` naming the bad input."""

    notes: list[str] = []
    decoded = None
    if slide_path is not None and features_path is None and "wsi" in predictor.cfg.modalities:
        start = time.perf_counter()
        decoded = slide_features(slide_path, encoder_for(predictor), cache_dir, on_progress)
        features_path = decoded.features
        notes.append(f"slide features ready in {time.perf_counter() - start:.1f} s")
    if report_text is not None and not report_text.strip():
        report_text = None
    case = predictor.make_case(rna=rna_path, report_text=report_text, features=features_path, embedder=embedder)
    if not case.present.any():
        raise InputError("nothing to predict from: give a slide or its features, an RNA table or a report "
                         f"(this model uses {', '.join(MODALITY_NAMES[m] for m in predictor.cfg.modalities)})")
    view = None
    if case.patches is not None and case.coords is not None:
        tile = tile_size_of(read_features(features_path).attrs)
        if decoded is not None:  # the thumbnail the isolated decoder wrote: no OpenSlide call in this process
            from PIL import Image

            with Image.open(decoded.thumbnail) as im:
                thumb = np.asarray(im.convert("RGB"))
            view = SlideView(thumb, decoded.downsample, case.coords, tile, Path(slide_path), decoded.mpp)
        else:
            view = slide_view(case.coords, tile, slide_path)
    removed = scrub(report_text, vocabulary_for(predictor.classes)).removed if case.present[2] else []
    return LoadedCase(case, view, report_text if case.present[2] else None, removed, notes + case.notes)


def read_tiles(view: SlideView, idx: np.ndarray, size: int = 256) -> list[np.ndarray]:
    """Tiles ``idx`` read at level 0 and resized to ``size`` px: list of [size, size, 3] uint8."""
    from PIL import Image

    if view.slide_path is None:
        return []
    s = int(round(view.tile_size))
    out = []
    with open_slide(view.slide_path) as slide:
        for i in idx:
            x, y = (int(v) for v in view.coords[int(i)])
            rgb = slide.read_region(x, y, 0, (s, s))
            out.append(np.asarray(Image.fromarray(rgb).resize((size, size))) if s != size else np.array(rgb))
    return out
