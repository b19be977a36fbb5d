"""Dense references of Zhong et al.'s k-reciprocal Jaccard distance, sharing no code with mlc_tf.

`plain_re_ranking` transcribes the loops of Zhong's published Python `re_ranking` on dense
float64 matrices. `dense_jaccard_distance` computes the same Jaccard distance with vectorised
rows, fast enough to check the sparse path at N = 1,000 (a test checks that the two agree).
Two deliberate changes make both deterministic: every point ranks itself first, and ties go
to the lower index (a stable sort).
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


def squared_distances(features: np.ndarray) -> np.ndarray:
    """(N, N) float64 squared Euclidean distances, exact zeros on the diagonal."""
    x = np.asarray(features, np.float64)
    sq_norm = np.einsum("ij,ij->i", x, x)
    dist = np.maximum(sq_norm[:, None] + sq_norm[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(dist, 0.0)
    return dist


def initial_ranking(sq_dist: np.ndarray) -> np.ndarray:
    """Full ascending ranking per row, self first, ties by lower index (stable sort)."""
    key = sq_dist.copy()
    np.fill_diagonal(key, -1.0)  # Self first even when duplicates tie with it at 0.
    return np.argsort(key, axis=1, kind="stable")


def dense_encoding(sq_dist: np.ndarray, k1: int, k2: int, variant: str = "zhong") -> np.ndarray:
    """Zhong's V after local query expansion, as a dense (N, N) float64 matrix.

    Args:
        sq_dist: (N, N) squared distances.
        k1, k2: k-reciprocal and query-expansion parameters.
        variant: 'zhong' (weights exp(-d / row max)) or 'spcl' (exp(-d)).

    Returns:
        (N, N) encoding whose rows sum to 1.
    """
    if variant not in ("zhong", "spcl"):
        raise ValueError(f"variant must be 'zhong' or 'spcl', got {variant!r}")
    n = len(sq_dist)
    rank = initial_ranking(sq_dist)
    if variant == "zhong":
        weights_dist = sq_dist / np.maximum(sq_dist.max(axis=1, keepdims=True), 1e-38)
    else:
        weights_dist = sq_dist
    half = int(np.around(k1 / 2))
    encoding = np.zeros((n, n))
    for i in range(n):
        own = _reciprocal(rank, i, k1)
        expansion = [own]
        for c in own:
            candidate = _reciprocal(rank, c, half)
            if len(np.intersect1d(candidate, own)) > 2 / 3 * len(candidate):
                expansion.append(candidate)
        members = np.unique(np.concatenate(expansion))
        weight = np.exp(-weights_dist[i, members])
        encoding[i, members] = weight / weight.sum()
    if k2 > 1:
        encoding = np.stack([encoding[rank[i, :k2]].mean(axis=0) for i in range(n)])
    return encoding


def _reciprocal(rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = rank[i, :k + 1]
    return forward[(rank[forward, :k + 1] == i).any(axis=1)]


def dense_jaccard(encoding: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Jaccard distance 1 - m/(2 - m) between the given rows and all rows of a dense encoding."""
    rows = np.arange(len(encoding)) if rows is None else np.asarray(rows)
    out = np.ones((len(rows), len(encoding)))
    for r, i in enumerate(rows):
        used = np.nonzero(encoding[i])[0]
        overlap = np.minimum(encoding[i, used][None, :], encoding[:, used]).sum(axis=1)
        overlap = np.minimum(overlap, 1.0)
        out[r] = 1.0 - overlap / (2.0 - overlap)
        out[r, i] = 0.0
    return out


def dense_jaccard_distance(features: np.ndarray, k1: int = 20, k2: int = 6,
                           variant: str = "zhong") -> np.ndarray:
    """(N, N) Jaccard distance of the features, all in dense memory (small N only)."""
    return dense_jaccard(dense_encoding(squared_distances(features), k1, k2, variant))
