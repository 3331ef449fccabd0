"""Should the refit (training + validation split) also refit the features on both? Judged on VALIDATION splits
of the training folds — never a test fold.

usage: python bench/refit_features.py [--data ../shared/data/tcga-brca] [--models mosare,text]
                                      [--folds-used 0,1,2,3,4] [--set key=value] [--train-set key=value]
                                      [--workers 2] [--out .cache/refit-features]

``experiment`` selects the epoch count on the validation split with features (TF-IDF vocabulary, SVD basis,
expression statistics, prototypes) fitted on the training split, then refits the network on training +
validation split with the *same* features. The alternative refits the features on training + validation split
too. This bench replays that one level down, inside fold k's training split: selection on an inner
training / validation split (features on the inner training split), then two refits on the whole training
split from the same initialisation for the selected epochs — "same": the inner training split's features (what
``experiment`` does), "refitted": features fitted on the whole training split — both scored on fold k's own
validation split, which neither saw. Prints mean ± std over folds of temperature-scaled NLL and AUC, and on how
many folds "refitted" is better; writes refit_features.csv (one row per model, fold, rule).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mosare.model.registry import build_model  # noqa: E402
from mosare.train.calibration import calibrated_nll  # noqa: E402
from mosare.train.data import fit_fold_features  # noqa: E402
from mosare.train.loop import fit, predict_probs, refit  # noqa: E402
from mosare.train.metrics import auc  # noqa: E402
from mosare.train.splits import train_val_split  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sweep import STATE, validation_fold, validation_parser, validation_setup, worker_init  # noqa: E402


def _one(model: str, k: int) -> list[dict]:
    cohort, tcfg, cpu = STATE["cohort"], replace(STATE["tcfg"], seed=k), torch.device("cpu")
    mcfg, fold = validation_fold(k)
    inner_tr, inner_va = train_val_split(fold.train_idx, cohort.labels, tcfg.val_fraction, k)
    start = time.perf_counter()
    features = {"same": fit_fold_features(cohort, inner_tr, mcfg.n_local, k),
                "refitted": fold.tokens("complete-0", cohort.present)}  # the experiment's features of fold k
    torch.manual_seed(k)
    res = fit(build_model(model, mcfg), cohort, features["same"], inner_tr, inner_va, cohort.present, tcfg, cpu,
              progress=False)
    rows, y = [], cohort.labels[fold.val_idx]
    for rule, tokens in features.items():
        torch.manual_seed(k)
        net = build_model(model, mcfg)
        refit(net, cohort, tokens, fold.train_idx, cohort.present, tcfg, cpu, res.best_epoch + 1, progress=False)
        p = predict_probs(net, cohort, tokens, fold.val_idx, cohort.present, cpu)
        rows.append({"model": model, "fold": k, "rule": rule, "epochs": res.best_epoch + 1,
                     "nll": calibrated_nll(y, p)[0], "auc": auc(y, p)})
    print(f"{model} fold {k}: {time.perf_counter() - start:.0f} s", flush=True)
    return rows


def main() -> None:
    ap = validation_parser(".cache/refit-features", "0,1,2,3,4")
    ap.set_defaults(models="mosare,text")
    args = ap.parse_args()
    overrides, tcfg, cohort, folds = validation_setup(args, "bench/refit_features.py")
    jobs = [(m, int(k)) for k in args.folds_used.split(",") for m in args.models.split(",")]
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, initializer=worker_init, initargs=(cohort, folds, overrides, tcfg)) as pool:
        df = pd.DataFrame([r for rows in pool.map(_one, *zip(*jobs)) for r in rows])
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "refit_features.csv", index=False)
    print(f"overrides {overrides} train {args.train_set}; folds {args.folds_used}; {time.perf_counter() - start:.0f} s")
    print(df.groupby(["model", "rule"])[["nll", "auc"]].agg(["mean", "std"]).round(3).to_string())
    wide = df.pivot_table(index=["model", "fold"], columns="rule", values="nll")
    print("folds where refitted features give the lower validation NLL:",
          (wide["refitted"] < wide["same"]).groupby(level="model").sum().to_dict())


if __name__ == "__main__":
    main()
