"""PK batch sampler over pseudo labels (P clusters x K instances), pure NumPy."""

from __future__ import annotations

import math

import numpy as np


def pk_num_batches(labels: np.ndarray, batch_size: int) -> int:
    """Batches in one PK epoch: ceil(number of labelled samples / batch_size) (spec §7.2)."""
    return math.ceil(int(np.sum(np.asarray(labels) >= 0)) / batch_size)


def _split_cluster(members: np.ndarray, cams: np.ndarray, num_instances: int,
                   rng: np.random.Generator, camera_aware: bool) -> list[np.ndarray]:
    """Partitions one cluster into ceil(n / K) groups whose sizes differ by at most one.

    Members are dealt round-robin to the groups from a random order, which gives a uniformly
    random balanced partition. Camera-aware, the order first groups members by camera (cameras
    in random order, members shuffled within each): dealing then spreads every camera over the
    groups, so each group mixes as many cameras as the cluster allows.
    """
    order = rng.permutation(len(members))
    if camera_aware:
        cameras, camera_of = np.unique(cams[order], return_inverse=True)
        camera_rank = rng.permutation(len(cameras))[camera_of]
        order = order[np.argsort(camera_rank, kind="stable")]
    num_groups = math.ceil(len(members) / num_instances)
    return [members[order[g::num_groups]] for g in range(num_groups)]


def pk_batches(labels: np.ndarray, camids: np.ndarray, num_instances: int, batch_size: int,
               rng: np.random.Generator, camera_aware: bool = False) -> list[np.ndarray]:
    """One epoch of PK batches of sample positions: every labelled sample once, plus a filler.

    Design (the memory bank's scatter update makes a repeated index within one batch
    order-dependent, so no batch may hold a sample twice):

    1. Each cluster of n members is split into ceil(n / K) disjoint groups of near-equal size
       (n = 5, K = 4 gives 3 + 2, never 4 + 1), so with K >= 3 no group of a cluster of n >= 2
       lacks a positive for the triplet loss. A cluster with fewer than K members is one group
       of all its distinct members, never padded by repeats (where torchreid and SpCL sample
       with replacement); other groups fill the rest of the batch.
    2. The groups of all clusters are shuffled and concatenated into one stream, which is cut
       into batches of batch_size. The stream holds each labelled sample exactly once, so every
       batch is duplicate-free and the epoch covers the labelled set (sample-uniform, like
       torchreid's RandomIdentitySampler, but without its padding by repetition).
    3. The last batch is topped up with the first samples of the stream. Those lie in the first
       batch, which is not the last one whenever a top-up is needed (one batch means exactly
       batch_size labelled samples), so no duplicate appears there either.

    When every cluster size is a multiple of K and batch_size is a multiple of K, each batch is
    exactly P = batch_size / K groups of K. Otherwise a group may be smaller than K, and the
    group at each batch boundary is split across the two batches (into parts that may be
    single samples). Large clusters appear in
    proportion to their size (each sample once per epoch), unlike SpCL's sampler, which draws
    K instances per cluster per pass and so oversamples small clusters; every labelled
    memory-bank slot is therefore refreshed each epoch.

    Args:
        labels: (N,) int pseudo labels; negative values (DBSCAN outliers) are never sampled.
        camids: (N,) int camera ids (used by the camera-aware variant).
        num_instances: K, the largest group a cluster is split into.
        batch_size: samples per batch.
        rng: NumPy generator; equal generator states give equal batches.
        camera_aware: spread each cluster's cameras over its groups so that a group mixes
            cameras (SpCL's sampler prefers instances from other cameras).

    Returns:
        pk_num_batches(labels, batch_size) int64 arrays of batch_size distinct positions in
        [0, N).

    Raises:
        ValueError: bad arguments, or fewer labelled samples than batch_size (no batch of
            distinct samples can be filled).
    """
    labels = np.asarray(labels).reshape(-1)
    camids = np.asarray(camids).reshape(-1)
    if labels.shape != camids.shape:
        raise ValueError(f"labels {labels.shape} and camids {camids.shape} differ in length")
    if num_instances < 1 or batch_size < 1:
        raise ValueError(f"num_instances ({num_instances}) and batch_size ({batch_size}) "
                         "must be >= 1")
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) < batch_size:
        raise ValueError(f"only {len(labelled)} samples have a pseudo label (non-outliers), fewer "
                         f"than batch_size {batch_size}: cannot fill one batch of distinct samples")
    # A stable sort keeps members in position order, so the result depends only on rng.
    by_label = labelled[np.argsort(labels[labelled], kind="stable")]
    _, starts = np.unique(labels[by_label], return_index=True)
    groups = [group for members in np.split(by_label, starts[1:])
              for group in _split_cluster(members, camids[members], num_instances, rng,
                                          camera_aware)]
    stream = np.concatenate([groups[g] for g in rng.permutation(len(groups))]).astype(np.int64)
    num_batches = pk_num_batches(labels, batch_size)
    stream = np.concatenate([stream, stream[:num_batches * batch_size - len(stream)]])
    return list(stream.reshape(num_batches, batch_size))
