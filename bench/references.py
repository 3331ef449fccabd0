"""Linear references on the experiment's own inputs: same patients, folds, scrubbed reports and scoring.

usage: python bench/references.py [--data ../shared/data/tcga-brca] [--out PATH]
                                  [--split test|validation]

``../shared/tools/references.py`` scores scikit-learn models on its own scrub of the reports (a short word list) and
pools the out-of-fold probabilities into one AUC. The experiment reports the mean of per-fold AUCs, on reports the
project's scrubber cleaned (whole subtype phrases, codes, residues: stricter), and trains on the training split
only (the validation split selects the epoch). This script fits the same linear models on exactly those inputs
(:class:`mosare.train.experiment.Fold`: expression standardised with the training statistics, the scrubbed report
texts), twice: on the training split (what the networks learn from) and on the whole training fold (what the
scikit-learn references learn from). The report model is fitted on word 1–2-grams (as the shared references) and on
character 3–5-grams (as the default report encoder, ``--text-encoder tfidf``). A patient without the modality gets
the training prior. Prints per-fold mean ± std and pooled AUC; writes one row per (reference, training set, fold).

``--split validation`` asks a different question, on the validation splits only (no test fold is scored): how far a
linear model gets on the inputs the networks are selected with. Each reference is fitted on fold k's training split
and scored on its validation split, and one more reference reads exactly the report network's input (the report
encoder's z-scored TF-IDF → SVD vectors, fitted on the training split) over a grid of C. The bar a network's
validation AUC is held against (``bench/sweep.py`` scores the same splits).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.metrics import roc_auc_score  # noqa: E402

from mosare.data.cohort import build_cohort  # noqa: E402
from mosare.config import ExperimentConfig, ModelConfig  # noqa: E402
from mosare.train.experiment import Fold, model_config_for  # noqa: E402
from mosare.text.tfidf import tfidf_vectorizer  # noqa: E402
from mosare.train.splits import patient_folds  # noqa: E402

NAMES = {"rna": "RNA logistic regression", "rpt": "report TF-IDF logistic regression",
         "late": "late fusion (mean of the two)",
         "rpt_char": "report TF-IDF of character 3–5-grams, logistic regression",
         "late_char": "late fusion: RNA + character TF-IDF"}
VECTOR_CS = (0.003, 0.01, 0.03)  # --split validation: C of the logistic regression on the report encoder's vectors


def fold_predictions(cohort, rna: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Test-fold probabilities of ILC for each reference fitted on ``train`` (C as in the shared references)."""
    y, has = cohort.labels, cohort.present
    prior = y[train].mean()
    tr_r, tr_t = train[has[train, 1]], train[has[train, 2]]
    rna_lr = LogisticRegression(C=0.01, max_iter=3000).fit(rna[tr_r], y[tr_r])
    p_r = np.where(has[test, 1], rna_lr.predict_proba(rna[test])[:, 1], prior)
    texts = np.asarray(cohort.rpt_texts, dtype=object)
    both = has[test, 1] & has[test, 2]
    out = {"rna": p_r}
    # word 1–2-grams as the shared references; the default report encoder's own TF-IDF (character 3–5-grams)
    for key, vec in (("", TfidfVectorizer(min_df=2, ngram_range=(1, 2), sublinear_tf=True)),
                     ("_char", tfidf_vectorizer("char"))):
        vec.fit(texts[tr_t])
        rpt_lr = LogisticRegression(C=10, max_iter=3000).fit(vec.transform(texts[tr_t]), y[tr_t])
        p_t = np.where(has[test, 2], rpt_lr.predict_proba(vec.transform(texts[test]))[:, 1], prior)
        out["rpt" + key] = p_t
        out["late" + key] = np.where(both, (p_r + p_t) / 2, np.where(has[test, 1], p_r, p_t))
    return out


def vector_predictions(cohort, rpt_global: np.ndarray, train: np.ndarray, test: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities of ILC from a logistic regression on the report encoder's vectors [P, Dt] (the report
    network's input, fitted on ``train``), one per C in VECTOR_CS; patients without a report at the training prior."""
    y, has = cohort.labels, cohort.present
    tr_t = train[has[train, 2]]
    out = {}
    for c in VECTOR_CS:
        lr = LogisticRegression(C=c, max_iter=5000).fit(rpt_global[tr_t], y[tr_t])
        out[f"report encoder vectors (TF-IDF → SVD, z-scored), logistic regression C = {c}"] = np.where(
            has[test, 2], lr.predict_proba(rpt_global[test])[:, 1], y[train].mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tcga-brca")
    ap.add_argument("--out", type=Path, default=None,
                    help="default: assets/results/tcga-brca/references.csv (test), "
                         "assets/results/linear-ceiling/references.csv (validation)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=("test", "validation"), default="test",
                    help="score the test folds (default) or, fitted on the training split, its validation split")
    args = ap.parse_args()
    args.out = args.out or Path("assets/results", "tcga-brca" if args.split == "test" else "linear-ceiling",
                                "references.csv")
    if not (args.data / "rna.csv.gz").exists():
        sys.exit(f"bench/references.py: {args.data} has no rna.csv.gz (point --data at the TCGA-BRCA tables)")
    cohort = build_cohort(args.data / "rna.csv.gz", args.data / "reports.csv.gz", None, label_column="oncotree_code",
                          classes=("IDC", "ILC"), progress=False, text_encoder="tfidf")
    mcfg, cfg = model_config_for(cohort, ModelConfig()), ExperimentConfig(seed=args.seed)
    rows, pooled = [], {}
    for k, (train_all, test) in enumerate(patient_folds(cohort.labels, cfg.folds, cfg.seed)):
        fold = Fold(cohort, cfg, mcfg, k, train_all)
        feats = fold.tokens("complete-0", cohort.present)  # fitted on the training split
        settings = (("training split", fold.train_idx, test), ("whole training fold", np.sort(train_all), test))
        if args.split == "validation":
            settings = (("training split, scored on validation", fold.train_idx, fold.val_idx),)
        for setting, train, scored in settings:
            preds = {NAMES[ref]: p for ref, p in fold_predictions(cohort, feats.rna, train, scored).items()}
            if args.split == "validation":
                preds.update(vector_predictions(cohort, feats.rpt_global, train, scored))
            for ref, p in preds.items():
                rows.append({"reference": ref, "trained_on": setting, "fold": k,
                             "auc": round(100 * roc_auc_score(cohort.labels[scored], p), 2)})
                pooled.setdefault((ref, setting), []).append((cohort.labels[scored], p))
        print(f"fold {k} done", flush=True)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    for (ref, setting), g in df.groupby(["reference", "trained_on"], sort=False):
        y, p = (np.concatenate(x) for x in zip(*pooled[(ref, setting)]))
        print(f"{ref:60s} {setting:20s} per-fold {g.auc.mean():.2f} ± {g.auc.std(ddof=1):.2f} | "
              f"pooled {100 * roc_auc_score(y, p):.2f}")


if __name__ == "__main__":
    main()
