"""MoSARe forward/backward over every non-empty modality subset, gradients, reconstruction, ablations."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest
import torch

from helpers import random_batch
from mosare import MODALITIES
from mosare.config import ModelConfig
from mosare.errors import MosareError
from mosare.model.mosare import MoSARe

CFG = ModelConfig(wsi_dim=12, rna_dim=24, rpt_dim=10, hidden=32, n_classes=3, gene_token_dim=8)
SUBSETS = [s for s in itertools.product([False, True], repeat=3) if any(s)]


def _model(cfg: ModelConfig = CFG) -> MoSARe:
    torch.manual_seed(0)
    model = MoSARe(cfg)
    model.align_from_epoch = 0  # exercise every loss term
    return model


@pytest.mark.parametrize("subset", SUBSETS, ids=lambda s: "+".join(m for m, p in zip(MODALITIES, s) if p))
def test_shapes_and_finite_losses_for_every_subset(subset):
    model = _model()
    b = 8
    batch = random_batch(CFG, b, present=torch.tensor([subset] * b), seed=1)
    out = model(batch)
    assert out.logits.shape == (b, 3) and out.probs.shape == (b, 3)
    assert torch.allclose(out.probs.sum(-1), torch.ones(b))
    assert out.aux.x_out.shape == (b, 2 * 3 * CFG.hidden)  # default fusion: the 2M final tokens concatenated
    loss, parts = model.loss(batch, out, epoch=5)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    att = out.attention
    assert att["local_cma"].shape == (b, 3, CFG.n_local)
    assert att["reconstructed"].tolist() == [[not p for p in subset]] * b
    # a missing modality neither gives nor receives cross-modal attention
    for m, p in enumerate(subset):
        if not p:
            assert att["local_pair"][:, m].abs().sum() == 0 and att["local_pair"][:, :, m].abs().sum() == 0
    loss.backward()


def test_single_modality_cohorts_and_two_modality_cohort():
    for mods in [("rna",), ("rpt",), ("wsi",), ("rna", "rpt")]:
        cfg = replace(CFG, modalities=mods)
        model = _model(cfg)
        batch = random_batch(cfg, 6, seed=2)
        out = model(batch)
        loss, _ = model.loss(batch, out, epoch=5)
        assert out.probs.shape == (6, 3) and torch.isfinite(loss)


def test_every_parameter_gets_a_gradient_including_the_activation_gate():
    model = _model()
    b = 32
    present = torch.ones(b, 3, dtype=torch.bool)
    present[::4, 0] = False
    present[1::4, 1] = False
    present[2::4, 2] = False  # every modality missing for some cases → reconstruction path used
    batch = random_batch(CFG, b, present=present, seed=3)
    out = model(batch)
    loss, _ = model.loss(batch, out, epoch=5)
    loss.backward()
    # a single-head softmax pool is invariant to its score bias: that gradient is zero analytically
    no_grad = [n for n, p in model.named_parameters() if (p.grad is None or p.grad.abs().sum() == 0)
               and n != "encoders.wsi.abmil.pool.score.bias"]
    assert no_grad == []
    for m in CFG.modalities:
        assert model.act_gate[m].score.weight.grad.abs().sum() > 0


def test_activation_gate_learns_to_move():
    """With a hard top-k and no straight-through gradient the gate's weights would never change."""
    model = _model()
    before = model.act_gate["rna"].score.weight.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(3):
        batch = random_batch(CFG, 16, seed=10 + step)
        out = model(batch)
        loss, _ = model.loss(batch, out, epoch=5)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.allclose(before, model.act_gate["rna"].score.weight)


def test_reconstruction_fills_only_missing_modalities():
    model = _model().eval()
    b = 6
    present = torch.tensor([[1, 1, 1], [0, 1, 1], [1, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.bool)
    out = model(random_batch(CFG, b, present=present, seed=4))
    a = out.aux
    for level in ("g", "l"):
        final, observed, recon = (getattr(a, f"{k}_{level}") for k in ("final", "cma", "rec"))
        for i in range(b):
            for m in range(3):
                expected = observed[i, m] if present[i, m] else recon[i, m]
                assert torch.equal(final[i, m], expected)
        # a missing modality's observed representation is exactly zero, so only the reconstruction carries it
        assert observed[~present].abs().sum() == 0


def test_reconstruction_loss_uses_present_modalities_only():
    from mosare.model.reconstruction import DecoupledReconstruction

    observed = torch.zeros(2, 3, 4)
    recon = torch.ones(2, 3, 4)
    present = torch.tensor([[True, False, False], [False, False, False]])
    recon[0, 1:] = 100.0  # huge error on missing modalities must not count
    assert DecoupledReconstruction.loss(observed, recon, present).item() == pytest.approx(1.0)


def test_output_of_case_does_not_depend_on_its_missing_modality_inputs():
    model = _model().eval()
    present = torch.tensor([[True, False, True]] * 4)
    b1 = random_batch(CFG, 4, present=present, seed=5)
    b2 = random_batch(CFG, 4, present=present, seed=5)
    b2.rna = torch.randn_like(b2.rna) * 100  # garbage in the missing modality's slot
    b2 = b2.with_present(present)
    assert torch.allclose(model(b1).probs, model(b2).probs)


@pytest.mark.parametrize("switch", ["use_cma", "use_moe", "use_align", "use_recon"])
def test_ablation_switches(switch):
    cfg = replace(CFG, **{switch: False})
    model = _model(cfg)
    present = torch.ones(8, 3, dtype=torch.bool)
    present[0, 1] = False
    batch = random_batch(cfg, 8, present=present, seed=6)
    out = model(batch)
    loss, parts = model.loss(batch, out, epoch=5)
    assert torch.isfinite(loss)
    if switch == "use_align":
        assert parts["symcl"] == 0 and parts["mcl"] == 0
    if switch == "use_recon":
        assert parts["rec"] == 0 and not out.attention["reconstructed"].any()
    if switch == "use_moe":
        assert "local_experts" not in out.attention and out.attention["local_keep"].min() == 1
    if switch == "use_cma":
        assert "local_pair" not in out.attention


def test_prototype_memory_moves_towards_class_features():
    from mosare.model.losses import PrototypeMemory

    mem = PrototypeMemory(n_classes=2, n_prototypes=2, dim=4, momentum=0.5)
    x = torch.tensor([[1.0, 0, 0, 0]] * 4 + [[0, 1.0, 0, 0]] * 4)
    y = torch.tensor([0] * 4 + [1] * 4)
    for _ in range(20):
        mem.update(x, y)
    assert mem.means[0, :, 0].min() > 0.9 and mem.means[1, :, 1].min() > 0.9
    assert mem.loss(x, y, temperature=0.1) < mem.loss(x, 1 - y, temperature=0.1)


@pytest.mark.parametrize("name", ["mosare-no-moe", "mosare-no-cma", "mosare-no-align", "mosare-no-recon"])
def test_ablations_switch_their_component_off_and_round_trip(name, tmp_path):
    from mosare.model.checkpoint import load_checkpoint, save_checkpoint
    from mosare.model.registry import build_model

    cfg = ModelConfig(hidden=16, wsi_dim=8, rna_dim=12, rpt_dim=6)
    model = build_model(name, cfg)
    flag = "use_" + name.removeprefix("mosare-no-")
    assert getattr(model.cfg, flag) is False and getattr(cfg, flag) is True
    out = model(random_batch(cfg, 3))
    assert torch.isfinite(out.logits).all()
    if flag == "use_moe":
        assert "final_experts" not in out.attention
    if flag == "use_cma":
        assert "local_cma" not in out.attention
    path = save_checkpoint(tmp_path / "m", model, name, cfg, meta={"classes": ["A", "B"]})
    loaded, meta, _ = load_checkpoint(path)
    assert type(loaded).name == name and getattr(loaded.cfg, flag) is False


def test_predict_many_equals_separate_predictions(tmp_path):
    """The dashboard scores a case and its leave-one-modality-out variants in one batch: same numbers."""
    import numpy as np

    from mosare.app.demo import MODEL_PATH
    from mosare.inference import Case, Predictor

    pred = Predictor(MODEL_PATH)
    rng = np.random.default_rng(0)
    cfg = pred.cfg
    case = Case(present=np.ones(3, bool), rna=rng.normal(size=cfg.rna_dim).astype(np.float32),
                patches=rng.normal(size=(40, cfg.wsi_dim)).astype(np.float32), coords=np.zeros((40, 2), np.int64),
                sentences=[f"s{i}" for i in range(6)], sentence_emb=rng.normal(size=(6, cfg.rpt_dim)).astype(np.float32),
                report_emb=rng.normal(size=cfg.rpt_dim).astype(np.float32))
    masks = [np.array(m, bool) for m in itertools.product([True, False], repeat=3) if any(m)]
    together = pred.predict_many(case, masks)
    for m, p in zip(masks, together):
        alone = pred.predict(case, m)
        assert np.allclose(p.probs, alone.probs, atol=1e-5)
        assert (p.present == m).all() and np.allclose(p.attention["local_keep"], alone.attention["local_keep"])


def test_modality_dropout_hides_modalities_while_training_only_and_never_all():
    model = _model(replace(CFG, modality_dropout=0.5))
    batch = random_batch(model.cfg, 64, present=torch.ones(64, 3, dtype=torch.bool))
    torch.manual_seed(1)
    hidden = model.hide_modalities(batch)
    assert hidden.present.any(1).all()  # never every modality of a case
    assert 0.2 < 1 - hidden.present.float().mean() < 0.5  # about half hidden, minus the restored cases
    dropped = ~hidden.present[:, 1]
    assert torch.all(hidden.rna[dropped] == 0) and torch.equal(hidden.rna[~dropped], batch.rna[~dropped])
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch).probs, model(batch).probs)  # evaluation never hides anything
        assert model(batch).attention["reconstructed"].sum() == 0


def test_unimodal_linear_loss_is_each_present_modalitys_own_cross_entropy():
    model = _model(replace(CFG, linear_aux=2.0))
    present = torch.tensor([[True, True, False], [False, True, True], [True, False, True], [False, False, True]])
    batch = random_batch(model.cfg, 4, present=present)
    model.eval()  # no dropout: the linear logits are deterministic
    out = model(batch)
    lin = out.aux.linear  # [B, M, K]
    assert torch.all(lin[~present] == 0) and torch.allclose(out.logits, model.forward_head(out.aux.x_out) + lin.sum(1))
    by_hand = torch.stack([torch.nn.functional.cross_entropy(lin[present[:, i], i], batch.labels[present[:, i]])
                           for i in range(3)]).mean()
    total, parts = model.loss(batch, out, epoch=0)
    assert parts["uni"] == pytest.approx(float(by_hand.detach()), rel=1e-5)
    total_off, parts_off = _model(replace(CFG, linear_aux=0.0, linear_detach=False)).eval().loss(batch, out, epoch=0)
    assert parts_off["uni"] == 0
    assert float((total - total_off).detach()) == pytest.approx(2.0 * float(by_hand.detach()), rel=1e-4)


def test_detached_linear_path_is_trained_by_its_own_cross_entropy_only():
    """``linear_detach``: the fused logits still add the linear logits, but only the unimodal term trains them."""
    present = torch.tensor([[True, True, False], [False, True, True], [True, False, True], [True, True, True]])
    for detach in (False, True):
        model = _model(replace(CFG, linear_aux=1.0, linear_detach=detach, linear_l2=0.0)).eval()
        batch = random_batch(model.cfg, 4, present=present)
        out = model(batch)
        torch.testing.assert_close(out.logits, model.forward_head(out.aux.x_out) + out.aux.linear.sum(1))
        fused = torch.nn.functional.cross_entropy(out.logits, batch.labels)
        grad = torch.autograd.grad(fused, model.linear["rna"][1].weight, allow_unused=True)[0]
        assert (grad is None) == detach  # the fused loss reaches the linear path only when not detached
    with pytest.raises(MosareError, match="linear_detach needs"):
        replace(CFG, linear_aux=0.0, linear_detach=True)  # nothing would train the linear path


def test_detached_linear_path_still_passes_input_gradients():
    """Integrated gradients need d logits / d input through the linear path, whose weights the fused loss skips."""
    model = _model(replace(CFG, linear_aux=1.0, linear_detach=True)).eval()
    batch = random_batch(model.cfg, 4, present=torch.ones(4, 3, dtype=torch.bool))
    rna = batch.rna.clone().requires_grad_(True)
    b = replace(batch, rna=rna)
    total = torch.autograd.grad(model(b).logits[:, 1].sum(), rna)[0]
    head = torch.autograd.grad(model.forward_head(model.forward_features(b)[0])[:, 1].sum(), rna)[0]
    w = model.linear["rna"][1].weight.detach()
    torch.testing.assert_close(total - head, w[1].expand_as(total))
