"""Folds, masking scenarios, honest model selection and the experiment runner on a small RNA cohort."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from mosare.data.cohort import Cohort
from mosare.config import ExperimentConfig, ModelConfig, TrainConfig
from helpers import rna_cohort
from mosare.train.data import fit_fold_features
from mosare.train.experiment import model_config_for, run_experiment
from mosare.train.loop import fit, predict_probs
from mosare.train.metrics import auc
from mosare.train.splits import make_scenario, mask_modalities, patient_folds, train_val_split


def test_folds_are_patient_level_and_stratified():
    y = np.array([0] * 40 + [1] * 20)
    folds = patient_folds(y, 5, seed=0)
    tests = np.concatenate([te for _, te in folds])
    assert sorted(tests.tolist()) == list(range(60))  # every patient tested exactly once
    for tr, te in folds:
        assert not set(tr) & set(te)
        assert np.bincount(y[te]).tolist() == [8, 4]
        inner, val = train_val_split(tr, y, 0.2, seed=0)
        assert not set(val) & set(te) and not set(inner) & set(val)
        assert set(inner) | set(val) == set(tr)


def test_masking_never_removes_all_of_a_case():
    rng = np.random.default_rng(0)
    present = rng.random((500, 3)) < 0.8
    present[~present.any(1), 0] = True
    masked = mask_modalities(present, 0.5, rng)
    assert (masked <= present).all()  # only ever removes
    assert masked.any(1).all()
    assert 0.35 < 1 - masked.sum() / present.sum() < 0.5  # ≈ rate minus the give-backs


def test_scenarios():
    present = np.ones((100, 3), bool)
    y = np.arange(100) % 2
    tr, va, te = np.arange(0, 60), np.arange(60, 80), np.arange(80, 100)
    mm = make_scenario("masked-masked", 0.3, present, y, tr, va, te, seed=1)
    mu = make_scenario("masked-unmasked", 0.3, present, y, tr, va, te, seed=1)
    ru = make_scenario("removed-unmasked", 0.3, present, y, tr, va, te, seed=1)
    assert (mm.present == mu.present).all() and not mm.test_present.all() and mu.test_present.all()
    assert ru.test_present.all() and ru.present[ru.train_idx].all() and len(ru.train_idx) < len(tr)
    na = make_scenario("removed-unmasked", 0.99, present, y, tr, va, te, seed=1)
    assert na.not_applicable


def _fit_fold0(cohort: Cohort, name: str, folds):
    from mosare.model.registry import build_model

    train_all, test_idx = folds[0]
    tr, va = train_val_split(train_all, cohort.labels, 0.25, seed=0)
    tokens = fit_fold_features(cohort, train_all, 16, seed=0)
    torch.manual_seed(0)
    model = build_model(name, model_config_for(cohort, ModelConfig(hidden=16, gene_token_dim=4)))
    cfg = TrainConfig(epochs=8, batch_size=16, lr=1e-3, patience=8, align_warmup=2, selection="best")
    res = fit(model, cohort, tokens, tr, va, cohort.present, cfg, torch.device("cpu"), progress=False)
    probs = predict_probs(model, cohort, tokens, test_idx, cohort.present, torch.device("cpu"))
    return res, model.state_dict(), probs, test_idx


@pytest.mark.parametrize("name", ["mosare", "snn"])
def test_test_fold_labels_do_not_influence_model_selection(name):
    cohort = rna_cohort()
    folds = patient_folds(cohort.labels, 3, seed=0)  # fold assignment is fixed before labels are tampered with
    res1, state1, probs1, test_idx = _fit_fold0(cohort, name, folds)
    flipped = copy.copy(cohort)
    flipped.labels = cohort.labels.copy()
    flipped.labels[test_idx] = 1 - flipped.labels[test_idx]  # every test-fold label wrong
    res2, state2, probs2, _ = _fit_fold0(flipped, name, folds)
    assert res1.best_epoch == res2.best_epoch
    assert [h["val_auc"] for h in res1.history] == [h["val_auc"] for h in res2.history]
    assert all(torch.equal(state1[k], state2[k]) for k in state1)
    np.testing.assert_array_equal(probs1, probs2)


def test_selection_last_runs_the_whole_schedule_and_keeps_its_end():
    """``selection="last"`` ignores patience and validation loss: every epoch runs, the final weights are kept,
    and ``on_epoch`` sees each epoch's validation probabilities."""
    from mosare.model.registry import build_model

    cohort = rna_cohort()
    train_all, _ = patient_folds(cohort.labels, 3, seed=0)[0]
    tr, va = train_val_split(train_all, cohort.labels, 0.25, seed=0)
    tokens = fit_fold_features(cohort, train_all, 16, seed=0)
    model = build_model("snn", model_config_for(cohort, ModelConfig(hidden=16)))
    seen: list[tuple[int, tuple]] = []
    cfg = TrainConfig(epochs=5, batch_size=16, lr=1e-3, patience=1, selection="last")
    res = fit(model, cohort, tokens, tr, va, cohort.present, cfg, torch.device("cpu"), progress=False,
              on_epoch=lambda e, p: seen.append((e, p.shape)))
    assert res.epochs_run == 5 and res.best_epoch == 4
    assert seen == [(e, (len(va), 2)) for e in range(5)]
    last = predict_probs(model, cohort, tokens, va, cohort.present, torch.device("cpu"))
    np.testing.assert_allclose(res.history[-1]["val_auc"], auc(cohort.labels[va], last))


def test_experiment_selection_ignores_test_labels_and_writes_outputs(tmp_path, monkeypatch):
    """The whole runner: flipping fold 0's test labels must not change fold 0's selected epochs."""
    import mosare.train.experiment as experiment

    cohort = rna_cohort(n=60)
    folds = patient_folds(cohort.labels, 3, seed=0)
    # stratification legitimately reads every label; pin the fold assignment so only selection is tested
    monkeypatch.setattr(experiment, "patient_folds", lambda *a, **k: folds)
    cfg = ExperimentConfig(classes=("A", "B"), folds=3, models=("mosare", "snn", "abmil"),
                           scenarios=("complete", "masked-unmasked"), mask_rates=(0.3,),
                           model=ModelConfig(hidden=16, gene_token_dim=4),
                           train=TrainConfig(epochs=4, batch_size=16, lr=1e-3, align_warmup=1, device="cpu",
                                             selection="best"))
    m1 = run_experiment(cohort, cfg, tmp_path / "a", progress=False)
    test0 = folds[0][1]
    flipped = copy.copy(cohort)
    flipped.labels = cohort.labels.copy()
    flipped.labels[test0] = 1 - flipped.labels[test0]
    run_experiment(flipped, cfg, tmp_path / "b", progress=False)
    r1, r2 = (pd.read_csv(tmp_path / d / "runs.csv") for d in "ab")
    sel = ["model", "scenario", "mask_rate", "best_epoch", "val_auc"]
    pd.testing.assert_frame_equal(r1[r1.fold == 0][sel], r2[r2.fold == 0][sel])

    metrics = pd.read_csv(tmp_path / "a" / "metrics.csv")
    assert list(metrics.columns) == ["model", "scenario", "mask_rate", "fold", "auc", "f1", "acc"]
    assert len(metrics) == 3 * 3 * 2
    assert metrics[metrics.model == "abmil"].auc.isna().all()  # no slides: not applicable, not zeros
    ok = metrics[metrics.model != "abmil"]
    assert ok.auc.between(0, 100).all() and (ok[ok.scenario == "complete"].mask_rate == 0).all()
    summary = (tmp_path / "a" / "summary.md").read_text()
    assert "abmil | NA" in summary and "mosare" in summary
    ckpts = sorted((tmp_path / "a" / "checkpoints").rglob("*.safetensors"))
    assert len(ckpts) == 2 * 2 * 3 and all(p.with_suffix(".json").exists() for p in ckpts)
    assert len(m1) == len(metrics)
    # every test case of every applicable run, with calibrated probabilities and a conformal set
    preds = pd.read_csv(tmp_path / "a" / "predictions.csv")
    assert len(preds) == 2 * 2 * len(cohort)  # (mosare, snn) × 2 scenarios × each patient tested once
    assert set(preds.prediction_set) <= {"A", "B", "A or B"}
    assert np.allclose(preds.cal_A + preds.cal_B, 1, atol=1e-4)
    runs = r1[r1.status == "ok"]
    assert runs.refit.all() and (runs.temperature > 0).all() and runs.conformal_q.between(0, 1).all()


def test_checkpoint_round_trip_and_refusals(tmp_path):
    from mosare.errors import CheckpointError
    from mosare.model.checkpoint import load_checkpoint, save_checkpoint
    from mosare.model.mosare import MoSARe

    cfg = ModelConfig(modalities=("rna",), rna_dim=20, hidden=16, gene_token_dim=4)
    model = MoSARe(cfg).eval()
    path = save_checkpoint(tmp_path / "m", model, "mosare", cfg, meta={"classes": ["A", "B"]},
                           extras={"rpt_prototypes": np.zeros((16, 0), np.float32)})
    loaded, meta, extras = load_checkpoint(path)
    assert meta["classes"] == ["A", "B"] and extras["rpt_prototypes"].shape == (16, 0)
    x = torch.randn(3, 20)
    from helpers import random_batch

    b = random_batch(cfg, 3)
    b.rna = x
    assert torch.allclose(model(b).probs, loaded(b).probs)

    (tmp_path / "evil.pt").write_bytes(b"not even opened")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "evil.pt")
    other = replace(cfg, hidden=32)
    save_checkpoint(tmp_path / "other", MoSARe(other), "mosare", cfg, meta={"classes": ["A", "B"]})
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "other.safetensors")
    bad = MoSARe(cfg)
    with torch.no_grad():
        bad.head.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan", bad, "mosare", cfg, meta={"classes": ["A", "B"]})
    with pytest.raises(CheckpointError, match="NaN"):
        load_checkpoint(tmp_path / "nan.safetensors")


@pytest.mark.slow  # ~12 s; the Ray grid test (tests/app/test_ray.py) checks the same against the serial run
def test_parallel_workers_match_serial_run(tmp_path):
    cohort = rna_cohort(n=48)
    cfg = ExperimentConfig(classes=("A", "B"), folds=2, models=("mosare", "snn"),
                           scenarios=("complete", "masked-masked"), mask_rates=(0.3,),
                           model=ModelConfig(hidden=16, gene_token_dim=4),
                           train=TrainConfig(epochs=2, batch_size=16, lr=1e-3, align_warmup=1, device="cpu"))
    serial = run_experiment(cohort, cfg, tmp_path / "serial", progress=False)
    parallel = run_experiment(cohort, cfg, tmp_path / "parallel", workers=2, progress=False)
    pd.testing.assert_frame_equal(serial, parallel, atol=1e-3)
