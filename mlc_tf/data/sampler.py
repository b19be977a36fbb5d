"""PK batch sampler over pseudo labels (P clusters x K instances), pure NumPy."""

from __future__ import annotations

import math

import numpy as np


def pk_num_batches(labels: np.ndarray, batch_size: int) -> int:
    """Batches in one PK epoch: ceil(number of labelled samples / batch_size) (spec §7.2)."""
    return math.ceil(int(np.sum(np.asarray(labels) >= 0)) / batch_size)


def _cluster_pick(members: np.ndarray, cams: np.ndarray, k: int, rng: np.random.Generator,
                  camera_aware: bool) -> np.ndarray:
    """Up to k distinct members of one cluster, in the order they enter the batch.

    Camera-aware (after SpCL's RandomMultipleGallerySampler): one random anchor, then members
    from cameras other than the anchor's first, then same-camera members. SpCL draws with
    replacement when other-camera members are too few; here the batch must hold distinct samples,
    so it falls back to same-camera members and, after that, to fewer than k.
    """
    order = rng.permutation(len(members))
    if camera_aware and len(members) > 1:
        anchor, rest = order[0], order[1:]
        other = rest[cams[rest] != cams[anchor]]
        same = rest[cams[rest] == cams[anchor]]
        order = np.concatenate([[anchor], other, same])
    return members[order[:k]]


def pk_batches(labels: np.ndarray, camids: np.ndarray, num_instances: int, batch_size: int,
               rng: np.random.Generator, camera_aware: bool = False) -> list[np.ndarray]:
    """One epoch of PK batches of sample positions, every batch exactly batch_size long.

    Each batch is built by visiting clusters in a random order (a fresh permutation whenever all
    clusters have been visited) and taking num_instances (K) distinct members of each. A sample
    never appears twice in one batch: the memory bank's scatter update with duplicate indices
    would depend on the order of the writes. So, unlike torchreid/SpCL (which repeat members), a
    cluster with fewer than K members contributes all its members once and the rest of the batch
    is filled from further clusters; when the last cluster of a batch does not fit whole, only
    part of its pick is taken. A cluster visited again within the same batch (when the clusters
    are few) offers only its members not yet taken. A batch therefore usually holds
    P = batch_size / K clusters of K.

    Args:
        labels: (N,) int pseudo labels; negative values (DBSCAN outliers) are never sampled.
        camids: (N,) int camera ids (used by the camera-aware variant).
        num_instances: K, instances per cluster in a batch.
        batch_size: samples per batch.
        rng: NumPy generator; equal generator states give equal batches.
        camera_aware: prefer members from cameras other than the first pick's (SpCL style).

    Returns:
        pk_num_batches(labels, batch_size) int64 arrays of batch_size distinct positions in
        [0, N).

    Raises:
        ValueError: bad arguments, or fewer labelled samples than batch_size.
    """
    labels = np.asarray(labels).reshape(-1)
    camids = np.asarray(camids).reshape(-1)
    if labels.shape != camids.shape:
        raise ValueError(f"labels {labels.shape} and camids {camids.shape} differ in length")
    if num_instances < 1 or batch_size < 1:
        raise ValueError(
            f"num_instances ({num_instances}) and batch_size ({batch_size}) must be >= 1")
    labelled = np.flatnonzero(labels >= 0)
    if len(labelled) < batch_size:
        raise ValueError(f"only {len(labelled)} samples have a pseudo label (non-outliers), fewer "
                         f"than batch_size {batch_size}: cannot fill one batch of distinct samples")
    # Stable sort keeps members in position order, so the result depends only on rng.
    sorted_positions = labelled[np.argsort(labels[labelled], kind="stable")]
    _, starts = np.unique(labels[sorted_positions], return_index=True)
    clusters = np.split(sorted_positions, starts[1:])
    queue: list[int] = []
    in_batch = np.zeros(len(labels), bool)
    batches = []
    for _ in range(pk_num_batches(labels, batch_size)):
        batch: list[np.ndarray] = []
        filled = 0
        while filled < batch_size:
            if not queue:
                queue = list(rng.permutation(len(clusters))[::-1])
            members = clusters[queue.pop()]
            # A cluster met a second time in one batch (few or large clusters) only offers the
            # members not taken yet; the labelled total >= batch_size guarantees progress.
            members = members[~in_batch[members]]
            if not len(members):
                continue
            pick = _cluster_pick(members, camids[members], num_instances, rng, camera_aware)
            pick = pick[:batch_size - filled]
            in_batch[pick] = True
            batch.append(pick)
            filled += len(pick)
        batches.append(np.concatenate(batch).astype(np.int64))
        in_batch[batches[-1]] = False
    return batches
