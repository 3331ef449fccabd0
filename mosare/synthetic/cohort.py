"""A small, deterministic synthetic cohort, for the demo and for tests.

Two classes, ``A`` and ``B``, three modalities, each with a planted class signal and natural missingness:

- ``rna.csv.gz``: ``patient_id, label, GENE0001 … GENE0200`` — z-scored expression with low-rank
  co-expression structure; class ``B`` is shifted on a block of 15 genes.
- ``reports.csv.gz``: ``patient_id, label, text`` — 8–20 pathology-report-like sentences from templates;
  exactly one sentence (at a random position) carries the class signal in class-specific wording that
  never names the label.
- ``features/<patient_id>.h5``: ``[N, 64]`` patch features (150 ≤ N ≤ 400) on a 256-px grid in level-0
  pixels; patches inside one rectangular region are shifted along a fixed random direction, in
  opposite senses for the two classes.
- ``slides/<patient_id>.tiff`` (unless ``slides=False``): a real, OpenSlide-readable H&E-like slide
  (2048 × 2048 px at 0.5 µm/px, tiled JPEG pyramid, see :mod:`mosare.synthetic.slide`) with
  one grid-aligned rectangle of class-specific morphology: cohesive glands (``A``) or single-file cords
  of dyscohesive cells (``B``). The slide is drawn independently of the feature file (its own tissue
  layout and region); it exists so that tiling, tissue detection, feature extraction and heatmaps can be
  run and checked on real image files.
- ``slides.csv``: ``patient_id, features_path[, slide_path]`` (relative to the csv's folder).
- ``ground_truth.json``: per patient the label, planted feature-region bbox ``region_bbox``
  ``[x0, y0, x1, y1]`` (level-0 px of the feature grid, exclusive end), the slide's planted region
  ``slide_region_bbox`` (level-0 px of the TIFF), planted sentence index and dropped modalities; plus the
  planted genes and direction.

About 10% of cases lack RNA, 10% a report and 10% a slide. A case never lacks both RNA and report, so
every case's label appears in at least one table (and thus never all three modalities are missing).
"""

from __future__ import annotations

import functools
import gzip
import io
import json
import os
from collections.abc import Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mosare.io.atomic import atomic_write_bytes, atomic_write_text
from mosare.io.features import write_features_h5
from mosare.synthetic import slide as synthetic_slide

CLASSES: tuple[str, str] = ("A", "B")
N_GENES = 200
N_SIGNAL_GENES = 15
RNA_SHIFT = 0.9
FEATURE_DIM = 64
PATCH_SIZE = 256
WSI_SHIFT = 1.5
MISSING_RATE = 0.10

# One sentence per report carries the class signal; the wording differs by class but never uses the
# label letters. Everything else is class-neutral filler.
SIGNAL_SENTENCES: dict[str, tuple[str, ...]] = {
    "A": (
        "Tumor cells form cohesive glandular structures with central necrosis.",
        "The carcinoma grows in cohesive nests and tubules with comedo-type central necrosis.",
        "Cohesive tumor cells arrange into well-formed glands surrounding necrotic debris.",
    ),
    "B": (
        "Single-file dyscohesive cells infiltrate the stroma.",
        "Small discohesive tumor cells infiltrate the fibrous stroma in single-file cords.",
        "Dyscohesive cells percolate through the stroma in linear single-file arrays.",
    ),
}

_SIDES = ("left", "right")
_PROCEDURES = ("lumpectomy", "partial mastectomy", "total mastectomy", "modified radical mastectomy", "wide local excision")
_MARGINS = ("negative for carcinoma", "free of tumor", "uninvolved by invasive carcinoma")
_DIRECTIONS = ("superior", "inferior", "medial", "lateral", "anterior", "posterior", "deep")
_BACKGROUND = (
    "fibrocystic changes",
    "apocrine metaplasia",
    "columnar cell change",
    "stromal fibrosis",
    "sclerosing adenosis",
    "benign cysts",
)
_FIXATIVES = ("formalin", "neutral buffered formalin")
_STAINS = ("hematoxylin and eosin", "H&E")


def _sentence_templates(rng: np.random.Generator) -> list[str]:
    """Class-neutral report sentences with random vocabulary (deliberately free of the words "a" and "b")."""

    def pick(options: tuple[str, ...]) -> str:
        return options[int(rng.integers(len(options)))]

    size = rng.uniform(0.6, 5.5)
    dims = sorted(rng.uniform(2.0, 18.0, size=3).round(1), reverse=True)
    n_nodes = int(rng.integers(1, 21))
    pos_nodes = int(min(n_nodes, rng.poisson(0.8)))
    grade = int(rng.integers(1, 4))
    bg1, bg2 = (_BACKGROUND[i] for i in rng.choice(len(_BACKGROUND), size=2, replace=False))
    nottingham = int(rng.integers(3 + 2 * (grade - 1), 6 + 2 * (grade - 1)))
    return [
        f"Specimen received fresh, labeled with the patient's name and {pick(_SIDES)} breast {pick(_PROCEDURES)}.",
        f"The specimen measures {dims[0]} x {dims[1]} x {dims[2]} cm.",
        f"The tumor measures {size:.1f} cm in greatest dimension.",
        f"Histologic grade is {grade} of 3 with total Nottingham score of {nottingham}.",
        f"All surgical margins are {pick(_MARGINS)}.",
        f"The closest margin is {pick(_DIRECTIONS)} at {rng.uniform(0.1, 2.0):.1f} cm.",
        f"Metastatic carcinoma is identified in {pos_nodes} of {n_nodes} lymph nodes examined.",
        f"Lymphovascular invasion is {pick(('present', 'not identified', 'not identified', 'suspicious'))}.",
        f"Estrogen receptor is {pick(('positive', 'positive', 'negative'))} in {int(rng.integers(0, 100))}% of tumor nuclei.",
        f"Progesterone receptor is {pick(('positive', 'negative'))} with {pick(('weak', 'moderate', 'strong'))} staining intensity.",
        f"HER2 immunohistochemistry score is {pick(('0', '1+', '2+', '3+'))}.",
        f"Ki-67 proliferation index is approximately {int(rng.integers(3, 60))}%.",
        f"Microcalcifications are {pick(('present in benign ducts', 'not identified', 'present in tumor'))}.",
        f"The background breast tissue shows {bg1} and {bg2}.",
        f"Sections are submitted in {int(rng.integers(4, 25))} cassettes after fixation in {pick(_FIXATIVES)}.",
        f"Skin and nipple are {pick(('uninvolved', 'free of tumor', 'not included'))}.",
        f"Pathologic stage is pT{int(rng.integers(1, 4))} pN{min(pos_nodes, 3)}.",
        f"The biopsy site changes and clip are identified {pick(('adjacent to', 'within', 'near'))} the tumor bed.",
        f"Slides stained with {pick(_STAINS)} were reviewed by two pathologists.",
        f"Frozen section diagnosis was {pick(('concordant', 'deferred', 'consistent'))} with the final diagnosis.",
        f"Perineural invasion is {pick(('not identified', 'present', 'not seen'))}.",
    ]


def _report(rng: np.random.Generator, label: str) -> tuple[str, int]:
    """One report text and the index of its planted signal sentence."""
    n_sentences = int(rng.integers(8, 21))  # 8..20 including the signal sentence
    templates = _sentence_templates(rng)
    chosen = rng.choice(len(templates), size=n_sentences - 1, replace=False)
    sentences = [templates[i] for i in sorted(chosen)]  # keep the usual report order
    signal = SIGNAL_SENTENCES[label][int(rng.integers(len(SIGNAL_SENTENCES[label])))]
    index = int(rng.integers(0, n_sentences))
    sentences.insert(index, signal)
    return " ".join(sentences), index


def _rna(rng: np.random.Generator, labels: np.ndarray, signal_genes: np.ndarray) -> np.ndarray:
    """Expression ``[n_cases, N_GENES]``: low-rank co-expression + noise, per-gene z-scored, class-B shift."""
    n = len(labels)
    loadings = rng.normal(0.0, 1.0, size=(6, N_GENES)) * 0.5
    x = rng.normal(size=(n, 6)) @ loadings + rng.normal(size=(n, N_GENES))
    x = (x - x.mean(0)) / x.std(0)
    signs = np.where(rng.random(N_SIGNAL_GENES) < 0.7, 1.0, -1.0)
    x[np.ix_(labels == "B", signal_genes)] += RNA_SHIFT * signs
    return x


def _slide(
    rng: np.random.Generator, label: str, prototypes: np.ndarray, direction: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[int], int]:
    """Patch features ``[N, FEATURE_DIM]``, coords ``[N, 2]`` (level-0 px), region bbox, patches in region."""
    n = int(rng.integers(150, 401))
    # a blob of tissue on a 32 x 32 grid: the n cells nearest a random centre (noisy elliptical distance)
    g = 32
    gy, gx = np.mgrid[0:g, 0:g]
    cy, cx = rng.uniform(12, 20, size=2)
    ay, ax = rng.uniform(0.7, 1.4, size=2)
    dist = ((gy - cy) / ay) ** 2 + ((gx - cx) / ax) ** 2 + rng.uniform(0, 8, size=(g, g))
    cells = np.argsort(dist.ravel(), kind="stable")[:n]
    cells.sort()  # raster order, like a tiler
    rows, cols = np.divmod(cells, g)
    coords = np.stack([cols, rows], axis=1).astype(np.int64) * PATCH_SIZE

    # tissue types: each patch is near one of the cohort-wide prototypes
    kinds = rng.integers(0, len(prototypes), size=n)
    feats = prototypes[kinds] + rng.normal(0.0, 1.0, size=(n, FEATURE_DIM))

    # planted region: a rectangle of grid cells around one tissue patch
    while True:
        centre = int(rng.integers(n))
        h, w = rng.integers(3, 7, size=2)
        r0, c0 = rows[centre] - h // 2, cols[centre] - w // 2
        inside = (rows >= r0) & (rows < r0 + h) & (cols >= c0) & (cols < c0 + w)
        if inside.sum() >= 8:
            break
    sign = 1.0 if label == "A" else -1.0
    feats[inside] += sign * WSI_SHIFT * direction
    bbox = [int(c0 * PATCH_SIZE), int(r0 * PATCH_SIZE), int((c0 + w) * PATCH_SIZE), int((r0 + h) * PATCH_SIZE)]
    return feats.astype(np.float32), coords, bbox, int(inside.sum())


def _missingness(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Boolean "dropped" flags per modality: ~10% each, RNA and report never both missing."""
    k = max(1, int(round(MISSING_RATE * n)))
    order = rng.permutation(n)
    no_rna, no_rpt = order[:k], order[k : 2 * k]  # disjoint: the label is always in some table
    no_wsi = rng.choice(n, size=k, replace=False)
    dropped = {m: np.zeros(n, dtype=bool) for m in ("wsi", "rna", "rpt")}
    dropped["rna"][no_rna] = True
    dropped["rpt"][no_rpt] = True
    dropped["wsi"][no_wsi] = True
    return dropped


def _csv_gz_bytes(df: pd.DataFrame, **kwargs: Any) -> bytes:
    """Gzipped CSV with a fixed header (mtime 0, no file name), so equal data gives equal bytes."""
    buf = io.StringIO()
    df.to_csv(buf, index=False, lineterminator="\n", **kwargs)
    return gzip.compress(buf.getvalue().encode("utf-8"), compresslevel=6, mtime=0)


@functools.lru_cache(maxsize=2)
def _texture(seed: int) -> np.ndarray:
    """The cohort's background stroma texture (read-only; cached: it takes about two seconds)."""
    tex = synthetic_slide.background_texture(np.random.default_rng([seed, 0x51DE]))
    tex.setflags(write=False)
    return tex


def _write_slides(out: Path, ids: list[str], labels: np.ndarray, present: np.ndarray, seed: int) -> dict[str, list[int]]:
    """Render and write ``slides/<pid>.tiff`` for the cases with a slide -> {pid: planted bbox}.

    Each slide draws from its own random stream (``seed``, case index), so the result does not depend on
    the order or the number of worker threads (numpy, Pillow and the JPEG codec release the GIL).
    """
    texture = _texture(seed)

    def one(i: int) -> tuple[str, list[int]]:
        rng = np.random.default_rng([seed, 0x51DE, i + 1])
        rgb, bbox, _ = synthetic_slide.render_slide(rng, str(labels[i]), texture)
        synthetic_slide.write_pyramid_tiff(
            out / "slides" / f"{ids[i]}.tiff", rgb, description=f"MoSARe synthetic H&E demo slide {ids[i]}"
        )
        return ids[i], bbox

    todo = [i for i in range(len(ids)) if present[i]]
    workers = max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, todo))


def write_demo_cohort(out_dir: str | Path, n_cases: int = 120, seed: int = 0, slides: bool = True,
                      slide_ids: Collection[str] | None = None) -> dict[str, Any]:
    """Write the synthetic demo cohort into ``out_dir`` (see the module docstring for the files).

    Deterministic in ``seed``: the same seed gives identical CSV bytes, feature arrays, ground truth and
    slide images; ``slides=False`` skips the TIFF slides (faster) and leaves everything else unchanged
    except the ``slide_path`` column and the slide fields of the ground truth. ``slide_ids`` renders only
    those patients' slides (each slide has its own random stream, so they are identical to a full run).
    Returns a summary dict with the written paths (``rna``, ``reports``, ``slides``, ``ground_truth``,
    ``features_dir``, ``slides_dir`` or None), ``n_cases``, the per-class counts and the per-modality
    number of missing cases.
    """
    if n_cases < 10:
        raise ValueError("n_cases must be at least 10")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    n_b = int(round(0.45 * n_cases))
    labels = np.array([CLASSES[0]] * (n_cases - n_b) + [CLASSES[1]] * n_b)[rng.permutation(n_cases)]
    ids = [f"DEMO-{i + 1:04d}" for i in range(n_cases)]
    dropped = _missingness(rng, n_cases)

    # --- RNA
    genes = [f"GENE{j + 1:04d}" for j in range(N_GENES)]
    signal_genes = np.sort(rng.choice(N_GENES, size=N_SIGNAL_GENES, replace=False))
    expr = _rna(rng, labels, signal_genes)
    rna = pd.DataFrame(np.round(expr, 4), columns=genes)
    rna.insert(0, "label", labels)
    rna.insert(0, "patient_id", ids)
    rna = rna[~dropped["rna"]]
    rna_path = out / "rna.csv.gz"
    atomic_write_bytes(rna_path, _csv_gz_bytes(rna, float_format="%.4f"))

    # --- reports (generated for every case so the random stream does not depend on missingness)
    texts, sentence_idx = zip(*(_report(rng, lab) for lab in labels))
    reports = pd.DataFrame({"patient_id": ids, "label": labels, "text": texts})[~dropped["rpt"]]
    reports_path = out / "reports.csv.gz"
    atomic_write_bytes(reports_path, _csv_gz_bytes(reports))

    # --- slides
    prototypes = rng.normal(0.0, 1.0, size=(4, FEATURE_DIM))
    direction = rng.normal(size=FEATURE_DIM)
    direction /= np.linalg.norm(direction)
    feat_dir = out / "features"
    slide_rows: list[dict[str, str]] = []
    regions: list[list[int]] = []
    n_patches: list[int] = []
    n_inside: list[int] = []
    attrs = {
        "encoder": "synthetic-demo",
        "patch_size": PATCH_SIZE,
        "patch_size_level0": PATCH_SIZE,
        "mpp": 0.5,
        "target_magnification": 20,
        "level0_magnification": 20,
    }
    for i, pid in enumerate(ids):
        feats, coords, bbox, inside = _slide(rng, str(labels[i]), prototypes, direction)
        regions.append(bbox)
        n_patches.append(len(feats))
        n_inside.append(inside)
        if dropped["wsi"][i]:
            continue
        rel = f"features/{pid}.h5"
        write_features_h5(out / rel, feats, coords, {**attrs, "slide_id": pid})
        row = {"patient_id": pid, "features_path": rel}
        if slides and (slide_ids is None or pid in slide_ids):
            row["slide_path"] = f"slides/{pid}.tiff"
        slide_rows.append(row)
    slide_dir = out / "slides"
    wanted = ~dropped["wsi"] & np.array([slide_ids is None or pid in slide_ids for pid in ids])
    slide_bboxes = _write_slides(out, ids, labels, wanted, seed) if slides else {}
    written = {out / r[k] for r in slide_rows for k in ("features_path", "slide_path") if k in r}
    for stale in [*feat_dir.glob("DEMO-*.h5"), *slide_dir.glob("DEMO-*.tiff")]:  # from an earlier run with other settings
        if stale not in written:
            stale.unlink()
    slides_path = out / "slides.csv"
    buf = io.StringIO()
    columns = ["patient_id", "features_path"] + (["slide_path"] if slides else [])
    pd.DataFrame(slide_rows, columns=columns).to_csv(buf, index=False, lineterminator="\n")
    atomic_write_text(slides_path, buf.getvalue())

    # --- ground truth
    patients: dict[str, Any] = {}
    for i, pid in enumerate(ids):
        gone = [m for m in ("wsi", "rna", "rpt") if dropped[m][i]]
        patients[pid] = {
            "label": str(labels[i]),
            "dropped": gone,
            "region_bbox": None if dropped["wsi"][i] else regions[i],
            "region_patches": None if dropped["wsi"][i] else n_inside[i],
            "n_patches": None if dropped["wsi"][i] else n_patches[i],
            "slide_region_bbox": slide_bboxes.get(pid),
            "planted_sentence_index": None if dropped["rpt"][i] else int(sentence_idx[i]),
        }
    truth = {
        "seed": seed,
        "n_cases": n_cases,
        "classes": list(CLASSES),
        "patch_size": PATCH_SIZE,
        "bbox_format": "[x0, y0, x1, y1] level-0 px, x1/y1 exclusive",
        "rna_signal_genes": [genes[j] for j in signal_genes],
        "wsi_signal_direction": [round(float(v), 8) for v in direction],
        "wsi_signal_sign": {"A": 1.0, "B": -1.0},
        "signal_sentences": {k: list(v) for k, v in SIGNAL_SENTENCES.items()},
        "slide": None if not slides else {
            "size": [synthetic_slide.SLIDE_SIZE, synthetic_slide.SLIDE_SIZE],
            "mpp": synthetic_slide.SLIDE_MPP,
            "downsamples": list(synthetic_slide.SLIDE_DOWNSAMPLES),
            "tile": synthetic_slide.SLIDE_TILE,
            "region_morphology": {
                "A": "cohesive glands: rings of dense small round nuclei around white lumina, and solid nests",
                "B": "single-file cords of small dyscohesive nuclei in stroma",
            },
            "note": "slide_region_bbox is in the TIFF's level-0 px; the slide is drawn independently of the feature file",
        },
        "patients": patients,
    }
    truth_path = out / "ground_truth.json"
    atomic_write_text(truth_path, json.dumps(truth, indent=1, sort_keys=True) + "\n")

    return {
        "out_dir": str(out),
        "rna": str(rna_path),
        "reports": str(reports_path),
        "slides": str(slides_path),
        "features_dir": str(feat_dir),
        "slides_dir": str(slide_dir) if slides else None,
        "ground_truth": str(truth_path),
        "n_cases": n_cases,
        "class_counts": {c: int((labels == c).sum()) for c in CLASSES},
        "missing": {m: int(dropped[m].sum()) for m in ("wsi", "rna", "rpt")},
    }
