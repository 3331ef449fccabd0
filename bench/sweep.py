"""Learning-rate (and variant) sweep on VALIDATION splits of the training folds — never a test fold.

usage: python bench/sweep.py [--data ../shared/data/tcga-brca] [--models mosare,snn,text] [--lrs 1e-4,3e-4,1e-3]
                             [--folds-used 0,1,2] [--seeds 1] [--set fusion=concat] [--workers 2] [--out .cache/sweep]

For each (model, lr, fold): the experiment's own validation split of training fold k and its training-split
features (:class:`mosare.train.experiment.Fold`), training at the default TrainConfig except the lr; the row records the
selected epoch's validation loss and AUC. The test folds are never scored. ``--seeds S`` trains each run from S
initial seeds (fold k, seed s: k + 100 s, as bench/ensemble.py's members), since a small model's seed-to-seed spread
can be as large as the difference being judged. Prints mean ± std over folds (and seeds) per (model, lr) and writes
sweep.csv.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mosare.data.cohort import build_cohort  # noqa: E402
from mosare.config import ANALYZERS, ExperimentConfig, ModelConfig, TrainConfig  # noqa: E402
from mosare.model.registry import build_model  # noqa: E402
from mosare.train.experiment import Fold, model_config_for  # noqa: E402
from mosare.train.loop import fit, optimiser_settings  # noqa: E402
from mosare.train.splits import patient_folds  # noqa: E402

STATE: dict = {}  # a worker process's cohort, folds, overrides and TrainConfig (set once by worker_init)


def worker_init(cohort, folds, overrides: dict, tcfg: TrainConfig) -> None:
    """ProcessPoolExecutor initializer of every validation bench (this script, selection.py, ensemble.py)."""
    torch.set_num_threads(1)
    STATE.update(cohort=cohort, folds=folds, overrides=overrides, tcfg=tcfg, feats={})


def validation_fold(k: int) -> tuple[ModelConfig, Fold]:
    """The model config (with the overrides) and fold k's own validation split and training-split features, as
    the experiment builds them; the last fold is kept for the next run."""
    s = STATE
    cohort, (train_all, _test) = s["cohort"], s["folds"][k]
    mcfg = replace(model_config_for(cohort, ModelConfig()), **s["overrides"])
    if k not in s["feats"]:
        s["feats"] = {k: Fold(cohort, ExperimentConfig(train=s["tcfg"]), mcfg, k, train_all)}
    return mcfg, s["feats"][k]


def _one(model: str, lr: float, k: int, seed: int = 0) -> dict:
    s = STATE
    cohort = s["cohort"]
    mcfg, fold = validation_fold(k)
    torch.manual_seed(k + 100 * seed)
    m = build_model(model, mcfg)
    tcfg = replace(s["tcfg"], lr=lr, seed=k + 100 * seed)
    res = fit(m, cohort, fold.tokens("complete-0", cohort.present), fold.train_idx, fold.val_idx, cohort.present,
              tcfg, torch.device("cpu"), progress=False)
    lr, weight_decay = optimiser_settings(m, tcfg)
    return {"model": model, "lr": lr, "weight_decay": weight_decay, "fold": k, "seed": seed,
            "val_loss": res.best_val_loss, "val_auc": res.best_val_auc, "best_epoch": res.best_epoch,
            "epochs_run": res.epochs_run, "seconds": round(res.seconds, 1)}


def _value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def validation_parser(out: str, folds_used: str) -> argparse.ArgumentParser:
    """The arguments every validation-split bench shares (this script and ``bench/selection.py``)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tcga-brca")
    ap.add_argument("--models", default="mosare,snn,text")
    ap.add_argument("--folds-used", default=folds_used)
    ap.add_argument("--set", action="append", default=[], help="ModelConfig override key=value (repeatable)")
    ap.add_argument("--train-set", action="append", default=[], help="TrainConfig override key=value (repeatable)")
    ap.add_argument("--text-encoder", default="tfidf", choices=tuple(ANALYZERS),
                    help="fold-fitted report encoder: tfidf (character n-grams) or tfidf-word")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path(out))
    return ap


def validation_setup(args: argparse.Namespace, script: str):
    """-> (ModelConfig overrides, TrainConfig, the BRCA union cohort, its 5 folds); a one-line exit without data."""
    if not (args.data / "rna.csv.gz").exists():
        sys.exit(f"{script}: {args.data} has no rna.csv.gz (point --data at the TCGA-BRCA tables)")
    overrides = {k: _value(v) for k, v in (s.split("=", 1) for s in args.set)}
    tcfg = replace(TrainConfig(), **{k: _value(v) for k, v in (s.split("=", 1) for s in args.train_set)})
    cohort = build_cohort(args.data / "rna.csv.gz", args.data / "reports.csv.gz", None, label_column="oncotree_code",
                          classes=("IDC", "ILC"), progress=False, text_encoder=args.text_encoder)
    return overrides, tcfg, cohort, patient_folds(cohort.labels, 5, 0)


def main() -> None:
    ap = validation_parser(".cache/sweep", "0,1,2")
    ap.add_argument("--lrs", default="1e-4,3e-4,1e-3", help="comma-separated; 'default': each model's own")
    ap.add_argument("--seeds", type=int, default=1, help="initial seeds per (model, lr, fold)")
    args = ap.parse_args()
    overrides, tcfg, cohort, folds = validation_setup(args, "bench/sweep.py")
    jobs = [(m, None if lr == "default" else float(lr), int(k), s) for s in range(args.seeds)
            for k in args.folds_used.split(",") for m in args.models.split(",") for lr in args.lrs.split(",")]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=worker_init, initargs=(cohort, folds, overrides, tcfg)) as pool:
        rows = []
        for row in pool.map(_one, *zip(*jobs)):
            rows.append(row)
            print(json.dumps(row), flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "sweep.csv", index=False)
    agg = df.groupby(["model", "lr"]).agg(val_loss=("val_loss", "mean"), val_loss_sd=("val_loss", "std"),
                                         val_auc=("val_auc", "mean"), val_auc_sd=("val_auc", "std"),
                                         best_epoch=("best_epoch", "mean"), seconds=("seconds", "mean"))
    print(f"overrides {overrides} train {args.train_set}; text encoder {args.text_encoder}; folds {args.folds_used}; seeds {args.seeds}; "
          f"{time.perf_counter() - start:.0f} s")
    print(agg.round(3).to_string())


if __name__ == "__main__":
    main()
