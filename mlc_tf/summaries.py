"""Host-side metric averaging and TensorBoard scalars for training."""

from __future__ import annotations

import collections
from collections.abc import Mapping

import tensorflow as tf


class MeanTracker:
    """Running means of named scalars over the steps of an epoch."""

    def __init__(self):
        self._sums: dict[str, float] = collections.defaultdict(float)
        self._counts: dict[str, int] = collections.defaultdict(int)

    def update(self, values: Mapping[str, float]) -> None:
        """Adds one value per name."""
        for name, value in values.items():
            self._sums[name] += float(value)
            self._counts[name] += 1

    def result(self) -> dict[str, float]:
        """{name: mean} of everything seen since the last reset."""
        return {name: self._sums[name] / self._counts[name] for name in self._sums}

    def reset(self) -> None:
        """Forgets everything."""
        self._sums.clear()
        self._counts.clear()


def write_scalars(writer: tf.summary.SummaryWriter, values: Mapping[str, float],
                  step: int) -> None:
    """Writes {prefixed name: value} at `step` and flushes (an epoch is long; lose nothing).

    tf.summary.scalar needs the tensorboard package; the events it writes are these same
    tagged tensors, so we write them with core TF and need TensorBoard only to view them.
    """
    metadata = tf.compat.v1.SummaryMetadata(
        plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars"))
    with writer.as_default(step=step):
        for name, value in values.items():
            tf.summary.write(name, tf.constant(float(value), tf.float32), metadata=metadata)
    writer.flush()
