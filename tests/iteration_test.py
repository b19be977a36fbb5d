"""Tests of mlc_tf.data.iteration: elements in order, iterators destroyed on the reaper thread."""

import threading

import pytest
import tensorflow as tf

from mlc_tf.data import iteration


class _TrackedDataset:
    """An iterable whose iterators record the thread that destroys them."""

    def __init__(self, items):
        self.items = items
        self.destroyed_on = []

    def __iter__(self):
        return _TrackedIterator(self.items, self.destroyed_on)


class _TrackedIterator:
    def __init__(self, items, destroyed_on):
        self._items = iter(items)
        self._destroyed_on = destroyed_on

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._items)

    def __del__(self):
        self._destroyed_on.append(threading.current_thread().name)


def test_yields_everything_then_destroys_the_iterator_off_the_main_thread():
    dataset = _TrackedDataset([3, 1, 2])
    assert list(iteration.iterate(dataset)) == [3, 1, 2]
    iteration.wait_for_retired()
    assert dataset.destroyed_on == [iteration.REAPER_THREAD_NAME]


def test_early_stop_and_errors_also_retire_the_iterator():
    dataset = _TrackedDataset(range(10))
    for element in iteration.iterate(dataset):
        if element == 2:
            break
    with pytest.raises(RuntimeError, match="stop"):
        for element in iteration.iterate(dataset):
            raise RuntimeError("stop")
    iteration.wait_for_retired()
    assert dataset.destroyed_on == [iteration.REAPER_THREAD_NAME] * 2


def test_distributed_tf_dataset_in_order():
    strategy = tf.distribute.MirroredStrategy(["/device:CPU:0"])
    batches = tf.data.Dataset.range(12).batch(4)
    got = [b.numpy().tolist() for b in
           iteration.iterate(strategy.experimental_distribute_dataset(batches))]
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    iteration.wait_for_retired()
