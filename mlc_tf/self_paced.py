"""SC: the self-paced clustering state, one reclustering round, and where labels come from."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf

from mlc_tf import config as config_lib
from mlc_tf import diagnostics
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


def class_centroids(rows: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The L2-normalised mean row of each class (a class without rows, or with a zero mean,
    gets a zero row).

    Args:
        rows: (N, D) features, e.g. the memory bank.
        labels: (N,) classes in [0, num_classes), -1 = none.
        num_classes: C.

    Returns:
        float32 (C, D).
    """
    rows = np.asarray(rows, np.float32)
    labels = np.asarray(labels)
    sums = np.zeros((num_classes, rows.shape[1]), np.float64)
    np.add.at(sums, labels[labels >= 0], rows[labels >= 0])
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def pseudo_labels(features: np.ndarray, cluster: config_lib.ClusterConfig, *, seed: int,
                  camids: np.ndarray | None = None, eps: float | None = None,
                  independence: float | None = None,
                  verbose: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Clusters the training features with the configured clusterer.

    Args:
        features: (N, D) L2-normalised features (memory rows or re-extracted).
        cluster: clustering options (clustering must not be 'none').
        camids: (N,) cameras; needed with cluster.camera_normalize.
        seed: seed of approximate neighbours and k-means.
        eps: DBSCAN eps found by the rho rule in an earlier round; it is kept for the later
            rounds (spec §6.4). None in the first round.
        independence: the reliability criterion's threshold from an earlier round, or None.
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
                       knn_recall_floor=cluster.knn_recall_floor,
                       reliability_gap=cluster.reliability_gap,
                       independence_threshold=independence,
                       eps_mode="fixed" if fixed else "rho", rho=cluster.rho,
                       eps=cluster.eps if eps is None else eps)
    return assign_pseudo_labels(features, **options)


def num_classes(labels: np.ndarray) -> int:
    """Classes of labels in [0, C) with -1 for outliers: C, or 0 when none is labelled."""
    labels = np.asarray(labels)
    return int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0


def usable(labels: np.ndarray, batch_size: int) -> bool:
    """Whether pseudo labels can train the joint loss: two classes and one full PK batch."""
    labels = np.asarray(labels)
    clustered = labels >= 0
    return bool(np.unique(labels[clustered]).size >= 2 and clustered.sum() >= batch_size)


class ClusterState:
    """The labels the joint losses train on, checkpointed (build it in strategy scope).

    Attributes:
        labels: (N,) int64 variable, the class of each training sample, -1 = outlier or none.
        eps: DBSCAN eps fixed by the rho rule at the first clustering (-1 = none yet).
        independence: the reliability criterion's threshold fixed at the first clustering
            (-1 = none yet).
    """

    def __init__(self, num_slots: int):
        self.labels = tf.Variable(np.full(num_slots, -1, np.int64), trainable=False,
                                  name="pseudo_labels")
        self.eps = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="cluster_eps")
        self.independence = tf.Variable(-1.0, dtype=tf.float64, trainable=False,
                                        name="cluster_independence")

    @property
    def num_classes(self) -> int:
        """Classes of the current labels (0 = none: no joint losses)."""
        return num_classes(self.labels.numpy())

    def fixed_eps(self) -> float | None:
        """The eps an earlier round fixed, or None."""
        eps = float(self.eps.numpy())
        return eps if eps > 0 else None

    def fixed_independence(self) -> float | None:
        """The reliability threshold an earlier round fixed, or None."""
        independence = float(self.independence.numpy())
        return independence if independence >= 0 else None

    def assign(self, round_: Round) -> None:
        """Takes the labels (and eps, and the reliability threshold) of a round."""
        self.labels.assign(np.asarray(round_.labels, np.int64))
        if round_.eps is not None:
            self.eps.assign(round_.eps)
        if round_.independence is not None:
            self.independence.assign(round_.independence)

    def objects(self) -> dict[str, tf.Variable]:
        """{checkpoint name: variable}, to merge into the objects saved."""
        return {"pseudo_labels": self.labels, "cluster_eps": self.eps,
                "cluster_independence": self.independence}


@dataclasses.dataclass(frozen=True)
class Round:
    """The outcome of one labelling round.

    Attributes:
        labels: (N,) int64 labels to train on, -1 = not trained by the joint losses (all -1
            when the round gave nothing usable).
        scalars: TensorBoard scalars ('cluster/...'), diagnostics against true ids included.
        eps: the DBSCAN eps used, or None.
        independence: the reliability criterion's threshold used, or None.
    """

    labels: np.ndarray
    scalars: dict[str, float]
    eps: float | None = None
    independence: float | None = None

    @property
    def num_classes(self) -> int:
        return num_classes(self.labels)

    @property
    def usable(self) -> bool:
        """Whether the labels train the joint losses (recluster keeps only usable ones)."""
        return self.num_classes > 0


def recluster(features: np.ndarray, cluster: config_lib.ClusterConfig, *, batch_size: int,
              seed: int, camids: np.ndarray | None = None, eps: float | None = None,
              independence: float | None = None, true_labels: np.ndarray | None = None,
              verbose: bool = False) -> Round:
    """One SC round: features -> pseudo labels, kept only if they can fill PK batches.

    Args:
        features, cluster, seed, camids, eps, independence, verbose: as pseudo_labels.
        batch_size: the PK batch the labels must fill (see usable).
        true_labels: (N,) true identities, for the diagnostics only; None when unknown.

    Returns:
        the Round; its scalars hold the clustering's diagnostics even when unusable.
    """
    labels, stats = pseudo_labels(features, cluster, seed=seed, camids=camids, eps=eps,
                                  independence=independence, verbose=verbose)
    scalars = {"cluster/seconds": float(stats["seconds"])}
    if true_labels is not None:
        scalars.update(diagnostics.pseudo_label_quality(labels, true_labels))
    else:
        scalars["cluster/num_clusters"] = float(num_classes(labels))
        scalars["cluster/outlier_fraction"] = float(np.mean(labels < 0))
    if stats.get("eps") is not None:
        scalars["cluster/eps"] = float(stats["eps"])
    if stats.get("knn_recall") is not None:
        scalars["cluster/knn_recall"] = float(stats["knn_recall"])
    if stats.get("num_unreliable") is not None:
        scalars["cluster/unreliable_fraction"] = stats["num_unreliable"] / len(labels)
    ok = usable(labels, batch_size)
    scalars["cluster/usable"] = float(ok)
    kept = labels.astype(np.int64) if ok else np.full(len(labels), -1, np.int64)
    return Round(kept, scalars, stats.get("eps"), stats.get("independence_threshold"))


class ClusteringLabels:
    """Pseudo labels from self-paced clustering of the training features (MLC)."""

    def __init__(self, cluster: config_lib.ClusterConfig, *, batch_size: int,
                 camids: np.ndarray, true_labels: np.ndarray | None = None):
        self.cluster = cluster
        self.batch_size = batch_size
        self.camids = np.asarray(camids)
        self.true_labels = true_labels

    def next_round(self, features: Callable[[], np.ndarray], *, seed: int,
                   eps: float | None, independence: float | None = None,
                   verbose: bool = False) -> Round:
        """Clusters features() (called once) into a Round."""
        return recluster(features(), self.cluster, batch_size=self.batch_size, seed=seed,
                         camids=self.camids, eps=eps, independence=independence,
                         true_labels=self.true_labels, verbose=verbose)


class TrueLabels:
    """The dataset's true train identities, numbered 0..C-1 (supervised training)."""

    def __init__(self, pids: np.ndarray):
        _, self.labels = np.unique(np.asarray(pids), return_inverse=True)

    def next_round(self, features: Callable[[], np.ndarray], *, seed: int,
                   eps: float | None, independence: float | None = None,
                   verbose: bool = False) -> Round:
        """The true labels; features is never called."""
        del features, seed, eps, independence, verbose
        labels = self.labels.astype(np.int64)
        return Round(labels, {"cluster/num_clusters": float(num_classes(labels))})


LabelSource = ClusteringLabels | TrueLabels


def identities_known(pids: np.ndarray) -> bool:
    """Whether every training sample has its true identity (no negative pid)."""
    pids = np.asarray(pids)
    return bool(pids.size) and bool((pids >= 0).all())


def label_source(config: config_lib.Config, pids: np.ndarray,
                 camids: np.ndarray) -> LabelSource | None:
    """Where a run's labels come from: true ids (supervised), clustering, or none (ML only).

    Args:
        config: the run configuration.
        pids: (N,) true identities of the training samples; negative where unknown. Used
            for training only when config.train.supervised, else for diagnostics.
        camids: (N,) cameras of the training samples.

    Raises:
        ValueError: supervised training without a true identity for every sample.
    """
    pids = np.asarray(pids)
    known = identities_known(pids)
    if config.train.supervised:
        if not known:
            raise ValueError("--supervised needs the true identity of every training image")
        return TrueLabels(pids)
    if config.cluster.clustering == "none":
        return None
    return ClusteringLabels(config.cluster, batch_size=config.data.batch_size, camids=camids,
                            true_labels=pids if known else None)
