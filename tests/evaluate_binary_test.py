"""bin/evaluate round trip: export a tiny Keras model, score it on a tiny synthetic set."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import evaluation, export, features, ranklist
from mlc_tf.clustering import rerank
from mlc_tf.data import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO, "bin", "evaluate")
IMAGE_SIZE = (32, 16)
# 6 test identities in 2 cameras each: 6 queries, 18 gallery images plus distractors.
TINY = dict(num_train_ids=1, num_test_ids=6, images_per_camera=2, num_cameras=3,
            cameras_per_id=2, height=32, width=16)
TINY_FLAG = "--dataset_options=" + ",".join(f"{k}={v}" for k, v in TINY.items())


def _run_evaluate(*flags):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, BINARY, *flags], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)


def _tiny_model() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input((*IMAGE_SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, activation="relu")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(work folder, data_dir, dataset, export path, query features, gallery features)."""
    root = tmp_path_factory.mktemp("evaluate")
    data_dir = str(root / "data")
    dataset = registry.create("synthetic", data_dir, **TINY)
    path = export.export_feature_extractor(_tiny_model(), str(root / "export"))
    extractor = export.load_feature_extractor(path)
    query, gallery = (features.extract_features(extractor, [s.path for s in samples],
                                                image_size=IMAGE_SIZE, batch_size=5)
                      for samples in (dataset.query, dataset.gallery))
    return root, data_dir, dataset, path, query, gallery


def _labels(dataset):
    return dict(q_pids=[s.pid for s in dataset.query], g_pids=[s.pid for s in dataset.gallery],
                q_camids=[s.camid for s in dataset.query],
                g_camids=[s.camid for s in dataset.gallery])


def _check_metrics(metrics, expected):
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["num_valid_queries"] == expected["num_valid_queries"]
    assert metrics["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    assert metrics["mINP"] == pytest.approx(expected["mINP"], abs=1e-6)
    np.testing.assert_allclose(metrics["cmc"], expected["cmc"], atol=1e-6)
    assert metrics["rank5"] == pytest.approx(expected["cmc"][4], abs=1e-6)


def test_features_are_unit_norm(setup):
    _, _, dataset, _, query, gallery = setup
    assert query.shape == (len(dataset.query), 16) and gallery.shape == (len(dataset.gallery), 16)
    np.testing.assert_allclose(np.linalg.norm(gallery, axis=1), 1.0, atol=1e-5)


def test_round_trip_matches_library_and_writes_ranklists(setup):
    root, data_dir, dataset, path, query, gallery = setup
    assert os.access(BINARY, os.X_OK)
    out_json, ranklists = root / "metrics.json", root / "ranklists"
    result = _run_evaluate(f"--saved_model={path}", "--dataset=synthetic",
                           f"--data_dir={data_dir}", TINY_FLAG, f"--output_json={out_json}",
                           f"--ranklist_dir={ranklists}", "--num_ranklists=3", "--batch_size=4")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rank-10" in result.stdout and "mINP" in result.stdout
    metrics = json.loads(out_json.read_text())
    assert metrics["dataset"] == "synthetic" and not metrics["rerank"]
    assert metrics["num_query"] == len(dataset.query) == 6
    _check_metrics(metrics, evaluation.evaluate_features(query, gallery, **_labels(dataset)))

    chosen = ranklist.choose_queries(len(dataset.query), 3)
    pictures = sorted(os.listdir(ranklists))
    assert [name.split("_", 1)[1] for name in pictures] == [
        os.path.basename(dataset.query[i].path).replace(".jpg", ".png") for i in chosen]
    for name in pictures:
        picture = tf.io.decode_png(tf.io.read_file(str(ranklists / name))).numpy()
        # 128 x 64 cells: query and 10 matches, with their text lines.
        assert picture.shape == ranklist.picture_shape(10, (128, 64))


def test_rerank_round_trip(setup):
    root, data_dir, dataset, path, query, gallery = setup
    out_json = root / "rerank.json"
    result = _run_evaluate(f"--saved_model={path}", "--dataset=synthetic",
                           f"--data_dir={data_dir}", TINY_FLAG, f"--output_json={out_json}",
                           "--rerank")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(out_json.read_text())
    assert metrics["rerank"]
    expected = evaluation.evaluate_ranking(rerank.rerank_distances(query, gallery),
                                           **_labels(dataset))
    _check_metrics(metrics, expected)


def test_missing_saved_model_is_a_clear_error(tmp_path):
    result = _run_evaluate(f"--saved_model={tmp_path / 'nothing'}", "--dataset=synthetic",
                           f"--data_dir={tmp_path}")
    assert result.returncode != 0
    assert "bin/evaluate:" in result.stderr
    assert "is not a SavedModel directory" in result.stderr
