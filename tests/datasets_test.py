"""Tests of the Market-1501, DukeMTMC-reID and MSMT17 parsers."""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf.data import datasets
from mlc_tf.data.datasets import DatasetError, Sample

_JPEG = tf.io.encode_jpeg(np.full((8, 4, 3), 128, np.uint8)).numpy()


def _write(path: str, data: bytes = _JPEG) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _snapshot(root: str) -> dict[str, tuple[int, int]]:
    """Every file under root with its size and mtime, to prove a reader changed nothing."""
    out = {}
    for folder, _, files in os.walk(root):
        for name in files:
            stat = os.stat(os.path.join(folder, name))
            out[os.path.join(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return out


def _market_tree(root: str) -> str:
    base = os.path.join(root, "Market-1501-v15.09.15")
    for name in ["0002_c2s1_000301_00.jpg", "0001_c1s1_000101_00.jpg", "0001_c6s2_000201_01.jpg",
                 "Thumbs.db"]:
        _write(os.path.join(base, "bounding_box_train", name))
    for name in ["0003_c1s1_000401_00.jpg", "0004_c3s1_000501_00.jpg"]:
        _write(os.path.join(base, "query", name))
    for name in ["0003_c2s1_000601_00.jpg", "0000_c1s1_000701_00.jpg", "-1_c4s1_000801_00.jpg",
                 "0004_c5s3_000901_02.jpg", "-1_c1s1_000111_00.jpg", "Thumbs.db"]:
        _write(os.path.join(base, "bounding_box_test", name))
    return base


def _triples(samples) -> list[tuple[str, int, int]]:
    return [(os.path.basename(s.path), s.pid, s.camid) for s in samples]


def test_market_counts_pids_camids_and_order(tmp_path):
    base = _market_tree(str(tmp_path))
    before = _snapshot(str(tmp_path))
    data = datasets.read_market1501(str(tmp_path))
    assert data.name == "market1501" and data.root == base and data.num_cameras == 6
    assert data.skipped == 0
    # Sorted by path; Thumbs.db ignored; camid 0-based.
    assert _triples(data.train) == [("0001_c1s1_000101_00.jpg", 1, 0),
                                    ("0001_c6s2_000201_01.jpg", 1, 5),
                                    ("0002_c2s1_000301_00.jpg", 2, 1)]
    assert _triples(data.query) == [("0003_c1s1_000401_00.jpg", 3, 0),
                                    ("0004_c3s1_000501_00.jpg", 4, 2)]
    # Junk (-1) dropped, distractor (0) kept.
    assert _triples(data.gallery) == [("0000_c1s1_000701_00.jpg", 0, 0),
                                      ("0003_c2s1_000601_00.jpg", 3, 1),
                                      ("0004_c5s3_000901_02.jpg", 4, 4)]
    assert isinstance(data.train[0], Sample)
    assert os.path.isabs(data.train[0].path) or data.train[0].path.startswith(str(tmp_path))
    assert _snapshot(str(tmp_path)) == before


@pytest.mark.parametrize("folder", ["Market-1501", "market1501", None])
def test_market_alternative_roots(tmp_path, folder):
    base = _market_tree(str(tmp_path))
    if folder is None:
        data_dir = base  # data_dir is the dataset folder itself
    else:
        os.rename(base, os.path.join(str(tmp_path), folder))
        data_dir = str(tmp_path)
    data = datasets.read_market1501(data_dir)
    assert len(data.train) == 3 and len(data.query) == 2 and len(data.gallery) == 3


def test_duke_layout(tmp_path):
    base = os.path.join(str(tmp_path), "DukeMTMC-reID")
    for name in ["0005_c2_f0046182.jpg", "0001_c8_f0000001.jpg"]:
        _write(os.path.join(base, "bounding_box_train", name))
    _write(os.path.join(base, "query", "0007_c1_f0000100.jpg"))
    _write(os.path.join(base, "bounding_box_test", "0007_c3_f0000200.jpg"))
    data = datasets.read_dukemtmc(str(tmp_path))
    assert data.num_cameras == 8
    assert _triples(data.train) == [("0001_c8_f0000001.jpg", 1, 7), ("0005_c2_f0046182.jpg", 5, 1)]
    assert _triples(data.gallery) == [("0007_c3_f0000200.jpg", 7, 2)]


def test_duke_camera_out_of_range(tmp_path):
    base = os.path.join(str(tmp_path), "DukeMTMC-reID")
    _write(os.path.join(base, "bounding_box_train", "0005_c9_f0046182.jpg"))
    _write(os.path.join(base, "query", "0007_c1_f0000100.jpg"))
    _write(os.path.join(base, "bounding_box_test", "0007_c3_f0000200.jpg"))
    with pytest.raises(DatasetError, match="c9.*out of range"):
        datasets.read_dukemtmc(str(tmp_path))


def _msmt_tree(root: str, version: str) -> str:
    base = os.path.join(root, f"MSMT17_{version}")
    train, test = ("train", "test") if version == "V1" else ("mask_train_v2", "mask_test_v2")
    lists = {
        "list_train.txt": (train, ["0001/0001_010_03_0303morning_0015_0.jpg 1",
                                   "0000/0000_000_01_0303morning_0015_0.jpg 0"]),
        # The pid comes from the list line, not the file name.
        "list_val.txt": (train, ["0002/0002_005_15_0303noon_0100_1.jpg 7"]),
        "list_query.txt": (test, ["0000/0000_001_07_0303afternoon_0001_0.jpg 0"]),
        "list_gallery.txt": (test, ["0000/0000_002_02_0303afternoon_0002_0.jpg 0",
                                    "0001/0001_003_11_0304morning_0003_0.jpg 1", ""]),
    }
    for list_name, (folder, lines) in lists.items():
        for line in lines:
            if line:
                _write(os.path.join(base, folder, line.split()[0]))
        with open(os.path.join(base, list_name), "w") as f:
            f.write("\n".join(lines) + "\n")
    # An image no list names: list files, not globbing, decide membership.
    _write(os.path.join(base, train, "0009", "0009_000_04_0303morning_0001_0.jpg"))
    return base


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_list_versions(tmp_path, version):
    base = _msmt_tree(str(tmp_path), version)
    before = _snapshot(str(tmp_path))
    data = datasets.read_msmt17(str(tmp_path))
    assert data.root == base and data.num_cameras == 15
    # Train + val combined, sorted by path; camera = third field of the name minus 1.
    assert _triples(data.train) == [("0000_000_01_0303morning_0015_0.jpg", 0, 0),
                                    ("0001_010_03_0303morning_0015_0.jpg", 1, 2),
                                    ("0002_005_15_0303noon_0100_1.jpg", 7, 14)]
    assert _triples(data.query) == [("0000_001_07_0303afternoon_0001_0.jpg", 0, 6)]
    assert _triples(data.gallery) == [("0000_002_02_0303afternoon_0002_0.jpg", 0, 1),
                                      ("0001_003_11_0304morning_0003_0.jpg", 1, 10)]
    image_dir = "train" if version == "V1" else "mask_train_v2"
    assert all(f"{os.sep}{image_dir}{os.sep}" in s.path for s in data.train)
    assert _snapshot(str(tmp_path)) == before


def test_msmt17_repack_layout(tmp_path):
    base = os.path.join(str(tmp_path), "MSMT17")
    _write(os.path.join(base, "bounding_box_train", "0001_c12_0303morning_0015_0.jpg"))
    _write(os.path.join(base, "query", "0002_c3_0303morning_0016_0.jpg"))
    _write(os.path.join(base, "bounding_box_test", "0002_c15_0303morning_0017_0.jpg"))
    data = datasets.read_msmt17(str(tmp_path))
    assert _triples(data.train) == [("0001_c12_0303morning_0015_0.jpg", 1, 11)]
    assert _triples(data.gallery) == [("0002_c15_0303morning_0017_0.jpg", 2, 14)]


def test_msmt17_data_dir_is_dataset_folder_and_v2_preferred(tmp_path):
    v1 = _msmt_tree(str(tmp_path), "V1")
    data = datasets.read_msmt17(v1)
    assert data.root == v1 and len(data.train) == 3
    v2 = _msmt_tree(str(tmp_path), "V2")
    data = datasets.read_msmt17(str(tmp_path))
    assert data.root == v2 and all("mask_train_v2" in s.path for s in data.train)


def test_msmt17_camera_out_of_range(tmp_path):
    base = _msmt_tree(str(tmp_path), "V1")
    name = "0002/0002_005_16_0303noon_0100_1.jpg"
    _write(os.path.join(base, "train", name))
    with open(os.path.join(base, "list_val.txt"), "w") as f:
        f.write(f"{name} 2\n")
    with pytest.raises(DatasetError, match=r"camera 16 of .*line 1 of .*list_val.txt.*1\.\.15"):
        datasets.read_msmt17(str(tmp_path))


def test_msmt17_missing_listed_image(tmp_path):
    base = _msmt_tree(str(tmp_path), "V1")
    os.remove(os.path.join(base, "test", "0000", "0000_001_07_0303afternoon_0001_0.jpg"))
    with pytest.raises(DatasetError, match=r"(?s)missing.*0000_001_07.*MSMT17_V1/"):
        datasets.read_msmt17(str(tmp_path))


def test_msmt17_missing_list_file_and_bad_line(tmp_path):
    base = _msmt_tree(str(tmp_path), "V2")
    with open(os.path.join(base, "list_val.txt"), "w") as f:
        f.write("0002/0002_005_15.jpg\n")
    with pytest.raises(DatasetError, match=r"line 1 of .*list_val.txt"):
        datasets.read_msmt17(str(tmp_path))
    os.remove(os.path.join(base, "list_val.txt"))
    with pytest.raises(DatasetError, match=r"missing list file .*list_val.txt.*Expected layout"):
        datasets.read_msmt17(str(tmp_path))


def test_msmt17_empty_list_and_wrong_layout(tmp_path):
    base = _msmt_tree(str(tmp_path), "V1")
    open(os.path.join(base, "list_query.txt"), "w").close()
    with pytest.raises(DatasetError, match=r"query split is empty"):
        datasets.read_msmt17(str(tmp_path))
    other = tmp_path / "other"
    (other / "MSMT17_V1" / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"no MSMT17 layout found.*mask_train_v2"):
        datasets.read_msmt17(str(other))


def test_missing_root(tmp_path):
    for read in (datasets.read_market1501, datasets.read_dukemtmc, datasets.read_msmt17):
        with pytest.raises(DatasetError, match=r"does not exist.*Expected layout"):
            read(str(tmp_path / "nowhere"))


def test_no_dataset_folder(tmp_path):
    with pytest.raises(DatasetError, match=r"no dataset folder found.*Market-1501-v15.09.15.*"
                                           r"bounding_box_train"):
        datasets.read_market1501(str(tmp_path))


def test_missing_split_folder(tmp_path):
    base = _market_tree(str(tmp_path))
    os.rename(os.path.join(base, "query"), os.path.join(base, "queries"))
    with pytest.raises(DatasetError,
                       match=r"(?s)missing folder .*query.*query split.*bounding_box_test"):
        datasets.read_market1501(str(tmp_path))


def test_empty_split(tmp_path):
    base = _market_tree(str(tmp_path))
    for name in os.listdir(os.path.join(base, "query")):
        os.remove(os.path.join(base, "query", name))
    with pytest.raises(DatasetError, match=r"query split is empty.*no \*\.jpg"):
        datasets.read_market1501(str(tmp_path))


def test_only_junk_is_empty(tmp_path):
    base = _market_tree(str(tmp_path))
    folder = os.path.join(base, "bounding_box_test")
    for name in os.listdir(folder):
        if not name.startswith("-1"):
            os.remove(os.path.join(folder, name))
    with pytest.raises(DatasetError, match=r"gallery split is empty.*only junk"):
        datasets.read_market1501(str(tmp_path))


def test_unparsable_names(tmp_path):
    base = _market_tree(str(tmp_path))
    _write(os.path.join(base, "bounding_box_train", "IMG_1234.jpg"))
    with pytest.raises(DatasetError, match=r"do not parse.*IMG_1234.jpg.*Expected layout"):
        datasets.read_market1501(str(tmp_path))


def test_corrupt_image_raises_only_when_verifying(tmp_path):
    base = _market_tree(str(tmp_path))
    bad = os.path.join(base, "query", "0003_c4s1_000402_00.jpg")
    _write(bad, b"not a jpeg at all")
    assert len(datasets.read_market1501(str(tmp_path)).query) == 3  # not checked by default
    with pytest.raises(DatasetError, match=r"corrupt image .*0003_c4s1_000402_00.jpg.*not a JPEG"):
        datasets.read_market1501(str(tmp_path), verify_images=True)
    _write(bad, b"")
    with pytest.raises(DatasetError, match=r"0003_c4s1_000402_00.jpg.*empty file"):
        datasets.read_market1501(str(tmp_path), verify_images=True)
    _write(bad, _JPEG[:-20])  # image data and end-of-image marker cut off
    with pytest.raises(DatasetError, match=r"0003_c4s1_000402_00.jpg.*truncated"):
        datasets.read_market1501(str(tmp_path), verify_images=True)


def _jpeg_variants() -> dict[str, tuple[bytes, str | None]]:
    """JPEG byte strings and the problem the check should name (None = valid)."""
    pixels = np.random.default_rng(0).integers(0, 256, (16, 8, 3), dtype=np.uint8)
    plain = tf.io.encode_jpeg(pixels).numpy()
    sof = plain.index(b"\xff\xc0")
    # An EXIF-style APP1 segment and fill bytes before the next marker: the walk must skip both.
    app1 = b"\xff\xe1" + (2 + 300).to_bytes(2, "big") + bytes(range(256)) + bytes(44)
    zero_height = plain[:sof + 5] + b"\x00\x00" + plain[sof + 7:]
    no_frame = plain[:sof] + b"\xff\xfe\x00\x04ab" + plain[plain.index(b"\xff\xda"):]
    return {
        "baseline": (plain, None),
        "progressive": (tf.io.encode_jpeg(pixels, progressive=True).numpy(), None),
        "app1_and_fill": (plain[:2] + app1 + b"\xff\xff" + plain[2:], None),
        "zero_height": (zero_height, "corrupt JPEG header (image size 0x8)"),
        "no_frame_header": (no_frame, "corrupt JPEG header (no frame header"),
        "png": (tf.io.encode_png(pixels).numpy(), "not a JPEG"),
        "header_only": (plain[:sof + 20], "truncated JPEG"),
    }


@pytest.mark.parametrize("variant", sorted(_jpeg_variants()))
def test_jpeg_check_agrees_with_decoder(tmp_path, variant):
    data, problem = _jpeg_variants()[variant]
    base = _market_tree(str(tmp_path))
    path = os.path.join(base, "query", "0003_c4s1_000402_00.jpg")
    _write(path, data)
    try:
        tf.io.decode_jpeg(data)
        decodes = True
    except tf.errors.InvalidArgumentError:
        decodes = False
    # The independent oracle is TensorFlow's full decoder; it also reads other formats, which
    # the check rejects on purpose: every layout is defined as JPEG files.
    assert decodes == (problem is None or variant == "png")
    if problem is None:
        assert len(datasets.read_market1501(str(tmp_path), verify_images=True).query) == 3
    else:
        with pytest.raises(DatasetError) as error:
            datasets.read_market1501(str(tmp_path), verify_images=True)
        assert "0003_c4s1_000402_00.jpg" in str(error.value)
        assert problem in str(error.value)


def test_skip_corrupt_warns_counts_and_leaves_files(tmp_path, caplog):
    base = _market_tree(str(tmp_path))
    _write(os.path.join(base, "bounding_box_train", "0002_c3s1_000302_00.jpg"), b"")
    _write(os.path.join(base, "bounding_box_test", "0000_c2s1_000702_00.jpg"), b"\xff\xd8junk")
    before = _snapshot(str(tmp_path))
    with caplog.at_level(logging.WARNING):
        data = datasets.read_market1501(str(tmp_path), skip_corrupt=True)
    assert data.skipped == 2
    assert len(data.train) == 3 and len(data.gallery) == 3
    assert "0002_c3s1_000302_00.jpg" in caplog.text and "skipped 2" in caplog.text
    assert _snapshot(str(tmp_path)) == before


def test_valid_images_pass_verification(tmp_path):
    _market_tree(str(tmp_path))
    data = datasets.read_market1501(str(tmp_path), verify_images=True)
    assert data.skipped == 0 and len(data.train) == 3
