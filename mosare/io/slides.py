"""Whole-slide image access through OpenSlide, with one-line user-facing errors.

Opens anything OpenSlide reads (Aperio SVS, Hamamatsu, MIRAX, Leica, generic tiled TIFF, DICOM WSI,
...) and plain images (PNG, JPEG, stripped TIFF) through OpenSlide's PIL-backed ``ImageSlide``.
Label, macro and other associated images are never exposed, and only an allowlist of
non-identifying properties is kept (DICOM and some vendors store patient names, barcodes and dates).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from types import TracebackType

import numpy as np
import openslide
from PIL import Image

from mosare.errors import InputError

MAX_SIDE = 200_000
"""Largest accepted level-0 width or height, checked on the header before any pixel is decoded."""

MPP_RANGE = (0.05, 20.0)
"""Plausible microns per pixel: outside it (e.g. 352.8 from a default 72 dpi TIFF tag) the value is ignored."""

_SAFE_PROPERTIES = (
    openslide.PROPERTY_NAME_VENDOR,
    openslide.PROPERTY_NAME_MPP_X,
    openslide.PROPERTY_NAME_MPP_Y,
    openslide.PROPERTY_NAME_OBJECTIVE_POWER,
    openslide.PROPERTY_NAME_BOUNDS_X,
    openslide.PROPERTY_NAME_BOUNDS_Y,
    openslide.PROPERTY_NAME_BOUNDS_WIDTH,
    openslide.PROPERTY_NAME_BOUNDS_HEIGHT,
    "tiff.XResolution",
    "tiff.YResolution",
    "tiff.ResolutionUnit",
)

_MICRONS_PER_UNIT = {"inch": 25_400.0, "centimeter": 10_000.0, 2: 25_400.0, 3: 10_000.0}

_TIFF_XRESOLUTION, _TIFF_YRESOLUTION, _TIFF_RESOLUTIONUNIT = 282, 283, 296


def _one_line(err: BaseException) -> str:
    """The error's message on one line (an OSError's strerror, without the full path)."""
    text = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
    return " ".join(text.split()) or type(err).__name__


class Slide:
    """An open whole-slide image. Coordinates are level-0 pixels (x right, y down).

    Use as a context manager or call :meth:`close`. Open one ``Slide`` per worker process.
    """

    def __init__(
        self,
        path: Path,
        handle: openslide.AbstractSlide,
        properties: dict[str, str],
        image: Image.Image | None = None,
    ):
        self.path = path
        self._handle: openslide.AbstractSlide | None = handle
        self._image = image  # PIL image behind an ImageSlide; ImageSlide does not close images it was given
        self.properties: dict[str, str] = properties
        """Non-identifying properties only (vendor, MPP, objective power, bounds, TIFF resolution)."""
        self.dimensions: tuple[int, int] = tuple(handle.dimensions)  # type: ignore[assignment]
        self.level_count: int = int(handle.level_count)
        self.level_dimensions: tuple[tuple[int, int], ...] = tuple(
            (int(w), int(h)) for w, h in handle.level_dimensions
        )
        self.level_downsamples: tuple[float, ...] = tuple(float(d) for d in handle.level_downsamples)
        self.mpp: float | None = _mpp_from_properties(properties)
        self.objective_power: float | None = _positive_float(
            properties.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        )
        self.vendor: str | None = properties.get(openslide.PROPERTY_NAME_VENDOR)
        self._warned: set[str] = set()

    @property
    def name(self) -> str:
        return self.path.name

    def __repr__(self) -> str:
        return f"Slide({self.name!r}, dimensions={self.dimensions}, levels={self.level_count}, mpp={self.mpp})"

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        if self._image is not None:
            self._image.close()
            self._image = None

    def _open_handle(self) -> openslide.AbstractSlide:
        if self._handle is None:
            raise ValueError(f"{self.name}: slide is closed")
        return self._handle

    def warn_once(self, message: str, category: type[Warning] = UserWarning, stacklevel: int = 2) -> None:
        """``warnings.warn(message)`` the first time this message is issued for this slide
        (``stacklevel`` counts from the caller of this method)."""
        if message not in self._warned:
            self._warned.add(message)
            warnings.warn(message, category, stacklevel=stacklevel + 1)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample is at most ``downsample`` (1 % tolerance, so a
        level at 2.0005 serves a request for 2)."""
        fitting = [lv for lv, ds in enumerate(self.level_downsamples) if ds <= downsample * 1.01]
        return max(fitting, key=lambda lv: self.level_downsamples[lv], default=0)

    def read_region(self, x0: int, y0: int, level: int, size: tuple[int, int]) -> np.ndarray:
        """Read ``size`` = (w, h) pixels of ``level`` whose top-left is level-0 pixel (x0, y0).

        Returns [h, w, 3] uint8 RGB, read-only (copy before modifying in place); transparent pixels
        (outside the scanned area or the image) are composited onto white. Decode failures raise
        :class:`InputError`.
        """
        handle = self._open_handle()
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.name}: level {level} out of range 0..{self.level_count - 1}")
        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            raise ValueError(f"{self.name}: region size must be positive, got {size}")
        try:
            return _rgba_to_rgb(handle.read_region((int(x0), int(y0)), level, (w, h)))
        except (openslide.OpenSlideError, OSError, ValueError, SyntaxError) as err:
            raise InputError(
                f"{self.name}: cannot read region at ({int(x0)}, {int(y0)}) level {level} ({_one_line(err)})"
            ) from None

    def thumbnail(self, max_size: int) -> np.ndarray:
        """Downsampled whole slide whose longer side is ``max_size`` px (never upsampled).

        Returns [th, tw, 3] uint8 RGB with tw = round(W / s), th = round(H / s) for
        s = max(1, max(W, H) / max_size). Read block by block from the best pyramid level, so a
        single-level gigapixel TIFF does not have to fit in memory.
        """
        if max_size < 1:
            raise ValueError(f"max_size must be positive, got {max_size}")
        width, height = self.dimensions
        scale = max(1.0, max(width, height) / max_size)
        out_w, out_h = max(1, round(width / scale)), max(1, round(height / scale))
        level = self.best_level_for_downsample(scale)
        level_ds = self.level_downsamples[level]
        level_w, level_h = self.level_dimensions[level]
        step_x, step_y = level_w / out_w, level_h / out_h  # level px per output px
        block = max(1, min(1024, int(4096 / max(step_x, step_y))))  # output px per block side
        out = np.empty((out_h, out_w, 3), np.uint8)
        for oy0 in range(0, out_h, block):
            oy1 = min(out_h, oy0 + block)
            ly0, ly1 = math.floor(oy0 * step_y), min(level_h, math.ceil(oy1 * step_y))
            for ox0 in range(0, out_w, block):
                ox1 = min(out_w, ox0 + block)
                lx0, lx1 = math.floor(ox0 * step_x), min(level_w, math.ceil(ox1 * step_x))
                rgb = self.read_region(
                    round(lx0 * level_ds), round(ly0 * level_ds), level, (max(1, lx1 - lx0), max(1, ly1 - ly0))
                )
                resized = Image.fromarray(rgb).resize((ox1 - ox0, oy1 - oy0), Image.Resampling.BOX)
                out[oy0:oy1, ox0:ox1] = np.asarray(resized)
        return out


def _rgba_to_rgb(region: Image.Image) -> np.ndarray:
    """A straight-alpha RGBA PIL image -> [h, w, 3] uint8 RGB composited over white."""
    if region.mode != "RGBA":
        region = region.convert("RGBA")
    if region.getextrema()[3][0] < 255:
        white = Image.new("RGBA", region.size, (255, 255, 255, 255))
        region = Image.alpha_composite(white, region)
    return np.asarray(region.convert("RGB"))


def _positive_float(value: object) -> float | None:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _plausible_mpp(value: float | None) -> float | None:
    if value is None or not MPP_RANGE[0] <= value <= MPP_RANGE[1]:
        return None
    return value


def _mpp_from_properties(props: dict[str, str]) -> float | None:
    """Microns per level-0 pixel: mean of openslide.mpp-x/-y, else from tiff.X/YResolution."""
    mpp_x = _positive_float(props.get(openslide.PROPERTY_NAME_MPP_X))
    mpp_y = _positive_float(props.get(openslide.PROPERTY_NAME_MPP_Y))
    if mpp_x is None or mpp_y is None:
        microns = _MICRONS_PER_UNIT.get(props.get("tiff.ResolutionUnit", ""))
        res_x = _positive_float(props.get("tiff.XResolution"))
        res_y = _positive_float(props.get("tiff.YResolution"))
        if microns is None or res_x is None:
            return None
        mpp_x = microns / res_x
        mpp_y = microns / res_y if res_y is not None else mpp_x
    return _plausible_mpp((mpp_x + mpp_y) / 2)


def _safe_properties(props: object) -> dict[str, str]:
    return {k: str(props[k]) for k in _SAFE_PROPERTIES if k in props}  # type: ignore[operator,index]


def _plain_image_properties(image: Image.Image) -> dict[str, str]:
    """tiff.* resolution properties of a plain TIFF opened by PIL (OpenSlide reports none)."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or _TIFF_XRESOLUTION not in tags or _TIFF_RESOLUTIONUNIT not in tags:
        return {}
    unit = {2: "inch", 3: "centimeter"}.get(int(tags[_TIFF_RESOLUTIONUNIT]))
    if unit is None:
        return {}
    props = {"tiff.ResolutionUnit": unit, "tiff.XResolution": str(float(tags[_TIFF_XRESOLUTION]))}
    if _TIFF_YRESOLUTION in tags:
        props["tiff.YResolution"] = str(float(tags[_TIFF_YRESOLUTION]))
    return props


def _dicom_file_in(folder: Path) -> Path:
    """A file of the folder that OpenSlide recognises as DICOM (it then finds the rest of the series)."""
    for candidate in sorted(p for p in folder.iterdir() if p.is_file()):
        try:
            if openslide.OpenSlide.detect_format(candidate) == "dicom":
                return candidate
        except (openslide.OpenSlideError, OSError):
            continue
    raise InputError(f"{folder.name}: folder holds no DICOM whole-slide image")


def _check_size(name: str, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise InputError(f"{name}: cannot open slide (empty image, {width} x {height} px)")
    if width > MAX_SIDE or height > MAX_SIDE:
        raise InputError(f"{name}: slide too large ({width} x {height} px; limit {MAX_SIDE} per side)")


def _open_openslide(path: Path, file: Path, name: str) -> Slide:
    try:
        handle = openslide.OpenSlide(file)
    except (openslide.OpenSlideError, OSError) as err:
        raise InputError(f"{name}: cannot open slide ({_one_line(err)})") from None
    try:
        _check_size(name, *handle.dimensions)
        return Slide(path, handle, _safe_properties(handle.properties))
    except BaseException:
        handle.close()
        raise


def _open_plain_image(path: Path, name: str) -> Slide:
    # Image.open reads the header only. A plain image is decoded whole on first read, so PIL's own
    # decompression-bomb limit (about 179 Mpx) is the cap here; pyramidal slides have MAX_SIDE.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # e.g. PIL's "Corrupt EXIF data" on a damaged TIFF
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise InputError(
            f"{name}: plain image too large to decode whole (convert it to a tiled pyramidal TIFF)"
        ) from None
    except (OSError, ValueError, SyntaxError) as err:
        unidentified = isinstance(err, Image.UnidentifiedImageError)
        detail = "Unsupported or missing image file" if unidentified else _one_line(err)
        if unidentified and _tiff_magic(path):
            detail = "a TIFF header but no readable image directory: truncated or corrupt file"
        raise InputError(f"{name}: cannot open slide ({detail})") from None
    try:
        _check_size(name, *image.size)
        return Slide(path, openslide.ImageSlide(image), _plain_image_properties(image), image)
    except BaseException:
        image.close()
        raise


def _tiff_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
    except OSError:
        return False


def open_slide(path: str | Path) -> Slide:
    """Open a whole-slide image, a DICOM WSI (a folder or one of its .dcm files) or a plain image.

    Raises :class:`InputError` with a one-line message naming the file for a missing path, an
    unsupported or corrupt file, or a slide above ``MAX_SIDE`` pixels per side.
    """
    path = Path(path)
    name = path.name or str(path)
    if not path.exists():
        raise InputError(f"{name}: slide file not found")
    if path.is_file() and path.stat().st_size == 0:
        raise InputError(f"{name}: cannot open slide (empty file, 0 bytes)")
    file = _dicom_file_in(path) if path.is_dir() else path
    try:
        vendor = openslide.OpenSlide.detect_format(file)
    except (openslide.OpenSlideError, OSError) as err:
        raise InputError(f"{name}: cannot open slide ({_one_line(err)})") from None
    if vendor is not None:
        return _open_openslide(path, file, name)
    return _open_plain_image(path, name)
