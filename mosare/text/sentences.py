"""Sentence splitting of real, OCR-noisy pathology reports (numbered items, abbreviations, decimals, headings,
run-on text): :func:`split_sentences`."""


from __future__ import annotations

import math
import re

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

