"""k-reciprocal re-ranking for evaluation (Zhong et al. CVPR 2017) on the sparse Jaccard code."""

import numpy as np

from mlc_tf.clustering import jaccard, knn
from mlc_tf.clustering.pseudo_labels import check_features

# Query rows per block of the dense (Q, G) output.
_BLOCK_ROWS = 1024


def rerank_distances(query_features: np.ndarray, gallery_features: np.ndarray, k1: int = 20,
                     k2: int = 6, lambda_value: float = 0.3,
                     knn_backend: str = "exact") -> np.ndarray:
    """Zhong's re-ranked query x gallery distance: (1 - lambda) * Jaccard + lambda * original.

    As in Zhong's Python `re_ranking`: queries and gallery are ranked together; the original
    distance is the squared Euclidean distance divided by its row maximum over all Q + G points;
    the encoding uses those normalised distances ('zhong' weighting) with k1, round(k1/2) and
    the 2/3 rule, then local query expansion over the first k2 of the ranking; the Jaccard
    distance is taken between each query and every gallery item. Differences from the published
    code: the encoding is float32 and sparse (Zhong's is dense, float16 in some copies), and
    ties in the ranking go to the lower index (Zhong's argsort leaves them arbitrary).

    Args:
        query_features: (Q, d) features (L2-normalised by the caller, as for evaluation).
        gallery_features: (G, d) features.
        k1, k2: re-ranking parameters (clamped to Q + G - 1 and k1 + 1).
        lambda_value: weight of the original distance.
        knn_backend: neighbour backend; 'exact' (default) reproduces the published algorithm,
            'pynndescent' estimates the row maximum and may miss neighbours.

    Returns:
        (Q, G) float32 distances.

    Raises:
        ValueError: on features that are not finite or whose dimensions differ.
    """
    query = check_features(query_features)
    gallery = check_features(gallery_features)
    if query.shape[1] != gallery.shape[1]:
        raise ValueError(f"query and gallery dimensions differ: {query.shape[1]} vs "
                         f"{gallery.shape[1]}")
    x = np.concatenate([query, gallery])
    num_query, num_all = len(query), len(x)
    k1 = max(0, min(k1, num_all - 1))
    k2 = max(1, min(k2, k1 + 1))
    nbrs = knn.neighbours(x, jaccard.required_list_length(k1), knn_backend)
    encoding = jaccard.query_expand(jaccard.encode(x, nbrs, k1, "zhong"), nbrs.indices, k2)
    pairs = jaccard.jaccard(encoding, rows=np.arange(num_query)).tocoo()
    keep = pairs.col >= num_query
    rows, cols, values = pairs.row[keep], pairs.col[keep] - num_query, pairs.data[keep]
    order = np.argsort(rows, kind="stable")
    bounds = np.searchsorted(rows[order], np.arange(0, num_query + _BLOCK_ROWS, _BLOCK_ROWS))
    g_norm = np.einsum("ij,ij->i", gallery, gallery)
    q_norm = np.einsum("ij,ij->i", query, query)
    row_max = np.maximum(nbrs.row_max[:num_query], np.finfo(np.float32).tiny)
    out = np.empty((num_query, len(gallery)), np.float32)
    for block, start in enumerate(range(0, num_query, _BLOCK_ROWS)):
        stop = min(num_query, start + _BLOCK_ROWS)
        products = query[start:stop] @ gallery.T
        original = q_norm[start:stop, None] + g_norm[None, :] - 2.0 * products
        original = np.maximum(original, 0.0) / row_max[start:stop, None]
        # Pairs that share no column of the encoding are at Jaccard distance 1.
        distance = np.ones((stop - start, len(gallery)), np.float32)
        held = order[bounds[block]:bounds[block + 1]]
        distance[rows[held] - start, cols[held]] = values[held]
        out[start:stop] = (1.0 - lambda_value) * distance + lambda_value * original
    return out
