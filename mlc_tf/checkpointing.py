"""Checkpoints of a training run: checked before restoring, robust to corruption, full disks and
SIGTERM / SIGINT."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import signal
import threading
from collections.abc import Callable, Sequence

import tensorflow as tf
from absl import logging

# Layout of a workdir: the resolved config and the checkpoint folder.
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
# Beside the checkpoints: the sorted training files they were trained on (to name differences).
TRAIN_FILES_FILE = "train_files.json"
# Checkpoint keys of the plain tensors we read before restoring.
_FINGERPRINT_KEY = "fingerprint/.ATTRIBUTES/VARIABLE_VALUE"
_KEYS = {"epoch": "epoch/.ATTRIBUTES/VARIABLE_VALUE",
         "pseudo_labels": "pseudo_labels/.ATTRIBUTES/VARIABLE_VALUE",
         "best_map": "best_map/.ATTRIBUTES/VARIABLE_VALUE"}
_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"
# Run-state variables that checkpoints written before them lack; they then keep their defaults.
_LATER_OBJECTS = ("step", "partial_epoch", "cluster_independence")
# Fingerprint keys that checkpoints written before them lack; those are not compared.
_LATER_FINGERPRINT_KEYS = ("train_files",)
# Differences the error names, at most, for each of added and removed training files.
_NAMED_FILES = 3
_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_EMPTY_EPOCH = json.dumps({"step_stats": [], "scalars": {}})
# What reading a damaged checkpoint raises: TensorFlow's errors, or from its C++ reader
# IndexError ("Read less bytes than requested") and RuntimeError; ValueError from bad JSON.
# What reading a damaged or half-written checkpoint raises.
READ_ERRORS = (tf.errors.OpError, IndexError, RuntimeError, ValueError)


def checkpoint_candidates(directory: str) -> list[str]:
    """Checkpoint prefixes in `directory`, newest first (by its state file, else by mtime)."""
    state = tf.train.get_checkpoint_state(directory)
    if state is not None:
        paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
        return [p if os.path.isabs(p) else os.path.join(directory, p) for p in reversed(paths)]
    # No or an unreadable state file: the checkpoints on disk, newest first.
    indexes = sorted(glob.glob(os.path.join(glob.escape(directory), "*.index")),
                     key=os.path.getmtime, reverse=True)
    return [index[:-len(".index")] for index in indexes]


def read_every_tensor(reader) -> None:
    """Reads each tensor of a tf.train.load_checkpoint reader, so that every checksum is checked
    and a damaged file fails here, not later (raises one of READ_ERRORS)."""
    for key in reader.get_variable_to_shape_map():
        reader.get_tensor(key)


def read_newest(directory: str, read: Callable[[str], object], action: str,
                advice: str = "") -> tuple[str, object]:
    """(path, read(path)) of the newest checkpoint in `directory` that `read` can read.

    A newer checkpoint that fails with one of READ_ERRORS is skipped with a warning naming it
    and the one `action` (e.g. 'resuming from') uses instead.

    Raises:
        CheckpointMismatchError: from `read`, at once.
        CheckpointReadError: none can be read (naming each and why, then `advice`).
    """
    failures = []
    for path in checkpoint_candidates(directory):
        try:
            value = read(path)
        except CheckpointMismatchError:
            raise
        except READ_ERRORS as err:
            failures.append(f"{path} ({type(err).__name__}: {_first_line(err)})")
            continue
        if failures:
            logging.warning("unreadable checkpoint %s; %s the previous one, %s",
                            "; ".join(failures), action, path)
        return path, value
    raise CheckpointReadError(
        f"no checkpoint in {directory} can be read: {'; '.join(failures)}. {advice}".rstrip())


class CheckpointMismatchError(ValueError):
    """The workdir holds a checkpoint of a different dataset, file list or model."""


class CheckpointReadError(OSError):
    """No checkpoint of the workdir can be read (all are corrupt or truncated)."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


class RunState:
    """Scalars of the outer loop that a resumed run needs (host-side: build it outside any
    strategy scope).

    Attributes:
        epoch: number of completed epochs (the next epoch to run).
        best_map: best test mAP seen (only meaningful with export_best_by_test).
        step: steps of epoch `epoch` already trained (0 at an epoch boundary).
        partial_epoch: JSON {'step_stats': those steps' statistics, 'scalars': the epoch's
            summaries so far (e.g. its clustering round's)}, so that the epoch's means and
            summaries go on from them.
    """

    def __init__(self):
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.best_map = tf.Variable(-1.0, dtype=tf.float32, trainable=False, name="best_map")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.partial_epoch = tf.Variable(_EMPTY_EPOCH, trainable=False, name="partial_epoch")

    def objects(self) -> dict[str, tf.Variable]:
        """{checkpoint name: variable}, to merge into the objects saved."""
        return {"epoch": self.epoch, "best_map": self.best_map, "step": self.step,
                "partial_epoch": self.partial_epoch}

    def set_position(self, epoch: int, step_stats: Sequence[dict[str, float]] = (),
                     scalars: dict[str, float] | None = None) -> None:
        """Records a position: `epoch` completed epochs, then what the next one did so far.

        Args:
            epoch: completed epochs.
            step_stats: statistics of each step of the next epoch already trained.
            scalars: that epoch's summaries so far.
        """
        self.epoch.assign(epoch)
        self.step.assign(len(step_stats))
        self.partial_epoch.assign(json.dumps({
            "step_stats": [{name: float(v) for name, v in stats.items()} for stats in step_stats],
            "scalars": {name: float(v) for name, v in (scalars or {}).items()}}))

    def partial(self) -> tuple[list[dict[str, float]], dict[str, float]]:
        """(statistics of each step, summaries) that epoch `epoch` already has."""
        partial = json.loads(self.partial_epoch.numpy().decode("utf8"))
        return partial["step_stats"], partial["scalars"]


def train_files_digest(relative_paths: Sequence[str]) -> str:
    """SHA-256 (hex) of the sorted relative paths, one per line: any added, removed or renamed file
    changes it."""
    return hashlib.sha256("\n".join(sorted(relative_paths)).encode("utf8")).hexdigest()


class StopRequest:
    """While entered, SIGTERM and SIGINT ask the training loop to stop at its next step boundary.

    The first signal only sets `signal_name`; the loop checks it, checkpoints and returns. A
    second signal raises KeyboardInterrupt at once. On exit the previous handlers come back.
    Outside the main thread, where Python cannot install handlers, nothing changes.
    """

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """Whether a signal asked to stop."""
        return self.signal_name is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in _SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested:
            raise KeyboardInterrupt(f"{name} received again: stopping without a checkpoint")
        self.signal_name = name
        logging.warning("%s received: finishing the current step, then writing a checkpoint "
                        "(send it again to stop at once)", name)


class Checkpointer:
    """Saves and restores {model, optimizers, memory, run state, classifier}.

    The checkpoint also stores a JSON fingerprint (dataset, number of training images, a hash
    of their sorted relative paths, model options, feature size). restore() compares it with
    the current run first, so a checkpoint of another dataset, file list or model raises
    instead of restoring half of it or silently starting over. A newest checkpoint that cannot
    be read is passed over for the one before it, with a warning. A failed write leaves the
    previous checkpoints as they were.
    """

    def __init__(self, directory: str, fingerprint: dict, max_to_keep: int,
                 train_files: Sequence[str] | None = None, write_directory: str | None = None):
        """Args:
            directory: checkpoint folder (created on first save).
            fingerprint: JSON-serialisable description of what the run trains.
            max_to_keep: number of checkpoints kept.
            train_files: training image paths relative to the dataset folder; their digest
                joins the fingerprint and the sorted list is saved beside the checkpoints.
            write_directory: where save() writes, when not `directory` (a multi-worker run's
                other workers save into temporary folders and restore the chief's).
        """
        self.directory = directory
        self.write_directory = write_directory or directory
        self.max_to_keep = max_to_keep
        self._train_files = None if train_files is None else sorted(train_files)
        if self._train_files is not None:
            fingerprint = {**fingerprint, "train_files": train_files_digest(self._train_files)}
        self.fingerprint = fingerprint
        self._fingerprint_var = tf.Variable(json.dumps(fingerprint, sort_keys=True),
                                            trainable=False, name="fingerprint")

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest checkpoint, or None."""
        candidates = self._candidates()
        return candidates[0] if candidates else None

    def peek(self) -> dict | None:
        """Reads the run state of the newest readable checkpoint without restoring anything.

        Every tensor of the checkpoint is read (and so checksummed). A newest checkpoint that
        fails is skipped with a warning naming it and the one used instead.

        Returns:
            None without a checkpoint, else {'epoch', 'step', 'pseudo_labels', 'best_map',
            'path'} (pseudo_labels tell the size of the classifier to build before restoring).

        Raises:
            CheckpointMismatchError: the checkpoint belongs to another dataset or model.
            CheckpointReadError: checkpoints exist but none can be read.
        """
        if not self._candidates():
            return None
        _, state = read_newest(
            self.directory, self._read_verified, "resuming from",
            advice="Move the folder away to start over, or restore it from a backup.")
        return state

    def restore(self, objects: dict, path: str | None = None) -> str:
        """Restores a checkpoint into `objects` (built beforehand, same structure).

        Args:
            objects: {name: trackable} as passed to save().
            path: the checkpoint, as peek() returned it; default the newest readable one.

        Returns:
            the restored checkpoint path.

        Raises:
            CheckpointMismatchError: another dataset or model, or a variable whose shape or
                presence differs.
            CheckpointReadError: checkpoints exist but none can be read.
            FileNotFoundError: there is no checkpoint.
        """
        if path is None:
            stored = self.peek()
            if stored is None:
                raise FileNotFoundError(f"no checkpoint in {self.directory}")
            path = stored["path"]
        reader = tf.train.load_checkpoint(path)
        self._check_fingerprint(reader, path)
        # Run-state variables newer than the checkpoint keep their initial values.
        objects = {name: value for name, value in objects.items()
                   if name not in _LATER_OBJECTS
                   or reader.has_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")}
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

    def save(self, objects: dict, epoch: int, step: int = 0) -> str:
        """Writes a checkpoint, pruning old ones; a failed write leaves the old ones intact.

        Args:
            objects: {name: trackable}.
            epoch: completed epochs; the checkpoint is 'ckpt-<epoch>'.
            step: steps of the next epoch already trained; when > 0 the checkpoint is
                'ckpt-step<step>-<epoch>'.

        Returns:
            the checkpoint path.

        Raises:
            CheckpointWriteError: writing failed (full disk, quota, I/O error); the partial
                files are removed.
        """
        name = f"ckpt-step{step}" if step else "ckpt"
        prefix = os.path.join(self.write_directory, f"{name}-{epoch}")
        existing = self._candidates(self.write_directory)
        try:
            os.makedirs(self.write_directory, exist_ok=True)
            if self._train_files is not None:
                _write_json_atomically(os.path.join(self.write_directory, TRAIN_FILES_FILE),
                                       self._train_files)
            checkpoint = tf.train.Checkpoint(fingerprint=self._fingerprint_var, **objects)
            manager = tf.train.CheckpointManager(checkpoint, self.write_directory,
                                                 max_to_keep=self.max_to_keep,
                                                 checkpoint_name=name)
            return manager.save(checkpoint_number=epoch)
        except (OSError, tf.errors.OpError) as err:
            _remove_partial(prefix, keep_files=prefix in existing)
            previous = existing[0] if existing else "none"
            raise CheckpointWriteError(
                f"could not write checkpoint {prefix} ({_first_line(err)}). The previous "
                f"checkpoint ({previous}) is intact: free some disk space and run the same "
                "command again to resume from it.") from err

    def _candidates(self, directory: str | None = None) -> list[str]:
        """Checkpoint prefixes of `directory` (default self.directory), newest first."""
        return checkpoint_candidates(directory or self.directory)

    def _read_verified(self, path: str) -> dict:
        reader = tf.train.load_checkpoint(path)
        self._check_fingerprint(reader, path)
        read_every_tensor(reader)
        state = {name: reader.get_tensor(key) for name, key in _KEYS.items()}
        state["epoch"] = int(state["epoch"])
        state["step"] = int(reader.get_tensor(_STEP_KEY)) if reader.has_tensor(_STEP_KEY) else 0
        state["best_map"] = float(state["best_map"])
        state["path"] = path
        return state

    def _check_fingerprint(self, reader, path: str) -> None:
        if not reader.has_tensor(_FINGERPRINT_KEY):
            raise CheckpointMismatchError(f"{path} is not an mlc_tf training checkpoint")
        stored = json.loads(reader.get_tensor(_FINGERPRINT_KEY).decode("utf8"))
        now = self.fingerprint
        differences = []
        for key in sorted(set(stored) | set(now)):
            if stored.get(key) == now.get(key) or (key in _LATER_FINGERPRINT_KEYS
                                                   and key not in stored):
                continue
            if key == "train_files":
                differences.append(self._describe_file_changes())
            else:
                differences.append(f"{key}: checkpoint {stored.get(key)!r} vs now "
                                   f"{now.get(key)!r}")
        if differences:
            raise CheckpointMismatchError(
                f"the checkpoint in {os.path.dirname(path)} was written by a different run ("
                + "; ".join(differences) + "). Resume with the same dataset, training files "
                "and model settings, or use a new --workdir.")

    def _describe_file_changes(self) -> str:
        """'training files: N added (a, b, ...), M removed (...)' against the saved list."""
        try:
            with open(os.path.join(self.directory, TRAIN_FILES_FILE)) as handle:
                stored = set(json.load(handle))
        except (OSError, ValueError):
            return (f"training files: their sorted list differs ({TRAIN_FILES_FILE} beside "
                    "the checkpoints is missing, so the differences cannot be named)")
        now = set(self._train_files or ())
        parts = []
        for verb, names in (("added", sorted(now - stored)), ("removed", sorted(stored - now))):
            if names:
                more = ", ..." if len(names) > _NAMED_FILES else ""
                parts.append(f"{len(names)} {verb} ({', '.join(names[:_NAMED_FILES])}{more})")
        return "training files changed: " + (", ".join(parts) or "the sorted list differs")


def _first_line(err: BaseException) -> str:
    text = str(getattr(err, "message", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _write_json_atomically(path: str, value) -> None:
    """Writes JSON through a temporary file, so a failure never leaves a truncated file."""
    temporary = f"{path}.tmp"
    try:
        with open(temporary, "w") as handle:
            json.dump(value, handle)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _remove_partial(prefix: str, keep_files: bool) -> None:
    """Removes what a failed save of `prefix` left: its temporary folder, and its files unless
    they are an older checkpoint of that name (TensorFlow renames into place only at the end)."""
    leftovers = glob.glob(f"{glob.escape(prefix)}_temp*")
    if not keep_files:
        leftovers += glob.glob(f"{glob.escape(prefix)}.*")
    for leftover in leftovers:
        with contextlib.suppress(OSError):
            if os.path.isdir(leftover):
                shutil.rmtree(leftover)
            else:
                os.remove(leftover)
