"""One self-paced clustering round of training: features -> pseudo labels, usable or not."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlc_tf import config as config_lib
from mlc_tf.clustering import assign_pseudo_labels


def pseudo_labels(features: np.ndarray, cluster: config_lib.ClusterConfig, *, seed: int,
                  eps: float | None = None,
                  verbose: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Clusters the training features with the configured clusterer.

    Args:
        features: (N, D) L2-normalised features (memory rows or re-extracted).
        cluster: clustering options (clustering must not be 'none').
        seed: seed of approximate neighbours and k-means.
        eps: DBSCAN eps found by the rho rule in an earlier round; it is kept for the later
            rounds (spec §6.4). None in the first round.
        verbose: per-stage timing lines.

    Returns:
        (labels (N,) int64 with -1 for outliers, stats dict of assign_pseudo_labels, whose
        'eps' is the eps used).

    Raises:
        ValueError: clustering='none', or features that are not finite.
    """
    if cluster.clustering == "none":
        raise ValueError("clustering='none' has no pseudo labels")
    options: dict[str, Any] = dict(method=cluster.clustering, seed=seed, verbose=verbose)
    if cluster.clustering == "kmeans":
        options["num_clusters"] = min(cluster.num_clusters, len(features))
    else:
        fixed = cluster.eps_mode == "fixed" or eps is not None
        options.update(k1=cluster.k1, k2=cluster.k2, min_samples=cluster.min_samples,
                       variant=cluster.jaccard_variant, knn_backend=cluster.knn_backend,
                       eps_mode="fixed" if fixed else "rho", rho=cluster.rho,
                       eps=cluster.eps if eps is None else eps)
    return assign_pseudo_labels(features, **options)


def usable(labels: np.ndarray, batch_size: int) -> bool:
    """Whether pseudo labels can train the joint loss: two classes and one full PK batch."""
    labels = np.asarray(labels)
    clustered = labels >= 0
    return bool(np.unique(labels[clustered]).size >= 2 and clustered.sum() >= batch_size)
