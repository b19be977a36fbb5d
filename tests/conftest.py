"""Shared pytest setup: quiet TensorFlow logging before any test imports it; a tiny export;
scripts run in a fresh CPU-only interpreter."""

import json
import os
import subprocess
import sys

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TINY_IMAGE_SIZE = (32, 16)
# 6 test identities in 2 cameras each: 6 queries and their gallery, plus distractors.
TINY_SET = dict(num_train_ids=1, num_test_ids=6, images_per_camera=2, num_cameras=3,
                cameras_per_id=2, height=32, width=16)


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    """(root, data_dir, dataset, network, export path): an untrained resnet18 at 32x16."""
    import keras

    from mlc_tf import export, model as model_lib
    from mlc_tf.data import registry

    root = tmp_path_factory.mktemp("tiny_export")
    data_dir = str(root / "data")
    dataset = registry.create("synthetic", data_dir, **TINY_SET)
    keras.utils.set_random_seed(0)
    network = model_lib.build_model(backbone="resnet18", image_size=TINY_IMAGE_SIZE,
                                    pretrained="none")
    path = export.export_feature_extractor(network, str(root / "export"),
                                           image_size=TINY_IMAGE_SIZE, feature="pooled")
    return root, data_dir, dataset, network, path


@pytest.fixture
def run_json_script():
    """Runs a Python script in a fresh CPU-only interpreter; returns its last stdout line as JSON.

    The script must exit 0 (else the test fails with the end of its stderr).
    """
    def run(script: str, timeout: float) -> dict:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
        completed = subprocess.run([sys.executable, "-c", script], capture_output=True,
                                   text=True, env=env, timeout=timeout, check=False)
        assert completed.returncode == 0, completed.stderr[-3000:]
        return json.loads(completed.stdout.strip().splitlines()[-1])
    return run
