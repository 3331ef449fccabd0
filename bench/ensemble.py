"""Would averaging several trained networks help, and which kind? Judged on VALIDATION splits of the training
folds — never a test fold.

usage: python bench/ensemble.py [--data ../shared/data/tcga-brca] [--models mosare] [--folds-used 0,1,2,3,4]
                                [--members 3] [--set key=value] [--train-set key=value] [--workers 2]
                                [--out .cache/ensemble]

Per fold, on the training split (whole schedule each): ``--members`` networks from different initial seeds, and
one more from the first seed on a random 80 % of the training split (the relation the selection run bears to the
refit in ``experiment``). Scored on the validation split: each single network; the mean logits of the first
2..members seeds ("seeds-n"); the 80 % network with the full one ("subset+full", logits averaged) and their
weight average ("soup", same initialisation). Prints mean ± std over folds of temperature-scaled NLL and AUC;
writes ensemble.csv (one row per model, fold, rule).
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
from mosare.train.loop import fit, predict_probs  # noqa: E402
from mosare.train.metrics import auc  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from sweep import STATE, validation_fold, validation_parser, validation_setup, worker_init  # noqa: E402


def _train(model: str, k: int, member: int, subset: bool) -> tuple[str, int, int, bool, np.ndarray, np.ndarray, dict]:
    """One network on fold k's training split (or a random 80 % of it): validation log-probabilities [N_val, K],
    labels, and its weights."""
    cohort = STATE["cohort"]
    mcfg, fold = validation_fold(k)
    train_idx = fold.train_idx
    if subset:
        train_idx = np.random.default_rng(1000 + k).permutation(train_idx)[: int(0.8 * len(train_idx))]
    seed = k + 100 * member
    torch.manual_seed(seed)
    net = build_model(model, mcfg)
    tokens = fold.tokens("complete-0", cohort.present)
    fit(net, cohort, tokens, train_idx, fold.val_idx, cohort.present, replace(STATE["tcfg"], selection="last", seed=seed),
        torch.device("cpu"), progress=False)
    probs = predict_probs(net, cohort, tokens, fold.val_idx, cohort.present, torch.device("cpu"))
    state = {n: t.detach().clone() for n, t in net.state_dict().items()}
    return model, k, member, subset, np.log(np.clip(probs, 1e-8, 1)), cohort.labels[fold.val_idx], state


def _soup_logits(model: str, k: int, states: list[dict]) -> np.ndarray:
    cohort = STATE["cohort"]
    mcfg, fold = validation_fold(k)
    net = build_model(model, mcfg)
    net.load_state_dict({n: sum(st[n].float() for st in states).to(states[0][n].dtype) / len(states) for n in states[0]})
    probs = predict_probs(net, cohort, fold.tokens("complete-0", cohort.present), fold.val_idx, cohort.present,
                          torch.device("cpu"))
    return np.log(np.clip(probs, 1e-8, 1))


def _scores(logits: np.ndarray, y: np.ndarray) -> dict:
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    return {"nll": calibrated_nll(y, p)[0], "auc": auc(y, p)}


def main() -> None:
    ap = validation_parser(".cache/ensemble", "0,1,2,3,4")
    ap.set_defaults(models="mosare")
    ap.add_argument("--members", type=int, default=3)
    args = ap.parse_args()
    overrides, tcfg, cohort, folds = validation_setup(args, "bench/ensemble.py")
    jobs = [(m, int(k), j, False) for k in args.folds_used.split(",") for m in args.models.split(",")
            for j in range(args.members)]
    jobs += [(m, int(k), 0, True) for k in args.folds_used.split(",") for m in args.models.split(",")]
    start, got = time.perf_counter(), {}
    with ProcessPoolExecutor(args.workers, initializer=worker_init, initargs=(cohort, folds, overrides, tcfg)) as pool:
        for model, k, j, sub, logits, y, state in pool.map(_train, *zip(*jobs)):
            got[model, k, j, sub] = (logits, y, state)
            print(f"{model} fold {k} member {j}{' (80 %)' if sub else ''}: {time.perf_counter() - start:.0f} s",
                  flush=True)
        worker_init(cohort, folds, overrides, tcfg)  # the soups are scored in this process
        rows = []
        for model in args.models.split(","):
            for k in map(int, args.folds_used.split(",")):
                y = got[model, k, 0, False][1]
                full = [got[model, k, j, False][0] for j in range(args.members)]
                rules = {f"single-{j}": full[j] for j in range(args.members)}
                rules.update({f"seeds-{n}": np.mean(full[:n], 0) for n in range(2, args.members + 1)})
                sub_logits, _, sub_state = got[model, k, 0, True]
                rules["subset-only"] = sub_logits
                rules["subset+full"] = (sub_logits + full[0]) / 2
                rules["soup"] = _soup_logits(model, k, [sub_state, got[model, k, 0, False][2]])
                rows += [{"model": model, "fold": k, "rule": r, **_scores(v, y)} for r, v in rules.items()]
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "ensemble.csv", index=False)
    print(f"overrides {overrides} train {args.train_set}; folds {args.folds_used}; {time.perf_counter() - start:.0f} s")
    print(df.groupby(["model", "rule"])[["nll", "auc"]].agg(["mean", "std"]).round(3).to_string())
    print(df.pivot_table(index=["model", "fold"], columns="rule", values="auc").round(2).to_string())


if __name__ == "__main__":
    main()
