"""The embedded demo: a MoSARe model trained on the synthetic cohort's real slide files, and its cases.

Two halves:

- :func:`build_demo_assets` (maintainers, ``make demo-assets``, ~10 min on 2 CPU cores): writes the synthetic
  cohort with its TIFF slides, extracts patch features from the slides with the ``handcrafted`` encoder,
  runs a small ``experiment`` (MoSARe and baselines, complete data and missing-modality scenarios) and
  keeps, under ``assets/demo/``, the MoSARe checkpoint of fold 0 (safetensors + JSON) and the experiment's
  tables. The checkpoint's metadata lists the demo cases: fold-0 *test* patients, never seen in training.
- :func:`ensure_demo_cases` (the app, first launch, seconds): regenerates the same cohort's tables and just
  the demo cases' slides (deterministic in the seed), extracts their features, and caches everything under
  a cache folder, written into a temporary folder first and renamed when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from mosare.config import ExperimentConfig
from mosare.config import cache_dir as cache_root
from mosare.data.cohort import build_cohort
from mosare.errors import MosareError
from mosare.io.atomic import atomic_write_text
from mosare.slides.extract import extract_slide, load_encoder, run_extract
from mosare.synthetic.cohort import SIGNAL_SENTENCES, write_demo_cohort
from mosare.text.embed import ReportEmbedder
from mosare.train.experiment import run_experiment
from mosare.train.splits import patient_folds
from mosare.types import resolve_device

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "demo"
MODEL_PATH = ASSETS / "model" / "mosare.safetensors"
EXPERIMENT_DIR = ASSETS / "experiment"
DEMO_SEED = 0
DEMO_CASES = 120
DEMO_ENCODER = "handcrafted"
CASES_VERSION = 1  # bump when the cached demo-case layout changes

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class DemoCase:
    """One synthetic patient's files and what was planted in them."""

    patient_id: str
    label: str
    slide_path: Path | None
    features_path: Path | None
    rna_path: Path | None  # a one-row table of this patient's expression
    report_text: str | None
    slide_region_bbox: list[int] | None  # level-0 px [x0, y0, x1, y1), where the class morphology is
    planted_sentence: str | None  # the report sentence carrying the class signal

    @property
    def modalities(self) -> list[str]:
        return [m for m, v in (("wsi", self.slide_path), ("rna", self.rna_path), ("rpt", self.report_text)) if v]



def demo_meta(model_path: str | Path = MODEL_PATH) -> dict:
    """The demo checkpoint's JSON metadata (its ``demo`` entry holds the demo case ids and the cohort seed)."""
    path = Path(model_path).with_suffix(".json")
    if not path.is_file():
        raise MosareError(f"demo model not found at {path}; run `make demo-assets` to build it")
    return json.loads(path.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------------------------- the app side


def ensure_demo_cases(cache_dir: str | Path | None = None, model_path: str | Path = MODEL_PATH,
                      progress: Progress | None = None) -> list[DemoCase]:
    """The demo cases, materialised once under ``<cache_dir>/demo-cases-v<N>-<seed>`` and reused afterwards."""
    demo = demo_meta(model_path)["demo"]
    ids: list[str] = list(demo["case_ids"])
    root = Path(cache_dir or cache_root()) / f"demo-cases-v{CASES_VERSION}-s{demo['seed']}-n{demo['n_cases']}"
    if not (root / "done.json").is_file():
        _materialise(root, ids, int(demo["seed"]), int(demo["n_cases"]), demo["encoder"], progress)
    return load_demo_cases(root, ids)


def _materialise(root: Path, ids: list[str], seed: int, n_cases: int, encoder: str, progress: Progress | None) -> None:
    say = progress or (lambda f, msg: None)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=root.parent))
    try:
        say(0.05, f"writing {len(ids)} synthetic demo slides")
        write_demo_cohort(tmp, n_cases=n_cases, seed=seed, slides=True, slide_ids=set(ids))
        enc = load_encoder(encoder, resolve_device("cpu"))
        slides = sorted((tmp / "slides").glob("*.tiff"))
        for i, slide in enumerate(slides):
            say(0.3 + 0.65 * i / max(1, len(slides)), f"extracting patch features: {slide.name}")
            extract_slide(slide, tmp / "extracted", enc, workers=0, batch_size=64, progress=False)
        shutil.rmtree(tmp / "features", ignore_errors=True)  # the cohort's own synthetic features: not used
        (tmp / "done.json").write_text(json.dumps({"case_ids": ids, "seed": seed}), encoding="utf-8")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
        say(1.0, "demo cases ready")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_demo_cases(root: str | Path, ids: list[str]) -> list[DemoCase]:
    root = Path(root)
    truth = json.loads((root / "ground_truth.json").read_text(encoding="utf-8"))["patients"]
    rna = pd.read_csv(root / "rna.csv.gz").set_index("patient_id")
    reports = pd.read_csv(root / "reports.csv.gz").set_index("patient_id")
    out = []
    for pid in ids:
        g = truth[pid]
        slide = root / "slides" / f"{pid}.tiff"
        feats = root / "extracted" / f"{pid}.h5"
        rna_path = None
        if pid in rna.index:
            rna_path = root / "case-rna" / f"{pid}.csv"
            if not rna_path.is_file():
                atomic_write_text(rna_path, rna.loc[[pid]].drop(columns=["label"]).to_csv())
        text = str(reports.loc[pid, "text"]) if pid in reports.index else None
        planted = None
        if text is not None and g["planted_sentence_index"] is not None:
            planted = next((s for s in SIGNAL_SENTENCES[g["label"]] if s in text), None)
        out.append(DemoCase(pid, g["label"], slide if slide.is_file() else None, feats if feats.is_file() else None,
                            rna_path, text, g["slide_region_bbox"], planted))
    return out


# ----------------------------------------------------------------------------------------------- the maintainer side


def build_demo_assets(work_dir: str | Path, out_dir: str | Path = ASSETS, *, epochs: int = 40, hidden: int = 64,
                      folds: int = 3, workers: int = 2, n_demo: int = 8, progress: bool = True) -> dict:
    """Build ``assets/demo/`` from scratch (see the module docstring). Returns a summary dict."""

    work, out = Path(work_dir), Path(out_dir)
    cohort_dir = work / "cohort"
    write_demo_cohort(cohort_dir, n_cases=DEMO_CASES, seed=DEMO_SEED, slides=True)
    table = pd.read_csv(cohort_dir / "slides.csv")
    table[["patient_id", "slide_path"]].to_csv(cohort_dir / "slide_files.csv", index=False)
    features = work / "features"
    run_extract(cohort_dir / "slide_files.csv", features, DEMO_ENCODER, workers=0, device="cpu",
                progress=progress, qc_dir=work / "qc")
    cfg = ExperimentConfig()
    cfg = replace(cfg, label_column="label", classes=("A", "B"), folds=folds, seed=DEMO_SEED,
                  models=("mosare", "abmil", "snn", "text", "mcat", "porpoise"),
                  scenarios=("complete", "masked-unmasked", "removed-unmasked", "masked-masked"),
                  mask_rates=(0.3, 0.5, 0.7),
                  train=replace(cfg.train, epochs=epochs, patience=epochs, device="cpu", seed=DEMO_SEED),
                  model=replace(cfg.model, hidden=hidden))
    embedder = ReportEmbedder()
    cohort = build_cohort(cohort_dir / "rna.csv.gz", cohort_dir / "reports.csv.gz", cohort_dir / "slide_files.csv",
                          label_column="label", classes=cfg.classes, embedder=embedder, features_dir=features)
    run_dir = work / "experiment"
    run_experiment(cohort, cfg, run_dir, text_model=embedder.model_id, workers=workers, progress=progress)

    # Demo cases: fold-0 test patients, the first n_demo/2 of each class with all three modalities.
    _, test_idx = patient_folds(cohort.labels, cfg.folds, cfg.seed)[0]
    full = [int(i) for i in test_idx if cohort.present[i].all()]
    ids: list[str] = []
    for c in range(len(cohort.classes)):
        ids += [cohort.patient_ids[i] for i in full if cohort.labels[i] == c][: n_demo // 2]
    partial = [cohort.patient_ids[int(i)] for i in test_idx if not cohort.present[int(i)].all()][:2]
    ids = sorted(ids) + partial

    (out / "model").mkdir(parents=True, exist_ok=True)
    src = run_dir / "checkpoints" / "mosare" / "complete-0" / "fold0"
    doc = json.loads(src.with_suffix(".json").read_text(encoding="utf-8"))
    doc["demo"] = {"case_ids": ids, "seed": DEMO_SEED, "n_cases": DEMO_CASES, "encoder": DEMO_ENCODER,
                           "note": "MoSARe trained on fold 0's training patients of the synthetic demo cohort "
                                   "(patch features extracted from its TIFF slides); the demo cases are fold-0 "
                                   "test patients."}
    doc["encoder"] = DEMO_ENCODER
    shutil.copyfile(src.with_suffix(".safetensors"), MODEL_PATH if out == ASSETS else out / "model" / "mosare.safetensors")
    atomic_write_text((out / "model" / "mosare.json"), json.dumps(doc, indent=1) + "\n")
    exp = out / "experiment"
    exp.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.csv", "runs.csv", "summary.md", "config.json"):
        shutil.copyfile(run_dir / name, exp / name)
    return {"case_ids": ids, "test_auc": doc.get("test_metrics", {}).get("auc"),
            "n_train": int(np.sum(cohort.present.any(1)))}
