"""Tile-attention heatmaps for whole-slide images.

Scores are per tile (``[N]``), tiles are addressed by their level-0 top-left corner ``coords [N, 2]`` as
``(x, y)`` and a square side ``tile_size_level0`` (level-0 pixels). Thumbnails are ``[h, w, 3]`` uint8 RGB
with ``downsample`` level-0 pixels per thumbnail pixel.

Rendering uses matplotlib's colour maps and its Agg canvas directly (no pyplot, no global backend change),
so everything here works headless and from several threads.
"""

from __future__ import annotations

import io
import math
import uuid
from collections.abc import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from scipy.stats import rankdata

COLORMAPS: tuple[str, ...] = ("viridis", "magma", "inferno", "cividis", "turbo")
"""Colour maps offered for heatmaps (the first four are perceptually uniform)."""

DEFAULT_COLORMAP = "viridis"

NORMALISATIONS: dict[str, str] = {
    "percentile": "percentile rank (0 = lowest tile, 1 = highest)",
    "raw": "raw score, min–max scaled",
}
"""Score normalisations accepted by :func:`normalise`, with a one-line description for a legend."""

NAN_RGB: tuple[int, int, int] = (128, 128, 128)
"""Colour :func:`colorize` gives to NaN values."""

# Fixed namespace so tile ids in GeoJSON exports are the same on every run and machine.
_GEOJSON_NAMESPACE = uuid.UUID("5f0b6a52-3c0e-4d55-9a57-6d6f73617265")


def normalise(scores: np.ndarray, mode: str = "percentile") -> np.ndarray:
    """Scale tile scores ``[N]`` to ``[N]`` floats in [0, 1].

    ``"percentile"``: average rank / (n - 1) over the n non-NaN scores (ties share their mean rank; a single
    score gives 1.0). ``"raw"``: ``(s - min) / (max - min)``; a constant input gives 0.5 everywhere; non-finite
    scores give NaN. NaN stays NaN in both modes and an empty input gives an empty output.
    """
    if mode not in NORMALISATIONS:
        raise ValueError(f"unknown normalisation {mode!r}; valid modes: {', '.join(NORMALISATIONS)}")
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    out = np.full(s.shape, np.nan, dtype=np.float64)
    if mode == "percentile":
        valid = ~np.isnan(s)
        n = int(valid.sum())
        if n == 1:
            out[valid] = 1.0
        elif n > 1:
            out[valid] = (rankdata(s[valid], method="average") - 1.0) / (n - 1)
        return out
    valid = np.isfinite(s)
    if not valid.any():
        return out
    lo, hi = float(s[valid].min()), float(s[valid].max())
    out[valid] = 0.5 if hi == lo else (s[valid] - lo) / (hi - lo)
    return out


def _cmap(name: str) -> matplotlib.colors.Colormap:
    try:
        return matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colour map {name!r}; offered: {', '.join(COLORMAPS)}") from None


def colorize(values01: np.ndarray, cmap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """Map values ``[N]`` in [0, 1] (clipped) to RGB ``[N, 3]`` uint8 with a matplotlib colour map.

    NaN values get :data:`NAN_RGB`.
    """
    cm = _cmap(cmap)
    v = np.asarray(values01, dtype=np.float64).reshape(-1)
    nan = np.isnan(v)
    rgb = cm(np.clip(np.where(nan, 0.0, v), 0.0, 1.0), bytes=True)[:, :3].astype(np.uint8)
    rgb[nan] = NAN_RGB
    return rgb


def _tile_rects(
    coords: np.ndarray, tile_size_level0: float, downsample: float, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Thumbnail pixel rectangles ``[x0, x1) × [y0, y1)`` of the tiles, each ``[N]`` int, clipped to the image.

    Edges are rounded to the nearest pixel boundary, so tiles of a regular grid meet without gaps or overlap;
    a tile smaller than a pixel still covers one pixel.
    """
    c = np.asarray(coords, dtype=np.float64) / downsample
    side = tile_size_level0 / downsample
    x0 = np.rint(c[:, 0])
    y0 = np.rint(c[:, 1])
    x1 = np.maximum(np.rint(c[:, 0] + side), x0 + 1)
    y1 = np.maximum(np.rint(c[:, 1] + side), y0 + 1)
    x0, x1 = np.clip(x0, 0, w).astype(np.int64), np.clip(x1, 0, w).astype(np.int64)
    y0, y1 = np.clip(y0, 0, h).astype(np.int64), np.clip(y1, 0, h).astype(np.int64)
    return x0, x1, y0, y1


def _check_coords(coords: np.ndarray, n: int | None = None) -> np.ndarray:
    c = np.asarray(coords, dtype=np.float64)
    if c.ndim != 2 or c.shape[1] != 2:
        raise ValueError(f"coords must have shape [N, 2], got {list(c.shape)}")
    if n is not None and c.shape[0] != n:
        raise ValueError(f"{c.shape[0]} tile coordinates but {n} values")
    return c


def heatmap_overlay(
    thumb_rgb: np.ndarray,
    coords: np.ndarray,
    tile_size_level0: float,
    downsample: float,
    values01: np.ndarray,
    cmap: str = DEFAULT_COLORMAP,
    opacity: float = 0.5,
    overlay: bool = True,
) -> np.ndarray:
    """Paint tile values over a slide thumbnail.

    Args:
        thumb_rgb: thumbnail ``[h, w, 3]`` uint8 (an alpha channel is dropped).
        coords: ``[N, 2]`` level-0 ``(x, y)`` top-left corner of each tile.
        tile_size_level0: tile side in level-0 pixels.
        downsample: level-0 pixels per thumbnail pixel.
        values01: ``[N]`` values in [0, 1] (e.g. from :func:`normalise`); NaN tiles are not painted.
        cmap: matplotlib colour map name.
        opacity: alpha of the tile colours over the thumbnail, in [0, 1].
        overlay: ``False`` draws the heatmap alone on white, fully opaque.

    Returns:
        ``[h, w, 3]`` uint8. Pixels outside every tile keep the thumbnail (or white). Where tiles overlap,
        the higher value is drawn on top.
    """
    thumb = np.asarray(thumb_rgb)
    if thumb.ndim != 3 or thumb.shape[2] not in (3, 4):
        raise ValueError(f"thumbnail must have shape [h, w, 3], got {list(thumb.shape)}")
    thumb = thumb[:, :, :3]
    if thumb.dtype != np.uint8:
        raise ValueError(f"thumbnail must be uint8, got {thumb.dtype}")
    if tile_size_level0 <= 0 or downsample <= 0:
        raise ValueError("tile_size_level0 and downsample must be positive")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must be in [0, 1], got {opacity}")
    v = np.asarray(values01, dtype=np.float64).reshape(-1)
    c = _check_coords(coords, len(v))
    h, w = thumb.shape[:2]

    base = thumb.copy() if overlay else np.full_like(thumb, 255)
    alpha = opacity if overlay else 1.0
    painted = np.flatnonzero(~np.isnan(v))
    if painted.size == 0:
        return base

    # Paint tile indices into an index image (one slice assignment per tile is ~1 µs), lowest value first so
    # the highest wins where tiles overlap, then blend all painted pixels in one vectorised step.
    painted = painted[np.argsort(v[painted], kind="stable")]
    x0, x1, y0, y1 = _tile_rects(c[painted], tile_size_level0, downsample, h, w)
    index = np.full((h, w), -1, dtype=np.int32)
    for i, (a, b, p, q) in enumerate(zip(x0.tolist(), x1.tolist(), y0.tolist(), y1.tolist())):
        if b > a and q > p:
            index[p:q, a:b] = i
    # Flat pixel indices are ~3x faster to gather and scatter than a 2-D boolean mask.
    flat_index = index.reshape(-1)
    hit = np.flatnonzero(flat_index >= 0)
    flat = base.reshape(-1, 3)
    colours = colorize(v[painted], cmap).astype(np.float32)
    under = flat[hit].astype(np.float32)
    flat[hit] = np.rint(under * (1.0 - alpha) + colours[flat_index[hit]] * alpha).astype(np.uint8)
    return base


def colorbar_png(cmap: str, label: str, low: str = "low", high: str = "high", width_px: int = 320) -> bytes:
    """A small horizontal colour bar (PNG bytes, ``width_px`` wide) with ``label`` below and ``low``/``high``
    at its ends."""
    cm = _cmap(cmap)
    dpi = 100
    fig = Figure(figsize=(width_px / dpi, 0.8), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.55, 0.84, 0.3))
    bar = fig.colorbar(ScalarMappable(norm=Normalize(0.0, 1.0), cmap=cm), cax=ax, orientation="horizontal")
    bar.set_ticks([0.0, 1.0], labels=[low, high])
    bar.ax.tick_params(labelsize=8, length=2, pad=1)
    bar.set_label(label, fontsize=8, labelpad=1)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def to_png(rgb: np.ndarray, fast: bool = False) -> bytes:
    """Encode an ``[h, w, 3]`` (or ``[h, w]`` grey) uint8 image as PNG bytes (``fast``: light compression, for
    display; the default compresses fully, for files)."""
    a = np.asarray(rgb)
    if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ValueError(f"expected a uint8 image [h, w, 3], got {a.dtype} {list(a.shape)}")
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG", compress_level=1 if fast else 6)
    return buf.getvalue()


def top_bottom(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the ``k`` highest scores (descending) and the ``k`` lowest (ascending) of ``scores [N]``.

    NaN scores are ignored and ``k`` is clipped to the number of the others; ties keep index order.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    valid = np.flatnonzero(~np.isnan(s))
    k = max(0, min(int(k), valid.size))
    if k == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty.copy()
    top = valid[np.argsort(-s[valid], kind="stable")[:k]]
    bottom = valid[np.argsort(s[valid], kind="stable")[:k]]
    return top.astype(np.int64), bottom.astype(np.int64)


def tiles_in_bbox(coords: np.ndarray, tile_size_level0: float, bbox: Sequence[float]) -> np.ndarray:
    """Boolean ``[N]``: whether each tile's centre lies in ``bbox = [x0, y0, x1, y1)`` (level-0 pixels,
    end exclusive)."""
    if len(bbox) != 4:
        raise ValueError(f"bbox must be [x0, y0, x1, y1], got {list(bbox)}")
    c = _check_coords(coords)
    x0, y0, x1, y1 = (float(b) for b in bbox)
    cx = c[:, 0] + tile_size_level0 / 2.0
    cy = c[:, 1] + tile_size_level0 / 2.0
    return (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)


def _check_scores(scores: dict[str, np.ndarray], n: int) -> dict[str, np.ndarray]:
    out = {}
    for name, values in scores.items():
        v = np.asarray(values, dtype=np.float64).reshape(-1)
        if v.shape[0] != n:
            raise ValueError(f"score {name!r} has {v.shape[0]} values for {n} tiles")
        out[str(name)] = v
    return out


def tile_table(coords: np.ndarray, tile_size_level0: float, scores: dict[str, np.ndarray]) -> pd.DataFrame:
    """One row per tile: ``tile`` (index), ``x``, ``y``, ``width``, ``height`` (level-0 px), then one column per
    score name (each ``[N]``)."""
    c = _check_coords(coords)
    n = c.shape[0]
    df = pd.DataFrame(
        {
            "tile": np.arange(n, dtype=np.int64),
            "x": c[:, 0],
            "y": c[:, 1],
            "width": np.full(n, float(tile_size_level0)),
            "height": np.full(n, float(tile_size_level0)),
        }
    )
    for name, v in _check_scores(scores, n).items():
        df[name] = v
    return df


def tiles_geojson(
    coords: np.ndarray,
    tile_size_level0: float,
    scores: dict[str, np.ndarray],
    name: str = "MoSARe attention",
) -> dict:
    """Tiles as a GeoJSON FeatureCollection for QuPath (File > Import objects).

    Each tile is a ``Feature`` with a closed square ``Polygon`` in level-0 pixels, ``properties``
    ``{"objectType": "tile", "name": name, "measurements": {score: value}}`` (non-finite values are left out:
    JSON has no NaN) and a deterministic UUID-formatted string ``id`` (from ``name`` and the tile index).
    Only plain Python types, so ``json.dumps`` works directly.
    """
    c = _check_coords(coords)
    n = c.shape[0]
    # Python lists: per-element numpy indexing would dominate the run time, and json needs plain floats.
    columns = {k: v.tolist() for k, v in _check_scores(scores, n).items()}
    s = float(tile_size_level0)
    # ids are UUID-shaped (QuPath stores object ids as UUIDs): the first four groups identify the export name,
    # the last one is the tile index, so they are unique within the file and identical on every run.
    prefix = str(uuid.uuid5(_GEOJSON_NAMESPACE, name))[:23]
    features = []
    for i, (x, y) in enumerate(c.tolist()):
        ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
        measurements = {k: v[i] for k, v in columns.items() if math.isfinite(v[i])}
        features.append(
            {
                "type": "Feature",
                "id": f"{prefix}-{i:012x}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {"objectType": "tile", "name": name, "measurements": measurements},
            }
        )
    return {"type": "FeatureCollection", "features": features}
