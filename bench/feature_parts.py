#!/usr/bin/env python3
"""mAP of each part of multi-scale exports: f_all, global, upper, lower.

An export's f_all is the concatenation [global, upper, lower] of equal lengths, L2-normalised
as a whole; each part is scored on its own, re-normalised, on the query/gallery split of each
domain. A global-only export (w/o MN) has one column. This is what tells whether the
multi-scale network's parts, or its global feature itself, are weaker than a global-only
network's.

  python bench/feature_parts.py --saved_models=runs/accuracy/source_seed0/export,\
runs/accuracy/source_no_mn_seed0/export
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list("saved_models", None, "Exports of bin/train.", required=True)
flags.DEFINE_string("dataset", "synthetic", "Dataset name.")
flags.DEFINE_string("data_dir", "data", "Dataset folder.")
flags.DEFINE_list("domains", ["source", "target"],
                  "Values of the synthetic dataset's domain option; empty for other datasets.")
FLAGS = flags.FLAGS

PARTS = ("global", "upper", "lower")


def part_views(features, multiscale: bool) -> dict:
    """{'f_all': features, and for a multi-scale export each part, re-normalised}."""
    import numpy as np
    views = {"f_all": features}
    if multiscale:
        for name, part in zip(PARTS, np.split(features, len(PARTS), axis=1)):
            views[name] = part / np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
    return views


def main(argv):
    del argv
    from mlc_tf import export, features
    from mlc_tf.data import registry

    domains = FLAGS.domains or [None]
    print("export | domain | " + " | ".join(f"{name} mAP %" for name in ("f_all",) + PARTS))
    for path in FLAGS.saved_models:
        extractor = export.load_feature_extractor(path)
        size, multiscale = extractor.metadata["image_size"], extractor.metadata["multiscale"]
        for domain in domains:
            options = {"domain": domain} if domain else {}
            data = registry.create(FLAGS.dataset, FLAGS.data_dir, **options)
            query, gallery = (part_views(features.extract_features(
                extractor, [s.path for s in split], image_size=size), multiscale)
                for split in (data.query, data.gallery))
            scores = [100 * features.score(query[name], gallery[name], data.query,
                                           data.gallery).metrics["mAP"] for name in query]
            print(f"{path} | {domain or FLAGS.dataset} | "
                  + " | ".join(f"{value:.1f}" for value in scores), flush=True)


if __name__ == "__main__":
    app.run(main)
