"""Memory bank of per-sample L2-normalised features with a running-average update (spec §4)."""

from __future__ import annotations

import tensorflow as tf


def alpha_for_epoch(epoch: int, total_epochs: int, max_alpha: float = 0.5) -> float:
    """Momentum of the memory update in an epoch: grows linearly from 0 (spec §4).

    MMCL hard-codes 0.5 * epoch / 60; we divide by the configured number of epochs.

    Args:
        epoch: 0-based epoch; alpha is held constant within it.
        total_epochs: number of training epochs E.
        max_alpha: the value alpha would reach at epoch E.

    Returns:
        max_alpha * epoch / total_epochs (0 in epoch 0, so every slot is overwritten by
        its first visit).

    Raises:
        ValueError: if total_epochs is not positive or epoch is negative.
    """
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be positive, got {total_epochs}")
    if epoch < 0:
        raise ValueError(f"epoch must be non-negative, got {epoch}")
    return max_alpha * epoch / total_epochs


def cross_replica_concat(tensor: tf.Tensor) -> tf.Tensor:
    """Concatenates a per-replica tensor along axis 0 over all replicas, in replica order.

    In the replica context of a strategy with several replicas this is `all_gather`
    (differentiable: gradients are summed across replicas and sliced back). With one
    replica, no strategy, or in cross-replica context, the tensor comes back unchanged.

    Args:
        tensor: (B_local, ...) tensor of this replica.

    Returns:
        (B_global, ...) tensor, identical on every replica.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    return context.all_gather(tensor, axis=0)


def similarities(features: tf.Tensor, memory: tf.Tensor) -> tf.Tensor:
    """Logits of a batch against every slot; the memory is a constant (spec §4).

    Args:
        features: (B, D) L2-normalised features (any float dtype; computed in float32).
        memory: (N, D) bank (its variable, or a tensor).

    Returns:
        (B, N) float32 cosine similarities; gradients flow into `features` only.
    """
    memory = tf.stop_gradient(tf.convert_to_tensor(memory, tf.float32))
    return tf.matmul(tf.cast(features, tf.float32), memory, transpose_b=True)


def camera_centred(memory: tf.Tensor, cameras: tf.Tensor, num_cameras: int) -> tf.Tensor:
    """Memory rows minus the mean row of their camera, L2-normalised again.

    Args:
        memory: (N, D) bank (its variable, or a tensor); a constant.
        cameras: (N,) camera of every slot in [0, num_cameras).
        num_cameras: number of cameras.

    Returns:
        (N, D) float32 unit rows (a row equal to its camera's mean stays zero).
    """
    memory = tf.stop_gradient(tf.convert_to_tensor(memory, tf.float32))
    means = tf.math.unsorted_segment_mean(memory, cameras, num_cameras)
    return tf.math.l2_normalize(memory - tf.gather(means, cameras), axis=1)


def _last_occurrence(indices: tf.Tensor) -> tf.Tensor:
    """For each position, the last position in the batch holding the same index."""
    same = tf.equal(indices[:, None], indices[None, :])
    positions = tf.range(tf.shape(indices)[0])
    return tf.reduce_max(tf.where(same, positions[None, :], -1), axis=1)


class MemoryBank(tf.Module):
    """An (N, D) float32 bank with one L2-normalised feature per training sample.

    The bank is zero-initialised (spec A2); with alpha = 0 in epoch 0 every slot is
    overwritten by its first visit. Create it inside `strategy.scope()` when training
    under a strategy: the variable is then mirrored with ONLY_FIRST_REPLICA aggregation,
    and `update` keeps the copies identical by applying the all-gathered global batch on
    every replica. Checkpoint it as `tf.train.Checkpoint(memory=bank)` (or `bank.variable`).

    Attributes:
        variable: the non-trainable (num_slots, dim) float32 tf.Variable 'memory_bank'.
        num_slots: N, the number of training samples (slot = index in `dataset.train`).
        dim: D, the feature length.
    """

    def __init__(self, num_slots: int, dim: int):
        """Creates a zero bank.

        Args:
            num_slots: number of memory slots N.
            dim: feature length D.

        Raises:
            ValueError: if num_slots or dim is not positive.
        """
        if num_slots < 1 or dim < 1:
            raise ValueError(f"num_slots and dim must be positive, got {num_slots}, {dim}")
        super().__init__(name="memory_bank")
        self.num_slots = num_slots
        self.dim = dim
        self.variable = tf.Variable(
            tf.zeros((num_slots, dim), tf.float32),
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            name="memory_bank",
        )

    def update(self, features: tf.Tensor, indices: tf.Tensor, alpha: float | tf.Tensor) -> None:
        """Running-average write M[i] <- l2norm(alpha * M[i] + (1 - alpha) * f) (spec §4).

        Callable with no strategy, in cross-replica context, or in the replica context of
        `strategy.run`: there the features and indices of all replicas are all-gathered
        first, so every replica copy receives the whole global batch in one scatter.

        Duplicate indices: the PK sampler repeats the slots of clusters smaller than K (the
        epoch sampler never repeats one). Every occurrence writes the row computed from the
        *last* occurrence's feature and the old memory row, which keeps the scatter
        independent of its order (MMCL instead applies duplicates one after the other).

        Args:
            features: (B_local, D) L2-normalised features of this replica; not differentiated.
            indices: (B_local,) integer memory slots of those features.
            alpha: momentum in [0, 1], usually `alpha_for_epoch(...)`.
        """
        features = cross_replica_concat(tf.stop_gradient(tf.cast(features, tf.float32)))
        # int64 because collectives on GPUs handle it without host-memory placement.
        indices = cross_replica_concat(tf.cast(indices, tf.int64))
        alpha = tf.cast(alpha, tf.float32)
        old_rows = tf.gather(self.variable, indices)
        rows = tf.math.l2_normalize(alpha * old_rows + (1.0 - alpha) * features, axis=1)
        rows = tf.gather(rows, _last_occurrence(indices))
        # scatter_update, not scatter_nd_update: the latter is not implemented for
        # mirrored variables.
        self.variable.scatter_update(tf.IndexedSlices(rows, indices))
