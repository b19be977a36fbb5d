"""One self-paced clustering round of training: features -> pseudo labels, usable or not."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlc_tf import config as config_lib
from mlc_tf.clustering import assign_pseudo_labels


def camera_normalized(features: np.ndarray, camids: np.ndarray) -> np.ndarray:
    """Features minus the mean feature of their camera, L2-normalised again.

    Args:
        features: (N, D) features.
        camids: (N,) camera of each feature.

    Returns:
        float32 (N, D) unit rows (a row equal to its camera's mean stays zero).
    """
    features = np.array(features, np.float32)
    camids = np.asarray(camids)
    for camera in np.unique(camids):
        rows = camids == camera
        features[rows] -= features[rows].mean(axis=0)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return features / np.maximum(norms, 1e-12)


def pseudo_labels(features: np.ndarray, cluster: config_lib.ClusterConfig, *, seed: int,
                  camids: np.ndarray | None = None, eps: float | None = None,
                  verbose: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Clusters the training features with the configured clusterer.

    Args:
        features: (N, D) L2-normalised features (memory rows or re-extracted).
        cluster: clustering options (clustering must not be 'none').
        camids: (N,) cameras; needed with cluster.camera_normalize.
        seed: seed of approximate neighbours and k-means.
        eps: DBSCAN eps found by the rho rule in an earlier round; it is kept for the later
            rounds (spec §6.4). None in the first round.
        verbose: per-stage timing lines.

    Returns:
        (labels (N,) int64 with -1 for outliers, stats dict of assign_pseudo_labels, whose
        'eps' is the eps used).

    Raises:
        ValueError: clustering='none', camera_normalize without camids, or features that
            are not finite.
    """
    if cluster.clustering == "none":
        raise ValueError("clustering='none' has no pseudo labels")
    if cluster.camera_normalize:
        if camids is None:
            raise ValueError("camera_normalize needs the camera of every feature")
        features = camera_normalized(features, camids)
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
