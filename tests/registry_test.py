"""Tests of mlc_tf.data.registry: the known names, the unknown-name error, dispatch by name."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import config as config_lib
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
    assert registry.names() == ["dukemtmc", "folder", "market1501", "msmt17", "synthetic"]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError,
                       match="'cuhk03'; known: dukemtmc, folder, market1501, msmt17, synthetic"):
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


def _folder_dataset(root, with_eval: bool, cameras: bool):
    """A folder dataset of two training crops in camera sub-folders, optionally with eval."""
    names = ["cam1/a.jpg", "cam2/b.jpg"]
    if with_eval:
        names += ["query/0001_c1_q.jpg", "gallery/0001_c2_g.jpg"]
    for name in names:
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as f:
            f.write(_JPEG)
    return registry.create("folder", str(root), **({"camera_from": "subfolder"} if cameras
                                                    else {}))


def _config(camera_normalize=False, camera_aware_sampler=False, eval_every=0,
            mplp_camera_normalize=False):
    config = config_lib.Config()
    return dataclasses.replace(
        config, cluster=dataclasses.replace(config.cluster, camera_normalize=camera_normalize),
        loss=dataclasses.replace(config.loss, mplp_camera_normalize=mplp_camera_normalize),
        data=dataclasses.replace(config.data, camera_aware_sampler=camera_aware_sampler),
        train=dataclasses.replace(config.train, eval_every=eval_every))


def test_folder_reads_through_the_registry_with_its_options(tmp_path):
    data = _folder_dataset(tmp_path, with_eval=False, cameras=True)
    assert data.name == "folder" and [s.camid for s in data.train] == [0, 1]


@pytest.mark.parametrize("option", ["camera_normalize", "camera_aware_sampler",
                                    "mplp_camera_normalize"])
def test_camera_options_need_cameras(tmp_path, option):
    data = _folder_dataset(tmp_path, with_eval=False, cameras=False)
    with pytest.raises(DatasetError, match=f"--{option} needs the camera .*camera_regex=REGEX"
                                           f".*camera_from=subfolder.*--{option}=false"):
        registry.check_dataset_supports(_config(**{option: True}), data)
    registry.check_dataset_supports(_config(), data)
    with_cameras = _folder_dataset(tmp_path / "cams", with_eval=False, cameras=True)
    registry.check_dataset_supports(_config(**{option: True}), with_cameras)


def test_evaluation_needs_query_and_gallery(tmp_path):
    data = _folder_dataset(tmp_path, with_eval=False, cameras=False)
    with pytest.raises(DatasetError, match="--eval_every=5 needs query and gallery images.*"
                                           "query/ and gallery/ sub-folders.*--eval_every=0"):
        registry.check_dataset_supports(_config(eval_every=5), data)
    registry.check_dataset_supports(_config(eval_every=0), data)
    evaluable = _folder_dataset(tmp_path / "eval", with_eval=True, cameras=False)
    registry.check_dataset_supports(_config(eval_every=5), evaluable)
