"""In-process tests of the training pieces: schedule, SGD with coupled decay, checkpoints, stats."""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import checkpointing, self_paced, summaries, train, train_step
from mlc_tf import config as config_lib
from mlc_tf.memory import MemoryBank


def test_learning_rate_steps_down():
    train_cfg = config_lib.TrainConfig(lr=0.1, lr_step=30, lr_gamma=0.1)
    assert [train.learning_rate(e, train_cfg) for e in (0, 29, 30, 59)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01])


def test_epoch_plan_follows_the_spec_schedule():
    config = config_lib.Config()  # warm-up 6 epochs, SC from epoch 15, every epoch
    plans = {e: train.plan_epoch(e, config) for e in (0, 5, 6, 14, 15, 16)}
    assert [plans[e].use_mplp for e in (0, 5, 6)] == [False, False, True]
    assert [plans[e].self_paced for e in (14, 15, 16)] == [False, True, True]
    assert plans[16].recluster
    every_other = config_lib.Config(cluster=config_lib.ClusterConfig(recluster_every=2))
    assert [train.plan_epoch(e, every_other).recluster for e in (15, 16, 17)] == [
        True, False, True]
    no_sc = config_lib.Config(cluster=config_lib.ClusterConfig(clustering="none"))
    assert not train.plan_epoch(40, no_sc).self_paced


def _tiny_model(dim=4):
    """A stand-in for build_model: one 'backbone' Dense and the 'bn_neck' head layer."""
    images = keras.Input((2, 2, 3))
    pooled = keras.layers.Dense(dim, name="dense")(keras.layers.Flatten()(images))
    neck = keras.layers.BatchNormalization(name="bn_neck")(pooled)
    return keras.Model(images, {"pooled": pooled, "neck": neck})


def _step_deltas(weight_decay, lr=0.1, backbone_lr_mult=0.5, momentum=0.9):
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    model = _tiny_model()
    memory = MemoryBank(6, 4)
    rows = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    memory.variable.assign(rows / np.linalg.norm(rows, axis=1, keepdims=True))
    learner = train_step.Learner(strategy, model, memory, weights=train_step.LossWeights(),
                                 lr=lr, backbone_lr_mult=backbone_lr_mult, momentum=momentum,
                                 nesterov=True, weight_decay=weight_decay)
    before = [v.numpy() for v in model.trainable_variables]
    batch = {"image": np.random.default_rng(1).uniform(0, 255, (3, 2, 2, 3)).astype("f4"),
             "index": np.array([0, 2, 4], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    stats = learner.step(next(iter(dataset)), 0.0, joint=False, use_mplp=False)
    deltas = {v.path: v.numpy() - b for v, b in zip(model.trainable_variables, before)}
    return deltas, dict(zip([v.path for v in model.trainable_variables], before)), stats


def test_sgd_adds_coupled_weight_decay_with_the_backbone_multiplier():
    wd, lr, mult, momentum = 0.01, 0.1, 0.5, 0.9
    plain, _, stats = _step_deltas(0.0, lr, mult, momentum)
    decayed, weights, _ = _step_deltas(wd, lr, mult, momentum)
    assert stats["positives"].numpy() == pytest.approx(1.0)
    assert set(plain) == set(decayed)
    for path, delta in decayed.items():
        rate = lr if path.startswith("bn_neck") else lr * mult
        # First Nesterov step: w -= rate * (1 + momentum) * (g + wd * w).
        np.testing.assert_allclose(delta - plain[path],
                                   -rate * (1 + momentum) * wd * weights[path],
                                   rtol=1e-4, atol=1e-7, err_msg=path)


def test_step_writes_the_memory_and_rejects_joint_without_classifier():
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    memory = MemoryBank(6, 4)
    learner = train_step.Learner(strategy, _tiny_model(), memory,
                                 weights=train_step.LossWeights(), lr=0.1, backbone_lr_mult=0.1,
                                 momentum=0.9, nesterov=True, weight_decay=5e-4)
    batch = {"image": np.random.default_rng(2).uniform(0, 255, (2, 2, 2, 3)).astype("f4"),
             "index": np.array([1, 3], np.int32),
             "label": np.array([0, 1], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    with pytest.raises(ValueError, match="classifier"):
        learner.step(next(iter(dataset)), 0.0, joint=True, use_mplp=False)
    learner.new_classifier(2, seed=0)
    stats = learner.step(next(iter(dataset)), 0.0, joint=True, use_mplp=False)
    assert {"loss", "mmcl", "ce", "triplet"} <= set(stats)
    rows = memory.variable.numpy()
    np.testing.assert_allclose(np.linalg.norm(rows[[1, 3]], axis=1), 1.0, rtol=1e-5)
    assert not rows[[0, 2, 4, 5]].any()


def test_checkpointer_refuses_another_run_before_restoring(tmp_path):
    state = checkpointing.RunState(5)
    state.epoch.assign(3)
    state.pseudo_labels.assign([0, 1, -1, 1, 0])
    state.num_classes.assign(2)
    bank = tf.Variable(np.ones((5, 2), np.float32))
    fingerprint = {"dataset": "synthetic", "num_train": 5, "feature_dim": 2}
    saver = checkpointing.Checkpointer(str(tmp_path), fingerprint, max_to_keep=2)
    saver.save({"memory": bank, **state.objects()}, 3)

    peeked = checkpointing.Checkpointer(str(tmp_path), fingerprint, 2).peek()
    assert peeked["epoch"] == 3 and peeked["num_classes"] == 2
    np.testing.assert_array_equal(peeked["pseudo_labels"], [0, 1, -1, 1, 0])

    restored_state, restored_bank = checkpointing.RunState(5), tf.Variable(np.zeros((5, 2), "f4"))
    checkpointing.Checkpointer(str(tmp_path), fingerprint, 2).restore(
        {"memory": restored_bank, **restored_state.objects()})
    assert int(restored_state.epoch.numpy()) == 3
    np.testing.assert_array_equal(restored_bank.numpy(), 1.0)

    other = checkpointing.Checkpointer(str(tmp_path), {**fingerprint, "num_train": 6}, 2)
    with pytest.raises(checkpointing.CheckpointMismatchError,
                       match="num_train: checkpoint 5 vs now 6"):
        other.peek()
    # Same fingerprint but a variable of another shape: still an error, not a partial restore.
    with pytest.raises(checkpointing.CheckpointMismatchError):
        checkpointing.Checkpointer(str(tmp_path), fingerprint, 2).restore(
            {"memory": tf.Variable(np.zeros((5, 3), "f4")),
             **checkpointing.RunState(5).objects()})


def test_cluster_diagnostics_hand_worked():
    # Clusters {0,1,2} (ids 7,7,8) and {3,4} (ids 9,9); sample 5 is an outlier.
    scalars = summaries.cluster_diagnostics(np.array([0, 0, 0, 1, 1, -1]),
                                            np.array([7, 7, 8, 9, 9, 9]))
    assert scalars["cluster/num_clusters"] == 2
    assert scalars["cluster/outlier_fraction"] == pytest.approx(1 / 6)
    assert scalars["cluster/purity"] == pytest.approx(4 / 5)
    assert 0 < scalars["cluster/nmi"] < 1
    empty = summaries.cluster_diagnostics(np.full(3, -1), np.arange(3))
    assert empty["cluster/purity"] == 0 and empty["cluster/outlier_fraction"] == 1


def test_mean_tracker_and_usable_labels():
    tracker = summaries.MeanTracker()
    tracker.update({"loss": 1.0})
    tracker.update({"loss": 3.0, "ce": 2.0})
    assert tracker.result() == {"loss": 2.0, "ce": 2.0}
    tracker.reset()
    assert tracker.result() == {}
    assert self_paced.usable(np.array([0, 0, 1, 1, -1]), batch_size=4)
    assert not self_paced.usable(np.array([0, 0, 0, 0, -1]), batch_size=4)  # one class
    assert not self_paced.usable(np.array([0, 1, -1, -1, -1]), batch_size=4)  # under a batch


def test_camera_normalized_removes_each_camera_mean():
    features = np.array([[1.0, 0.0], [1.0, 2.0], [5.0, 5.0], [5.0, 7.0]])
    cameras = np.array([0, 0, 1, 1])
    out = self_paced.camera_normalized(features, cameras)
    np.testing.assert_allclose(out, [[0, -1], [0, 1], [0, -1], [0, 1]], atol=1e-6)


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


def test_camera_centring_lets_clusters_span_cameras():
    # 8 identities x 3 cameras x 4 images; a camera offset three times the identity signal.
    rng = np.random.default_rng(0)
    ids, cams = np.repeat(np.arange(8), 12), np.tile(np.repeat(np.arange(3), 4), 8)
    features = (rng.normal(size=(8, 32))[ids] + 3 * rng.normal(size=(3, 32))[cams]
                + 0.1 * rng.normal(size=(96, 32)))
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    cluster = config_lib.ClusterConfig(k1=10, k2=3, min_samples=4)
    plain, _ = self_paced.pseudo_labels(features, cluster, seed=0)
    centred, _ = self_paced.pseudo_labels(
        features, dataclasses.replace(cluster, camera_normalize=True), seed=0, camids=cams)
    for labels in (plain, centred):
        assert (labels >= 0).all()
    # Without centring every cluster stays inside one camera; with it, clusters are identities.
    assert all(len(np.unique(cams[plain == c])) == 1 for c in np.unique(plain))
    np.testing.assert_array_equal(np.unique(centred[ids == 0], return_counts=True)[1], [12])
    assert len(np.unique(centred)) == 8
    with pytest.raises(ValueError, match="camera"):
        self_paced.pseudo_labels(features, dataclasses.replace(cluster, camera_normalize=True),
                                 seed=0)


def test_new_classifier_of_the_same_size_resets_in_place():
    strategy = tf.distribute.get_strategy()
    learner = train_step.Learner(strategy, _tiny_model(), MemoryBank(6, 4),
                                 weights=train_step.LossWeights(), lr=0.1, backbone_lr_mult=0.1,
                                 momentum=0.9, nesterov=True, weight_decay=5e-4)
    batch = {"image": np.random.default_rng(3).uniform(0, 255, (4, 2, 2, 3)).astype("f4"),
             "index": np.array([0, 1, 2, 3], np.int32), "label": np.array([0, 0, 1, 1], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    learner.new_classifier(2, seed=7)
    fresh = learner.classifier.kernel.numpy()
    learner.step(next(iter(dataset)), 0.0, joint=True, use_mplp=False)
    assert learner.classifier_optimizer.momentums[0].numpy().any()
    traced = learner._steps[(True, False)]

    learner.new_classifier(2, seed=7)  # same size: same layer, fresh values and momentum
    np.testing.assert_array_equal(learner.classifier.kernel.numpy(), fresh)
    assert not learner.classifier_optimizer.momentums[0].numpy().any()
    assert learner._steps[(True, False)] is traced
    learner.new_classifier(3, seed=7)  # another size: a new layer, the joint step is dropped
    assert learner.classifier.kernel.shape == (4, 3) and (True, False) not in learner._steps
