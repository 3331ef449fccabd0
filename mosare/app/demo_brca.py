"""The real demo: MoSARe trained on TCGA-BRCA expression and pathology reports (IDC vs ILC), and its held-out patients.

Two halves, as for the synthetic demo (:mod:`mosare.app.demo`):

- :func:`build_brca_demo` (maintainers, ``make demo-assets-brca``, seconds): from a finished ``mosare experiment`` on
  the TCGA-BRCA tables (``bench/brca_results.sh`` runs it), copies the ``mosare`` checkpoint of one fold — trained
  on the other four folds at the default settings, with its fitted TF-IDF report encoder, expression statistics,
  temperature and conformal quantile — into ``assets/demo-brca/model/``, and that fold's **test** patients (never
  seen in training or model selection) into ``assets/demo-brca/cases/``: their expression rows and raw report
  texts, with their labels. Slides are not part of these tables: every case is slide-missing, and the model has no
  slide branch to reconstruct (the Case and Slide pages say so).
- :func:`brca_cases` (the app): reads the shipped cases and writes each patient's one-row expression table into a
  cache folder once (atomically), so a case goes through the same road as an uploaded one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from safetensors import safe_open
from safetensors.numpy import save_file

from mosare.errors import InputError, MosareError
from mosare.inference import Predictor
from mosare.io.atomic import atomic_write_text

ASSETS = Path(__file__).resolve().parents[2] / "assets" / "demo-brca"
MODEL_PATH = ASSETS / "model" / "mosare.safetensors"
LABEL_COLUMN = "oncotree_code"
CLASSES = ("IDC", "ILC")


@dataclass(frozen=True)
class RealCase:
    """One held-out TCGA-BRCA patient: the label, a one-row expression table (or None) and the raw report (or None)."""

    patient_id: str
    label: str
    fold: int
    rna_path: Path | None
    report_text: str | None

    @property
    def modalities(self) -> list[str]:
        return [m for m, v in (("rna", self.rna_path), ("rpt", self.report_text)) if v is not None]


def halve_weights(src: Path, dst: Path) -> None:
    """Copy a checkpoint with the network's float32 weights stored as float16 (half the size in git; they are
    cast back to float32 on loading). The fitted extras (expression statistics, report encoder) keep their dtype;
    the safetensors metadata (format, save id) is kept so the ``.json`` still pairs with it."""
    with safe_open(str(src), framework="np") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: v.astype(np.float16) if v.dtype == np.float32 and not k.startswith("extra.") else v
               for k, v in tensors.items()}
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(dst)


def parity(full: Path, half: Path, cases: list[RealCase]) -> float:
    """Largest |P(class)| difference between the float32 checkpoint and its float16 copy over ``cases``."""
    a, b = Predictor(full), Predictor(half)
    worst = 0.0
    for c in cases:
        ca = a.make_case(rna=c.rna_path, report_text=c.report_text)
        worst = max(worst, float(np.abs(a.predict(ca).probs - b.predict(ca).probs).max()))
    return worst


def build_brca_demo(data_dir: str | Path, experiment_dir: str | Path, out_dir: str | Path = ASSETS, *,
                    fold: int = 0, model: str = "mosare") -> dict:
    """Copy fold ``fold``'s ``model`` checkpoint of the complete-data setting and that fold's test patients.
    Returns a summary (patients, classes, modalities, checkpoint size)."""
    data, exp, out = Path(data_dir), Path(experiment_dir), Path(out_dir)
    stem = exp / "checkpoints" / model / "complete-0" / f"fold{fold}"
    record = stem.with_name(stem.name + ".result.json")  # the run's own record: its held-out predictions
    for p in (stem.with_suffix(".safetensors"), stem.with_suffix(".json"), record):
        if not p.is_file():
            raise MosareError(f"{p} not found: run the BRCA experiment first (bench/brca_results.sh)")
    preds = pd.DataFrame(json.loads(record.read_text(encoding="utf-8")).get("predictions", []))
    held = preds[preds.scenario == "complete"] if len(preds) else preds
    if held.empty:
        raise MosareError(f"{record} has no held-out predictions (a run from an older version?)")
    ids = sorted(held.patient_id.astype(str))
    rna = pd.read_csv(data / "rna.csv.gz").set_index("patient_id")
    reports = pd.read_csv(data / "reports.csv.gz").set_index("patient_id")
    rna = rna[rna.index.isin(ids) & rna[LABEL_COLUMN].isin(CLASSES)]
    reports = reports[reports.index.isin(ids) & reports[LABEL_COLUMN].isin(CLASSES)][[LABEL_COLUMN, "text"]]
    (out / "model").mkdir(parents=True, exist_ok=True)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(stem.with_suffix(".json"), out / "model" / "mosare.json")
    halve_weights(stem.with_suffix(".safetensors"), out / "model" / "mosare.safetensors")
    rna.reset_index().to_csv(out / "cases" / "rna.csv.gz", index=False, float_format="%.4g")
    reports.reset_index().to_csv(out / "cases" / "reports.csv.gz", index=False)
    truth = held.drop_duplicates("patient_id").set_index("patient_id").truth
    index = pd.DataFrame({"patient_id": ids, "label": [truth[i] for i in ids], "fold": fold,
                          "rna": [i in rna.index for i in ids], "report": [i in reports.index for i in ids]})
    index.to_csv(out / "cases" / "cases.csv", index=False)
    summary = {"patients": len(ids), "labels": index.label.value_counts().to_dict(), "with_rna": int(index.rna.sum()),
               "with_report": int(index.report.sum()), "fold": fold, "experiment": str(exp),
               "checkpoint_mb": round((out / "model" / "mosare.safetensors").stat().st_size / 2**20, 2)}
    with tempfile.TemporaryDirectory() as tmp:  # what halving the weights costs, over every shipped case
        summary["max_prob_change_float16"] = parity(stem.with_suffix(".safetensors"), out / "model" / "mosare.safetensors",
                                                    brca_cases(tmp, out))
    atomic_write_text(out / "cases" / "build.json", json.dumps(summary, indent=1))
    return summary


def brca_cases(cache_dir: str | Path, assets: str | Path = ASSETS) -> list[RealCase]:
    """The shipped held-out patients, each with a one-row expression table under ``cache_dir`` (written once)."""
    cases_dir = Path(assets) / "cases"
    try:
        index = pd.read_csv(cases_dir / "cases.csv", dtype={"patient_id": str})
        rna = pd.read_csv(cases_dir / "rna.csv.gz").set_index("patient_id")
        reports = pd.read_csv(cases_dir / "reports.csv.gz").set_index("patient_id")
    except (OSError, ValueError) as err:
        raise InputError(f"the real demo cases in {cases_dir} cannot be read ({err})") from None
    out_dir = Path(cache_dir) / "demo-brca" / "rna"
    out_dir.mkdir(parents=True, exist_ok=True)
    genes = [c for c in rna.columns if c != LABEL_COLUMN]
    header = ",".join(["patient_id", *genes])
    values = rna[genes].to_numpy(np.float64)
    row_of = {pid: i for i, pid in enumerate(rna.index.astype(str))}
    cases = []
    for row in index.itertuples(index=False):
        pid = str(row.patient_id)
        rna_path = None
        if pid in row_of:
            rna_path = out_dir / f"{pid}.csv"
            if not rna_path.is_file():  # the same one-row table a user would upload
                line = ",".join("" if np.isnan(v) else f"{v:.6g}" for v in values[row_of[pid]])
                atomic_write_text(rna_path, f"{header}\n{pid},{line}\n")
        text = str(reports.loc[pid, "text"]) if pid in reports.index else None
        cases.append(RealCase(patient_id=pid, label=str(row.label), fold=int(row.fold), rna_path=rna_path,
                              report_text=text))
    return cases
