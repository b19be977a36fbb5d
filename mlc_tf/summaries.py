"""Host-side metric averaging, TensorBoard scalars and clustering diagnostics for training."""

from __future__ import annotations

import collections
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from sklearn import metrics as sk_metrics


class MeanTracker:
    """Running means of named scalars over the steps of an epoch."""

    def __init__(self):
        self._sums: dict[str, float] = collections.defaultdict(float)
        self._counts: dict[str, int] = collections.defaultdict(int)

    def update(self, values: Mapping[str, float]) -> None:
        """Adds one value per name."""
        for name, value in values.items():
            self._sums[name] += float(value)
            self._counts[name] += 1

    def result(self) -> dict[str, float]:
        """{name: mean} of everything seen since the last reset."""
        return {name: self._sums[name] / self._counts[name] for name in self._sums}

    def reset(self) -> None:
        """Forgets everything."""
        self._sums.clear()
        self._counts.clear()


def write_scalars(writer: tf.summary.SummaryWriter, values: Mapping[str, float],
                  step: int) -> None:
    """Writes {prefixed name: value} at `step` and flushes (an epoch is long; lose nothing).

    tf.summary.scalar needs the tensorboard package; the events it writes are these same
    tagged tensors, so we write them with core TF and need TensorBoard only to view them.
    """
    metadata = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=metadata)
    writer.flush()


def cluster_diagnostics(pseudo_labels: np.ndarray, true_labels: np.ndarray) -> dict[str, float]:
    """Quality of pseudo labels against the true identities (a diagnostic, never trained on).

    Args:
        pseudo_labels: (N,) int, -1 = outlier.
        true_labels: (N,) int true person ids.

    Returns:
        {'cluster/num_clusters', 'cluster/outlier_fraction', 'cluster/purity', 'cluster/nmi'}.
        Purity is the fraction of clustered samples whose cluster's majority identity is
        theirs; NMI compares the clustered samples' labels with their identities. Both are 0
        when nothing is clustered.
    """
    pseudo_labels = np.asarray(pseudo_labels)
    true_labels = np.asarray(true_labels)
    clustered = pseudo_labels >= 0
    num_clusters = int(np.unique(pseudo_labels[clustered]).size)
    purity = nmi = 0.0
    if clustered.any():
        predicted, truth = pseudo_labels[clustered], true_labels[clustered]
        _, truth_codes = np.unique(truth, return_inverse=True)
        _, predicted_codes = np.unique(predicted, return_inverse=True)
        table = np.zeros((predicted_codes.max() + 1, truth_codes.max() + 1), np.int64)
        np.add.at(table, (predicted_codes, truth_codes), 1)
        purity = float(table.max(axis=1).sum() / clustered.sum())
        nmi = float(sk_metrics.normalized_mutual_info_score(truth, predicted))
    return {"cluster/num_clusters": float(num_clusters),
            "cluster/outlier_fraction": float(1.0 - clustered.mean()) if len(clustered) else 0.0,
            "cluster/purity": purity,
            "cluster/nmi": nmi}
