"""Pathology-report views: sentence attention as highlighted HTML, and what the label scrubber removed.

All report text is HTML-escaped before it is wrapped in markup, so a report can never inject HTML.
"""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

ALPHA_MIN = 0.05
ALPHA_MAX = 0.85
TOP_K = 3  # sentences marked ``mosare-top`` by :func:`highlight_html`


def _descending(scores: np.ndarray) -> np.ndarray:
    """Indices of the non-NaN scores, highest first (ties in sentence order)."""
    valid = np.flatnonzero(~np.isnan(scores))
    return valid[np.argsort(-scores[valid], kind="stable")]


def _span(text: str, rank: int | None, top_class: str, score: str, title: str, rgb: tuple[int, ...],
          alpha: float) -> str:
    """One highlighted sentence (``text`` already escaped); ranked sentences get ``top_class`` and ``data-rank``."""
    cls = f"mosare-sentence {top_class}" if rank else "mosare-sentence"
    ranked = f' data-rank="{rank}"' if rank else ""
    r, g, b = rgb
    return (f'<span class="{cls}"{ranked} data-score="{score}" title="{title}" '
            f'style="background-color: rgba({r},{g},{b},{alpha:.3f})">{text}</span>')


def highlight_html(
    sentences: list[str],
    scores01: np.ndarray | None,
    rgb: tuple[int, int, int] = (230, 97, 0),
) -> str:
    """Sentences as one ``<div class="mosare-report">``, each sentence a ``<span class="mosare-sentence">``.

    Args:
        sentences: the report's sentences, in order.
        scores01: ``[S]`` attention per sentence in [0, 1] (clipped), or ``None`` for plain text.
        rgb: the highlight hue; its alpha grows linearly with the score from 0.05 to 0.85.

    Each scored span carries ``data-score``, a ``title`` tooltip and the background colour; the ``TOP_K``
    highest-scoring sentences also get class ``mosare-top`` and ``data-rank`` (1 = highest). NaN scores are
    left unhighlighted.
    """
    if scores01 is None:
        spans = [f'<span class="mosare-sentence">{html.escape(s)}</span>' for s in sentences]
        return '<div class="mosare-report">' + " ".join(spans) + "</div>"
    scores = np.asarray(scores01, dtype=np.float64).reshape(-1)
    if scores.shape[0] != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {scores.shape[0]} scores")
    rgb = tuple(int(c) for c in rgb)
    rank = {int(i): k + 1 for k, i in enumerate(_descending(scores)[:TOP_K])}
    spans = []
    for i, sentence in enumerate(sentences):
        text = html.escape(sentence)
        score = scores[i]
        if np.isnan(score):
            spans.append(f'<span class="mosare-sentence">{text}</span>')
            continue
        alpha = ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * float(np.clip(score, 0.0, 1.0))
        spans.append(_span(text, rank.get(i), "mosare-top", f"{score:.3f}", f"attention {score:.3f}", rgb, alpha))
    return '<div class="mosare-report">' + " ".join(spans) + "</div>"


TOWARD_RGB = (178, 24, 43)  # diverging pair (ColorBrewer RdBu ends): toward the predicted class
AWAY_RGB = (33, 102, 172)  # ... and away from it


def signed_highlight_html(
    sentences: list[str],
    scores: np.ndarray,
    label: str,
    toward: tuple[int, int, int] = TOWARD_RGB,
    away: tuple[int, int, int] = AWAY_RGB,
) -> str:
    """Sentences as one ``<div class="mosare-attribution">`` coloured by a *signed* score (each sentence a
    ``<span class="mosare-sentence">``; a separate container class from :func:`highlight_html`'s attention view).

    Args:
        sentences: the report's sentences, in order.
        scores: ``[S]`` signed attribution, e.g. Δ log-odds(``label``) when the sentence is removed; NaN: not
            scored.
        label: the class the scores point toward (shown in the tooltips).
        toward, away: the hues of positive and negative scores; the alpha grows linearly with
            ``|score| / max |score|`` from 0.05 to 0.85 (a zero score stays almost clear).

    Each scored span carries ``data-score`` (signed), a ``title`` tooltip and the background colour; the
    ``TOP_K`` highest positive scores also get class ``mosare-toward`` and ``data-rank`` (1 = strongest push toward).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {s.shape[0]} scores")
    finite = np.abs(s[np.isfinite(s)])
    scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    pos = np.where(s > 0, s, np.nan)
    rank = {int(i): k + 1 for k, i in enumerate(_descending(pos)[:TOP_K])}
    name = html.escape(str(label), quote=True)
    spans = []
    for i, sentence in enumerate(sentences):
        text = html.escape(sentence)
        if not np.isfinite(s[i]):
            spans.append(f'<span class="mosare-sentence">{text}</span>')
            continue
        alpha = ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * min(1.0, abs(s[i]) / scale)
        spans.append(_span(text, rank.get(i), "mosare-toward", f"{s[i]:+.4g}", f"Δ log-odds({name}) = {s[i]:+.4g}",
                           toward if s[i] >= 0 else away, alpha))
    return '<div class="mosare-attribution">' + " ".join(spans) + "</div>"


def _escape_lines(text: str) -> str:
    return html.escape(text).replace("\n", "<br>")


def struck_html(text: str, removed: list[tuple[int, int]]) -> str:
    """The original report, HTML-escaped with newlines as ``<br>``, and each removed ``(start, end)`` span
    of it (as returned by ``mosare.text.embed.scrub``) wrapped in ``<del class="mosare-scrubbed">``.

    Overlapping or touching spans are merged; spans are clipped to the text.
    """
    spans = sorted((max(0, int(a)), min(len(text), int(b))) for a, b in removed)
    merged: list[list[int]] = []
    for a, b in spans:
        if b <= a:
            continue
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    parts = []
    last = 0
    for a, b in merged:
        parts.append(_escape_lines(text[last:a]))
        parts.append(f'<del class="mosare-scrubbed">{_escape_lines(text[a:b])}</del>')
        last = b
    parts.append(_escape_lines(text[last:]))
    return "".join(parts)


def rank_sentences(sentences: list[str], scores: np.ndarray, k: int = 5) -> pd.DataFrame:
    """The ``k`` highest-scoring sentences: columns ``rank`` (1-based), ``score``, ``sentence``.

    ``scores`` is ``[S]``; NaN scores are skipped, ties keep sentence order.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.shape[0] != len(sentences):
        raise ValueError(f"{len(sentences)} sentences but {s.shape[0]} scores")
    order = _descending(s)[: max(0, int(k))]
    return pd.DataFrame(
        {
            "rank": np.arange(1, len(order) + 1, dtype=np.int64),
            "score": s[order],
            "sentence": [sentences[i] for i in order],
        }
    )
