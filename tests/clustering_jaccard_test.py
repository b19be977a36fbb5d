"""Tests of the k-reciprocal sets and the sparse Jaccard distance against dense references."""

import numpy as np
import pytest

from mlc_tf.clustering import jaccard, knn

from zhong_reference import (dense_encoding, dense_jaccard, dense_jaccard_distance,
                             initial_ranking, plain_re_ranking, squared_distances)

# Five points on a line (as 1-d features): 0, 1, 3, 7, 8. Squared distances from 7: 49 to 0,
# 36 to 1, 16 to 3, 1 to 8. With k = 2, top(i, 3) (self first):
#   0: [0, 1, 3]   1: [1, 0, 3]   3: [3, 1, 0]   7: [7, 8, 3]   8: [8, 7, 3]
# R(i, 2): 0, 1, 3 -> {0, 1, 3} each; 7 -> {7, 8} (3 does not list 7); 8 -> {8, 7}.
LINE = np.array([[0.0], [1.0], [3.0], [7.0], [8.0]], np.float32)


def _neighbours_from_dense(features, length):
    """Exact neighbour lists from the float64 dense matrix (isolates the Jaccard code)."""
    sq = squared_distances(features)
    rank = initial_ranking(sq)[:, :length]
    return knn.Neighbours(rank, np.take_along_axis(sq, rank, 1).astype(np.float32),
                          sq.max(axis=1).astype(np.float32))


def _full(sparse):
    """Sparse distances to dense, absent pairs at 1."""
    out = np.ones(sparse.shape)
    coo = sparse.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


def _clustered(n, dim=24, ids=30, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((ids, dim))
    x = centres[rng.integers(0, ids, n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_reciprocal_sets_by_hand():
    rank = _neighbours_from_dense(LINE, 3).indices
    np.testing.assert_array_equal(rank, [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 4, 2], [4, 3, 2]])
    mask = jaccard.reciprocal_mask(rank, 2)
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 0]])


def test_expansion_by_hand():
    # k1 = 2, round(k1/2) = 1: R(0,1) = {0,1}, R(1,1) = {1,0}, R(3,1) = {3} (1 lists 0 first);
    # each passes the 2/3 rule inside R(0, 2) = {0, 1, 3}, so R*(0) = {0, 1, 3}.
    # Point 2 (value 3) alone in R(3, 1) passes too. R*(7) = R(7,1) = {7, 8}.
    rank = _neighbours_from_dense(LINE, 3).indices
    members = jaccard.expanded_sets(rank, 2, np.arange(5))
    assert [sorted(m[m >= 0].tolist()) for m in members] == [[0, 1, 2]] * 3 + [[3, 4]] * 2


def test_jaccard_by_hand_spcl():
    # spcl weights, k2 = 1: V(7) = {7: 1/(1+e^-1), 8: e^-1/(1+e^-1)} and V(8) mirrored, so
    # m = 2 e^-1/(1+e^-1) and d = 1 - m/(2-m) = 1 - e^-1 = 0.63212. 7 and {0,1,3} share no
    # column: distance 1, so the pair is not stored.
    nbrs = _neighbours_from_dense(LINE, 3)
    dist = jaccard.sparse_jaccard(LINE, nbrs, k1=2, k2=1, variant="spcl")
    assert dist[3, 4] == pytest.approx(1 - np.exp(-1), abs=1e-6)
    assert dist[4, 3] == pytest.approx(1 - np.exp(-1), abs=1e-6)
    assert (3, 0) not in set(zip(*dist.nonzero()))
    np.testing.assert_array_equal(dist.diagonal(), 0.0)
    assert dist.has_canonical_format
    np.testing.assert_allclose(_full(dist), dense_jaccard_distance(LINE, 2, 1, "spcl"),
                               atol=1e-6)


@pytest.mark.parametrize("variant", ["zhong", "spcl"])
def test_dense_reference_matches_plain_zhong(variant):
    x = _clustered(80, ids=8)
    plain_v, plain_jaccard = plain_re_ranking(x, len(x), 6, 3, lambda_value=0.0, variant=variant)
    sq = squared_distances(x)
    ref_v = dense_encoding(sq, 6, 3, variant)
    np.testing.assert_allclose(ref_v, plain_v, atol=1e-12)
    ref = dense_jaccard(ref_v)
    off = ~np.eye(len(x), dtype=bool)
    np.testing.assert_allclose(ref[off], plain_jaccard[off], atol=1e-9)
    assert (ref < 1).sum() > 3 * len(x)  # Not vacuous: many pairs share neighbours.


@pytest.mark.parametrize("variant", ["zhong", "spcl"])
@pytest.mark.parametrize("n,k1,k2", [(300, 20, 6), (700, 10, 4)])
def test_sparse_equals_dense(variant, n, k1, k2):
    x = _clustered(n, seed=n)
    nbrs = _neighbours_from_dense(x, jaccard.required_list_length(k1))
    sparse = jaccard.sparse_jaccard(x, nbrs, k1, k2, variant)
    reference = dense_jaccard_distance(x, k1, k2, variant)
    np.testing.assert_allclose(_full(sparse), reference, atol=1e-6)
    assert abs(sparse - sparse.T).max() < 1e-6  # Symmetric.


def test_sparse_on_exact_knn_equals_dense_in_blocks(monkeypatch):
    # Small blocks make every blocked loop (exact search, encoding, Jaccard kernel) run several
    # times and end on a short block; at the real sizes 1,000 points fit in one block each.
    monkeypatch.setattr(knn, "_BLOCK_FLOATS", 300 * 1000)
    monkeypatch.setattr(jaccard, "_BLOCK_ROWS", 256)
    monkeypatch.setattr(jaccard, "_KERNEL_ROWS", 384)
    x = _clustered(1000, dim=32, ids=30, seed=3)
    nbrs = knn.neighbours(x, jaccard.required_list_length(20), "exact")
    sparse = jaccard.sparse_jaccard(x, nbrs)
    np.testing.assert_allclose(_full(sparse), dense_jaccard_distance(x), atol=1e-6)


def test_max_distance_keeps_only_close_pairs():
    x = _clustered(300)
    nbrs = _neighbours_from_dense(x, 21)
    everything = jaccard.sparse_jaccard(x, nbrs)
    close = jaccard.sparse_jaccard(x, nbrs, max_distance=0.6)
    assert close.data.max() <= 0.6
    kept = _full(everything) <= 0.6
    np.testing.assert_array_equal(_full(close) <= 0.6, kept)


def test_short_lists_are_rejected():
    x = _clustered(50)
    with pytest.raises(ValueError, match="too short"):
        jaccard.sparse_jaccard(x, _neighbours_from_dense(x, 10), k1=20)
