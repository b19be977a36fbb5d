"""DBSCAN on sparse precomputed Jaccard distances (fixed or rho-rule eps), and k-means."""

import numpy as np
import scipy.sparse
import sklearn.cluster

# Distances at most this are zeros of the rho rule (float32 rounding of the encoding is ~1e-7).
_ZERO = 1e-6


def rho_eps(distances: scipy.sparse.spmatrix, rho: float = 1.6e-3) -> float:
    """eps by the rho rule (Song et al., as SSG implements it), from a sparse distance matrix.

    The rule sorts the strictly upper-triangular nonzero (here: > 1e-6) entries of the dense
    N x N distance matrix and averages the smallest round(rho * count). Pairs missing from the
    sparse matrix have distance 1 (they share no neighbour), so the dense result is recovered
    exactly as long as the matrix stores every pair below 1 (max_distance=1 in `jaccard.jaccard`).

    Args:
        distances: (N, N) sparse symmetric distances; absent pairs mean distance 1.
        rho: fraction of the pairs to average.

    Returns:
        eps as a float (1.0 when there are no pairs).
    """
    n = distances.shape[0]
    upper = scipy.sparse.triu(distances, k=1).tocoo()
    values = upper.data.astype(np.float64)
    # Pairs with identical encodings (query expansion over the same k2 neighbours) are at
    # distance 0 up to float32 rounding: count them as the zeros the rule leaves out.
    zero = values <= _ZERO
    values = np.sort(values[~zero])
    count = n * (n - 1) // 2 - int(zero.sum())  # Dense nonzero upper entries; absent ones are 1.
    top = int(np.round(rho * count))
    if top <= 0:
        return 1.0
    smallest = values[:top]
    return float((smallest.sum() + (top - len(smallest)) * 1.0) / top)


def dbscan(distances: scipy.sparse.spmatrix | np.ndarray, eps: float,
           min_samples: int = 4) -> np.ndarray:
    """DBSCAN with a precomputed (sparse or dense) distance matrix; outliers get -1.

    Only stored entries of a sparse matrix can be neighbours, so the caller must store every
    pair within eps, including exact zeros (duplicates and the diagonal).

    Args:
        distances: (N, N) distances.
        eps: neighbourhood radius (pairs with distance <= eps are neighbours).
        min_samples: neighbours, the point itself included, that make a core point.

    Returns:
        (N,) int64 labels 0..C-1 in order of discovery, -1 for outliers.
    """
    labels = sklearn.cluster.DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed",
                                    n_jobs=1).fit_predict(distances)
    return labels.astype(np.int64)


def kmeans(features: np.ndarray, num_clusters: int, seed: int = 0) -> np.ndarray:
    """k-means labels (the paper's Table 4 alternative to DBSCAN): every point gets a cluster.

    Args:
        features: (N, d) features.
        num_clusters: k, clamped to N.
        seed: k-means++ initialisation seed.

    Returns:
        (N,) int64 labels in 0..k-1.
    """
    k = max(1, min(int(num_clusters), len(features)))
    model = sklearn.cluster.KMeans(n_clusters=k, n_init=1, random_state=seed)
    labels = model.fit_predict(np.asarray(features, np.float32))
    # Renumber by first appearance so that equal partitions give equal label arrays.
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int64)
