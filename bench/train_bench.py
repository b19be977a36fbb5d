#!/usr/bin/env python3
"""Training throughput (images/second) of the MLC step for ResNet50 and the small backbone.

Times Learner.step (forward, MPLP + MMCL against the memory, CE + triplet, SGD, memory update)
on random in-memory batches, so the input pipeline is left out (bench/input_bench.py times it).

  python bench/train_bench.py                                  # CPU defaults: small batches
  python bench/train_bench.py --batch_size=128 --steps=20 --cases=resnet50:256x128 \
      --mixed_precision=false,true --jit_compile=false,true    # on a GPU
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

flags.DEFINE_list("cases", ["resnet50:256x128", "resnet18:128x64", "resnet18:64x32"],
                  "backbone:HxW combinations to time.")
flags.DEFINE_integer("batch_size", 16, "Global batch size.")
flags.DEFINE_integer("warmup", 2, "Untimed steps (tracing) before timing.")
flags.DEFINE_integer("steps", 3, "Timed steps.")
flags.DEFINE_integer("memory_slots", 12936, "Memory-bank slots (Market-1501 size).")
flags.DEFINE_list("mixed_precision", ["false"], "Values of --mixed_precision to time.")
flags.DEFINE_list("jit_compile", ["false"], "Values of --jit_compile to time.")
flags.DEFINE_bool("joint", True, "Time the joint step (with CE + triplet) rather than ML only.")
FLAGS = flags.FLAGS


def _time_case(backbone, image_size, mixed, jit):
    import keras
    import numpy as np
    import tensorflow as tf

    from mlc_tf import config as config_lib
    from mlc_tf import train

    keras.mixed_precision.set_global_policy("mixed_bfloat16" if mixed else "float32")
    strategy = _time_case.strategy
    batch = FLAGS.batch_size
    config = config_lib.Config(
        data=config_lib.DataConfig(image_size=image_size, batch_size=batch),
        model=config_lib.ModelConfig(backbone=backbone, pretrained="none"),
        train=config_lib.TrainConfig(lr=0.01, jit_compile=jit))
    learner = train.build(config, strategy, FLAGS.memory_slots)
    memory = learner.memory
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(FLAGS.memory_slots, memory.dim)).astype(np.float32)
    memory.variable.assign(rows / np.linalg.norm(rows, axis=1, keepdims=True))
    num_classes = max(2, batch // 4)
    if FLAGS.joint:
        learner.new_classifier(num_classes, seed=0)
    dataset = tf.data.Dataset.from_tensors({
        "image": rng.uniform(0, 255, (batch, *image_size, 3)).astype(np.float32),
        "index": rng.permutation(FLAGS.memory_slots)[:batch].astype(np.int32),
        "label": (np.arange(batch) % num_classes).astype(np.int32)}).repeat()
    iterator = iter(strategy.experimental_distribute_dataset(dataset))
    for _ in range(FLAGS.warmup):
        float(learner.step(next(iterator), 0.1, targets="mplp", joint=FLAGS.joint)["loss"])
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
        float(learner.step(next(iterator), 0.1, targets="mplp", joint=FLAGS.joint)["loss"])
    seconds = (time.perf_counter() - start) / FLAGS.steps
    return seconds, batch / seconds


def main(argv):
    del argv
    import tensorflow as tf

    from mlc_tf import train
    _time_case.strategy = train.make_strategy()
    device = ", ".join(d.name for d in tf.config.list_logical_devices("GPU")) or "CPU"
    print(f"device: {device}; global batch {FLAGS.batch_size}; {FLAGS.memory_slots} memory "
          f"slots; {'joint' if FLAGS.joint else 'ML-only'} step; {FLAGS.steps} timed steps "
          f"after {FLAGS.warmup} warm-up")
    print(f"{'backbone':<10} {'input':>8} {'mixed':>6} {'xla':>5} {'s/step':>8} {'images/s':>9}")
    for case in FLAGS.cases:
        backbone, size = case.split(":")
        image_size = tuple(int(v) for v in size.split("x"))
        for mixed in FLAGS.mixed_precision:
            for jit in FLAGS.jit_compile:
                seconds, rate = _time_case(backbone, image_size, mixed == "true", jit == "true")
                print(f"{backbone:<10} {size:>8} {mixed:>6} {jit:>5} {seconds:>8.3f} "
                      f"{rate:>9.1f}", flush=True)


if __name__ == "__main__":
    app.run(main)
