"""Tests of the nearest-neighbour backends."""

import numpy as np
import pytest

from mlc_tf.clustering import knn


def _clustered(n, dim=32, ids=40, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    x = centres[rng.integers(0, ids, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _plain(x, k):
    sq = ((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1)
    key = sq + np.diag(np.full(len(x), -1.0))
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sq, order, 1), sq.max(axis=1)


def test_exact_matches_plain_sort():
    x = _clustered(400)
    order, sq, row_max = _plain(x, 15)
    indices, distances, found_row_max = knn.neighbours(x, 15, "exact")
    assert indices.dtype == np.int64 and distances.dtype == np.float32
    np.testing.assert_array_equal(indices, order)
    np.testing.assert_allclose(distances, sq, atol=1e-5)
    np.testing.assert_allclose(found_row_max, row_max, rtol=1e-5)


def test_self_first_with_duplicates():
    x = _clustered(50)
    x = np.concatenate([x, x[:10]])  # Rows 50..59 duplicate rows 0..9.
    for backend in ("exact", "ivf"):
        indices, distances, _ = knn.neighbours(x, 5, backend)
        np.testing.assert_array_equal(indices[:, 0], np.arange(60))
        np.testing.assert_array_equal(distances[:, 0], 0.0)
        assert (indices[:10, 1] == np.arange(50, 60)).all()
        assert (np.diff(distances, axis=1) >= 0).all()


def test_ivf_recall_on_clustered_data():
    x = _clustered(3000, dim=600, ids=150, seed=1)  # d > 256 exercises the random projection.
    exact = knn.neighbours(x, 21, "exact")
    approx = knn.neighbours(x, 21, "ivf")
    recall = np.mean([len(np.intersect1d(a, e)) for a, e in zip(approx.indices,
                                                                 exact.indices)]) / 21
    assert recall > 0.9  # 0.946 here; 0.994 on the benchmark's 16,522 x 2,048 features.
    np.testing.assert_array_equal(approx.indices[:, 0], np.arange(3000))
    assert (approx.row_max <= exact.row_max * (1 + 1e-5)).all()  # A lower bound.


def test_pynndescent():
    # The one pynndescent test: numba compiles its graph code for ~30 s in every new process.
    x = _clustered(600, dim=16, ids=20, seed=2)
    x = np.concatenate([x, x[:10]])  # Rows 600..609 duplicate rows 0..9.
    exact = knn.neighbours(x, 10, "exact")
    approx = knn.neighbours(x, 10, "pynndescent")
    np.testing.assert_array_equal(approx.indices[:, 0], np.arange(610))
    np.testing.assert_array_equal(approx.sq_distances[:, 0], 0.0)
    assert (approx.indices[:10, 1] == np.arange(600, 610)).all()
    assert (np.diff(approx.sq_distances, axis=1) >= 0).all()
    listed = ((x[:, None, :] - x[approx.indices]) ** 2).sum(-1)
    np.testing.assert_allclose(approx.sq_distances, listed, atol=1e-5)  # Re-scored exactly.
    recall = np.mean([len(np.intersect1d(a, e)) for a, e in zip(approx.indices,
                                                                 exact.indices)]) / 10
    assert recall > 0.95
    assert (approx.row_max <= exact.row_max * (1 + 1e-5)).all()  # A lower bound.


def test_backend_choice_and_errors():
    assert knn.resolve_backend(1000, 64) == "exact"
    assert knn.resolve_backend(100_000, 256) == "ivf"
    assert knn.resolve_backend(10, 4, "approx") == "pynndescent"
    with pytest.raises(ValueError, match="backend"):
        knn.resolve_backend(10, 4, "faiss")
    with pytest.raises(ValueError, match="k must be"):
        knn.neighbours(np.zeros((3, 2), np.float32), 4, "exact")
