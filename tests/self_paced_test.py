"""Tests for mlc_tf.self_paced: camera centring, usable labels, rounds, label sources."""

import dataclasses

import numpy as np
import pytest

from mlc_tf import config as config_lib
from mlc_tf import self_paced


def test_camera_normalized_removes_each_camera_mean():
    features = np.array([[1.0, 0.0], [1.0, 2.0], [5.0, 5.0], [5.0, 7.0]])
    cameras = np.array([0, 0, 1, 1])
    out = self_paced.camera_normalized(features, cameras)
    np.testing.assert_allclose(out, [[0, -1], [0, 1], [0, -1], [0, 1]], atol=1e-6)


def test_camera_centring_lets_clusters_span_cameras():
    # 8 identities x 3 cameras x 4 images; a camera offset three times the identity signal.
    rng = np.random.default_rng(0)
    ids, cams = np.repeat(np.arange(8), 12), np.tile(np.repeat(np.arange(3), 4), 8)
    features = (rng.normal(size=(8, 32))[ids] + 3 * rng.normal(size=(3, 32))[cams]
                + 0.1 * rng.normal(size=(96, 32)))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    cluster = config_lib.ClusterConfig(k1=10, k2=3, min_samples=4)
    plain, _ = self_paced.pseudo_labels(features, cluster, seed=0)
    centred, _ = self_paced.pseudo_labels(
        features, dataclasses.replace(cluster, camera_normalize=True), seed=0, camids=cams)
    for labels in (plain, centred):
        assert (labels >= 0).all()
    # Without centring every cluster stays inside one camera; with it, clusters are identities.
    assert all(len(np.unique(cams[plain == c])) == 1 for c in np.unique(plain))
    np.testing.assert_array_equal(np.unique(centred[ids == 0], return_counts=True)[1], [12])
    assert len(np.unique(centred)) == 8
    with pytest.raises(ValueError, match="camera"):
        self_paced.pseudo_labels(features, dataclasses.replace(cluster, camera_normalize=True),
                                 seed=0)


def test_usable_labels_need_two_classes_and_one_batch():
    assert self_paced.usable(np.array([0, 0, 1, 1, -1]), batch_size=4)
    assert not self_paced.usable(np.array([0, 0, 0, 0, -1]), batch_size=4)  # one class
    assert not self_paced.usable(np.array([0, 1, -1, -1, -1]), batch_size=4)  # under a batch
    assert self_paced.num_classes(np.array([2, 0, -1])) == 3
    assert self_paced.num_classes(np.full(4, -1)) == 0


def _identity_features(num_ids=8, per_id=6, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.repeat(np.arange(num_ids), per_id)
    features = rng.normal(size=(num_ids, dim))[ids] + 0.05 * rng.normal(size=(len(ids), dim))
    return features / np.linalg.norm(features, axis=1, keepdims=True), ids


def test_recluster_keeps_usable_labels_and_reports_diagnostics():
    features, ids = _identity_features()
    cluster = config_lib.ClusterConfig(k1=6, k2=2, min_samples=3)
    found = self_paced.recluster(features, cluster, batch_size=8, seed=0,
                                 camids=np.zeros(len(ids)), true_labels=ids)
    assert found.usable and found.num_classes == 8
    assert found.scalars["cluster/purity"] == 1.0 and found.scalars["cluster/usable"] == 1.0
    state = self_paced.ClusterState(len(ids))
    state.assign(found)
    assert state.num_classes == 8 and state.fixed_eps() == pytest.approx(0.6)


def test_recluster_without_usable_clusters_trains_no_joint_loss():
    features, ids = _identity_features()
    # min_samples above every neighbourhood: DBSCAN leaves every sample an outlier.
    cluster = config_lib.ClusterConfig(k1=6, k2=2, min_samples=100)
    found = self_paced.recluster(features, cluster, batch_size=8, seed=0, true_labels=ids)
    assert not found.usable and found.num_classes == 0 and (found.labels == -1).all()
    assert found.scalars["cluster/usable"] == 0.0
    assert found.scalars["cluster/outlier_fraction"] == 1.0


def test_label_sources():
    pids, cams = np.array([5, 5, 9, 9, 7]), np.zeros(5, int)
    supervised = config_lib.Config(train=config_lib.TrainConfig(supervised=True))
    truth = self_paced.label_source(supervised, pids, cams)
    labelled = truth.next_round(lambda: pytest.fail("supervised labels need no features"),
                                seed=0, eps=None)
    np.testing.assert_array_equal(labelled.labels, [0, 0, 2, 2, 1])
    assert labelled.usable and labelled.num_classes == 3
    with pytest.raises(ValueError, match="true identity"):
        self_paced.label_source(supervised, np.array([1, -1, 2, 2, 1]), cams)
    mlc = self_paced.label_source(config_lib.Config(), pids, cams)
    assert isinstance(mlc, self_paced.ClusteringLabels)
    assert mlc.true_labels is pids
    unknown = self_paced.label_source(config_lib.Config(), np.full(5, -1), cams)
    assert unknown.true_labels is None
    assert self_paced.identities_known(pids)
    assert not self_paced.identities_known(np.array([3, -1]))
    assert not self_paced.identities_known(np.array([], int))
    ml_only = config_lib.Config(cluster=config_lib.ClusterConfig(clustering="none"))
    assert self_paced.label_source(ml_only, pids, cams) is None


def test_reliability_threshold_is_fixed_by_the_first_round():
    features, ids = _identity_features()
    cluster = config_lib.ClusterConfig(k1=6, k2=2, min_samples=3, reliability_gap=0.02)
    state = self_paced.ClusterState(len(ids))
    assert state.fixed_independence() is None
    first = self_paced.recluster(features, cluster, batch_size=8, seed=0,
                                 camids=np.zeros(len(ids)), true_labels=ids)
    assert first.independence is not None and "cluster/unreliable_fraction" in first.scalars
    state.assign(first)
    assert state.fixed_independence() == pytest.approx(first.independence)
    # A later round that is handed the threshold uses it (here: one that drops everything).
    strict = self_paced.recluster(features, cluster, batch_size=8, seed=0,
                                  camids=np.zeros(len(ids)), independence=-1.0)
    assert not strict.usable and strict.independence == -1.0


def test_class_centroids_are_normalised_class_means():
    rows = np.array([[1, 0], [0, 1], [3, 4], [5, 5], [0, 0]], np.float32)
    centroids = self_paced.class_centroids(rows, np.array([0, 0, 1, -1, -1]), 3)
    # Class 0: mean (0.5, 0.5) -> (0.707, 0.707); class 1: (0.6, 0.8); class 2: no rows.
    np.testing.assert_allclose(centroids, [[0.5 ** 0.5, 0.5 ** 0.5], [0.6, 0.8], [0, 0]],
                               rtol=1e-6)
