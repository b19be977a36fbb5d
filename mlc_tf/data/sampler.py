"""PK batch sampler over pseudo labels (P clusters x K instances), pure NumPy."""

from __future__ import annotations

import collections
import math

import numpy as np


def pk_num_batches(labels: np.ndarray, batch_size: int) -> int:
    """Batches in one PK epoch: ceil(number of labelled samples / batch_size) (spec §7.2)."""
    return math.ceil(int(np.sum(np.asarray(labels) >= 0)) / batch_size)


def _cluster_groups(members: np.ndarray, cams: np.ndarray, num_instances: int,
                    rng: np.random.Generator,
                    camera_aware: bool) -> list[tuple[np.ndarray, int]]:
    """One pass over a cluster: ceil(n / K) groups of exactly K positions, all members in one.

    A cluster of n < K members is one group holding each member floor(K / n) or ceil(K / n)
    times (sampling with replacement, as torchreid and SpCL do, but never leaving a member
    out). Otherwise the members are dealt round-robin from a random order into ceil(n / K)
    groups of near-equal size, and each group short of K is completed with other members of
    the cluster (distinct from the group's own), so every member appears once plus a few
    completions and no group repeats a sample. Camera-aware, the order first groups members by
    camera (cameras in random order, members shuffled within each): dealing then spreads every
    camera over the groups, and completions prefer cameras the group lacks (SpCL's sampler
    prefers instances from other cameras).

    Args:
        members: (n,) sample positions of one cluster.
        cams: (n,) their camera ids.
        num_instances: K.
        rng: NumPy generator.
        camera_aware: spread cameras over the groups as above.

    Returns:
        ceil(n / K) pairs (K positions from `members`, how many of them are the group's own
        members rather than completions).
    """
    size = len(members)
    order = rng.permutation(size)
    if size < num_instances:
        return [(members[np.resize(order, num_instances)], size)]
    if camera_aware:
        _, camera_of = np.unique(cams[order], return_inverse=True)
        camera_rank = rng.permutation(camera_of.max() + 1)[camera_of]
        order = order[np.argsort(camera_rank, kind="stable")]
    num_groups = math.ceil(size / num_instances)
    groups = []
    for group in range(num_groups):
        picked = order[group::num_groups]
        own = len(picked)
        if own < num_instances:
            others = rng.permutation(np.setdiff1d(np.arange(size), picked))
            if camera_aware:
                seen_camera = np.isin(cams[others], cams[picked])
                others = others[np.argsort(seen_camera, kind="stable")]
            picked = np.concatenate([picked, others[:num_instances - len(picked)]])
        groups.append((members[picked], own))
    return groups


def pk_batches(labels: np.ndarray, camids: np.ndarray, num_instances: int, batch_size: int,
               rng: np.random.Generator, camera_aware: bool = False) -> list[np.ndarray]:
    """One epoch of PK batches of sample positions: P = batch_size / K clusters x K instances.

    torchreid's RandomIdentitySampler semantics, with SpCL's camera-aware option:

    1. Each cluster is cut into groups of exactly K samples (see _cluster_groups): a cluster
       of fewer than K members repeats its members (sampling with replacement), a larger one
       is split into near-equal groups completed from the same cluster. One pass over all
       clusters holds every labelled sample at least once. With K >= 2 every sample therefore
       has a same-label partner at another position of its batch, as the triplet loss needs.
    2. Each batch takes P groups, one at a time, each from a cluster not yet in this batch,
       drawn with probability proportional to the members its unused groups still bring (a
       group's own members, completions and repeats not counted). A batch thus holds P
       distinct clusters when there are at least P, and samples are drawn close to uniformly.
       When no drawable cluster has a group left, every cluster gets a new pass of groups.
    3. The epoch has ceil(N_labelled / batch_size) batches (spec §7.2). Completing short
       groups makes one pass longer than that, so some groups wait for the next epoch; the
       weighting makes those that bring few members (tiny clusters' groups) the likeliest to
       wait. On DBSCAN-like cluster sizes (4-20, K = 4) an epoch visits about 92% of the
       labelled samples (tests/sampler_test.py).

    A sample appears twice in one batch only within the group of a cluster of fewer than K
    members, or when there are fewer than P clusters, so that a cluster fills several groups
    of a batch. The memory bank's update handles such repeats (the last occurrence wins).

    Args:
        labels: (N,) int pseudo labels; negative values (DBSCAN outliers) are never sampled.
        camids: (N,) int camera ids (used by the camera-aware variant).
        num_instances: K, samples per cluster group.
        batch_size: samples per batch, a multiple of K.
        rng: NumPy generator; equal generator states give equal batches.
        camera_aware: mix cameras within each group (SpCL prefers other cameras).

    Returns:
        pk_num_batches(labels, batch_size) int64 arrays of batch_size positions in [0, N):
        P runs of K consecutive positions, each run one cluster.

    Raises:
        ValueError: bad arguments, or no sample has a pseudo label.
    """
    labels = np.asarray(labels).reshape(-1)
    camids = np.asarray(camids).reshape(-1)
    if labels.shape != camids.shape:
        raise ValueError(f"labels {labels.shape} and camids {camids.shape} differ in length")
    if num_instances < 1 or batch_size < 1 or batch_size % num_instances:
        raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of "
                         f"num_instances ({num_instances})")
    labelled = np.flatnonzero(labels >= 0)
    if not len(labelled):
        raise ValueError("no sample has a pseudo label (all are outliers): no PK batch to draw")
    # A stable sort keeps members in position order, so the result depends only on rng.
    by_label = labelled[np.argsort(labels[labelled], kind="stable")]
    _, starts = np.unique(labels[by_label], return_index=True)
    clusters = np.split(by_label.astype(np.int64), starts[1:])
    queues = [collections.deque() for _ in clusters]
    unvisited = np.zeros(len(clusters))  # own members of each cluster's queued groups

    def add_pass():
        for cluster, members in enumerate(clusters):
            groups = _cluster_groups(members, camids[members], num_instances, rng, camera_aware)
            queues[cluster].extend(groups)
            unvisited[cluster] += sum(own for _, own in groups)

    add_pass()
    batches = []
    for _ in range(pk_num_batches(labels, batch_size)):
        drawable = np.ones(len(clusters), bool)
        groups = []
        for _ in range(batch_size // num_instances):
            if not drawable.any():  # fewer clusters than P: clusters fill several groups
                drawable[:] = True
            weights = unvisited * drawable
            if not weights.any():
                add_pass()
                weights = unvisited * drawable
            cluster = rng.choice(len(clusters), p=weights / weights.sum())
            group, own = queues[cluster].popleft()
            groups.append(group)
            unvisited[cluster] -= own
            drawable[cluster] = False
        batches.append(np.concatenate(groups))
    return batches
