"""Attributions (mosare.explain.attribution): integrated-gradients completeness, occlusion equal to a manual
re-run without the sentence / tile, and faithfulness on a model trained on data with known signal genes."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from helpers import rna_cohort
from mosare.config import ModelConfig, TrainConfig
from mosare.explain import attribution
from mosare.inference import Case, Predictor
from mosare.model.checkpoint import save_checkpoint
from mosare.data.local_tokens import fit_prototypes
from mosare.text.sentences import split_sentences
from mosare.text.tfidf import TfidfSvdEncoder

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and spares a CPU shared with other jobs from oversubscription."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


DEMO_MODEL = REPO_ROOT / "assets" / "demo" / "model" / "mosare.safetensors"
WORDS = ("cells tumour nuclei margin lymph node grade stroma pleomorphic solid cords single file duct lobule "
         "mitoses necrosis invasive carcinoma specimen breast right left quadrant excision biopsy").split()


def _reports(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(" ".join(rng.choice(WORDS, 6)).capitalize() + "." for _ in range(rng.integers(4, 8)))
            for _ in range(n)]


@pytest.fixture(scope="module")
def text_predictor(tmp_path_factory) -> Predictor:
    """An (untrained) RNA + report MoSARe with a fitted TF-IDF → SVD report encoder, loaded as the app does."""
    from mosare.model.mosare import MoSARe

    texts = _reports(24, seed=1)
    enc = TfidfSvdEncoder.fit(texts, dim=8, seed=0)
    sents = enc.encode_sentences([split_sentences(t) for t in texts])
    cfg = ModelConfig(modalities=("rna", "rpt"), rna_dim=12, rpt_dim=8, hidden=16, gene_token_dim=4, n_local=4,
                      rna_heads=4, local_keep=2)
    torch.manual_seed(0)
    model = MoSARe(cfg).eval()
    arrays, meta = enc.to_state()
    extras = {**arrays, "rpt_prototypes": fit_prototypes(sents, 4), "wsi_prototypes": np.zeros((4, 0), np.float32),
              "rna_mean": np.zeros(12, np.float32), "rna_std": np.ones(12, np.float32)}
    path = save_checkpoint(tmp_path_factory.mktemp("txt") / "m", model, "mosare", cfg,
                           meta={"classes": ["KA", "KB"], "genes": [f"G{i}" for i in range(12)], "text_encoder": meta},
                           extras=extras)
    return Predictor(path)


def _log_odds(prob) -> float:
    """log P − log(1 − P) of a probability the Predictor returned (float32: fine away from 0 and 1)."""
    prob = float(prob)
    return float(np.log(prob) - np.log1p(-prob))


def _text_case(predictor: Predictor, seed: int = 5) -> Case:
    case = predictor.make_case(report_text=_reports(1, seed)[0])
    case.rna = np.random.default_rng(seed).normal(size=12).astype(np.float32)
    case.present[1] = True
    return case


def test_sentence_occlusion_equals_a_manual_rerun_without_the_sentence(text_predictor):
    p = text_predictor
    case = _text_case(p)
    assert len(case.sentences) >= 4
    result = attribution.attribute(p, case, modalities=("rpt",))
    got = result.modalities["rpt"]
    assert got.method == "occlusion" and got.attribution.shape == (len(case.sentences),)
    target = result.target

    def rerun(keep: list[int]) -> float:
        sents = [case.sentences[i] for i in keep]
        manual = Case(present=case.present.copy(), rna=case.rna, sentences=sents,
                      sentence_emb=case.sentence_emb[keep],
                      report_emb=p.text_encoder.encode_reports([" ".join(sents)])[0])
        return _log_odds(p.predict(manual).probs[target])

    every = list(range(len(case.sentences)))
    ref = rerun(every)
    assert got.reference == pytest.approx(ref, abs=1e-4)
    assert attribution.probability(got.reference) == pytest.approx(result.prob, abs=1e-3)  # rendering ≈ the report
    for i in every:
        assert got.attribution[i] == pytest.approx(ref - rerun([j for j in every if j != i]), abs=1e-4)
    assert np.abs(got.attribution).max() > 1e-5  # the sentences do move this (random) model
    assert got.attention is not None and got.attention.shape == got.attribution.shape


def test_tile_occlusion_equals_a_manual_rerun_on_demo_model():
    p = Predictor(DEMO_MODEL)
    rng = np.random.default_rng(0)
    n = 40
    case = Case(present=np.array([True, True, False]), rna=rng.normal(size=p.cfg.rna_dim).astype(np.float32),
                patches=rng.normal(size=(n, p.cfg.wsi_dim)).astype(np.float32),
                coords=np.stack([np.arange(n) * 256, np.zeros(n)], 1))
    result = attribution.attribute(p, case, top_tiles=6)
    tiles, genes = result.modalities["wsi"], result.modalities["rna"]
    att = p.predict(case).attention["wsi_patch"]
    np.testing.assert_array_equal(tiles.index, np.argsort(-att, kind="stable")[:6])
    for i, a in zip(tiles.index, tiles.attribution):
        keep = np.delete(np.arange(n), i)
        manual = Case(present=case.present, rna=case.rna, patches=case.patches[keep], coords=case.coords[keep])
        assert a == pytest.approx(tiles.reference - _log_odds(p.predict(manual).probs[result.target]), abs=1e-4)
    assert genes.method == "integrated gradients" and genes.attribution.shape == (p.cfg.rna_dim,)
    assert attribution.probability(genes.reference) == pytest.approx(result.prob, abs=1e-6)
    # the gap is what the attributions miss; this model's top-k routing jumps on the path, so it is not ~0 here
    assert genes.gap == pytest.approx(genes.attribution.sum() - (genes.reference - genes.baseline))


def _train_signal_model(folder, use_moe: bool):
    """A small RNA-only MoSARe trained on a cohort whose genes G0–G2 carry the class signal, and its test fold."""
    from mosare.model.registry import build_model
    from mosare.train.data import fit_fold_features
    from mosare.train.experiment import model_config_for
    from mosare.train.loop import fit
    from mosare.train.splits import patient_folds, train_val_split

    cohort = rna_cohort(n=150, genes=24, seed=3)
    train_all, test = patient_folds(cohort.labels, 3, seed=0)[0]
    tr, va = train_val_split(train_all, cohort.labels, 0.25, seed=0)
    tokens = fit_fold_features(cohort, train_all, 16, seed=0)
    torch.manual_seed(0)
    cfg = model_config_for(cohort, ModelConfig(hidden=16, gene_token_dim=4, use_moe=use_moe))
    model = build_model("mosare", cfg)
    fit(model, cohort, tokens, tr, va, cohort.present,
        TrainConfig(epochs=12, batch_size=16, lr=3e-3, patience=12, align_warmup=2), torch.device("cpu"),
        progress=False)
    path = save_checkpoint(folder / "m", model.eval(), "mosare", cfg,
                           meta={"classes": list(cohort.classes), "genes": cohort.genes}, extras=tokens.extras())
    return Predictor(path), cohort, test


@pytest.fixture(scope="module")
def signal_model(tmp_path_factory):
    return _train_signal_model(tmp_path_factory.mktemp("sig"), use_moe=True)


@pytest.fixture(scope="module")
def smooth_model(tmp_path_factory):
    return _train_signal_model(tmp_path_factory.mktemp("smooth"), use_moe=False)


def test_integrated_gradients_completeness(smooth_model):
    """Σ attributions = L(x) − L(baseline) (L: log-odds), the baseline being every gene at its training mean. On
    a model without top-k routing (no sparse MoE / activation gate) the path is continuous and the gap is
    quadrature error only; with routing L can jump where a routing choice flips, and the reported gap holds
    those jumps."""
    p, cohort, test = smooth_model
    gaps = []
    for i in test[:24]:
        case = Case(present=cohort.present[i].copy(), rna=cohort.rna[i])
        target = int(p.predict(case).probs.argmax())
        attr, fx, f0 = attribution.integrated_gradients(p, case, target)
        assert f0 == pytest.approx(_log_odds(p.predict(replace(case, rna=p.extras["rna_mean"].copy())).probs[target]),
                                   abs=1e-4)
        assert fx == pytest.approx(_log_odds(p.predict(case).probs[target]), abs=1e-4)
        if abs(fx - f0) > 0.2:  # a real span to account for (a relative gap of a tiny span is noise)
            gaps.append(abs(attr.sum() - (fx - f0)) / abs(fx - f0))
    assert len(gaps) >= 12, len(gaps)
    assert np.median(gaps) < 0.02 and max(gaps) < 0.08, np.round(gaps, 4)


def _beats_random(p: Predictor, case: Case, target: int, order: np.ndarray, k: int, rng) -> bool:
    """Zeroing the top-k of ``order`` lowers the log-odds of target more than k random genes do (mean over 10
    draws)."""
    draws = [rng.choice(len(order), k, replace=False) for _ in range(10)]
    lo = attribution.rna_variant_log_odds(p, case, [[], order[:k], *draws], target)
    return lo[0] - lo[1] > np.mean(lo[0] - lo[2:])


def test_zeroing_top_ig_genes_beats_random_genes_and_a_random_attribution_does_not(signal_model):
    p, cohort, test = signal_model
    rng = np.random.default_rng(0)
    k, ig_wins, random_wins, top3 = 3, [], [], []
    for i in test:
        case = Case(present=cohort.present[i].copy(), rna=cohort.rna[i])
        result = attribution.attribute(p, case, modalities=("rna",))
        order = attribution.top_k(result.modalities["rna"].attribution, p.cfg.rna_dim)
        top3.append(set(order[:3].tolist()))
        ig_wins.append(_beats_random(p, case, result.target, order, k, rng))
        random_wins.append(_beats_random(p, case, result.target, rng.permutation(p.cfg.rna_dim), k, rng))
    assert np.mean(ig_wins) >= 0.8, np.mean(ig_wins)
    assert np.mean(random_wins) < 0.8, np.mean(random_wins)  # the check has teeth: chance does not pass it
    # and the top 3 attributed genes hold one of the planted signal genes G0–G2 in most cases
    assert np.mean([bool(s & {0, 1, 2}) for s in top3]) >= 0.8


def test_signed_highlight_is_escaped_and_diverging():
    from mosare.explain.report import AWAY_RGB, TOWARD_RGB, signed_highlight_html

    out = signed_highlight_html(["<b>up</b>", "down & out", "none", "skip"], np.array([0.2, -0.1, 0.0, np.nan]), 'A"B')
    assert "<b>" not in out and "&lt;b&gt;up&lt;/b&gt;" in out and "down &amp; out" in out
    assert out.startswith('<div class="mosare-attribution">') and "mosare-report" not in out
    assert f"rgba({','.join(map(str, TOWARD_RGB))},0.850)" in out  # the strongest score: full alpha
    assert f"rgba({','.join(map(str, AWAY_RGB))},0.450)" in out  # half as strong, the other way
    assert out.count("mosare-toward") == 1 and 'title="Δ log-odds(A&quot;B) = +0.2"' in out
    np.testing.assert_allclose(attribution.signed01(np.array([0.2, -0.1, 0.0, np.nan])), [1.0, 0.25, 0.5, np.nan])
