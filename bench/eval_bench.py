"""Wall time and peak memory of the Market-protocol evaluation at DukeMTMC-reID and MSMT17 size.

Usage: python bench/eval_bench.py [--sizes=duke,msmt17] [--modes=distances,features]
                                  [--dim=2048] [--chunk_size=256]

Two modes, each size and mode in its own subprocess so that ru_maxrss is its own peak:
  distances  MarketEvaluator fed (chunk_size, G) blocks of squared Euclidean distances, as
             torchreid's eval_market1501 is fed chunks; only the evaluator's time is counted.
  features   evaluate_features end to end on (Q, dim) and (G, dim) float32 features: distance
             blocks (float32 matmul) plus ranking; the Q x G matrix never exists.
'base MiB' is the resident memory before evaluating (Python, NumPy and the features), 'peak MiB'
the high-water mark during the run.
Features are synthetic: unit-norm points around per-identity centres with a per-camera bias and
noise; pids and camids are drawn at random, like the real splits, so every query has true matches
in other cameras spread through its ranking.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SIZES = {  # name: (queries, gallery, identities, cameras)
    "duke": (2228, 17661, 1110, 8),
    "msmt17": (11659, 82161, 3060, 15),
}
# The synthetic identities live in this many dimensions (difficulty set by the noise below);
# features mode embeds them isometrically in --dim dimensions, so both modes rank alike.
_INTRINSIC_DIM = 32
_NOISE, _CAMERA_BIAS = 0.8, 0.5


def make_split(count, centres, cam_bias, rng, embedding=None):
    """Unit-norm float32 features of `count` random (pid, camid) draws, 4,096 rows at a time."""
    pids = rng.integers(0, len(centres), count)
    camids = rng.integers(0, len(cam_bias), count)
    dim = centres.shape[1] if embedding is None else embedding.shape[1]
    feats = np.empty((count, dim), np.float32)
    for start in range(0, count, 4096):
        sl = slice(start, start + 4096)
        rows = centres[pids[sl]] + cam_bias[camids[sl]]
        rows += rng.standard_normal(rows.shape, np.float32) * _NOISE
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        feats[sl] = rows if embedding is None else rows @ embedding
    return feats, pids, camids


def _rss_mib():
    with open("/proc/self/status") as handle:
        line = next(entry for entry in handle if entry.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def run_one(name, mode, dim, chunk_size):
    from mlc_tf import evaluation

    num_q, num_g, num_ids, num_cams = SIZES[name]
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((num_ids, _INTRINSIC_DIM), np.float32)
    cam_bias = rng.standard_normal((num_cams, _INTRINSIC_DIM), np.float32) * _CAMERA_BIAS
    embedding = None
    if mode == "features" and dim != _INTRINSIC_DIM:
        # Orthonormal rows: distances, and so the ranking, are those of the small features.
        basis = np.random.default_rng(1).standard_normal((dim, _INTRINSIC_DIM))
        embedding = np.linalg.qr(basis)[0].T.astype(np.float32)
    else:
        dim = _INTRINSIC_DIM
    q_feat, q_pids, q_cams = make_split(num_q, centres, cam_bias, rng, embedding)
    g_feat, g_pids, g_cams = make_split(num_g, centres, cam_bias, rng, embedding)
    base = _rss_mib()
    start = time.perf_counter()
    if mode == "features":
        result = evaluation.evaluate_features(q_feat, g_feat, q_pids, g_pids, q_cams, g_cams,
                                              chunk_size=chunk_size)
        seconds = time.perf_counter() - start
    else:
        evaluator = evaluation.MarketEvaluator(g_pids, g_cams)
        seconds = 0.0
        for first in range(0, num_q, chunk_size):
            block = slice(first, first + chunk_size)
            distances = evaluation.pairwise_distance(q_feat[block], g_feat)
            tick = time.perf_counter()
            evaluator.add(distances, q_pids[block], q_cams[block])
            seconds += time.perf_counter() - tick
        result = evaluator.result()
    total = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "total": total, "base_mib": base, "peak_mib": peak,
                      "dim": dim, "mAP": result["mAP"], "rank1": float(result["cmc"][0])}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="duke,msmt17")
    parser.add_argument("--modes", default="distances,features")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension (features mode)")
    parser.add_argument("--chunk_size", type=int, default=256, help="queries per block")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        name, mode = args.one.split(":")
        run_one(name, mode, args.dim, args.chunk_size)
        return
    print(f"{'size':7} {'queries x gallery':>18} {'mode':10} {'dim':>5} {'seconds':>8} "
          f"{'wall s':>7} {'base MiB':>9} {'peak MiB':>9} {'mAP':>6} {'rank-1':>6}")
    for name in args.sizes.split(","):
        for mode in args.modes.split(","):
            out = subprocess.run([sys.executable, __file__, f"--one={name}:{mode}",
                                  f"--dim={args.dim}", f"--chunk_size={args.chunk_size}"],
                                 check=True, capture_output=True, text=True).stdout
            row = json.loads(out.strip().splitlines()[-1])
            num_q, num_g = SIZES[name][:2]
            print(f"{name:7} {f'{num_q:,} x {num_g:,}':>18} {mode:10} {row['dim']:5d} "
                  f"{row['seconds']:8.1f} {row['total']:7.1f} {row['base_mib']:9.0f} "
                  f"{row['peak_mib']:9.0f} {row['mAP']:6.3f} {row['rank1']:6.3f}", flush=True)
    print("seconds: evaluator only (distances mode) or evaluate_features end to end (features); "
          "wall s: including making the distance blocks")


if __name__ == "__main__":
    main()
