"""Tests of the researcher diagnostics: MPLP counts and pseudo-label quality."""

import itertools
import math

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as sk_metrics

from mlc_tf import diagnostics

# Slots 0-2 are person 0, slots 3-4 person 1, slot 5 person 2.
SLOT_PIDS = np.array([0, 0, 0, 1, 1, 2])
# Anchor slot 0 predicts slots 1 (right) and 3 (wrong); anchor slot 4 predicts 3 (right) and
# 5 (wrong); anchor slot 5 predicts only itself and has no other slot of its identity.
TARGETS = np.array([[1, 1, 0, 1, 0, 0],
                    [0, 0, 0, 1, 1, 1],
                    [0, 0, 0, 0, 0, 1]], np.float32)
INDICES = np.array([0, 4, 5])


def _counts(targets, indices, slot_pids):
    return {name: value.numpy()
            for name, value in diagnostics.mplp_counts(targets, indices, slot_pids).items()}


def _brute_force_mplp_counts(targets, indices, slot_pids):
    counts = {name: [] for name in diagnostics.MPLP_COUNT_NAMES}
    for row, anchor in zip(targets, indices):
        others = [slot for slot in range(len(slot_pids)) if slot != anchor]
        same = [slot for slot in others if slot_pids[slot] == slot_pids[anchor]]
        counts["true_positive"].append(sum(row[slot] > 0 for slot in same))
        counts["predicted"].append(sum(row[slot] > 0 for slot in others))
        counts["relevant"].append(len(same))
    return {name: np.array(values, np.float32) for name, values in counts.items()}


def test_mplp_counts_hand_worked():
    counts = _counts(TARGETS, INDICES, SLOT_PIDS)
    np.testing.assert_array_equal(counts["true_positive"], [1, 1, 0])
    np.testing.assert_array_equal(counts["predicted"], [2, 2, 0])
    np.testing.assert_array_equal(counts["relevant"], [2, 1, 0])
    assert all(value.dtype == np.float32 for value in counts.values())
    sums = {name: float(value.sum()) for name, value in counts.items()}
    assert diagnostics.mplp_precision_recall(sums) == {"mplp/precision": 2 / 4,
                                                       "mplp/recall": 2 / 3}


def test_mplp_precision_recall_of_nothing_is_zero():
    assert diagnostics.mplp_precision_recall(
        {"true_positive": 0, "predicted": 0, "relevant": 0}) == {"mplp/precision": 0.0,
                                                                 "mplp/recall": 0.0}
    with pytest.raises(KeyError, match="relevant"):
        diagnostics.mplp_precision_recall({"true_positive": 1, "predicted": 2})


@pytest.mark.parametrize("seed", range(5))
def test_mplp_counts_match_brute_force_on_random_targets(seed):
    rng = np.random.default_rng(seed)
    num_slots, batch = int(rng.integers(5, 40)), int(rng.integers(1, 12))
    slot_pids = rng.integers(0, int(rng.integers(1, 8)), num_slots)
    indices = rng.choice(num_slots, batch, replace=False)
    targets = (rng.random((batch, num_slots)) < 0.3).astype(np.float32)
    targets[np.arange(batch), indices] = 1.0  # MPLP always labels the own slot
    expected = _brute_force_mplp_counts(targets, indices, slot_pids)
    counts = _counts(tf.constant(targets, tf.bfloat16), indices, slot_pids)
    for name in diagnostics.MPLP_COUNT_NAMES:
        np.testing.assert_array_equal(counts[name], expected[name])


def test_mplp_counts_in_a_replica_step_of_a_tf_function():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    slot_pids = tf.constant(SLOT_PIDS)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32),
                                  tf.TensorSpec([None], tf.int64)])
    def step(targets, indices):
        per_replica = strategy.run(diagnostics.mplp_counts, args=(targets, indices, slot_pids))
        return {name: strategy.reduce("SUM", value, axis=0)
                for name, value in per_replica.items()}

    sums = {name: float(value) for name, value in step(TARGETS, INDICES).items()}
    assert sums == {"true_positive": 2.0, "predicted": 4.0, "relevant": 3.0}


def test_mplp_counts_errors():
    with pytest.raises(ValueError, match="slots"):
        diagnostics.mplp_counts(TARGETS, INDICES, SLOT_PIDS[:5])
    with pytest.raises(ValueError, match="shapes"):
        diagnostics.mplp_counts(TARGETS[0], INDICES, SLOT_PIDS)


def test_pseudo_label_quality_hand_worked():
    # Clusters {0,1,2} (ids 7,7,8) and {3,4} (ids 9,9); sample 5 (id 9) is an outlier.
    scalars = diagnostics.pseudo_label_quality(np.array([0, 0, 0, 1, 1, -1]),
                                               np.array([7, 7, 8, 9, 9, 9]))
    # Clustered: cluster sizes (3, 2), identity sizes (2, 1, 2), cells 2, 1, 2 of 5 samples.
    mutual_information = 0.4 * math.log(5 / 3) + 0.2 * math.log(5 / 3) + 0.4 * math.log(2.5)
    cluster_entropy = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4))
    identity_entropy = -(2 * 0.4 * math.log(0.4) + 0.2 * math.log(0.2))
    assert scalars == pytest.approx({
        "cluster/num_clusters": 2,
        "cluster/outlier_fraction": 1 / 6,
        "cluster/purity": 4 / 5,
        "cluster/nmi": mutual_information / ((cluster_entropy + identity_entropy) / 2),
        # Pairs in a cluster: 3 + 1, of which (0,1) and (3,4) share an id.
        "cluster/pair_precision": 2 / 4,
        # Pairs of one id: (0,1) and three of id 9, the outlier's two included.
        "cluster/pair_recall": 2 / 4,
        "cluster/ids_per_cluster": (2 + 1) / 2,
        "cluster/clusters_per_id": (1 + 1 + 1) / 3,
    }, abs=1e-12)


def test_pseudo_label_quality_identities_split_over_clusters():
    # Clusters {0,1} (ids 1,1), {2,3} (ids 1,2), {4} (id 2); samples 5 (id 2), 6 (id 3) outliers.
    scalars = diagnostics.pseudo_label_quality(np.array([0, 0, 1, 1, 2, -1, -1]),
                                               np.array([1, 1, 1, 2, 2, 2, 3]))
    assert scalars["cluster/num_clusters"] == 3
    assert scalars["cluster/outlier_fraction"] == pytest.approx(2 / 7)
    assert scalars["cluster/purity"] == pytest.approx(4 / 5)
    assert scalars["cluster/pair_precision"] == pytest.approx(1 / 2)  # (0,1) of (0,1), (2,3)
    assert scalars["cluster/pair_recall"] == pytest.approx(1 / 6)  # 3 pairs of id 1, 3 of id 2
    assert scalars["cluster/ids_per_cluster"] == pytest.approx(4 / 3)
    assert scalars["cluster/clusters_per_id"] == pytest.approx(2)  # id 3 has none clustered


def test_pseudo_label_quality_limit_cases():
    nothing = diagnostics.pseudo_label_quality(np.full(3, -1), np.arange(3))
    assert nothing["cluster/outlier_fraction"] == 1
    assert all(value == 0 for name, value in nothing.items() if "outlier" not in name)
    perfect = diagnostics.pseudo_label_quality(np.zeros(4, int), np.full(4, 5))
    assert perfect == {"cluster/num_clusters": 1, "cluster/outlier_fraction": 0,
                       "cluster/purity": 1, "cluster/nmi": 1, "cluster/pair_precision": 1,
                       "cluster/pair_recall": 1, "cluster/ids_per_cluster": 1,
                       "cluster/clusters_per_id": 1}
    singletons = diagnostics.pseudo_label_quality(np.arange(4), np.array([0, 0, 1, 1]))
    assert singletons["cluster/pair_precision"] == 0 and singletons["cluster/pair_recall"] == 0
    with pytest.raises(ValueError, match="one length"):
        diagnostics.pseudo_label_quality(np.zeros(3, int), np.zeros(4, int))


@pytest.mark.parametrize("seed", range(8))
def test_pseudo_label_quality_matches_brute_force_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2, 60))
    truth = rng.integers(0, int(rng.integers(1, 10)), size) * 3 - 4  # any int ids
    pseudo = rng.integers(-1, int(rng.integers(1, 10)), size) * 7
    pseudo[pseudo < 0] = -1
    clustered = np.flatnonzero(pseudo >= 0)
    pairs = list(itertools.combinations(range(size), 2))
    same_cluster = {(i, j) for i, j in pairs if pseudo[i] >= 0 and pseudo[i] == pseudo[j]}
    same_id = {(i, j) for i, j in pairs if truth[i] == truth[j]}
    both = len(same_cluster & same_id)
    clusters = {c: truth[pseudo == c] for c in np.unique(pseudo[clustered])}
    ids = {t: pseudo[clustered][truth[clustered] == t] for t in np.unique(truth[clustered])}
    expected = {
        "cluster/num_clusters": len(clusters),
        "cluster/outlier_fraction": 1 - len(clustered) / size,
        "cluster/purity": (sum(np.bincount(m - m.min()).max() for m in clusters.values())
                           / len(clustered)) if len(clustered) else 0,
        "cluster/nmi": (sk_metrics.normalized_mutual_info_score(truth[clustered],
                                                                pseudo[clustered])
                        if len(clustered) else 0),
        "cluster/pair_precision": both / len(same_cluster) if same_cluster else 0,
        "cluster/pair_recall": both / len(same_id) if same_id else 0,
        "cluster/ids_per_cluster": (np.mean([len(set(m)) for m in clusters.values()])
                                    if clusters else 0),
        "cluster/clusters_per_id": np.mean([len(set(m)) for m in ids.values()]) if ids else 0,
    }
    assert diagnostics.pseudo_label_quality(pseudo, truth) == pytest.approx(expected, abs=1e-12)


def test_pseudo_label_quality_on_four_million_labels():
    # 1M identities of 4 images; each cluster joins two identities. No N x N anything.
    size = 4_000_000
    order = np.random.default_rng(0).permutation(size)
    truth, pseudo = order // 4, order // 8
    scalars = diagnostics.pseudo_label_quality(pseudo, truth)
    assert scalars == pytest.approx({
        "cluster/num_clusters": 500_000, "cluster/outlier_fraction": 0, "cluster/purity": 0.5,
        # Clusters are a function of identities, so MI = H(clusters).
        "cluster/nmi": 2 * math.log(500_000) / (math.log(500_000) + math.log(1_000_000)),
        "cluster/pair_precision": 2 * 6 / 28, "cluster/pair_recall": 1,
        "cluster/ids_per_cluster": 2, "cluster/clusters_per_id": 1}, rel=1e-9)
