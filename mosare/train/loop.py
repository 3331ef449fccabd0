"""One training run: fit on the training split, select the epoch on the validation split, never the test fold.

``fit`` receives only training and validation indices; the test fold is scored afterwards with
``predict_probs`` on the selected weights.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from mosare.cohort import Cohort
from mosare.config import TrainConfig
from mosare.errors import MosareError
from mosare.model.base import SubtypingModel
from mosare.train.data import FoldFeatures, make_batch
from mosare.train.metrics import auc


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MosareError("--device cuda requested but no CUDA GPU is available (use --device auto or cpu)")
    return torch.device(name)


@dataclass
class FitResult:
    best_epoch: int
    best_val_auc: float
    epochs_run: int
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


@torch.no_grad()
def predict_probs(model: SubtypingModel, cohort: Cohort, tokens: FoldFeatures, idx: np.ndarray, present: np.ndarray,
                  device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Class probabilities [len(idx), K] using every patch (no sampling)."""
    model.eval()
    out = []
    for s in range(0, len(idx), batch_size):
        part = idx[s: s + batch_size]
        batch = make_batch(cohort, tokens, part, present[part]).to(device)
        out.append(model(batch).probs.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(cohort.classes)), np.float32)


def fit(model: SubtypingModel, cohort: Cohort, tokens: FoldFeatures, train_idx: np.ndarray, val_idx: np.ndarray,
        present: np.ndarray, cfg: TrainConfig, device: torch.device, desc: str = "train",
        progress: bool = True) -> FitResult:
    """Adam on the training split; keeps the weights of the epoch with the best validation AUC (ties: lower
    validation loss) and stops after ``cfg.patience`` epochs without improvement. Loads those weights."""
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    model.to(device)
    if hasattr(model, "align_from_epoch"):
        model.align_from_epoch = cfg.align_warmup
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    best = (-np.inf, np.inf)
    best_state, best_epoch, history = copy.deepcopy(model.state_dict()), -1, []
    bar = tqdm(range(cfg.epochs), desc=desc, disable=not progress, leave=False, unit="ep")
    for epoch in bar:
        model.train()
        order = rng.permutation(train_idx)
        losses = []
        for s in range(0, len(order), cfg.batch_size):
            part = order[s: s + cfg.batch_size]
            if len(part) < 2:  # a single case breaks in-batch contrastive terms and LayerNorm statistics
                continue
            batch = make_batch(cohort, tokens, part, present[part], cfg.max_patches, rng, cfg.max_sentences).to(device)
            out = model(batch)
            loss, _ = model.loss(batch, out, epoch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            model.on_batch_end(batch, out, epoch)
            losses.append(float(loss.detach()))
        val_probs = predict_probs(model, cohort, tokens, val_idx, present, device)
        y_val = cohort.labels[val_idx]
        val_auc = auc(y_val, val_probs)
        val_auc = -np.inf if np.isnan(val_auc) else val_auc
        val_loss = float(-np.log(np.clip(val_probs[np.arange(len(y_val)), y_val], 1e-8, 1)).mean())
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                        "val_auc": val_auc, "val_loss": val_loss})
        if (val_auc, -val_loss) > (best[0], -best[1]):
            best, best_epoch = (val_auc, val_loss), epoch
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(loss=f"{history[-1]['train_loss']:.3f}", val_auc=f"{val_auc:.1f}", best=best_epoch)
        if epoch - best_epoch >= cfg.patience:
            break
    model.load_state_dict(best_state)
    return FitResult(best_epoch, float(best[0]), len(history), time.perf_counter() - start, history)
