"""The synthetic demo cohort: deterministic, missing as recorded, with the planted signals present."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mosare.io.features import read_features
from mosare.preprocess.synthetic import SIGNAL_SENTENCES, write_demo_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    summary = write_demo_cohort(out, n_cases=120, seed=0)
    return out, summary


def _truth(out: Path) -> dict:
    return json.loads((out / "ground_truth.json").read_text())


def test_same_seed_same_files(cohort: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = cohort
    again = tmp_path / "again"
    write_demo_cohort(again, n_cases=120, seed=0)
    for name in ("rna.csv.gz", "reports.csv.gz", "slides.csv", "ground_truth.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    files = sorted(p.name for p in (out / "features").glob("*.h5"))
    assert files == sorted(p.name for p in (again / "features").glob("*.h5"))
    for name in files:
        a, b = read_features(out / "features" / name), read_features(again / "features" / name)
        np.testing.assert_array_equal(a.features, b.features)
        np.testing.assert_array_equal(a.coords, b.coords)
        assert a.attrs == b.attrs

    other = tmp_path / "other"
    write_demo_cohort(other, n_cases=120, seed=1)
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
    assert list(slides.columns) == ["patient_id", "features_path"]

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
    for rel in slides.features_path:
        assert not Path(rel).is_absolute() and (out / rel).is_file()


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
