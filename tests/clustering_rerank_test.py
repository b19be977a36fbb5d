"""Tests of Zhong et al.'s evaluation re-ranking against a plain transcription."""

import numpy as np
import pytest

from mlc_tf.clustering.rerank import rerank_distances

from zhong_reference import plain_re_ranking


def _features(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((6, 16))[rng.integers(0, 6, n)] + 0.7 * rng.standard_normal((n, 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("k1,k2,lam", [(20, 6, 0.3), (5, 1, 0.0)])
def test_matches_plain_zhong(k1, k2, lam):
    q, g = _features(12, 0), _features(40, 1)
    ours = rerank_distances(q, g, k1=k1, k2=k2, lambda_value=lam)
    assert ours.shape == (12, 40) and ours.dtype == np.float32
    _, plain = plain_re_ranking(np.concatenate([q, g]), len(q), k1, k2, lam)
    np.testing.assert_allclose(ours, plain[:, len(q):], atol=2e-6)


def test_small_sets_and_errors():
    q, g = _features(2, 0), _features(3, 1)
    assert rerank_distances(q, g).shape == (2, 3)  # k1 clamps to Q + G - 1.
    with pytest.raises(ValueError, match="dimensions"):
        rerank_distances(q, g[:, :8])
