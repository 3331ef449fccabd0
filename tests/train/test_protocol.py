"""The training protocol of the model issue: warm-up guard, aligning losses on after it, fold-fitted report
encoder, one model for masked-masked and masked-unmasked, per-subset AUC and the validation threshold."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import rna_cohort
from mosare.data.cohort import Cohort
from mosare.config import ExperimentConfig, ModelConfig, TrainConfig
from mosare.errors import MosareError
from mosare.model.registry import build_model
from mosare.train.data import fit_fold_features
from mosare.train.experiment import model_config_for, run_experiment
from mosare.train.loop import check_align_warmup, fit
from mosare.train.metrics import choose_threshold, classification_metrics, subset_aucs
from mosare.train.splits import train_val_split

SMALL = ModelConfig(hidden=16, gene_token_dim=4)


def test_align_warmup_is_a_fraction_of_the_run_and_warns_when_never_reached(caplog):
    model = build_model("mosare", model_config_for(rna_cohort(n=20), SMALL))
    assert TrainConfig(epochs=40, align_warmup=0.25).align_epoch == 10
    assert TrainConfig(epochs=8, align_warmup=0.25).align_epoch == 2  # scales with a short run
    with caplog.at_level(logging.WARNING):
        assert check_align_warmup(TrainConfig(epochs=8, align_warmup=10), model) == 10
    assert "never run" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        check_align_warmup(TrainConfig(epochs=8, align_warmup=0.25), model)
        check_align_warmup(TrainConfig(epochs=8, align_warmup=10), build_model("mosare-no-align", model.cfg))
    assert caplog.text == ""  # reached, or an ablation without aligning losses: nothing to warn about


def test_aligning_losses_switch_on_after_the_warm_up():
    cohort = rna_cohort(n=64)
    idx = np.arange(64)
    tr, va = train_val_split(idx, cohort.labels, 0.25, seed=0)
    tokens = fit_fold_features(cohort, tr, 16, 0)
    torch.manual_seed(0)
    model = build_model("mosare", model_config_for(cohort, SMALL))
    cfg = TrainConfig(epochs=4, batch_size=16, lr=1e-3, warmup_epochs=1, align_warmup=0.5, patience=10, device="cpu")
    res = fit(model, cohort, tokens, tr, va, cohort.present, cfg, torch.device("cpu"), progress=False)
    hist = pd.DataFrame(res.history)
    assert (hist.loc[hist.epoch < 2, ["train_symcl", "train_mcl"]] == 0).all().all()
    assert (hist.loc[hist.epoch >= 2, ["train_symcl", "train_mcl"]] > 0).all().all()
    assert {"lr", "train_cls", "train_rec", "val_loss", "val_auc"} <= set(hist.columns)
    assert hist.lr.iloc[0] < hist.lr.max()  # linear warm-up, then cosine decay
    assert hist.lr.iloc[-1] < hist.lr.max()


def _report_cohort(n: int = 40, text_encoder: str = "tfidf") -> Cohort:
    """Reports only; class B reports mention 'spiculated', class A 'circumscribed'."""
    y = np.arange(n) % 2
    words = ["circumscribed", "spiculated"]
    texts = [f"Tumour size {i % 7 + 1} cm. The margin is {words[c]}. Nodes examined {i % 5}."
             for i, c in enumerate(y)]
    present = np.zeros((n, 3), bool)
    present[:, 2] = True
    return Cohort(patient_ids=[f"R{i:03d}" for i in range(n)], labels=y.astype(np.int64), classes=("A", "B"),
                  present=present, rpt_texts=texts, rpt_sentence_texts=[t.split(". ") for t in texts],
                  text_encoder=text_encoder)


@pytest.mark.parametrize(("encoder", "seen", "test_only"), [("tfidf", "icula", "ebraf"),  # character n-grams
                                                            ("tfidf-word", "spiculated", "zebrafishoid")])
def test_report_encoder_is_fitted_on_the_training_fold_only(encoder, seen, test_only):
    cohort = _report_cohort(text_encoder=encoder)
    train, test = np.arange(0, 30), np.arange(30, 40)
    for i in test[:3]:  # a word only test reports use, often enough for min_df=2
        cohort.rpt_texts[i] += " Zebrafishoid pattern noted."
    feats = fit_fold_features(cohort, train, n_local=4, seed=0)
    vocab = set(feats.text.vocabulary)
    assert seen in vocab and test_only not in vocab
    # the same word in training reports does enter the vocabulary: the check above can fail
    for i in train[:3]:
        cohort.rpt_texts[i] += " Zebrafishoid pattern noted."
    assert test_only in set(fit_fold_features(cohort, train, n_local=4, seed=0).text.vocabulary)
    assert feats.rpt_global.shape == (40, 256) and len(feats.rpt_sentences) == 40


def test_masked_scenarios_share_one_trained_model(tmp_path, monkeypatch):
    import mosare.train.experiment as experiment

    calls = []
    real_fit = experiment.fit

    def counting_fit(model, *args, **kwargs):
        calls.append(model.name)
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(experiment, "fit", counting_fit)
    cfg = ExperimentConfig(classes=("A", "B"), folds=2, models=("snn",), scenarios=("masked-masked", "masked-unmasked"),
                           mask_rates=(0.3,), model=SMALL,
                           train=TrainConfig(epochs=2, batch_size=16, lr=1e-3, device="cpu"))
    run_experiment(rna_cohort(n=40), cfg, tmp_path, progress=False)
    assert len(calls) == 2  # one per fold, not one per scenario
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 4
    for _, g in runs.groupby("fold"):
        assert g.checkpoint.nunique() == 1 and set(g.scenario) == {"masked-masked", "masked-unmasked"}
    assert (tmp_path / "history.csv").is_file() and (tmp_path / "subsets.csv").is_file()


def test_subset_aucs_by_hand():
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    p1 = np.array([0.1, 0.9, 0.8, 0.3, 0.2, 0.6, 0.7, 0.4])
    probs = np.stack([1 - p1, p1], 1)
    subsets = ["rna+rpt", "rna+rpt", "rna+rpt", "rna+rpt", "rna", "rna", "rna", "rna"]
    rows = {r["subset"]: r for r in subset_aucs(y, probs, subsets)}
    # rna+rpt: positives 0.9, 0.3 vs negatives 0.1, 0.8 → pairs won: (0.9>0.1, 0.9>0.8, 0.3>0.1) = 3 of 4
    assert rows["rna+rpt"]["auc"] == pytest.approx(75.0) and rows["rna+rpt"]["n"] == 4
    # rna: positives 0.6, 0.7 vs negatives 0.2, 0.4 → 4 of 4
    assert rows["rna"]["auc"] == pytest.approx(100.0)
    assert rows["all"]["auc"] == pytest.approx(100 * roc_auc_score(y, p1)) and rows["all"]["n"] == 8
    one_class = subset_aucs(np.array([1, 1]), probs[:2], ["rpt", "rpt"])
    assert np.isnan(one_class[0]["auc"])


def test_validation_threshold_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1])
    p1 = np.array([0.05, 0.1, 0.2, 0.3, 0.35, 0.4])  # every positive below 0.5: arg-max says "all class 0"
    probs = np.stack([1 - p1, p1], 1)
    t = choose_threshold(y, probs)
    assert t == pytest.approx(0.35)  # the lowest positive separates the classes perfectly
    assert classification_metrics(y, probs, t)["f1"] == pytest.approx(100.0)
    assert classification_metrics(y, probs)["f1"] < 100.0
    assert choose_threshold(np.zeros(3, int), probs[:3]) is None


def test_mosare_paper_is_the_faithful_architecture_and_old_checkpoints_still_load(tmp_path):
    import json
    from dataclasses import replace

    from helpers import random_batch
    from mosare.model.checkpoint import LEGACY_DEFAULTS, load_checkpoint, save_checkpoint

    cfg = ModelConfig(modalities=("rna", "rpt"), rna_dim=12, rpt_dim=6, hidden=16, gene_token_dim=4)
    paper = build_model("mosare-paper", cfg)
    assert paper.cfg.fusion == "sum" and paper.linear is None and paper.cfg.rna_sample_norm
    assert build_model("mosare", cfg).linear is not None  # the improved default keeps its linear path
    # a checkpoint written before these options existed has none of their keys: it loads as the paper model
    old_cfg = replace(cfg, **LEGACY_DEFAULTS)
    old = build_model("mosare", old_cfg).eval()
    path = save_checkpoint(tmp_path / "old", old, "mosare", old_cfg, meta={"classes": ["A", "B"]})
    doc = json.loads(path.with_suffix(".json").read_text())
    for key in LEGACY_DEFAULTS:
        doc["config"].pop(key)
    path.with_suffix(".json").write_text(json.dumps(doc))
    loaded, _, _ = load_checkpoint(path)
    batch = random_batch(cfg, 4)
    assert torch.allclose(old(batch).probs, loaded(batch).probs)


def test_a_tfidf_checkpoint_embeds_a_new_report_as_its_training_fold_did(tmp_path):
    """The fold-fitted report encoder travels in the checkpoint: `predict` rebuilds the same report vector."""
    from mosare.inference import Predictor

    cohort = _report_cohort()
    cfg = ExperimentConfig(classes=("A", "B"), folds=2, models=("text",), scenarios=("complete",), model=SMALL,
                           train=TrainConfig(epochs=1, batch_size=16, device="cpu"))
    run_experiment(cohort, cfg, tmp_path, progress=False)
    ckpt = tmp_path / "checkpoints" / "text" / "complete-0" / "fold0.safetensors"
    predictor = Predictor(ckpt)
    assert predictor.text_encoder is not None and predictor.info.text_encoder["name"] == "tfidf-svd"
    assert predictor.text_encoder.analyzer == "char"
    case = predictor.make_case(report_text=cohort.rpt_texts[0])
    fold = experiment_fold_features(cohort, cfg, k=0)
    np.testing.assert_allclose(case.report_emb, fold.rpt_global[0], rtol=1e-3, atol=1e-3)
    assert predictor.predict(case).probs.shape == (2,)
    audits = sorted(p.name for p in (tmp_path / "leak_audit" / "fold0").glob("*.md"))
    assert audits == ["leak_audit-char.md", "leak_audit.md"]  # word features, and the encoder's own n-grams


def experiment_fold_features(cohort: Cohort, cfg: ExperimentConfig, k: int, refit: bool = True):
    """Fold k's features exactly as the experiment fitted them: for the selection run (its training split) or,
    with ``refit``, for a ``text`` refit, which refits them on training + validation split."""
    from mosare.train.experiment import Fold
    from mosare.train.splits import patient_folds

    train_all = patient_folds(cohort.labels, cfg.folds, cfg.seed)[k][0]
    fold = Fold(cohort, cfg, model_config_for(cohort, cfg.model), k, train_all)
    return fold.tokens("complete-0", cohort.present, refit=refit)


@pytest.mark.parametrize(("refit_features", "validation_word_seen"), [(None, True), (False, False)])
def test_the_text_refit_refits_its_report_encoder_on_the_validation_split_but_never_on_the_test_fold(
        tmp_path, refit_features, validation_word_seen):
    """``text`` (refit_features by default) saves an encoder fitted on training + validation split; with
    ``train.refit_features: false`` the selection run's (training split only). Neither ever sees the test fold."""
    from mosare.inference import Predictor
    from mosare.train.experiment import Fold
    from mosare.train.splits import patient_folds

    cohort = _report_cohort(text_encoder="tfidf-word")
    cfg = ExperimentConfig(classes=("A", "B"), folds=2, models=("text",), scenarios=("complete",), model=SMALL,
                           train=TrainConfig(epochs=1, batch_size=16, device="cpu", refit_features=refit_features))
    train_all, test = patient_folds(cohort.labels, cfg.folds, cfg.seed)[0]
    fold = Fold(cohort, cfg, model_config_for(cohort, cfg.model), 0, train_all)
    assert len(fold.val_idx) >= 2  # min_df = 2: a word in every validation report can enter the vocabulary
    for i in fold.val_idx:
        cohort.rpt_texts[i] += " Quokkaform pattern noted."
    for i in test[:3]:
        cohort.rpt_texts[i] += " Zebrafishoid pattern noted."
    run_experiment(cohort, cfg, tmp_path, progress=False)
    vocab = set(Predictor(tmp_path / "checkpoints" / "text" / "complete-0" / "fold0.safetensors").text_encoder.vocabulary)
    assert ("quokkaform" in vocab) is validation_word_seen and "zebrafishoid" not in vocab and "spiculated" in vocab
    assert not list((tmp_path / "leak_audit").rglob("leak_audit-char.*"))  # a word encoder: word features only
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert runs.refit_features.tolist() == [validation_word_seen] * cfg.folds
    assert runs.weight_decay.tolist() == [build_model("text", SMALL).default_weight_decay] * cfg.folds  # its own
    with pytest.raises(MosareError, match="refit_features must be true, false or null"):
        TrainConfig(refit_features="text")


def test_each_model_trains_with_its_own_weight_decay_unless_the_config_sets_one():
    """AdamW decays the matrices of each model by its own ``default_weight_decay`` (``text``'s was chosen apart,
    bench/sweep.py); ``train.weight_decay`` sets one for every model; biases and norms are never decayed."""
    from mosare.train.loop import _optimiser

    def decays(name: str, tcfg: TrainConfig) -> set[float]:
        opt, _ = _optimiser(build_model(name, SMALL), tcfg, 64, torch.device("cpu"))
        return {g["weight_decay"] for g in opt.param_groups}

    text, snn = build_model("text", SMALL).default_weight_decay, build_model("snn", SMALL).default_weight_decay
    assert text != snn
    assert decays("text", TrainConfig()) == {text, 0.0} and decays("snn", TrainConfig()) == {snn, 0.0}
    assert decays("text", TrainConfig(weight_decay=0.2)) == decays("snn", TrainConfig(weight_decay=0.2)) == {0.2, 0.0}
    with pytest.raises(MosareError, match="weight_decay must be >= 0"):
        TrainConfig(weight_decay=-1.0)


def test_a_report_encoder_saved_before_the_analyzer_option_reads_words():
    from mosare.text.tfidf import TfidfSvdEncoder

    texts = _report_cohort().rpt_texts
    enc = TfidfSvdEncoder.fit(texts, dim=8, seed=0, analyzer="word")
    arrays, meta = enc.to_state()
    del meta["analyzer"]
    old = TfidfSvdEncoder.from_state(arrays, meta)
    assert old.analyzer == "word"
    np.testing.assert_allclose(old.encode_reports(texts[:3]), enc.encode_reports(texts[:3]), rtol=1e-5, atol=1e-5)
    with pytest.raises(MosareError, match="unknown analyzer 'bigrams'"):
        TfidfSvdEncoder.from_state(arrays, {**meta, "analyzer": "bigrams"})


def test_report_encoder_stays_bounded_when_few_training_reports_remain():
    """50 % masking can leave fewer training reports than SVD components: unseen reports must not blow up."""
    from mosare.text.tfidf import Z_CLIP, TfidfSvdEncoder

    cohort = _report_cohort(n=24)
    enc = TfidfSvdEncoder.fit(cohort.rpt_texts[:12], dim=256, seed=0)
    assert np.count_nonzero(np.abs(enc.components).sum(1)) <= 6  # at most half as many components as reports
    unseen = enc.encode_reports(cohort.rpt_texts[12:] + ["an entirely different text about margins and nodes"])
    assert np.isfinite(unseen).all() and np.abs(unseen).max() <= Z_CLIP
