"""Slide opening, tissue masks and MPP-aware tiling on the real slides in ../shared/data/slides."""

from __future__ import annotations

import dataclasses
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import require_data
from mosare.errors import InputError
from mosare.io import slides as slides_module
from mosare.io.slides import open_slide
from mosare.slides.tissue import (
    MissingMppWarning,
    TileGrid,
    otsu_threshold,
    read_tile,
    QC_MAX,
    save_qc_thumbnail,
    tile_slide,
    tissue_mask,
)

CMU = "slides/cmu-1-small-region.svs"
TCGA = "slides/tcga-cr-7395-01a-01-ts1.svs"


@pytest.fixture(scope="module")
def cmu():
    with open_slide(require_data(CMU)) as slide:
        yield slide, slide.thumbnail(2048)


@pytest.fixture(scope="module")
def tcga():
    with open_slide(require_data(TCGA)) as slide:
        yield slide, slide.thumbnail(1024)


def _assert_one_line_naming(err: pytest.ExceptionInfo[InputError], name: str) -> str:
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{name}: "), message
    return message


# ---------------------------------------------------------------- opening


def test_cmu_metadata_and_no_identifying_properties(cmu):
    slide, _ = cmu
    assert slide.dimensions == (2220, 2967)
    assert slide.level_count == len(slide.level_dimensions) == len(slide.level_downsamples)
    assert slide.mpp == pytest.approx(0.499)
    assert slide.objective_power == 20.0
    assert slide.vendor == "aperio"
    assert not hasattr(slide, "associated_images")  # label and macro stay hidden
    assert set(slide.properties) <= set(slides_module._SAFE_PROPERTIES)


def test_read_region_and_thumbnail_are_rgb(cmu):
    slide, thumb = cmu
    tile = slide.read_region(1000, 1500, 0, (256, 128))
    assert tile.shape == (128, 256, 3) and tile.dtype == np.uint8
    assert max(thumb.shape[:2]) == 2048 and thumb.shape[2] == 3 and thumb.dtype == np.uint8
    # Outside the slide is transparent in OpenSlide: composited onto white.
    outside = slide.read_region(2220 - 10, 0, 0, (20, 20))
    assert (outside[:, 10:] == 255).all()


def test_best_level_for_downsample(tcga):
    slide, _ = tcga
    assert slide.best_level_for_downsample(1.0) == 0
    assert slide.best_level_for_downsample(1.9) == 0
    assert slide.best_level_for_downsample(2.0) == 1  # level 1 is 2.0005
    assert slide.best_level_for_downsample(64.0) == 1


@pytest.mark.parametrize(
    "name, vendor, mpp",
    [
        ("kidney-48-5.tif", None, None),  # stripped TIFF: OpenSlide's PIL fallback
        ("boxes.tiff", "generic-tiff", None),  # 72 dpi tag = 352.8 µm/px: implausible, ignored
        ("small.svs", "aperio", 0.499),
        ("boxes.png", None, None),
        ("boxes_0.dcm", "dicom", 0.499),
        ("boxes_1.dcm", "dicom", 0.499),
    ],
)
def test_other_formats_open(name, vendor, mpp):
    with open_slide(require_data(f"slides/{name}")) as slide:
        assert slide.vendor == vendor
        assert slide.mpp == (pytest.approx(mpp) if mpp else None)
        w, h = slide.dimensions
        region = slide.read_region(0, 0, 0, (min(w, 64), min(h, 64)))
        assert region.shape == (min(h, 64), min(w, 64), 3) and region.dtype == np.uint8
        assert slide.thumbnail(64).shape[2] == 3
        assert not any(k.startswith("dicom.") for k in slide.properties)  # no patient data


def test_dicom_folder_opens(tmp_path):
    # OpenSlide itself takes one .dcm file and finds the rest of the series beside it;
    # open_slide also accepts the folder.
    folder = tmp_path / "series"
    folder.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(require_data(f"slides/{name}"), folder / name)
    with open_slide(folder) as slide:
        assert slide.vendor == "dicom" and slide.dimensions == (16, 16)
        assert slide.read_region(0, 0, 0, (16, 16)).shape == (16, 16, 3)


def test_closed_slide_refuses_reads():
    slide = open_slide(require_data("slides/small.svs"))
    slide.close()
    slide.close()
    with pytest.raises(ValueError, match="closed"):
        slide.read_region(0, 0, 0, (4, 4))


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["broken.svs", "unopenable.tiff"])
def test_unopenable_files_raise_one_line_input_error(name):
    with pytest.raises(InputError) as err:
        open_slide(require_data(f"slides/{name}"))
    assert "cannot open slide" in _assert_one_line_naming(err, name)


def test_unreadable_svs_fails_at_read_region():
    with open_slide(require_data("slides/unreadable.svs")) as slide:
        with pytest.raises(InputError) as err:
            slide.read_region(0, 0, 0, (16, 16))
    assert "cannot read region at (0, 0)" in _assert_one_line_naming(err, "unreadable.svs")


def test_missing_text_and_empty_folder(tmp_path):
    with pytest.raises(InputError) as err:
        open_slide(tmp_path / "absent.svs")
    assert "not found" in _assert_one_line_naming(err, "absent.svs")

    fake = tmp_path / "notes.svs"
    fake.write_text("this is not a slide\n")
    with pytest.raises(InputError) as err:
        open_slide(fake)
    assert "cannot open slide" in _assert_one_line_naming(err, "notes.svs")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError) as err:
        open_slide(empty)
    _assert_one_line_naming(err, "empty")


def test_size_cap_checked_on_header(monkeypatch):
    monkeypatch.setattr(slides_module, "MAX_SIDE", 1000)
    for name in ("cmu-1-small-region.svs", "kidney-48-5.tif"):
        with pytest.raises(InputError) as err:
            open_slide(require_data(f"slides/{name}"))
        assert "too large" in _assert_one_line_naming(err, name)


# ---------------------------------------------------------------- tissue mask


def _canvas(h: int = 200, w: int = 200) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.clip(rng.normal(242, 3, (h, w, 3)), 0, 255).astype(np.uint8)  # glass with noise


def test_tissue_mask_background_only_and_faint_stain():
    assert not tissue_mask(_canvas()).any()
    assert not tissue_mask(np.full((50, 50, 3), 255, np.uint8)).any()
    faint = _canvas()
    faint[50:150, 60:140] = (235, 205, 220)  # pale eosin, saturation ~32
    mask = tissue_mask(faint)
    assert mask[60:140, 70:130].all() and not mask[:40].any()


def test_tissue_mask_excludes_pen_and_keeps_tissue():
    img = _canvas()
    img[40:160, 30:110] = (200, 120, 180)  # H&E pink-purple
    img[40:160, 140:170] = (20, 150, 60)  # green ink
    img[10:20, 10:190] = (30, 60, 170)  # blue ink
    mask = tissue_mask(img)
    assert mask[50:150, 40:100].all()
    assert not mask[40:160, 140:170].any() and not mask[10:20].any()


def test_otsu_threshold_splits_two_modes():
    values = np.array([10] * 100 + [200] * 100, np.uint8)
    assert 10 < otsu_threshold(values) <= 200
    assert otsu_threshold(np.full(5, 7, np.uint8)) is None


# ---------------------------------------------------------------- tiling


def _centres_on_tissue(grid: TileGrid) -> float:
    """Fraction of tiles whose centre falls on a tissue pixel of the mask."""
    centres = (grid.coords + grid.patch_size_level0 / 2) / grid.mask_downsample
    cols = np.clip(centres[:, 0].astype(int), 0, grid.mask.shape[1] - 1)
    rows = np.clip(centres[:, 1].astype(int), 0, grid.mask.shape[0] - 1)
    return float(grid.mask[rows, cols].mean())


def _check_tiles_against_mask(grid: TileGrid, min_tissue: float) -> None:
    """Recompute each tile's tissue coverage by slicing the mask; every tile must have tissue in
    its central half. (Tiles with only 25-50 % tissue on the tissue edge can have their very centre
    over glass, so the centre test is made on tiles with >= 75 % tissue.)"""
    d, size = grid.mask_downsample, grid.patch_size_level0
    for (x, y), fraction in zip(grid.coords, grid.tissue_fraction):
        window = grid.mask[int(y / d) : int(np.ceil((y + size) / d)), int(x / d) : int(np.ceil((x + size) / d))]
        assert window.mean() == pytest.approx(fraction, abs=0.02)
        assert window.mean() >= min_tissue - 0.02
        q = size / 4
        assert grid.mask[int((y + q) / d) : int((y + 3 * q) / d), int((x + q) / d) : int((x + 3 * q) / d)].any()


def test_cmu_tiles_at_20x_lie_on_tissue(cmu, tmp_path):
    slide, thumb = cmu
    grid = tile_slide(slide, thumb_rgb=thumb)
    assert grid.mpp_source == "metadata" and grid.slide_mpp == pytest.approx(0.499)
    assert abs(grid.patch_size_level0 - 256) <= 1 and grid.read_level == 0
    assert grid.read_size == grid.patch_size_level0 and grid.patch_size == 256
    assert len(grid) > 20 and grid.coords.dtype == np.int64 and grid.coords.shape == (len(grid), 2)
    assert (grid.tissue_fraction >= 0.25).all()
    assert (grid.coords >= 0).all()
    assert (grid.coords + grid.patch_size_level0 <= np.array(slide.dimensions)).all()
    _check_tiles_against_mask(grid, 0.25)
    assert 0.1 < grid.mask.mean() < 0.7  # tissue strip on glass
    strict = tile_slide(slide, min_tissue=0.75, thumb_rgb=thumb)
    assert 20 < len(strict) < len(grid) and _centres_on_tissue(strict) >= 0.95
    assert read_tile(slide, grid, 0).shape == (256, 256, 3)

    qc = tmp_path / "qc" / "cmu.png"
    save_qc_thumbnail(grid, thumb, qc)
    with Image.open(qc) as image:
        image.verify()
    with Image.open(qc) as image:
        scale = min(1.0, QC_MAX / max(thumb.shape[:2]))  # QC pictures are capped at QC_MAX px
        assert image.format == "PNG" and image.size == (round(thumb.shape[1] * scale), round(thumb.shape[0] * scale))
    assert list(qc.parent.iterdir()) == [qc]  # no temporary file left


def test_tcga_without_mpp_warns_once_and_override(tcga):
    slide, thumb = tcga
    assert slide.mpp is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grid = tile_slide(slide, thumb_rgb=thumb)
        tile_slide(slide, thumb_rgb=thumb)
    mpp_warnings = [w for w in caught if issubclass(w.category, MissingMppWarning)]
    assert len(mpp_warnings) == 1
    assert str(mpp_warnings[0].message).startswith(slide.name) and "--mpp" in str(mpp_warnings[0].message)
    assert grid.mpp_source == "assumed" and grid.patch_size_level0 == 256 and len(grid) > 20

    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingMppWarning)
        over = tile_slide(slide, mpp_override=0.25, thumb_rgb=thumb)
    assert over.mpp_source == "override" and over.patch_size_level0 == 512
    assert slide.level_downsamples[1] == pytest.approx(2.0, abs=0.01)
    assert over.read_level == 1 and over.read_size == 256
    _check_tiles_against_mask(over, 0.25)
    dense = over.tissue_fraction >= 0.75
    assert _centres_on_tissue(dataclasses.replace(over, coords=over.coords[dense])) >= 0.95
    tile = read_tile(slide, over, len(over) // 2)
    assert tile.shape == (256, 256, 3) and tile.std() > 5  # real tissue, not blank


def test_no_tissue_tile_gives_empty_grid():
    with open_slide(require_data("slides/kidney-48-5.tif")) as slide:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingMppWarning)
            grid = tile_slide(slide, min_tissue=0.25)
    assert grid.mask.any()  # a tissue fragment smaller than one tile
    assert len(grid) == 0 and grid.coords.shape == (0, 2) and grid.tissue_fraction.shape == (0,)


def test_small_slide_and_min_tissue_zero():
    with open_slide(require_data("slides/boxes.tiff")) as slide:
        grid = tile_slide(slide, patch_size=64, mpp_override=0.5, min_tissue=0.0)
    assert len(grid) == (300 // 64) * (250 // 64)


def test_invalid_arguments(cmu):
    slide, thumb = cmu
    with pytest.raises(ValueError):
        tile_slide(slide, mpp_override=0.0, thumb_rgb=thumb)
    with pytest.raises(ValueError):
        tile_slide(slide, min_tissue=1.5, thumb_rgb=thumb)
    with pytest.raises(ValueError):
        slide.read_region(0, 0, 5, (4, 4))


def test_path_is_kept(cmu):
    slide, _ = cmu
    assert isinstance(slide.path, Path) and slide.name == "cmu-1-small-region.svs"
