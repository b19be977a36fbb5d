"""MPLP, MMCL, smoothed CE, batch-hard triplet and the MLC objective (spec §5, §6.5)."""

from __future__ import annotations

import math
from collections.abc import Callable

import tensorflow as tf

from mlc_tf import memory as memory_lib


def _static_last_dim(tensor: tf.Tensor, what: str) -> int:
    size = tensor.shape[-1]
    if size is None:
        raise ValueError(f"{what} needs a static last dimension, got shape {tensor.shape}")
    return size


def one_hot_targets(indices: tf.Tensor, num_slots: int) -> tf.Tensor:
    """Hard instance labels for the warm-up epochs: each sample is positive on its own slot.

    Args:
        indices: (B,) integer memory slots.
        num_slots: N.

    Returns:
        (B, N) float32 one-hot targets.
    """
    return tf.one_hot(tf.cast(indices, tf.int32), num_slots, dtype=tf.float32)


def mplp_targets(memory: tf.Tensor, indices: tf.Tensor, *, threshold: float = 0.6,
                 min_candidates: int = 10, max_candidates: int = 64,
                 second_candidate_quirk: bool = True,
                 neighbours: tf.Tensor | None = None) -> tf.Tensor:
    """Memory-based positive label prediction, as the MMCL code does it (spec §5.1, A21).

    For anchor slot i with similarities s = M[i]·Mᵀ ranked descending into R_i:
    n_above = #{j : s_j > threshold}; K = max(n_above, min_candidates). Candidate
    c = R_i[j] passes the cycle check when the anchor i (not R_i[0], per A21) is within
    the top K+1 of c's own ranking, i.e. fewer than K+1 slots are strictly more similar
    to c than i is. With f the first failing j (K if none fails):

    - second_candidate_quirk=True (MMCL): count = min(max(2, f), n_above), so R_i[1] is
      positive whenever n_above >= 2 even if it fails the check;
    - second_candidate_quirk=False: count = min(f, n_above), every candidate must pass.

    Positives are R_i[0:count] plus, always, the anchor's own slot. A failure at j = 0 or 1
    still ends the scan, so with the quirk such a row gets count = min(2, n_above) however
    many later candidates would pass.

    Static shapes: only R_i[0:max_candidates] is examined. A row whose candidates all pass
    gets count = min(n_above, max_candidates), so on real data with very dense
    neighbourhoods positives are capped at max_candidates; otherwise the result is
    exactly MMCL's. Ties in similarity may shift positions by one compared with a
    sort-based implementation.

    The cycle check, exact (neighbours None): candidates j >= n_above cannot change the
    count and are never checked, and the scan stops once every row has failed, so the
    loop runs at most min(max_candidates, max n_above) times, each a (B, D) x (D, N)
    matmul: B·width·N·D multiply-adds per call, with (B, N) the largest intermediate.

    The cycle check on a kNN graph (neighbours (N, k_graph), each row a slot's nearest
    slots, itself first): i's position in c's ranking is its position in neighbours[c].
    Where i is absent, the check fails if K + 1 <= k_graph (i is then surely beyond the
    top K+1) and passes otherwise (the graph does not reach that far). With a graph of the
    current memory and k_graph > max K this is the exact result; costs are B·N·D for the
    anchors' ranking plus B·width·k_graph.

    Args:
        memory: (N, D) memory bank of any float dtype, N static; treated as a constant and
            read in float32.
        indices: (B,) integer anchor slots.
        threshold: similarity threshold t (strict >).
        min_candidates: at least this many candidates define K (MMCL: 10).
        max_candidates: static cap on examined candidates, at least 2.
        second_candidate_quirk: reproduce MMCL's auto-accepted second candidate.
        neighbours: optional (N, k_graph) integer kNN graph of the memory for the cycle
            check; None ranks the candidates against the whole bank.

    Returns:
        (B, N) float32 multi-hot targets in {0, 1}.

    Raises:
        ValueError: if max_candidates < 2 or N is not static.
    """
    if max_candidates < 2:
        raise ValueError(f"max_candidates must be at least 2, got {max_candidates}")
    memory = tf.stop_gradient(tf.convert_to_tensor(memory))
    num_slots = memory.shape[0]
    if num_slots is None:
        raise ValueError(f"memory needs a static number of slots, got shape {memory.shape}")
    width = min(max_candidates, num_slots)
    indices = tf.cast(indices, tf.int32)

    anchor_sims = memory_lib.similarities(memory_lib.read_rows(memory, indices), memory)
    num_above = tf.reduce_sum(tf.cast(anchor_sims > threshold, tf.int32), axis=1)
    num_checked = tf.maximum(num_above, min_candidates)  # K
    candidates = tf.math.top_k(anchor_sims, k=width).indices  # R_i[0:width], (B, width)
    if neighbours is None:
        first_failure = _first_failure_exact(memory, indices, candidates, num_above,
                                             num_checked)
    else:
        first_failure = _first_failure_on_graph(neighbours, indices, candidates, num_above,
                                                num_checked)
    if second_candidate_quirk:
        first_failure = tf.maximum(first_failure, 2)
    count = tf.minimum(tf.minimum(first_failure, num_above), width)

    positive = tf.range(width)[None, :] < count[:, None]
    rows = tf.broadcast_to(tf.range(tf.shape(indices)[0])[:, None], tf.shape(candidates))
    coordinates = tf.stack([rows, candidates], axis=-1)
    return tf.tensor_scatter_nd_max(one_hot_targets(indices, num_slots), coordinates,
                                    tf.cast(positive, tf.float32))


def _first_failure_exact(memory, indices, candidates, num_above, num_checked):
    """(B,) first failing candidate position (width if none), ranking against the bank."""
    width = candidates.shape[1]
    no_failure = tf.fill(tf.shape(indices), width)

    def still_checking(j, first_failure):
        # A row stops mattering once it failed or j reaches its n_above (count <= n_above).
        return tf.reduce_any((first_failure == width) & (j < num_above))

    def check_candidate(j, first_failure):
        candidate_sims = memory_lib.similarities(
            memory_lib.read_rows(memory, candidates[:, j]), memory)
        # The anchor's similarity taken from the same product, so it never outranks itself.
        to_anchor = tf.gather(candidate_sims, indices, batch_dims=1)
        position = tf.reduce_sum(tf.cast(candidate_sims > to_anchor[:, None], tf.int32), axis=1)
        failed = (position > num_checked) & (first_failure == width)
        return j + 1, tf.where(failed, j, first_failure)

    # j = 0 and 1 are checked even with the quirk: a failure there still ends the scan, so
    # later candidates are not accepted (count 2), as in MMCL's loop.
    _, first_failure = tf.while_loop(still_checking, check_candidate,
                                     (tf.constant(0), no_failure), maximum_iterations=width)
    return first_failure


def _first_failure_on_graph(neighbours, indices, candidates, num_above, num_checked):
    """(B,) first failing candidate position (width if none), reading the kNN graph."""
    width = candidates.shape[1]
    graph_k = neighbours.shape[1]
    candidate_lists = tf.gather(neighbours, candidates)  # (B, width, k_graph)
    is_anchor = tf.equal(candidate_lists, tf.cast(indices, candidate_lists.dtype)[:, None, None])
    found = tf.reduce_any(is_anchor, axis=2)
    position = tf.argmax(tf.cast(is_anchor, tf.int32), axis=2, output_type=tf.int32)
    # Absent from a list that covers the top K+1: surely beyond it. Otherwise unknown: passes.
    covered = (num_checked + 1 <= graph_k)[:, None]
    passed = tf.where(found, position <= num_checked[:, None], ~covered)
    # Only candidates before n_above can change the count.
    failed = ~passed & (tf.range(width)[None, :] < num_above[:, None])
    return tf.where(tf.reduce_any(failed, axis=1),
                    tf.argmax(tf.cast(failed, tf.int32), axis=1, output_type=tf.int32), width)


def mmcl_loss(logits: tf.Tensor, targets: tf.Tensor, *, hard_negative_ratio: float = 0.01,
              delta: float = 5.0) -> tf.Tensor:
    """Memory-based multi-label classification loss, as the MMCL code does it (spec §5.2).

    ℓ_i = delta · mean_{p ∈ P_i} (1 − z_p)² + mean_{s ∈ S_i} (1 + z_s)², where P_i are the
    positive slots and S_i the ⌊r·(N − |P_i|)⌋ negatives with the largest (detached)
    logits. δ multiplies the positive term, as in the code (A3). A row with no hard
    negative (small N) has no negative term.

    Args:
        logits: (B, N) cosine similarities to the memory, N static.
        targets: (B, N) targets; entries > 0 are positives.
        hard_negative_ratio: r.
        delta: weight δ of the positive term.

    Returns:
        (B,) float32 per-example losses.
    """
    logits = tf.cast(logits, tf.float32)
    num_slots = _static_last_dim(logits, "logits")
    positive = tf.cast(targets, tf.float32) > 0
    positive_weight = tf.cast(positive, tf.float32)
    num_positive = tf.reduce_sum(positive_weight, axis=1)
    positive_term = (tf.reduce_sum(positive_weight * tf.square(1.0 - logits), axis=1)
                     / tf.maximum(num_positive, 1.0))

    # Static upper bound on the per-row count; float64 so the floor matches MMCL's Python int().
    max_hard = int(math.floor(hard_negative_ratio * num_slots))
    if max_hard == 0:
        return delta * positive_term
    num_negative = tf.cast(num_slots, tf.float64) - tf.cast(num_positive, tf.float64)
    num_hard = tf.minimum(tf.cast(tf.floor(hard_negative_ratio * num_negative), tf.int32),
                          max_hard)
    negative_logits = tf.where(positive, -math.inf, tf.stop_gradient(logits))
    hardest = tf.math.top_k(negative_logits, k=max_hard).indices
    hard_logits = tf.gather(logits, hardest, batch_dims=1)
    selected = tf.range(max_hard)[None, :] < num_hard[:, None]
    negative_term = (tf.reduce_sum(tf.where(selected, tf.square(1.0 + hard_logits), 0.0), axis=1)
                     / tf.cast(tf.maximum(num_hard, 1), tf.float32))
    return delta * positive_term + negative_term


def label_smoothed_cross_entropy(logits: tf.Tensor, labels: tf.Tensor,
                                 epsilon: float = 0.1) -> tf.Tensor:
    """Cross-entropy with torchreid's label smoothing (spec §6.5, A6).

    The target is 1 − ε + ε/C on the label and ε/C on every other class (not fast-reid's
    ε/(C−1) convention).

    Args:
        logits: (B, C) classifier logits, C static.
        labels: (B,) integer pseudo labels in [0, C); outliers must be removed beforehand.
        epsilon: ε.

    Returns:
        (B,) float32 per-example losses.
    """
    logits = tf.cast(logits, tf.float32)
    num_classes = _static_last_dim(logits, "logits")
    targets = (tf.one_hot(tf.cast(labels, tf.int32), num_classes) * (1.0 - epsilon)
               + epsilon / num_classes)
    return -tf.reduce_sum(targets * tf.nn.log_softmax(logits, axis=-1), axis=-1)


def batch_hard_triplet(anchor_features: tf.Tensor, anchor_labels: tf.Tensor,
                       batch_features: tf.Tensor, batch_labels: tf.Tensor, *,
                       margin: float = 0.0, soft: bool = False) -> tf.Tensor:
    """Batch-hard triplet loss of local anchors against the global batch (spec §6.5, A4).

    Distances are Euclidean, sqrt(max(‖a − b‖², 1e-12)) so gradients stay finite at zero
    distance. d_ap is the largest distance to a same-label sample of the batch, d_an the
    smallest to a different-label one. When the anchors are part of the batch (the usual
    case: local anchors vs the all-gathered batch) each anchor sees itself at distance
    ~1e-6, which never changes the maximum unless it is its only positive, where
    d_ap ≈ 0. Anchors with no positive or no negative in the batch get loss 0.

    Args:
        anchor_features: (B_local, D) anchor embeddings.
        anchor_labels: (B_local,) integer labels.
        batch_features: (B_global, D) embeddings mined over.
        batch_labels: (B_global,) integer labels.
        margin: m of the hinge max(0, d_ap − d_an + m).
        soft: use log(1 + exp(d_ap − d_an + m)) instead of the hinge (fast-reid's soft
            margin when m = 0).

    Returns:
        (B_local,) float32 per-example losses.
    """
    anchors = tf.cast(anchor_features, tf.float32)
    batch = tf.cast(batch_features, tf.float32)
    squared = (tf.reduce_sum(tf.square(anchors), axis=1)[:, None]
               + tf.reduce_sum(tf.square(batch), axis=1)[None, :]
               - 2.0 * tf.matmul(anchors, batch, transpose_b=True))
    distances = tf.sqrt(tf.maximum(squared, 1e-12))
    same = tf.equal(tf.cast(anchor_labels, tf.int64)[:, None],
                    tf.cast(batch_labels, tf.int64)[None, :])
    valid = tf.reduce_any(same, axis=1) & tf.reduce_any(~same, axis=1)
    hardest_positive = tf.reduce_max(tf.where(same, distances, 0.0), axis=1)
    # Masked-out entries come from a constant, so no gradient reaches them.
    hardest_negative = tf.reduce_min(tf.where(same, math.inf, distances), axis=1)
    hardest_negative = tf.where(valid, hardest_negative, 0.0)
    difference = hardest_positive - hardest_negative + margin
    loss = tf.nn.softplus(difference) if soft else tf.nn.relu(difference)
    return tf.where(valid, loss, 0.0)


MEMORY_TARGETS = ("one_hot", "mplp", "none")


def mlc_objective(*, neck: tf.Tensor, pooled: tf.Tensor, indices: tf.Tensor,
                  memory: tf.Tensor | None, options, memory_targets: str,
                  label_memory: tf.Tensor | None = None,
                  classifier: Callable[[tf.Tensor], tf.Tensor] | None = None,
                  labels: tf.Tensor | None = None,
                  gather: Callable[[tf.Tensor], tf.Tensor] = lambda t: t,
                  average: Callable[[tf.Tensor], tf.Tensor] = tf.reduce_mean,
                  neighbours: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """The MLC loss of one batch: MMCL on the memory, then CE + triplet on (pseudo) labels.

    Which feature feeds which loss (spec §3, §5, §6.5): the L2-normalised BN-neck feature is
    compared with the memory (and is what the caller writes back into it), the classifier
    reads the BN-neck feature, and the triplet loss the pooled pre-BN feature f_all.

    - memory only (labels None): loss = MMCL;
    - joint (memory and labels): loss = lambda_mmcl * MMCL + lambda_sc * (CE + triplet);
    - supervised (memory_targets 'none'): loss = lambda_sc * (CE + triplet), no memory.

    Args:
        neck: (B, D) BN-neck features of the local batch.
        pooled: (B, D) pooled features before the neck.
        indices: (B,) memory slots of the batch.
        memory: (N, D) memory bank of any float dtype, read as a float32 constant; None
            with memory_targets 'none'.
        options: a config.LossConfig (thresholds, ratios, weights, triplet options).
        memory_targets: 'one_hot' (own slot), 'mplp' (MPLP labels) or 'none' (no memory loss).
        label_memory: (N, D) bank MPLP ranks to predict the positives; default `memory`
            (the camera-centred memory with --mplp_camera_normalize).
        classifier: maps neck features to class logits; with labels.
        labels: (B,) class labels in [0, C), or None for the memory loss alone.
        gather: concatenates a local tensor over all replicas (triplet mining over the
            global batch); the identity on one replica.
        average: per-example (B,) losses -> scalar (e.g. compute_average_loss).
        neighbours: (N, k_graph) kNN graph of the memory for MPLP's cycle check, or None
            for the exact check (see mplp_targets).

    Returns:
        {'loss', 'mmcl', 'ce', 'triplet', 'positives'} scalars, 'embedded' (B, D) (the
        normalised neck feature for the memory update) and 'targets' ((B, N) memory targets,
        or None).

    Raises:
        ValueError: an unknown memory_targets, no memory and no labels, or labels without a
            classifier.
    """
    if memory_targets not in MEMORY_TARGETS:
        raise ValueError(f"memory_targets={memory_targets!r}; expected one of {MEMORY_TARGETS}")
    use_memory = memory_targets != "none"
    if not use_memory and labels is None:
        raise ValueError("an objective needs the memory loss, labels, or both")
    if labels is not None and classifier is None:
        raise ValueError("labels need a classifier")
    zero = tf.zeros((), tf.float32)
    neck = tf.cast(neck, tf.float32)
    embedded = tf.math.l2_normalize(neck, axis=1)
    result = {"mmcl": zero, "ce": zero, "triplet": zero, "positives": zero,
              "embedded": embedded, "targets": None}
    if use_memory:
        memory = tf.stop_gradient(tf.convert_to_tensor(memory))
        logits = memory_lib.similarities(embedded, memory)
        if memory_targets == "mplp":
            targets = mplp_targets(memory if label_memory is None else label_memory, indices,
                                   threshold=options.mplp_threshold,
                                   min_candidates=options.mplp_min_candidates,
                                   max_candidates=options.mplp_max_candidates,
                                   second_candidate_quirk=options.mplp_quirk,
                                   neighbours=neighbours)
        else:
            targets = one_hot_targets(indices, memory.shape[0])
        result["mmcl"] = average(mmcl_loss(logits, targets,
                                           hard_negative_ratio=options.hard_negative_ratio,
                                           delta=options.delta))
        result["positives"] = average(tf.reduce_sum(targets, axis=1))
        result["targets"] = targets
    if labels is None:
        result["loss"] = result["mmcl"]
        return result
    labels = tf.cast(labels, tf.int32)
    result["ce"] = average(label_smoothed_cross_entropy(
        classifier(neck), labels, epsilon=options.label_smoothing))
    features = tf.cast(pooled, tf.float32)
    if options.triplet_feature == "normalized":
        features = tf.math.l2_normalize(features, axis=1)
    # Local anchors are mined against the whole global batch, so that the result does not
    # depend on how the batch is split across replicas.
    result["triplet"] = average(batch_hard_triplet(
        features, labels, gather(features), gather(tf.cast(labels, tf.int64)),
        margin=options.triplet_margin, soft=options.triplet_soft))
    pseudo_label_term = options.lambda_sc * (result["ce"] + result["triplet"])
    result["loss"] = (options.lambda_mmcl * result["mmcl"] + pseudo_label_term if use_memory
                      else pseudo_label_term)
    return result
