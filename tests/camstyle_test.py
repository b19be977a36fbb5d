"""Tests of CamStyle: matching ECN's style copies to their sources, and reading them in training."""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import config as config_lib
from mlc_tf import train
from mlc_tf.config import AugmentConfig
from mlc_tf.data import camstyle, pipeline, registry
from mlc_tf.data.datasets import DatasetError

SIZE = (16, 8)
NO_AUGMENT = AugmentConfig(crop="none", flip=0.0, rotation=0.0, color_jitter=0.0,
                           random_erasing=0.0)
# Training images (sorted, so slot i is the i-th) and their 1-based Market cameras.
TRAIN = (("0001_c1s1_000101_00", 1), ("0001_c3s1_000102_00", 3), ("0002_c2s1_000201_00", 2),
         ("0003_c6s1_000301_00", 6))
MISSING = ("0003_c6s1_000301_00", 2)  # the one copy left out of the tree: slot 3 in camera 2
MARKET = "Market-1501-v15.09.15"


def _grey(slot: int, camera: int) -> int:
    """Grey level of slot's image in 0-based camera's style (its own camera: the original)."""
    return 10 + 10 * (6 * slot + camera)


def _decode(image: np.ndarray) -> tuple[int, int]:
    """(slot, 0-based camera) of a flat image drawn with _grey."""
    code = int(round((float(image.mean()) - 10) / 10))
    return code // 6, code % 6


def _write(path: str, grey: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_jpeg(np.full((*SIZE, 3), grey, np.uint8), quality=100))


def _market_tree(root, copies: bool = True, extra_copies: tuple[str, ...] = ()) -> str:
    """The Market layout with 4 training images, each with copies in the 5 other cameras' style
    (but MISSING) when copies is set, plus one query, one gallery image and `extra_copies`."""
    base = os.path.join(str(root), MARKET)
    for slot, (stem, cam) in enumerate(TRAIN):
        _write(os.path.join(base, "bounding_box_train", f"{stem}.jpg"), _grey(slot, cam - 1))
        for style in range(1, 7):
            if copies and style != cam and (stem, style) != MISSING:
                _write(os.path.join(base, camstyle.CAMSTYLE_FOLDER,
                                    f"{stem}_fake_{cam}to{style}.jpg"), _grey(slot, style - 1))
    _write(os.path.join(base, "query", "0004_c1s1_000401_00.jpg"), 128)
    _write(os.path.join(base, "bounding_box_test", "0004_c2s1_000402_00.jpg"), 128)
    for name in extra_copies:
        _write(os.path.join(base, camstyle.CAMSTYLE_FOLDER, name), 128)
    return base


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """The Market tree read with its CamStyle views."""
    root = tmp_path_factory.mktemp("camstyle")
    _market_tree(root)
    return registry.create("market1501", str(root), camstyle=True)


def test_parse_copy_name_recovers_the_source_and_both_cameras():
    assert camstyle.parse_copy_name("0002_c1s1_000451_03_fake_1to2.jpg") == (
        "0002_c1s1_000451_03.jpg", 0, 1)
    assert camstyle.parse_copy_name("0005_c2_f0046985_fake_2to8.jpg") == (
        "0005_c2_f0046985.jpg", 1, 7)
    for not_a_copy in ("0002_c1s1_000451_03.jpg", "0002_c1_f01_fake_3.jpg",
                       "0002_c1s1_000451_03_fake_1to2.png", "x_fake_1to2.jpg.bak"):
        assert camstyle.parse_copy_name(not_a_copy) is None


def test_views_put_each_copy_at_its_source_slot_and_style_camera(market):
    assert [os.path.basename(s.path) for s in market.train] == [f"{s}.jpg" for s, _ in TRAIN]
    assert len(market.camstyle) == 4 and {len(row) for row in market.camstyle} == {6}
    for slot, (stem, cam) in enumerate(TRAIN):
        for style in range(6):
            if style + 1 == cam or (stem, style + 1) == MISSING:
                expected = market.train[slot].path  # the original stands in
            else:
                expected = os.path.join(market.root, camstyle.CAMSTYLE_FOLDER,
                                        f"{stem}_fake_{cam}to{style + 1}.jpg")
            assert market.camstyle[slot][style] == expected


def test_missing_and_orphan_copies_are_counted_in_warnings(tmp_path, caplog):
    _market_tree(tmp_path, extra_copies=("0009_c1s1_000901_00_fake_1to2.jpg",))
    with caplog.at_level(logging.WARNING):
        data = registry.create("market1501", str(tmp_path), camstyle=True)
    assert "ignored 1 CamStyle copies" in caplog.text
    assert "1 of 20 CamStyle copies are missing" in caplog.text
    assert data.camstyle[3][1] == data.train[3].path


def test_dukemtmc_copies_reach_camera_eight(tmp_path):
    base = os.path.join(str(tmp_path), "DukeMTMC-reID")
    _write(os.path.join(base, "bounding_box_train", "0005_c2_f0046985.jpg"), 50)
    _write(os.path.join(base, camstyle.CAMSTYLE_FOLDER, "0005_c2_f0046985_fake_2to8.jpg"), 60)
    _write(os.path.join(base, "query", "0006_c1_f0000001.jpg"), 50)
    _write(os.path.join(base, "bounding_box_test", "0006_c3_f0000002.jpg"), 50)
    data = registry.create("dukemtmc", str(tmp_path), camstyle=True)
    original = data.train[0].path
    assert data.camstyle == ((original,) * 7 + (
        os.path.join(base, camstyle.CAMSTYLE_FOLDER, "0005_c2_f0046985_fake_2to8.jpg"),),)


def _epoch_views(batches) -> list[tuple[int, tuple[int, int]]]:
    """(index, decoded (slot, camera)) of every image of an epoch's batches."""
    return [(int(index), _decode(image)) for batch in batches
            for index, image in zip(batch["index"].numpy(), batch["image"].numpy())]


def test_train_epochs_read_copies_under_their_source_slot(market):
    paths, camids = [s.path for s in market.train], [s.camid for s in market.train]
    kwargs = dict(image_size=SIZE, batch_size=4, seed=3, augment=NO_AUGMENT)
    drawn = []
    for epoch in range(40):
        batches = pipeline.make_train_dataset(paths, camids, [100, 101, 102, 103], epoch=epoch,
                                              camstyle=market.camstyle, **kwargs)
        views = _epoch_views(batches)
        assert all(index == 100 + slot for index, (slot, _) in views)
        plain = pipeline.make_train_dataset(paths, camids, [100, 101, 102, 103], epoch=epoch,
                                            **kwargs)
        assert [index for index, _ in views] == [int(i) for b in plain for i in b["index"]]
        drawn += [view for _, view in views]
    counts = collections.Counter(drawn)
    # Every copy in the tree is read, and nothing else (slot 3 never in camera 2's style).
    assert set(counts) == {(slot, style) for slot, (stem, _) in enumerate(TRAIN)
                           for style in range(6) if (stem, style + 1) != MISSING}
    # MMCL's rule: a camera drawn uniformly, the original at its own camera (here 1 in 6, and
    # 2 in 6 for slot 3, whose missing copy falls back to it): 40 of 160 expected.
    originals = sum(counts[(slot, cam - 1)] for slot, (_, cam) in enumerate(TRAIN))
    assert 22 <= originals <= 58
    again = pipeline.make_train_dataset(paths, camids, [100, 101, 102, 103], epoch=39,
                                        camstyle=market.camstyle, **kwargs)
    assert [view for _, view in _epoch_views(again)] == drawn[-4:]


def test_pk_batches_read_copies_with_their_source_label(market):
    paths, camids = [s.path for s in market.train], [s.camid for s in market.train]
    labels = np.array([0, 0, 1, -1])
    views = set()
    for epoch in range(10):
        batches = pipeline.make_pk_dataset(
            paths, camids, [0, 1, 2, 3], labels, num_instances=2, batch_size=4,
            image_size=SIZE, seed=5, epoch=epoch, augment=NO_AUGMENT, camstyle=market.camstyle)
        for batch in batches:
            for index, label, image in zip(batch["index"].numpy(), batch["label"].numpy(),
                                           batch["image"].numpy()):
                slot, style = _decode(image)
                assert (index, label) == (slot, labels[slot])
                views.add((slot, style))
    assert any(style != TRAIN[slot][1] - 1 for slot, style in views)
    assert {slot for slot, _ in views} == {0, 1, 2}  # the outlier (slot 3) is never sampled


def _config(camstyle_on: bool) -> config_lib.Config:
    config = config_lib.Config()
    return dataclasses.replace(
        config, augment=NO_AUGMENT,
        data=dataclasses.replace(config.data, dataset="market1501", camstyle=camstyle_on,
                                 image_size=SIZE, batch_size=4))


@pytest.mark.parametrize("camstyle_on", [True, False])
@pytest.mark.parametrize("labels", [None, np.array([0, 0, 1, 1])])
def test_train_epoch_dataset_reads_copies_only_with_the_option(market, camstyle_on, labels):
    styles = set()
    for epoch in range(5):
        batches = train._epoch_dataset(_config(camstyle_on), market, epoch, labels)
        assert train._epoch_steps(_config(camstyle_on), len(market.train), labels) == 1
        styles |= {view for _, view in _epoch_views(batches)}
    originals = {(slot, cam - 1) for slot, (_, cam) in enumerate(TRAIN)}
    assert bool(styles - originals) == camstyle_on  # a copy is read, or only originals


def test_missing_folder_names_the_path(tmp_path):
    base = _market_tree(tmp_path, copies=False)
    with pytest.raises(DatasetError, match=re.escape(os.path.join(base, camstyle.CAMSTYLE_FOLDER))):
        registry.create("market1501", str(tmp_path), camstyle=True)
    assert registry.create("market1501", str(tmp_path)).camstyle == ()


@pytest.mark.parametrize("name", ["synthetic", "folder", "msmt17"])
def test_datasets_without_the_ecn_layout_are_refused_before_reading(tmp_path, name):
    with pytest.raises(DatasetError, match=f"the {name} dataset has no CamStyle images"):
        registry.create(name, str(tmp_path / "absent"), camstyle=True)
    assert not os.path.exists(tmp_path / "absent")  # nothing read, nothing generated


@pytest.mark.parametrize("name, problem", [
    ("0001_c1s1_000101_00_camstyle_2.jpg", "do not read '<stem>_fake_<c>to<s>.jpg'"),
    ("0001_c1s1_000101_00_fake_2to3.jpg", "does not fit its source"),  # source is c1
    ("0001_c1s1_000101_00_fake_1to7.jpg", "does not fit its source"),  # Market has 6 cameras
    ("0001_c1s1_000101_00_fake_1to1.jpg", "does not fit its source"),  # its own camera
])
def test_wrong_copy_names_are_refused(tmp_path, name, problem):
    _market_tree(tmp_path, extra_copies=(name,))
    with pytest.raises(DatasetError, match=problem):
        registry.create("market1501", str(tmp_path), camstyle=True)


def test_a_folder_without_copies_of_training_images_is_refused(tmp_path):
    base = _market_tree(tmp_path, copies=False)
    os.makedirs(os.path.join(base, camstyle.CAMSTYLE_FOLDER))
    with pytest.raises(DatasetError, match="holds no CamStyle copy of any training image"):
        registry.create("market1501", str(tmp_path), camstyle=True)


@pytest.mark.parametrize("name", ["synthetic", "folder", "msmt17", "market1501", "dukemtmc"])
def test_the_config_refuses_the_option_for_datasets_without_copies(name):
    data = config_lib.DataConfig(dataset=name, camstyle=True)
    if name in camstyle.DATASETS:
        config_lib.Config(data=data)
    else:
        with pytest.raises(ValueError, match=f"the {name} dataset has no CamStyle images"):
            config_lib.Config(data=data)


def test_run_checks_refuse_the_option_without_views(market, tmp_path):
    registry.check_dataset_supports(_config(True), market)
    with pytest.raises(DatasetError, match="read without them"):
        registry.check_dataset_supports(_config(True), dataclasses.replace(market, camstyle=()))
    synthetic = dataclasses.replace(market, name="synthetic", camstyle=())
    with pytest.raises(DatasetError, match="the synthetic dataset has no CamStyle images"):
        registry.check_dataset_supports(_config(True), synthetic)
    registry.check_dataset_supports(_config(False), synthetic)
