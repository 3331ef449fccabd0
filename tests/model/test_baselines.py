"""The Table 1 comparison models: shapes, probabilities, gradients, zero-imputation and applicability."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch
from helpers import random_batch

from mosare import MODALITIES
from mosare.config import ModelConfig
from mosare.errors import MosareError
from mosare.model.base import SubtypingModel
from mosare.model.baselines import BASELINES, bag_modality, not_applicable_reason
from mosare.types import Batch

B = 4
COHORTS = [c for r in (1, 2, 3) for c in itertools.combinations(MODALITIES, r)]
CASES = [
    (name, cohort, k)
    for name in BASELINES
    for cohort in COHORTS
    if not_applicable_reason(name, cohort) is None
    for k in (2, 3)
]
IDS = [f"{n}-{'+'.join(c)}-K{k}" for n, c, k in CASES]


def _cfg(cohort: tuple[str, ...], k: int) -> ModelConfig:
    return ModelConfig(modalities=cohort, n_classes=k, wsi_dim=8, rna_dim=20, rpt_dim=12, hidden=16, n_local=4, local_keep=2)


def _mixed_present(cohort: tuple[str, ...]) -> torch.Tensor:
    """Case 0 has everything; cases 1, 2, 3 lack rna, wsi, rpt respectively (where that leaves something)."""
    have = torch.tensor([m in cohort for m in MODALITIES])
    rows = [have.clone()]
    for drop in ("rna", "wsi", "rpt"):
        row = have.clone()
        row[MODALITIES.index(drop)] = False
        rows.append(row if row.any() else have.clone())
    return torch.stack(rows)


def _build(name: str, cohort: tuple[str, ...], k: int, seed: int = 0) -> SubtypingModel:
    torch.manual_seed(seed)
    return BASELINES[name](_cfg(cohort, k))


def _check_output(model: SubtypingModel, batch: Batch, k: int) -> torch.Tensor:
    out = model(batch)
    assert out.logits.shape == (B, k)
    assert out.probs.shape == (B, k)
    assert torch.isfinite(out.logits).all()
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(B))
    for key, attn in out.attention.items():
        assert torch.isfinite(attn).all(), key
    return out.logits


def _check_grads(model: SubtypingModel, batch: Batch) -> None:
    model.zero_grad(set_to_none=True)
    out = model(batch)
    loss, logs = model.loss(batch, out, epoch=0)
    assert torch.isfinite(loss) and "cls" in logs
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad, f"non-finite gradients: {bad}"


def test_registry() -> None:
    assert set(BASELINES) == {"snn", "abmil", "text", "gscnn", "bp", "mcat", "porpoise"}
    for name, cls in BASELINES.items():
        assert issubclass(cls, SubtypingModel) and cls.name == name
        assert set(cls.requires) <= set(cls.uses) <= set(MODALITIES)


def test_not_applicable_reason() -> None:
    assert isinstance(not_applicable_reason("snn", ("wsi", "rpt")), str)
    assert "rna" in not_applicable_reason("snn", ("wsi", "rpt"))  # type: ignore[operator]
    assert isinstance(not_applicable_reason("abmil", ("rna", "rpt")), str)
    assert "wsi" in not_applicable_reason("abmil", ("rna", "rpt"))  # type: ignore[operator]
    assert not_applicable_reason("bp", ("rna", "rpt")) is None
    assert not_applicable_reason("bp", ("wsi", "rna", "rpt")) is None
    assert isinstance(not_applicable_reason("mcat", ("rna",)), str)
    assert isinstance(not_applicable_reason("gscnn", ("wsi", "rpt")), str)
    assert isinstance(not_applicable_reason("text", ("wsi", "rna")), str)
    assert not_applicable_reason("text", ("rpt",)) is None
    with pytest.raises(MosareError):
        not_applicable_reason("nope", MODALITIES)


def test_building_for_an_unsuited_cohort_fails() -> None:
    with pytest.raises(MosareError, match="needs"):
        BASELINES["abmil"](_cfg(("rna", "rpt"), 2))
    with pytest.raises(MosareError, match="needs"):
        BASELINES["porpoise"](_cfg(("rna",), 2))


def test_bag_modality_and_uses() -> None:
    assert bag_modality(MODALITIES) == "wsi"
    assert bag_modality(("rna", "rpt")) == "rpt"
    assert bag_modality(("rna",)) is None
    for name in ("bp", "mcat", "porpoise"):
        assert BASELINES[name](_cfg(MODALITIES, 2)).uses == ("wsi", "rna")
        assert BASELINES[name](_cfg(("rna", "rpt"), 2)).uses == ("rna", "rpt")
    assert BASELINES["gscnn"](_cfg(MODALITIES, 2)).uses == MODALITIES
    assert BASELINES["gscnn"](_cfg(("rna", "rpt"), 2)).uses == ("rna", "rpt")


@pytest.mark.parametrize(("name", "cohort", "k"), CASES, ids=IDS)
def test_forward_and_gradients_complete(name: str, cohort: tuple[str, ...], k: int) -> None:
    model = _build(name, cohort, k)
    cfg = model.cfg
    batch = random_batch(cfg, B, seed=1)
    model.train()
    _check_output(model, batch, k)
    _check_grads(model, batch)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, model(batch).logits)  # deterministic in eval


@pytest.mark.parametrize(("name", "cohort", "k"), CASES, ids=IDS)
def test_forward_and_gradients_missing(name: str, cohort: tuple[str, ...], k: int) -> None:
    """Cases lacking a modality (one with a fully padded bag): finite outputs, every parameter still
    gets a finite gradient since each modality is present in some case."""
    model = _build(name, cohort, k)
    batch = random_batch(model.cfg, B, present=_mixed_present(cohort), seed=2)
    model.train()
    _check_output(model, batch, k)
    _check_grads(model, batch)


@pytest.mark.parametrize(("name", "cohort", "k"), CASES, ids=IDS)
def test_attention_maps(name: str, cohort: tuple[str, ...], k: int) -> None:
    model = _build(name, cohort, k).eval()
    present = _mixed_present(cohort)
    batch = random_batch(model.cfg, B, present=present, seed=3)
    with torch.no_grad():
        att = model(batch).attention
    n_w, n_s = batch.wsi_bag.shape[1], batch.rpt_bag.shape[1]
    expected = {"abmil": {"wsi_patch"}, "text": {"rpt_sentence"}, "snn": set(), "gscnn": set(), "mcat": {"coattn"}}
    if name in ("bp", "porpoise"):
        expected[name] = {"wsi_patch" if "wsi" in cohort else "rpt_sentence"}
    assert set(att) == expected[name]
    for key, a in att.items():
        m = "rpt" if key == "rpt_sentence" or (key == "coattn" and "wsi" not in cohort) else "wsi"
        n = n_w if m == "wsi" else n_s
        shape = (B, 16, n) if key == "coattn" else (B, n)
        assert a.shape == shape, key
        mask = batch.wsi_bag_mask if m == "wsi" else batch.rpt_bag_mask
        mask = mask[:, None, :] if key == "coattn" else mask
        assert (a.masked_select(~mask.expand_as(a)) == 0).all(), "attention on padding"
        absent = ~present[:, MODALITIES.index(m)]
        assert (a[absent] == 0).all(), "attention for a case without the modality"
        if key != "coattn":
            sums = a.sum(-1)[~absent]
            torch.testing.assert_close(sums, torch.ones_like(sums))


@pytest.mark.parametrize(("name", "cohort", "k"), CASES, ids=IDS)
def test_absent_modality_inputs_are_ignored(name: str, cohort: tuple[str, ...], k: int) -> None:
    """Zero-imputation: whatever sits in the tensors of a case's missing modality, its output is unchanged."""
    model = _build(name, cohort, k).eval()
    present = _mixed_present(cohort)
    batch = random_batch(model.cfg, B, present=present, seed=4)
    g = torch.Generator().manual_seed(5)
    noisy = {}
    for field in ("wsi_bag", "wsi_local", "rna", "rpt_bag", "rpt_global", "rpt_local"):
        t = getattr(batch, field)
        m = MODALITIES.index(field.split("_")[0])
        absent = (~present[:, m]).view(-1, *([1] * (t.dim() - 1)))
        noisy[field] = torch.where(absent, torch.randn(t.shape, generator=g) * 100, t)
    noisy["wsi_bag_mask"] = batch.wsi_bag_mask | ~present[:, 0:1]
    noisy["rpt_bag_mask"] = batch.rpt_bag_mask | ~present[:, 2:3]
    corrupted = replace(batch, **noisy)
    with torch.no_grad():
        torch.testing.assert_close(model(corrupted).logits, model(batch).logits)


@pytest.mark.parametrize(("name", "cohort", "k"), CASES, ids=IDS)
def test_empty_bags_are_finite(name: str, cohort: tuple[str, ...], k: int) -> None:
    """A case marked present whose bag is fully padded, and a batch whose bags have no instance slot at all."""
    model = _build(name, cohort, k)
    batch = random_batch(model.cfg, B, seed=6)
    padded = replace(
        batch,
        wsi_bag_mask=batch.wsi_bag_mask & (torch.arange(B) != 1)[:, None],
        rpt_bag_mask=batch.rpt_bag_mask & (torch.arange(B) != 1)[:, None],
    )
    model.train()
    _check_output(model, padded, k)
    _check_grads(model, padded)
    slotless = replace(
        batch,
        wsi_bag=batch.wsi_bag[:, :0],
        wsi_bag_mask=batch.wsi_bag_mask[:, :0],
        rpt_bag=batch.rpt_bag[:, :0],
        rpt_bag_mask=batch.rpt_bag_mask[:, :0],
    )
    model.eval()
    with torch.no_grad():
        _check_output(model, slotless, k)


def test_random_batch_helper() -> None:
    cfg = _cfg(("rna", "rpt"), 3)
    present = torch.tensor([[True, True, True], [True, False, True], [False, True, False], [True, True, True]])
    batch = random_batch(cfg, B, present=present, seed=0)
    assert batch.present.tolist() == [[False, True, True], [False, False, True], [False, True, False], [False, True, True]]
    assert batch.wsi_bag.shape == (B, 0, cfg.wsi_dim) and batch.wsi_bag_mask.shape == (B, 0)
    assert batch.wsi_local.shape == (B, 0, cfg.wsi_dim)
    assert batch.rna.shape == (B, cfg.rna_dim) and (batch.rna[1] == 0).all()
    assert batch.rpt_bag.shape[0] == B and 1 <= batch.rpt_bag.shape[1] <= 7 and batch.rpt_bag.shape[2] == cfg.rpt_dim
    assert not batch.rpt_bag_mask[2].any() and batch.rpt_bag_mask[[0, 1, 3]].any(-1).all()
    assert batch.rpt_local.shape == (B, cfg.n_local, cfg.rpt_dim) and batch.rpt_global.shape == (B, cfg.rpt_dim)
    assert batch.labels.dtype == torch.long and ((batch.labels >= 0) & (batch.labels < 3)).all()
    full = random_batch(_cfg(MODALITIES, 2), B, seed=0)
    assert full.present.all() and 1 <= full.wsi_bag.shape[1] <= 10
    assert (full.wsi_bag[~full.wsi_bag_mask] == 0).all()
    only_wsi = random_batch(_cfg(("wsi",), 2), B)
    assert only_wsi.rna.shape == (B, 0) and only_wsi.rpt_bag.shape == (B, 0, 12) and only_wsi.rpt_global.shape == (B, 0)


def test_text_linear_path_adds_a_logistic_regression_trained_by_its_own_cross_entropy():
    """``text_linear_path`` (off by default): logits = network + W x_report, zero for a case without a report; with
    ``linear_detach`` only the path's own cross-entropy (cases with a report) reaches W."""
    cfg = replace(_cfg(("rna", "rpt"), 2), text_linear_path=True, linear_l2=0.0, linear_aux=1.0)
    assert BASELINES["text"](_cfg(("rpt",), 2)).linear is None  # the default: no path
    torch.manual_seed(0)
    model = BASELINES["text"](cfg).eval()
    batch = random_batch(cfg, B, present=_mixed_present(("rna", "rpt")))  # case 3 lacks its report
    out = model(batch)
    here = batch.present[:, MODALITIES.index("rpt")]
    by_hand = (batch.rpt_global @ model.linear[1].weight.T + model.linear[1].bias) * here[:, None]
    torch.testing.assert_close(out.aux, by_hand)
    assert torch.all(out.aux[~here] == 0)
    fused = torch.nn.functional.cross_entropy(out.logits, batch.labels)
    assert torch.autograd.grad(fused, model.linear[1].weight, allow_unused=True)[0] is None
    total, parts = model.loss(batch, out, epoch=0)
    uni = torch.nn.functional.cross_entropy(by_hand[here], batch.labels[here])
    assert parts["uni"] == pytest.approx(float(uni.detach()), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float((fused + uni).detach()), rel=1e-5)
    with pytest.raises(MosareError, match="linear_detach needs"):  # nothing would train the path
        replace(cfg, linear_path=False, linear_aux=0.0)
