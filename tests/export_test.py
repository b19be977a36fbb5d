"""Tests for mlc_tf.export: SavedModel round trip, metadata, errors, safe replacement."""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import export as export_lib
from mlc_tf import model as model_lib

RNG = np.random.default_rng(0)
IMAGE_SIZE = (64, 32)


def _uint8_images(batch, height, width):
    return RNG.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)


def _expected_features(model, images, feature):
    """Independent reference: cast, resize, run the Keras model, L2-normalise in numpy."""
    resized = tf.image.resize(tf.cast(images, tf.float32), IMAGE_SIZE, method="bilinear")
    features = np.asarray(model(resized, training=False)[feature], np.float64)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def trained_like_model():
    """A small MLC model whose BN neck is not the identity, so 'pooled' != 'neck'."""
    model = model_lib.build_model(backbone="resnet18", image_size=IMAGE_SIZE)
    dim = model_lib.feature_dim("resnet18", True)
    model.get_layer("bn_neck").set_weights(
        [RNG.uniform(0.5, 2.0, dim).astype(np.float32) for _ in range(4)])
    return model


@pytest.fixture(scope="module")
def pooled_export(trained_like_model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("exports") / "pooled")
    export_lib.export_feature_extractor(trained_like_model, path, image_size=IMAGE_SIZE,
                                        metadata={"test_set_selected": False, "epoch": 3})
    return path


def test_round_trip_pooled(trained_like_model, pooled_export):
    extractor = export_lib.load_feature_extractor(pooled_export)
    for height, width in ((70, 40), IMAGE_SIZE, (200, 90)):
        images = _uint8_images(3, height, width)
        expected = _expected_features(trained_like_model, images, "pooled")
        np.testing.assert_allclose(extractor(images), expected, atol=1e-5)

    # What bin/evaluate uses: the raw SavedModel, its 'serve' function and serving_default.
    loaded = tf.saved_model.load(pooled_export)
    images = _uint8_images(2, 70, 40)
    expected = _expected_features(trained_like_model, images, "pooled")
    np.testing.assert_allclose(loaded.serve(images)["features"], expected, atol=1e-5)
    signature = loaded.signatures["serving_default"]
    assert signature.structured_input_signature[1]["images"].dtype == tf.uint8
    np.testing.assert_allclose(signature(images=tf.constant(images))["features"], expected,
                               atol=1e-5)


def test_round_trip_neck(trained_like_model, tmp_path):
    path = export_lib.export_feature_extractor(trained_like_model, str(tmp_path / "neck"),
                                               feature="neck")
    extractor = export_lib.load_feature_extractor(path)
    images = _uint8_images(3, 70, 40)
    expected = _expected_features(trained_like_model, images, "neck")
    np.testing.assert_allclose(extractor(images), expected, atol=1e-5)
    pooled = _expected_features(trained_like_model, images, "pooled")
    assert np.abs(expected - pooled).max() > 1e-2  # the feature choice matters
    assert extractor.metadata["feature"] == "neck"


def test_metadata_file_and_endpoint(pooled_export):
    with open(os.path.join(pooled_export, export_lib.METADATA_FILE)) as handle:
        metadata = json.load(handle)
    assert metadata["image_size"] == list(IMAGE_SIZE)
    assert metadata["feature"] == "pooled" and metadata["feature_dim"] == 1536
    assert metadata["backbone"] == "resnet18" and metadata["preprocessing"] == "torch"
    assert metadata["multiscale"] is True and metadata["pooling"] == "avg"
    assert metadata["test_set_selected"] is False and metadata["epoch"] == 3
    extractor = export_lib.load_feature_extractor(pooled_export)
    assert extractor.metadata == metadata
    assert json.loads(extractor.loaded.metadata().numpy()) == metadata


def test_plain_keras_model_with_single_output(tmp_path):
    model = keras.Sequential([keras.Input((8, 4, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(5)])
    path = export_lib.export_feature_extractor(model, str(tmp_path / "plain"))
    extractor = export_lib.load_feature_extractor(path)
    images = _uint8_images(2, 16, 8)
    resized = tf.image.resize(tf.cast(images, tf.float32), (8, 4))
    expected = np.array(model(resized))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(extractor(images), expected, atol=1e-5)
    assert "backbone" not in extractor.metadata and extractor.metadata["feature_dim"] == 5


def test_bad_arguments(trained_like_model, tmp_path):
    path = str(tmp_path / "export")
    with pytest.raises(ValueError, match="feature"):
        export_lib.export_feature_extractor(trained_like_model, path, feature="logits")
    with pytest.raises(ValueError, match="differs"):
        export_lib.export_feature_extractor(trained_like_model, path, image_size=(128, 64))
    with pytest.raises(ValueError, match="JSON"):
        export_lib.export_feature_extractor(trained_like_model, path, metadata={"x": object()})
    with pytest.raises(ValueError, match="contradict"):
        export_lib.export_feature_extractor(trained_like_model, path,
                                            metadata={"backbone": "resnet50"})
    other = tmp_path / "not_an_export"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not a SavedModel"):
        export_lib.export_feature_extractor(trained_like_model, str(other))
    assert (other / "notes.txt").read_text() == "keep me"
    assert sorted(os.listdir(tmp_path)) == ["not_an_export"]


def test_load_errors(pooled_export, tmp_path):
    with pytest.raises(FileNotFoundError, match="SavedModel"):
        export_lib.load_feature_extractor(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="SavedModel"):
        export_lib.load_feature_extractor(str(tmp_path))

    module = tf.Module()
    module.double = tf.function(lambda x: {"y": 2 * x},
                                input_signature=[tf.TensorSpec((None,), tf.float32)])
    other = str(tmp_path / "other_saved_model")
    tf.saved_model.save(module, other, signatures=module.double)
    with pytest.raises(ValueError, match="'images'"):
        export_lib.load_feature_extractor(other)

    extractor = export_lib.load_feature_extractor(pooled_export)
    with pytest.raises(TypeError, match="uint8"):
        extractor(np.zeros((1, 64, 32, 3), np.float32))


def test_failed_reexport_keeps_previous_one(trained_like_model, pooled_export, tmp_path,
                                            monkeypatch):
    path = str(tmp_path / "export")
    shutil.copytree(pooled_export, path)
    images = _uint8_images(2, 64, 32)
    before = export_lib.load_feature_extractor(path)(images)

    def broken_save(obj, export_dir, **kwargs):
        with open(os.path.join(export_dir, "saved_model.pb"), "wb") as handle:
            handle.write(b"half written")
        raise OSError("disk full")

    with monkeypatch.context() as patch:
        patch.setattr(tf.saved_model, "save", broken_save)
        with pytest.raises(OSError, match="disk full"):
            export_lib.export_feature_extractor(trained_like_model, path, metadata={"run": 2})
    assert os.listdir(tmp_path) == ["export"]  # no staging directory left behind
    survivor = export_lib.load_feature_extractor(path)
    assert survivor.metadata["epoch"] == 3
    np.testing.assert_array_equal(survivor(images), before)

    # A successful re-export replaces it completely.
    other = model_lib.build_model(backbone="resnet18", image_size=IMAGE_SIZE, multiscale=False)
    export_lib.export_feature_extractor(other, path, metadata={"run": 3})
    assert os.listdir(tmp_path) == ["export"]
    replaced = export_lib.load_feature_extractor(path)
    assert replaced.metadata["run"] == 3 and replaced(images).shape == (2, 512)
