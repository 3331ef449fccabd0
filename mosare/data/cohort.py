"""A cohort: every patient's labels and modality features, with natural missingness kept as a mask.

Built from the input tables (see :mod:`mosare.io.tables`). Reports are scrubbed of subtype words, split into
sentences and embedded here (cached on disk); slide features are read lazily from their HDF5 files.
Fold-dependent work (K-means prototypes → per-item GMM local tokens) happens later, on the training fold only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from mosare import MODALITIES
from mosare.errors import InputError
from mosare.io.features import read_features
from mosare.io.readers import read_reports_table, read_rna_table, read_slides_table
from mosare.config import ANALYZERS, TEXT_ENCODERS
from mosare.text.embed import ReportEmbedder
from mosare.text.scrub import scrub, vocabulary_for
from mosare.text.sentences import split_sentences
from mosare.text.tfidf import DEFAULT_DIM as TFIDF_DIM

log = logging.getLogger(__name__)


@dataclass
class Cohort:
    """P patients. ``present`` [P, 3] is the natural modality mask in MODALITIES order.

    rna [P, G] float32 (zeros where absent); rpt_sentences[p] [S_p, Dt]; rpt_global [P, Dt];
    wsi_paths[p] = feature files of patient p (several slides are pooled into one bag).
    """

    patient_ids: list[str]
    labels: np.ndarray
    classes: tuple[str, ...]
    present: np.ndarray
    genes: list[str] = field(default_factory=list)
    rna: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    rpt_sentences: list[np.ndarray] = field(default_factory=list)
    rpt_global: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    wsi_paths: list[list[Path]] = field(default_factory=list)
    wsi_dim: int = 0
    # scrubbed report text and its sentences ("" / [] where absent); what fold-fitted text encoders read
    rpt_texts: list[str] = field(default_factory=list)
    rpt_sentence_texts: list[list[str]] = field(default_factory=list)
    # "minilm": rpt_global/rpt_sentences embedded here; "tfidf" / "tfidf-word": fitted per fold
    text_encoder: str = "minilm"

    def __post_init__(self) -> None:
        self._wsi_cache = lru_cache(maxsize=512)(self._load_wsi)

    def __getstate__(self) -> dict:  # picklable for worker processes: the cache is rebuilt there
        return {k: v for k, v in self.__dict__.items() if k != "_wsi_cache"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.__post_init__()

    def __len__(self) -> int:
        return len(self.patient_ids)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities at least one patient has."""
        return tuple(m for i, m in enumerate(MODALITIES) if self.present[:, i].any())

    @property
    def rna_dim(self) -> int:
        return self.rna.shape[1]

    @property
    def has_reports(self) -> bool:
        return bool(len(self.present)) and bool(self.present[:, 2].any())

    @property
    def rpt_dim(self) -> int:
        """Width of the report vectors: the sentence model's, or the fold-fitted TF-IDF encoder's."""
        if not self.has_reports:
            return 0
        return TFIDF_DIM if self.text_encoder in ANALYZERS else self.rpt_global.shape[1]

    def wsi_bag(self, i: int) -> np.ndarray:
        """Patch features [N, Dw] of patient i (all slides concatenated); [0, Dw] when absent."""
        return self._wsi_cache(i)

    def _load_wsi(self, i: int) -> np.ndarray:
        if not self.present[i, 0]:
            return np.zeros((0, self.wsi_dim), np.float32)
        return np.concatenate([read_features(p).features for p in self.wsi_paths[i]]).astype(np.float32)

    def subset_summary(self) -> str:
        names = {0: "wsi", 1: "rna", 2: "rpt"}
        pats = pd.Series(["+".join(names[j] for j in range(3) if row[j]) for row in self.present]).value_counts()
        return ", ".join(f"{k}: {v}" for k, v in pats.items())


def select_labels(label_parts: list[pd.Series], classes: tuple[str, ...], label_column: str) -> pd.Series:
    """One label per patient from the tables' label Series, in the order given (the first table that labels
    a patient wins), kept only when it is one of ``classes`` (case-insensitive, mapped to the spelling in
    ``classes``). The cohort's patients are ``sorted(result.index)``; ``mosare finetune-text`` uses the same
    rule so that its folds equal the experiment's."""
    labels = pd.concat(label_parts).dropna().astype(str).str.strip()
    labels = labels[~labels.index.duplicated(keep="first")]
    wanted = {c.upper(): c for c in classes}
    labels = labels[labels.str.upper().isin(wanted)].map(lambda s: wanted[s.upper()])
    if labels.empty:
        raise InputError(f"no patient has a {label_column} in {', '.join(classes)}")
    return labels


def build_cohort(rna: str | Path | None, reports: str | Path | None, slides: str | Path | None, *,
                 label_column: str, classes: tuple[str, ...], scrub_terms: tuple[str, ...] = (),
                 complete_only: bool = False, embedder=None, progress: bool = True,
                 features_dir: str | Path | None = None, text_encoder: str = "minilm") -> Cohort:
    """Read the tables, keep patients whose label is one of ``classes``, scrub reports and split them into
    sentences; with ``text_encoder="minilm"`` embed them here (the sentence model is not fitted on the
    cohort), with ``"tfidf"`` / ``"tfidf-word"`` leave the fitting to each training fold
    (:func:`mosare.train.data.fit_fold_features`)."""
    if text_encoder not in TEXT_ENCODERS:
        raise InputError(f"unknown text encoder {text_encoder!r}; choose from {', '.join(TEXT_ENCODERS)}")
    if not (rna or reports or slides):
        raise InputError("give at least one of --rna, --reports, --slides")
    label_parts: list[pd.Series] = []
    genes_df = texts = None
    slide_map: dict[str, list[Path]] = {}
    if rna:
        genes_df, lab = read_rna_table(rna, label_column)
        label_parts.append(lab)
    if reports:
        texts, lab = read_reports_table(reports, label_column)
        label_parts.append(lab)
    if slides:
        slide_map = read_slides_table(slides, features_dir)
        if not label_parts:
            raise InputError("--slides alone has no labels: give --rna or --reports with the label column")
    labels = select_labels(label_parts, classes, label_column)
    ids = sorted(labels.index)
    has = np.stack([
        np.array([i in slide_map for i in ids]),
        np.array([genes_df is not None and i in genes_df.index for i in ids]),
        np.array([texts is not None and i in texts.index for i in ids]),
    ], axis=1)
    if complete_only:
        used = [i for i, m in enumerate(MODALITIES) if (m == "wsi" and slides) or (m == "rna" and rna) or (m == "rpt" and reports)]
        keep = has[:, used].all(axis=1)
        ids, has = [i for i, k in zip(ids, keep) if k], has[keep]
        if not ids:
            raise InputError("--complete-only leaves no patient with every given modality")
    y = np.array([classes.index(labels[i]) for i in ids], dtype=np.int64)
    for c, name in enumerate(classes):
        if (y == c).sum() < 2:
            raise InputError(f"class {name} has {(y == c).sum()} patient(s); need at least 2 per class")

    cohort = Cohort(patient_ids=ids, labels=y, classes=tuple(classes), present=has, text_encoder=text_encoder)
    if genes_df is not None:
        cohort.genes = list(genes_df.columns)
        cohort.rna = genes_df.reindex(ids).fillna(0.0).to_numpy(np.float32)
    if texts is not None:
        terms = list(vocabulary_for(classes)) + list(scrub_terms)
        pids = [i for i, h in zip(ids, has[:, 2]) if h]
        clean = {i: scrub(texts[i], terms).text for i in pids}
        cohort.rpt_texts = [clean.get(i, "") for i in ids]
        if text_encoder == "minilm":
            emb = (embedder or ReportEmbedder()).embed([clean[i] for i in pids], progress=progress)
            dim = emb[0].global_emb.shape[0]
            by_id = dict(zip(pids, emb))
            cohort.rpt_global = np.stack([by_id[i].global_emb if i in by_id else np.zeros(dim, np.float32) for i in ids])
            cohort.rpt_sentences = [by_id[i].sentence_emb if i in by_id else np.zeros((0, dim), np.float32) for i in ids]
            cohort.rpt_sentence_texts = [list(by_id[i].sentences) if i in by_id else [] for i in ids]
        else:
            cohort.rpt_sentence_texts = [split_sentences(clean[i]) if i in clean else [] for i in ids]
    if slide_map:
        cohort.wsi_paths = [slide_map.get(i, []) for i in ids]
        first = next(p[0] for p in cohort.wsi_paths if p)
        cohort.wsi_dim = read_features(first).features.shape[1]
    log.info("cohort: %d patients (%s)", len(ids), cohort.subset_summary())
    return cohort
