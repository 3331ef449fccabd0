"""One training run: fit on the training split, select the epoch on the validation split, never the test fold.

``fit`` receives only training and validation indices; the test fold is scored afterwards with
``predict_probs`` on the selected weights. AdamW, linear warm-up then cosine decay (per step), selection on
validation loss; every epoch's loss parts, validation metrics and learning rate go to ``FitResult.history``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from mosare.config import TrainConfig
from mosare.data.cohort import Cohort
from mosare.model.base import SubtypingModel
from mosare.train.calibration import calibrated_nll
from mosare.train.data import FoldFeatures, make_batch
from mosare.train.metrics import auc

log = logging.getLogger(__name__)




@dataclass
class FitResult:
    best_epoch: int
    best_val_auc: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = float("nan")


@torch.no_grad()
def predict_probs(model: SubtypingModel, cohort: Cohort, tokens: FoldFeatures, idx: np.ndarray, present: np.ndarray,
                  device: torch.device, batch_size: int = 128) -> np.ndarray:
    """Class probabilities [len(idx), K] using every patch and sentence (no sampling)."""
    model.eval()
    out = []
    for s in range(0, len(idx), batch_size):
        part = idx[s: s + batch_size]
        batch = make_batch(cohort, tokens, part, present[part]).to(device)
        out.append(model(batch).probs.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(cohort.classes)), np.float32)


@torch.no_grad()
def predict_embeddings(model: SubtypingModel, cohort: Cohort, tokens: FoldFeatures, idx: np.ndarray,
                       present: np.ndarray, device: torch.device, batch_size: int = 128) -> np.ndarray | None:
    """The fused embedding X_out [len(idx), D] that the head reads, or None for a model without one (baselines)."""
    if not hasattr(model, "forward_features"):
        return None
    model.eval()
    out = [model.forward_features(make_batch(cohort, tokens, idx[s: s + batch_size],
                                             present[idx[s: s + batch_size]]).to(device))[0].float().cpu().numpy()
           for s in range(0, len(idx), batch_size)]
    return np.concatenate(out) if out else None


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LambdaLR factor: linear from 1/warmup to 1 over ``warmup_steps``, then cosine to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


def check_align_warmup(cfg: TrainConfig, model: SubtypingModel) -> int:
    """The epoch at which the aligning losses start; warns when that is never reached."""
    start = cfg.align_epoch
    if getattr(model, "cfg", None) is not None and getattr(model.cfg, "use_align", False) and start >= cfg.epochs:
        log.warning("align_warmup puts the aligning losses at epoch %d of a %d-epoch run: SymCL and MCL will never "
                    "run (this trains the no-align ablation); lower align_warmup or raise epochs", start, cfg.epochs)
    return start


def param_groups(model: SubtypingModel, lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices except embeddings; each group at ``lr`` × the model's
    :meth:`~mosare.model.base.SubtypingModel.lr_scale` of its parameters. The first group is at ``lr``."""
    groups: dict[tuple[bool, float], list] = {}
    for n, p in model.named_parameters():
        groups.setdefault((p.ndim >= 2 and "embed" not in n, model.lr_scale(n)), []).append(p)
    keys = sorted(groups, key=lambda k: (k[1] != 1.0, not k[0], k[1]))
    return [{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr": lr * k[1]} for k in keys]


def optimiser_settings(model: SubtypingModel, cfg: TrainConfig) -> tuple[float, float]:
    """(lr, weight decay) of a run: the config's, else the model's own (chosen per model on validation splits)."""
    return (cfg.lr if cfg.lr is not None else model.default_lr,
            cfg.weight_decay if cfg.weight_decay is not None else model.default_weight_decay)


def _optimiser(model: SubtypingModel, cfg: TrainConfig, n_train: int, device: torch.device):
    """AdamW and its per-step warm-up + cosine schedule over ``cfg.epochs`` epochs of ``n_train`` cases."""
    lr, weight_decay = optimiser_settings(model, cfg)
    opt = torch.optim.AdamW(param_groups(model, lr, weight_decay), lr=lr, fused=device.type in ("cpu", "cuda"))
    n_batches = sum(1 for s in range(0, n_train, cfg.batch_size) if min(cfg.batch_size, n_train - s) >= 2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(cfg.warmup_epochs * n_batches, cfg.epochs * n_batches))
    return opt, sched


def _train_epoch(model: SubtypingModel, opt, sched, cohort: Cohort, tokens: FoldFeatures, idx: np.ndarray,
                 present: np.ndarray, cfg: TrainConfig, rng: np.random.Generator, epoch: int,
                 device: torch.device) -> dict[str, float]:
    """One pass over ``idx`` in shuffled mini-batches; the mean of each loss part."""
    model.train()
    order = rng.permutation(idx)
    parts: dict[str, list[float]] = {}
    for s in range(0, len(order), cfg.batch_size):
        part = order[s: s + cfg.batch_size]
        if len(part) < 2:  # a single case breaks in-batch contrastive terms and LayerNorm statistics
            continue
        batch = make_batch(cohort, tokens, part, present[part], cfg.max_patches, rng, cfg.max_sentences).to(device)
        out = model(batch)
        loss, loss_parts = model.loss(batch, out, epoch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        model.on_batch_end(batch, out, epoch)
        for k, v in {"loss": float(loss.detach()), **loss_parts}.items():
            parts.setdefault(k, []).append(v)
    return {k: float(np.mean(v)) for k, v in parts.items()}


def _prepare(model: SubtypingModel, cfg: TrainConfig, device: torch.device) -> np.random.Generator:
    torch.manual_seed(cfg.seed)
    model.to(device)
    if hasattr(model, "align_from_epoch"):
        model.align_from_epoch = check_align_warmup(cfg, model)
    return np.random.default_rng(cfg.seed)


def fit(model: SubtypingModel, cohort: Cohort, tokens: FoldFeatures, train_idx: np.ndarray, val_idx: np.ndarray,
        present: np.ndarray, cfg: TrainConfig, device: torch.device, desc: str = "train",
        progress: bool = True, on_epoch: Callable[[int, np.ndarray], None] | None = None) -> FitResult:
    """AdamW with warm-up + cosine decay on the training split; keeps the weights of the epoch with the lowest
    validation loss and stops after ``cfg.patience`` epochs without a new lowest, then loads those weights
    (``cfg.selection == "best"``); or runs the whole schedule and keeps the last weights (``"last"``).
    ``on_epoch(epoch, val_probs)`` sees each epoch's validation probabilities [N_val, K].

    The validation loss is the temperature-scaled cross-entropy (:func:`calibrated_nll`): every validation case
    counts, and over-confidence, which a temperature removes, does not decide the epoch."""
    start = time.perf_counter()
    rng = _prepare(model, cfg, device)
    opt, sched = _optimiser(model, cfg, len(train_idx), device)
    y_val = cohort.labels[val_idx]
    best_loss, best_auc, best_epoch = np.inf, float("nan"), -1
    keep_best = cfg.selection == "best"  # else the weights at the end of the schedule are the ones kept
    best_state, history = copy.deepcopy(model.state_dict()) if keep_best else None, []
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False, unit="ep")
    for epoch in bar:
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        parts = _train_epoch(model, opt, sched, cohort, tokens, train_idx, present, cfg, rng, epoch, device)
        train_s = time.perf_counter() - t0
        val_probs = predict_probs(model, cohort, tokens, val_idx, present, device)
        val_auc = auc(y_val, val_probs)
        val_nll = float(-np.log(np.clip(val_probs[np.arange(len(y_val)), y_val], 1e-8, 1)).mean())
        val_loss, val_t = calibrated_nll(y_val, val_probs)
        row = {"epoch": epoch, "lr": lr, **{f"train_{k}": v for k, v in parts.items()},
               "val_loss": val_loss, "val_temperature": val_t, "val_nll": val_nll, "val_auc": val_auc,
               "seconds": time.perf_counter() - t0,
               "samples_per_s": len(train_idx) / max(train_s, 1e-9)}
        history.append(row)
        if on_epoch is not None:
            on_epoch(epoch, val_probs)
        if not keep_best or val_loss < best_loss:
            best_loss, best_auc, best_epoch = val_loss, val_auc, epoch
            if keep_best:
                best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{row.get('train_loss', float('nan')):.3f}", val_loss=f"{val_loss:.3f}",
                        val_auc=f"{val_auc:.1f}", best=best_epoch, cases_s=f"{row['samples_per_s']:.0f}")
        if keep_best and epoch - best_epoch >= cfg.patience:
            break
    if keep_best:
        model.load_state_dict(best_state)
    return FitResult(best_epoch, float(best_auc), len(history), time.perf_counter() - start, history, float(best_loss))


def refit(model: SubtypingModel, cohort: Cohort, tokens: FoldFeatures, idx: np.ndarray, present: np.ndarray,
          cfg: TrainConfig, device: torch.device, epochs: int, desc: str = "refit", progress: bool = True) -> float:
    """Train a freshly initialised ``model`` on ``idx`` (training + validation split) for ``epochs`` epochs: the
    first ``epochs`` of the same warm-up + cosine schedule the selection run followed. No selection (nothing is
    held out); returns the seconds taken."""
    start = time.perf_counter()
    rng = _prepare(model, cfg, device)
    opt, sched = _optimiser(model, cfg, len(idx), device)
    for epoch in tqdm(range(epochs), desc=desc, disable=not progress, leave=False, unit="ep"):
        _train_epoch(model, opt, sched, cohort, tokens, idx, present, cfg, rng, epoch, device)
    model.eval()
    return time.perf_counter() - start
