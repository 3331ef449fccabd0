"""Which epoch to keep: per-fold early stopping ("best") against the whole schedule ("last"), judged fairly on
VALIDATION splits of the training folds — never a test fold.

usage: python bench/selection.py [--data ../shared/data/tcga-brca] [--models mosare,snn,text] [--folds-used 0,1,2,3,4]
                                 [--set key=value] [--train-set key=value] [--halves 20] [--workers 2]
                                 [--out .cache/selection]

The validation loss of the epoch "best" picked is biased low: the same ~155 patients chose it. So each fold's
training-split run goes through the whole schedule once, the validation probabilities of every epoch are kept,
and the validation split is cut in two stratified halves (``--halves`` random cuts): "best" picks its epoch on
one half (lowest temperature-scaled NLL, early stopping with the configured patience) and is scored on the
other, and the other way round; "last" is scored on the same halves. Prints mean ± std over folds of the
scored half's temperature-scaled NLL and AUC, and writes selection.csv (one row per model, fold, rule).
"""

from __future__ import annotations

import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from mosare.model.registry import build_model  # noqa: E402
from mosare.train.calibration import calibrated_nll  # noqa: E402
from mosare.train.loop import fit  # noqa: E402
from mosare.train.metrics import auc  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sweep import STATE, validation_fold, validation_parser, validation_setup, worker_init  # noqa: E402


def _curves(model: str, k: int) -> tuple[str, int, np.ndarray, np.ndarray]:
    """Validation probabilities of every epoch [E, N_val, K] of one training-split run, and the labels."""
    cohort, tcfg = STATE["cohort"], STATE["tcfg"]
    mcfg, fold = validation_fold(k)
    torch.manual_seed(k)
    probs: list[np.ndarray] = []
    fit(build_model(model, mcfg), cohort, fold.tokens("complete-0", cohort.present), fold.train_idx, fold.val_idx,
        cohort.present, replace(tcfg, selection="last", seed=k), torch.device("cpu"), progress=False,
        on_epoch=lambda _e, p: probs.append(p))
    return model, k, np.stack(probs), cohort.labels[fold.val_idx]


def best_epoch(y: np.ndarray, probs: np.ndarray, patience: int) -> int:
    """The epoch early stopping keeps on (y, probs [E, N, K]): lowest scaled NLL, stopping after ``patience``."""
    best, best_loss = 0, np.inf
    for e in range(len(probs)):
        loss = calibrated_nll(y, probs[e])[0]
        if loss < best_loss:
            best, best_loss = e, loss
        if e - best >= patience:
            break
    return best


def score(model: str, k: int, probs: np.ndarray, y: np.ndarray, halves: int, patience: int) -> list[dict]:
    rng, rows = np.random.default_rng(k), []
    for cut in range(halves):
        a = np.zeros(len(y), bool)
        for c in np.unique(y):  # stratified halves
            idx = rng.permutation(np.flatnonzero(y == c))
            a[idx[: len(idx) // 2]] = True
        for pick, held in ((a, ~a), (~a, a)):
            chosen = {"best": best_epoch(y[pick], probs[:, pick], patience), "last": len(probs) - 1}
            for rule, e in chosen.items():
                rows.append({"model": model, "fold": k, "cut": cut, "rule": rule, "epoch": e,
                             "nll": calibrated_nll(y[held], probs[e, held])[0], "auc": auc(y[held], probs[e, held])})
    return rows


def main() -> None:
    ap = validation_parser(".cache/selection", "0,1,2,3,4")
    ap.add_argument("--halves", type=int, default=20, help="random stratified cuts of each validation split")
    args = ap.parse_args()
    overrides, tcfg, cohort, folds = validation_setup(args, "bench/selection.py")
    jobs = [(m, int(k)) for k in args.folds_used.split(",") for m in args.models.split(",")]
    start, rows = time.perf_counter(), []
    with ProcessPoolExecutor(args.workers, initializer=worker_init, initargs=(cohort, folds, overrides, tcfg)) as pool:
        for model, k, probs, y in pool.map(_curves, *zip(*jobs)):
            rows += score(model, k, probs, y, args.halves, tcfg.patience)
            print(f"{model} fold {k}: {len(probs)} epochs, {time.perf_counter() - start:.0f} s", flush=True)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "selection.csv", index=False)
    per_fold = df.groupby(["model", "rule", "fold"])[["nll", "auc", "epoch"]].mean()
    agg = per_fold.groupby(["model", "rule"]).agg(["mean", "std"])
    print(f"overrides {overrides} train {args.train_set}; folds {args.folds_used}; {args.halves} cuts; "
          f"{time.perf_counter() - start:.0f} s")
    print(agg.round(3).to_string())
    print(per_fold.unstack("rule").round(3).to_string())


if __name__ == "__main__":
    main()
