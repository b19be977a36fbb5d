"""Zhong et al.'s k-reciprocal re-ranking written out plainly: the tests' independent reference.

A transcription of the loops of Zhong's published Python `re_ranking` on dense float64 matrices,
sharing no code with `mlc_tf.clustering`. Two deliberate changes make it deterministic: every
point ranks itself first, and ties go to the lower index (a stable sort).
"""

import numpy as np


def plain_re_ranking(features, num_query, k1, k2, lambda_value, variant="zhong"):
    """Zhong's encoding and re-ranked distance of the first num_query rows to all rows.

    Args:
        features: (N, d) features; the first num_query rows are the queries.
        num_query: Q, the number of query rows of the output.
        k1, k2: k-reciprocal and query-expansion parameters.
        lambda_value: weight of the original distance (0 gives the Jaccard distance).
        variant: 'zhong' weights exp(-squared distance / row maximum), 'spcl' exp(-squared
            distance); the original distance in the output is always divided by the row maximum.

    Returns:
        encoding: (N, N) V after local query expansion.
        distance: (Q, N) (1 - lambda) * Jaccard + lambda * original.
    """
    feat = np.asarray(features, np.float64)
    all_num = len(feat)
    squared = ((feat[:, None, :] - feat[None, :, :]) ** 2).sum(-1)
    original = np.transpose(squared / np.max(squared, axis=0))
    weight_dist = original if variant == "zhong" else squared
    initial_rank = np.argsort(original + np.diag(np.full(all_num, -1.0)), axis=1, kind="stable")
    half = int(np.around(k1 / 2))
    v = np.zeros((all_num, all_num))
    for i in range(all_num):
        forward = initial_rank[i, :k1 + 1]
        backward = initial_rank[forward, :k1 + 1]
        reciprocal = forward[np.where(backward == i)[0]]
        expansion = reciprocal
        for candidate in reciprocal:
            c_forward = initial_rank[candidate, :half + 1]
            c_backward = initial_rank[c_forward, :half + 1]
            c_reciprocal = c_forward[np.where(c_backward == candidate)[0]]
            if len(np.intersect1d(c_reciprocal, reciprocal)) > 2 / 3 * len(c_reciprocal):
                expansion = np.append(expansion, c_reciprocal)
        expansion = np.unique(expansion)
        weight = np.exp(-weight_dist[i, expansion])
        v[i, expansion] = weight / np.sum(weight)
    if k2 != 1:
        v = np.array([np.mean(v[initial_rank[i, :k2]], axis=0) for i in range(all_num)])
    inv_index = [np.where(v[:, column] != 0)[0] for column in range(all_num)]
    jaccard = np.zeros((num_query, all_num))
    for i in range(num_query):
        temp_min = np.zeros(all_num)
        for column in np.where(v[i] != 0)[0]:
            users = inv_index[column]
            temp_min[users] += np.minimum(v[i, column], v[users, column])
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    return v, jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
