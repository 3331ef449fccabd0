"""The synthetic demo cohort: deterministic, missing as recorded, with the planted signals present,
and real slide files that OpenSlide opens."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import openslide
import pandas as pd
import pytest

from mosare.io.features import read_features
from mosare.synthetic.cohort import SIGNAL_SENTENCES, write_demo_cohort
from mosare.synthetic.slide import SLIDE_MPP, SLIDE_SIZE, SLIDE_TILE


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    summary = write_demo_cohort(out, n_cases=120, seed=0)
    return out, summary


def _truth(out: Path) -> dict:
    return json.loads((out / "ground_truth.json").read_text())


def _without_slides(truth: dict) -> dict:
    truth = json.loads(json.dumps(truth))
    truth.pop("slide")
    for p in truth["patients"].values():
        p.pop("slide_region_bbox")
    return truth


def test_same_seed_same_files(cohort: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = cohort
    # the slides draw from their own random streams: without them, everything else is unchanged
    again = tmp_path / "again"
    summary = write_demo_cohort(again, n_cases=120, seed=0, slides=False)
    assert summary["slides_dir"] is None and not (again / "slides").exists()
    for name in ("rna.csv.gz", "reports.csv.gz"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_csv(out / "slides.csv").drop(columns="slide_path"), pd.read_csv(again / "slides.csv"))
    assert _without_slides(_truth(out)) == _without_slides(_truth(again))
    assert all(p["slide_region_bbox"] is None for p in _truth(again)["patients"].values())
    files = sorted(p.name for p in (out / "features").glob("*.h5"))
    assert files == sorted(p.name for p in (again / "features").glob("*.h5"))
    for name in files:
        a, b = read_features(out / "features" / name), read_features(again / "features" / name)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.coords, b.coords)
        assert a.attrs == b.attrs

    other = tmp_path / "other"
    write_demo_cohort(other, n_cases=120, seed=1, slides=False)
    assert gzip.decompress((out / "rna.csv.gz").read_bytes()) != gzip.decompress((other / "rna.csv.gz").read_bytes())


def test_tables_and_missingness(cohort: tuple[Path, dict]) -> None:
    out, summary = cohort
    truth = _truth(out)
    patients = truth["patients"]
    assert len(patients) == 120
    rna = pd.read_csv(out / "rna.csv.gz")
    reports = pd.read_csv(out / "reports.csv.gz")
    slides = pd.read_csv(out / "slides.csv")
    assert list(rna.columns[:2]) == ["patient_id", "label"] and rna.shape[1] == 2 + 200
    assert all(re.fullmatch(r"GENE\d{4}", c) for c in rna.columns[2:])
    assert list(reports.columns) == ["patient_id", "label", "text"]
    assert list(slides.columns) == ["patient_id", "features_path", "slide_path"]

    present = {"rna": set(rna.patient_id), "rpt": set(reports.patient_id), "wsi": set(slides.patient_id)}
    for pid, info in patients.items():
        for m in ("wsi", "rna", "rpt"):
            assert (pid in present[m]) == (m not in info["dropped"]), (pid, m)
        assert len(info["dropped"]) < 3
        assert not {"rna", "rpt"} <= set(info["dropped"])  # the label is always in some table
    for m in ("wsi", "rna", "rpt"):
        n_missing = sum(m in p["dropped"] for p in patients.values())
        assert 6 <= n_missing <= 18 and n_missing == summary["missing"][m]

    labels = pd.Series({pid: p["label"] for pid, p in patients.items()})
    assert set(labels) == {"A", "B"} and 0.35 <= (labels == "B").mean() <= 0.65
    for table in (rna, reports):
        assert (table.set_index("patient_id").label == labels[table.patient_id].values).all()
    for rel in [*slides.features_path, *slides.slide_path]:
        assert not Path(rel).is_absolute() and (out / rel).is_file()
    assert sorted(p.name for p in (out / "slides").iterdir()) == sorted(Path(r).name for r in slides.slide_path)


def test_rna_signal(cohort: tuple[Path, dict]) -> None:
    out, _ = cohort
    truth = _truth(out)
    rna = pd.read_csv(out / "rna.csv.gz")
    genes = truth["rna_signal_genes"]
    assert len(genes) == 15
    means = rna.groupby("label")[rna.columns[2:]].mean()
    diff = (means.loc["B"] - means.loc["A"]).abs()
    assert diff[genes].min() > 0.4
    others = diff.drop(index=genes)
    assert diff[genes].mean() > 3 * others.mean()


def test_report_signal(cohort: tuple[Path, dict]) -> None:
    out, _ = cohort
    truth = _truth(out)
    reports = pd.read_csv(out / "reports.csv.gz")
    for row in reports.itertuples():
        sentences = re.split(r"(?<=\.)\s+", row.text)
        assert 8 <= len(sentences) <= 20
        idx = truth["patients"][row.patient_id]["planted_sentence_index"]
        assert sentences[idx] in SIGNAL_SENTENCES[row.label]
        other = "B" if row.label == "A" else "A"
        assert not any(s in SIGNAL_SENTENCES[other] for s in sentences)
        # the label letters never appear as words (a label-leak scrub would otherwise be needed)
        assert not re.search(r"\b[ab]\b", row.text, flags=re.IGNORECASE), row.text


def test_slide_signal(cohort: tuple[Path, dict]) -> None:
    out, _ = cohort
    truth = _truth(out)
    direction = np.asarray(truth["wsi_signal_direction"])
    slides = pd.read_csv(out / "slides.csv")
    inside_proj: dict[str, list[float]] = {"A": [], "B": []}
    outside_proj: dict[str, list[float]] = {"A": [], "B": []}
    for row in slides.itertuples():
        info = truth["patients"][row.patient_id]
        sf = read_features(out / row.features_path)
        assert 150 <= sf.n_patches <= 400 and sf.dim == 64 and sf.n_patches == info["n_patches"]
        assert sf.attrs["patch_size_level0"] == 256
        assert np.all(sf.coords % 256 == 0)
        assert len(np.unique(sf.coords, axis=0)) == sf.n_patches
        x0, y0, x1, y1 = info["region_bbox"]
        x, y = sf.coords[:, 0], sf.coords[:, 1]
        inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        assert inside.sum() == info["region_patches"] >= 8
        proj = sf.features @ direction
        inside_proj[info["label"]].append(float(proj[inside].mean()))
        outside_proj[info["label"]].append(float(proj[~inside].mean()))
    gap_inside = np.mean(inside_proj["A"]) - np.mean(inside_proj["B"])
    gap_outside = np.mean(outside_proj["A"]) - np.mean(outside_proj["B"])
    assert gap_inside > 2.0
    assert abs(gap_outside) < 0.5


def test_small_cohort_fully_deterministic(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_demo_cohort(a, n_cases=10, seed=3)
    write_demo_cohort(b, n_cases=10, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.suffix != ".h5")
    assert sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.suffix != ".h5") == files
    assert sum(f.suffix == ".tiff" for f in files) == 9
    for f in files:  # TIFF bytes included
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    # a rerun with other settings leaves no stale slides behind
    write_demo_cohort(a, n_cases=10, seed=3, slides=False)
    assert not list((a / "slides").glob("*.tiff"))


def _dark_white(rgb: np.ndarray) -> tuple[float, float]:
    """Fractions of nucleus-dark pixels and of lumen-white pixels."""
    rgb = rgb.astype(np.int32)
    return float((rgb.sum(-1) < 420).mean()), float((rgb.min(-1) > 225).mean())


def test_slides_open_in_openslide(cohort: tuple[Path, dict]) -> None:
    out, _ = cohort
    truth = _truth(out)
    assert truth["slide"]["mpp"] == SLIDE_MPP and truth["slide"]["size"] == [SLIDE_SIZE, SLIDE_SIZE]
    slides = pd.read_csv(out / "slides.csv")
    stats: dict[str, list[tuple[float, float]]] = {"A": [], "B": []}
    background: list[float] = []
    for n, row in enumerate(slides.itertuples()):
        info = truth["patients"][row.patient_id]
        path = out / row.slide_path
        assert openslide.OpenSlide.detect_format(str(path)) == "generic-tiff"
        with openslide.OpenSlide(str(path)) as s:
            assert s.level_count >= 2
            assert s.dimensions == (SLIDE_SIZE, SLIDE_SIZE)
            assert [round(d) for d in s.level_downsamples] == [1, 2, 4, 8]
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
            assert s.properties["openslide.level[0].tile-width"] == str(SLIDE_TILE)

            # tissue on white glass: corners white, a sane tissue fraction, the region on tissue
            thumb = np.asarray(s.read_region((0, 0), 3, s.level_dimensions[3]).convert("RGB")).astype(np.int32)
            tissue = thumb.min(-1) < 225
            assert 0.2 < tissue.mean() < 0.75, row.patient_id
            assert not tissue[:8, :8].any() and not tissue[-8:, -8:].any()
            x0, y0, x1, y1 = info["slide_region_bbox"]
            assert all(v % SLIDE_TILE == 0 for v in (x0, y0, x1, y1))
            assert 512 <= x1 - x0 <= 768 and 512 <= y1 - y0 <= 768 and x1 <= SLIDE_SIZE and y1 <= SLIDE_SIZE
            assert thumb[y0 // 8 : y1 // 8, x0 // 8 : x1 // 8].min(-1).mean() < 235  # stained, not glass

            region = np.asarray(s.read_region((x0, y0), 1, ((x1 - x0) // 2, (y1 - y0) // 2)).convert("RGB"))
            stats[info["label"]].append(_dark_white(region))
            if n < 30:  # ordinary tissue away from the region, for the background statistics
                ys, xs = np.nonzero(tissue)
                near = (xs * 8 >= x0 - 256) & (xs * 8 < x1 + 256) & (ys * 8 >= y0 - 256) & (ys * 8 < y1 + 256)
                far = np.flatnonzero(~near & (xs > 32) & (ys > 32) & (xs < 224) & (ys < 224))
                if not len(far):
                    continue
                k = far[len(far) // 2]
                cx, cy = int(xs[k] * 8), int(ys[k] * 8)
                patch = np.asarray(s.read_region((cx - 256, cy - 256), 1, (256, 256)).convert("RGB"))
                if (patch.min(-1) < 225).mean() > 0.9:
                    background.append(_dark_white(patch)[0])
    dark = {c: np.array([d for d, _ in v]) for c, v in stats.items()}
    white = {c: np.array([w for _, w in v]) for c, v in stats.items()}
    # class A: dense nuclei in glands with white lumina; class B: sparse single-file nuclei, no lumina
    assert dark["A"].min() > dark["B"].max()
    assert white["A"].min() > 0.03 > white["B"].max()
    # both planted morphologies carry more nuclei than the ordinary stroma
    assert len(background) >= 10 and dark["B"].mean() > 2 * np.median(background)
