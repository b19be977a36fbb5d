"""Tests for mlc_tf.train / train_step / checkpointing: replicas, resume, errors, bin/train.

MirroredStrategy runs happen in subprocesses (one strategy per process; logical CPU devices
must be configured before any TF op): this file doubles as their worker script.
"""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_CFG = os.path.join(REPO, "configs", "smoke.cfg")
NUM_SLOTS, DIM, BATCH = 16, 1536, 8


def _start_worker(*args) -> subprocess.Popen:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=REPO)


def _wait(process: subprocess.Popen, timeout=600) -> None:
    stdout, stderr = process.communicate(timeout=timeout)
    assert process.returncode == 0, stdout[-3000:] + stderr[-5000:]


# ----------------------------------------------------------------------------- workers

def _start_tf(num_logical_cpus: int):
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_logical_cpus)
    return tf


def _step_worker(replicas: str, out: str):
    """One MPLP step and one joint step on fixed global batches; saves everything."""
    tf = _start_tf(2)
    import keras
    from mlc_tf import config as config_lib
    from mlc_tf import train
    replicas = int(replicas)
    strategy = tf.distribute.MirroredStrategy(["/device:CPU:0", "/device:CPU:1"][:replicas])
    keras.utils.set_random_seed(0)
    # A small learning rate keeps the second step well conditioned: from scratch, a large
    # first step amplifies float32 rounding differences of the batch split. The large weight
    # decay makes its per-replica share matter: summed unscaled over 2 replicas it would move
    # the weights by ~1e-3, 100x the tolerance below.
    config = config_lib.Config(
        data=config_lib.DataConfig(image_size=(32, 16), batch_size=BATCH, num_instances=2),
        model=config_lib.ModelConfig(backbone="resnet18", pretrained="none"),
        loss=config_lib.LossConfig(mplp_min_candidates=3, hard_negative_ratio=0.2),
        train=config_lib.TrainConfig(lr=0.01, backbone_lr_mult=0.1, weight_decay=0.05))
    learner = train.build(config, strategy, NUM_SLOTS)
    model, memory = learner.model, learner.memory
    rng = np.random.default_rng(0)
    # Memory with 4 groups of similar rows, so that MPLP finds several positives.
    rows = rng.normal(size=(4, DIM))[np.arange(NUM_SLOTS) % 4] + 0.5 * rng.normal(
        size=(NUM_SLOTS, DIM))
    memory.variable.assign((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("f4"))
    memory_before = memory.variable.numpy()

    def global_batch(seed):
        r = np.random.default_rng(seed)
        return {"image": r.uniform(0, 255, (BATCH, 32, 16, 3)).astype(np.float32),
                "index": r.permutation(NUM_SLOTS)[:BATCH].astype(np.int32),
                "label": np.repeat(np.arange(BATCH // 2), 2).astype(np.int32)}

    def distribute(batch):
        dataset = tf.data.Dataset.from_tensors(batch)
        return next(iter(strategy.experimental_distribute_dataset(dataset)))

    results = {f"ml_{k}": float(v) for k, v in learner.step(
        distribute(global_batch(1)), 0.2, targets="mplp", joint=False).items()}
    learner.new_classifier(BATCH // 2, seed=1)
    results.update({f"joint_{k}": float(v) for k, v in learner.step(
        distribute(global_batch(2)), 0.3, targets="mplp", joint=True).items()})
    arrays = {f"weight_{i}": np.asarray(v) for i, v in enumerate(model.weights)}
    arrays["memory"] = memory.variable.numpy()
    arrays["memory_before"] = memory_before
    arrays["classifier"] = learner.classifier.kernel.numpy()
    # Every replica must hold the same copy of every variable.
    spread = 0.0
    for variable in [*model.weights, memory.variable]:
        values = getattr(getattr(variable, "value", variable), "values", None) or [variable]
        spread = max(spread, max(float(np.max(np.abs(np.asarray(v) - np.asarray(values[0]))))
                                 for v in values))
    results["replica_spread"] = spread
    np.savez(out, **arrays)
    with open(out + ".json", "w") as handle:
        json.dump(results, handle)


def _smoke_config(data_dir: str):
    """configs/smoke.cfg on data_dir, without evaluations, as bin/train would parse it."""
    from absl import flags
    from mlc_tf import config as config_lib
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    # MPLP's cycle check on the kNN graph of the bank, with a threshold low enough to give
    # positives: the interrupted runs resume inside an MPLP epoch, whose graph they need.
    flag_values(["smoke", f"--flagfile={SMOKE_CFG}", f"--data_dir={data_dir}", "--eval_every=0",
                 "--mplp_graph_k=12", "--mplp_threshold=0.3"])
    return config_lib.from_flag_values(flag_values)


def _smoke_worker(data_dir: str, root: str):
    """Smoke runs sharing one strategy: full, interrupted + resumed, mismatched, non-finite."""
    _start_tf(1)
    from mlc_tf import checkpointing, train
    from mlc_tf.data import registry

    config = _smoke_config(data_dir)
    strategy = train.make_strategy()
    report = {}
    full = os.path.join(root, "full")
    report["full"] = train.run(config, full, strategy=strategy, verbose=False)["epochs_done"]
    split = os.path.join(root, "split")
    report["first_part"] = train.run(config, split, strategy=strategy, stop_after_epoch=0,
                                     verbose=False)["epochs_done"]
    report["second_part"] = train.run(config, split, strategy=strategy,
                                      verbose=False)["epochs_done"]

    def expect_mismatch(changed):
        try:
            train.run(changed, full, strategy=strategy, verbose=False)
        except checkpointing.CheckpointMismatchError as err:
            return str(err)
        return None

    report["mismatch_model"] = expect_mismatch(_replace(
        config, model=dict(multiscale=False)))
    options = tuple(o.replace("num_train_ids=8", "num_train_ids=9")
                    for o in config.data.dataset_options)
    report["mismatch_data"] = expect_mismatch(_replace(
        config, data=dict(dataset_options=options)))

    # Resumed after epoch 1 with an absurd learning rate, the second epoch's loss overflows.
    nan_dir = os.path.join(root, "nan")
    train.run(config, nan_dir, strategy=strategy, stop_after_epoch=0, verbose=False)
    try:
        train.run(_replace(config, train=dict(lr=1e30)), nan_dir, strategy=strategy,
                  verbose=False)
        report["nonfinite"] = None
    except train.NonFiniteLossError as err:
        report["nonfinite"] = str(err)

    # The paper's clustering through the loop (on re-extracted features: the smoke epoch
    # leaves memory slots unwritten): DBSCAN with the rho rule, and DBSCAN that
    # leaves every sample an outlier (the epoch then trains the multi-label loss alone).
    dbscan = dict(clustering="dbscan", eps_mode="rho", k1=6, k2=2, min_samples=2,
                  cluster_features="extract")
    for name, cluster in (("dbscan", dbscan), ("no_clusters", {**dbscan, "min_samples": 1000})):
        report[name] = train.run(_replace(config, cluster=cluster),
                                 os.path.join(root, name), strategy=strategy,
                                 verbose=False)["epochs_done"]
    # The dataset can be handed in (here the same one, read beforehand).
    data = registry.create(config.data.dataset, data_dir, **config.data.options())
    report["supervised"] = train.run(_replace(config, train=dict(supervised=True)),
                                     os.path.join(root, "supervised"), strategy=strategy,
                                     data=data, verbose=False)["epochs_done"]
    with open(os.path.join(root, "report.json"), "w") as handle:
        json.dump(report, handle)


def _replace(config, **sections):
    import dataclasses
    return dataclasses.replace(config, **{name: dataclasses.replace(getattr(config, name), **kw)
                                          for name, kw in sections.items()})


# ----------------------------------------------------------------------------- tests

def test_one_step_is_the_same_on_one_and_two_replicas(tmp_path):
    outputs = {}
    # Two processes at once: each is mostly single-threaded graph building.
    workers = {r: _start_worker("step", r, tmp_path / f"replicas{r}.npz") for r in (1, 2)}
    for replicas, worker in workers.items():
        _wait(worker)
        out = str(tmp_path / f"replicas{replicas}.npz")
        with open(out + ".json") as handle:
            outputs[replicas] = (np.load(out), json.load(handle))
    (arrays1, stats1), (arrays2, stats2) = outputs[1], outputs[2]
    assert stats2["replica_spread"] == 0.0
    # Both phases ran with real losses: MPLP found neighbours, CE and triplet are active.
    assert stats1["ml_positives"] > 1.0 and stats1["joint_ce"] > 0 and stats1["joint_triplet"] > 0
    # Weights and memory agree to 1e-5 absolute; losses of size ~5 to 1e-5 relative (the
    # triplet's |a|^2 + |b|^2 - 2ab on pre-BN features rounds differently for a 4-row and an
    # 8-row matmul).
    assert sorted(arrays1.files) == sorted(arrays2.files)
    worst = max((float(np.abs(arrays2[name] - arrays1[name]).max()), name)
                for name in arrays1.files)
    assert worst[0] <= 1e-5, worst
    for name in stats1:
        if name != "replica_spread":
            assert stats2[name] == pytest.approx(stats1[name], rel=1e-5, abs=1e-6), name
    # The steps rewrote the memory rows of their batches.
    assert np.abs(arrays1["memory"] - arrays1["memory_before"]).max() > 1e-2


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("smoke")
    data_dir = tmp_path_factory.mktemp("data")
    _wait(_start_worker("smoke", data_dir, root))
    with open(root / "report.json") as handle:
        return root, json.load(handle)


def _checkpoint_tensors(path):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(path)
    return {name: np.asarray(reader.get_tensor(name))
            for name in reader.get_variable_to_shape_map()
            if not name.startswith(("save_counter", "_CHECKPOINTABLE_OBJECT_GRAPH"))}


def test_resumed_run_equals_uninterrupted_run(smoke_runs):
    root, report = smoke_runs
    assert (report["full"], report["first_part"], report["second_part"]) == (2, 1, 2)
    full = _checkpoint_tensors(str(root / "full" / "checkpoints" / "ckpt-2"))
    split = _checkpoint_tensors(str(root / "split" / "checkpoints" / "ckpt-2"))
    assert sorted(full) == sorted(split)
    # The second epoch trained the joint loss: a classifier was checkpointed.
    assert any(name.startswith("classifier/") for name in full)
    memory = next(name for name in full if name.startswith("memory/"))
    assert np.abs(full[memory]).sum() > 0
    for name, value in full.items():
        if value.dtype.kind in "fiu":
            np.testing.assert_allclose(split[name], value, atol=1e-5, rtol=0, err_msg=name)
        else:
            assert split[name] == value, name
    assert os.path.isfile(root / "full" / "export" / "saved_model.pb")


def test_mismatched_checkpoint_is_a_clear_error(smoke_runs):
    _, report = smoke_runs
    assert report["mismatch_model"] is not None
    assert "multiscale" in report["mismatch_model"] and "feature_dim" in report["mismatch_model"]
    assert report["mismatch_data"] is not None and "num_train" in report["mismatch_data"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(smoke_runs):
    root, report = smoke_runs
    assert report["nonfinite"] is not None
    assert "at epoch 2, step " in report["nonfinite"]
    checkpoints = root / "nan" / "checkpoints"
    import tensorflow as tf
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-1")
    assert not (root / "nan" / "export").exists()
    tensors = _checkpoint_tensors(str(checkpoints / "ckpt-1"))
    assert all(np.isfinite(v).all() for v in tensors.values() if v.dtype.kind == "f")
    assert any(name.startswith("memory/") for name in tensors)


def _checkpoint_names(path):
    return [name.split("/")[0] for name in _checkpoint_tensors(path)]


def test_dbscan_self_paced_clustering_through_the_loop(smoke_runs):
    root, report = smoke_runs
    assert report["dbscan"] == 2
    tensors = _checkpoint_tensors(str(root / "dbscan" / "checkpoints" / "ckpt-2"))
    labels = next(v for k, v in tensors.items() if k.startswith("pseudo_labels/"))
    eps = next(v for k, v in tensors.items() if k.startswith("cluster_eps/"))
    # DBSCAN found classes, the rho rule fixed an eps, and the joint losses trained.
    assert labels.max() >= 1 and 0 < float(eps) < 1
    assert "classifier" in _checkpoint_names(str(root / "dbscan" / "checkpoints" / "ckpt-2"))


def test_no_usable_clusters_trains_the_multi_label_loss_alone(smoke_runs):
    root, report = smoke_runs
    assert report["no_clusters"] == 2
    path = str(root / "no_clusters" / "checkpoints" / "ckpt-2")
    labels = next(v for k, v in _checkpoint_tensors(path).items()
                  if k.startswith("pseudo_labels/"))
    assert (labels == -1).all()
    assert "classifier" not in _checkpoint_names(path) and "memory" in _checkpoint_names(path)


def test_supervised_run_trains_true_ids_without_the_memory(smoke_runs):
    root, report = smoke_runs
    assert report["supervised"] == 2
    path = str(root / "supervised" / "checkpoints" / "ckpt-2")
    tensors = _checkpoint_tensors(path)
    assert "memory" not in _checkpoint_names(path)
    labels = next(v for k, v in tensors.items() if k.startswith("pseudo_labels/"))
    kernel = next(v for k, v in tensors.items()
                  if k.startswith("classifier/") and v.ndim == 2)
    # The smoke set's 8 true training identities, in every epoch from the first.
    assert sorted(set(labels.tolist())) == list(range(8)) and kernel.shape[1] == 8
    from mlc_tf import export
    assert export.load_feature_extractor(
        str(root / "supervised" / "export")).metadata["supervised"] is True


def test_bin_train_rejects_a_bad_option_before_writing_anything(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run([sys.executable, os.path.join(REPO, "bin", "train"), "--epochs=-1",
                             f"--workdir={workdir}"], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 1
    assert "epochs must be >= 0" in result.stderr and "Traceback" not in result.stderr
    assert not workdir.exists()


def test_bin_train_smoke_resumes_and_exports(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "data"
    command = [sys.executable, os.path.join(REPO, "bin", "train"), f"--flagfile={SMOKE_CFG}",
               f"--data_dir={data_dir}", f"--workdir={workdir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    first = subprocess.run(command + ["--stop_after_epoch=0"], capture_output=True, text=True,
                           env=env, cwd=REPO, timeout=600)
    assert first.returncode == 0, first.stderr[-5000:]
    assert not (workdir / "export").exists()
    second = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=600)
    assert second.returncode == 0, second.stderr[-5000:]
    assert "resumed from" in second.stderr and "Epoch 2/2" in second.stdout
    assert "Epoch 1/2" not in second.stdout
    assert "final evaluation: mAP" in second.stdout
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["backbone"] == "resnet18" and saved["train"]["epochs"] == 2
    flags_text = (workdir / "flags.txt").read_text()
    assert "--backbone=resnet18" in flags_text and f"--workdir={workdir}" in flags_text
    assert list((workdir / "summaries").iterdir())
    # Pictures: the clustering round of epoch 2, and curves over both parts of the run.
    assert (workdir / "pictures" / "clusters_epoch002.png").is_file()
    assert (workdir / "pictures" / "curves.png").is_file()
    from mlc_tf import pictures
    assert [r["epoch"] for r in pictures.read_history(str(workdir))] == [1, 2]

    from mlc_tf import export
    extractor = export.load_feature_extractor(str(workdir / "export"))
    assert extractor.metadata["test_set_selected"] is False
    assert extractor.metadata["trained_epochs"] == 2
    features = extractor(np.zeros((2, 40, 20, 3), np.uint8))
    assert features.shape == (2, 1536)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_bin_train_trains_the_source_stage_first_then_reuses_it(tmp_path):
    data_dir, source = tmp_path / "data", tmp_path / "source"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}

    def target_run(name):
        command = [sys.executable, os.path.join(REPO, "bin", "train"), f"--flagfile={SMOKE_CFG}",
                   f"--data_dir={data_dir}", f"--workdir={tmp_path / name}", "--epochs=1",
                   f"--init_from={source}", f"--init_from_flagfile={SMOKE_CFG}"]
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-5000:]
        return result

    first = target_run("first")
    assert "Stage 1: training" in first.stdout and "initial weights from" in first.stderr
    assert (source / "export" / "saved_model.pb").is_file()
    assert json.loads((source / "config.json").read_text())["train"]["epochs"] == 2
    second = target_run("second")
    assert "Stage 1" not in second.stdout and "initial weights from" in second.stderr
    assert (tmp_path / "second" / "export" / "saved_model.pb").is_file()


# ----------------------------------------------------------------------------- stop signals

def _sigterm_after_steps(stop_at: dict) -> None:
    """Patches Learner.step to send this process SIGTERM once stop_at['step'] steps ran
    (counted in stop_at['done']); what a scheduler preempting the run does, at a known step."""
    import signal
    from mlc_tf import train_step
    step = train_step.Learner.step

    def step_then_signal(self, *args, **kwargs):
        stats = step(self, *args, **kwargs)
        stop_at["done"] += 1
        if stop_at["done"] == stop_at["step"]:
            os.kill(os.getpid(), signal.SIGTERM)
        return stats

    train_step.Learner.step = step_then_signal


def _interrupted_worker(data_dir: str, root: str):
    """The smoke run of _smoke_worker's 'full', stopped by SIGTERM three times and resumed."""
    _start_tf(1)
    import signal
    from mlc_tf import checkpointing, train
    from mlc_tf.data import registry

    config = _smoke_config(data_dir)
    strategy = train.make_strategy()
    stop_at = {"done": 0, "step": None}
    _sigterm_after_steps(stop_at)
    handlers = [signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)]
    workdir = os.path.join(root, "interrupted")
    report = {"runs": []}
    # Epochs of 3 steps: stop in epoch 1 after its step 2, then after its last step (before
    # the epoch's end), then in epoch 2 (PK batches of k-means labels) after its step 2; the
    # fourth run finishes.
    for step in (2, 1, 2, None):
        stop_at.update(done=0, step=step)
        result = train.run(config, workdir, strategy=strategy, verbose=False)
        report["runs"].append({"epochs_done": result["epochs_done"], "steps": stop_at["done"],
                               "interrupted": result["interrupted"],
                               "checkpoint": os.path.basename(result["checkpoint"]),
                               "export": result["export"] is not None,
                               "handlers_back": handlers == [signal.getsignal(signal.SIGTERM),
                                                             signal.getsignal(signal.SIGINT)]})
    # A training file renamed: as many files as before, but not the same ones.
    data = registry.create(config.data.dataset, data_dir, **config.data.options())
    old = data.train[3].path
    new = os.path.join(os.path.dirname(old), "0999_c1s1_999999_00.jpg")
    os.rename(old, new)
    try:
        train.run(config, workdir, strategy=strategy, verbose=False)
        report["renamed"] = None
    except checkpointing.CheckpointMismatchError as err:
        report["renamed"] = str(err)
    report["renamed_from_to"] = [os.path.relpath(p, data.root) for p in (old, new)]
    with open(os.path.join(root, "interrupted.json"), "w") as handle:
        json.dump(report, handle)


def _bin_train_stopped_worker(step: str, *argv):
    """bin/train with these arguments, sent SIGTERM after its `step`-th step."""
    import runpy
    _sigterm_after_steps({"done": 0, "step": int(step)})
    sys.argv = [os.path.join(REPO, "bin", "train"), *argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


@pytest.fixture(scope="module")
def interrupted_runs(smoke_runs, tmp_path_factory):
    root, _ = smoke_runs
    _wait(_start_worker("interrupted", tmp_path_factory.mktemp("data"), root))
    with open(root / "interrupted.json") as handle:
        return root, json.load(handle)


def _summary_scalars(folder):
    import tensorflow as tf
    scalars = {}
    for path in sorted(folder.iterdir()):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                if array.ndim == 0:  # not the cluster pictures
                    scalars[(value.tag, event.step)] = float(array)
    return scalars


def test_sigterm_checkpoints_inside_the_epoch_and_resuming_equals_the_uninterrupted_run(
        interrupted_runs):
    root, report = interrupted_runs
    runs = report["runs"]
    assert [(r["epochs_done"], r["steps"], r["interrupted"], r["checkpoint"]) for r in runs] == [
        (0, 2, "SIGTERM", "ckpt-step2-0"), (0, 1, "SIGTERM", "ckpt-step3-0"),
        (1, 2, "SIGTERM", "ckpt-step2-1"), (2, 1, None, "ckpt-2")]
    assert [r["export"] for r in runs] == [False, False, False, True]
    # Each run gave the handlers back.
    assert all(r["handlers_back"] for r in runs)
    full = _checkpoint_tensors(str(root / "full" / "checkpoints" / "ckpt-2"))
    resumed = _checkpoint_tensors(str(root / "interrupted" / "checkpoints" / "ckpt-2"))
    assert sorted(full) == sorted(resumed)
    assert any(name.startswith("classifier/") for name in full)
    for name, value in full.items():
        if value.dtype.kind in "fiu":
            np.testing.assert_allclose(resumed[name], value, atol=1e-5, rtol=0, err_msg=name)
        elif not name.startswith("partial_epoch/"):
            assert resumed[name] == value, name
    # The epochs' summaries went on from those before each stop: mean losses, clustering.
    full_scalars = _summary_scalars(root / "full" / "summaries")
    resumed_scalars = _summary_scalars(root / "interrupted" / "summaries")
    assert sorted(resumed_scalars) == sorted(full_scalars)
    assert ("cluster/num_clusters", 2) in full_scalars
    for key, value in full_scalars.items():
        if key[0] != "cluster/seconds":
            assert resumed_scalars[key] == pytest.approx(value, rel=1e-5), key


def test_resuming_with_a_renamed_training_file_is_refused_naming_it(interrupted_runs):
    _, report = interrupted_runs
    old, new = report["renamed_from_to"]
    assert report["renamed"] is not None
    assert f"1 added ({new})" in report["renamed"] and f"1 removed ({old})" in report["renamed"]


def test_bin_train_stopped_by_sigterm_exits_0_and_prints_how_to_resume(tmp_path):
    workdir, data_dir = tmp_path / "run", tmp_path / "data"
    stopped = _start_worker("bin_train_stopped", 2, f"--flagfile={SMOKE_CFG}",
                            f"--data_dir={data_dir}", f"--workdir={workdir}", "--epochs=1",
                            "--eval_every=0")
    stdout, stderr = stopped.communicate(timeout=600)
    assert stopped.returncode == 0, stdout[-3000:] + stderr[-5000:]
    assert "stopped by SIGTERM; checkpoint " in stdout and "ckpt-step2-0" in stdout
    assert "Traceback" not in stderr and not (workdir / "export").exists()
    command = shlex.split(stdout.split("Resume with: ")[1].strip())
    assert command == [os.path.join(REPO, "bin", "train"), f"--flagfile={workdir}/flags.txt"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    resumed = subprocess.run([sys.executable, *command], capture_output=True, text=True,
                             env=env, cwd=REPO, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert "after epoch 0 and 2 steps of the next" in resumed.stderr
    assert "exported SavedModel feature extractor" in resumed.stdout


if __name__ == "__main__":
    {"step": _step_worker, "smoke": _smoke_worker, "interrupted": _interrupted_worker,
     "bin_train_stopped": _bin_train_stopped_worker}[sys.argv[1]](*sys.argv[2:])
