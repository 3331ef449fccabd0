"""Fine-tuning the report encoder on one cross-validation fold's training patients (``mosare finetune-text``).

The paper fine-tunes its sentence transformer on the pathology reports. Done naively that leaks: a model
tuned on every report has seen the test patients' texts with their labels. Here the tuning is per fold:

1. The folds are the experiment's: ``patient_folds`` over the same patients, labelled by the same rule as
   :func:`mosare.data.cohort.build_cohort` (labels from ``--rna`` first, then ``--reports``; sorted patient ids),
   and the same validation split of the training fold (``train_val_split(train_all, labels, 0.2, seed + k)``).
   So fold K here has the test patients of fold K in ``mosare experiment`` given the same ``--rna`` /
   ``--reports`` / ``--classes`` / ``--folds`` / ``--seed`` (and no ``--complete-only``, which drops patients).
2. Reports are scrubbed of subtype words (:func:`vocabulary_for` plus extra terms) and split into sentences.
   The training set is (sentence, class) pairs from the fold's TRAINING patients only, at most
   ``max_sentences_per_report`` distinct sentences per report; sentences that occur in training reports of
   two classes (template text) carry no class signal and are left out. Validation patients' sentences give
   the evaluation loss; test-fold reports are never read into a dataset, embedded or trained on.
3. ``SentenceTransformerTrainer`` with a batch-all triplet loss on cosine distance and label-grouped batches
   (every batch holds several classes, two or more sentences each) pulls same-subtype sentences together.
4. The model is saved to ``<out>/fold<K>/`` with ``mosare-finetune.json`` (base model, fold, seed, counts,
   a SHA-256 of the test-fold patient ids), written to a hidden folder first and renamed into place.
5. Separability on the validation patients: a logistic regression on mean sentence embeddings (at most
   ``max_sentences_per_report`` sentences per report, the same sample for both models), fitted on the training
   patients and scored (ROC AUC) on the validation patients, with the base and with the tuned model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mosare.data.cohort import select_labels
from mosare.errors import InputError, MosareError
from mosare.io.atomic import atomic_write_text
from mosare.io.readers import read_reports_table, read_rna_table
from mosare.text.embed import ReportEmbedder
from mosare.text.scrub import scrub, vocabulary_for
from mosare.text.sentence_data import labelled_sentences, mean_sentence_embeddings, report_sentences, separability_auc
from mosare.train.splits import patient_folds, train_val_split

log = logging.getLogger(__name__)

METADATA_FILE = "mosare-finetune.json"
VAL_FRACTION = 0.2  # TrainConfig.val_fraction: the experiment's validation split of the training fold
LEARNING_RATE = 2e-5
TRIPLET_MARGIN = 0.25  # on cosine distance (1 - cos) of L2-normalised embeddings


@dataclass
class FoldSplit:
    """Patient ids of one fold: ``train`` (fits the model), ``val`` (evaluation), ``test`` (never read).

    ``labels`` maps every cohort patient to its class index; ``ids`` is the sorted cohort, as in the experiment.
    """

    fold: int
    n_folds: int
    ids: list[str]
    labels: dict[str, int]
    train: list[str]
    val: list[str]
    test: list[str]


@dataclass
class FinetuneResult:
    fold: int
    out_dir: Path
    train_patients: int
    val_patients: int
    train_sentences: int
    val_sentences: int
    val_auc_before: float | None
    val_auc_after: float | None
    seconds: float
    eval_loss: list[float] = field(default_factory=list)

    def summary(self) -> str:
        def f(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        loss = (f"validation triplet loss {self.eval_loss[0]:.3f} -> {self.eval_loss[-1]:.3f}; "
                if len(self.eval_loss) >= 2 else "")
        return (f"fold {self.fold}: {self.train_patients} training patients ({self.train_sentences} sentences), "
                f"{loss}validation AUC {f(self.val_auc_before)} -> {f(self.val_auc_after)} "
                f"(logistic regression on mean sentence embeddings, {self.val_patients} validation patients), "
                f"{self.seconds:.0f} s; model in {self.out_dir}")


# ---------------------------------------------------------------------------------------------------------
# Folds
# ---------------------------------------------------------------------------------------------------------

def fold_split(reports_labels, rna_labels, classes: Sequence[str], label_column: str, n_folds: int, seed: int,
               fold: int) -> FoldSplit:
    """The experiment's fold ``fold`` of ``n_folds``: same patients, labels, folds and validation split.

    Args:
        reports_labels: the reports table's label Series (index patient_id).
        rna_labels: the RNA table's label Series, or None; it takes precedence, as in ``build_cohort``.
    """

    classes = tuple(classes)
    if not 0 <= fold < n_folds:
        raise MosareError(f"fold {fold} does not exist: --fold must lie in 0..{n_folds - 1} for --folds {n_folds}")
    parts = [p for p in (rna_labels, reports_labels) if p is not None]
    labels = select_labels(parts, classes, label_column)
    ids = sorted(labels.index)
    y = np.array([classes.index(labels[i]) for i in ids], dtype=np.int64)
    for c, name in enumerate(classes):
        if (y == c).sum() < 2:
            raise InputError(f"class {name} has {(y == c).sum()} patient(s); need at least 2 per class")
    train_all, test = patient_folds(y, n_folds, seed)[fold]
    train, val = train_val_split(train_all, y, VAL_FRACTION, seed + fold)
    return FoldSplit(fold, n_folds, ids, dict(zip(ids, y.tolist())), [ids[i] for i in train],
                     [ids[i] for i in val], [ids[i] for i in test])


def ids_sha256(ids: Sequence[str]) -> str:
    """SHA-256 of the sorted patient ids joined by newlines: identifies a fold without listing patients."""
    return hashlib.sha256("\n".join(sorted(ids)).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------
# Fine-tuning
# ---------------------------------------------------------------------------------------------------------

def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _warmup(fraction: float) -> dict:
    """Linear warm-up over ``fraction`` of the steps: ``warmup_steps`` < 1 in transformers 5, ``warmup_ratio`` in 4."""
    import transformers

    return {"warmup_steps": fraction} if int(transformers.__version__.split(".")[0]) >= 5 else {"warmup_ratio": fraction}


def train_sentence_model(model, train_sentences: list[str], train_labels: list[int], val_sentences: list[str],
                         val_labels: list[int], *, epochs: int, batch_size: int, seed: int, progress: bool,
                         work_dir: Path) -> list[float]:
    """Fine-tune ``model`` in place with a batch-all triplet loss.

    Returns the validation-sentence losses: before training, then after each epoch (empty without a usable
    validation set)."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    try:  # sentence-transformers 6 layout
        from sentence_transformers.base.sampler import BatchSamplers
        from sentence_transformers.sentence_transformer import losses
    except ImportError:  # 5.x
        from sentence_transformers import losses
        from sentence_transformers.training_args import BatchSamplers

    train_ds = Dataset.from_dict({"sentence": train_sentences, "label": train_labels})
    n_val_classes = len(set(val_labels))
    eval_ds = (Dataset.from_dict({"sentence": val_sentences, "label": val_labels})
               if n_val_classes >= 2 and len(val_sentences) >= 4 else None)
    loss = losses.BatchAllTripletLoss(
        model, distance_metric=losses.BatchHardTripletLossDistanceFunction.cosine_distance, margin=TRIPLET_MARGIN)
    steps_per_epoch = max(1, len(train_sentences) // batch_size)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        learning_rate=LEARNING_RATE,
        **_warmup(0.1),
        batch_sampler=BatchSamplers.GROUP_BY_LABEL,
        eval_strategy="epoch" if eval_ds is not None else "no",
        save_strategy="no",
        logging_steps=max(1, min(50, steps_per_epoch // 4)),
        report_to="none",
        seed=seed,
        data_seed=seed,
        disable_tqdm=not progress,
        use_cpu=_default_device() == "cpu",
        dataloader_num_workers=0,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                                         loss=loss)
    before = [float(trainer.evaluate()["eval_loss"])] if eval_ds is not None else []
    trainer.train()
    return before + [float(r["eval_loss"]) for r in trainer.state.log_history
                     if "eval_loss" in r and (r.get("epoch") or 0) > 0]


def _replace_dir(tmp: Path, final: Path) -> None:
    """Move the finished folder ``tmp`` onto ``final`` (an existing one is replaced)."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_args(batch_size: int, max_sentences_per_report: int) -> None:
    if batch_size < 4 or batch_size % 2:
        raise MosareError(f"--batch-size must be an even number >= 4 (label-grouped batches), got {batch_size}")
    if max_sentences_per_report < 1:
        raise MosareError("--max-sentences-per-report must be at least 1")


def finetune_fold(texts, report_labels, rna_labels, *, out_dir: str | Path, classes: Sequence[str],
                  label_column: str, fold: int, n_folds: int = 5, seed: int = 0, epochs: int = 1,
                  batch_size: int = 32, max_sentences_per_report: int = 64, scrub_terms: Sequence[str] = (),
                  base_model: str | Path | None = None, progress: bool = True) -> FinetuneResult:
    """Fine-tune the base sentence transformer on the training patients of one fold; see the module doc.

    Args:
        texts: raw report text Series (index patient_id), from :func:`read_reports_table`.
        report_labels / rna_labels: the label Series of the reports and RNA tables (RNA may be None).
        out_dir: the model goes to ``out_dir/fold<fold>/``.
    """

    _check_args(batch_size, max_sentences_per_report)
    start = time.perf_counter()
    classes = tuple(classes)
    split = fold_split(report_labels, rna_labels, classes, label_column, n_folds, seed, fold)
    have = set(texts.index)
    train_ids = [i for i in split.train if i in have]
    val_ids = [i for i in split.val if i in have]
    test_set = set(split.test)
    assert not test_set & (set(train_ids) | set(val_ids))
    for name, ids in (("training", train_ids), ("validation", val_ids)):
        present = {split.labels[i] for i in ids}
        if len(present) < len(classes):
            missing = [classes[c] for c in range(len(classes)) if c not in present]
            raise InputError(f"fold {fold}: no {name} patient of class {', '.join(missing)} has a report")
    terms = list(vocabulary_for(classes)) + [t for t in scrub_terms if t]
    clean = {i: scrub(texts[i], terms).text for i in train_ids + val_ids}  # test-fold reports are not touched
    tr_s, tr_y = labelled_sentences({i: clean[i] for i in train_ids}, split.labels, max_sentences_per_report, seed)
    va_s, va_y = labelled_sentences({i: clean[i] for i in val_ids}, split.labels, max_sentences_per_report, seed,
                                    drop_shared=False)
    if len(set(tr_y)) < 2 or len(tr_s) < 4:
        raise InputError(f"fold {fold}: too few class-specific training sentences ({len(tr_s)}) to fine-tune on")

    device = _default_device()
    base = ReportEmbedder(model_path=base_model, device=device)
    y_tr = np.array([split.labels[i] for i in train_ids])
    y_va = np.array([split.labels[i] for i in val_ids])

    figure_sents = report_sentences([clean[i] for i in train_ids + val_ids], max_sentences_per_report, seed + fold)

    def auc(embedder) -> float | None:
        x = mean_sentence_embeddings(embedder.model, figure_sents, progress=progress)
        return separability_auc(x[: len(train_ids)], y_tr, x[len(train_ids):], y_va, len(classes))

    auc_before = auc(base)
    log.info("fold %d: %d training sentences from %d patients, %d validation sentences", fold, len(tr_s),
             len(train_ids), len(va_s))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / f"fold{fold}"
    tmp = Path(tempfile.mkdtemp(prefix=f".fold{fold}.", suffix=".tmp", dir=out_dir))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp's folder is private; the model folder is an ordinary one
    try:
        with tempfile.TemporaryDirectory(prefix="mosare-finetune-") as work:
            eval_loss = train_sentence_model(base.model, tr_s, tr_y, va_s, va_y, epochs=epochs, batch_size=batch_size,
                                             seed=seed + fold, progress=progress, work_dir=Path(work))
        base.model.save(str(tmp), create_model_card=False)
        meta = {
            "format": "mosare-finetune/1",
            "base_model": str(base.path),
            "base_model_id": base.model_id,
            "fold": fold,
            "n_folds": n_folds,
            "seed": seed,
            "val_fraction": VAL_FRACTION,
            "classes": list(classes),
            "label_column": label_column,
            "labels_from": "rna+reports" if rna_labels is not None else "reports",
            "train_patients": len(train_ids),
            "val_patients": len(val_ids),
            "test_patients": len(split.test),
            "test_ids_sha256": ids_sha256(split.test),
            "train_sentences": len(tr_s),
            "val_sentences": len(va_s),
            "epochs": epochs,
            "batch_size": batch_size,
            "learning_rate": LEARNING_RATE,
            "loss": f"BatchAllTripletLoss(cosine distance, margin={TRIPLET_MARGIN}), label-grouped batches",
            "max_sentences_per_report": max_sentences_per_report,
            "scrub_terms": [t for t in scrub_terms if t],
            "eval_loss": eval_loss,  # validation sentences: before training, then after each epoch
        }
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _replace_dir(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    del base
    tuned = ReportEmbedder(model_path=final, device=device)
    auc_after = auc(tuned)
    seconds = time.perf_counter() - start
    meta.update(val_auc_before=auc_before, val_auc_after=auc_after, seconds=round(seconds, 1))
    atomic_write_text(final / METADATA_FILE, json.dumps(meta, indent=1))  # not part of the model's fingerprint
    return FinetuneResult(fold, final, len(train_ids), len(val_ids), len(tr_s), len(va_s), auc_before, auc_after,
                          seconds, eval_loss)


def run_finetune(reports: str | Path, out_dir: str | Path, *, classes: Sequence[str], label_column: str,
                 folds: Sequence[int] | None, n_folds: int = 5, rna: str | Path | None = None,
                 **kwargs) -> list[FinetuneResult]:
    """Read the tables and fine-tune one model per fold in ``folds`` (None: every fold)."""

    if len(tuple(classes)) < 2:
        raise MosareError("--classes needs at least two class names")
    _check_args(kwargs.get("batch_size", 32), kwargs.get("max_sentences_per_report", 64))
    todo = list(range(n_folds)) if folds is None else list(folds)
    for k in todo:
        if not 0 <= k < n_folds:
            raise MosareError(f"fold {k} does not exist: --fold must lie in 0..{n_folds - 1} for --folds {n_folds}")
    texts, rep_labels = read_reports_table(reports, label_column)
    rna_labels = read_rna_table(rna, label_column)[1] if rna else None
    if rna_labels is None and rep_labels.isna().all():
        raise InputError(f"{reports}: no {label_column} column (give it, or --rna with labels)")
    return [finetune_fold(texts, rep_labels, rna_labels, out_dir=out_dir, classes=classes, label_column=label_column,
                          fold=k, n_folds=n_folds, **kwargs) for k in todo]


