"""Report encoders fitted on the training fold: TF-IDF → truncated SVD vectors for reports and sentences.

The IDC/ILC signal in a pathology report is lexical (pleomorphic, E-cadherin, single-file, in situ); a frozen
general-purpose sentence model (all-MiniLM-L6-v2) averages it away (report-only AUC ≈ 60 on BRCA against
≈ 80 for TF-IDF). :class:`TfidfSvdEncoder` keeps it: a TF-IDF vocabulary and a ``dim``-component SVD are
fitted on the **training fold's** scrubbed reports only, then applied to every report (its global vector,
z-scored with training statistics) and to every sentence (its local inputs, L2-normalised), so no fold ever
sees a test report's words.

The vocabulary is of character 3–5-grams within words (``--text-encoder tfidf``, the default) or of word
unigrams and bigrams (``tfidf-word``). TCGA reports are OCR'd scans ("carcinona", "E-cadherin" / "E cadherin" /
"ecadherin"): character n-grams share evidence between such spellings and between inflections that whole words
keep apart. On the BRCA validation splits (``assets/results/text-encoder/``) they lower the validation loss of
``text`` from 0.438 to 0.420 (AUC 75.9 → 77.9) and of ``mosare`` from 0.269 to 0.257.

The fitted state travels in the checkpoint: ``to_state`` gives numpy arrays (saved as safetensors extras)
and a JSON-safe dict (the vocabulary and settings, in the checkpoint's metadata); ``from_state`` rebuilds it.

    enc = TfidfSvdEncoder.fit(train_texts, dim=256, seed=0)
    glob = enc.encode_reports(texts)            # [N, dim] float32, z-scored
    sents = enc.encode_sentences(sentences)     # list of [S_i, dim] float32, unit rows
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import TfidfVectorizer

from mosare.errors import MosareError
from mosare.config import ANALYZERS

NAME = "tfidf-svd"
DEFAULT_DIM = 256
MAX_FEATURES = 20_000  # vocabulary cap: keeps the checkpoint small (the components are dim × vocabulary)
Z_CLIP = 10.0  # report vectors are z-scored, then clipped (as expression values are)


GRAMS = {"char": "character 3–5-gram", "word": "word 1–2-gram"}  # analyzer -> what its vocabulary holds


def tfidf_vectorizer(analyzer: str, vocabulary: dict[str, int] | None = None) -> TfidfVectorizer:
    """The encoder's TF-IDF (unfitted, or on a fixed ``vocabulary``). "char": character 3–5-grams inside word
    boundaries; "word": word unigrams and bigrams. ``bench/references.py`` fits its linear reference with it."""
    if analyzer not in GRAMS:
        raise MosareError(f"unknown TF-IDF analyzer {analyzer!r}; choose from {', '.join(GRAMS)}")
    grams = {"analyzer": "char_wb", "ngram_range": (3, 5)} if analyzer == "char" else {"ngram_range": (1, 2)}
    return TfidfVectorizer(min_df=2, sublinear_tf=True, max_features=MAX_FEATURES, vocabulary=vocabulary,
                           dtype=np.float32, **grams)


@dataclass
class TfidfSvdEncoder:
    """A fitted TF-IDF vocabulary (``vocabulary`` of ``analyzer`` n-grams, ``idf`` [V]) and SVD basis
    (``components`` [dim, V]); ``mean``/``std`` [dim] z-score report vectors with the training reports' statistics."""

    vocabulary: list[str]
    idf: np.ndarray
    components: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    analyzer: str

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def description(self) -> str:
        """e.g. "character 3–5-gram TF-IDF → 256-component SVD" (the app's model card)."""
        return f"{GRAMS[self.analyzer]} TF-IDF → {self.dim}-component SVD"

    @classmethod
    def fit(cls, texts: Sequence[str], dim: int = DEFAULT_DIM, seed: int = 0,
            analyzer: str = ANALYZERS["tfidf"]) -> TfidfSvdEncoder:
        """Fit on training reports only (the caller's responsibility: pass no validation or test report)."""
        texts = [t for t in texts if t and t.strip()]
        if len(texts) < 4:
            raise MosareError(f"the TF-IDF report encoder needs at least 4 training reports, got {len(texts)}")
        vec = tfidf_vectorizer(analyzer)
        try:
            x = vec.fit_transform(texts)
        except ValueError as err:  # e.g. every word is rarer than min_df
            raise MosareError(f"cannot fit the TF-IDF report encoder: {err}") from None
        # at most half as many components as training reports: with k close to n the last components fit single
        # reports, have ~zero variance over the training set and blow up when z-scored for an unseen report
        k = max(1, min(dim, x.shape[1] - 1, x.shape[0] // 2))
        svd = TruncatedSVD(k, algorithm="randomized", n_iter=7, random_state=seed).fit(x)
        # rounded to float16 here, as the checkpoint stores them: training and prediction then embed a report
        # with the very same numbers (z-scoring would magnify the rounding of a low-variance component)
        comps = svd.components_.astype(np.float16).astype(np.float32)
        if k < dim:  # a tiny training set: pad with zero components so the model's input size is fixed
            comps = np.concatenate([comps, np.zeros((dim - k, comps.shape[1]), np.float32)])
        vocab = sorted(vec.vocabulary_, key=vec.vocabulary_.get)
        z = (x @ comps.T).astype(np.float32)
        std = z.std(0)
        std = np.where(std > 1e-6, std, 1.0).astype(np.float32)  # padded (all-zero) components stay zero
        return cls(vocabulary=vocab, idf=vec.idf_.astype(np.float32), components=comps, mean=z.mean(0), std=std,
                   analyzer=analyzer)

    def _tfidf(self, texts: Sequence[str]):
        vec = tfidf_vectorizer(self.analyzer, {w: i for i, w in enumerate(self.vocabulary)})
        vec.idf_ = self.idf  # a fitted vectorizer without refitting: vocabulary + idf are all it needs
        return vec.transform(list(texts))

    def encode_reports(self, texts: Sequence[str]) -> np.ndarray:
        """[N, dim] z-scored report vectors, clipped to ±Z_CLIP."""
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        z = np.asarray(self._tfidf(texts) @ self.components.T, dtype=np.float32)
        return np.clip((z - self.mean) / self.std, -Z_CLIP, Z_CLIP).astype(np.float32)

    def encode_sentences(self, per_report: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """One [S_i, dim] array of L2-normalised sentence vectors per report (a sentence with no known word
        is the zero vector)."""
        flat = [s for sents in per_report for s in sents]
        if not flat:
            return [np.zeros((0, self.dim), np.float32) for _ in per_report]
        z = np.asarray(self._tfidf(flat) @ self.components.T, dtype=np.float32)
        z /= np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-6)
        out, start = [], 0
        for sents in per_report:
            out.append(z[start: start + len(sents)])
            start += len(sents)
        return out

    # ---- checkpoint round trip ------------------------------------------------------------------------
    def to_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays for the checkpoint's safetensors extras, JSON-safe metadata)."""
        arrays = {"text_idf": self.idf, "text_components": self.components.astype(np.float16),
                  "text_mean": self.mean, "text_std": self.std}
        return arrays, {"name": NAME, "dim": self.dim, "analyzer": self.analyzer, "vocabulary": self.vocabulary}

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> TfidfSvdEncoder:
        try:
            enc = cls(vocabulary=list(meta["vocabulary"]), idf=np.asarray(arrays["text_idf"], np.float32),
                      components=np.asarray(arrays["text_components"], np.float32),
                      mean=np.asarray(arrays["text_mean"], np.float32), std=np.asarray(arrays["text_std"], np.float32),
                      analyzer=str(meta.get("analyzer", "word")))  # checkpoints before the option: words
        except (KeyError, TypeError) as err:
            raise MosareError(f"the checkpoint's TF-IDF report encoder is incomplete (missing {err})") from None
        if enc.analyzer not in GRAMS:
            raise MosareError(f"the checkpoint's TF-IDF report encoder has an unknown analyzer {enc.analyzer!r}")
        if enc.components.shape[1] != len(enc.vocabulary) or enc.idf.shape[0] != len(enc.vocabulary):
            raise MosareError("the checkpoint's TF-IDF report encoder is inconsistent (vocabulary vs. arrays)")
        return enc
