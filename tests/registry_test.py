"""Tests of mlc_tf.data.registry: the known names, the unknown-name error, dispatch by name."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf.data import registry
from mlc_tf.data.datasets import DatasetError

_JPEG = tf.io.encode_jpeg(np.full((8, 4, 3), 128, np.uint8)).numpy()
_TINY_SYNTHETIC = dict(num_train_ids=2, num_test_ids=2, images_per_camera=1, num_cameras=2,
                       cameras_per_id=2, height=16, width=8)


def _market_style_tree(root: str, folder: str, query_bytes: bytes = _JPEG) -> None:
    """One image per split under root/folder, in the Market layout that all three readers take."""
    for split, name, data in (("bounding_box_train", "0001_c1s1_000101_00.jpg", _JPEG),
                              ("query", "0002_c1s1_000201_00.jpg", query_bytes),
                              ("bounding_box_test", "0002_c2s1_000301_00.jpg", _JPEG)):
        os.makedirs(os.path.join(root, folder, split), exist_ok=True)
        with open(os.path.join(root, folder, split, name), "wb") as f:
            f.write(data)


def test_names():
    assert registry.names() == ["dukemtmc", "market1501", "msmt17", "synthetic"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="'cuhk03'; known: dukemtmc, market1501, msmt17, synthetic"):
        registry.create("cuhk03", "/nonexistent")


@pytest.mark.parametrize("name, folder", [
    ("market1501", "Market-1501"), ("dukemtmc", "DukeMTMC-reID"), ("msmt17", "MSMT17")])
def test_each_name_reads_its_own_layout_and_passes_the_options(tmp_path, name, folder):
    _market_style_tree(str(tmp_path), folder, query_bytes=b"not a jpeg")
    data = registry.create(name, str(tmp_path))
    assert data.name == name and data.root == os.path.join(str(tmp_path), folder)
    with pytest.raises(DatasetError, match="not a JPEG"):
        registry.create(name, str(tmp_path), verify_images=True)


def test_synthetic_is_generated_with_the_options(tmp_path):
    data = registry.create("synthetic", str(tmp_path), **_TINY_SYNTHETIC)
    assert data.name == "synthetic" and data.root.startswith(str(tmp_path / "synthetic"))
    assert (len(data.train), data.num_cameras) == (4, 2)  # 2 ids x 2 cameras x 1 image
