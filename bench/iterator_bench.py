"""Main-thread time lost at the end of an epoch to destroying its tf.data iterator.

Usage: python bench/iterator_bench.py [--epochs=12] [--steps=42] [--step_seconds=0.3]

Each epoch builds a fresh MirroredStrategy-distributed dataset (as training does), consumes it
with a sleep per batch standing in for the training step, and times from the last batch until
the main thread is free again: with a plain `for` loop (the iterator is destroyed on the main
thread) and with mlc_tf.data.iteration.iterate (destroyed on the reaper thread).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # noqa: E402

from mlc_tf.data import iteration  # noqa: E402


def epoch_dataset(steps: int) -> tf.data.Dataset:
    return (tf.data.Dataset.range(steps * 32)
            .map(lambda i: tf.cast(i, tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
            .batch(32, drop_remainder=True)
            .prefetch(tf.data.AUTOTUNE))


def end_of_epoch_seconds(strategy, steps: int, step_seconds: float, reaped: bool) -> float:
    """Seconds from the last batch of one epoch until the main thread can go on."""
    distributed = strategy.experimental_distribute_dataset(epoch_dataset(steps))
    last = time.time()
    # A plain loop releases (and so destroys) its iterator as it ends.
    for _ in iteration.iterate(distributed) if reaped else distributed:
        time.sleep(step_seconds)
        last = time.time()
    return time.time() - last


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=42, help="batches per epoch (demo: 42)")
    parser.add_argument("--step_seconds", type=float, default=0.3)
    args = parser.parse_args()
    print("command: python bench/iterator_bench.py " + " ".join(sys.argv[1:]))
    strategy = tf.distribute.MirroredStrategy(["/device:CPU:0"])
    print(f"{'iteration':<28} {'epochs':>6} {'stalls > 1 s':>12} {'lost s':>8} {'max s':>7}")
    for reaped in (False, True):
        waits = [end_of_epoch_seconds(strategy, args.steps, args.step_seconds, reaped)
                 for _ in range(args.epochs)]
        name = "iteration.iterate (reaper)" if reaped else "plain for loop"
        print(f"{name:<28} {len(waits):>6} {sum(w > 1 for w in waits):>12} "
              f"{sum(waits):>8.1f} {max(waits):>7.1f}", flush=True)
    iteration.wait_for_retired()


if __name__ == "__main__":
    main()
