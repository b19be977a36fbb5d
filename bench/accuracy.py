#!/usr/bin/env python3
"""MLC against its ablations and baselines on the synthetic target domain, over seeds.

Every row trains on the target domain (`domain=target`) without its labels, starting from a
network trained with labels on the source domain (configs/synthetic_source.cfg), unless the
row says otherwise; each export is scored on the target's query/gallery like bin/evaluate.
Prints mAP and rank-1 as mean ± sd over the seeds, and the minutes each row trained. Runs
resume or reuse what is already in --root.

  python bench/accuracy.py --root=runs/accuracy            # seeds 0, 1, 2: about 1.5 hours
  python bench/accuracy.py --seeds=0 --rows=source,mlc,supervised
  python bench/accuracy.py --root=runs/accuracy_warmup --source_flags=--lr_warmup_epochs=3
"""

import collections
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

flags.DEFINE_string("root", "runs/accuracy", "Folder for one workdir per row and seed.")
flags.DEFINE_string("data_dir", "data", "Dataset folder (the synthetic caches go here).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds; each row is trained once per seed.")
flags.DEFINE_list("rows", ["source", "mlc", "no_sc", "no_mn", "kmeans", "supervised",
                           "scratch"], "Rows to run, in table order.")
flags.DEFINE_list("source_flags", [], "Extra bin/train flags of the source networks, e.g. "
                  "--source_flags=--lr_warmup_epochs=3 (use a --root of their own).")
FLAGS = flags.FLAGS

SOURCE_CFG = os.path.join(REPO, "configs", "synthetic_source.cfg")
TARGET_CFG = os.path.join(REPO, "configs", "synthetic.cfg")
# Row: (title, source network: 'source' | 'source_no_mn' | None for scratch, extra flags);
# the 'source' row trains nothing on the target.
ROWS = {
    "source": ("source model only (no target training)", "source", None),
    "mlc": ("MLC: ML + SC (DBSCAN) + MN", "source", []),
    "no_sc": ("w/o SC (multi-label loss only)", "source", ["--clustering=none"]),
    "no_mn": ("w/o MN (global feature only)", "source_no_mn", ["--multiscale=false"]),
    "kmeans": ("SC with k-means (k = true id count)", "source", ["--clustering=kmeans"]),
    "supervised": ("supervised on the target (upper bound)", "source", ["--supervised"]),
    # From scratch: the schedule of the earlier from-scratch demo (20 epochs, one-hot targets
    # for 3, clustering from epoch 7), the backbone at the full rate as in the demo.
    "scratch": ("MLC from scratch", None, ["--backbone_lr_mult=1.0", "--epochs=20",
                                           "--warmup_epochs=3", "--sc_start_epoch=6",
                                           "--lr_step=16"]),
}
SOURCE_FLAGS = {"source": [], "source_no_mn": ["--multiscale=false"]}


def _train(workdir: str, flagfile: str, seed: str, extra: list[str]) -> float:
    """Runs bin/train unless workdir already has an export; returns the minutes it took."""
    if os.path.isfile(os.path.join(workdir, "export", "saved_model.pb")):
        return float("nan")
    command = [sys.executable, os.path.join(REPO, "bin", "train"), f"--flagfile={flagfile}",
               f"--data_dir={FLAGS.data_dir}", f"--workdir={workdir}", f"--seed={seed}",
               "--init_from_flagfile=", *extra]
    print("==", " ".join(command[1:]), flush=True)
    start = time.time()
    subprocess.run(command, check=True, cwd=REPO)
    return (time.time() - start) / 60


def _score(export_dir: str) -> dict[str, float]:
    from mlc_tf import export, features
    from mlc_tf.data import registry
    extractor = export.load_feature_extractor(export_dir)
    data = registry.create("synthetic", FLAGS.data_dir, domain="target")
    return features.evaluate(extractor, data, image_size=extractor.metadata["image_size"]).metrics


def _num_target_ids() -> int:
    from mlc_tf.data import registry
    data = registry.create("synthetic", FLAGS.data_dir, domain="target")
    return len({s.pid for s in data.train})


def _mean_sd(values) -> str:
    import numpy as np
    values = 100 * np.asarray(values)
    return f"{values.mean():5.1f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:4.1f}"


def _table(seeds, results, minutes) -> str:
    lines = [f"synthetic target domain, seeds {','.join(seeds)}; mean ± sd over seeds; minutes "
             "of each row's own training (the source row: of the source network)",
             f"{'row':<42} {'mAP %':>13} {'rank-1 %':>13} {'minutes':>8}"]
    for name in FLAGS.rows:
        title, source, extra = ROWS[name]
        spent = [m for m in minutes[source if extra is None else name] if m == m]
        spent_text = f"{sum(spent) / len(spent):8.1f}" if spent else f"{'reused':>8}"
        lines.append(f"{title:<42} {_mean_sd([r['mAP'] for r in results[name]]):>13} "
                     f"{_mean_sd([r['rank1'] for r in results[name]]):>13} {spent_text}")
    return "\n".join(lines)


def main(argv):
    del argv
    results = collections.defaultdict(list)
    minutes = collections.defaultdict(list)
    for done, seed in enumerate(FLAGS.seeds, 1):
        sources = {}
        for name in FLAGS.rows:
            _, source, extra = ROWS[name]
            if source is not None and source not in sources:
                sources[source] = os.path.join(FLAGS.root, f"{source}_seed{seed}")
                minutes[source].append(_train(
                    sources[source], SOURCE_CFG, seed, SOURCE_FLAGS[source] + FLAGS.source_flags))
            if extra is None:
                results[name].append(_score(os.path.join(sources[source], "export")))
                continue
            if name == "kmeans":
                extra = extra + [f"--num_clusters={_num_target_ids()}"]
            workdir = os.path.join(FLAGS.root, f"{name}_seed{seed}")
            start_from = [f"--init_from={sources[source]}"] if source else ["--init_from="]
            minutes[name].append(_train(workdir, TARGET_CFG, seed, start_from + extra))
            results[name].append(_score(os.path.join(workdir, "export")))
        # The table so far, after every seed: a long run that is stopped still reports.
        print("\n" + _table(FLAGS.seeds[:done], results, minutes) + "\n", flush=True)


if __name__ == "__main__":
    app.run(main)
