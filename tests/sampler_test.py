"""Tests of the PK sampler: structure, outliers, distinct samples, coverage, cameras, seeds."""

import collections
import math

import numpy as np
import pytest

from mlc_tf.data import sampler


def _batches(labels, camids=None, k=4, batch=16, seed=0, camera_aware=False):
    labels = np.asarray(labels)
    camids = np.zeros(len(labels), int) if camids is None else np.asarray(camids)
    return sampler.pk_batches(labels, camids, k, batch, np.random.default_rng(seed), camera_aware)


def test_p_by_k_structure_when_clusters_are_big_enough():
    labels = np.repeat(np.arange(10), 8)
    batches = _batches(labels, k=4, batch=16)
    assert len(batches) == math.ceil(80 / 16) == sampler.pk_num_batches(labels, 16)
    for batch in batches:
        assert len(batch) == 16
        counts = collections.Counter(labels[batch])
        assert sorted(counts.values()) == [4, 4, 4, 4]
        # Instances of one cluster are adjacent: P groups of K.
        assert all(len(set(labels[batch[i:i + 4]])) == 1 for i in range(0, 16, 4))


def test_outliers_never_sampled():
    rng = np.random.default_rng(1)
    labels = rng.integers(-1, 6, 200)
    for batch in _batches(labels, k=4, batch=32, seed=2):
        assert np.all(labels[batch] >= 0)


@pytest.mark.parametrize("seed", range(20))
def test_no_duplicate_and_exact_size_on_random_clusterings(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(40, 200))
    labels = rng.integers(-1, int(rng.integers(1, 30)), n)  # few or many, big or tiny clusters
    batch = int(rng.integers(1, max(2, (labels >= 0).sum())))
    k = int(rng.integers(1, 9))
    batches = _batches(labels, rng.integers(0, 3, n), k=k, batch=batch, seed=seed,
                       camera_aware=bool(seed % 2))
    assert len(batches) == math.ceil((labels >= 0).sum() / batch)
    for b in batches:
        assert len(b) == batch and len(np.unique(b)) == batch
        assert b.dtype == np.int64 and b.min() >= 0 and b.max() < n


def test_small_clusters_contribute_their_members_and_the_batch_is_filled():
    labels = np.array([0, 1, 1, 2, 2, 2] + [3] * 4 + [4] * 4)  # sizes 1, 2, 3, 4, 4
    for seed in range(10):
        for batch in _batches(labels, k=4, batch=8, seed=seed):
            assert len(batch) == 8 and len(set(batch)) == 8
            counts = collections.Counter(labels[batch])
            assert counts.get(0, 0) <= 1 and counts.get(1, 0) <= 2 and counts.get(2, 0) <= 3


def test_few_large_clusters_are_revisited_without_repeats():
    labels = np.repeat([0, 1], 50)
    for batch in _batches(labels, k=4, batch=32):
        assert len(set(batch)) == 32
        assert sorted(collections.Counter(labels[batch]).values()) == [16, 16]


def test_every_labelled_sample_once_when_clusters_have_exactly_k():
    labels = np.concatenate([np.repeat(np.arange(12), 4), [-1] * 5])
    batches = _batches(labels, k=4, batch=16, seed=3)
    seen = np.concatenate(batches)
    np.testing.assert_array_equal(np.sort(seen), np.arange(48))


def test_coverage_over_epochs():
    rng = np.random.default_rng(4)
    labels = rng.integers(-1, 15, 150)
    seen = set()
    for epoch in range(10):
        seen.update(np.concatenate(_batches(labels, k=4, batch=32, seed=epoch)).tolist())
    assert seen == set(np.flatnonzero(labels >= 0).tolist())


def test_camera_aware_prefers_other_cameras():
    labels = np.repeat(np.arange(8), 8)
    camids = np.tile([0, 0, 0, 0, 0, 0, 1, 2], 8)  # 6 of 8 members share camera 0

    def mixed_fraction(camera_aware):
        groups = [b[i:i + 2] for seed in range(10)
                  for b in _batches(labels, camids, k=2, batch=8, seed=seed,
                                    camera_aware=camera_aware) for i in range(0, 8, 2)]
        return np.mean([camids[g[0]] != camids[g[1]] for g in groups])

    assert mixed_fraction(True) == 1.0
    assert mixed_fraction(False) < 0.7


def test_camera_aware_falls_back_to_same_camera():
    labels = np.repeat(np.arange(4), 4)
    batches = _batches(labels, np.zeros(16, int), k=4, batch=8, camera_aware=True)
    for batch in batches:
        assert sorted(collections.Counter(labels[batch]).values()) == [4, 4]


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
