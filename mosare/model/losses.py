"""Aligning losses: symmetric contrastive loss (eqs. 15–16) and multi-prototype contrastive loss (eqs. 17–19)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def symmetric_contrastive(a: Tensor, b: Tensor, valid: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between paired rows of a [B, H] and b [B, H] (eq. 15), using only rows where
    ``valid`` [B] is True (missing modalities are excluded). Fewer than 2 valid rows → 0.
    """
    if int(valid.sum()) < 2:
        return a.new_zeros(())
    a = F.normalize(a[valid], dim=-1)
    b = F.normalize(b[valid], dim=-1)
    logits = a @ b.T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class PrototypeMemory(nn.Module):
    """Per-class Gaussian mixtures over L2-normalised X_out, updated online by momentum Sinkhorn EM.

    Buffers: means [K, P, H] (unit vectors), var [K, P, H] (diagonal covariances), P components per class,
    equal mixture weights π. ``loss`` is eq. 17: the positive prototype is the most probable component of the
    TRUE class (eq. 18), each negative the most probable component of another class (eq. 19). Prototypes are
    buffers: the gradient reaches only the features.
    """

    def __init__(self, n_classes: int, n_prototypes: int, dim: int, momentum: float = 0.99,
                 sinkhorn_iters: int = 3, epsilon: float = 0.05) -> None:
        super().__init__()
        self.momentum, self.sinkhorn_iters, self.epsilon = momentum, sinkhorn_iters, epsilon
        g = torch.Generator().manual_seed(0)
        self.register_buffer("means", F.normalize(torch.randn(n_classes, n_prototypes, dim, generator=g), dim=-1))
        self.register_buffer("var", torch.full((n_classes, n_prototypes, dim), 1.0 / dim))
        self.register_buffer("initialised", torch.zeros(n_classes, dtype=torch.bool))

    def log_posterior(self, f: Tensor) -> Tensor:
        """log p(m | f, c) up to a per-(sample, class) constant: [B, K, P] for unit features f [B, H]."""
        diff = f[:, None, None, :] - self.means[None]
        return -0.5 * ((diff.pow(2) / self.var[None]) + self.var[None].log()).sum(-1)

    def loss(self, x_out: Tensor, labels: Tensor, temperature: float) -> Tensor:
        f = F.normalize(x_out, dim=-1)
        with torch.no_grad():
            best = self.log_posterior(f).argmax(dim=-1)  # [B, K]: nearest component per class (eqs. 18–19)
        k = torch.arange(self.means.shape[0], device=f.device)
        q = self.means[k[None, :], best]  # [B, K, H]
        logits = torch.einsum("bh,bkh->bk", f, q) / temperature
        return F.cross_entropy(logits, labels)  # target = the true class's prototype (eq. 17)

    @torch.no_grad()
    def update(self, x_out: Tensor, labels: Tensor) -> None:
        """One momentum Sinkhorn-EM step per class present in the batch."""
        f = F.normalize(x_out.detach().float(), dim=-1)
        for c in labels.unique().tolist():
            fc = f[labels == c]
            if not bool(self.initialised[c]):
                # start the components on the first features of the class (with replacement when few)
                idx = torch.arange(self.means.shape[1], device=f.device) % fc.shape[0]
                noise = 0.01 * torch.randn_like(self.means[c])
                self.means[c] = F.normalize(fc[idx] + noise, dim=-1)
                self.initialised[c] = True
            q = self._sinkhorn(fc @ self.means[c].T)  # [n, P] balanced soft assignment
            mass = q.sum(dim=0)  # [P]
            used = mass > 1e-6
            new_mean = (q.T @ fc) / mass.clamp(min=1e-6)[:, None]
            new_var = (q.T @ fc.pow(2)) / mass.clamp(min=1e-6)[:, None] - new_mean.pow(2)
            m = self.momentum
            mean = F.normalize(m * self.means[c] + (1 - m) * new_mean, dim=-1)
            var = (m * self.var[c] + (1 - m) * new_var).clamp(min=1e-4)
            self.means[c] = torch.where(used[:, None], mean, self.means[c])
            self.var[c] = torch.where(used[:, None], var, self.var[c])

    def _sinkhorn(self, sim: Tensor) -> Tensor:
        q = torch.exp((sim - sim.max()) / self.epsilon).T  # [P, n]
        q /= q.sum()
        n_comp, n = q.shape
        for _ in range(self.sinkhorn_iters):
            q /= q.sum(dim=1, keepdim=True).clamp(min=1e-12) * n_comp
            q /= q.sum(dim=0, keepdim=True).clamp(min=1e-12) * n
        return (q * n).T  # each sample's row sums to 1
