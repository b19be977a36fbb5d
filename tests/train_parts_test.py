"""In-process tests of the training loop's pieces: schedule, checkpoints, statistics."""

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import checkpointing, self_paced, summaries, train
from mlc_tf import config as config_lib


def test_learning_rate_steps_down():
    train_cfg = config_lib.TrainConfig(lr=0.1, lr_step=30, lr_gamma=0.1)
    assert [train.learning_rate(e, train_cfg) for e in (0, 29, 30, 59)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01])


def test_learning_rate_warms_up_linearly_then_steps_down():
    train_cfg = config_lib.TrainConfig(lr=0.1, lr_step=4, lr_gamma=0.1, lr_warmup_epochs=2,
                                       lr_warmup_factor=0.01)
    # MMT's per-epoch WarmupMultiStepLR: 0.01 + 0.99 * e / 2 of the rate in epochs 0 and 1.
    assert [train.learning_rate(e, train_cfg) for e in range(6)] == pytest.approx(
        [0.001, 0.0505, 0.1, 0.1, 0.01, 0.01])


def test_epoch_plan_follows_the_spec_schedule():
    config = config_lib.Config()  # warm-up 6 epochs, SC from epoch 15, every epoch
    plans = {e: train.plan_epoch(e, config) for e in (0, 5, 6, 14, 15, 16)}
    assert [plans[e].targets for e in (0, 5, 6)] == ["one_hot", "one_hot", "mplp"]
    assert [plans[e].self_paced for e in (14, 15, 16)] == [False, True, True]
    assert not plans[14].relabel and plans[15].relabel and plans[16].relabel
    every_other = config_lib.Config(cluster=config_lib.ClusterConfig(recluster_every=2))
    assert [train.plan_epoch(e, every_other).relabel for e in (15, 16, 17)] == [
        True, False, True]
    no_sc = config_lib.Config(cluster=config_lib.ClusterConfig(clustering="none"))
    assert not train.plan_epoch(40, no_sc).self_paced
    supervised = config_lib.Config(train=config_lib.TrainConfig(supervised=True))
    plans = [train.plan_epoch(e, supervised) for e in (0, 1, 20)]
    assert [p.targets for p in plans] == ["none"] * 3 and all(p.self_paced for p in plans)
    assert [p.relabel for p in plans] == [True, False, False]


def test_checkpointer_refuses_another_run_before_restoring(tmp_path):
    state, clusters = checkpointing.RunState(), self_paced.ClusterState(5)
    state.epoch.assign(3)
    clusters.labels.assign([0, 1, -1, 1, 0])
    bank = tf.Variable(np.ones((5, 2), np.float32))
    fingerprint = {"dataset": "synthetic", "num_train": 5, "feature_dim": 2}
    saver = checkpointing.Checkpointer(str(tmp_path), fingerprint, max_to_keep=2)
    saver.save({"memory": bank, **state.objects(), **clusters.objects()}, 3)

    peeked = checkpointing.Checkpointer(str(tmp_path), fingerprint, 2).peek()
    assert peeked["epoch"] == 3
    np.testing.assert_array_equal(peeked["pseudo_labels"], [0, 1, -1, 1, 0])

    restored_state, restored_bank = checkpointing.RunState(), tf.Variable(np.zeros((5, 2), "f4"))
    restored_clusters = self_paced.ClusterState(5)
    checkpointing.Checkpointer(str(tmp_path), fingerprint, 2).restore(
        {"memory": restored_bank, **restored_state.objects(), **restored_clusters.objects()})
    assert restored_clusters.num_classes == 2
    assert int(restored_state.epoch.numpy()) == 3
    np.testing.assert_array_equal(restored_bank.numpy(), 1.0)

    other = checkpointing.Checkpointer(str(tmp_path), {**fingerprint, "num_train": 6}, 2)
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match="num_train: checkpoint 5 vs now 6"):
        other.peek()
    # A key only one side has (a supervised run's) is a difference too.
    supervised = checkpointing.Checkpointer(str(tmp_path), {**fingerprint, "supervised": True}, 2)
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match="supervised: checkpoint None vs now True"):
        supervised.peek()
    # Same fingerprint but a variable of another shape: still an error, not a partial restore.
    with pytest.raises(checkpointing.CheckpointMismatchError):
        checkpointing.Checkpointer(str(tmp_path), fingerprint, 2).restore(
            {"memory": tf.Variable(np.zeros((5, 3), "f4")),
             **checkpointing.RunState().objects()})


def test_mean_tracker_averages_and_resets():
    tracker = summaries.MeanTracker()
    tracker.update({"loss": 1.0})
    tracker.update({"loss": 3.0, "ce": 2.0})
    assert tracker.result() == {"loss": 2.0, "ce": 2.0}
    tracker.reset()
    assert tracker.result() == {}


def test_write_scalars_needs_no_tensorboard(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    summaries.write_scalars(writer, {"train/loss": 1.5, "eval/mAP": 0.25}, step=3)
    events = tf.data.TFRecordDataset([str(p) for p in tmp_path.iterdir()])
    tags = set()
    for record in events:
        event = tf.compat.v1.Event.FromString(record.numpy())
        for value in event.summary.value:
            tags.add((value.tag, event.step,
                      float(tf.make_ndarray(value.tensor)), value.metadata.plugin_data.plugin_name))
    assert tags == {("train/loss", 3, 1.5, "scalars"), ("eval/mAP", 3, 0.25, "scalars")}




def test_checkpoints_from_before_the_reliability_threshold_restore(tmp_path):
    clusters = self_paced.ClusterState(3)
    clusters.labels.assign([0, 0, -1])
    clusters.independence.assign(0.25)
    state = checkpointing.RunState().objects()
    older = {name: v for name, v in clusters.objects().items() if name != "cluster_independence"}
    checkpointing.Checkpointer(str(tmp_path / "old"), {"n": 3}, 1).save({**state, **older}, 1)
    restored = self_paced.ClusterState(3)
    checkpointing.Checkpointer(str(tmp_path / "old"), {"n": 3}, 1).restore(
        {**state, **restored.objects()})
    assert restored.num_classes == 1 and restored.fixed_independence() is None
    checkpointing.Checkpointer(str(tmp_path / "new"), {"n": 3}, 1).save(
        {**state, **clusters.objects()}, 1)
    checkpointing.Checkpointer(str(tmp_path / "new"), {"n": 3}, 1).restore(
        {**state, **restored.objects()})
    assert restored.fixed_independence() == 0.25


@pytest.mark.parametrize("init", ["normal", "centroids"])
def test_each_rounds_classifier_starts_from_its_clusters_mean_memory_rows(init):
    config = config_lib.Config(
        data=config_lib.DataConfig(image_size=(32, 16)),
        model=config_lib.ModelConfig(backbone="resnet18", pretrained="none"))
    learner = train.build(config, tf.distribute.get_strategy(), 6)
    rows = np.random.default_rng(0).normal(size=(6, learner.memory.dim)).astype("f4")
    learner.memory.variable.assign(rows)
    clusters = self_paced.ClusterState(6)
    clusters.labels.assign([1, 0, 1, -1, 0, 0])
    train._new_classifier(learner, clusters, seed=3, init=init)
    kernel = learner.classifier.kernel.numpy()
    if init == "normal":
        assert kernel.shape == (learner.memory.dim, 2) and np.abs(kernel).max() < 0.01
        return
    mean = rows[[1, 4, 5]].mean(axis=0)
    np.testing.assert_allclose(kernel[:, 0], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-7)
    mean = rows[[0, 2]].mean(axis=0)
    np.testing.assert_allclose(kernel[:, 1], mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-7)


def test_a_supervised_run_without_memory_keeps_random_classifier_weights():
    config = config_lib.Config(
        data=config_lib.DataConfig(image_size=(32, 16)),
        model=config_lib.ModelConfig(backbone="resnet18", pretrained="none"),
        train=config_lib.TrainConfig(supervised=True))
    learner = train.build(config, tf.distribute.get_strategy(), 6)
    assert learner.memory is None
    clusters = self_paced.ClusterState(6)
    clusters.labels.assign([1, 0, 1, 2, 0, 0])
    train._new_classifier(learner, clusters, seed=3, init="centroids")
    kernel = learner.classifier.kernel.numpy()
    assert kernel.shape[1] == 3 and 0 < np.abs(kernel).max() < 0.01
