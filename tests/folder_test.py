"""Tests of mlc_tf.data.folder: unlabelled crops in a folder tree, cameras, query/gallery."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf.data import folder
from mlc_tf.data.datasets import DatasetError

_JPEG = tf.io.encode_jpeg(np.full((8, 4, 3), 128, np.uint8)).numpy()
_PNG = tf.io.encode_png(np.full((5, 7, 3), 60, np.uint8)).numpy()


def _write(root, relative: str) -> None:
    """A tiny image (PNG for *.png, else JPEG) at root/relative."""
    path = os.path.join(str(root), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(_PNG if relative.lower().endswith(".png") else _JPEG)


def _relatives(samples, root) -> list[str]:
    return [os.path.relpath(s.path, str(root)) for s in samples]


def test_training_images_are_found_recursively_sorted_and_unlabelled(tmp_path):
    for relative in ["b/2.jpg", "a/10.PNG", "top.jpeg", "a/deep/er/1.jpg", "x/query/5.jpg",
                     "query/0001_c1_a.jpg", "gallery/0001_c2_b.jpg"]:
        _write(tmp_path, relative)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "a" / "Thumbs.db").write_bytes(b"\0")
    data = folder.read_folder(str(tmp_path))
    # Sorted by relative path; query/ and gallery/ at the top are not training data.
    assert _relatives(data.train, tmp_path) == [
        "a/10.PNG", "a/deep/er/1.jpg", "b/2.jpg", "top.jpeg", "x/query/5.jpg"]
    assert {(s.pid, s.camid) for s in data.train} == {(-1, -1)}
    assert (data.name, data.root, data.num_cameras) == ("folder", str(tmp_path), 0)


def test_camera_regex_maps_names_to_ids_in_numeric_order(tmp_path):
    for relative in ["p1_c10_a.jpg", "sub/p2_c2_b.png", "p3_c3_c.jpg", "p4_c2_d.jpg"]:
        _write(tmp_path, relative)
    data = folder.read_folder(str(tmp_path), camera_regex=r"_c(\d+)_")
    assert [(os.path.basename(s.path), s.camid) for s in data.train] == [
        ("p1_c10_a.jpg", 2), ("p3_c3_c.jpg", 1), ("p4_c2_d.jpg", 0), ("p2_c2_b.png", 0)]
    assert data.num_cameras == 3


def test_camera_regex_with_names_sorts_them_as_text(tmp_path):
    for relative in ["gate-1.jpg", "door-2.jpg", "gate-3.jpg"]:
        _write(tmp_path, relative)
    data = folder.read_folder(str(tmp_path), camera_regex=r"^([a-z]+)-")
    assert [s.camid for s in data.train] == [0, 1, 1]  # door-2, gate-1, gate-3


def test_camera_from_subfolder(tmp_path):
    for relative in ["west/2024/a.jpg", "east/b.png", "west/c.jpg", "east/day2/d.jpg"]:
        _write(tmp_path, relative)
    data = folder.read_folder(str(tmp_path), camera_from="subfolder")
    assert [(relative, s.camid) for relative, s in zip(_relatives(data.train, tmp_path),
                                                        data.train)] == [
        ("east/b.png", 0), ("east/day2/d.jpg", 0), ("west/2024/a.jpg", 1), ("west/c.jpg", 1)]
    assert data.num_cameras == 2


def test_query_and_gallery_parse_market_names_and_drop_junk(tmp_path):
    _write(tmp_path, "train/x.jpg")
    for relative in ["query/0007_c2s1_01.png", "query/0003_c1_x.jpg",
                     "gallery/more/0003_c4_y.jpg", "gallery/-1_c1_junk.jpg",
                     "gallery/0000_c3_distractor.jpg"]:
        _write(tmp_path, relative)
    data = folder.read_folder(str(tmp_path))
    assert [(os.path.basename(s.path), s.pid, s.camid) for s in data.query] == [
        ("0003_c1_x.jpg", 3, 0), ("0007_c2s1_01.png", 7, 1)]
    assert [(os.path.basename(s.path), s.pid, s.camid) for s in data.gallery] == [
        ("0000_c3_distractor.jpg", 0, 2), ("0003_c4_y.jpg", 3, 3)]
    assert _relatives(data.train, tmp_path) == ["train/x.jpg"]


def test_without_query_and_gallery_the_evaluation_split_is_empty(tmp_path):
    _write(tmp_path, "a.jpg")
    data = folder.read_folder(str(tmp_path))
    assert data.query == () and data.gallery == ()


@pytest.mark.parametrize("files, options, message", [
    ([], {}, "no training images"),
    (["notes.jpg.txt", "query/0001_c1.jpg", "gallery/0001_c2.jpg"], {}, "no training images"),
    (["a.jpg"], {"camera_regex": "c(\\d+"}, "does not compile"),
    (["a.jpg"], {"camera_regex": "c\\d+"}, "exactly one group"),
    (["cams/p_c1.jpg", "cams/p_x2.jpg"], {"camera_regex": "_c(\\d)"},
     "does not match the file name of 'cams/p_x2.jpg'"),
    (["a/b.jpg"], {"camera_regex": "(a)", "camera_from": "subfolder"}, "not both"),
    (["a/b.jpg"], {"camera_from": "parent"}, "must be 'subfolder'"),
    (["cam1/a.jpg", "loose.jpg"], {"camera_from": "subfolder"}, "'loose.jpg' lies directly"),
    (["a.jpg", "query/0001_c1.jpg"], {}, "query/ exists .* but gallery/ does not"),
    (["a.jpg", "query/0001_c1.jpg", "gallery/frame9.jpg"], {}, "do not parse .*frame9.jpg"),
    (["a.jpg", "query/0001_c0.jpg", "gallery/0001_c1.jpg"], {}, "do not parse .*0001_c0.jpg"),
    (["a.jpg", "query/0001_c1.jpg", "gallery/notes.txt"], {}, "gallery' holds no JPEG"),
    (["a.jpg", "query/-1_c1.jpg", "gallery/0001_c1.jpg"], {}, "only junk"),
])
def test_errors_name_the_problem(tmp_path, files, options, message):
    for relative in files:
        _write(tmp_path, relative)
    os.makedirs(tmp_path, exist_ok=True)
    with pytest.raises(DatasetError, match=message):
        folder.read_folder(str(tmp_path), **options)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        folder.read_folder(str(tmp_path / "absent"))
