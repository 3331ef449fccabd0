"""Tissue detection on a slide thumbnail and an MPP-aware tile grid over level 0.

The mask is an Otsu threshold on HSV saturation (white glass is unsaturated, stained tissue is not),
with three guards: a floor on the threshold so background never becomes tissue, a fallback to the
floor when Otsu's split leaves nothing, and a pen-ink rule that drops vivid green/blue pixels and
near-black pixels (ink, folds of debris, slide edges). Morphology (closing, hole filling, removal of
tiny components) uses ``scipy.ndimage``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from mosare.io.atomic import atomic_write_bytes
from mosare.io.slides import Slide

DEFAULT_MIN_SATURATION = 20
"""Floor on the saturation threshold (0-255): clean glass and JPEG noise on it stay below it."""

PEN_HUE_DEG = (70.0, 230.0)
"""Green to blue hues. H&E (pink to purple, 230-360 and 0-30 degrees) and DAB (brown) lie outside."""

PEN_MIN_SATURATION = 100
"""Ink is vivid; pale blue-grey tissue (e.g. haematoxylin-only IHC counterstain) is not excluded."""

DARK_MAX_VALUE = 40
"""Pixels whose HSV value (max of R, G, B) is below this are ink, dirt or slide edge, not tissue."""


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV of an [h, w, 3] uint8 RGB image (PIL's conversion, in C).

    Returns three [h, w] arrays: float32 hue in degrees [0, 360), uint8 saturation
    255 * (max - min) / max, uint8 value max(R, G, B).
    """
    hsv = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).convert("HSV"))
    hue = hsv[..., 0].astype(np.float32) * np.float32(360.0 / 255.0)
    return hue, hsv[..., 1], hsv[..., 2]


def otsu_threshold(values: np.ndarray) -> int | None:
    """Otsu's threshold of uint8 ``values`` (any shape): the t maximising the between-class
    variance of {v < t} and {v >= t}. None when all values are equal."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0 or np.count_nonzero(hist) < 2:
        return None
    levels = np.arange(256, dtype=np.float64)
    weight_low = np.cumsum(hist)[:-1]  # index k: pixels with value <= k, i.e. below t = k + 1
    sum_low = np.cumsum(hist * levels)[:-1]
    weight_high = total - weight_low
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_low = sum_low / weight_low
        mean_high = ((hist * levels).sum() - sum_low) / weight_high
        between = weight_low * weight_high * (mean_low - mean_high) ** 2
    between[~np.isfinite(between)] = -1.0
    return int(np.argmax(between)) + 1


def _components_at_least(mask: np.ndarray, min_area: int) -> np.ndarray:
    """The pixels of ``mask`` in 8-connected components of at least ``min_area`` pixels."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return mask.copy()
    keep = np.bincount(labels.ravel()) >= min_area
    keep[0] = False
    return keep[labels]


def _clean(mask: np.ndarray, excluded: np.ndarray) -> np.ndarray:
    """Close small gaps, fill holes under 0.1 % of the image (large enclosed lumens and glass stay
    background), drop excluded pixels, then components under 0.01 % of the image."""
    # Closing with a 5 x 5 square as separable max/min filters; "nearest" edges keep tissue that
    # touches the border from being eroded.
    dilated = ndimage.maximum_filter(mask.view(np.uint8), size=5, mode="nearest")
    closed = ndimage.minimum_filter(dilated, size=5, mode="nearest").view(bool)
    holes = ndimage.binary_fill_holes(closed) & ~closed
    small_holes = holes & ~_components_at_least(holes, max(16, int(1e-3 * mask.size)))
    filled = (closed | small_holes) & ~excluded
    return _components_at_least(filled, max(4, int(1e-4 * mask.size)))


def tissue_mask(thumb_rgb: np.ndarray, min_saturation: int | None = None) -> np.ndarray:
    """Boolean tissue mask of a thumbnail.

    thumb_rgb: [h, w, 3] uint8 RGB (background white). min_saturation: floor on the saturation
    threshold in 0-255 (default ``DEFAULT_MIN_SATURATION``); the threshold is max(Otsu, floor), and
    the floor alone when the Otsu mask is empty. Returns [h, w] bool.
    """
    if thumb_rgb.ndim != 3 or thumb_rgb.shape[2] != 3 or thumb_rgb.dtype != np.uint8:
        raise ValueError(f"expected [h, w, 3] uint8 RGB, got {thumb_rgb.shape} {thumb_rgb.dtype}")
    floor = DEFAULT_MIN_SATURATION if min_saturation is None else int(min_saturation)
    hue, saturation, value = rgb_to_hsv(thumb_rgb)
    pen = (hue >= PEN_HUE_DEG[0]) & (hue <= PEN_HUE_DEG[1]) & (saturation >= PEN_MIN_SATURATION)
    excluded = pen | (value < DARK_MAX_VALUE)
    otsu = otsu_threshold(saturation[~excluded]) if (~excluded).any() else None
    mask = _clean((saturation >= max(otsu or 0, floor)) & ~excluded, excluded)
    if not mask.any() and (otsu or 0) > floor:
        mask = _clean((saturation >= floor) & ~excluded, excluded)  # Otsu split off faint tissue entirely
    return mask


class MissingMppWarning(UserWarning):
    """A slide has no microns-per-pixel metadata and no override: a magnification was assumed."""


@dataclass
class TileGrid:
    """Non-overlapping square tiles over level 0 that hold enough tissue.

    A tile covers ``patch_size_level0`` level-0 px; read ``read_size`` px at ``read_level`` from its
    top-left ``coords[i]`` and resize to ``patch_size`` px to get it at ``target_mpp``.
    """

    coords: np.ndarray
    """[N, 2] int64 level-0 (x, y) of each tile's top-left corner, row-major order."""
    patch_size_level0: int
    read_level: int
    read_size: int
    patch_size: int
    target_mpp: float
    slide_mpp: float
    mpp_source: str
    """"metadata", "override" or "assumed" (no MPP anywhere: ``slide_mpp`` = ``target_mpp``)."""
    tissue_fraction: np.ndarray
    """[N] float32 fraction of each tile's mask pixels that are tissue."""
    mask: np.ndarray
    """[mh, mw] bool tissue mask of the thumbnail."""
    mask_downsample: float
    """Level-0 px per mask px (slide width / mask width; the height ratio differs by rounding only)."""

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def _slide_mpp(slide: Slide, target_mpp: float, mpp_override: float | None) -> tuple[float, str]:
    if mpp_override is not None:
        if not mpp_override > 0:
            raise ValueError(f"mpp_override must be positive, got {mpp_override}")
        return float(mpp_override), "override"
    if slide.mpp is not None:
        return slide.mpp, "metadata"
    slide.warn_once(
        f"{slide.name}: no MPP metadata; assuming {target_mpp:g} µm/px ({10 / target_mpp:g}×); "
        "pass --mpp to override",
        MissingMppWarning,
        stacklevel=3,  # the caller of tile_slide
    )
    return float(target_mpp), "assumed"


def _mask_span(start: np.ndarray, size: int, scale: float, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Mask index ranges [lo, hi) of the pixels whose centres lie in [start, start + size) level-0
    px; a tile narrower than a mask pixel gets the pixel under its centre."""
    lo = np.ceil(start / scale - 0.5).astype(np.int64)
    hi = np.ceil((start + size) / scale - 0.5).astype(np.int64)
    centre = np.floor((start + size / 2) / scale).astype(np.int64)
    empty = hi <= lo
    lo = np.where(empty, centre, lo)
    hi = np.where(empty, centre + 1, hi)
    return np.clip(lo, 0, limit), np.clip(hi, 0, limit)


def _tissue_fractions(
    mask: np.ndarray, xs: np.ndarray, ys: np.ndarray, size: int, dims: tuple[int, int]
) -> np.ndarray:
    """[len(ys), len(xs)] float32 tissue fraction of the tiles with top-left (xs[j], ys[i])."""
    mh, mw = mask.shape
    integral = np.zeros((mh + 1, mw + 1), np.int64)
    integral[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    c0, c1 = _mask_span(xs, size, dims[0] / mw, mw)
    r0, r1 = _mask_span(ys, size, dims[1] / mh, mh)
    r0, r1 = r0[:, None], r1[:, None]
    total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
    area = (r1 - r0) * (c1 - c0)
    return (total / np.maximum(area, 1)).astype(np.float32)


def tile_slide(
    slide: Slide,
    patch_size: int = 256,
    target_mpp: float = 0.5,
    mpp_override: float | None = None,
    min_tissue: float = 0.25,
    thumb_max: int = 2048,
    *,
    thumb_rgb: np.ndarray | None = None,
    min_saturation: int | None = None,
) -> TileGrid:
    """Tile a slide at ``target_mpp`` µm/px with ``patch_size`` px tiles that hold tissue.

    patch_size_level0 = round(patch_size * target_mpp / slide_mpp); tiles are read at the coarsest
    level whose downsample is <= patch_size_level0 / patch_size. The slide MPP is ``mpp_override``,
    else the metadata, else ``target_mpp`` with a one-time :class:`MissingMppWarning`. Tiles with
    tissue fraction >= ``min_tissue`` are kept; no tissue gives an empty grid (N = 0).
    ``thumb_rgb`` (from ``slide.thumbnail(thumb_max)``) avoids reading the thumbnail twice.
    """
    if patch_size <= 0 or not target_mpp > 0:
        raise ValueError(f"patch_size and target_mpp must be positive, got {patch_size}, {target_mpp}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue must be in [0, 1], got {min_tissue}")
    slide_mpp, mpp_source = _slide_mpp(slide, target_mpp, mpp_override)
    size0 = max(1, round(patch_size * target_mpp / slide_mpp))
    level = slide.best_level_for_downsample(size0 / patch_size)
    read_size = max(1, round(size0 / slide.level_downsamples[level]))
    thumb = slide.thumbnail(thumb_max) if thumb_rgb is None else thumb_rgb
    mask = tissue_mask(thumb, min_saturation)
    width, height = slide.dimensions
    xs = np.arange(0, width - size0 + 1, size0, dtype=np.int64)
    ys = np.arange(0, height - size0 + 1, size0, dtype=np.int64)
    fractions = _tissue_fractions(mask, xs, ys, size0, (width, height))
    rows, cols = np.nonzero(fractions >= min_tissue)
    return TileGrid(
        coords=np.stack([xs[cols], ys[rows]], axis=1).reshape(-1, 2).astype(np.int64),
        patch_size_level0=size0,
        read_level=level,
        read_size=read_size,
        patch_size=patch_size,
        target_mpp=float(target_mpp),
        slide_mpp=slide_mpp,
        mpp_source=mpp_source,
        tissue_fraction=fractions[rows, cols].astype(np.float32),
        mask=mask,
        mask_downsample=width / mask.shape[1],
    )


def resize_tile(region: np.ndarray, patch_size: int) -> np.ndarray:
    """Resize an [h, w, 3] uint8 region to [patch_size, patch_size, 3] (bicubic, antialiased when
    shrinking); returned unchanged when it already has that size."""
    if region.shape[:2] == (patch_size, patch_size):
        return region
    image = Image.fromarray(region).resize((patch_size, patch_size), Image.Resampling.BICUBIC)
    return np.asarray(image)


def read_tile(slide: Slide, grid: TileGrid, i: int) -> np.ndarray:
    """Tile ``i`` of ``grid`` as [patch_size, patch_size, 3] uint8 RGB at the grid's target MPP."""
    x, y = (int(v) for v in grid.coords[i])
    region = slide.read_region(x, y, grid.read_level, (grid.read_size, grid.read_size))
    return resize_tile(region, grid.patch_size)


QC_MAX = 1024  # longest side of a QC thumbnail, px


def save_qc_thumbnail(grid: TileGrid, thumb_rgb: np.ndarray, path: str | Path) -> None:
    """Write a PNG of the thumbnail with the tissue mask tinted green and kept tiles outlined.

    thumb_rgb: [th, tw, 3] uint8 (normally the thumbnail the mask was computed on; another size
    is fine, the mask is resized to it). Written atomically.
    """
    if max(thumb_rgb.shape[:2]) > QC_MAX:  # a QC picture needs no more; PNG encoding dominates otherwise
        f = QC_MAX / max(thumb_rgb.shape[:2])
        size = (max(1, round(thumb_rgb.shape[1] * f)), max(1, round(thumb_rgb.shape[0] * f)))
        thumb_rgb = np.asarray(Image.fromarray(thumb_rgb).resize(size, Image.Resampling.BILINEAR))
    th, tw = thumb_rgb.shape[:2]
    mask = grid.mask
    if mask.shape != (th, tw):
        mask = np.asarray(Image.fromarray(mask).resize((tw, th), Image.Resampling.NEAREST))
    tinted = thumb_rgb.astype(np.float32)
    tinted[mask] = 0.65 * tinted[mask] + 0.35 * np.array([0.0, 200.0, 0.0])
    image = Image.fromarray(tinted.round().astype(np.uint8))
    scale = grid.mask_downsample * grid.mask.shape[1] / tw  # level-0 px per thumbnail px
    draw = ImageDraw.Draw(image)
    side = grid.patch_size_level0 / scale
    for x, y in grid.coords / scale:
        draw.rectangle((x, y, x + side - 1, y + side - 1), outline=(20, 60, 220))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    atomic_write_bytes(path, buffer.getvalue())
