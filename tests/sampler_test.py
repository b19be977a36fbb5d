"""Tests of the PK sampler: P x K structure, positives, repeats, coverage, cameras, determinism."""

import collections
import math

import numpy as np
import pytest

from mlc_tf.data import sampler


def _batches(labels, camids=None, k=4, batch=16, seed=0, camera_aware=False):
    labels = np.asarray(labels)
    camids = np.zeros(len(labels), int) if camids is None else np.asarray(camids)
    return sampler.pk_batches(labels, camids, k, batch, np.random.default_rng(seed), camera_aware)


def _random_clustering(seed):
    """Labels with outliers and clusters of every size from 1 up, plus camera ids and K."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 14, int(rng.integers(8, 40)))
    labels = np.repeat(rng.permutation(len(sizes)), sizes)
    labels[rng.random(len(labels)) < 0.2] = -1
    labels = rng.permutation(labels)
    return labels, rng.integers(0, 4, len(labels)), int(rng.integers(2, 7))


def _assert_p_by_k(batch, labels, k, batch_size):
    assert len(batch) == batch_size and batch.dtype == np.int64
    groups = batch.reshape(batch_size // k, k)
    assert all(len(set(labels[group])) == 1 for group in groups)


def test_p_by_k_structure_and_every_sample_once_when_sizes_are_multiples_of_k():
    labels = np.repeat(np.arange(10), 8)
    batches = _batches(labels, k=4, batch=16)
    assert len(batches) == math.ceil(80 / 16) == sampler.pk_num_batches(labels, 16)
    for batch in batches:
        _assert_p_by_k(batch, labels, 4, 16)
        assert len(set(labels[batch])) == 4  # P = 4 distinct clusters
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(80))


@pytest.mark.parametrize("seed", range(12))
def test_every_anchor_has_a_positive_and_batches_are_p_by_k(seed):
    labels, camids, k = _random_clustering(seed)
    batch_size = k * int(np.random.default_rng(seed).integers(2, 9))
    batches = _batches(labels, camids, k=k, batch=batch_size, seed=seed,
                       camera_aware=bool(seed % 2))
    assert len(batches) == math.ceil(np.sum(labels >= 0) / batch_size)
    for batch in batches:
        _assert_p_by_k(batch, labels, k, batch_size)
        assert np.all(labels[batch] >= 0)
        for position, sample in enumerate(batch):
            partners = np.delete(labels[batch], position)
            assert labels[sample] in partners


@pytest.mark.parametrize("size", [1, 2, 3])
def test_tiny_clusters_are_sampled_with_replacement_and_keep_every_member(size):
    # Cluster 0 has `size` members, clusters 1-4 have 4; K = 4 and P = 5 put every cluster in
    # the single batch.
    labels = np.repeat(np.arange(5), [size, 4, 4, 4, 4])
    for seed in range(5):
        (batch,) = _batches(labels, k=4, batch=20, seed=seed)
        _assert_p_by_k(batch, labels, 4, 20)
        tiny = batch[labels[batch] == 0]
        counts = collections.Counter(tiny.tolist())
        assert len(tiny) == 4 and set(counts) == set(range(size))
        assert max(counts.values()) - min(counts.values()) <= 1  # repeats spread evenly
        assert len(set(batch[labels[batch] != 0])) == 16


@pytest.mark.parametrize("seed", range(12))
def test_a_sample_repeats_in_a_batch_only_when_its_cluster_is_smaller_than_k(seed):
    labels, camids, k = _random_clustering(seed)
    sizes = collections.Counter(labels[labels >= 0].tolist())
    batch_size = k * min(len(sizes), 4)  # at least P clusters
    for batch in _batches(labels, camids, k=k, batch=batch_size, seed=seed,
                          camera_aware=bool(seed % 2)):
        assert len(set(labels[batch])) == batch_size // k  # P distinct clusters
        counts = collections.Counter(batch.tolist())
        assert all(sizes[labels[sample]] < k for sample, count in counts.items() if count > 1)


def test_every_labelled_sample_is_visited_about_once_per_epoch():
    # DBSCAN-like sizes: mostly min_samples = 4 or more, a few border-point leftovers.
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(63), np.concatenate([rng.integers(4, 21, 60), [1, 2, 3]]))
    for seed in range(5):
        batches = _batches(labels, rng.integers(0, 6, len(labels)), k=4, batch=32, seed=seed,
                           camera_aware=bool(seed % 2))
        counts = collections.Counter(np.concatenate(batches).tolist())
        # Completing short groups makes a pass longer than the epoch: a few samples wait.
        assert np.isin(np.arange(len(labels)), list(counts)).mean() > 0.9
        assert max(counts.values()) <= 4  # the size-1 cluster's member, K times in its group


def test_outliers_never_sampled():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 6, 200)
    for batch in _batches(labels, k=4, batch=32, seed=2):
        assert np.all(labels[batch] >= 0)


def test_fewer_clusters_than_p_fill_several_groups():
    labels = np.zeros(100, int)
    batches = _batches(labels, k=4, batch=32)
    assert len(batches) == 4
    assert all(len(set(b)) == 32 for b in batches)  # one pass of 25 groups, then a second
    labels = np.repeat([0, 1], 3)
    (batch,) = _batches(labels, k=2, batch=8)
    _assert_p_by_k(batch, labels, 2, 8)
    assert sorted(collections.Counter(labels[batch].tolist()).values()) == [4, 4]


def test_camera_aware_groups_mix_cameras():
    # Clusters of 8: four images from camera 0, two each from cameras 1 and 2. With K = 4 each
    # cluster makes two groups, and batch = K puts one group in each batch.
    labels = np.repeat(np.arange(6), 8)
    camids = np.tile([0, 0, 0, 0, 1, 1, 2, 2], 6)

    def groups(camera_aware):
        return [b for seed in range(10)
                for b in _batches(labels, camids, k=4, batch=4, seed=seed,
                                  camera_aware=camera_aware)]

    for group in groups(True):
        assert len(set(labels[group])) == 1
        # Spread evenly: two from camera 0, one from each of cameras 1 and 2.
        assert sorted(camids[group]) == [0, 0, 1, 2]
    plain = [len(set(camids[g])) == 3 for g in groups(False)]
    assert 0.2 < np.mean(plain) < 0.9  # random partitions often miss a camera


def test_camera_aware_completion_prefers_cameras_the_group_lacks():
    # One cluster of 5 with K = 4 gives groups of 3 and 2, each completed from the other group.
    # Cameras: 0, 0, 0, 1, 2. Dealing spreads camera 0 over both groups; the group of two
    # then completes with a camera it lacks whenever one is left among the other members.
    labels = np.zeros(5, int)
    camids = np.array([0, 0, 0, 1, 2])
    for seed in range(20):
        (batch,) = _batches(labels, camids, k=4, batch=8, seed=seed, camera_aware=True)
        for group in batch.reshape(2, 4):
            assert len(set(group)) == 4
            assert set(camids[group]) == {0, 1, 2}


def test_deterministic_given_rng():
    labels = np.random.default_rng(5).integers(-1, 10, 120)
    first = _batches(labels, k=4, batch=16, seed=9)
    again = _batches(labels, k=4, batch=16, seed=9)
    other = _batches(labels, k=4, batch=16, seed=10)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    # The order of clusters is drawn too: over seeds, any cluster can come first.
    equal_sizes = np.repeat(np.arange(10), 8)
    firsts = {int(equal_sizes[_batches(equal_sizes, k=4, batch=8, seed=seed)[0][0]])
              for seed in range(30)}
    assert len(firsts) >= 8


def test_errors():
    with pytest.raises(ValueError, match="pseudo label"):
        _batches([-1, -1, -1], k=2, batch=4)
    with pytest.raises(ValueError, match="length"):
        sampler.pk_batches(np.zeros(4), np.zeros(3), 2, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="multiple of num_instances"):
        _batches([0, 0, 1, 1], k=0, batch=2)
    with pytest.raises(ValueError, match="multiple of num_instances"):
        _batches([0, 0, 1, 1], k=4, batch=6)
