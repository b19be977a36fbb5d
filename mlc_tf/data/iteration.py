"""Iterating tf.data datasets without waiting for their iterators to be destroyed.

With TF 2.21 on CPU, destroying a tf.data iterator (plain or MirroredStrategy's multi-device
one) often blocks for seconds to tens of seconds: the destructor waits for a tf.data background
thread that sleeps until its timer expires (`bench/iterator_bench.py` measures it). The wait
releases the GIL, so `iterate` hands each finished iterator to one daemon thread that destroys
it while training goes on.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterable, Iterator

REAPER_THREAD_NAME = "mlc_tf-iterator-reaper"

_lock = threading.Lock()
_retired: queue.Queue | None = None


def iterate(dataset: Iterable) -> Iterator:
    """Yields the elements of `dataset`; its iterator is then destroyed on the reaper thread.

    Also when the caller stops early or an exception ends the loop.
    """
    iterator = iter(dataset)
    try:
        for element in iterator:
            yield element
    finally:
        # Only the box may hold the iterator, so clearing it on the reaper thread destroys it.
        box = [iterator]
        del iterator
        _reaper_queue().put(box)


def wait_for_retired() -> None:
    """Blocks until every iterator handed over so far has been destroyed."""
    if _retired is not None:
        _retired.join()


def _reaper_queue() -> queue.Queue:
    global _retired
    with _lock:
        if _retired is None:
            _retired = queue.Queue()
            threading.Thread(target=_reap, args=(_retired,), name=REAPER_THREAD_NAME,
                             daemon=True).start()
    return _retired


def _reap(retired: queue.Queue) -> None:
    while True:
        box = retired.get()
        box.clear()  # drops the last reference: the iterator's destructor runs here
        retired.task_done()
