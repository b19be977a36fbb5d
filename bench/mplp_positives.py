#!/usr/bin/env python3
"""What MPLP would call positive on an export's training features: plain and camera-centred.

The export's features of the un-augmented training images, L2-normalised, stand in for the
memory bank at the start of MPLP (after the one-hot epochs it holds the network's features of
those images). For each bank and threshold it prints MPLP's positives per anchor (the anchor's
own slot left out), their precision and recall against the true identities, the share that come
from the anchor's camera, and the same-identity and same-camera shares of the 10 nearest slots.

  python bench/mplp_positives.py --saved_model=runs/synthetic_source/export \
      --dataset=synthetic --dataset_options=domain=target
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_string("saved_model", None, "Export of bin/train.", required=True)
flags.DEFINE_string("dataset", "synthetic", "Dataset name.")
flags.DEFINE_string("data_dir", "data", "Dataset folder.")
flags.DEFINE_list("dataset_options", ["domain=target"], "key=value options of the dataset.")
flags.DEFINE_list("thresholds", ["0.6"], "MPLP thresholds t.")
FLAGS = flags.FLAGS

_BLOCK = 128


def _positives(memory, thresholds, pids, cams):
    import numpy as np
    import tensorflow as tf

    from mlc_tf import diagnostics, losses
    bank = tf.constant(memory)
    sims = memory @ memory.T
    np.fill_diagonal(sims, -np.inf)
    nearest = np.argsort(-sims, axis=1)[:, :10]
    neighbours = (np.mean(pids[nearest] == pids[:, None]), np.mean(cams[nearest] == cams[:, None]))
    slot_pids, slot_cams = tf.constant(pids), tf.constant(cams)
    for threshold in thresholds:
        sums = {"true_positive": 0.0, "predicted": 0.0, "relevant": 0.0, "same_camera": 0.0}
        for start in range(0, len(pids), _BLOCK):
            anchors = tf.range(start, min(len(pids), start + _BLOCK))
            targets = losses.mplp_targets(bank, anchors, threshold=threshold)
            counts = diagnostics.mplp_counts(targets, anchors, slot_pids)
            # Same-camera positives: the counts against cameras in place of identities.
            counts["same_camera"] = diagnostics.mplp_counts(targets, anchors,
                                                            slot_cams)["true_positive"]
            for name in sums:
                sums[name] += float(tf.reduce_sum(counts[name]))
        yield threshold, sums, neighbours


def main(argv):
    del argv
    import numpy as np

    from mlc_tf import export, features, self_paced
    from mlc_tf.data import registry
    options = dict(option.split("=", 1) for option in FLAGS.dataset_options)
    data = registry.create(FLAGS.dataset, FLAGS.data_dir, **options)
    extractor = export.load_feature_extractor(FLAGS.saved_model)
    extracted = features.extract_features(extractor, [s.path for s in data.train],
                                          image_size=extractor.metadata["image_size"],
                                          batch_size=256)
    pids = np.array([s.pid for s in data.train])
    cams = np.array([s.camid for s in data.train])
    banks = {"plain": extracted / np.linalg.norm(extracted, axis=1, keepdims=True),
             "camera-centred": self_paced.camera_normalized(extracted, cams)}
    print(f"python bench/mplp_positives.py --saved_model={FLAGS.saved_model} "
          f"--dataset={FLAGS.dataset} --dataset_options={','.join(FLAGS.dataset_options)}")
    print(f"{'memory':<15} {'t':>4} {'positives':>9} {'precision':>9} {'recall':>6} "
          f"{'same cam':>8} {'10-NN same id':>13} {'10-NN same cam':>14}")
    for name, bank in banks.items():
        for threshold, sums, (same_id, same_cam) in _positives(
                bank.astype(np.float32), [float(t) for t in FLAGS.thresholds], pids, cams):
            predicted = max(sums["predicted"], 1.0)
            print(f"{name:<15} {threshold:>4.2f} {sums['predicted'] / len(pids):>9.2f} "
                  f"{sums['true_positive'] / predicted:>9.3f} "
                  f"{sums['true_positive'] / max(sums['relevant'], 1.0):>6.3f} "
                  f"{sums['same_camera'] / predicted:>8.3f} {same_id:>13.3f} {same_cam:>14.3f}")


if __name__ == "__main__":
    app.run(main)
