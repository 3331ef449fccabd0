"""From a cohort to mini-batches: fold-fitted features (on the training fold only) and padded batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mosare.data.cohort import Cohort
from mosare.data.local_tokens import fit_prototypes, gmm_local_tokens
from mosare.config import ANALYZERS
from mosare.text.tfidf import TfidfSvdEncoder
from mosare.types import Batch

RNA_CLIP = 10.0  # cBioPortal-style z-scores reach 10^4 for a few genes; clip before and after standardising


@dataclass
class FoldFeatures:
    """What is fitted on one training fold and applied to every patient:

    wsi [P, C, Dw], rpt [P, C, Dt]  local tokens (zeros where absent), from K-means prototypes of the fold;
                                    patch features are first standardised per feature with the fold's
                                    patch mean/std (handcrafted features mix scales; UNI's are harmless to scale)
    rna [P, G]                      expression clipped to ±RNA_CLIP and standardised with the fold's per-gene
                                    mean/std. Prototypes and all statistics go into the checkpoint so inference
                                    reproduces them (see :meth:`extras`).
    """

    wsi: np.ndarray
    rpt: np.ndarray
    rna: np.ndarray
    wsi_prototypes: np.ndarray
    rpt_prototypes: np.ndarray
    rna_mean: np.ndarray
    rna_std: np.ndarray
    wsi_mean: np.ndarray | None = None  # [Dw]
    wsi_std: np.ndarray | None = None  # [Dw]
    rpt_global: np.ndarray | None = None  # [P, Dt] report vectors (fold-fitted text encoder, or the cohort's)
    rpt_sentences: list[np.ndarray] | None = None  # [S_p, Dt] per patient
    text: TfidfSvdEncoder | None = None  # the fold-fitted report encoder (None: a sentence model, not fitted)

    def extras(self) -> dict[str, np.ndarray]:
        out = {"wsi_prototypes": self.wsi_prototypes, "rpt_prototypes": self.rpt_prototypes,
               "rna_mean": self.rna_mean, "rna_std": self.rna_std}
        if self.wsi_mean is not None and self.wsi_std is not None:
            out |= {"wsi_mean": self.wsi_mean, "wsi_std": self.wsi_std}
        if self.text is not None:
            out |= self.text.to_state()[0]
        return out

    def text_meta(self) -> dict | None:
        """The fitted report encoder's JSON part (vocabulary) for the checkpoint metadata, or None."""
        return None if self.text is None else self.text.to_state()[1]

    def wsi_bag(self, bag: np.ndarray) -> np.ndarray:
        """Patch features [N, Dw] standardised with the fold's statistics."""
        return standardise_wsi(bag, self.wsi_mean, self.wsi_std)


WSI_CLIP = 10.0
MAX_STAT_PATCHES = 200_000


def standardise_wsi(bag: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None) -> np.ndarray:
    """[N, Dw] → per-feature standardised, clipped to ±WSI_CLIP, float32 (unchanged without statistics)."""
    if mean is None or std is None or not len(bag):
        return bag.astype(np.float32, copy=False)
    return np.clip((bag - mean) / std, -WSI_CLIP, WSI_CLIP).astype(np.float32)


def wsi_statistics(bags: list[np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and std over (at most MAX_STAT_PATCHES sampled) patches of ``bags``."""
    rng = np.random.default_rng(seed)
    per_bag = max(1, MAX_STAT_PATCHES // max(1, len(bags)))
    sample = np.concatenate([b[rng.choice(len(b), per_bag, replace=False)] if len(b) > per_bag else b for b in bags])
    return sample.mean(0).astype(np.float32), (sample.std(0) + 1e-6).astype(np.float32)


def standardise_rna(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """[N, G] → clipped, standardised [N, G] float32."""
    z = (np.clip(x, -RNA_CLIP, RNA_CLIP) - mean) / std
    return np.clip(z, -RNA_CLIP, RNA_CLIP).astype(np.float32)


def fit_fold_features(cohort: Cohort, train_idx: np.ndarray, n_local: int, seed: int,
                      visible: np.ndarray | None = None) -> FoldFeatures:
    """K-means prototypes over the *training* patients' items, then a per-item GMM for every patient;
    RNA statistics from the training patients that have RNA. ``visible`` [P, 3] (default: the natural presence)
    says which training items may be fitted on: a scenario's masked modalities are not."""
    seen = cohort.present if visible is None else cohort.present & visible
    P = len(cohort)
    rna_train = np.clip(cohort.rna[[i for i in train_idx if seen[i, 1]]], -RNA_CLIP, RNA_CLIP)
    if cohort.rna.size and len(rna_train):
        mean, std = rna_train.mean(0), rna_train.std(0) + 1e-3
        rna = standardise_rna(cohort.rna, mean, std) * cohort.present[:, 1:2]
    else:
        mean = std = np.zeros(cohort.rna.shape[1], np.float32)
        rna = cohort.rna

    def one(items: list[np.ndarray], has: np.ndarray, dim: int, fit_ok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        train_items = [items[i] for i in train_idx if has[i] and fit_ok[i] and len(items[i])]
        if not train_items:
            return np.zeros((P, n_local, dim), np.float32), np.zeros((n_local, dim), np.float32)
        protos = fit_prototypes(train_items, n_components=n_local, seed=seed)
        means, _ = gmm_local_tokens(items, protos)
        means[~has] = 0.0
        return means.astype(np.float32), protos.astype(np.float32)

    rpt_dim = cohort.rpt_dim
    text, rpt_global, rpt_sentences = None, cohort.rpt_global, cohort.rpt_sentences
    if rpt_dim and cohort.text_encoder in ANALYZERS:
        has = cohort.present[:, 2]
        text = TfidfSvdEncoder.fit([cohort.rpt_texts[i] for i in train_idx if seen[i, 2]], dim=rpt_dim, seed=seed,
                                   analyzer=ANALYZERS[cohort.text_encoder])
        rpt_global = text.encode_reports(cohort.rpt_texts) * has[:, None]
        rpt_sentences = text.encode_sentences([s if h else [] for s, h in zip(cohort.rpt_sentence_texts, has)])
    rpt, rpt_p = one(rpt_sentences, cohort.present[:, 2], rpt_dim, seen[:, 2]) if rpt_dim else \
        (np.zeros((P, n_local, 0), np.float32), np.zeros((n_local, 0), np.float32))
    wsi_mean = wsi_std = None
    if cohort.wsi_dim:
        train_bags = [cohort.wsi_bag(i) for i in train_idx if seen[i, 0]]
        if train_bags:
            wsi_mean, wsi_std = wsi_statistics(train_bags, seed)
        bags = [standardise_wsi(cohort.wsi_bag(i), wsi_mean, wsi_std) for i in range(P)]
        wsi, wsi_p = one(bags, cohort.present[:, 0], cohort.wsi_dim, seen[:, 0])
    else:
        wsi, wsi_p = np.zeros((P, n_local, 0), np.float32), np.zeros((n_local, 0), np.float32)
    return FoldFeatures(wsi=wsi, rpt=rpt, rna=rna, wsi_prototypes=wsi_p, rpt_prototypes=rpt_p,
                        rna_mean=mean.astype(np.float32), rna_std=std.astype(np.float32),
                        wsi_mean=wsi_mean, wsi_std=wsi_std, rpt_global=rpt_global, rpt_sentences=rpt_sentences,
                        text=text)


def _sample(bag: np.ndarray, limit: int | None, rng: np.random.Generator | None) -> np.ndarray:
    if limit and len(bag) > limit:
        keep = np.sort((rng or np.random.default_rng()).choice(len(bag), limit, replace=False))
        return bag[keep]
    return bag


def make_batch(cohort: Cohort, tokens: FoldFeatures, idx: np.ndarray, present: np.ndarray,
               max_patches: int | None = None, rng: np.random.Generator | None = None,
               max_sentences: int | None = None) -> Batch:
    """Batch for patients ``idx`` with presence mask ``present`` [len(idx), 3] (natural & artificial).

    When ``max_patches`` / ``max_sentences`` are set (training), at most that many patches per slide and
    sentences per report are sampled without replacement; at inference every instance is used.
    """
    idx = np.asarray(idx)
    empty = np.zeros((0, 0), np.float32)
    wsi_bags = [tokens.wsi_bag(_sample(cohort.wsi_bag(int(i)), max_patches, rng)) if cohort.wsi_dim else empty
                for i in idx]
    rpt_dim = cohort.rpt_dim
    rpt_bags = [_sample(tokens.rpt_sentences[i], max_sentences, rng) if rpt_dim else empty for i in idx]
    n = len(idx)
    return Batch.collate(present, cohort.labels[idx], wsi_bags=wsi_bags, wsi_local=tokens.wsi[idx],
                         rna=tokens.rna[idx] if tokens.rna.size else np.zeros((n, 0), np.float32), rpt_bags=rpt_bags,
                         rpt_global=tokens.rpt_global[idx] if rpt_dim else np.zeros((n, 0), np.float32),
                         rpt_local=tokens.rpt[idx], wsi_dim=cohort.wsi_dim, rpt_dim=rpt_dim)
