"""Local tokens (paper §3.1): K-means prototypes over training items initialise a small GMM per item
whose component means are the item's ``C`` local tokens.

Works for any bag of vectors: sentence embeddings of a report (``[S, 384]``) or patch features of a slide
(``[N, 1024]``).

Model choice: each item's GMM has ``C`` components with per-item mixing weights and ONE shared isotropic
variance per item (``σ² I``). Diagonal covariances are not identifiable from ~40 points in 384 dimensions,
and a shared variance makes the responsibilities a temperature-scaled softmax over squared distances.
A MAP prior keeps everything defined for tiny items: component means are pulled toward their prototypes
(weight ``τ = prior_weight``), the mixing weights get a +1 (Dirichlet) smoothing, and the variance is pulled
toward its initial value with the same weight τ. A component that no point claims stays at its prototype.
Each item is fitted from its own points only, so its tokens do not depend on the other items in the call
(up to float rounding).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from mosare.errors import MosareError

_PAD_BUDGET = 1 << 25  # floats in one padded batch [B, N_max, D] (128 MiB in float32)


def _as_items(items: Sequence[np.ndarray], dim: int | None = None) -> tuple[list[np.ndarray], int | None]:
    """Validate items as float32 ``[N_p, D]`` arrays (an empty array of any shape counts as 0 points)."""
    out: list[np.ndarray] = []
    for k, item in enumerate(items):
        a = np.asarray(item, dtype=np.float32)
        if a.size == 0:
            out.append(a.reshape(0, dim if dim is not None else (a.shape[-1] if a.ndim == 2 else 0)))
            continue
        if a.ndim != 2:
            raise MosareError(f"item {k} must be a [N, D] array of vectors, got shape {a.shape}")
        if dim is None:
            dim = a.shape[1]
        elif a.shape[1] != dim:
            raise MosareError(f"item {k} has dimension {a.shape[1]}, expected {dim}")
        if not np.isfinite(a).all():
            raise MosareError(f"item {k} contains NaN or infinite values")
        out.append(a)
    if dim is not None:
        out = [a.reshape(0, dim) if a.size == 0 else a for a in out]
    return out, dim


def fit_prototypes(
    items: Sequence[np.ndarray],
    n_components: int = 16,
    seed: int = 0,
    max_points: int = 100_000,
) -> np.ndarray:
    """K-means prototypes over the points of all items.

    Call it on the TRAINING-fold items only (the caller's responsibility): the prototypes initialise every
    item's GMM, validation and test items included.

    Args:
        items: ``[N_p, D]`` arrays (sentence embeddings or patch features); empty items are allowed.
        n_components: ``C``, the number of prototypes.
        seed: seeds the subsampling, K-means and the padding noise.
        max_points: at most this many points (a seeded random subset) go into K-means.

    Returns:
        ``[C, D]`` float32 prototypes. With fewer distinct points than ``C``, the distinct points are
        repeated with tiny seeded noise to fill ``C`` rows.
    """
    if n_components < 1:
        raise MosareError("n_components must be at least 1")
    arrays, dim = _as_items(items)
    nonempty = [a for a in arrays if len(a)]
    if not nonempty or dim is None:
        raise MosareError("cannot fit prototypes: the training items hold no vectors")
    x = np.concatenate(nonempty, axis=0)
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        x = x[np.sort(rng.choice(len(x), size=max_points, replace=False))]
    distinct = np.unique(x, axis=0)
    if len(distinct) <= n_components:
        centers = distinct
    else:
        from sklearn.cluster import KMeans, MiniBatchKMeans

        if len(x) <= 50_000:
            km = KMeans(n_clusters=n_components, n_init=3, random_state=seed)
        else:
            km = MiniBatchKMeans(n_clusters=n_components, n_init=3, random_state=seed, batch_size=4096)
        centers = km.fit(x).cluster_centers_
    centers = np.asarray(centers, dtype=np.float32)
    if len(centers) < n_components:
        scale = float(x.std()) or 1.0
        extra = centers[np.arange(n_components - len(centers)) % len(centers)]
        noise = rng.standard_normal(extra.shape).astype(np.float32) * np.float32(1e-3 * scale)
        centers = np.concatenate([centers, extra + noise], axis=0)
    return np.ascontiguousarray(centers, dtype=np.float32)


def _batches(sizes: np.ndarray, dim: int, batch_size: int) -> Iterator[np.ndarray]:
    """Item indices grouped by similar size, each group's padded array within ``_PAD_BUDGET`` floats."""
    order = np.argsort(sizes, kind="stable")
    group: list[int] = []
    for i in order:
        n_max = max(int(sizes[i]), 1)
        if group and (len(group) >= batch_size or (len(group) + 1) * n_max * dim > _PAD_BUDGET):
            yield np.asarray(group)
            group = []
        group.append(int(i))
    if group:
        yield np.asarray(group)


def _sq_dist(x: np.ndarray, x2: np.ndarray, mu: np.ndarray) -> np.ndarray:
    """Squared distances ``[B, N, C]`` between points ``x [B, N, D]`` and means ``mu [B, C, D]``."""
    d2 = x2[:, :, None] + np.einsum("bcd,bcd->bc", mu, mu)[:, None, :] - 2.0 * np.matmul(x, mu.transpose(0, 2, 1))
    return np.maximum(d2, 0.0)


def _em(
    x: np.ndarray, mask: np.ndarray, mu0: np.ndarray, n_iter: int, tau: float
) -> tuple[np.ndarray, np.ndarray]:
    """MAP-EM on a padded batch: ``x [B, N, D]``, ``mask [B, N]`` → means ``[B, C, D]``, resp ``[B, N, C]``."""
    b, n, d = x.shape
    c = mu0.shape[0]
    maskf = mask.astype(np.float32)
    counts = maskf.sum(1)  # [B]
    x2 = np.einsum("bnd,bnd->bn", x, x)
    mu = np.broadcast_to(mu0, (b, c, d)).copy()
    log_pi = np.full((b, c), -np.log(c), dtype=np.float32)
    d2 = _sq_dist(x, x2, mu)
    # initial variance: mean squared distance of each point to its nearest prototype, per dimension
    var0 = (d2.min(2) * maskf).sum(1) / np.maximum(counts, 1.0) / d
    floor = np.float32(1e-6) * (np.einsum("bn,bn->b", x2, maskf) / np.maximum(counts, 1.0) / d) + np.float32(1e-12)
    var0 = np.where(counts > 0, np.maximum(var0, floor), 1.0).astype(np.float32)
    var = var0.copy()
    resp = np.zeros((b, n, c), dtype=np.float32)
    for _ in range(max(int(n_iter), 1)):
        # E-step: responsibilities, a softmax over components; padding rows get zero
        logits = log_pi[:, None, :] - d2 / (2.0 * var[:, None, None])
        logits -= logits.max(2, keepdims=True)
        resp = np.exp(logits)
        resp /= resp.sum(2, keepdims=True)
        resp *= maskf[:, :, None]
        # M-step with the MAP prior toward the prototypes
        nk = resp.sum(1)  # [B, C]
        sx = np.matmul(resp.transpose(0, 2, 1), x)  # [B, C, D]
        denom = nk + tau
        safe = np.maximum(denom, 1e-12)[:, :, None]
        mu = np.where(denom[:, :, None] > 1e-12, (sx + tau * mu0[None]) / safe, mu0[None]).astype(np.float32)
        log_pi = np.log((nk + 1.0) / (counts[:, None] + c)).astype(np.float32)
        d2 = _sq_dist(x, x2, mu)
        sse = np.einsum("bnc,bnc->b", resp, d2)
        var = (sse + tau * d * var0) / np.maximum((counts + tau) * d, 1e-12)
        var = np.where(counts > 0, np.maximum(var, floor), 1.0).astype(np.float32)
    return mu, resp


def gmm_local_tokens(
    items: Sequence[np.ndarray],
    prototypes: np.ndarray,
    n_iter: int = 5,
    prior_weight: float = 1.0,
    batch_size: int = 256,
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Per-item GMM means initialised from the prototypes: the item's local tokens.

    For each item, ``n_iter`` MAP-EM steps of a ``C``-component GMM with a shared isotropic variance
    (see the module docstring). The mean update is
    ``mean_c = (Σ_i r_ic x_i + τ μ0_c) / (Σ_i r_ic + τ)`` with ``τ = prior_weight`` and ``μ0`` the
    prototypes, so components without points stay at their prototype and items with fewer points than
    ``C`` are well defined. Items are processed as zero-padded batches of similar size.

    Args:
        items: ``P`` arrays ``[N_p, D]``; ``N_p`` may be 0.
        prototypes: ``[C, D]`` from :func:`fit_prototypes` (fitted on training items).
        n_iter: EM iterations.
        prior_weight: ``τ ≥ 0``, the prior's weight in pseudo-points.
        batch_size: items per padded batch (also capped by memory).

    Returns:
        ``(means [P, C, D] float32, responsibilities)``, the latter a list of ``[N_p, C]`` float32 arrays
        whose rows sum to 1 (from the E-step that produced the returned means); an item with no points gets
        the prototypes and a ``[0, C]`` array.
    """
    mu0 = np.asarray(prototypes, dtype=np.float32)
    if mu0.ndim != 2 or len(mu0) == 0:
        raise MosareError(f"prototypes must be a [C, D] array, got shape {mu0.shape}")
    if prior_weight < 0:
        raise MosareError("prior_weight must be non-negative")
    c, d = mu0.shape
    arrays, _ = _as_items(items, dim=d)
    means = np.empty((len(arrays), c, d), dtype=np.float32)
    resps: list[np.ndarray] = [np.zeros((0, c), dtype=np.float32)] * len(arrays)
    sizes = np.asarray([len(a) for a in arrays], dtype=np.int64)
    for idx in _batches(sizes, d, max(int(batch_size), 1)):
        n_max = int(sizes[idx].max())
        if n_max == 0:
            means[idx] = mu0
            continue
        x = np.zeros((len(idx), n_max, d), dtype=np.float32)
        mask = np.zeros((len(idx), n_max), dtype=bool)
        for j, i in enumerate(idx):
            x[j, : sizes[i]] = arrays[i]
            mask[j, : sizes[i]] = True
        mu, resp = _em(x, mask, mu0, n_iter, float(prior_weight))
        means[idx] = mu
        for j, i in enumerate(idx):
            resps[i] = np.ascontiguousarray(resp[j, : sizes[i]])
    return means, resps


__all__ = ["fit_prototypes", "gmm_local_tokens"]
