"""Wall time and peak memory of the streaming Market-protocol evaluation at Duke and MSMT17 size.

Usage: python bench/eval_bench.py [--sizes=duke,msmt17] [--dim=256]

Each size runs in its own subprocess so that its peak resident memory (ru_maxrss) is its own.
Features are synthetic: identities with several camera views, like the real query/gallery
splits, so that every query has true matches spread through the ranking.
"""

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

SIZES = {  # name: (queries, gallery, identities, cameras)
    "duke": (2228, 17661, 1110, 8),
    "msmt17": (11659, 82161, 3060, 15),
}


def make_features(num_q, num_g, num_ids, num_cams, dim, seed=0):
    """Unit-norm features around per-identity centres with per-camera bias."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim)).astype(np.float32)
    cam_bias = rng.normal(scale=0.8, size=(num_cams, dim)).astype(np.float32)

    def draw(count):
        pids = rng.integers(0, num_ids, count)
        camids = rng.integers(0, num_cams, count)
        feats = centres[pids] + cam_bias[camids] + rng.normal(scale=1.3, size=(count, dim))
        feats /= np.linalg.norm(feats, axis=1, keepdims=True)
        return feats.astype(np.float32), pids, camids

    return draw(num_q), draw(num_g)


def run_one(name, dim):
    from mlc_tf import evaluation

    num_q, num_g, num_ids, num_cams = SIZES[name]
    (q_feat, q_pids, q_cams), (g_feat, g_pids, g_cams) = make_features(
        num_q, num_g, num_ids, num_cams, dim)
    start = time.perf_counter()
    result = evaluation.evaluate_features(q_feat, g_feat, q_pids, g_pids, q_cams, g_cams)
    seconds = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"name": name, "seconds": seconds, "peak_mib": peak_mib,
                      "mAP": result["mAP"], "rank1": float(result["cmc"][0])}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="duke,msmt17")
    parser.add_argument("--dim", type=int, default=256, help="feature dimension")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args.dim)
        return
    print(f"{'size':8} {'queries x gallery':>18} {'seconds':>8} {'peak MiB':>9} {'mAP':>7} {'rank-1':>7}")
    for name in args.sizes.split(","):
        out = subprocess.run([sys.executable, __file__, f"--one={name}", f"--dim={args.dim}"],
                             check=True, capture_output=True, text=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        num_q, num_g = SIZES[name][:2]
        print(f"{name:8} {f'{num_q:,} x {num_g:,}':>18} {row['seconds']:8.1f} "
              f"{row['peak_mib']:9.0f} {row['mAP']:7.3f} {row['rank1']:7.3f}")


if __name__ == "__main__":
    main()
