"""Wall time, peak memory and quality of `assign_pseudo_labels` on synthetic clustered features.

Usage:
  python bench/cluster_bench.py [--sizes=12936x2048,32621x6144,100000x256] [--backend=auto]
  python bench/cluster_bench.py --compare=16522x2048 --backend=ivf   # or --backend=pynndescent
  python bench/cluster_bench.py --compare=1000000x256 --backend=ivf --recall_queries=2000
  python bench/cluster_bench.py --sizes=32621x2048 --generator=noise_dominated
  python bench/cluster_bench.py --feature_file=features.npz --backend=ivf --knn_recall_floor=0

Each size runs in its own subprocess so that its peak resident memory (ru_maxrss, features
included) is its own. The generator is fixed: identities of ~20 images seen by 2-6 of 8 cameras,
a per-camera bias, look-alike identities (families of 4 around a shared parent), structure in a
128-d latent space embedded in d dimensions plus isotropic noise in all d. --generator=
noise_dominated instead draws identities of ~20 points drowned in isotropic noise, as an early
network gives (nearest-neighbour cosine about 0.1), where approximate backends lose recall.
--feature_file clusters the features of a trained network instead (a `bin/extract` .npz of
Market-style file names, whose leading number is the true identity).
"""

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time

import numpy as np

from mlc_tf.clustering import knn

DEFAULT_SIZES = ("12936x2048,16522x2048,32621x2048,12936x6144,16522x6144,32621x6144,"
                 "100000x256,1000000x256")
LATENT = 128
GENERATORS = ("project", "noise_dominated")


def make_features(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit-norm float32 features and their true identities."""
    rng = np.random.default_rng(seed)
    num_ids = max(1, n // 20)
    parents = rng.standard_normal((num_ids // 4 + 1, LATENT))
    centres = parents[np.arange(num_ids) // 4] + 0.7 * rng.standard_normal((num_ids, LATENT))
    cam_bias = 0.6 * rng.standard_normal((8, LATENT))
    ids = np.concatenate([np.arange(num_ids), rng.integers(0, num_ids, n - num_ids)])
    ids = rng.permutation(ids)  # Points arrive in no particular order, as in a dataset.
    views = np.stack([rng.permutation(8)[:6] for _ in range(num_ids)])
    num_views = rng.integers(2, 7, num_ids)
    cams = views[ids, (rng.random(n) * num_views[ids]).astype(int)]
    embed = (rng.standard_normal((LATENT, dim)) / np.sqrt(LATENT)).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):  # In chunks: the generator must not dominate peak memory.
        part = slice(start, min(n, start + 8192))
        latent = centres[ids[part]] + cam_bias[cams[part]]
        latent += 0.7 * rng.standard_normal(latent.shape)
        block = latent.astype(np.float32) @ embed
        block += (0.8 * np.sqrt(LATENT / dim)) * rng.standard_normal(block.shape, np.float32)
        x[part] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, ids


def make_noise_dominated_features(n: int, dim: int, seed: int = 0,
                                  signal: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """(n, dim) unit-norm float32 features and identities: a random identity direction times
    `signal` plus unit isotropic noise (same-identity cosine about signal^2 / (1 + signal^2))."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, max(1, n // 20), n)
    centres = rng.standard_normal((max(1, n // 20), dim), np.float32)
    x = np.empty((n, dim), np.float32)
    for start in range(0, n, 8192):
        part = slice(start, min(n, start + 8192))
        block = signal * centres[ids[part]] + rng.standard_normal((len(ids[part]), dim),
                                                                    np.float32)
        x[part] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return x, ids


def _generate(n: int, dim: int, generator: str) -> tuple[np.ndarray, np.ndarray]:
    if generator == "noise_dominated":
        return make_noise_dominated_features(n, dim)
    return make_features(n, dim)


def load_extracted(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Features of a `bin/extract` file and the identities in their Market-style file names."""
    import os

    from mlc_tf.feature_files import load_feature_file

    stored = load_feature_file(path)
    ids = np.array([int(os.path.basename(name).split("_")[0]) for name in stored.paths])
    return stored.features, ids


def _ari(truth: np.ndarray, labels: np.ndarray) -> float:
    """ARI with each outlier as its own singleton cluster (outliers are not one big cluster)."""
    from sklearn.metrics import adjusted_rand_score

    singletons = np.where(labels < 0, labels.max() + 1 + np.arange(len(labels)), labels)
    return float(adjusted_rand_score(truth, singletons))


def run_one(x: np.ndarray, ids: np.ndarray, backend: str, recall_floor: float = 0.9) -> dict:
    """One timed `assign_pseudo_labels` of x, its peak memory and its ARI against ids."""
    from mlc_tf.clustering import assign_pseudo_labels

    n, dim = x.shape
    base_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    labels, stats = assign_pseudo_labels(x, knn_backend=backend, knn_recall_floor=recall_floor,
                                         verbose=True)
    seconds = time.perf_counter() - start
    return {"n": n, "dim": dim, "backend": stats["knn_backend"],
            "first_backend": stats["knn_first_backend"], "action": stats["knn_action"],
            "recall": stats["knn_recall"], "first_recall": stats["knn_first_recall"],
            "recall_s": stats["seconds_knn_recall"], "neighbours_s": stats["seconds_neighbours"],
            "jaccard_s": stats["seconds_jaccard"],
            "dbscan_s": stats["seconds_clustering"], "total_s": seconds,
            "features_mib": x.nbytes / 2 ** 20, "base_mib": base_mib,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "true_ids": int(len(np.unique(ids))), "clusters": stats["num_clusters"],
            "outliers": stats["outlier_fraction"], "ari": _ari(ids, labels)}


def compare(n: int, dim: int, backend: str) -> dict:
    """Recall of approximate neighbours and ARI of their DBSCAN labels against exact ones."""
    from sklearn.metrics import adjusted_rand_score

    from mlc_tf.clustering import assign_pseudo_labels, jaccard

    x, ids = make_features(n, dim)
    length = jaccard.required_list_length(20)
    exact = knn.neighbours(x, length, "exact")
    # This first call also pays pynndescent's numba compilation; the labelled runs are timed.
    approx = knn.neighbours(x, length, backend)
    recall = np.mean([len(np.intersect1d(a, e)) / len(e)
                      for a, e in zip(approx.indices, exact.indices)])
    exact_labels, exact_stats = assign_pseudo_labels(x, knn_backend="exact")
    approx_labels, approx_stats = assign_pseudo_labels(x, knn_backend=backend)
    return {"n": n, "dim": dim, "backend": backend,
            "neighbours_s": approx_stats["seconds_neighbours"],
            "exact_neighbours_s": exact_stats["seconds_neighbours"],
            "recall@21": float(recall),
            "row_max_rel_err": float(np.max(1 - approx.row_max / exact.row_max)),
            "ari_approx_vs_exact": float(adjusted_rand_score(exact_labels, approx_labels)),
            "ari_exact_vs_truth": _ari(ids, exact_labels),
            "ari_approx_vs_truth": _ari(ids, approx_labels)}


def sampled_recall(n: int, dim: int, backend: str, queries: int, seed: int = 0) -> dict:
    """Recall of --backend on a sample of queries, checked by brute force against all N points.

    Also the fraction of each query's 20 nearest others that share its identity, exact and
    approximate: how crowded the generated identities are at this N, apart from the backend.
    """
    from mlc_tf.clustering import jaccard

    x, ids = make_features(n, dim)
    length = jaccard.required_list_length(20)
    start = time.perf_counter()
    approx = knn.neighbours(x, length, backend)
    seconds = time.perf_counter() - start
    sample = np.random.default_rng(seed).choice(n, queries, replace=False)
    recall, exact_same, approx_same = [], [], []
    for chunk in np.array_split(sample, -(-queries // 64)):
        sq_dist = 2.0 - 2.0 * (x[chunk] @ x.T)  # unit-norm features
        sq_dist[np.arange(len(chunk)), chunk] = -1.0  # the query itself first, as knn does
        nearest = np.argpartition(sq_dist, length - 1, axis=1)[:, :length]
        for row, query in enumerate(chunk):
            approx_row = approx.indices[query]
            recall.append(len(np.intersect1d(nearest[row], approx_row)) / length)
            others = nearest[row][nearest[row] != query]
            exact_20 = others[np.argsort(sq_dist[row, others])[:20]]
            exact_same.append(np.mean(ids[exact_20] == ids[query]))
            approx_same.append(np.mean(ids[approx_row[1:21]] == ids[query]))
    return {"n": n, "dim": dim, "backend": backend, "neighbours_s": seconds,
            "queries": queries, "recall@21": float(np.mean(recall)),
            "exact_same_id@20": float(np.mean(exact_same)),
            "approx_same_id@20": float(np.mean(approx_same))}


def _parse(size: str) -> tuple[int, int]:
    n, dim = size.lower().split("x")
    return int(n), int(dim)


def _print_header() -> None:
    print(f"\nResults of: python {shlex.join(sys.argv)}\n", flush=True)


def _print_comparison(r: dict) -> None:
    _print_header()
    print("| N | d | kNN backend | neighbours s (exact) | recall@21 | row max rel. error | "
          "ARI approx vs exact | ARI vs truth: exact | ARI vs truth: approx |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {r['n']:,} | {r['dim']:,} | {r['backend']} | {r['neighbours_s']:.1f} "
          f"({r['exact_neighbours_s']:.1f}) | {r['recall@21']:.3f} | {r['row_max_rel_err']:.3f} | "
          f"{r['ari_approx_vs_exact']:.4f} | {r['ari_exact_vs_truth']:.3f} | "
          f"{r['ari_approx_vs_truth']:.3f} |")


def _print_sampled(r: dict) -> None:
    _print_header()
    print("| N | d | kNN backend | neighbours s | queries | recall@21 | same id in 20-NN: exact | "
          "same id in 20-NN: approx |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {r['n']:,} | {r['dim']:,} | {r['backend']} | {r['neighbours_s']:.1f} | "
          f"{r['queries']:,} | {r['recall@21']:.3f} | {r['exact_same_id@20']:.3f} | "
          f"{r['approx_same_id@20']:.3f} |")


def _print_sizes(rows: list[dict]) -> None:
    _print_header()
    print("Each size ran in a fresh process: neighbours s includes the one-off start-up, "
          "TensorFlow's import (exact) or numba's compilation (pynndescent).\n")
    print("kNN: the first backend, then the action taken below the recall floor; recall@21 of "
          "the lists used (of the first search), sampled on 256 queries; recall s is included "
          "in neighbours s.\n")
    print("| N | d | kNN | recall@21 (first) | recall s | neighbours s | Jaccard s | DBSCAN s | "
          "total s | peak RSS MiB (features) | true ids | clusters | outliers | ARI vs truth |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        action = "" if r["action"] == "none" else f" ({r['action']})"
        print(f"| {r['n']:,} | {r['dim']:,} | {r['first_backend']}{action} | "
              f"{r['recall']:.3f} ({r['first_recall']:.3f}) | {r['recall_s']:.1f} | "
              f"{r['neighbours_s']:.1f} | "
              f"{r['jaccard_s']:.1f} | {r['dbscan_s']:.1f} | {r['total_s']:.1f} | "
              f"{r['peak_mib']:,.0f} ({r['features_mib']:,.0f}) | {r['true_ids']:,} | "
              f"{r['clusters']:,} | {100 * r['outliers']:.1f}% | {r['ari']:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated NxD")
    parser.add_argument("--backend", default="auto", choices=knn.BACKENDS,
                        help="kNN backend; with --compare, 'auto' means pynndescent")
    parser.add_argument("--compare", help="NxD: recall and label ARI of --backend vs exact")
    parser.add_argument("--recall_queries", type=int,
                        help="with --compare: check recall by brute force on this many sampled "
                             "queries only (for N too large for exact neighbours of all points)")
    parser.add_argument("--generator", default="project", choices=GENERATORS,
                        help="features of --sizes: the project's generator or noise-dominated")
    parser.add_argument("--knn_recall_floor", type=float, default=0.9,
                        help="recall floor of --sizes runs; 0 only measures (no widening)")
    parser.add_argument("--feature_file", help="cluster this bin/extract .npz instead of --sizes")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one or args.feature_file:
        x, ids = (load_extracted(args.feature_file) if args.feature_file
                  else _generate(*_parse(args.one), args.generator))
        result = run_one(x, ids, args.backend, args.knn_recall_floor)
        print("RESULT " + json.dumps(result), flush=True)
        if args.feature_file:
            _print_sizes([result])
        return
    if args.compare:
        backend = "pynndescent" if args.backend == "auto" else args.backend
        if args.recall_queries:
            result = sampled_recall(*_parse(args.compare), backend, args.recall_queries)
            print(json.dumps(result), flush=True)
            _print_sampled(result)
            return
        result = compare(*_parse(args.compare), backend)
        print(json.dumps(result), flush=True)
        _print_comparison(result)
        return
    rows = []
    for size in args.sizes.split(","):
        proc = subprocess.run([sys.executable, __file__, f"--one={size}",
                               f"--backend={args.backend}", f"--generator={args.generator}",
                               f"--knn_recall_floor={args.knn_recall_floor}"],
                              capture_output=True, text=True)
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if not found:
            print(f"{size}: failed\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}", flush=True)
            continue
        rows.append(json.loads(found[0][len("RESULT "):]))
        print(json.dumps(rows[-1]), flush=True)
    _print_sizes(rows)


if __name__ == "__main__":
    main()
