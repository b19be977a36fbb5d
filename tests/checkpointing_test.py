"""Tests for mlc_tf.checkpointing: positions inside an epoch, corrupt checkpoints, changed
training files, failed writes and stop signals."""

import glob
import logging
import os
import resource
import signal
import threading

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import checkpointing

FINGERPRINT = {"dataset": "synthetic", "num_train": 5, "feature_dim": 2}
# Large enough that the memory fills most of the data file.
BANK_SHAPE = (1000, 64)


def _objects(bank_value: float = 0.0, state: checkpointing.RunState | None = None) -> dict:
    state = state or checkpointing.RunState()
    return {"memory": tf.Variable(np.full(BANK_SHAPE, bank_value, np.float32)),
            "pseudo_labels": tf.Variable(np.zeros(5, np.int64)), **state.objects()}


def _save_two(directory: str, **kwargs) -> checkpointing.Checkpointer:
    """ckpt-1 with a memory of ones, ckpt-2 with twos."""
    checkpointer = checkpointing.Checkpointer(directory, FINGERPRINT, 3, **kwargs)
    for epoch in (1, 2):
        state = checkpointing.RunState()
        state.set_position(epoch)
        checkpointer.save(_objects(float(epoch), state), epoch)
    return checkpointer


def _restored_bank(checkpointer: checkpointing.Checkpointer, path=None) -> np.ndarray:
    objects = _objects()
    checkpointer.restore(objects, path)
    return objects["memory"].numpy()


def test_a_position_inside_an_epoch_round_trips(tmp_path):
    state = checkpointing.RunState()
    stats = [{"loss": 1.25, "ce": 0.1}, {"loss": 0.75, "ce": 1 / 3}]
    state.set_position(2, stats, {"cluster/num_clusters": 7.0})
    checkpointer = checkpointing.Checkpointer(str(tmp_path), FINGERPRINT, 2)
    path = checkpointer.save(_objects(1.0, state), 2, step=2)
    assert os.path.basename(path) == "ckpt-step2-2"
    peeked = checkpointer.peek()
    assert (peeked["epoch"], peeked["step"], peeked["path"]) == (2, 2, path)
    restored = checkpointing.RunState()
    checkpointer.restore(_objects(state=restored), path)
    assert int(restored.epoch.numpy()) == 2 and int(restored.step.numpy()) == 2
    # Exactly: the epoch's means go on from them.
    assert restored.partial() == (stats, {"cluster/num_clusters": 7.0})
    # The epoch's end clears the position.
    restored.set_position(3)
    assert int(restored.step.numpy()) == 0 and restored.partial() == ([], {})


def test_a_checkpoint_without_a_step_resumes_at_its_epoch_boundary(tmp_path):
    old_state = checkpointing.RunState()
    old_state.epoch.assign(4)
    objects = {"memory": tf.Variable(np.ones(BANK_SHAPE, np.float32)),
               "pseudo_labels": tf.Variable(np.zeros(5, np.int64)),
               "epoch": old_state.epoch, "best_map": old_state.best_map}
    checkpointer = checkpointing.Checkpointer(str(tmp_path), FINGERPRINT, 2)
    checkpointer.save(objects, 4)
    assert checkpointer.peek()["step"] == 0
    restored = checkpointing.RunState()
    checkpointer.restore(_objects(state=restored))
    assert int(restored.epoch.numpy()) == 4 and restored.partial() == ([], {})


def _truncate_data(prefix):
    data = glob.glob(prefix + ".data-*")[0]
    os.truncate(data, os.path.getsize(data) - 7)


def _flip_a_memory_byte(prefix):
    data = glob.glob(prefix + ".data-*")[0]
    with open(data, "r+b") as handle:
        handle.seek(os.path.getsize(data) // 2)
        byte = handle.read(1)
        handle.seek(-1, os.SEEK_CUR)
        handle.write(bytes([byte[0] ^ 0x40]))


def _truncate_index(prefix):
    os.truncate(prefix + ".index", os.path.getsize(prefix + ".index") // 2)


def _delete_data(prefix):
    os.remove(glob.glob(prefix + ".data-*")[0])


@pytest.mark.parametrize("damage", [_truncate_data, _flip_a_memory_byte, _truncate_index,
                                    _delete_data])
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog, damage):
    checkpointer = _save_two(str(tmp_path))
    damage(str(tmp_path / "ckpt-2"))
    with caplog.at_level(logging.WARNING):
        peeked = checkpointer.peek()
    assert peeked["epoch"] == 1 and peeked["path"].endswith("ckpt-1")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ckpt-2" in warnings[0] and "ckpt-1" in warnings[0]
    np.testing.assert_array_equal(_restored_bank(checkpointer, peeked["path"]), 1.0)
    # Without a path, restore() picks the same readable one.
    np.testing.assert_array_equal(_restored_bank(checkpointer), 1.0)


def test_no_readable_checkpoint_is_an_error_naming_them(tmp_path):
    checkpointer = _save_two(str(tmp_path))
    _truncate_data(str(tmp_path / "ckpt-2"))
    _truncate_index(str(tmp_path / "ckpt-1"))
    with pytest.raises(checkpointing.CheckpointReadError, match="ckpt-2.*ckpt-1"):
        checkpointer.peek()


def test_an_unreadable_checkpoint_state_file_still_finds_the_checkpoints(tmp_path):
    checkpointer = _save_two(str(tmp_path))
    (tmp_path / "checkpoint").write_text("model_checkpoint_path: \"ckpt-2\n garbage {{")
    assert checkpointer.peek()["epoch"] == 2
    np.testing.assert_array_equal(_restored_bank(checkpointer), 2.0)


def test_changed_training_files_are_refused_naming_the_differences(tmp_path):
    files = ["cam1/a.jpg", "cam1/b.jpg", "cam2/c.jpg", "cam2/d.jpg", "cam2/e.jpg"]
    _save_two(str(tmp_path), train_files=files)
    # The same files listed in another order resume.
    same = checkpointing.Checkpointer(str(tmp_path), FINGERPRINT, 3, train_files=files[::-1])
    assert same.peek()["epoch"] == 2
    # One renamed, one added: as many files as before.
    changed = ["cam1/a.jpg", "cam1/b2.jpg", "cam2/c.jpg", "cam2/d.jpg", "cam3/f.jpg"]
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match=r"2 added \(cam1/b2.jpg, cam3/f.jpg\), 2 removed \(cam1/b.jpg, "
                             r"cam2/e.jpg\)"):
        checkpointing.Checkpointer(str(tmp_path), FINGERPRINT, 3, train_files=changed).peek()
    many = files + [f"new/{i}.jpg" for i in range(5)]
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match=r"5 added \(new/0.jpg, new/1.jpg, new/2.jpg, \.\.\.\)"):
        checkpointing.Checkpointer(str(tmp_path), FINGERPRINT, 3, train_files=many).peek()
    # Without the saved list the hash still refuses, saying why it cannot name the files.
    os.remove(tmp_path / checkpointing.TRAIN_FILES_FILE)
    with pytest.raises(checkpointing.CheckpointMismatchError, match="cannot be named"):
        checkpointing.Checkpointer(str(tmp_path), FINGERPRINT, 3, train_files=changed).peek()


def test_a_checkpoint_from_before_the_file_list_resumes(tmp_path):
    _save_two(str(tmp_path))
    later = checkpointing.Checkpointer(str(tmp_path), FINGERPRINT, 3, train_files=["a.jpg"])
    assert later.peek()["epoch"] == 2


def test_a_failed_write_keeps_the_previous_checkpoint_and_says_so(tmp_path):
    checkpointer = checkpointing.Checkpointer(str(tmp_path), FINGERPRINT, 3,
                                              train_files=["a.jpg"])
    checkpointer.save(_objects(1.0), 1)
    # A real failing write: files may not grow past 8 KB (as on a full disk, the write fails
    # part-way through the memory tensor).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, hard))
    try:
        with pytest.raises(checkpointing.CheckpointWriteError,
                           match=r"could not write checkpoint .*ckpt-2 .*The previous checkpoint "
                                 r"\(.*ckpt-1\) is intact"):
            checkpointer.save(_objects(2.0), 2)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous_handler)
    assert sorted(os.listdir(tmp_path)) == sorted(
        ["checkpoint", checkpointing.TRAIN_FILES_FILE, "ckpt-1.index",
         "ckpt-1.data-00000-of-00001"])
    assert checkpointer.peek()["path"].endswith("ckpt-1")
    np.testing.assert_array_equal(_restored_bank(checkpointer), 1.0)


def test_stop_request_catches_sigterm_and_sigint_then_restores_the_handlers():
    # Whatever was installed before (a shell's background job ignores SIGINT) comes back.
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with checkpointing.StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signal_name == "SIGTERM"
        with pytest.raises(KeyboardInterrupt, match="SIGINT received again"):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    with checkpointing.StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: a request to stop
    assert stop.signal_name == "SIGINT"


def test_stop_request_outside_the_main_thread_changes_nothing():
    errors = []

    def enter():
        try:
            with checkpointing.StopRequest() as stop:
                errors.append(stop.requested)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert errors == [False]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
