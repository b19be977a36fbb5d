"""Diagnostics against true train labels (MPLP, pseudo labels) for the researcher; never trained on.

`mplp_counts` runs inside the distributed step and gives per-example counts whose sums over an
epoch (all replicas and batches together) make exact ratios; `mplp_precision_recall` turns
those sums into precision and recall on the host. `pseudo_label_quality` scores one round of
self-paced clustering from the sparse contingency table, so it runs on millions of labels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow as tf

MPLP_COUNT_NAMES = ("true_positive", "predicted", "relevant")


def mplp_counts(targets: tf.Tensor, indices: tf.Tensor,
                slot_pids: tf.Tensor) -> dict[str, tf.Tensor]:
    """Per-example counts of MPLP's predicted positives against the true identities.

    The anchor's own slot (always a target) is left out of every count. Usable inside a
    tf.function and in the replica context of `strategy.run`.

    Args:
        targets: (B, N) multi-hot MPLP targets over the memory slots, any real dtype;
            entries > 0 are predicted positives.
        indices: (B,) int memory slot of each anchor.
        slot_pids: (N,) int true identity of every slot.

    Returns:
        {'true_positive', 'predicted', 'relevant'}: float32 (B,) tensors, the predicted
        positives that share the anchor's identity, all predicted positives, and the other
        slots of the anchor's identity.

    Raises:
        ValueError: if the ranks, or the slot counts of targets and slot_pids, do not match.
    """
    targets = tf.convert_to_tensor(targets)
    indices = tf.convert_to_tensor(indices)
    slot_pids = tf.convert_to_tensor(slot_pids)
    if targets.shape.rank != 2 or indices.shape.rank != 1 or slot_pids.shape.rank != 1:
        raise ValueError(f"expected targets (B, N), indices (B,) and slot_pids (N,); got shapes "
                         f"{targets.shape}, {indices.shape} and {slot_pids.shape}")
    if not targets.shape[1:].is_compatible_with(slot_pids.shape):
        raise ValueError(f"targets cover {targets.shape[1]} slots but slot_pids has "
                         f"{slot_pids.shape[0]}")
    not_own = tf.logical_not(tf.one_hot(indices, tf.shape(slot_pids)[0], on_value=True,
                                        off_value=False, dtype=tf.bool))
    predicted = tf.logical_and(targets > 0, not_own)
    same_pid = tf.equal(slot_pids[tf.newaxis, :], tf.gather(slot_pids, indices)[:, tf.newaxis])
    relevant = tf.logical_and(same_pid, not_own)

    def count(mask):
        return tf.reduce_sum(tf.cast(mask, tf.float32), axis=1)

    return {"true_positive": count(tf.logical_and(predicted, same_pid)),
            "predicted": count(predicted),
            "relevant": count(relevant)}


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def mplp_precision_recall(counts: Mapping[str, float]) -> dict[str, float]:
    """MPLP precision and recall from mplp_counts summed over an epoch.

    Args:
        counts: {'true_positive', 'predicted', 'relevant'}: sums of the mplp_counts values.

    Returns:
        {'mplp/precision': tp / predicted, 'mplp/recall': tp / relevant}, each 0 when its
        denominator is 0.

    Raises:
        KeyError: if a count is missing.
    """
    missing = [name for name in MPLP_COUNT_NAMES if name not in counts]
    if missing:
        raise KeyError(f"counts lack {missing}; expected the keys {list(MPLP_COUNT_NAMES)}")
    return {"mplp/precision": _ratio(counts["true_positive"], counts["predicted"]),
            "mplp/recall": _ratio(counts["true_positive"], counts["relevant"])}


def _pairs(sizes: np.ndarray) -> int:
    """Sum of (n choose 2) over the sizes."""
    sizes = sizes.astype(np.int64)
    return int(np.sum(sizes * (sizes - 1) // 2))


def _entropy(sizes: np.ndarray) -> float:
    """Entropy (nats) of the distribution given by the counts `sizes`."""
    shares = sizes[sizes > 0] / sizes.sum()
    return float(-np.sum(shares * np.log(shares)))


def _nmi(cell_sizes: np.ndarray, cell_rows: np.ndarray, cell_columns: np.ndarray,
         row_sizes: np.ndarray, column_sizes: np.ndarray) -> float:
    """sklearn's normalized_mutual_info_score (arithmetic mean), from a sparse contingency table.

    sklearn recomputes the table with several sorts of all N labels, which takes most of the
    time at millions of labels; its limit cases are kept (1 when both sides have one class,
    0 when the mutual information is 0). Rows and columns of size 0 are ignored.
    """
    if np.count_nonzero(row_sizes) == np.count_nonzero(column_sizes) == 1:
        return 1.0
    total = float(cell_sizes.sum())
    shares = cell_sizes / total
    outer = row_sizes[cell_rows].astype(np.float64) * column_sizes[cell_columns]
    terms = shares * (np.log(cell_sizes) - np.log(outer) + np.log(total))
    terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)
    mutual_information = max(float(terms.sum()), 0.0)
    if mutual_information == 0.0:
        return 0.0
    mean_entropy = (_entropy(row_sizes) + _entropy(column_sizes)) / 2
    return mutual_information / max(mean_entropy, np.finfo(np.float64).eps)


def pseudo_label_quality(pseudo_labels: np.ndarray, true_labels: np.ndarray) -> dict[str, float]:
    """Quality of one round of pseudo labels against the true identities.

    Args:
        pseudo_labels: (N,) int cluster of each sample, negative = outlier.
        true_labels: (N,) int true person id of each sample.

    Returns:
        Floats keyed
        'cluster/num_clusters': distinct clusters;
        'cluster/outlier_fraction': share of samples without a cluster;
        'cluster/purity': share of clustered samples whose cluster's majority identity is
            theirs;
        'cluster/nmi': normalised mutual information (arithmetic mean of the entropies, as
            sklearn's normalized_mutual_info_score) between the clustered samples' clusters
            and identities;
        'cluster/pair_precision': of the pairs of samples in one cluster, the share with one
            identity;
        'cluster/pair_recall': of the pairs of samples with one identity, outliers included,
            the share placed in one cluster;
        'cluster/ids_per_cluster': mean number of identities in a cluster;
        'cluster/clusters_per_id': mean number of clusters that an identity's clustered
            samples fall into, over identities with a clustered sample.
        Every value except outlier_fraction is 0 when nothing is clustered, and a ratio is 0
        when it has no pairs to count.

    Raises:
        ValueError: if the inputs are not 1-D of one length.
    """
    pseudo_labels = np.asarray(pseudo_labels)
    true_labels = np.asarray(true_labels)
    if pseudo_labels.ndim != 1 or pseudo_labels.shape != true_labels.shape:
        raise ValueError(f"pseudo_labels {pseudo_labels.shape} and true_labels "
                         f"{true_labels.shape} must be 1-D of one length")
    clustered = pseudo_labels >= 0
    _, truth_codes, identity_sizes = np.unique(true_labels, return_inverse=True,
                                               return_counts=True)
    scalars = dict.fromkeys(["cluster/num_clusters", "cluster/purity", "cluster/nmi",
                             "cluster/pair_precision", "cluster/pair_recall",
                             "cluster/ids_per_cluster", "cluster/clusters_per_id"], 0.0)
    scalars["cluster/outlier_fraction"] = float(1.0 - clustered.mean()) if len(clustered) else 0.0
    if not clustered.any():
        return scalars
    predicted, truth = pseudo_labels[clustered], truth_codes[clustered]
    _, cluster_codes, cluster_sizes = np.unique(predicted, return_inverse=True,
                                                return_counts=True)
    # The nonzero cells of the cluster x identity contingency table, sorted by cluster.
    cells, cell_sizes = np.unique(cluster_codes.astype(np.int64) * len(identity_sizes) + truth,
                                  return_counts=True)
    cell_clusters, cell_identities = np.divmod(cells, len(identity_sizes))
    cluster_starts = np.flatnonzero(np.diff(cell_clusters, prepend=-1))
    clustered_identity_sizes = np.bincount(truth, minlength=len(identity_sizes))
    same_both = _pairs(cell_sizes)
    scalars.update({
        "cluster/num_clusters": float(len(cluster_sizes)),
        "cluster/purity": float(np.maximum.reduceat(cell_sizes, cluster_starts).sum()
                                / len(predicted)),
        "cluster/nmi": _nmi(cell_sizes, cell_clusters, cell_identities, cluster_sizes,
                            clustered_identity_sizes),
        "cluster/pair_precision": _ratio(same_both, _pairs(cluster_sizes)),
        "cluster/pair_recall": _ratio(same_both, _pairs(identity_sizes)),
        "cluster/ids_per_cluster": float(len(cells) / len(cluster_sizes)),
        "cluster/clusters_per_id": float(len(cells) / np.count_nonzero(clustered_identity_sizes)),
    })
    return scalars
