"""Images per second of the tf.data input pipeline: decode+resize and decode+augment.

Usage: python bench/input_bench.py [--num_images=400] [--batch_size=64] [--repeats=3]

Writes num_images 128x64 JPEGs (person-crop size of Market-1501) into a temporary folder, then
times, after one warm-up pass, full passes of the evaluation pipeline (decode + bilinear resize)
and of the training pipeline (decode + default MMCL-style augmentation: resized rectangle crop,
flip, rotation, colour jitter, random erasing) at 256x128 and 128x64, and the 'pad' crop variant
at 256x128. Reports the best of the timed passes, since the machine is shared, and the process
CPU time per image of that pass (all threads), which other load disturbs less than wall time.
"""

import argparse
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from mlc_tf.config import AugmentConfig
from mlc_tf.data import pipeline


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


def images_per_second(make_dataset, repeats: int) -> tuple[float, float]:
    """(images/second, CPU milliseconds/image) of the fastest of `repeats` passes after a warm-up."""
    best, cpu_ms = 0.0, 0.0
    for attempt in range(repeats + 1):
        start, cpu_start, count = time.perf_counter(), time.process_time(), 0
        for batch in make_dataset(attempt):
            images = batch["image"] if isinstance(batch, dict) else batch
            count += int(images.shape[0])
        rate = count / (time.perf_counter() - start)
        if attempt and rate > best:
            best, cpu_ms = rate, 1e3 * (time.process_time() - cpu_start) / count
    return best, cpu_ms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=400)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        paths = write_images(folder, args.num_images)
        n = len(paths)
        camids, indices = [0] * n, list(range(n))
        rows = []
        for size in ((256, 128), (128, 64)):
            rows.append(("decode+resize", size, images_per_second(
                lambda _: pipeline.make_eval_dataset(paths, size, args.batch_size), args.repeats)))
            for crop in ("resized", "pad") if size == (256, 128) else ("resized",):
                config = AugmentConfig(crop=crop)
                rows.append((f"decode+augment ({crop} crop)", size, images_per_second(
                    lambda epoch: pipeline.make_train_dataset(
                        paths, camids, indices, image_size=size, batch_size=args.batch_size,
                        seed=0, epoch=epoch, augment=config), args.repeats)))
    print(f"{n} JPEGs 128x64, batch {args.batch_size}, {os.cpu_count()} CPU cores visible, "
          f"TensorFlow {tf.__version__}")
    print(f"{'pipeline':<30} {'output':>8} {'images/s':>10} {'CPU ms/image':>13}")
    for name, size, (rate, cpu_ms) in rows:
        print(f"{name:<30} {f'{size[0]}x{size[1]}':>8} {rate:>10.0f} {cpu_ms:>13.2f}")


if __name__ == "__main__":
    main()
