"""The synthetic cohort's real slide files → `mosare extract` → `mosare experiment --slides` on all three modalities."""

from __future__ import annotations

import pandas as pd
import pytest

from mosare.cli import main


@pytest.mark.slow  # ~40 s: extraction of real TIFF slides then a 3-modality experiment (CI runs it in make test-slow)
def test_extract_then_experiment_on_synthetic_slides(tmp_path):
    from mosare.synthetic.cohort import write_demo_cohort

    cohort = tmp_path / "cohort"
    write_demo_cohort(cohort, n_cases=20, seed=1, slides=True)
    table = pd.read_csv(cohort / "slides.csv")
    assert table["slide_path"].notna().all()
    # a slides table that only names slide files: features must come from `mosare extract`
    table[["patient_id", "slide_path"]].to_csv(cohort / "slide_files.csv", index=False)
    feats = tmp_path / "features"
    assert main(["extract", "--slides", str(cohort / "slide_files.csv"), "--out", str(feats),
                 "--encoder", "handcrafted", "--workers", "0", "--batch-size", "32", "--device", "cpu"]) == 0
    assert len(list(feats.glob("*.h5"))) == len(table)

    out = tmp_path / "run"
    args = ["experiment", "--rna", str(cohort / "rna.csv.gz"), "--reports", str(cohort / "reports.csv.gz"),
            "--slides", str(cohort / "slide_files.csv"), "--label-column", "label", "--classes", "A,B",
            "--out", str(out), "--folds", "2", "--epochs", "2", "--models", "mosare,abmil",
            "--scenarios", "complete", "--hidden", "32", "--device", "cpu"]
    assert main(args) == 2  # without --features-dir: a one-line error, no training
    assert main(args + ["--features-dir", str(feats)]) == 0
    metrics = pd.read_csv(out / "metrics.csv")
    assert set(metrics.model) == {"mosare", "abmil"} and metrics.auc.notna().all()
    config = (out / "config.json").read_text()
    assert '"wsi"' in config and '"rna"' in config and '"rpt"' in config  # all three modalities trained
