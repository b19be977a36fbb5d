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


def _spcl_reliability(labels, tight, loose, threshold=None):
    """The criterion as SpCL's training script computes it: dense N x N label agreements."""
    def singletons(l):
        l = np.array(l)
        l[l < 0] = l.max() + 1 + np.arange((l < 0).sum())
        return l

    same, same_tight, same_loose = (np.equal.outer(singletons(a), singletons(a)).astype(float)
                                    for a in (labels, tight, loose))
    r_comp = 1 - np.minimum(same, same_tight).sum(1) / np.maximum(same, same_tight).sum(1)
    r_indep = 1 - np.minimum(same, same_loose).sum(1) / np.maximum(same, same_loose).sum(1)
    comp, indep, size = {}, {}, {}
    for i, label in enumerate(labels):
        if label >= 0:
            comp.setdefault(label, []).append(r_comp[i])
            indep.setdefault(label, []).append(r_indep[i])
    comp = {c: min(v) for c, v in comp.items()}
    indep = {c: min(v) for c, v in indep.items()}
    if threshold is None:
        scores = sorted(indep[c] for c in indep if (np.asarray(labels) == c).sum() > 1)
        threshold = scores[min(len(scores) - 1, int(np.round(len(scores) * 0.9)))]
    kept = [label if label >= 0 and indep[label] <= threshold and r_comp[i] <= comp[label]
            else -1 for i, label in enumerate(labels)]
    order = sorted({k for k in kept if k >= 0})
    return np.array([order.index(k) if k >= 0 else -1 for k in kept]), threshold


def test_reliable_clusters_by_hand():
    # A = points 0-3 splits at the tight eps into {0, 1, 2} and the outlier 3: compactness
    # 1 - 3/4 for 0-2 and 1 - 1/4 for 3. B = 4-7 is as tight, but at the loose eps it takes
    # in the outlier 8: independence 1 - 4/5. Threshold: the larger of (0, 0.2) (position
    # round(0.9 * 2) = 2, clamped to 1).
    labels = [0, 0, 0, 0, 1, 1, 1, 1, -1]
    tight = [0, 0, 0, -1, 1, 1, 1, 1, -1]
    loose = [0, 0, 0, 0, 1, 1, 1, 1, 1]
    kept, threshold = cluster.reliable_clusters(labels, tight, loose)
    assert threshold == pytest.approx(0.2)
    np.testing.assert_array_equal(kept, [0, 0, 0, -1, 1, 1, 1, 1, -1])
    kept, threshold = cluster.reliable_clusters(labels, tight, loose, independence_threshold=0.1)
    assert threshold == 0.1
    np.testing.assert_array_equal(kept, [0, 0, 0, -1, -1, -1, -1, -1, -1])
    kept, _ = cluster.reliable_clusters([-1, -1], [-1, -1], [-1, -1])
    np.testing.assert_array_equal(kept, [-1, -1])


@pytest.mark.parametrize("seed", range(4))
def test_reliable_clusters_match_spcl(seed):
    rng = np.random.default_rng(seed)
    n = 60
    labels = rng.integers(-1, 8, n)
    # Tight clusters split clusters, loose ones merge them, as a smaller / larger eps does.
    tight = np.where(rng.random(n) < 0.3, -1, labels * 2 + rng.integers(0, 2, n))
    tight[labels < 0] = -1
    loose = np.where(labels < 0, rng.integers(-1, 3, n), labels // 2)
    for threshold in (None, 0.3):
        want, want_threshold = _spcl_reliability(labels, tight, loose, threshold)
        got, got_threshold = cluster.reliable_clusters(labels, tight, loose, threshold)
        np.testing.assert_array_equal(got, want)
        assert got_threshold == pytest.approx(want_threshold)


def test_reliability_gap_runs_dbscan_at_both_radii():
    x, _ = _clustered(300, noise=1.0)
    plain, _ = assign_pseudo_labels(x, k1=10, k2=3, knn_backend="exact")
    kept, stats = assign_pseudo_labels(x, k1=10, k2=3, knn_backend="exact", reliability_gap=0.05)
    # Kept points keep their clusters; the dropped ones are counted.
    assert ((kept >= 0) <= (plain >= 0)).all()
    assert stats["num_unreliable"] == (plain >= 0).sum() - (kept >= 0).sum() > 0
    for c in np.unique(kept[kept >= 0]):
        assert len(np.unique(plain[kept == c])) == 1
    again, again_stats = assign_pseudo_labels(
        x, k1=10, k2=3, knn_backend="exact", reliability_gap=0.05,
        independence_threshold=stats["independence_threshold"])
    np.testing.assert_array_equal(again, kept)
    strict, _ = assign_pseudo_labels(x, k1=10, k2=3, knn_backend="exact", reliability_gap=0.05,
                                     independence_threshold=-1e-9)
    assert (strict < 0).all()
    with pytest.raises(ValueError, match="reliability_gap"):
        assign_pseudo_labels(x, eps=0.6, reliability_gap=0.5)
