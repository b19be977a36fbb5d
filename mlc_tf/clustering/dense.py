"""Dense O(N^2) k-reciprocal Jaccard distance: the reference the sparse path is tested against."""

import numpy as np

from mlc_tf.clustering.jaccard import VARIANTS


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
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
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
