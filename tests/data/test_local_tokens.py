"""Local tokens: K-means prototypes and per-item MAP-GMM means."""

from __future__ import annotations

import time

import numpy as np
import pytest

from mosare.errors import MosareError
from mosare.data.local_tokens import fit_prototypes, gmm_local_tokens


def _clustered(rng: np.random.Generator, n: int, centers: np.ndarray, noise: float = 0.1) -> np.ndarray:
    labels = rng.integers(0, len(centers), size=n)
    return (centers[labels] + noise * rng.standard_normal((n, centers.shape[1]))).astype(np.float32)


def test_prototypes_shape_dtype_and_determinism() -> None:
    rng = np.random.default_rng(0)
    centers = 5.0 * rng.standard_normal((16, 32))
    items = [_clustered(rng, int(n), centers) for n in rng.integers(0, 60, size=40)]
    a = fit_prototypes(items, n_components=16, seed=3)
    b = fit_prototypes(items, n_components=16, seed=3)
    assert a.shape == (16, 32) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # well-separated clusters: every true centre has a prototype close to it
    dist = np.linalg.norm(centers[:, None, :] - a[None], axis=2).min(1)
    assert dist.max() < 1.0


def test_prototypes_subsample_to_max_points() -> None:
    rng = np.random.default_rng(1)
    items = [rng.standard_normal((500, 8)).astype(np.float32) for _ in range(4)]
    protos = fit_prototypes(items, n_components=4, max_points=300, seed=0)
    assert protos.shape == (4, 8)


def test_prototypes_padded_when_too_few_distinct_points() -> None:
    pts = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]], dtype=np.float32)
    protos = fit_prototypes([pts, np.zeros((0, 2), np.float32)], n_components=5, seed=0)
    assert protos.shape == (5, 2)
    assert np.isfinite(protos).all()
    # the distinct points are kept; the padding stays within tiny noise of them
    for p in ([0.0, 0.0], [1.0, 1.0]):
        assert np.abs(protos - np.asarray(p)).sum(1).min() == 0.0
    nearest = np.abs(protos[:, None, :] - np.array([[0.0, 0.0], [1.0, 1.0]])[None]).max(2).min(1)
    assert nearest.max() < 1e-2
    assert len(np.unique(protos, axis=0)) == 5


def test_prototypes_need_points() -> None:
    with pytest.raises(MosareError):
        fit_prototypes([np.zeros((0, 4), np.float32)], n_components=2)
    with pytest.raises(MosareError):
        fit_prototypes([np.ones((3, 4)), np.ones((3, 5))], n_components=2)


@pytest.fixture
def protos() -> np.ndarray:
    # 16 well-separated prototypes in 16-D
    return (10.0 * np.eye(16)).astype(np.float32)


def test_gmm_shapes_for_tiny_and_empty_items(protos: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    items = [np.zeros((0, 16), np.float32)] + [_clustered(rng, n, protos, 0.5) for n in (1, 3, 50)]
    means, resp = gmm_local_tokens(items, protos)
    assert means.shape == (4, 16, 16) and means.dtype == np.float32
    assert [r.shape for r in resp] == [(0, 16), (1, 16), (3, 16), (50, 16)]
    assert all(r.dtype == np.float32 for r in resp)
    np.testing.assert_array_equal(means[0], protos)
    for r in resp[1:]:
        np.testing.assert_allclose(r.sum(1), 1.0, atol=1e-5)
        assert (r >= 0).all()
    assert np.isfinite(means).all()


def test_components_without_points_stay_at_prototypes(protos: np.ndarray) -> None:
    rng = np.random.default_rng(2)
    pts = (protos[3] + 0.3 * rng.standard_normal((7, 16))).astype(np.float32)
    means, resp = gmm_local_tokens([pts], protos, n_iter=5, prior_weight=1.0)
    others = [c for c in range(16) if c != 3]
    np.testing.assert_allclose(means[0, others], protos[others], atol=1e-4)
    assert np.argmax(resp[0].sum(0)) == 3
    # the claimed component moves toward the points' mean: (Σ x + τ μ0) / (n + τ)
    expected = (pts.sum(0) + protos[3]) / (len(pts) + 1.0)
    np.testing.assert_allclose(means[0, 3], expected, atol=1e-3)


def test_map_mean_update_matches_returned_responsibilities(protos: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    items = [_clustered(rng, n, protos, 2.0) for n in (5, 20)]
    tau = 2.5
    means, resp = gmm_local_tokens(items, protos, n_iter=4, prior_weight=tau)
    for x, m, r in zip(items, means, resp):
        expected = (r.T @ x + tau * protos) / (r.sum(0)[:, None] + tau)
        np.testing.assert_allclose(m, expected, rtol=1e-4, atol=1e-4)


def test_gmm_deterministic_and_batch_independent(protos: np.ndarray) -> None:
    rng = np.random.default_rng(4)
    items = [_clustered(rng, int(n), protos, 1.0) for n in rng.integers(0, 45, size=30)]
    m1, r1 = gmm_local_tokens(items, protos, batch_size=7)
    m2, r2 = gmm_local_tokens(items, protos, batch_size=7)
    np.testing.assert_array_equal(m1, m2)
    for a, b in zip(r1, r2):
        np.testing.assert_array_equal(a, b)
    alone, _ = gmm_local_tokens([items[5]], protos)
    np.testing.assert_allclose(alone[0], m1[5], atol=1e-4)


def test_gmm_zero_prior_and_bad_inputs(protos: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    items = [np.zeros((0, 16), np.float32), _clustered(rng, 4, protos, 0.5)]
    means, resp = gmm_local_tokens(items, protos, prior_weight=0.0)
    assert np.isfinite(means).all()
    np.testing.assert_array_equal(means[0], protos)
    np.testing.assert_allclose(resp[1].sum(1), 1.0, atol=1e-5)
    with pytest.raises(MosareError):
        gmm_local_tokens([np.ones((3, 5), np.float32)], protos)
    with pytest.raises(MosareError):
        gmm_local_tokens([np.ones((3, 16), np.float32)], protos, prior_weight=-1.0)
    with pytest.raises(MosareError):
        gmm_local_tokens([np.full((3, 16), np.nan, np.float32)], protos)


def test_gmm_speed_report_scale() -> None:
    """800 reports x ~40 sentences x 384 dims: the experiment's size."""
    rng = np.random.default_rng(6)
    items = [rng.standard_normal((int(n), 384)).astype(np.float32) for n in rng.integers(2, 80, size=800)]
    protos = rng.standard_normal((16, 384)).astype(np.float32)
    t = time.perf_counter()
    means, resp = gmm_local_tokens(items, protos)
    elapsed = time.perf_counter() - t
    assert means.shape == (800, 16, 384)
    assert elapsed < 20.0, f"GMM local tokens took {elapsed:.1f} s"
