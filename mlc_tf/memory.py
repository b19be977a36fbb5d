"""Memory bank of per-sample L2-normalised features with a running-average update (spec §4)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mlc_tf.clustering import knn

# Storage dtypes of the bank; every read is cast to float32 and every write computed in it.
MEMORY_DTYPES = ("float32", "bfloat16", "float16")
# A narrow bank is cast to float32 in row blocks of about this many elements (64 MB as float32),
# so that no float32 copy of the whole bank exists.
_CAST_BLOCK_ELEMENTS = 1 << 24


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


def read_rows(memory: tf.Tensor, indices: tf.Tensor) -> tf.Tensor:
    """Rows of the bank as float32, whatever its storage dtype.

    Args:
        memory: (N, D) bank (its variable, or a tensor) of any float dtype.
        indices: (B,) integer slots.

    Returns:
        (B, D) float32 rows; no gradient reaches the memory.
    """
    return tf.stop_gradient(tf.cast(tf.gather(memory, indices), tf.float32))


def similarities(features: tf.Tensor, memory: tf.Tensor) -> tf.Tensor:
    """Logits of a batch against every slot; the memory is a constant (spec §4).

    A float32 bank is one matmul. A bfloat16 or float16 bank is cast to float32 a block of
    rows at a time, so the arithmetic is float32 while no float32 copy of the bank exists:
    the largest intermediates are (B, N) and one (block, D) block.

    Args:
        features: (B, D) L2-normalised features (any float dtype; computed in float32).
        memory: (N, D) bank (its variable, or a tensor) of any float dtype.

    Returns:
        (B, N) float32 cosine similarities; gradients flow into `features` only.
    """
    memory = tf.stop_gradient(tf.convert_to_tensor(memory))
    features = tf.cast(features, tf.float32)
    if memory.dtype == tf.float32:
        return tf.matmul(features, memory, transpose_b=True)
    block = max(1, _CAST_BLOCK_ELEMENTS // int(memory.shape[-1]))
    num_slots = tf.shape(memory)[0]
    num_blocks = (num_slots + block - 1) // block
    # Each block's (block, B) product is stacked along the slot axis, then transposed once.
    products = tf.TensorArray(tf.float32, size=num_blocks, infer_shape=False,
                              element_shape=tf.TensorShape([None, features.shape[0]]))

    def multiply_block(position, products):
        rows = tf.cast(memory[position * block:(position + 1) * block], tf.float32)
        return position + 1, products.write(position, tf.matmul(rows, features,
                                                                transpose_b=True))

    _, products = tf.while_loop(lambda position, _: position < num_blocks, multiply_block,
                                (tf.constant(0), products))
    result = tf.transpose(products.concat())
    return tf.ensure_shape(result, [features.shape[0], memory.shape[0]])


def cross_replica_concat(tensor: tf.Tensor) -> tf.Tensor:
    """Concatenates a per-replica tensor along axis 0 over all replicas, in replica order.

    In the replica context of a strategy with several replicas this is `all_gather`,
    differentiable: the gradient is summed across replicas and each replica keeps its own
    rows. Unlike `ReplicaContext.all_gather`'s own gradient, which gathers the row counts
    as int32, every collective here is float or int64, as NCCL needs on GPUs. With one
    replica, no strategy, or in cross-replica context, the tensor comes back unchanged.

    Args:
        tensor: (B_local, ...) tensor of this replica; float or int64.

    Returns:
        (B_global, ...) tensor, identical on every replica.

    Raises:
        TypeError: for an int32 tensor, which NCCL's collectives on GPUs do not take
            (TensorFlow keeps int32 in host memory there); cast it to int64 first.
    """
    tensor = tf.convert_to_tensor(tensor)
    if tensor.dtype == tf.int32:
        raise TypeError("cross_replica_concat got an int32 tensor; cast it to int64: GPU "
                        "collectives (NCCL) do not take int32")
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    if not tensor.dtype.is_floating:
        return context.all_gather(tensor, axis=0)

    @tf.custom_gradient
    def gather(local):
        def gradient(upstream):
            summed = context.all_reduce(tf.distribute.ReduceOp.SUM, upstream)
            sizes = context.all_gather(tf.shape(local, out_type=tf.int64)[:1], axis=0)
            start = tf.reduce_sum(sizes[:context.replica_id_in_sync_group])
            return summed[start:start + sizes[context.replica_id_in_sync_group]]

        return context.all_gather(local, axis=0), gradient

    return gather(tensor)


def camera_centred(memory: tf.Tensor, cameras: tf.Tensor, num_cameras: int) -> tf.Tensor:
    """Memory rows minus the mean row of their camera, L2-normalised again.

    Args:
        memory: (N, D) bank (its variable, or a tensor); a constant.
        cameras: (N,) camera of every slot in [0, num_cameras).
        num_cameras: number of cameras.

    Returns:
        (N, D) float32 unit rows (a row equal to its camera's mean stays zero).
    """
    memory = tf.stop_gradient(tf.cast(tf.convert_to_tensor(memory), tf.float32))
    means = tf.math.unsorted_segment_mean(memory, cameras, num_cameras)
    return tf.math.l2_normalize(memory - tf.gather(means, cameras), axis=1)


def _last_occurrence(indices: tf.Tensor) -> tf.Tensor:
    """For each position, the last position in the batch holding the same index."""
    same = tf.equal(indices[:, None], indices[None, :])
    positions = tf.range(tf.shape(indices)[0])
    return tf.reduce_max(tf.where(same, positions[None, :], -1), axis=1)


class MemoryBank(tf.Module):
    """An (N, D) bank with one L2-normalised feature per training sample.

    The bank is zero-initialised (spec A2); with alpha = 0 in epoch 0 every slot is
    overwritten by its first visit. Create it inside `strategy.scope()` when training
    under a strategy: the variable is then mirrored with ONLY_FIRST_REPLICA aggregation,
    and `update` keeps the copies identical by applying the all-gathered global batch on
    every replica. Checkpoint it as `tf.train.Checkpoint(memory=bank)` (or `bank.variable`).

    The storage dtype may be narrower than float32 (bfloat16 halves the bank); reads are
    cast to float32 and updates computed in float32, then rounded once when stored.

    With `graph_k` > 0 the bank also holds `neighbours`, the kNN graph MPLP's cycle check
    reads instead of ranking the candidates against the whole bank; `refresh_neighbours`
    recomputes it (between epochs), and `update` recomputes the lists of the slots it
    writes. It is not checkpointed.

    Attributes:
        variable: the non-trainable (num_slots, dim) tf.Variable 'memory_bank' of `dtype`.
        neighbours: (num_slots, graph_k) int64 tf.Variable: the graph_k nearest slots of
            every slot by cosine similarity, itself first; None when graph_k is 0.
        num_slots: N, the number of training samples (slot = index in `dataset.train`).
        dim: D, the feature length.
    """

    def __init__(self, num_slots: int, dim: int, *, dtype: str = "float32", graph_k: int = 0):
        """Creates a zero bank.

        Args:
            num_slots: number of memory slots N.
            dim: feature length D.
            dtype: storage dtype, one of MEMORY_DTYPES.
            graph_k: neighbours per slot of the kNN graph (itself included), in [0, N];
                0 = no graph.

        Raises:
            ValueError: if num_slots or dim is not positive, dtype is unknown or graph_k is
                outside [0, num_slots].
        """
        if num_slots < 1 or dim < 1:
            raise ValueError(f"num_slots and dim must be positive, got {num_slots}, {dim}")
        if dtype not in MEMORY_DTYPES:
            raise ValueError(f"memory dtype {dtype!r}; expected one of {MEMORY_DTYPES}")
        if not 0 <= graph_k <= num_slots:
            raise ValueError(f"graph_k must be in [0, num_slots={num_slots}], got {graph_k}")
        super().__init__(name="memory_bank")
        self.num_slots = num_slots
        self.dim = dim
        self.variable = tf.Variable(
            tf.zeros((num_slots, dim), dtype),
            trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            name="memory_bank",
        )
        self.neighbours = None if graph_k == 0 else tf.Variable(
            tf.zeros((num_slots, graph_k), tf.int64), trainable=False,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, name="memory_neighbours")

    def numpy(self) -> np.ndarray:
        """(N, D) float32 copy of the bank on the host."""
        return np.asarray(self.variable.numpy(), np.float32)

    def refresh_neighbours(self, backend: str = "auto", seed: int = 0) -> None:
        """Recomputes the kNN graph from the bank as it is now (call outside strategy.run).

        Args:
            backend: clustering.knn backend ('auto': exact TensorFlow search up to its FLOP
                budget or on a GPU, approximate beyond).
            seed: seed of an approximate search.

        Raises:
            ValueError: if the bank has no graph (graph_k 0).
        """
        if self.neighbours is None:
            raise ValueError("this memory bank has no kNN graph (graph_k=0)")
        graph_k = self.neighbours.shape[1]
        # Rows are L2-normalised, so Euclidean neighbours are the cosine ones.
        self.neighbours.assign(knn.neighbours(self.numpy(), graph_k, backend, seed).indices)

    def update(self, features: tf.Tensor, indices: tf.Tensor, alpha: float | tf.Tensor) -> None:
        """Running-average write M[i] <- l2norm(alpha * M[i] + (1 - alpha) * f) (spec §4).

        Computed in float32 from the stored rows, then cast to the storage dtype. With a kNN
        graph, the written slots' neighbour lists are recomputed from the updated bank.

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
        old_rows = read_rows(self.variable, indices)
        rows = tf.math.l2_normalize(alpha * old_rows + (1.0 - alpha) * features, axis=1)
        rows = tf.gather(rows, _last_occurrence(indices))
        # scatter_update, not scatter_nd_update: the latter is not implemented for
        # mirrored variables.
        self.variable.scatter_update(tf.IndexedSlices(tf.cast(rows, self.variable.dtype),
                                                      indices))
        if self.neighbours is not None:
            # The written slots' lists, from the bank after the write (so each is led by its
            # slot): every list is then as recent as its slot's row. One more (B, N) product.
            lists = tf.math.top_k(similarities(rows, self.variable),
                                  k=self.neighbours.shape[1]).indices
            self.neighbours.scatter_update(tf.IndexedSlices(tf.cast(lists, tf.int64), indices))
