#!/usr/bin/env python3
"""The paper's Table 4 ablations on the synthetic CPU demo, beside the untrained network.

Each variant is `bin/train --flagfile=configs/synthetic.cfg` plus its overrides, in its own
workdir (a re-run resumes or reuses finished runs); each export is then scored like
bin/evaluate does. Takes about four demo runs.

  python bench/ablation.py --root=runs/ablation [--data_dir=data] [--extra=--epochs=12]
"""

import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import app, flags  # noqa: E402

flags.DEFINE_string("root", "runs/ablation", "Folder for one workdir per variant.")
flags.DEFINE_string("data_dir", "data", "Dataset folder (the synthetic cache goes here).")
flags.DEFINE_string("flagfile_base", os.path.join(REPO, "configs", "synthetic.cfg"),
                    "Flagfile every variant starts from.")
flags.DEFINE_integer("kmeans_clusters", 64, "k of the k-means variant (the demo has 64 "
                     "training identities; the paper swept k).")
flags.DEFINE_list("extra", [], "Extra bin/train flags for every variant.")
flags.DEFINE_list("variants", ["untrained", "mlc", "no_sc", "kmeans", "no_mn"],
                  "Variants to run.")
FLAGS = flags.FLAGS

# Each variant names its clusterer, so the table does not depend on the demo's choice.
VARIANTS = {
    "untrained": ("untrained network", ["--epochs=0"]),
    "mlc": ("MLC (ML + SC with DBSCAN, MN)", ["--clustering=dbscan"]),
    "no_sc": ("w/o SC (multi-label loss only)", ["--clustering=none"]),
    "kmeans": ("SC with k-means instead of DBSCAN", ["--clustering=kmeans"]),
    "no_mn": ("w/o MN (global feature only)", ["--clustering=dbscan", "--multiscale=false"]),
}


def _score(export_dir, data_dir, dataset_options):
    from mlc_tf import export, features
    from mlc_tf.data import registry
    extractor = export.load_feature_extractor(export_dir)
    data = registry.create("synthetic", data_dir, **dataset_options)
    return features.evaluate(extractor, data, image_size=extractor.metadata["image_size"]).metrics


def main(argv):
    del argv
    from mlc_tf import config as config_lib
    rows = []
    for name in FLAGS.variants:
        title, overrides = VARIANTS[name]
        if name == "kmeans":
            overrides = overrides + [f"--num_clusters={FLAGS.kmeans_clusters}"]
        workdir = os.path.join(FLAGS.root, name)
        command = [sys.executable, os.path.join(REPO, "bin", "train"),
                   f"--flagfile={FLAGS.flagfile_base}", f"--data_dir={FLAGS.data_dir}",
                   f"--workdir={workdir}", *overrides, *FLAGS.extra]
        print(f"== {title}: {' '.join(command[1:])}", flush=True)
        start = time.time()
        subprocess.run(command, check=True, cwd=REPO)
        minutes = (time.time() - start) / 60
        config = config_lib.load_json(os.path.join(workdir, "config.json"))
        metrics = _score(os.path.join(workdir, "export"), FLAGS.data_dir, config.data.options())
        rows.append((title, metrics, minutes))
    print(f"\n{'variant':<36} {'mAP':>6} {'rank-1':>7} {'rank-5':>7} {'minutes':>8}")
    for title, metrics, minutes in rows:
        print(f"{title:<36} {100 * metrics['mAP']:>6.1f} {100 * metrics['rank1']:>7.1f} "
              f"{100 * metrics['rank5']:>7.1f} {minutes:>8.1f}")


if __name__ == "__main__":
    app.run(main)
