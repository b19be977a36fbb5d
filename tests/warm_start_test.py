"""Tests for mlc_tf.warm_start: workdir and export round trips, refused sources."""

import glob
import json
import logging
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import checkpointing
from mlc_tf import config as config_lib
from mlc_tf import export as export_lib
from mlc_tf import model as model_lib
from mlc_tf import warm_start

SOURCE_SIZE = (32, 16)
TARGET_SIZE = (64, 32)
NUM_TRAIN = 6


def _perturb(model, seed):
    """Gives every weight values no fresh build has (BN variances stay positive)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        shape = tuple(variable.shape)
        if variable.path.endswith("moving_variance"):
            variable.assign(rng.uniform(0.5, 2.0, shape).astype(np.float32))
        else:
            variable.assign(variable.numpy() + rng.normal(0, 0.05, shape).astype(np.float32))


def _build(backbone="resnet18", image_size=TARGET_SIZE, **options):
    return model_lib.build_model(backbone=backbone, image_size=image_size, **options)


def _save_run(model, workdir, epochs, backbone="resnet18"):
    """Writes config.json and, per epoch in `epochs`, a checkpoint as train.run does."""
    os.makedirs(workdir, exist_ok=True)
    run_config = config_lib.from_flat({"backbone": backbone, "image_size": SOURCE_SIZE,
                                       "pretrained": "none"})
    config_lib.save_json(run_config, os.path.join(workdir, checkpointing.CONFIG_FILE))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    dim = model_lib.feature_dim(backbone, True)
    objects = {"model": model, "backbone_optimizer": optimizer,
               "memory": tf.Variable(np.ones((NUM_TRAIN, dim), np.float32)),
               **checkpointing.RunState().objects()}
    saver = checkpointing.Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINT_DIR),
                                       {"dataset": "synthetic", "num_train": NUM_TRAIN}, 3)
    for epoch in epochs:
        _perturb(model, seed=epoch)
        saver.save(objects, epoch)


def _assert_same_weights(expected, actual):
    expected_weights = model_lib.layer_weights(expected)
    actual_weights = model_lib.layer_weights(actual)
    assert sorted(expected_weights) == sorted(actual_weights)
    for layer, variables in expected_weights.items():
        assert sorted(variables) == sorted(actual_weights[layer]), layer
        for name, value in variables.items():
            np.testing.assert_array_equal(actual_weights[layer][name], value,
                                          err_msg=f"{layer}/{name}")


def _assert_same_features(expected, actual):
    images = np.random.default_rng(1).uniform(0, 255, (2, *SOURCE_SIZE, 3)).astype(np.float32)
    want, got = expected(images, training=False), actual(images, training=False)
    for output in ("pooled", "neck"):
        np.testing.assert_allclose(got[output], want[output], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def source_model():
    model = _build(image_size=SOURCE_SIZE)
    _perturb(model, seed=0)
    return model


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A resnet18 run with checkpoints of epochs 2 and 3; returns (path, model at epoch 3)."""
    model = _build(image_size=SOURCE_SIZE)
    path = str(tmp_path_factory.mktemp("runs") / "source")
    _save_run(model, path, epochs=(2, 3))
    return path, model


@pytest.fixture(scope="module")
def export_dir(source_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("exports") / "export")
    return export_lib.export_feature_extractor(source_model, path,
                                               metadata={"trained_epochs": 5})


def test_workdir_round_trip_uses_newest_checkpoint(workdir):
    path, source = workdir
    target = _build()
    info = warm_start.load_initial_weights(target, path)
    assert info["kind"] == "workdir" and info["path"] == os.path.abspath(path)
    assert info["epoch"] == 3 and info["checkpoint"].endswith("ckpt-3")
    assert info["layers"] == len([layer for layer in target.layers if layer.weights])
    _assert_same_weights(source, target)

    same_size = _build(image_size=SOURCE_SIZE)
    warm_start.load_initial_weights(same_size, path)
    _assert_same_features(source, same_size)


def test_export_round_trip(source_model, export_dir):
    target = _build()
    info = warm_start.load_initial_weights(target, export_dir)
    assert info == {"kind": "export", "path": export_dir, "checkpoint": export_dir, "epoch": 5,
                    "layers": len([layer for layer in target.layers if layer.weights])}
    _assert_same_weights(source_model, target)

    same_size = _build(image_size=SOURCE_SIZE)
    warm_start.load_initial_weights(same_size, export_dir)
    _assert_same_features(source_model, same_size)


def test_resnet50_workdir_round_trip(tmp_path):
    source = _build("resnet50", image_size=SOURCE_SIZE, multiscale=True)
    _save_run(source, str(tmp_path), epochs=(1,), backbone="resnet50")
    target = _build("resnet50")
    info = warm_start.load_initial_weights(target, str(tmp_path))
    assert info["epoch"] == 1 and info["layers"] > 100
    _assert_same_weights(source, target)


def test_backbone_mismatch_assigns_nothing(workdir):
    target = _build("resnet50")
    before = [v.numpy() for v in target.weights]
    with pytest.raises(ValueError, match="backbone 'resnet18' there, 'resnet50' here"):
        warm_start.load_initial_weights(target, workdir[0])
    for value, variable in zip(before, target.weights):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_multiscale_and_feature_size_mismatch(export_dir):
    target = _build(multiscale=False)
    before = [v.numpy() for v in target.weights]
    with pytest.raises(ValueError, match=r"multiscale True there, False here; "
                                         r"feature_dim 1536 there, 512 here"):
        warm_start.load_initial_weights(target, export_dir)
    for value, variable in zip(before, target.weights):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_preprocessing_mismatch(export_dir, tmp_path):
    caffe_export = str(tmp_path / "caffe")
    shutil.copytree(export_dir, caffe_export)
    metadata_path = os.path.join(caffe_export, export_lib.METADATA_FILE)
    with open(metadata_path) as handle:
        metadata = json.load(handle)
    with open(metadata_path, "w") as handle:
        json.dump({**metadata, "preprocessing": "caffe"}, handle)
    with pytest.raises(ValueError,
                       match="preprocessing 'caffe' there, 'torch' here.*source_preprocessing"):
        warm_start.load_initial_weights(_build(), caffe_export)
    # A model built with the source's preprocessing takes the weights.
    assert warm_start.source_preprocessing(caffe_export) == "caffe"
    caffe_model = model_lib.build_model(backbone="resnet18", image_size=(32, 16),
                                        preprocessing="caffe")
    assert warm_start.load_initial_weights(caffe_model, caffe_export)["kind"] == "export"
    assert warm_start.source_preprocessing(export_dir) == "torch"


def test_shape_mismatch_is_checked_before_assigning(source_model):
    weights = model_lib.layer_weights(source_model)
    last = [layer.name for layer in source_model.layers if layer.weights][-2]
    weights[last] = {**weights[last], "gamma": np.ones(3, np.float32)}
    target = _build()
    first_kernel = target.get_layer("conv1_conv").kernel.numpy()
    with pytest.raises(ValueError, match=f"1 with other shapes \\(\\['{last}'\\]\\)"):
        model_lib.assign_by_name(target, weights, "test", skip_layers=())
    np.testing.assert_array_equal(target.get_layer("conv1_conv").kernel.numpy(), first_kernel)


def test_wrong_paths(tmp_path, workdir):
    with pytest.raises(FileNotFoundError, match="training workdir.*or an export.*not exist"):
        warm_start.load_initial_weights(_build(), str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("not a run")
    with pytest.raises(ValueError, match=r"training workdir.*or an export.*\['notes.txt'\]"):
        warm_start.load_initial_weights(_build(), str(tmp_path))
    no_checkpoint = tmp_path / "fresh_run"
    no_checkpoint.mkdir()
    shutil.copy(os.path.join(workdir[0], checkpointing.CONFIG_FILE), no_checkpoint)
    with pytest.raises(ValueError, match="config.json but no checkpoint"):
        warm_start.load_initial_weights(_build(), str(no_checkpoint))

    plain = keras.Sequential([keras.Input((8, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    plain_export = export_lib.export_feature_extractor(plain, str(tmp_path / "plain"))
    with pytest.raises(ValueError, match="does not describe a network"):
        warm_start.load_initial_weights(_build(), plain_export)


def test_config_json_that_does_not_describe_the_checkpoint(workdir, tmp_path):
    # train.run writes config.json before it restores, so a refused resume leaves one behind.
    stale = str(tmp_path / "stale")
    shutil.copytree(workdir[0], stale)
    other = config_lib.from_flat({"backbone": "resnet18", "image_size": SOURCE_SIZE,
                                  "pretrained": "none", "multiscale": False})
    config_lib.save_json(other, os.path.join(stale, checkpointing.CONFIG_FILE))
    with pytest.raises(ValueError, match="does not hold the network that config.json describes"):
        warm_start.load_initial_weights(_build(multiscale=False), stale)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(workdir, tmp_path, caplog):
    path, _ = workdir
    damaged = str(tmp_path / "damaged")
    shutil.copytree(path, damaged)
    checkpoints = os.path.join(damaged, checkpointing.CHECKPOINT_DIR)
    newest = glob.glob(os.path.join(checkpoints, "ckpt-3.data-*"))[0]
    os.truncate(newest, os.path.getsize(newest) - 7)
    expected = model_lib.build_model(backbone="resnet18", image_size=SOURCE_SIZE)
    tf.train.Checkpoint(model=expected).restore(
        os.path.join(checkpoints, "ckpt-2")).expect_partial()
    target = _build()
    with caplog.at_level(logging.WARNING):
        info = warm_start.load_initial_weights(target, damaged)
    assert info["epoch"] == 2 and info["checkpoint"].endswith("ckpt-2")
    assert any("ckpt-3" in r.getMessage() and "ckpt-2" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    _assert_same_weights(expected, target)
    for prefix in checkpointing.checkpoint_candidates(checkpoints):
        os.truncate(prefix + ".index", os.path.getsize(prefix + ".index") // 2)
    with pytest.raises(checkpointing.CheckpointReadError, match="ckpt-3.*ckpt-2"):
        warm_start.load_initial_weights(_build(), damaged)
