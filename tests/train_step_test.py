"""Tests for mlc_tf.train_step: weight decay, what the memory is written from, the classifier."""

import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import config as config_lib
from mlc_tf import losses, train_step
from mlc_tf.memory import MemoryBank


def _assign_unit_rows(memory, rows):
    memory.variable.assign((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("f4"))


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
    _assign_unit_rows(memory, np.random.default_rng(0).normal(size=(6, 4)))
    learner = train_step.Learner(strategy, model, memory, loss=config_lib.LossConfig(),
                                 lr=lr, backbone_lr_mult=backbone_lr_mult, momentum=momentum,
                                 nesterov=True, weight_decay=weight_decay)
    before = [v.numpy() for v in model.trainable_variables]
    batch = {"image": np.random.default_rng(1).uniform(0, 255, (3, 2, 2, 3)).astype("f4"),
             "index": np.array([0, 2, 4], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    stats = learner.step(next(iter(dataset)), 0.0, targets="one_hot", joint=False)
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
                                 loss=config_lib.LossConfig(), lr=0.1, backbone_lr_mult=0.1,
                                 momentum=0.9, nesterov=True, weight_decay=5e-4)
    batch = {"image": np.random.default_rng(2).uniform(0, 255, (2, 2, 2, 3)).astype("f4"),
             "index": np.array([1, 3], np.int32),
             "label": np.array([0, 1], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    with pytest.raises(ValueError, match="classifier"):
        learner.step(next(iter(dataset)), 0.0, targets="one_hot", joint=True)
    learner.new_classifier(2, seed=0)
    stats = learner.step(next(iter(dataset)), 0.0, targets="one_hot", joint=True)
    assert {"loss", "mmcl", "ce", "triplet"} <= set(stats)
    rows = memory.variable.numpy()
    np.testing.assert_allclose(np.linalg.norm(rows[[1, 3]], axis=1), 1.0, rtol=1e-5)
    assert not rows[[0, 2, 4, 5]].any()


def test_new_classifier_of_the_same_size_resets_in_place():
    strategy = tf.distribute.get_strategy()
    learner = train_step.Learner(strategy, _tiny_model(), MemoryBank(6, 4),
                                 loss=config_lib.LossConfig(), lr=0.1, backbone_lr_mult=0.1,
                                 momentum=0.9, nesterov=True, weight_decay=5e-4)
    batch = {"image": np.random.default_rng(3).uniform(0, 255, (4, 2, 2, 3)).astype("f4"),
             "index": np.array([0, 1, 2, 3], np.int32), "label": np.array([0, 0, 1, 1], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    learner.new_classifier(2, seed=7)
    fresh = learner.classifier.kernel.numpy()
    learner.step(next(iter(dataset)), 0.0, targets="one_hot", joint=True)
    assert learner.classifier_optimizer.momentums[0].numpy().any()
    traced = learner._steps[("one_hot", True)]

    learner.new_classifier(2, seed=7)  # same size: same layer, fresh values and momentum
    np.testing.assert_array_equal(learner.classifier.kernel.numpy(), fresh)
    assert not learner.classifier_optimizer.momentums[0].numpy().any()
    assert learner._steps[("one_hot", True)] is traced
    learner.new_classifier(3, seed=7)  # another size: a new layer, the joint step is dropped
    assert learner.classifier.kernel.shape == (4, 3) and ("one_hot", True) not in learner._steps
    # The random weights are the N(0, 0.001^2) draw of the seed.
    np.testing.assert_allclose(fresh, keras.initializers.RandomNormal(stddev=0.001, seed=7)(
        (4, 2), "float32"))
    assert 1e-4 < np.std(fresh) < 1e-2


@pytest.mark.parametrize("num_classes", [2, 3])  # in place (same size as before) or a new layer
def test_new_classifier_takes_centroids_as_weights(num_classes):
    learner = train_step.Learner(tf.distribute.get_strategy(), _tiny_model(), MemoryBank(6, 4),
                                 loss=config_lib.LossConfig(), lr=0.1, backbone_lr_mult=0.1,
                                 momentum=0.9, nesterov=True, weight_decay=5e-4)
    learner.new_classifier(2, seed=7)
    random = keras.initializers.RandomNormal(stddev=0.001, seed=7)((4, num_classes), "float32")
    centroids = np.zeros((num_classes, 4), np.float32)
    centroids[0] = [0.6, 0.8, 0, 0]  # class 1 (and 2) without a centroid keep random weights
    learner.new_classifier(num_classes, seed=7, centroids=centroids)
    kernel = learner.classifier.kernel.numpy()  # (D, C): class c is column c
    np.testing.assert_array_equal(kernel[:, 0], centroids[0])
    np.testing.assert_allclose(kernel[:, 1:], random[:, 1:])
    with pytest.raises(ValueError, match="centroids of shape"):
        learner.new_classifier(2, seed=7, centroids=np.ones((2, 5), np.float32))


def _fixed_step(targets="one_hot", alpha=0.0):
    """One step at learning rate 0: the network after the step is the one the step ran."""
    keras.utils.set_random_seed(0)
    strategy = tf.distribute.get_strategy()
    model = _tiny_model()
    memory = MemoryBank(6, 4)
    _assign_unit_rows(memory, np.random.default_rng(0).normal(size=(6, 4)))
    before = memory.variable.numpy()
    learner = train_step.Learner(strategy, model, memory, loss=config_lib.LossConfig(),
                                 lr=1e-30, backbone_lr_mult=1.0, momentum=0.0, nesterov=False,
                                 weight_decay=0.0)
    images = np.random.default_rng(1).uniform(0, 255, (3, 2, 2, 3)).astype("f4")
    batch = {"image": images, "index": np.array([0, 2, 4], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    stats = learner.step(next(iter(dataset)), alpha, targets=targets, joint=False)
    outputs = model(images, training=True)
    return before, memory.variable.numpy(), outputs, stats


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_the_memory_is_written_from_the_normalised_neck_feature():
    _, after, outputs, _ = _fixed_step(alpha=0.0)
    neck, pooled = _unit(outputs["neck"]), _unit(outputs["pooled"])
    np.testing.assert_allclose(after[[0, 2, 4]], neck, atol=1e-5)
    # The BN neck really changes the feature, so writing the pooled one would fail above.
    assert np.abs(neck - pooled).max() > 0.1


def test_the_loss_reads_the_memory_before_the_step_updates_it():
    before, after, outputs, stats = _fixed_step(alpha=0.0)
    embedded = tf.constant(_unit(outputs["neck"]), tf.float32)
    targets = losses.one_hot_targets(tf.constant([0, 2, 4]), 6)

    def mmcl(memory):
        logits = tf.matmul(embedded, tf.constant(memory), transpose_b=True)
        return float(tf.reduce_mean(losses.mmcl_loss(logits, targets)))

    assert float(stats["mmcl"]) == pytest.approx(mmcl(before), rel=1e-5)
    # With alpha 0 the written rows equal the features: read after the write, the loss is 0.
    assert mmcl(after) == pytest.approx(0.0, abs=1e-5) and mmcl(before) > 0.1


def test_supervised_step_has_no_memory_and_needs_a_classifier():
    strategy = tf.distribute.get_strategy()
    learner = train_step.Learner(strategy, _tiny_model(), None, loss=config_lib.LossConfig(),
                                 lr=0.1, backbone_lr_mult=0.1, momentum=0.9, nesterov=True,
                                 weight_decay=5e-4)
    batch = {"image": np.random.default_rng(4).uniform(0, 255, (4, 2, 2, 3)).astype("f4"),
             "index": np.array([0, 1, 2, 3], np.int32), "label": np.array([0, 0, 1, 1], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    with pytest.raises(ValueError, match="needs a memory bank"):
        learner.step(next(iter(dataset)), 0.0, targets="mplp", joint=False)
    learner.new_classifier(2, seed=0)
    stats = learner.step(next(iter(dataset)), 0.0, targets="none", joint=True)
    assert float(stats["mmcl"]) == 0.0 and float(stats["ce"]) > 0.0
    assert "memory" not in learner.checkpoint_objects()
    assert float(stats["loss"]) == pytest.approx(float(stats["ce"]) + float(stats["triplet"]))


def _camera_styled_memory():
    """8 slots: 4 people x 2 cameras; a strong per-camera offset dominates every row."""
    people = np.eye(4, 6)
    cameras = np.array([0, 1] * 4)
    offsets = np.zeros((2, 6))
    offsets[0, 4], offsets[1, 5] = 3.0, 3.0
    rows = np.repeat(people, 2, axis=0) + offsets[cameras]
    return rows, cameras, np.repeat(np.arange(4), 2)


def test_mplp_camera_normalize_predicts_positives_from_the_centred_memory():
    rows, cameras, pids = _camera_styled_memory()
    options = config_lib.LossConfig(mplp_camera_normalize=True, mplp_threshold=0.6,
                                    mplp_min_candidates=2)
    strategy = tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="camera of every memory slot"):
        train_step.Learner(strategy, _tiny_model(6), MemoryBank(8, 6), loss=options, lr=0.1,
                           backbone_lr_mult=1.0, momentum=0.0, nesterov=False, weight_decay=0.0)
    memory = MemoryBank(8, 6)
    _assign_unit_rows(memory, rows)
    learner = train_step.Learner(strategy, _tiny_model(6), memory, loss=options, lr=1e-30,
                                 backbone_lr_mult=1.0, momentum=0.0, nesterov=False,
                                 weight_decay=0.0, slot_pids=pids, slot_cameras=cameras + 7)
    anchors = np.array([0, 3, 4], np.int32)
    batch = {"image": np.random.default_rng(2).uniform(0, 255, (3, 2, 2, 3)).astype("f4"),
             "index": anchors}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    stats = learner.step(next(iter(dataset)), 1.0, targets="mplp", joint=False)
    # Plain rows: every slot of the anchor's camera is above the threshold (cosine 0.9), the
    # anchor's own identity in the other camera is not (0.1): positives are camera mates.
    plain = losses.mplp_targets(memory.variable, tf.constant(anchors), threshold=0.6,
                                min_candidates=2).numpy()
    assert (plain * (pids[None] != pids[anchors][:, None])).sum() > 0
    # Centred, only the same identity in the other camera is left: precision 1, recall 1.
    assert float(stats["positives"]) == pytest.approx(2.0)
    assert float(stats["mplp_true_positive"]) == float(stats["mplp_predicted"]) == 1.0


# Runs in its own process: logical devices must be configured before any TF op.
_COLLECTIVES_SCRIPT = textwrap.dedent("""
    import json
    import keras
    import numpy as np
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    from mlc_tf import config as config_lib, train_step
    from mlc_tf.memory import MemoryBank

    # Every tensor handed to a replica-context collective, by dtype, as the step traces.
    seen = []
    for name in ("all_gather", "all_reduce"):
        original = getattr(tf.distribute.ReplicaContext, name)
        def recording(self, *args, _original=original, _name=name, **kwargs):
            value = args[1] if _name == "all_reduce" else args[0]
            seen.extend(f"{_name}:{t.dtype.name}" for t in tf.nest.flatten(value))
            return _original(self, *args, **kwargs)
        setattr(tf.distribute.ReplicaContext, name, recording)

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    keras.utils.set_random_seed(0)
    with strategy.scope():
        images = keras.Input((2, 2, 3))
        pooled = keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(images))
        neck = keras.layers.BatchNormalization(name="bn_neck")(pooled)
        model = keras.Model(images, {"pooled": pooled, "neck": neck})
        memory = MemoryBank(8, 4, dtype="bfloat16", graph_k=4)
    rows = np.random.default_rng(0).normal(size=(8, 4))
    memory.variable.assign((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("bfloat16"))
    learner = train_step.Learner(strategy, model, memory, loss=config_lib.LossConfig(),
                                 lr=0.1, backbone_lr_mult=0.1, momentum=0.9, nesterov=True,
                                 weight_decay=5e-4, slot_pids=np.arange(8) // 2)
    learner.refresh_mplp_graph()
    learner.new_classifier(2, seed=0)
    batch = {"image": np.random.default_rng(1).uniform(0, 255, (4, 2, 2, 3)).astype("f4"),
             "index": np.array([0, 2, 4, 6], np.int32), "label": np.array([0, 0, 1, 1], np.int32)}
    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))
    losses = {}
    for targets, joint in (("one_hot", False), ("mplp", False), ("mplp", True)):
        stats = learner.step(next(iter(dataset)), 0.5, targets=targets, joint=joint)
        losses[f"{targets}/{joint}"] = float(stats["loss"])
    copies = [np.asarray(v.numpy(), np.float32) for v in memory.variable.values]
    print(json.dumps({"seen": sorted(set(seen)), "losses": losses,
                      "bank_dtype": memory.variable.dtype.name,
                      "copies_equal": bool(np.array_equal(copies[0], copies[1]))}))
""")


def test_collectives_of_a_two_replica_step_take_no_int32(run_json_script):
    result = run_json_script(_COLLECTIVES_SCRIPT, timeout=300)
    # NCCL on GPUs takes no int32 (TensorFlow keeps int32 in host memory there).
    assert not [entry for entry in result["seen"] if entry.endswith(":int32")], result["seen"]
    # The recording saw the step's gathers and reductions: features, indices, labels, counts.
    assert {"all_gather:float32", "all_gather:int64", "all_reduce:int64"} <= set(result["seen"])
    assert all(np.isfinite(list(result["losses"].values())))
    assert result["bank_dtype"] == "bfloat16" and result["copies_equal"]


# Runs in its own process: logical devices must be configured before any TF op.
_DEVICE_AUGMENT_SCRIPT = textwrap.dedent("""
    import json
    import os
    import tempfile
    import keras
    import numpy as np
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    from mlc_tf import config as config_lib, train_step
    from mlc_tf.data import pipeline
    from mlc_tf.memory import MemoryBank

    size, augment = (8, 4), config_lib.AugmentConfig()
    folder, rng = tempfile.mkdtemp(), np.random.default_rng(0)
    paths = []
    for i in range(8):  # two sizes, so the device batches are zero-padded
        paths.append(os.path.join(folder, f"{i}.jpg"))
        pixels = rng.integers(0, 256, ((12, 6), (10, 5))[i % 2] + (3,), np.uint8)
        tf.io.write_file(paths[-1], tf.io.encode_jpeg(pixels))
    rows = rng.normal(size=(8, 4))

    def train(devices, augment_on):
        strategy = tf.distribute.MirroredStrategy(devices)
        keras.utils.set_random_seed(0)
        with strategy.scope():
            images = keras.Input((*size, 3))
            pooled = keras.layers.Dense(4, name="dense")(keras.layers.Flatten()(images / 255.0))
            neck = keras.layers.BatchNormalization(synchronized=True, name="bn_neck")(pooled)
            model = keras.Model(images, {"pooled": pooled, "neck": neck})
            memory = MemoryBank(8, 4)
        memory.variable.assign((rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype("f4"))
        learner = train_step.Learner(
            strategy, model, memory, loss=config_lib.LossConfig(), lr=0.1, backbone_lr_mult=0.1,
            momentum=0.9, nesterov=True, weight_decay=5e-4,
            augment_images=(pipeline.device_augmentation(size, augment)
                            if augment_on == "device" else None))
        batches = pipeline.make_train_dataset(paths, [0] * 8, range(8), image_size=size,
                                              batch_size=4, seed=3, epoch=0, augment=augment,
                                              augment_on=augment_on)
        losses = [float(learner.step(batch, 0.5, targets="one_hot", joint=False)["loss"])
                  for batch in strategy.experimental_distribute_dataset(batches)]
        return {"losses": losses, "memory": memory.numpy().tolist(),
                "weights": [v.numpy().tolist() for v in model.trainable_variables]}

    print(json.dumps({"two_device": train(["/cpu:0", "/cpu:1"], "device"),
                      "one_device": train(["/cpu:0"], "device"),
                      "one_input": train(["/cpu:0"], "input")}))
""")


def test_a_two_replica_device_augmented_step_is_the_one_replica_input_augmented_step(
        run_json_script):
    runs = run_json_script(_DEVICE_AUGMENT_SCRIPT, timeout=300)
    expected = runs["one_input"]
    assert len(expected["losses"]) == 2
    for name in ("one_device", "two_device"):
        np.testing.assert_allclose(runs[name]["losses"], expected["losses"], atol=1e-5)
        np.testing.assert_allclose(runs[name]["memory"], expected["memory"], atol=1e-5)
        for got, want in zip(runs[name]["weights"], expected["weights"]):
            np.testing.assert_allclose(got, want, atol=1e-5)
