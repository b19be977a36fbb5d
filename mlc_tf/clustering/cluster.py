"""DBSCAN on sparse precomputed Jaccard distances (fixed or rho-rule eps), SpCL's cluster
reliability criterion, and k-means."""

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


def _with_singletons(labels: np.ndarray) -> np.ndarray:
    """Labels with each outlier (-1) given a class of its own."""
    labels = np.array(labels, np.int64)
    outliers = labels < 0
    labels[outliers] = labels.max(initial=-1) + 1 + np.arange(outliers.sum())
    return labels


def _member_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per point i: IoU of {j: a_j = a_i} and {j: b_j = b_i} (labels >= 0)."""
    _, joint = np.unique(a * (b.max() + 1) + b, return_inverse=True)
    inter = np.bincount(joint)[joint]
    return inter / (np.bincount(a)[a] + np.bincount(b)[b] - inter)


def reliable_clusters(labels: np.ndarray, tight: np.ndarray, loose: np.ndarray,
                      independence_threshold: float | None = None) -> tuple[np.ndarray, float]:
    """SpCL's cluster reliability criterion: keeps independent clusters' compact cores.

    For each point, with its cluster I at eps and I_tight, I_loose its clusters at eps -/+ the
    gap (an outlier is a class of its own), compactness is 1 - IoU(I, I_tight) and independence
    1 - IoU(I, I_loose), lower meaning more reliable. A cluster scores the smallest value of its
    members. A cluster whose independence exceeds the threshold is dropped; of the others only
    the members as compact as the cluster's score (the largest tight core) are kept. The
    threshold, when not given, is the independence of the cluster at position round(0.9 C) of
    the C clusters with more than one member in ascending order, as SpCL sets it in its first
    round and keeps it after (yxgeee/SpCL examples/spcl_train_usl.py).

    Args:
        labels, tight, loose: (N,) DBSCAN labels at eps, eps - gap and eps + gap, -1 = outlier.
        independence_threshold: the threshold an earlier round fixed, or None to set it here.

    Returns:
        (labels (N,) int64 with dropped members as -1 and clusters renumbered 0..C'-1 in their
        old order, the independence threshold used).
    """
    labels = np.asarray(labels, np.int64)
    clustered = labels >= 0
    num_clusters = int(labels.max(initial=-1)) + 1
    if num_clusters == 0:
        return labels.copy(), (1.0 if independence_threshold is None
                               else float(independence_threshold))
    points = _with_singletons(labels)
    compactness = 1.0 - _member_iou(points, _with_singletons(tight))
    independence = 1.0 - _member_iou(points, _with_singletons(loose))
    cluster_compactness = np.full(num_clusters, np.inf)
    cluster_independence = np.full(num_clusters, np.inf)
    np.minimum.at(cluster_compactness, labels[clustered], compactness[clustered])
    np.minimum.at(cluster_independence, labels[clustered], independence[clustered])
    if independence_threshold is None:
        scores = np.sort(cluster_independence[np.bincount(labels[clustered]) > 1])
        if len(scores) == 0:
            scores = np.sort(cluster_independence)
        independence_threshold = float(scores[min(len(scores) - 1,
                                                  int(np.round(0.9 * len(scores))))])
    own = np.maximum(labels, 0)
    keep = (clustered & (cluster_independence[own] <= independence_threshold)
            & (compactness <= cluster_compactness[own]))
    kept = np.full(len(labels), -1, np.int64)
    kept[keep] = np.unique(labels[keep], return_inverse=True)[1]
    return kept, float(independence_threshold)


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
