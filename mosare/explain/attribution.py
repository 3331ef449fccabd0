"""Attributions: what *moved* a prediction, beside the attention maps (what the model *looked at*).

Every score is signed and in units of the predicted class's log-odds, ``log P(c) − log(1 − P(c))`` (the
logit for two classes): positive = the item pushed the model toward its predicted class, negative = away from
it. Log-odds, not probability: P(c) is flat where a case is confident, so a sentence that moves a confident
case's log-odds from 11 to 9 (its odds divided by e²) would show as Δ P ≈ 1e-4, and the same evidence in a
borderline case (from +1 to −1) as Δ P ≈ 0.46; in log-odds both read 2. :func:`probability` converts back.

* Report sentences — occlusion: ``L(c | report) − L(c | report without the sentence)`` (L: log-odds). The
  sentence is removed from the sentence bag (its local tokens are refitted over the remaining sentences) and the
  whole-report vector is re-encoded from the text of the remaining sentences (the checkpoint's fitted
  TF-IDF → SVD encoder, or the sentence model's chunked embedding). The reference report is the same
  rendering with every sentence kept, so a sentence's score holds that sentence's effect only.
* Genes — integrated gradients (Sundararajan et al., 2017) of ``L(c)`` with respect to the *standardised*
  expression the model sees, from the baseline 0 (every gene at its training mean); 64 gradient evaluations,
  placed where L changes along the path (composite Gauss–Legendre, :func:`path_grid`), in one batched
  backward pass. Completeness (``Σ attributions = L(c | x) − L(c | baseline)``) is checked and its gap
  reported: the model's top-k routing (sparse MoE, activation gate) makes L jump where a routing choice
  flips on the path, and gradients cannot see jumps, so the gap is not exactly zero.
* Slide tiles — occlusion of the ``top_tiles`` highest-attention tiles: ``L(c) − L(c | bag without the tile)``
  (the tile leaves the ABMIL bag and the slide's local tokens are refitted without it).

All variants of one case go through the model as rows of one batch (a few passes in all). Nothing here
depends on Streamlit; :func:`attribute` is a pure function of the predictor, the case and the selection.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np
import torch

from mosare import MODALITIES
from mosare.data.local_tokens import gmm_local_tokens
from mosare.inference import Case, Predictor
from mosare.text.embed import ReportEmbedder
from mosare.types import Batch, pad_bags

IG_STEPS = 64  # gradient evaluations in 2-node Gauss–Legendre panels (see bench/faithfulness.py for the gaps)
TOP_TILES = 24
ROW_BUDGET = 1 << 24  # input floats per forward pass (bags × rows): larger variant sets are split into passes
METHODS = {"rpt": "occlusion", "rna": "integrated gradients", "wsi": "occlusion"}
DIVERGING_CMAP = "RdBu_r"  # tiles: red = toward the predicted class, blue = away (as the report's hues)


@dataclass
class ModalityAttribution:
    """One modality's signed attribution and the attention of the same items, side by side.

    ``index`` [n] are the items' positions in the case (sentence, gene or tile number); ``attribution`` [n] is
    the signed Δ log-odds of the predicted class; ``attention`` [n] the attention the item got (None when the
    model has none for it). ``reference`` is the log-odds of the input the deltas are taken from; for integrated
    gradients ``baseline`` is the log-odds at the all-training-mean expression and ``gap`` = Σ attribution −
    (reference − baseline).
    """

    modality: str
    method: str
    items: list[str]
    index: np.ndarray
    attribution: np.ndarray
    attention: np.ndarray | None
    reference: float
    seconds: float
    baseline: float | None = None
    gap: float | None = None


@dataclass
class CaseAttribution:
    """Attributions of one case under one modality selection (``used``), toward class ``target``."""

    classes: list[str]
    target: int
    prob: float  # P(target) of the case as predicted
    used: np.ndarray
    modalities: dict[str, ModalityAttribution] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return self.classes[self.target]


# ----------------------------------------------------------------------------------------------- batches


def _rows(b: Batch, n: int) -> Batch:
    """``n`` rows of the one-case batch ``b`` (views: rows that are not replaced cost no memory)."""
    return Batch(**{f.name: getattr(b, f.name).expand(n, *getattr(b, f.name).shape[1:]) for f in fields(Batch)})


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _local(bags: list[np.ndarray], protos: np.ndarray | None, c: int, dim: int) -> torch.Tensor:
    """Local tokens of each bag as :meth:`Predictor.batch` makes them (zeros without prototypes)."""
    if protos is None or protos.size == 0:
        return torch.zeros(len(bags), c, dim)
    # one call per bag size: padding a bag changes the float rounding of its EM (squared distances by
    # expansion), which the EM's exponent amplifies to ~1e-4; unpadded, each variant equals a separate run
    out = np.zeros((len(bags), c, dim), np.float32)
    sizes = np.array([len(b) for b in bags])
    for n in np.unique(sizes):
        idx = np.flatnonzero(sizes == n)
        out[idx] = gmm_local_tokens([bags[i] for i in idx], protos)[0]
    return _t(out)


def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """[V, K] logits -> [V] log-odds of class ``target``: its logit minus the log-sum-exp of the others
    (= log P − log(1 − P), computed without forming P, so a confident case keeps its digits)."""
    others = torch.cat([logits[:, :target], logits[:, target + 1:]], dim=1)
    return logits[:, target] - torch.logsumexp(others, dim=1)


def probability(log_odds_value: float | np.ndarray) -> float | np.ndarray:
    """P(c) of a log-odds (the logistic function)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(log_odds_value, np.float64)))


@torch.no_grad()
def _log_odds(predictor: Predictor, batch: Batch, target: int) -> np.ndarray:
    out = predictor.model(batch.to(predictor.device))
    return log_odds(out.logits.double(), target).cpu().numpy()


def _row_floats(b: Batch) -> int:
    """Input floats of one row of the one-case batch ``b`` (what a pass over its variants holds per row)."""
    return sum(getattr(b, f.name).numel() for f in fields(Batch))


def _chunks(n: int, per_row: int) -> list[slice]:
    step = max(1, ROW_BUDGET // max(1, per_row))
    return [slice(a, min(n, a + step)) for a in range(0, n, step)]


def _use(predictor: Predictor, case: Case, use: np.ndarray | None) -> np.ndarray:
    want = case.present.copy() if use is None else case.present & np.asarray(use, bool)
    return want & np.array([m in predictor.cfg.modalities for m in MODALITIES])


# ----------------------------------------------------------------------------------------------- variants


def remaining_report_text(sentences: Sequence[str], drop: Sequence[int] = ()) -> str:
    """The report rendered from its sentences without those in ``drop`` (what a variant's global vector encodes)."""
    gone = set(int(i) for i in drop)
    return " ".join(s for i, s in enumerate(sentences) if i not in gone)


def _report_globals(predictor: Predictor, case: Case, drops: Sequence[Sequence[int]], embedder) -> np.ndarray:
    """[V, Dt] whole-report vectors of the report without each set of sentences."""
    if predictor.text_encoder is not None:
        return predictor.text_encoder.encode_reports([remaining_report_text(case.sentences, d) for d in drops])
    if embedder is None:
        embedder = ReportEmbedder()
    # the sentence model's global vector: token-weighted mean of consecutive-sentence chunks (as
    # ReportEmbedder.embed builds it), every distinct chunk of every variant embedded in one call
    counts = embedder._token_counts(list(case.sentences))
    gone = [set(int(j) for j in d) for d in drops]
    kept = [[i for i in range(len(case.sentences)) if i not in g] for g in gone]
    per_variant = [embedder._chunks([case.sentences[i] for i in k], [counts[i] for i in k]) for k in kept]
    uniq = list(dict.fromkeys(c for chunks in per_variant for c, _ in chunks))
    lengths = {c: n for chunks in per_variant for c, n in chunks}
    emb = embedder._encode(uniq, [lengths[c] for c in uniq], False) if uniq else np.zeros((0, embedder.dim))
    where = {c: i for i, c in enumerate(uniq)}
    out = np.zeros((len(drops), emb.shape[1] if len(uniq) else predictor.cfg.rpt_dim), np.float32)
    for v, chunks in enumerate(per_variant):
        if chunks:
            w = np.asarray([n for _, n in chunks], np.float64)
            g = (w[:, None] * emb[[where[c] for c, _ in chunks]].astype(np.float64)).sum(0) / w.sum()
            out[v] = g / max(float(np.linalg.norm(g)), 1e-12)
    return out


def report_variant_log_odds(predictor: Predictor, case: Case, drops: Sequence[Sequence[int]], target: int,
                            use: np.ndarray | None = None, embedder=None) -> np.ndarray:
    """Log-odds of ``target`` [V] of the case with each set of report sentences in ``drops`` removed (an empty
    set: the reference rendering of the whole report). Other modalities as selected by ``use``."""
    used = _use(predictor, case, use)
    if not used[2] or case.sentence_emb is None:
        raise ValueError("the report is not among the modalities given to the model")
    base, _ = predictor.batch(case, used)
    glob = _report_globals(predictor, case, drops, embedder)
    dim = case.sentence_emb.shape[1]
    bags = [np.delete(case.sentence_emb, np.asarray(sorted(set(int(j) for j in d)), int), axis=0) for d in drops]
    protos = predictor.extras.get("rpt_prototypes")
    out = []
    for sl in _chunks(len(drops), _row_floats(base)):
        bag, mask = pad_bags(bags[sl], dim)
        rows = replace(_rows(base, sl.stop - sl.start), rpt_bag=bag, rpt_bag_mask=mask, rpt_global=_t(glob[sl]),
                       rpt_local=_local(bags[sl], protos, predictor.cfg.n_local, dim))
        out.append(_log_odds(predictor, rows, target))
    return np.concatenate(out)


def rna_variant_log_odds(predictor: Predictor, case: Case, zeroed: Sequence[Sequence[int]], target: int,
                         use: np.ndarray | None = None, rows: torch.Tensor | None = None) -> np.ndarray:
    """Log-odds of ``target`` [V] with each set of genes set to its training mean (0 in the standardised space);
    or, given ``rows`` [V, G], with those standardised expression vectors."""
    used = _use(predictor, case, use)
    if not used[1]:
        raise ValueError("RNA is not among the modalities given to the model")
    base, _ = predictor.batch(case, used)
    if rows is None:
        rows = base.rna.repeat(len(zeroed), 1)
        for v, genes in enumerate(zeroed):
            rows[v, np.asarray(list(genes), int)] = 0.0
    out = []
    for sl in _chunks(len(rows), _row_floats(base)):
        out.append(_log_odds(predictor, replace(_rows(base, sl.stop - sl.start), rna=rows[sl]), target))
    return np.concatenate(out)


def tile_variant_log_odds(predictor: Predictor, case: Case, drops: Sequence[Sequence[int]], target: int,
                          use: np.ndarray | None = None) -> np.ndarray:
    """Log-odds of ``target`` [V] with each set of tiles removed from the slide's bag (local tokens refitted)."""
    used = _use(predictor, case, use)
    if not used[0]:
        raise ValueError("the slide is not among the modalities given to the model")
    base, _ = predictor.batch(case, used)
    patches = base.wsi_bag[0].numpy()  # standardised, as the model sees them
    protos = predictor.extras.get("wsi_prototypes")
    out = []
    for sl in _chunks(len(drops), _row_floats(base)):
        sets = [np.asarray(sorted(set(int(j) for j in d)), int) for d in drops[sl]]
        mask = base.wsi_bag_mask.expand(len(sets), -1).clone()
        for v, s in enumerate(sets):
            mask[v, s] = False
        local = _local([np.delete(patches, s, axis=0) for s in sets], protos, predictor.cfg.n_local, patches.shape[1])
        out.append(_log_odds(predictor, replace(_rows(base, len(sets)), wsi_bag_mask=mask, wsi_local=local), target))
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------- attributions


def coarse_levels(n: int = 16, smallest: float = 1e-4) -> np.ndarray:
    """Where the path is probed before the steps are placed: ``n`` even intervals of [0, 1] plus a geometric
    ladder from ``smallest`` up. A model that LayerNorms each expression vector (``rna_sample_norm``) is scale
    invariant, so P(αx) is flat for α > 0 and changes only near α ≈ 1e-3: only the ladder sees where."""
    return np.unique(np.concatenate([np.linspace(0.0, 1.0, n + 1), np.geomspace(smallest, 1.0, n + 1)]))


def path_grid(levels: np.ndarray, values: np.ndarray, steps: int, order: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights [steps] for ∫_0^1 g(α) dα: composite Gauss–Legendre (``order`` nodes per panel) over
    ``steps // order`` panels placed where the output changes.

    ``values`` is the output at the increasing ``levels`` (from 0 to 1). Each panel holds an equal share of a
    mass that is half uniform in α and half the output's absolute change, so a sharp transition on the path (a
    confident model flips from 0.01 to 0.99 over a few % of it) gets many nodes; Gauss–Legendre within a panel
    is exact for polynomials of degree 2·order − 1, far better than a midpoint rule on a smooth path.
    """
    levels = np.asarray(levels, np.float64)
    change = np.abs(np.diff(np.asarray(values, np.float64)))
    width = np.diff(levels)
    mass = 0.5 * width + (0.5 * change / change.sum() if change.sum() > 0 else 0.5 * width)
    cdf = np.concatenate([[0.0], np.cumsum(mass)])
    order = max(1, min(int(order), int(steps)))
    edges = np.interp(np.linspace(0.0, cdf[-1], max(1, int(steps) // order) + 1), cdf, levels)
    g, w = np.polynomial.legendre.leggauss(order)
    lo, span = edges[:-1, None], np.diff(edges)[:, None]
    return (lo + (g[None] + 1) / 2 * span).ravel(), (w[None] / 2 * span).ravel()


def integrated_gradients(predictor: Predictor, case: Case, target: int, use: np.ndarray | None = None,
                         steps: int = IG_STEPS, coarse: int = 16) -> tuple[np.ndarray, float, float]:
    """Integrated gradients of the log-odds L of ``target`` w.r.t. the standardised expression ``x`` [G], from
    the baseline 0 (every gene at its training mean): ``x · Σ_k w_k ∇L(α_k x)`` with the nodes ``α_k`` and
    weights ``w_k`` of :func:`path_grid` (one forward pass over the :func:`coarse_levels` first places them where
    L changes). The gradients of all steps come from one batched forward and backward pass (grad enabled here:
    the Predictor's own methods run without it).

    Returns ``(attribution [G], L(target | x), L(target | baseline))``; completeness: Σ attribution ≈ the
    difference of the two (the caller reports the gap).
    """
    used = _use(predictor, case, use)
    if not used[1]:
        raise ValueError("RNA is not among the modalities given to the model")
    base, _ = predictor.batch(case, used)
    x = base.rna[0]
    levels = coarse_levels(coarse)
    on_path = rna_variant_log_odds(predictor, case, [], target, used, rows=_t(levels[:, None] * x.numpy()[None]))
    nodes, weights = path_grid(levels, on_path, steps)
    x = x.to(predictor.device)
    grads = torch.zeros_like(x)
    for sl in _chunks(len(nodes), _row_floats(base)):
        path = (torch.as_tensor(nodes[sl], dtype=x.dtype, device=x.device)[:, None] * x[None]).requires_grad_(True)
        rows = replace(_rows(base, sl.stop - sl.start).to(predictor.device), rna=path)
        with torch.enable_grad():
            lo = log_odds(predictor.model(rows).logits, target)
            w = torch.as_tensor(weights[sl], dtype=lo.dtype, device=lo.device)
            (g,) = torch.autograd.grad((lo * w).sum(), path)  # w.r.t. the input only: no .grad on the weights
        grads += g.sum(0)
    attr = (x * grads).detach().cpu().numpy().astype(np.float64)
    return attr, float(on_path[-1]), float(on_path[0])


def _progress(cb: Callable[[int, int, float], None] | None, done: int, total: int, start: float) -> None:
    if cb is not None:
        cb(done, total, done / max(1e-9, time.perf_counter() - start))


def attribute(predictor: Predictor, case: Case, use: np.ndarray | None = None,
              modalities: Sequence[str] | None = None, *, embedder=None, steps: int = IG_STEPS,
              top_tiles: int = TOP_TILES, on_progress: Callable[[int, int, float], None] | None = None
              ) -> CaseAttribution:
    """Attribution of the case's prediction under the selection ``use`` (as :func:`mosare.app.workbench.analyse`):
    one :class:`ModalityAttribution` per requested modality (default: every used one) that the case has.

    ``embedder``: the sentence model, for a checkpoint without a fitted report encoder. ``on_progress(done,
    total, modalities per second)`` is called after each modality (for the job queue's progress bar).
    """
    start = time.perf_counter()
    used = _use(predictor, case, use)
    if not used.any():
        raise ValueError("no modality left to predict from")
    pred = predictor.predict(case, used)
    target = int(pred.probs.argmax())
    result = CaseAttribution(classes=list(predictor.classes), target=target, prob=float(pred.probs[target]), used=used)
    wanted = [m for m in (modalities or MODALITIES) if used[MODALITIES.index(m)]]
    _progress(on_progress, 0, len(wanted), start)
    for n, m in enumerate(wanted):
        t = time.perf_counter()
        if m == "rpt" and case.sentences:
            s = len(case.sentences)
            lo = report_variant_log_odds(predictor, case, [[]] + [[i] for i in range(s)], target, used, embedder)
            att = None if pred.sentence_scores is None else np.asarray(pred.sentence_scores, np.float64)
            result.modalities[m] = ModalityAttribution(m, METHODS[m], list(case.sentences), np.arange(s),
                                                       lo[0] - lo[1:], att, float(lo[0]), 0.0)
        elif m == "rna" and case.rna is not None:
            attr, fx, f0 = integrated_gradients(predictor, case, target, used, steps)
            att = pred.attention.get("rna_gene")
            att = None if att is None else np.asarray(att, np.float64).reshape(-1, len(attr)).mean(0)
            result.modalities[m] = ModalityAttribution(m, METHODS[m], list(predictor.genes), np.arange(len(attr)),
                                                       attr, att, fx, 0.0, baseline=f0,
                                                       gap=float(attr.sum() - (fx - f0)))
        elif m == "wsi" and case.patches is not None and "wsi_patch" in pred.attention:
            att = np.asarray(pred.attention["wsi_patch"], np.float64)
            top = np.argsort(-att, kind="stable")[: max(1, int(top_tiles))]
            lo = tile_variant_log_odds(predictor, case, [[]] + [[int(i)] for i in top], target, used)
            result.modalities[m] = ModalityAttribution(m, METHODS[m], [f"tile #{i}" for i in top], top,
                                                       lo[0] - lo[1:], att[top], float(lo[0]), 0.0)
        if m in result.modalities:
            result.modalities[m].seconds = time.perf_counter() - t
        _progress(on_progress, n + 1, len(wanted), start)
    result.seconds = time.perf_counter() - start
    return result


def signed01(values: np.ndarray) -> np.ndarray:
    """Signed scores → [0, 1] for a diverging colour map: 0.5 = no effect, 1 = the strongest push toward, 0 = the
    same magnitude away (symmetric, so colours of the two signs compare). NaN stays NaN."""
    v = np.asarray(values, np.float64)
    finite = np.abs(v[np.isfinite(v)])
    scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    return 0.5 + 0.5 * np.clip(v / scale, -1.0, 1.0)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest scores (ties: earlier first)."""
    s = np.asarray(scores, np.float64)
    return np.argsort(-s, kind="stable")[: max(0, int(k))]
