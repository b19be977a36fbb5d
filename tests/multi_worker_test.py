"""Tests for mlc_tf.multi_worker and mlc_tf.launch: TF_CONFIG, per-worker input, a 2-worker step
against a 2-replica process, bin/launch_local's chief-only outputs and its restart after a kill.

Strategies run in subprocesses (one per process; a MultiWorkerMirroredStrategy must come before
any other TensorFlow op): this file doubles as their worker script.
"""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import types

import numpy as np
import pytest

from mlc_tf import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SET = dict(num_train_ids=4, num_test_ids=2, images_per_camera=2, num_cameras=2,
                cameras_per_id=2, height=32, width=16)
BATCH = 8
# The smoke run of bin/launch_local: 2 epochs of 1 step (one-hot, then MPLP + k-means + joint),
# one evaluation at the end.
SMOKE_FLAGS = ["--flagfile=configs/smoke.cfg", "--steps_per_epoch=1", "--eval_every=2"]


def _env(**extra) -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
            "PYTHONPATH": REPO, **extra}


# ----------------------------------------------------------------------------- workers

def _step_worker(mode: str, data_dir: str, out: str):
    """One joint training step (MPLP + MMCL, CE + triplet, memory update) on the first PK
    batch of train's own input path, on one tiny dataset; saves what it changed.

    mode 'workers': one worker of TF_CONFIG's cluster with one CPU; 'replicas': one process
    with MirroredStrategy over 2 logical CPUs.
    """
    if mode == "replicas":
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = tf.distribute.MirroredStrategy(["/device:CPU:0", "/device:CPU:1"])
    else:
        from mlc_tf import train
        strategy = train.make_strategy()
    import keras
    from mlc_tf import config as config_lib
    from mlc_tf import features as features_lib
    from mlc_tf import multi_worker, self_paced, train
    from mlc_tf.data import registry

    collectives = multi_worker.Collectives(strategy)
    keras.utils.set_random_seed(0)
    data = registry.create("synthetic", data_dir, **TINY_SET)
    config = config_lib.Config(
        data=config_lib.DataConfig(image_size=(32, 16), batch_size=BATCH, num_instances=2),
        model=config_lib.ModelConfig(backbone="resnet18", pretrained="none"),
        loss=config_lib.LossConfig(mplp_min_candidates=3, hard_negative_ratio=0.2),
        train=config_lib.TrainConfig(lr=0.01, backbone_lr_mult=0.1, weight_decay=0.05))
    num_train = len(data.train)
    learner = train.build(config, strategy, num_train)
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(4, learner.memory.dim))[np.arange(num_train) % 4] + 0.5 * rng.normal(
        size=(num_train, learner.memory.dim))
    learner.memory.variable.assign((rows / np.linalg.norm(rows, axis=1, keepdims=True))
                                   .astype("f4"))

    labels = np.arange(num_train) % 4
    batches = multi_worker.distribute_batches(
        strategy, BATCH, lambda shard: train._epoch_dataset(config, data, 0, labels,
                                                            shard=shard))
    learner.new_classifier(4, seed=1)
    batch = next(iter(batches))
    results = {k: float(v) for k, v in learner.step(batch, 0.3, targets="mplp",
                                                    joint=True).items()}
    arrays = {f"weight_{i}": np.asarray(v) for i, v in enumerate(learner.model.weights)}
    arrays["memory"] = learner.memory.numpy()
    # The slots this process's replicas trained on, in replica order.
    arrays["indices"] = np.concatenate([np.asarray(part) for part in
                                        strategy.experimental_local_results(batch["index"])])
    arrays["classifier"] = learner.classifier.kernel.numpy()
    # Clustering of the bank on every worker, and the chief's labels that all train on.
    own = self_paced.recluster(learner.memory.numpy(), config_lib.ClusterConfig(
        clustering="kmeans", num_clusters=4), batch_size=BATCH, seed=0)
    arrays["own_labels"] = own.labels
    arrays["chief_labels"] = train._chief_round(collectives, own).labels
    # Rounds that differ: all take the chief's.
    differing = train._chief_round(collectives, self_paced.Round(
        np.full(num_train, collectives.worker), {"worker": float(collectives.worker)}))
    arrays["differing_labels"] = differing.labels
    results["differing_scalars"] = differing.scalars
    # Split extraction equals extracting everything here (mean colours: nothing to trace).
    import tensorflow as tf

    def embed(images):
        return tf.reduce_mean(tf.cast(images, tf.float32), axis=(1, 2))

    paths = [s.path for s in data.gallery]
    arrays["split_features"] = collectives.extract_split(
        features_lib.extract_features, embed, paths, image_size=(32, 16), batch_size=4)
    arrays["local_features"] = features_lib.extract_features(embed, paths, image_size=(32, 16),
                                                             batch_size=4)
    results["broadcast"] = collectives.broadcast_json({"worker": collectives.worker})

    class LastWorkerStopped:
        requested = collectives.worker == collectives.num_workers - 1
        signal_name = "SIGTERM" if requested else None

    stop = multi_worker.AgreedStop(LastWorkerStopped(), collectives)
    results["stop"] = [stop.requested, stop.signal_name]
    np.savez(out, **arrays)
    with open(out + ".json", "w") as handle:
        json.dump(results, handle)


# ----------------------------------------------------------------------------- TF_CONFIG

def test_read_tf_config_gives_the_task():
    from mlc_tf import multi_worker
    task = multi_worker.read_tf_config(launch.tf_config([1234, 1235], 1))
    assert task == multi_worker.WorkerTask(("127.0.0.1:1234", "127.0.0.1:1235"), 1)
    assert not task.is_chief and multi_worker.WorkerTask(task.workers, 0).is_chief
    assert multi_worker.read_tf_config(None) is None and multi_worker.read_tf_config("") is None


@pytest.mark.parametrize("value, problem", [
    ("{'cluster': 1}", "not valid JSON"),
    ('{"task": {"type": "worker", "index": 0}}', "needs a 'cluster' object"),
    ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}',
     "only a 'worker' list"),
    ('{"cluster": {"worker": ["localhost"]}, "task": {"type": "worker", "index": 0}}',
     "'host:port' strings"),
    ('{"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}', "non-empty list"),
    ('{"cluster": {"worker": ["a:1"]}}', "needs task"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}', "needs task"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}',
     r"index must be an integer in \[0, 2\)"),
])
def test_read_tf_config_names_the_problem(value, problem):
    from mlc_tf import multi_worker
    with pytest.raises(multi_worker.TFConfigError, match=problem):
        multi_worker.read_tf_config(value)


def test_a_worker_writes_a_temporary_folder_that_a_restart_clears(tmp_path, monkeypatch):
    import tensorflow as tf

    from mlc_tf import multi_worker
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    os.makedirs(tmp_path / "tmp")
    cluster = tf.train.ClusterSpec({"worker": ["127.0.0.1:1", "127.0.0.1:2"]})

    def strategy(index):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            cluster, task_type="worker", task_id=index)
        return types.SimpleNamespace(cluster_resolver=resolver)

    workdir = str(tmp_path / "run")
    with multi_worker.write_dir(workdir, strategy(0)) as chief_dir:
        assert chief_dir == workdir
    with multi_worker.write_dir(workdir, strategy(1)) as first:
        assert os.path.dirname(first) == str(tmp_path / "tmp")
        open(os.path.join(first, "ckpt-1.index"), "w").close()
    assert not os.path.exists(first)
    os.makedirs(first)  # what a SIGKILLed worker leaves
    open(os.path.join(first, "stale"), "w").close()
    with multi_worker.write_dir(workdir, strategy(1)) as restarted:
        assert restarted == first and os.listdir(restarted) == []
    assert os.listdir(tmp_path / "tmp") == []


def test_free_ports_are_distinct():
    ports = launch.free_ports(3)
    assert len(set(ports)) == 3 and all(0 < p < 65536 for p in ports)


# ----------------------------------------------------------------------------- input

def test_worker_shards_are_the_consecutive_parts_of_every_global_batch(tmp_path):
    import tensorflow as tf
    from mlc_tf import config as config_lib
    from mlc_tf.data import pipeline

    paths = []
    for i in range(20):
        path = str(tmp_path / f"{i:02d}.png")
        tf.io.write_file(path, tf.io.encode_png(tf.fill((8, 4, 3), tf.constant(i * 10, tf.uint8))))
        paths.append(path)
    common = dict(image_size=(8, 4), batch_size=8, seed=3, epoch=1,
                  augment=config_lib.AugmentConfig())
    args = (paths, [i % 2 for i in range(20)], list(range(100, 120)))
    whole = list(pipeline.make_train_dataset(*args, **common).as_numpy_iterator())
    parts = [list(pipeline.make_train_dataset(*args, shard=(i, 4), **common).as_numpy_iterator())
             for i in range(4)]
    assert len(whole) == 2 and all(len(p) == 2 for p in parts)
    for step, batch in enumerate(whole):
        for key in ("image", "index", "camid"):
            joined = np.concatenate([parts[i][step][key] for i in range(4)])
            np.testing.assert_array_equal(joined, batch[key])
    with pytest.raises(ValueError, match="n dividing the batch size 8"):
        pipeline.make_train_dataset(*args, shard=(0, 3), **common)


# ----------------------------------------------------------------------------- processes

def _start(*args, env=None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *map(str, args)], env=env or _env(), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen)


def _finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-6000:]
    return output


def test_two_workers_step_as_one_process_with_two_replicas(tmp_path):
    data_dir, script = str(tmp_path / "data"), os.path.abspath(__file__)
    ports = launch.free_ports(2)
    workers = [_start(script, "step", "workers", data_dir, tmp_path / f"worker{i}.npz",
                      env=_env(TF_CONFIG=launch.tf_config(ports, i))) for i in range(2)]
    single = _start(script, "step", "replicas", data_dir, tmp_path / "replicas.npz")
    for process in [*workers, single]:
        _finish(process)
    arrays = [dict(np.load(tmp_path / f"{name}.npz"))
              for name in ("worker0", "worker1", "replicas")]
    stats = [json.load(open(tmp_path / f"{name}.npz.json"))
             for name in ("worker0", "worker1", "replicas")]
    # Each worker decoded and trained on its own half of the global batch.
    assert len(arrays[0]["indices"]) == len(arrays[1]["indices"]) == BATCH // 2
    np.testing.assert_array_equal(np.concatenate([arrays[0]["indices"], arrays[1]["indices"]]),
                                  arrays[2]["indices"])
    for key in ("loss", "mmcl", "ce", "triplet", "positives"):
        assert stats[0][key] == pytest.approx(stats[2][key], abs=1e-5), key
        assert stats[1][key] == stats[0][key], key
    assert stats[0]["positives"] > 1 and stats[0]["triplet"] > 0  # every loss term mattered
    for key in arrays[2]:
        if key.startswith("weight_") or key in ("memory", "classifier"):
            np.testing.assert_allclose(arrays[0][key], arrays[2][key], atol=1e-5, err_msg=key)
            np.testing.assert_array_equal(arrays[1][key], arrays[0][key], err_msg=key)
    # The clustering of the identical bank agrees, and every worker trains on the chief's.
    np.testing.assert_array_equal(arrays[1]["own_labels"], arrays[0]["own_labels"])
    for worker in arrays[:2]:
        np.testing.assert_array_equal(worker["chief_labels"], arrays[0]["own_labels"])
        np.testing.assert_allclose(worker["split_features"], worker["local_features"],
                                   atol=1e-6)
        np.testing.assert_array_equal(worker["differing_labels"], 0)
    assert stats[1]["differing_scalars"] == {"worker": 0.0}
    assert [s["broadcast"] for s in stats] == [{"worker": 0}] * 3
    assert [s["stop"] for s in stats[:2]] == [[True, "another worker"], [True, "SIGTERM"]]
    assert stats[2]["stop"] == [True, "SIGTERM"]


def _launch(data_dir, workdir, tmpdir, **popen) -> subprocess.Popen:
    os.makedirs(tmpdir, exist_ok=True)
    return _start("bin/launch_local", "--workers=2", "--", *SMOKE_FLAGS,
                  f"--data_dir={data_dir}", f"--workdir={workdir}", env=_env(TMPDIR=tmpdir),
                  **popen)


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """(root, output) of an uninterrupted 2-worker smoke run of bin/launch_local."""
    root = tmp_path_factory.mktemp("launch")
    output = _finish(_launch(root / "data", root / "run", root / "tmp"))
    return root, output


def _checkpoint_tensors(path: str) -> dict:
    import tensorflow as tf
    reader = tf.train.load_checkpoint(path)
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


def test_launch_local_trains_exports_and_evaluates_writing_only_the_chiefs_workdir(launched):
    root, output = launched
    run = root / "run"
    assert "[worker 0]   eval after epoch 2: mAP" in output
    assert "[worker 0] exported SavedModel feature extractor to" in output
    assert "[worker 1]   eval" not in output and "[worker 1] exported" not in output
    assert os.path.isfile(run / "export" / "saved_model.pb")
    assert sorted(os.path.basename(p) for p in glob.glob(str(run / "checkpoints" / "ckpt-*"
                                                             ".index"))) == ["ckpt-1.index",
                                                                             "ckpt-2.index"]
    assert os.listdir(root / "tmp") == []  # worker 1 deleted its temporary folder


def test_a_killed_worker_restarts_the_run_which_ends_as_an_uninterrupted_one(launched):
    root, _ = launched
    run = root / "killed"
    launcher = _launch(root / "data", run, root / "tmp_killed", bufsize=1)
    lines, pids = [], {}
    state_file = run / "checkpoints" / "checkpoint"
    for line in launcher.stdout:
        lines.append(line)
        started = re.match(r"\[launch_local\] worker (\d) pid (\d+)", line)
        if started:
            pids[int(started.group(1))] = int(started.group(2))
        if os.path.isfile(state_file) and "ckpt-1" in open(state_file).read():
            os.kill(pids[1], signal.SIGKILL)
            break
    else:
        pytest.fail("no checkpoint before the end:\n" + "".join(lines)[-6000:])
    output = "".join(lines) + _finish(launcher)
    assert "[launch_local] worker 1 failed (status 137); restarting all 2 workers" in output
    # The restarted workers resumed after epoch 1.
    assert "Epoch 1/2" not in output.split("restarting all")[-1]
    assert "Epoch 2/2" in output.split("restarting all")[-1]
    finished = _checkpoint_tensors(str(run / "checkpoints" / "ckpt-2"))
    reference = _checkpoint_tensors(str(root / "run" / "checkpoints" / "ckpt-2"))
    assert finished.keys() == reference.keys()
    for key, value in reference.items():
        if np.asarray(value).dtype.kind == "f":
            np.testing.assert_allclose(finished[key], value, atol=1e-5, err_msg=key)
        else:  # epoch, step, labels, iterations, fingerprint, partial-epoch state
            np.testing.assert_array_equal(finished[key], value, err_msg=key)


if __name__ == "__main__":
    {"step": _step_worker}[sys.argv[1]](*sys.argv[2:])
