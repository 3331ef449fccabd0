"""Synthetic H&E-like whole-slide images for the demo cohort: small, fast, and readable by OpenSlide.

A slide is rendered in stain space: per pixel a hematoxylin (``H``, nuclei) and an eosin (``E``, stroma,
cytoplasm) optical density, quantised to ``uint8`` (OD × 100) and turned into RGB through a per-slide
lookup table (Beer–Lambert: ``RGB = 255·exp(-(H·h + E·e))``, with slightly varying stain strengths per
slide, like staining batches). The pink, fibrous stroma with scattered fibroblasts and lymphocytes comes
from one cohort-wide background texture (rendered once, then cropped, flipped and rotated per slide); a
tissue blob with a smooth irregular outline is cut from it on white glass; and one rectangle of the blob,
aligned to the 256-px grid, carries class-specific morphology:

- class ``A``: cohesive glands — rings of dense small round nuclei around white lumina, and solid nests;
- class ``B``: single-file cords of small dyscohesive nuclei in denser stroma.

The slide is written as a tiled (256 × 256, JPEG), pyramidal TIFF with one page per level
(downsamples 1, 2, 4, 8) and TIFF resolution tags, so OpenSlide opens it as ``generic-tiff`` and reports
``openslide.mpp-x`` / ``openslide.mpp-y``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from mosare.io.atomic import atomic_path

SLIDE_SIZE = 2048  # level-0 px, square
SLIDE_MPP = 0.5  # µm per level-0 pixel (20×)
SLIDE_TILE = 256
SLIDE_DOWNSAMPLES = (1, 2, 4, 8)
TEXTURE_SIZE = 3072
JPEG_QUALITY = 85

# stain vectors (optical density per unit concentration, R, G, B): typical H&E values
_H_VEC = np.array([0.56, 0.72, 0.41])
_E_VEC = np.array([0.22, 0.80, 0.56])
_GLASS_OD = 0.02
_Q = 100.0  # uint8 quantisation: value = OD × 100 (OD 0 … 2.55)


# --------------------------------------------------------------------------- helpers


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Smooth random field in [0, 1] of ``shape``: uniform noise on a ``cells × cells`` grid, bicubic-upsampled."""
    lo = (rng.random((cells, cells)) * 255).astype(np.uint8)
    img = Image.fromarray(lo, mode="L").resize((shape[1], shape[0]), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def _stamp_nuclei(
    canvas: np.ndarray,
    cy: np.ndarray,
    cx: np.ndarray,
    ry: np.ndarray,
    rx: np.ndarray,
    theta: np.ndarray,
    value: np.ndarray,
) -> None:
    """Draw filled ellipses (soft edge) into ``canvas`` in place, keeping the per-pixel maximum."""
    n = len(cy)
    if n == 0:
        return
    half = int(np.ceil(max(float(ry.max()), float(rx.max())))) + 2
    off = np.arange(-half, half + 1, dtype=np.float32)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    iy = np.round(cy).astype(np.int64)[:, None, None] + oy.astype(np.int64)
    ix = np.round(cx).astype(np.int64)[:, None, None] + ox.astype(np.int64)
    dy = (iy - cy[:, None, None]).astype(np.float32)
    dx = (ix - cx[:, None, None]).astype(np.float32)
    c = np.cos(theta).astype(np.float32)[:, None, None]
    s = np.sin(theta).astype(np.float32)[:, None, None]
    u = (dx * c + dy * s) / rx.astype(np.float32)[:, None, None]
    v = (-dx * s + dy * c) / ry.astype(np.float32)[:, None, None]
    val = np.clip((1.0 - (u * u + v * v)) * 3.0, 0.0, 1.0) * value.astype(np.float32)[:, None, None]
    keep = (val > 0) & (iy >= 0) & (iy < canvas.shape[0]) & (ix >= 0) & (ix < canvas.shape[1])
    np.maximum.at(canvas, (iy[keep], ix[keep]), val[keep])


def _fibres(rng: np.random.Generator, shape: tuple[int, int], angle: float, period: float) -> np.ndarray:
    """Wavy parallel collagen fibres in [0, 1] along ``angle``."""
    k = np.float32(2 * np.pi / period)
    yy = np.arange(shape[0], dtype=np.float32)[:, None] * (k * np.float32(np.sin(angle)))
    xx = np.arange(shape[1], dtype=np.float32)[None, :] * (k * np.float32(np.cos(angle)))
    phase = _smooth_noise(rng, shape, 28)
    phase *= np.float32(14.0)
    phase += yy
    phase += xx
    f = np.sin(phase, out=phase)
    f += 1.0
    f *= 0.5
    f *= f
    return np.multiply(f, f, out=f)


# --------------------------------------------------------------------------- background texture


def background_texture(rng: np.random.Generator, size: int = TEXTURE_SIZE) -> np.ndarray:
    """Cohort-wide stroma texture ``uint16 [size, size]``: ``H << 8 | E`` with H, E = optical density × 100."""
    shape = (size, size)
    a1, a2 = rng.uniform(0, np.pi, size=2)
    blend = _smooth_noise(rng, shape, 6)
    fib = blend * _fibres(rng, shape, a1, 15.0) + (1 - blend) * _fibres(rng, shape, a2, 19.0)
    fib *= _smooth_noise(rng, shape, 20)  # bundles fade in and out
    grain = rng.random(shape, dtype=np.float32)
    lowfreq = _smooth_noise(rng, shape, 16)
    e = 0.32 + 0.16 * lowfreq + 0.30 * fib + 0.07 * grain
    # loose, paler areas (oedema / fat-poor gaps)
    gaps = _smooth_noise(rng, shape, 24)
    e *= np.clip(0.55 + 1.5 * gaps, 0.45, 1.0)

    h = np.full(shape, 0.04, dtype=np.float32)
    area = size * size
    # fibroblasts: elongated, roughly along the local fibre direction
    n_fib = area // (60 * 60)
    cy, cx = rng.uniform(0, size, n_fib), rng.uniform(0, size, n_fib)
    w = blend[cy.astype(int), cx.astype(int)]
    theta = np.where(rng.random(n_fib) < w, a1, a2) + rng.normal(0, 0.2, n_fib) + np.pi / 2
    _stamp_nuclei(h, cy, cx, rng.uniform(7, 11, n_fib), rng.uniform(2.3, 3.3, n_fib), theta, rng.uniform(0.7, 1.0, n_fib))
    # lymphocytes: small, round, dark; some in loose clusters
    n_clusters = max(1, area // (700 * 700))
    centres = rng.uniform(0, size, size=(n_clusters, 2))
    per = rng.integers(15, 60, n_clusters)
    pts = np.concatenate([c + rng.normal(0, 45, size=(k, 2)) for c, k in zip(centres, per)])
    n_sparse = area // (160 * 160)
    pts = np.concatenate([pts, rng.uniform(0, size, size=(n_sparse, 2))])
    n_l = len(pts)
    r = rng.uniform(3.4, 4.6, n_l)
    _stamp_nuclei(h, pts[:, 0], pts[:, 1], r, r * rng.uniform(0.85, 1.0, n_l), rng.uniform(0, np.pi, n_l), rng.uniform(1.3, 1.6, n_l))
    h *= 0.8 + 0.4 * rng.random(shape, dtype=np.float32)  # chromatin texture
    return _combine(_quantise(h), _quantise(e))


def _combine(h: np.ndarray, e: np.ndarray) -> np.ndarray:
    idx = h.astype(np.uint16)
    idx <<= 8
    idx |= e
    return idx


def _quantise(od: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(od * _Q), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- planted morphology


def _nuclear_sizes(rng: np.random.Generator, k: int, rys: list, rxs: list, vals: list) -> None:
    """Small round tumour nuclei (class A): radii and stain density for ``k`` nuclei, appended to the lists."""
    r = rng.uniform(4.2, 5.4, k)
    rys.append(r)
    rxs.append(r * rng.uniform(0.8, 1.0, k))
    vals.append(rng.uniform(1.05, 1.35, k))


def _glands(rng: np.random.Generator, h: np.ndarray, e: np.ndarray) -> None:
    """Class A, in place on a region's float OD canvases: cohesive glands and solid nests of dense round nuclei."""
    hh, ww = h.shape
    placed: list[tuple[float, float, float]] = []
    for _ in range(400):
        r_out = rng.uniform(42, 78)
        cy, cx = rng.uniform(r_out * 0.6, hh - r_out * 0.6), rng.uniform(r_out * 0.6, ww - r_out * 0.6)
        if any(np.hypot(cy - py, cx - px) < r_out + pr + 6 for py, px, pr in placed):
            continue
        placed.append((cy, cx, r_out))
    ys, xs, rys, rxs, ths, vals = [], [], [], [], [], []
    for cy, cx, r_out in placed:
        y0, y1 = max(0, int(cy - r_out - 2)), min(hh, int(cy + r_out + 3))
        x0, x1 = max(0, int(cx - r_out - 2)), min(ww, int(cx + r_out + 3))
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        ang = np.arctan2(yy - cy, xx - cx)
        # slightly irregular outline
        wobble = 1.0 + 0.06 * np.sin(3 * ang + rng.uniform(0, 6.3)) + 0.04 * np.sin(5 * ang + rng.uniform(0, 6.3))
        rr = np.hypot(yy - cy, xx - cx) / wobble
        solid = rng.random() < 0.3
        thick = r_out if solid else rng.uniform(16, 24)
        r_in = r_out - thick
        epi = rr < r_out
        e[y0:y1, x0:x1][epi] = 0.42 + 0.05 * rng.random()
        h[y0:y1, x0:x1][epi] = 0.16  # basophilic cytoplasm
        if not solid:
            lumen = rr < r_in
            e[y0:y1, x0:x1][lumen] = 0.03
            h[y0:y1, x0:x1][lumen] = 0.0
            # one or two rows of nuclei along the ring
            for frac in (0.35, 0.75) if thick > 19 else (0.5,):
                rad = r_in + frac * thick
                k = int(2 * np.pi * rad / rng.uniform(10.5, 12.5))
                t = np.linspace(0, 2 * np.pi, k, endpoint=False) + rng.uniform(0, 6.3)
                ys.append(cy + rad * np.sin(t) + rng.normal(0, 0.8, k))
                xs.append(cx + rad * np.cos(t) + rng.normal(0, 0.8, k))
                ths.append(t)
                _nuclear_sizes(rng, k, rys, rxs, vals)
        else:
            # packed nuclei filling the nest
            step = rng.uniform(10.5, 12.5)
            gy, gx = np.mgrid[-r_out:r_out:step, -r_out:r_out:step]
            gx = gx + (np.arange(gy.shape[0])[:, None] % 2) * step / 2
            sel = np.hypot(gy, gx) < r_out - 5
            k = int(sel.sum())
            ys.append(cy + gy[sel] + rng.normal(0, 1.2, k))
            xs.append(cx + gx[sel] + rng.normal(0, 1.2, k))
            ths.append(rng.uniform(0, np.pi, k))
            _nuclear_sizes(rng, k, rys, rxs, vals)
    if ys:
        _stamp_nuclei(h, *(np.concatenate(a) for a in (ys, xs, rys, rxs, ths, vals)))


def _single_files(rng: np.random.Generator, h: np.ndarray, e: np.ndarray) -> None:
    """Class B, in place: single-file cords of small dyscohesive nuclei in denser (desmoplastic) stroma."""
    hh, ww = h.shape
    main = rng.uniform(0, np.pi)
    n_lines = int(hh * ww / (45 * 230))
    ys, xs, rads, vals = [], [], [], []
    for _ in range(n_lines):
        y, x = rng.uniform(0, hh), rng.uniform(0, ww)
        ang = main + rng.normal(0, 0.3)
        length = rng.uniform(120, 420)
        gaps = rng.uniform(12, 21, size=int(length / 12) + 1)
        t = np.cumsum(gaps)
        t = t[t < length]
        bend = rng.normal(0, 0.0015) * t**2 / 2  # gentle curvature
        py = y + t * np.sin(ang) + bend * np.cos(ang) + rng.normal(0, 1.5, len(t))
        px = x + t * np.cos(ang) - bend * np.sin(ang) + rng.normal(0, 1.5, len(t))
        ok = (py > 3) & (py < hh - 3) & (px > 3) & (px < ww - 3)
        ys.append(py[ok])
        xs.append(px[ok])
        rads.append(rng.uniform(4.0, 5.0, int(ok.sum())))
        vals.append(rng.uniform(1.0, 1.3, int(ok.sum())))
    cy, cx, r, v = (np.concatenate(a) for a in (ys, xs, rads, vals))
    # a thin rim of pale cytoplasm around each cell, then the nucleus
    halo = np.zeros_like(h)
    _stamp_nuclei(halo, cy, cx, r + 3.0, r + 3.0, np.zeros_like(r), np.ones_like(r))
    e[:] = e * (1 - halo) + 0.30 * halo
    h[:] = np.maximum(h, 0.12 * halo)
    _stamp_nuclei(h, cy, cx, r, r * rng.uniform(0.8, 1.0, len(r)), rng.uniform(0, np.pi, len(r)), v)


# --------------------------------------------------------------------------- slide


def _tissue_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """Tissue mask ``bool [size, size]``: one irregular blob with a smooth outline, white glass around it."""
    g = 128
    yy, xx = (np.mgrid[0:g, 0:g] + 0.5) / g
    cy, cx = rng.uniform(0.45, 0.55, size=2)
    ay, ax = rng.uniform(0.33, 0.42, size=2)
    rot = rng.uniform(0, np.pi)
    u = ((xx - cx) * np.cos(rot) + (yy - cy) * np.sin(rot)) / ax
    v = (-(xx - cx) * np.sin(rot) + (yy - cy) * np.cos(rot)) / ay
    lo = (rng.random((8, 8)) * 255).astype(np.uint8)
    bumps = np.asarray(Image.fromarray(lo, mode="L").resize((g, g), Image.BICUBIC), dtype=np.float64) / 255.0
    field = 1.0 - np.sqrt(u * u + v * v) + 0.35 * (bumps - 0.5)
    f8 = np.clip(128 + field * 400, 0, 255).astype(np.uint8)
    half = np.asarray(Image.fromarray(f8, mode="L").resize((size // 2, size // 2), Image.BILINEAR)) > 128
    return half.repeat(2, axis=0).repeat(2, axis=1)


def _region_bbox(rng: np.random.Generator, mask: np.ndarray) -> list[int]:
    """A grid-aligned rectangle (2–3 tiles a side) lying inside the tissue: ``[x0, y0, x1, y1]``."""
    n = mask.shape[0] // SLIDE_TILE
    h_t, w_t = (int(v) for v in rng.integers(2, 4, size=2))
    cells = mask[SLIDE_TILE // 2 :: SLIDE_TILE, SLIDE_TILE // 2 :: SLIDE_TILE]  # tile centres
    full = mask[: n * SLIDE_TILE : 16, : n * SLIDE_TILE : 16].reshape(n, SLIDE_TILE // 16, n, SLIDE_TILE // 16).all(axis=(1, 3))
    cand = [
        (r, c)
        for r in range(n - h_t + 1)
        for c in range(n - w_t + 1)
        if full[r : r + h_t, c : c + w_t].all()
    ]
    if not cand:  # small blob: accept tiles whose centre is tissue, the rectangle is filled in below
        cand = [(r, c) for r in range(n - h_t + 1) for c in range(n - w_t + 1) if cells[r : r + h_t, c : c + w_t].all()]
    if not cand:
        cand = [((n - h_t) // 2, (n - w_t) // 2)]
    r, c = cand[int(rng.integers(len(cand)))]
    return [c * SLIDE_TILE, r * SLIDE_TILE, (c + w_t) * SLIDE_TILE, (r + h_t) * SLIDE_TILE]


def _lut(rng: np.random.Generator) -> np.ndarray:
    """``[65536, 3]`` uint8: RGB for index ``H << 8 | E`` with this slide's stain strengths."""
    s_h, s_e = rng.uniform(0.88, 1.12, size=2)
    q = np.arange(256, dtype=np.float64) / _Q
    od = _GLASS_OD + (q[:, None, None] * _H_VEC * s_h) + (q[None, :, None] * _E_VEC * s_e)
    return np.clip(np.rint(255.0 * np.exp(-od)), 0, 255).astype(np.uint8).reshape(65536, 3)


def render_slide(
    rng: np.random.Generator, label: str, texture: np.ndarray, size: int = SLIDE_SIZE
) -> tuple[np.ndarray, list[int], float]:
    """-> (RGB ``uint8 [size, size, 3]``, planted region bbox ``[x0, y0, x1, y1]`` level-0 px, tissue fraction)."""
    if label not in ("A", "B"):
        raise ValueError(f"unknown class {label!r}")
    oy, ox = (int(v) for v in rng.integers(0, texture.shape[0] - size + 1, size=2))
    k, flip = int(rng.integers(4)), bool(rng.integers(2))

    def view(a: np.ndarray) -> np.ndarray:  # a random crop, rotation and flip of the texture (no copy)
        a = np.rot90(a[oy : oy + size, ox : ox + size], k)
        return a[:, ::-1] if flip else a

    mask = _tissue_mask(rng, size)
    bbox = _region_bbox(rng, mask)
    x0, y0, x1, y1 = bbox
    mask[y0:y1, x0:x1] = True
    idx = np.multiply(view(texture), mask, dtype=np.uint16)  # lookup index H << 8 | E; 0 (no stain) on glass
    region = idx[y0:y1, x0:x1]
    rh = (region >> 8).astype(np.float32) / _Q
    re = (region & 255).astype(np.float32) / _Q
    (_glands if label == "A" else _single_files)(rng, rh, re)
    idx[y0:y1, x0:x1] = _combine(_quantise(rh), _quantise(re))
    rgb = np.take(_lut(rng), idx, axis=0)
    return rgb, bbox, float(mask.mean())


def write_pyramid_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float = SLIDE_MPP,
    downsamples: tuple[int, ...] = SLIDE_DOWNSAMPLES,
    tile: int = SLIDE_TILE,
    quality: int = JPEG_QUALITY,
    description: str = "MoSARe synthetic H&E slide",
) -> None:
    """Write ``rgb`` as a tiled, JPEG-compressed pyramidal TIFF (one page per level), atomically.

    Levels are box-filtered by 2 each (``downsamples`` must be 1, 2, 4, …); the TIFF resolution
    (pixels per centimetre = 10⁴ / ``mpp``) lets OpenSlide report ``openslide.mpp-x``/``-y``.
    """
    if downsamples[0] != 1 or any(b != 2 * a for a, b in zip(downsamples, downsamples[1:])):
        raise ValueError("downsamples must be 1, 2, 4, ...")
    res = 1e4 / mpp
    img = Image.fromarray(rgb)
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp) as tw:
        for level, _ in enumerate(downsamples):
            if level:
                img = img.reduce(2)
            tw.write(
                np.asarray(img),
                photometric="rgb",
                tile=(tile, tile),
                compression="jpeg",
                compressionargs={"level": quality},
                resolution=(res / 2**level, res / 2**level),
                resolutionunit="CENTIMETER",
                subfiletype=1 if level else 0,
                description=description if level == 0 else None,
                metadata=None,
                software="mosare",
            )
