"""Pseudo labels for self-paced clustering: neighbours -> sparse Jaccard -> DBSCAN (or k-means)."""

import sys
import time
from typing import Any, Callable

import numpy as np
from absl import logging

from mlc_tf.clustering import cluster, jaccard, knn

METHODS = ("dbscan", "kmeans")
EPS_MODES = ("fixed", "rho")
# Above this share of outliers a clustering has collapsed: it is logged as a warning.
COLLAPSE_OUTLIER_FRACTION = 0.9


def check_features(features: np.ndarray) -> np.ndarray:
    """Returns the features as a float32 (N, d) array.

    Raises:
        ValueError: if they are not a non-empty 2-D array or contain NaN or Inf.
    """
    x = np.asarray(features)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"features must be a non-empty (N, d) array, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.nonzero(bad)[0]
        raise ValueError(f"features contain NaN or Inf in {len(rows)} rows (first: "
                         f"{rows[:5].tolist()}); check the memory bank or the feature extractor")
    return x


def assign_pseudo_labels(features: np.ndarray, *, method: str = "dbscan", k1: int = 20,
                         k2: int = 6, eps: float = 0.6, eps_mode: str = "fixed",
                         rho: float = 1.6e-3, min_samples: int = 4,
                         num_clusters: int | None = None, variant: str = "zhong",
                         knn_backend: str = "auto", knn_recall_floor: float = 0.9,
                         reliability_gap: float = 0.0,
                         independence_threshold: float | None = None,
                         seed: int = 0, verbose: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Clusters L2-normalised features into pseudo identities (spec §6.3-§6.4).

    DBSCAN runs on the k-reciprocal Jaccard distance, computed sparsely. With eps_mode='rho' eps
    comes from the rho rule and is returned in the stats: pass it back with eps_mode='fixed' in
    later rounds, as the rule prescribes (spec §6.4, A11). An approximate kNN search has its
    recall measured on sampled queries and is widened, then replaced by exact neighbours, while
    below `knn_recall_floor` (see knn.checked_neighbours); either step is logged. A clustering
    that leaves more than 90% of the points outliers is logged as a warning with the recall.
    With a reliability gap, DBSCAN also runs at eps -/+ the gap and only reliable clusters and
    members are kept (SpCL's criterion, `cluster.reliable_clusters`); pass the returned
    independence threshold back in later rounds, as SpCL keeps its first round's.

    Args:
        features: (N, d) features, L2-normalised by the caller.
        method: 'dbscan' or 'kmeans' (the paper's Table 4 ablation).
        k1, k2: k-reciprocal and query-expansion parameters; clamped to N - 1 and k1 + 1.
        eps: DBSCAN radius on the Jaccard distance (eps_mode='fixed'), in (0, 1).
        eps_mode: 'fixed' or 'rho'.
        rho: fraction of pairs the rho rule averages.
        min_samples: DBSCAN min_samples (the point itself counts).
        num_clusters: k of k-means (required for method='kmeans').
        variant: neighbour weighting, 'zhong' or 'spcl'.
        knn_backend: one of knn.BACKENDS (see knn.resolve_backend).
        knn_recall_floor: least sampled recall@(k1 + 1) of approximate neighbours, in [0, 1].
        reliability_gap: eps gap of the reliability criterion (SpCL: 0.02); 0 = off (DBSCAN).
        independence_threshold: the criterion's threshold from an earlier round, or None.
        seed: seed of the approximate neighbours and of k-means.
        verbose: print one timing line per stage and a progress indicator.

    Returns:
        labels: (N,) int64, -1 for outliers, clusters numbered 0..C-1.
        stats: num_clusters, num_outliers, outlier_fraction, all_outliers, cluster_size_min /
            _median / _max, eps (None for k-means), k1, k2, knn_backend (that of the lists
            used), knn_action ('none', 'widened' or 'exact fallback'), knn_recall (sampled
            recall of the lists used, 1.0 for exact ones), knn_first_backend and
            knn_first_recall (the first search's), knn_widened_recall (None when not widened),
            seconds_knn_recall (included in
            seconds_neighbours), seconds_neighbours, seconds_jaccard, seconds_clustering and
            seconds (total); the knn_ entries are None for k-means; independence_threshold
            and num_unreliable (clustered at eps, dropped by the criterion) when
            reliability_gap > 0, else None.

    Raises:
        ValueError: on bad options or features that are not finite.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if eps_mode not in EPS_MODES:
        raise ValueError(f"eps_mode must be one of {EPS_MODES}, got {eps_mode!r}")
    if variant not in jaccard.VARIANTS:
        raise ValueError(f"variant must be one of {jaccard.VARIANTS}, got {variant!r}")
    if eps_mode == "fixed" and not 0.0 < eps < 1.0:
        # Pairs absent from the sparse matrix are at distance 1: eps must stay below it.
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    if reliability_gap < 0 or (eps_mode == "fixed" and eps + reliability_gap >= 1.0) \
            or (reliability_gap and eps - reliability_gap <= 0.0):
        raise ValueError(f"eps -/+ reliability_gap must stay in (0, 1), got eps {eps} and gap "
                         f"{reliability_gap}")
    if method == "kmeans" and not num_clusters:
        raise ValueError("method='kmeans' needs num_clusters")
    x = check_features(features)
    # Every distance below is Euclidean, so centring changes none of them, while float32 keeps
    # the differences of features that share a large common part (a trained network's pooled
    # features: unit rows whose mean has norm 0.99999). The centred copy costs N*d*4 bytes
    # (765 MiB at 32,621 x 6,144), so it is made only when the common part carries more than
    # half of the rows' mean squared norm; below that it rounds away less than one bit.
    mean = x.mean(axis=0, dtype=np.float64)
    if mean @ mean > 0.5 * float(np.vdot(x, x)) / len(x):
        x = x - mean.astype(np.float32)
    n = len(x)
    log = _Log(verbose)
    stats: dict[str, Any] = {"k1": None, "k2": None, "eps": None, "knn_backend": None,
                             "knn_action": None, "knn_recall": None, "knn_first_backend": None,
                             "knn_first_recall": None, "knn_widened_recall": None,
                             "seconds_knn_recall": 0.0,
                             "seconds_neighbours": 0.0, "seconds_jaccard": 0.0,
                             "independence_threshold": None, "num_unreliable": None}
    start = time.perf_counter()
    if method == "kmeans":
        labels = cluster.kmeans(x, num_clusters, seed)
        stats["seconds_clustering"] = log.stage(f"k-means (k={num_clusters})", start)
    else:
        k1 = max(0, min(k1, n - 1))
        k2 = max(1, min(k2, k1 + 1))
        length = jaccard.required_list_length(k1)
        search = knn.checked_neighbours(x, length, knn_backend, seed, knn_recall_floor)
        nbrs = search.neighbours
        stats.update(k1=k1, k2=k2, knn_backend=search.backend, knn_action=search.action,
                     knn_recall=search.recall, knn_first_backend=search.first_backend,
                     knn_first_recall=search.first_recall,
                     knn_widened_recall=search.widened_recall,
                     seconds_knn_recall=search.seconds_recall)
        if search.action != "none":
            logging.warning("kNN: %s recall@%d %.3f is below the floor %.2f; widened search: "
                            "recall %.3f; using %s neighbours (%s)", search.first_backend,
                            length, search.first_recall, knn_recall_floor,
                            search.widened_recall, search.backend, search.action)
        action = "" if search.action == "none" else f", {search.action} from {search.first_backend}"
        stats["seconds_neighbours"] = log.stage(
            f"neighbours ({search.backend}, k={length}, recall {search.recall:.3f}{action})",
            start)
        tick = time.perf_counter()
        distances = jaccard.sparse_jaccard(
            x, nbrs, k1, k2, variant,
            max_distance=1.0 if eps_mode == "rho" else eps + reliability_gap,
            progress=log.progress("jaccard"))
        del nbrs
        if eps_mode == "rho":
            eps = cluster.rho_eps(distances, rho)
            if eps <= reliability_gap:
                raise ValueError(f"the rho rule's eps {eps:.4f} is not above the reliability "
                                 f"gap {reliability_gap}: lower the gap or raise rho")
        stats["seconds_jaccard"] = log.stage(
            f"jaccard ({variant}, {distances.nnz / n:.1f} stored pairs per point)", tick)
        tick = time.perf_counter()
        labels = cluster.dbscan(distances, eps, min_samples)
        stats["eps"] = float(eps)
        what = f"dbscan (eps={eps:.4f})"
        if reliability_gap:
            clustered = int((labels >= 0).sum())
            labels, threshold = cluster.reliable_clusters(
                labels, cluster.dbscan(distances, eps - reliability_gap, min_samples),
                cluster.dbscan(distances, eps + reliability_gap, min_samples),
                independence_threshold)
            stats.update(independence_threshold=threshold,
                         num_unreliable=clustered - int((labels >= 0).sum()))
            what += (f", reliable clusters at eps -/+ {reliability_gap:g}: "
                     f"{stats['num_unreliable']} points dropped")
        stats["seconds_clustering"] = log.stage(what, tick)
    stats.update(_label_stats(labels))
    stats["seconds"] = time.perf_counter() - start
    if stats["outlier_fraction"] > COLLAPSE_OUTLIER_FRACTION:
        recall = "n/a" if stats["knn_recall"] is None else f"{stats['knn_recall']:.3f}"
        logging.warning(
            "clustering collapsed: %.1f%% of %d points are outliers (%d clusters); kNN recall %s "
            "(%s, %s); check the features, eps (%s) and the kNN backend", 100 *
            stats["outlier_fraction"], n, stats["num_clusters"], recall, stats["knn_backend"],
            stats["knn_action"], stats["eps"])
    if verbose:
        print(f"  clustering: {stats['num_clusters']} clusters, {stats['num_outliers']} "
              f"outliers ({100 * stats['outlier_fraction']:.1f}%) in {stats['seconds']:.1f} s",
              flush=True)
    return labels, stats


def _label_stats(labels: np.ndarray) -> dict[str, Any]:
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    num_outliers = int((labels < 0).sum())
    return {
        "num_clusters": int(len(sizes)),
        "num_outliers": num_outliers,
        "outlier_fraction": num_outliers / len(labels),
        "all_outliers": len(sizes) == 0,
        "cluster_size_min": int(sizes.min()) if len(sizes) else 0,
        "cluster_size_median": float(np.median(sizes)) if len(sizes) else 0.0,
        "cluster_size_max": int(sizes.max()) if len(sizes) else 0,
    }


class _Log:
    """Per-stage timing lines and an in-place percentage, printed only when verbose."""

    def __init__(self, verbose: bool):
        self.verbose = verbose

    def stage(self, what: str, since: float) -> float:
        seconds = time.perf_counter() - since
        if self.verbose:
            print(f"  clustering: {what}: {seconds:.1f} s", flush=True)
        return seconds

    def progress(self, what: str) -> Callable[[float], None] | None:
        if not self.verbose:
            return None

        def report(fraction: float) -> None:
            end = "\n" if fraction >= 1.0 else ""
            sys.stdout.write(f"\r  clustering: {what} {100 * fraction:5.1f}%{end}")
            sys.stdout.flush()

        return report
