"""Label-leak scrubbing of pathology reports.

The paper (§3.1) removes every mention of the subtype from a report before it is embedded. A removed word
must not leave a trace that spells it out again, so :func:`scrub` works on whole subtype PHRASES:

- every label word of the task (built-in vocabularies for breast IDC/ILC, lung LUAD/LUSC and kidney
  KIRC/KIRP/KICH, plus the raw class names; see :func:`vocabulary_for`) is replaced, together with the
  phrase it heads (a leading "invasive"/"infiltrating", the tails), by ONE neutral placeholder shared by
  all classes (:data:`PLACEHOLDER`). "Invasive ductal carcinoma, NOS", "infiltrating lobular carcinoma,
  classical type", "squamous cell carcinoma" and "adenocarcinoma" all become "[subtype]": no "NOS",
  "classic type" or "cell carcinoma" is left to tell the classes apart, and the placeholder reads the
  same (``subtype`` to a TF-IDF tokenizer, and to an uncased sentence model) whatever the class was;
- ICD-O-3 morphology codes (8500/3 ductal, 8520/3 lobular, 8070/3 squamous, 8140/3 adenocarcinoma ...,
  in every written form: ``8500 / 3``, ``85003``, ``M-8500/3``, ``M85003``) and bare 5-digit 8xxxx /
  9xxxx numbers (CPT billing codes 88xxx: no diagnostic content) are removed for ANY task.

"carcinoma" alone is not a label word (every class is a carcinoma); it goes only as part of a phrase.
Markers that are biology rather than label words (E-cadherin, TTF-1, napsin A, p40, p63, CK5/6, nuclear
pleomorphism, signet ring cells) are kept on purpose: the model may learn from them as a pathologist does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from mosare.errors import MosareError

PLACEHOLDER = "[subtype]"
"""What every subtype phrase becomes (``[Subtype]`` where the phrase opened a sentence)."""
_PLACEHOLDER_CAPITAL = re.sub(r"[a-z]", lambda m: m.group(0).upper(), PLACEHOLDER, count=1)

# A space inside a term matches any run of whitespace, hyphens or line-break periods ("no special. type").
_GAP = r"[\s.\-]+"


def _one_edit(word: str, exclude: Sequence[str] = ()) -> str:
    """Regex for the words that start with ``word`` up to one OCR slip (substitution, deletion or
    insertion), e.g. ``duetal``, ``ducale``, ``cobular``; ``exclude`` lists real words to spare."""
    alts = {word}
    for i in range(len(word)):
        alts.add(word[:i] + r"\w?" + word[i + 1 :])  # substitution or deletion at i
        alts.add(word[:i] + r"\w" + word[i:])  # insertion before i
    guard = "".join(f"(?!{e})" for e in exclude)
    return guard + "(?:" + "|".join(sorted(alts, key=len, reverse=True)) + r")\w*"


# Words that name "the usual subtype" or a variant of it without a subtype word ("carcinoma, NOS",
# "classical type"): label words of every built-in vocabulary.
_RESIDUE_TERMS: tuple[str, ...] = (
    r"not otherwise specified",
    r"n\.o\.s",
    r"nos",
)

# Each vocabulary maps a set of class names to regular expressions (case-insensitive, matched on whole
# words). Stems carry their inflections (``\w*ductal\w*`` covers intraductal, ductale, ductalis). Write
# optional separators as ``[\s\-]?``: a literal space is rewritten to ``_GAP``.
_VOCABULARIES: list[tuple[frozenset[str], tuple[str, ...]]] = [
    (
        frozenset({"IDC", "ILC", "MDLC"}),
        (
            # synoptic template text that comes with IDC ("no special type or not otherwise specified")
            r"no special type(?: or not otherwise specified)?",
            r"lobar(?= carcinoma)",  # "lobar carcinoma in situ": a typo for lobular
            r"\w*ductal\w*",  # ductal, intraductal, periductal, ductale, ductalis
            r"(?:intra|peri|extra|retro|micro)?duct\w*",  # duct, ducts, ductules, ductectasia (not conducted)
            r"\w*(?<!gl)obular\w*",  # lobular, intralobular, tubulolobular, OCR "cobular" (not globular)
            r"\w*(?<!g)lobu\w?ar\w*",  # OCR "lobuar", "lobuiar" (not globular)
            r"\w*(?<!g)lobul(?:e|es|i|us|orum)",  # lobule(s), Latin lobuli/lobulorum (not lobulated)
            _one_edit("ductal"),  # OCR: duetal, dectal, ducale, dactal...
            _one_edit("lobular", exclude=("globul", "lobulat")),
            r"classic(?:al)?(?:ly)?",  # "classic(al) type": the usual lobular variant
            r"pleomorphic (?:sub)?(?:types?|variants?)",  # the pleomorphic lobular variant (not the bare word)
            r"idcs?",
            r"ilcs?",
            r"dcis",
            r"lcis",
            r"adh",  # atypical ductal hyperplasia
            r"alh",  # atypical lobular hyperplasia
            r"nst",  # invasive carcinoma of no special type
            r"tdlus?",  # terminal duct lobular unit
            r"mdlc",
        ),
    ),
    (
        frozenset({"LUAD", "LUSC"}),
        (
            r"non[\s\-]?small cell",  # kept whole so that "small cell" is not left behind
            r"\w*adeno(?:carcinom|ca\b)\w*",
            r"\w*squam\w*",  # squamous, adenosquamous, squamoid
            r"(?:non[\s\-]?)?keratini[sz]\w*",
            r"keratin pearls?",
            r"epidermoid",
            r"\w*acinar\w*",
            r"bronchiolo[\s\-]?alveolar",
            r"\w*lepidic\w*",
            r"micropapillary",
            r"luad",
            r"lusc",
            r"bac",
            r"sq?cc",
            r"nsclc",
        ),
    ),
    (
        frozenset({"KIRC", "KIRP", "KICH", "CCRCC", "PRCC", "CHRCC", "CHRRCC"}),
        (
            r"conventional renal cell",
            r"conventional type",
            r"papillary type (?:1|2|i{1,2})",
            r"type (?:1|2|i{1,2}) papillary",
            r"clear cells?",
            r"\w*papillary\w*",
            r"\w*chromophob\w*",
            r"kirc",
            r"kirp",
            r"kich",
            r"cc[\s\-]?rcc",
            r"p[\s\-]?rcc",
            r"chr?[\s\-]?rcc",
        ),
    ),
]

# -- what a label word takes with it ------------------------------------------------------------------------
# Tails, in any order and number after a label word, each after a comma, a space or a hyphen: "ductal
# carcinoma in situ, NOS type", "squamous cell carcinoma", "lobular carcinoma, of the classical type".
_TAILS = (
    r"cells?",
    r"(?:adeno)?carcinomas?",
    r"ca",
    r"cancers?",
    r"neoplasias?",
    r"neoplasms?",
    r"in[\s\-]*situ",
    r"(?:of[\s\-]+(?:the[\s\-]+)?)?(?:classic(?:al)?|pleomorphic|usual|conventional|nos|n\.o\.s|no[\s.\-]+special)"
    r"[\s.\-]+(?:sub)?(?:types?|variants?|patterns?|forms?)",
    r"(?:sub)?types?",
    r"variants?",
    r"patterns?",
    r"not[\s.\-]+otherwise[\s.\-]+specified",
    r"no[\s.\-]+special[\s.\-]+type",
    r"n\.o\.s",
    r"nos",
    r"nst",
    # "classical, pleomorphic", "classic and pleomorphic types"
    r"(?:(?:and|or|&)[\s\-]+)?pleomorphic(?:[\s.\-]+(?:sub)?(?:types?|variants?|patterns?))?",
)
_TAIL_SEP = r"(?:\s*,\s*|[\s\-]+)"
# right after a label word and a line-break period ("ductal. carcinoma"), only these: a generic word ("type
# of procurement") or a second "carcinoma" may open the next sentence of a lower-case report
_PERIOD_TAILS = (
    r"(?:adeno)?carcinomas?",  # in any case ("DUCTAL. CARCINOMA")
    r"(?-i:cells?|in[\s\-]*situ|(?:sub)?types?|variants?)",  # lower case (a capital opens a sentence) ...
    r"(?-i:CELLS?|IN[\s\-]*SITU|(?:SUB)?TYPES?|VARIANTS?)",  # ... or all caps, as in OCR'd capitals
)
_PERIOD_SEP = r"\s*\.\s+"
_LABEL_SEP = r"(?:\s*[,/&]\s*|[\s\-]+(?:and|or|and/or)[\s\-]+|[\s\-]+)"  # "ductal and lobular", "ductal/lobular"
# Before a label word: "invasive" / "infiltrating" (reports name one subtype "infiltrating ductal carcinoma"
# and the other "lobular carcinoma" more often than not: "histologic type: [subtype]" must read the same)
# and a variant adjective ("pleomorphic lobular carcinoma", "pleomorphic and classic types"). A leading
# "carcinoma" stays ("renal cell carcinoma, clear cell type" -> "renal cell carcinoma, [subtype]").
_PREFIX = (
    r"(?:(?:invasive|infiltrat\w*|inflitrat\w*)[\s\-]+)?"
    r"(?:pleomorphic(?:[\s\-]+(?:and|or|&)?|\s*[,/]\s*)[\s\-]*)?"
)

# -- ICD-O-3 morphology codes (and 5-digit billing codes), removed for every task ----------------------------
ICDO_CODE = re.compile(
    r"(?<![\w./])(?:"
    r"M-?\s?[89]\d{3}(?:\s*/\s*\d|\d{1,2})?"  # M-codes: M-8500/3, M8500/3, M-85003, M850033, M-8500
    r"|[89]\d{3}\s*/\s*\d"  # 8500/3, 8500 / 3, (8520/3)
    r"|[89]\d{3}1[0-369]"  # OCR "/" read as "1": 850013
    r"|[89]\d{4}(?:\s*/\s*\d{1,2}|[xX]\d{1,2})?"  # 85203, 80703; CPT 88307, 88307/2, 88307x2
    r")(?![\w/]|\.\d)",
    re.IGNORECASE,
)
"""ICD-O-3 morphology codes (8xxx/x, 9xxx/x) in the written forms found in TCGA reports, and bare 5-digit
8xxxx / 9xxxx numbers. Not matched: decimals ("8.5 cm"), dates, longer accession numbers."""


def vocabulary_for(classes: Sequence[str]) -> list[str]:
    """The label-leak regular expressions for a classification task.

    Picks every built-in vocabulary whose class set shares a name with ``classes`` (case-insensitive),
    with the residue words every built-in vocabulary shares ("NOS", "not otherwise specified"), and always
    adds the class names themselves (escaped). Feed the result to :func:`scrub`.
    """
    wanted = {c.strip().upper() for c in classes if c and c.strip()}
    terms: list[str] = []
    for names, patterns in _VOCABULARIES:
        if names & wanted:
            terms.extend(patterns)
    if terms:
        terms.extend(_RESIDUE_TERMS)
    terms.extend(re.escape(c.strip()) for c in classes if c and c.strip())
    return list(dict.fromkeys(terms))


@dataclass
class ScrubResult:
    """A scrubbed text and what was removed.

    ``removed`` holds ``(start, end)`` character spans of the ORIGINAL text, sorted and non-overlapping: each
    span is a whole subtype phrase (replaced by :data:`PLACEHOLDER`) or a code (:data:`ICDO_CODE`, removed).
    """

    text: str
    removed: list[tuple[int, int]] = field(default_factory=list)


_COMPILED: dict[tuple[str, ...], re.Pattern[str]] = {}


def _compile_terms(terms: Sequence[str]) -> re.Pattern[str]:
    """One pattern: group ``code`` for a code, group ``phrase`` for a subtype phrase (none without terms)."""
    key = tuple(terms)
    if key in _COMPILED:
        return _COMPILED[key]
    alts = [t.strip() for t in terms if t and t.strip()]
    # Multiword terms first, then longer ones: the first alternative that matches wins in a regex.
    alts.sort(key=lambda t: (-t.count(" "), -len(t)))
    body = f"(?P<code>{ICDO_CODE.pattern})"
    if alts:
        label = "(?:" + "|".join("(?:" + t.replace(" ", _GAP) + ")" for t in alts) + r")(?!\w)"
        after_period = f"(?:{_PERIOD_SEP}(?:{'|'.join(_PERIOD_TAILS)})" + r"(?!\w))?"  # right after the word only
        tail = f"(?:{_TAIL_SEP}(?:{'|'.join(_TAILS)})" + r"(?!\w))*"
        unit = label + after_period + tail
        body += rf"|(?P<phrase>(?<!\w){_PREFIX}{unit}(?:{_LABEL_SEP}{unit})*)"
    try:
        pattern = re.compile(body, re.IGNORECASE)
    except re.error as err:
        raise MosareError(f"invalid label term in the scrub vocabulary: {err}") from None
    if len(_COMPILED) > 64:
        _COMPILED.clear()
    _COMPILED[key] = pattern
    return pattern


def _collapse_ws(text: str) -> str:
    """Collapse runs of spaces/tabs to one space and trim lines; newlines are kept (the sentence splitter
    uses them), three or more collapse to a blank line."""
    text = re.sub(r"[^\S\n]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def _opens_sentence(text: str, start: int, colon: bool = True) -> bool:
    before = text[max(0, start - 20) : start].rstrip(" \t")
    ends = (".", "!", "?", ":", "\n") if colon else (".", "!", "?", "\n")
    return (start < 20 and not before) or before.endswith(ends)


def scrub(text: str, terms: Sequence[str]) -> ScrubResult:
    """Remove label words, with the phrases they head, and ICD-O morphology codes from a report.

    Args:
        text: the raw report.
        terms: regular expressions matched case-insensitively on whole words (plain words are valid
            patterns; a space matches any run of whitespace, hyphens or line-break periods). Use
            :func:`vocabulary_for`; multiword terms are tried first. Each match grows into its whole
            subtype phrase (a leading "invasive", "infiltrating" or "pleomorphic", tails such as "cell
            carcinoma", "carcinoma in situ", ", NOS", ", classic type"; label words joined by "and", "/").

    Returns:
        :class:`ScrubResult`: each phrase replaced by :data:`PLACEHOLDER` (``[Subtype]`` when the phrase
        opened a sentence), each code by a space, whitespace collapsed (newlines kept), and the removed
        spans of the original text. Codes go whatever the terms; without terms nothing else changes.
    """
    parts: list[str] = []
    removed: list[tuple[int, int]] = []
    last = 0
    capitalise_next = False
    for m in _compile_terms(terms).finditer(text):
        if m.end() == m.start():
            continue
        kept = text[last : m.start()]
        if capitalise_next:
            kept = _capitalise_first(kept)
        parts.append(kept)
        removed.append((m.start(), m.end()))
        if m.lastgroup == "phrase":
            # "[Subtype]" where a capitalised phrase opened a sentence (not after a colon: "type: IDC")
            opens = _opens_sentence(text, m.start(), colon=False)
            upper = m.group(0)[:1].isupper() and (opens or (capitalise_next and not kept.strip()))
            parts.append(_PLACEHOLDER_CAPITAL if upper else PLACEHOLDER)
            capitalise_next = False
        else:
            parts.append(" ")
            opens = _opens_sentence(text, m.start())
            # a capitalised code that opened a sentence passes its capital on to the next kept word
            capitalise_next = m.group(0)[:1].isupper() and (opens or (capitalise_next and not kept.strip()))
        last = m.end()
    tail = text[last:]
    parts.append(_capitalise_first(tail) if capitalise_next else tail)
    return ScrubResult(_collapse_ws("".join(parts)), removed)


def has_content(scrubbed: str) -> bool:
    """Does a scrubbed report say anything besides placeholders, punctuation and whitespace?"""
    return re.search(r"\w", re.sub(re.escape(PLACEHOLDER), " ", scrubbed, flags=re.IGNORECASE)) is not None


def _capitalise_first(s: str) -> str:
    """Upper-case the first letter of ``s`` if it opens a lower-case word."""
    m = re.match(r"\s*([a-z])", s)
    return s if m is None else s[: m.start(1)] + s[m.start(1)].upper() + s[m.start(1) + 1 :]


__all__ = ["ICDO_CODE", "PLACEHOLDER", "ScrubResult", "scrub", "vocabulary_for"]
