"""Tests of Zhong et al.'s evaluation re-ranking against a plain transcription."""

import numpy as np
import pytest

from mlc_tf.clustering.rerank import rerank_distances


def _plain_re_ranking(q, g, k1, k2, lambda_value):
    """Zhong's Python re_ranking written out plainly on dense matrices."""
    feat = np.concatenate([q, g]).astype(np.float64)
    query_num, all_num = len(q), len(feat)
    original = ((feat[:, None, :] - feat[None, :, :]) ** 2).sum(-1)
    original = np.transpose(original / np.max(original, axis=0))
    initial_rank = np.argsort(original + np.diag(np.full(all_num, -1.0)), axis=1, kind="stable")
    v = np.zeros((all_num, all_num))
    for i in range(all_num):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        reciprocal = forward[np.where(backward == i)[0]]
        expansion = reciprocal
        for candidate in reciprocal:
            c_forward = initial_rank[candidate, :int(np.around(k1 / 2)) + 1]
            c_backward = initial_rank[c_forward, :int(np.around(k1 / 2)) + 1]
            c_reciprocal = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_reciprocal, reciprocal)) > 2 / 3 * len(c_reciprocal):
                expansion = np.append(expansion, c_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        v[i, expansion] = weight / np.sum(weight)
    original = original[:query_num]
    if k2 != 1:
        v = np.array([np.mean(v[initial_rank[i, :k2]], axis=0) for i in range(all_num)])
    inv_index = [np.where(v[:, i] != 0)[0] for i in range(all_num)]
    jac = np.zeros((query_num, all_num))
    for i in range(query_num):
        temp_min = np.zeros(all_num)
        for k in np.where(v[i] != 0)[0]:
            temp_min[inv_index[k]] += np.minimum(v[i, k], v[inv_index[k], k])
        jac[i] = 1 - temp_min / (2 - temp_min)
    final = jac * (1 - lambda_value) + original * lambda_value
    return final[:, query_num:]


def _features(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 16))[rng.integers(0, 6, n)] + 0.7 * rng.standard_normal((n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0)])
def test_matches_plain_zhong(k1, k2, lam):
    q, g = _features(12, 0), _features(40, 1)
    ours = rerank_distances(q, g, k1=k1, k2=k2, lambda_value=lam)
    assert ours.shape == (12, 40) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, _plain_re_ranking(q, g, k1, k2, lam), atol=2e-6)


def test_small_sets_and_errors():
    q, g = _features(2, 0), _features(3, 1)
    assert rerank_distances(q, g).shape == (2, 3)  # k1 clamps to Q + G - 1.
    with pytest.raises(ValueError, match="dimensions"):
        rerank_distances(q, g[:, :8])
