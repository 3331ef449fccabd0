"""Leak audit of scrubbed reports: the features a bag-of-words model finds most telling, and which look like leaks.

A TF-IDF (sublinear tf, ``min_df=2``) + L2 logistic regression is fitted on the already scrubbed TRAINING reports
of a fold; its strongest features per class are listed and a feature is flagged when it is an ICD-O code or a
number of code shape (:data:`CODE_FEATURE`), a label word the scrubber should have removed, a fragment of a
scrubbed phrase (:data:`LEAK_FRAGMENTS`), or the placeholder next to a phrase tail ("subtype carcinoma",
"subtype type", :data:`PLACEHOLDER_TAILS`). Biology (grade, E-cadherin, pleomorphism) is not flagged: a model may
learn from it as a pathologist does.

Two feature sets (``analyzer``): "word" unigrams + bigrams (readable, the shared references' features), and
"char", the character 3–5-grams inside words that the default report encoder reads
(:func:`mosare.text.tfidf.tfidf_vectorizer`). A character n-gram says little by itself ("herin"), so each is
listed with its carrier words, the training-report words that contain it and how many of its occurrences each
holds ("e-cadherin 64 %"), and it is flagged when a carrier holding at least :data:`CARRIER_SHARE` of them is.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from mosare.errors import MosareError
from mosare.io.atomic import atomic_write_text
from mosare.text.scrub import PLACEHOLDER
from mosare.text.tfidf import GRAMS, tfidf_vectorizer

# A feature token of ICD-O code shape, as the TF-IDF tokenizer leaves it: "8520/3" -> "8520", "85203",
# "M-85003" -> "85003", "M8500/3" -> "m8500".
CODE_FEATURE = re.compile(r"m?[89]\d{3}(?:\d{1,2})?")

# Label words any scrub vocabulary removes (stems, matched on whole tokens).
LABEL_WORD = re.compile(
    r"\w*ductal\w*|duct|ducts|\w*lobul\w*|idcs?|ilcs?|dcis|lcis|mdlc|\w*squam\w*|\w*adenocarcinom\w*"
    r"|keratini[sz]\w*|luad|lusc|nsclc|\w*chromophob\w*|kirc|kirp|kich|ccrcc"
)

# Fragments of scrubbed phrases whose presence spells the removed subtype: feature -> reason.
LEAK_FRAGMENTS: dict[str, str] = {
    "nos": "residue of 'carcinoma, NOS'",
    "not otherwise": "residue of 'not otherwise specified'",
    "otherwise specified": "residue of 'not otherwise specified'",
    "nst": "residue of 'no special type (NST)'",
    "special type": "residue of 'no special type'",
    "classic": "residue of 'classic type'",
    "classical": "residue of 'classical type'",
    "classic type": "residue of 'classic type'",
    "classical type": "residue of 'classical type'",
    "pleomorphic type": "residue of 'pleomorphic type'",
    "nos type": "residue of 'NOS type'",
    "cell carcinoma": "residue of 'squamous cell carcinoma'",
    "carcinoma nos": "residue of 'carcinoma, NOS'",
}
# Words that, next to the placeholder, show that one class's phrase lost a different tail than another's.
PLACEHOLDER_TAILS = frozenset(
    "carcinoma carcinomas ca cancer cell cells type types subtype subtypes variant variants pattern situ nos "
    "nst classic classical pleomorphic".split()
)
_PLACEHOLDER_TOKEN = re.sub(r"\W", "", PLACEHOLDER).lower()  # "subtype": what the tokenizer keeps
CARRIER_SHARE = 0.1  # a character n-gram is flagged when a flagged word holds at least this share of it
N_CARRIERS = 3  # carrier words listed per character n-gram


def flag_reason(feature: str) -> str:
    """Why a TF-IDF feature (one or two lower-case tokens) looks like a label leak; "" when it does not."""
    if feature in LEAK_FRAGMENTS:
        return LEAK_FRAGMENTS[feature]
    words = feature.split()
    for w in words:
        if CODE_FEATURE.fullmatch(w):
            return "ICD-O code shape"
        if LABEL_WORD.fullmatch(w):
            return "label word"
        if w in LEAK_FRAGMENTS:
            return LEAK_FRAGMENTS[w]
    if len(words) == 2 and _PLACEHOLDER_TOKEN in words:
        other = words[1] if words[0] == _PLACEHOLDER_TOKEN else words[0]
        if other in PLACEHOLDER_TAILS:
            return "placeholder next to a phrase tail"
    return ""


def carriers(gram: str, words: Counter) -> list[tuple[str, float]]:
    """The words (whitespace-separated, lower-case, as the character analyzer splits them) containing the
    character n-gram ``gram`` (word-boundary padding included, as in " nos"), each with its share of the
    n-gram's occurrences in ``words`` (word -> count), largest first."""
    hits = Counter({w: n * _occurrences(f" {w} ", gram) for w, n in words.items() if gram in f" {w} "})
    total = sum(hits.values())
    return [(w, n / total) for w, n in hits.most_common()] if total else []


def _occurrences(text: str, gram: str) -> int:
    """How often ``gram`` occurs in ``text``, overlaps counted as the n-gram analyzer counts them ("xxx" in "xxxxx": 3)."""
    return sum(text.startswith(gram, i) for i in range(len(text) - len(gram) + 1))


def carrier_reason(held: list[tuple[str, float]]) -> str:
    """Why a character n-gram with these carriers looks like a leak: the first carrier holding at least
    CARRIER_SHARE of it whose word tokens (``8520/3`` -> ``8520``, ``3``) are flagged; "" when none is."""
    for word, share in held:
        if share < CARRIER_SHARE:
            break
        for token in re.findall(r"\w+", word):
            if reason := flag_reason(token):
                return f"in '{word}' ({share:.0%}): {reason}"
    return ""


@dataclass
class LeakAudit:
    """The strongest features per class and the suspicious ones.

    ``features``: one row per (class, rank) with columns class, rank (1 = strongest), feature, weight (the
    logistic-regression coefficient towards that class, > 0), flagged (bool), reason ("" if not flagged) and
    carriers (character n-grams: the words holding it, "e-cadherin 64 %, cadherin 30 %"; "" for word features).
    ``analyzer``: "word" or "char".
    """

    features: pd.DataFrame
    n_reports: int
    analyzer: str = "word"

    @property
    def flagged(self) -> pd.DataFrame:
        """The flagged rows of :attr:`features`."""
        return self.features[self.features["flagged"]].reset_index(drop=True)

    def to_markdown(self) -> str:
        char = self.analyzer == "char"
        lines = [
            f"# Report leak audit: {GRAMS[self.analyzer]} features ({self.n_reports} training reports)",
            "",
            f"Flagged: {len(self.flagged)} of {len(self.features)} top features.",
            "",
            "| class | rank | feature | weight | carrier words | flagged |" if char else
            "| class | rank | feature | weight | flagged |",
            "|---|---:|---|---:|---|---|" if char else "|---|---:|---|---:|---|",
        ]
        for r in self.features.itertuples(index=False):
            flag = f"**{r.reason}**" if r.flagged else ""
            held = f" {r.carriers} |" if char else ""
            lines.append(f"| {r[0]} | {r.rank} | `{r.feature}` | {r.weight:.3f} |{held} {flag} |")
        return "\n".join(lines) + "\n"

    def write(self, out_dir: str | Path) -> None:
        """Write ``leak_audit.csv`` and ``leak_audit.md`` (word features) or ``leak_audit-char.csv`` / ``.md``
        (character n-grams) into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = "leak_audit" if self.analyzer == "word" else f"leak_audit-{self.analyzer}"
        atomic_write_text(out / f"{stem}.csv", self.features.to_csv(index=False))
        atomic_write_text(out / f"{stem}.md", self.to_markdown())


def leak_audit(
    texts: Sequence[str], labels: np.ndarray, classes: Sequence[str], top: int = 25, seed: int = 0, C: float = 10.0,
    analyzer: str = "word",
) -> LeakAudit:
    """Fit TF-IDF (``analyzer`` "word" or "char" features) + logistic regression on scrubbed training ``texts``
    (``labels`` index ``classes``) and return the ``top`` strongest features of each class, flagged as in the
    module notes. With two classes a positive coefficient speaks for ``classes[1]``, a negative one for
    ``classes[0]``."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(labels).astype(int)
    if len(texts) != len(y):
        raise MosareError(f"leak audit: {len(texts)} texts but {len(y)} labels")
    present = np.unique(y)
    if analyzer not in GRAMS:
        raise MosareError(f"leak audit: unknown analyzer {analyzer!r}; choose from {', '.join(GRAMS)}")
    if len(present) < 2 or present.min() < 0 or present.max() >= len(classes):
        raise MosareError(f"leak audit: labels must index {len(classes)} classes and cover at least 2")
    try:
        vec = tfidf_vectorizer("char") if analyzer == "char" else TfidfVectorizer(
            min_df=2, ngram_range=(1, 2), sublinear_tf=True)
        x = vec.fit_transform(list(texts))
    except ValueError as err:  # e.g. no term in two or more reports
        raise MosareError(f"leak audit: cannot build a vocabulary: {err}") from None
    model = LogisticRegression(C=C, max_iter=5000, random_state=seed).fit(x, y)
    names = vec.get_feature_names_out()
    coef = model.coef_
    per_class = {int(present[0]): -coef[0], int(present[1]): coef[0]} if coef.shape[0] == 1 else dict(
        zip((int(c) for c in model.classes_), coef)
    )
    words = Counter(w for t in texts for w in t.lower().split()) if analyzer == "char" else None
    rows = []
    for c, w in sorted(per_class.items()):
        order = [i for i in np.argsort(-w, kind="stable")[:top] if w[i] > 1e-8]  # not the features of no weight
        for rank, i in enumerate(order, 1):
            feature, held = str(names[i]), ""
            if words is None:
                reason = flag_reason(feature)
            else:
                found = carriers(feature, words)
                reason = flag_reason(feature.strip()) or carrier_reason(found)
                held = ", ".join(f"{cw} {share:.0%}" for cw, share in found[:N_CARRIERS])
            rows.append((classes[c], rank, feature, float(w[i]), bool(reason), reason, held))
    df = pd.DataFrame(rows, columns=["class", "rank", "feature", "weight", "flagged", "reason", "carriers"])
    return LeakAudit(df, len(y), analyzer)


__all__ = [
    "CARRIER_SHARE", "CODE_FEATURE", "LABEL_WORD", "LEAK_FRAGMENTS", "PLACEHOLDER_TAILS", "LeakAudit", "carriers",
    "flag_reason", "leak_audit",
]
