"""Images per second of each stage of the tf.data input pipeline, per CPU core and on 16 cores.

Usage: python bench/input_bench.py [--num_images=400] [--batch_size=64] [--repeats=3]
           [--train_bench_args="--cases=resnet50:256x128 --steps=3"]

Writes num_images 128x64 JPEGs (person-crop size of Market-1501) into a temporary folder and
times, after one warm-up pass, full passes of each stage at 256x128 output:

  read                      tf.io.read_file (the pipeline adds a cheap signature check)
  decode                    + JPEG decode (the uncached pipeline's first half)
  decode + resize           + bilinear resize (the evaluation pipeline)
  build decode cache        decode_images: decoding every file once into host memory
  decode + augment + batch  the training pipeline, augment_on=input, uncached (today's default)
  cache + augment + batch   the same, from the decode cache (bit for bit the same batches)
  decode + batch            augment_on=device, uncached: what the host still does
  cache + batch             augment_on=device, cached: what the host still does
  augment in tf.function    augment_batch on in-memory batches, as the step runs it (on CPU
                            here; on a GPU host this stage runs on the accelerator)

The two device rows include the augmentation's random draws (augment_params), made on the host.

It reports the best of the timed passes (the machine is shared) and the process CPU time per
image of that pass (all threads), which other load disturbs less than wall time. Images/s per
core is 1000 / (CPU ms per image); the 16-core figure assumes that rate on each of 16 cores.
Then it runs bench/train_bench.py with --train_bench_args (empty: skipped) and prints the step's
images/s beside them.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mlc_tf.config import AugmentConfig  # noqa: E402
from mlc_tf.data import pipeline  # noqa: E402

SIZE = (256, 128)
HOST_CORES = 16


def write_images(folder: str, count: int, seed: int = 0) -> list[str]:
    """Smooth colour blobs plus noise, so JPEG decoding costs what a real crop costs."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:128, 0:64].astype(np.float32)
    paths = []
    for i in range(count):
        base = rng.uniform(0, 255, 3) + 60 * np.sin(rows[..., None] / rng.uniform(5, 30, 3)
                                                    + cols[..., None] / rng.uniform(5, 30, 3))
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{i:05d}.jpg")
        tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=90))
        paths.append(path)
    return paths


def images_per_second(run_pass, repeats: int) -> tuple[float, float]:
    """(images/second, CPU milliseconds/image) of the fastest of `repeats` passes after a warm-up.

    Args:
        run_pass: pass number -> the number of images the pass handled.
    """
    best, cpu_ms = 0.0, 0.0
    for attempt in range(repeats + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        count = run_pass(attempt)
        rate = count / (time.perf_counter() - start)
        if attempt and rate > best:
            best, cpu_ms = rate, 1e3 * (time.process_time() - cpu_start) / count
    return best, cpu_ms


def _count(dataset) -> int:
    count = 0
    for batch in dataset:
        images = batch["image"] if isinstance(batch, dict) else batch
        count += int(images.shape[0])
    return count


def _per_image(paths, batch_size, load) -> tf.data.Dataset:
    return (tf.data.Dataset.from_tensor_slices(tf.constant(paths))
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size))


def _stages(paths: list[str], batch_size: int, repeats: int) -> list[tuple[str, tuple]]:
    camids, indices = [0] * len(paths), list(range(len(paths)))
    augment = AugmentConfig()

    def train(epoch, **kwargs):
        return pipeline.make_train_dataset(paths, camids, indices, image_size=SIZE,
                                           batch_size=batch_size, seed=0, epoch=epoch,
                                           augment=augment, **kwargs)

    def build_cache(_):
        return len(pipeline.decode_images("memory", paths, budget_bytes=2**40))

    cache = pipeline.decode_images("memory", paths, budget_bytes=2**40)
    device_batches = [tf.nest.map_structure(tf.constant, batch)
                      for batch in train(0, decoded=cache, augment_on="device")
                      .as_numpy_iterator()]
    augment_fn = tf.function(pipeline.device_augmentation(SIZE, augment))

    def augment_in_function(_):
        return sum(int(augment_fn(batch).shape[0]) for batch in device_batches)

    timed = [
        ("read", lambda _: _count(_per_image(
            paths, batch_size, lambda p: tf.strings.length(tf.io.read_file(p))))),
        ("decode", lambda _: _count(_per_image(paths, batch_size, lambda p: tf.io.decode_image(
            tf.io.read_file(p), channels=3, expand_animations=False)))),
        ("decode + resize", lambda _: _count(pipeline.make_eval_dataset(paths, SIZE, batch_size))),
        ("build decode cache", build_cache),
        ("decode + augment + batch", lambda e: _count(train(e))),
        ("cache + augment + batch", lambda e: _count(train(e, decoded=cache))),
        ("decode + batch (device)", lambda e: _count(train(e, augment_on="device"))),
        ("cache + batch (device)", lambda e: _count(train(e, decoded=cache, augment_on="device"))),
        ("augment in tf.function", augment_in_function),
    ]
    return [(name, images_per_second(run_pass, repeats)) for name, run_pass in timed]


def _train_bench_rate(args: str) -> tuple[str, float] | None:
    """(the train_bench row, its images/s), from running bench/train_bench.py with args."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_bench.py")
    completed = subprocess.run([sys.executable, script, *shlex.split(args)], check=True,
                               capture_output=True, text=True)
    rows = [line for line in completed.stdout.splitlines() if re.match(r"^resnet\d+ ", line)]
    return (rows[-1], float(rows[-1].split()[-1])) if rows else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train_bench_args", default="--cases=resnet50:256x128 --steps=3",
                        help="Arguments of bench/train_bench.py for the step rate; empty = skip.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(folder, args.num_images)
        rows = _stages(paths, args.batch_size, args.repeats)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"{len(paths)} JPEGs 128x64 -> {SIZE[0]}x{SIZE[1]}, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores visible, load average {load}, TensorFlow {tf.__version__}")
    print(f"{'stage':<26} {'images/s':>9} {'CPU ms/image':>13} {'per core':>9} "
          f"{f'{HOST_CORES} cores':>9}")
    for name, (rate, cpu_ms) in rows:
        per_core = 1e3 / cpu_ms
        print(f"{name:<26} {rate:>9.0f} {cpu_ms:>13.2f} {per_core:>9.0f} "
              f"{HOST_CORES * per_core:>9.0f}")
    if args.train_bench_args:
        step = _train_bench_rate(args.train_bench_args)
        print(f"training step (bench/train_bench.py {args.train_bench_args}): "
              + (f"{step[1]:.1f} images/s  [{step[0].strip()}]" if step else "no row printed"))


if __name__ == "__main__":
    main()
