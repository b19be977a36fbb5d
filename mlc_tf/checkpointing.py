"""Epoch checkpoints of a training run, with a fingerprint checked before anything is restored."""

from __future__ import annotations

import json
import os

import numpy as np
import tensorflow as tf

# Layout of a workdir: the resolved config and the checkpoint folder.
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Checkpoint keys of the plain tensors we read before restoring.
_FINGERPRINT_KEY = "fingerprint/.ATTRIBUTES/VARIABLE_VALUE"
_KEYS = {"epoch": "epoch/.ATTRIBUTES/VARIABLE_VALUE",
         "pseudo_labels": "pseudo_labels/.ATTRIBUTES/VARIABLE_VALUE",
         "best_map": "best_map/.ATTRIBUTES/VARIABLE_VALUE"}


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different dataset or model."""


class RunState:
    """Scalars of the outer loop that a resumed run needs (build in strategy scope).

    Attributes:
        epoch: number of completed epochs (the next epoch to run).
        best_map: best test mAP seen (only meaningful with export_best_by_test).
    """

    def __init__(self):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_map = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best_map")

    def objects(self) -> dict[str, tf.Variable]:
        """{checkpoint name: variable}, to merge into the objects saved."""
        return {"epoch": self.epoch, "best_map": self.best_map}


class Checkpointer:
    """Saves and restores {model, optimizers, memory, run state, classifier} each epoch.

    The checkpoint also stores a JSON fingerprint (dataset, number of training images,
    model options, feature size). restore() compares it with the current run first, so a
    checkpoint of another dataset or model raises instead of restoring half of it or
    silently starting over.
    """

    def __init__(self, directory: str, fingerprint: dict, max_to_keep: int):
        """Args:
            directory: checkpoint folder (created on first save).
            fingerprint: JSON-serialisable description of what the run trains.
            max_to_keep: number of checkpoints kept.
        """
        self.directory = directory
        self.fingerprint = fingerprint
        self.max_to_keep = max_to_keep
        self._fingerprint_var = tf.Variable(json.dumps(fingerprint, sort_keys=True),
                                            trainable=False, name="fingerprint")

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def peek(self) -> dict | None:
        """Reads the run state of the newest checkpoint without restoring anything.

        Returns:
            None without a checkpoint, else {'epoch', 'pseudo_labels', 'best_map', 'path'}
            (pseudo_labels tell the size of the classifier to build before restoring).

        Raises:
            CheckpointMismatchError: the checkpoint belongs to another dataset or model.
        """
        path = self.latest
        if path is None:
            return None
        reader = tf.train.load_checkpoint(path)
        self._check_fingerprint(reader, path)
        state = {name: reader.get_tensor(key) for name, key in _KEYS.items()}
        state["epoch"] = int(state["epoch"])
        state["best_map"] = float(state["best_map"])
        state["path"] = path
        return state

    def restore(self, objects: dict) -> str:
        """Restores the newest checkpoint into `objects` (built beforehand, same structure).

        Args:
            objects: {name: trackable} as passed to save().

        Returns:
            the restored checkpoint path.

        Raises:
            CheckpointMismatchError: another dataset or model, or a variable whose shape or
                presence differs.
            FileNotFoundError: there is no checkpoint.
        """
        path = self.latest
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        reader = tf.train.load_checkpoint(path)
        self._check_fingerprint(reader, path)
        checkpoint = tf.train.Checkpoint(fingerprint=self._fingerprint_var, **objects)
        try:
            status = checkpoint.restore(path)
            status.assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as err:
            raise CheckpointMismatchError(
                f"checkpoint {path} does not fit this run ({err}); use a new workdir or the "
                "settings it was trained with") from err
        status.expect_partial()
        return path

    def save(self, objects: dict, epoch: int) -> str:
        """Writes a checkpoint numbered by `epoch` (completed epochs), pruning old ones."""
        checkpoint = tf.train.Checkpoint(fingerprint=self._fingerprint_var, **objects)
        manager = tf.train.CheckpointManager(checkpoint, self.directory,
                                             max_to_keep=self.max_to_keep)
        return manager.save(checkpoint_number=epoch)

    def _check_fingerprint(self, reader, path: str) -> None:
        if not reader.has_tensor(_FINGERPRINT_KEY):
            raise CheckpointMismatchError(f"{path} is not an mlc_tf training checkpoint")
        stored = json.loads(reader.get_tensor(_FINGERPRINT_KEY).decode("utf8"))
        now = self.fingerprint
        differences = [f"{key}: checkpoint {stored.get(key)!r} vs now {now.get(key)!r}"
                       for key in sorted(set(stored) | set(now)) if stored.get(key) != now.get(key)]
        if differences:
            raise CheckpointMismatchError(
                f"the checkpoint in {os.path.dirname(path)} was written by a different run ("
                + "; ".join(differences) + "). Resume with the same dataset and model "
                "settings, or use a new --workdir.")
