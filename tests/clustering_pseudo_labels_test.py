"""Tests of DBSCAN / k-means pseudo labels and the degenerate inputs."""

import logging

import numpy as np
import pytest
import sklearn.cluster

from mlc_tf.clustering import assign_pseudo_labels, cluster, jaccard, knn

from zhong_reference import dense_jaccard_distance


def _clustered(n, dim=32, ids=30, seed=0, noise=0.5):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, ids, n)
    x = rng.standard_normal((ids, dim))[truth] + noise * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def _noise_dominated(n, dim=1024, ids=150, signal=0.32, seed=0):
    """Clustered unit features drowned in isotropic noise, as from an early network (nearest
    neighbour cosine about 0.15 at signal 0.32, 0.13 at 0.29): ivf's recall@21 is about 0.2."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, ids, n)
    centres = rng.standard_normal((ids, dim)) / np.sqrt(dim)
    x = signal * centres[truth] + rng.standard_normal((n, dim)) / np.sqrt(dim)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), truth


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_dbscan_sparse_equals_dense_labels():
    x, _ = _clustered(800, noise=0.9, seed=4)
    reference = dense_jaccard_distance(x)
    nbrs = knn.neighbours(x, 21, "exact")
    for eps in (0.3, 0.5, 0.6):
        sparse = jaccard.sparse_jaccard(x, nbrs, max_distance=eps)
        dense_labels = sklearn.cluster.DBSCAN(eps=eps, min_samples=4,
                                              metric="precomputed").fit_predict(reference)
        labels = cluster.dbscan(sparse, eps)
        np.testing.assert_array_equal(labels, dense_labels)
        assert len(set(labels)) > 2


def test_rho_eps_equals_dense_rule():
    x, _ = _clustered(500, noise=0.8)
    reference = dense_jaccard_distance(x)
    upper = np.triu(reference, 1)
    values = np.sort(upper[upper > 1e-6])  # Zeros up to rounding count as zeros.
    expected = values[:int(np.round(1.6e-3 * values.size))].mean()
    sparse = jaccard.sparse_jaccard(x, knn.neighbours(x, 21, "exact"))
    assert cluster.rho_eps(sparse, 1.6e-3) == pytest.approx(expected, abs=1e-6)
    labels, stats = assign_pseudo_labels(x, eps_mode="rho", knn_backend="exact")
    assert stats["eps"] == pytest.approx(expected, abs=1e-6)


def test_recovers_identities_and_reports_stats():
    x, truth = _clustered(600, ids=20)
    labels, stats = assign_pseudo_labels(x, knn_backend="exact")
    assert labels.dtype == np.int64 and labels.shape == (600,)
    assert stats["num_clusters"] == 20 and stats["eps"] == 0.6
    assert (stats["knn_backend"], stats["knn_action"]) == ("exact", "none")
    assert stats["knn_recall"] == 1.0 and stats["seconds_knn_recall"] == 0.0
    assert stats["num_outliers"] == (labels == -1).sum()
    assert stats["cluster_size_min"] <= stats["cluster_size_median"] <= stats["cluster_size_max"]
    for key in ("seconds_neighbours", "seconds_jaccard", "seconds_clustering", "seconds"):
        assert stats[key] >= 0
    # Each cluster is one identity.
    for c in range(stats["num_clusters"]):
        assert len(set(truth[labels == c])) == 1


def test_a_common_offset_changes_nothing():
    # Distances are translation invariant; in float32 a large offset would round them away
    # (k-means: scikit-learn centres the data itself).
    x, truth = _clustered(400, ids=10)
    offset = np.zeros(x.shape[1], np.float32)
    offset[0] = 1e4
    for method in ("dbscan", "kmeans"):
        labels, _ = assign_pseudo_labels(x, method=method, num_clusters=10, knn_backend="exact")
        shifted, _ = assign_pseudo_labels(x + offset, method=method, num_clusters=10,
                                          knn_backend="exact")
        np.testing.assert_array_equal(shifted, labels, err_msg=method)


def test_deterministic_and_silent(capsys):
    x, _ = _clustered(500, noise=0.8)
    first, _ = assign_pseudo_labels(x, knn_backend="ivf")
    second, _ = assign_pseudo_labels(x, knn_backend="ivf")
    np.testing.assert_array_equal(first, second)
    assert capsys.readouterr().out == ""
    assign_pseudo_labels(x, knn_backend="exact", verbose=True)
    printed = capsys.readouterr().out
    assert "neighbours" in printed and "dbscan" in printed and "recall 1.000" in printed


def test_low_knn_recall_falls_back_to_exact(caplog, capsys):
    x, _ = _noise_dominated(3000)
    exact_labels, _ = assign_pseudo_labels(x, knn_backend="exact")
    labels, stats = assign_pseudo_labels(x, knn_backend="ivf", verbose=True)
    assert (stats["knn_first_backend"], stats["knn_action"]) == ("ivf", "exact fallback")
    assert stats["knn_first_recall"] < 0.3 and stats["knn_recall"] >= 0.9
    assert stats["knn_backend"] == "exact" and stats["seconds_knn_recall"] > 0
    np.testing.assert_array_equal(labels, exact_labels)
    assert stats["outlier_fraction"] < 0.2  # ivf alone leaves 87% outliers here.
    assert 0.3 < stats["knn_widened_recall"] < 0.9  # Multi-probe ivf finds more, not enough.
    assert any("exact fallback" in m and "0.2" in m for m in _warnings(caplog))
    assert "exact fallback from ivf" in capsys.readouterr().out
    _, widened = assign_pseudo_labels(x, knn_backend="ivf", knn_recall_floor=0.5)
    assert widened["knn_action"] == "widened" and widened["knn_recall"] >= 0.5
    with pytest.raises(ValueError, match="floor"):
        assign_pseudo_labels(x, knn_backend="ivf", knn_recall_floor=-0.1)


def test_collapse_is_not_silent(caplog):
    x, _ = _noise_dominated(3000, signal=0.29)
    _, stats = assign_pseudo_labels(x, knn_backend="ivf", knn_recall_floor=0.0)
    assert stats["knn_action"] == "none" and stats["outlier_fraction"] > 0.9
    warned = [m for m in _warnings(caplog) if "collapsed" in m]
    assert len(warned) == 1
    assert f"{100 * stats['outlier_fraction']:.1f}% of 3000" in warned[0]
    assert f"recall {stats['knn_recall']:.3f}" in warned[0]


def test_all_outliers(caplog):
    x = np.random.default_rng(0).standard_normal((200, 64)).astype(np.float32)
    labels, stats = assign_pseudo_labels(x, eps=0.05, knn_backend="exact")
    assert (labels == -1).all()
    assert stats["all_outliers"] and stats["num_clusters"] == 0
    assert stats["outlier_fraction"] == 1.0 and stats["cluster_size_max"] == 0
    assert any("100.0% of 200" in m and "recall 1.000" in m for m in _warnings(caplog))
    caplog.clear()
    assign_pseudo_labels(_clustered(600, ids=20)[0], knn_backend="exact")  # 0% outliers.
    assert not _warnings(caplog)


def test_fewer_points_than_k1_and_duplicates():
    x, _ = _clustered(8, ids=2)
    labels, stats = assign_pseudo_labels(x, knn_backend="exact")
    assert labels.shape == (8,) and stats["k1"] == 7 and stats["k2"] == 6
    one, _ = assign_pseudo_labels(x[:1], knn_backend="exact")
    np.testing.assert_array_equal(one, [-1])
    base, _ = _clustered(100, ids=5)
    twice = np.concatenate([base, base])
    labels, _ = assign_pseudo_labels(twice, knn_backend="exact")
    np.testing.assert_array_equal(labels[:100], labels[100:])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_features_raise(bad):
    x, _ = _clustered(50)
    x[7, 3] = bad
    with pytest.raises(ValueError, match="NaN or Inf"):
        assign_pseudo_labels(x)


def test_bad_options_raise():
    x, _ = _clustered(50)
    with pytest.raises(ValueError, match="method"):
        assign_pseudo_labels(x, method="optics")
    with pytest.raises(ValueError, match="eps"):
        assign_pseudo_labels(x, eps=1.2)
    with pytest.raises(ValueError, match="num_clusters"):
        assign_pseudo_labels(x, method="kmeans")
    with pytest.raises(ValueError, match="shape"):
        assign_pseudo_labels(np.zeros((0, 4)))


def test_kmeans():
    x, truth = _clustered(300, ids=6, noise=0.3)
    labels, stats = assign_pseudo_labels(x, method="kmeans", num_clusters=6, seed=1)
    again, _ = assign_pseudo_labels(x, method="kmeans", num_clusters=6, seed=1)
    np.testing.assert_array_equal(labels, again)
    assert stats["num_clusters"] == 6 and stats["num_outliers"] == 0 and stats["eps"] is None
    assert labels[0] == 0  # Renumbered by first appearance.
