"""Tests of the PK sampler: structure, outliers, no repeats, coverage, cameras, determinism."""

import collections
import itertools
import math

import numpy as np
import pytest

from mlc_tf.data import sampler


def _batches(labels, camids=None, k=4, batch=16, seed=0, camera_aware=False):
    labels = np.asarray(labels)
    camids = np.zeros(len(labels), int) if camids is None else np.asarray(camids)
    return sampler.pk_batches(labels, camids, k, batch, np.random.default_rng(seed), camera_aware)


def _runs(values):
    """Lengths of the runs of equal consecutive values."""
    return [len(list(group)) for _, group in itertools.groupby(values.tolist())]


def test_p_by_k_structure_when_cluster_sizes_are_multiples_of_k():
    labels = np.repeat(np.arange(10), 8)
    batches = _batches(labels, k=4, batch=16)
    assert len(batches) == math.ceil(80 / 16) == sampler.pk_num_batches(labels, 16)
    for batch in batches:
        assert len(batch) == 16
        # P = 4 groups of K = 4 consecutive instances of one cluster.
        assert all(len(set(labels[batch[i:i + 4]])) == 1 for i in range(0, 16, 4))


def test_outliers_never_sampled():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 6, 200)
    for batch in _batches(labels, k=4, batch=32, seed=2):
        assert np.all(labels[batch] >= 0)


@pytest.mark.parametrize("seed", range(20))
def test_no_duplicate_exact_size_and_full_coverage_on_random_clusterings(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 200))
    labels = rng.integers(-1, int(rng.integers(1, 30)), n)  # few or many, big or tiny clusters
    labelled = np.flatnonzero(labels >= 0)
    batch = int(rng.integers(1, len(labelled) + 1))
    k = int(rng.integers(1, 9))
    batches = _batches(labels, rng.integers(0, 3, n), k=k, batch=batch, seed=seed,
                       camera_aware=bool(seed % 2))
    assert len(batches) == math.ceil(len(labelled) / batch)
    for b in batches:
        assert len(b) == batch and len(np.unique(b)) == batch
        assert b.dtype == np.int64 and b.min() >= 0 and b.max() < n
    # Every labelled sample once; the top-up of the last batch repeats samples of the first.
    counts = collections.Counter(np.concatenate(batches).tolist())
    assert set(counts) == set(labelled.tolist())
    repeated = [i for i, c in counts.items() if c == 2]
    assert max(counts.values()) <= 2
    assert len(repeated) == len(batches) * batch - len(labelled)
    assert set(repeated) <= set(batches[0].tolist()) & set(batches[-1].tolist())


def test_small_clusters_give_all_their_members_once_and_the_batch_is_filled():
    labels = np.array([0, 1, 1, 2, 2, 2] + [3] * 4 + [4] * 4)  # sizes 1, 2, 3, 4, 4
    for seed in range(10):
        batches = _batches(labels, k=4, batch=7, seed=seed)
        stream = np.concatenate(batches)[:len(labels)]  # the epoch before the top-up
        np.testing.assert_array_equal(np.sort(stream), np.arange(len(labels)))
        for b in batches:
            assert len(b) == 7 and len(set(b)) == 7


def test_clusters_split_into_balanced_groups_without_singletons():
    # Sizes 5, 6, 7, 9 with K = 4 split into 3+2, 3+3, 4+3, 3+3+3 (never 4+1, 4+2, 4+4+1).
    labels = np.repeat(np.arange(4), [5, 6, 7, 9])
    for seed in range(20):
        stream = np.concatenate(_batches(labels, k=4, batch=27, seed=seed))
        # One batch: the stream is the groups back to back (neighbouring groups of one cluster
        # merge into one run), so every run is a sum of group sizes from that cluster.
        sums = {0: {2, 3, 5}, 1: {3, 6}, 2: {3, 4, 7}, 3: {3, 6, 9}}
        position = 0
        for length in _runs(labels[stream]):
            assert length in sums[labels[stream[position]]]
            position += length


def test_one_big_cluster_fills_batches_with_distinct_members():
    labels = np.zeros(100, int)
    batches = _batches(labels, k=4, batch=32)
    assert len(batches) == 4
    assert all(len(set(b)) == 32 for b in batches)


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


def test_camera_aware_with_one_camera_still_covers_everything():
    labels = np.repeat(np.arange(4), 4)
    batches = _batches(labels, np.zeros(16, int), k=4, batch=8, camera_aware=True)
    np.testing.assert_array_equal(np.sort(np.concatenate(batches)), np.arange(16))


def test_deterministic_given_rng():
    labels = np.random.default_rng(5).integers(-1, 10, 120)
    first = _batches(labels, k=4, batch=16, seed=9)
    again = _batches(labels, k=4, batch=16, seed=9)
    other = _batches(labels, k=4, batch=16, seed=10)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_errors():
    with pytest.raises(ValueError, match="batch_size"):
        _batches([0, 0, 1, -1, -1], k=2, batch=4)
    with pytest.raises(ValueError, match="length"):
        sampler.pk_batches(np.zeros(4), np.zeros(3), 2, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match="num_instances"):
        _batches([0, 0, 1, 1], k=0, batch=2)
