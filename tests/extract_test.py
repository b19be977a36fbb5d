"""Tests of bin/extract and feature files: extract_to_file, load_feature_file, and scoring
two feature files as bin/evaluate scores the dataset they came from."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import export, feature_files, features

from conftest import TINY_IMAGE_SIZE as IMAGE_SIZE, TINY_SET as TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(binary: str, *args: str) -> subprocess.CompletedProcess:
    completed = subprocess.run([sys.executable, os.path.join(REPO, "bin", binary), *args],
                               capture_output=True, text=True, cwd=REPO, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def test_extract_then_evaluate_equals_evaluate_on_the_dataset(tiny_export):
    root, data_dir, dataset, _, path = tiny_export
    query_file, gallery_file = str(root / "query.npz"), str(root / "gallery.npz")
    # Queries: bin/extract on the query folder. Gallery: the library on a list file of relative
    # paths that also names the junk (pid -1) images, which the evaluation drops as the reader does.
    _run("extract", f"--saved_model={path}", f"--images={dataset.root}/query",
         f"--output={query_file}", "--batch_size=4")
    gallery_names = sorted(os.listdir(os.path.join(dataset.root, "bounding_box_test")))
    assert any(name.startswith("-1_") for name in gallery_names)
    with open(os.path.join(dataset.root, "gallery.txt"), "w") as handle:
        handle.writelines(f"bounding_box_test/{name}\n\n" for name in gallery_names)
    count = feature_files.extract_to_file(path, os.path.join(dataset.root, "gallery.txt"),
                                     gallery_file, batch_size=5, progress=False)
    assert count == len(gallery_names)

    stored = feature_files.load_feature_file(query_file)
    assert stored.paths == tuple(s.path for s in dataset.query)
    assert stored.features.dtype == np.float32 and stored.features.shape[0] == len(dataset.query)
    np.testing.assert_allclose(np.linalg.norm(stored.features, axis=1), 1.0, atol=1e-5)
    assert stored.metadata == export.load_feature_extractor(path).metadata
    assert stored.metadata["image_size"] == list(IMAGE_SIZE)
    assert stored.saved_model == os.path.abspath(path)

    files_json = str(root / "files.json")
    printed = _run("evaluate", f"--query_features={query_file}",
                   f"--gallery_features={gallery_file}", f"--output_json={files_json}").stdout
    from_files = json.loads(open(files_json).read())
    assert from_files == feature_files.evaluate_feature_files(query_file, gallery_file)
    assert f"{100 * from_files['mAP']:.2f}%" in printed
    options = [f"{key}={value}" for key, value in TINY.items()]
    expected = features.evaluate_export(path, "synthetic", data_dir, options, progress=False)
    for key in ("num_valid_queries", "num_query", "num_gallery", "rerank", "metric"):
        assert from_files[key] == expected[key], key
    for key in ("mAP", "rank1", "rank5", "rank10", "mINP"):
        assert from_files[key] == pytest.approx(expected[key], abs=1e-6), key
    np.testing.assert_allclose(from_files["cmc"], expected["cmc"], atol=1e-6)


def _feature_file(path, names, vectors, metadata=None) -> str:
    """A feature file as extract_to_file writes it, with images named names."""
    np.savez(path, features=np.array(vectors, np.float32), paths=np.array(names, np.str_),
             metadata=np.array(json.dumps(metadata or {"image_size": [32, 16]})),
             saved_model=np.array("/export"))
    return str(path)


def test_feature_files_score_a_hand_worked_case_without_junk(tmp_path):
    # q1 (pid 1): the pid-1 image is nearest once the junk image at distance 0 is dropped,
    # AP 1; q2 (pid 2): pid 1 comes first, then pid 2, AP 1/2. With the junk kept, mAP = 5/12.
    query_names = [str(tmp_path / "q" / name) for name in ("0001_c1_a.jpg", "0002_c1_b.jpg")]
    gallery_names = [str(tmp_path / name) for name in ("0001_c2_a.png", "0002_c2_b.jpg",
                                                       "-1_c2_junk.jpg")]
    (tmp_path / "q").mkdir()
    for name in query_names + gallery_names:  # rank lists draw the images
        with open(name, "wb") as handle:
            handle.write(tf.io.encode_png(np.full((8, 4, 3), 90, np.uint8)).numpy())
    query = _feature_file(tmp_path / "q.npz", query_names, [[1, 0], [1, 0]])
    gallery = _feature_file(tmp_path / "g.npz", gallery_names, [[0.8, 0.6], [0, 1], [1, 0]])
    summary = feature_files.evaluate_feature_files(query, gallery, ranklist_dir=str(tmp_path / "r"))
    assert summary["mAP"] == pytest.approx(0.75) and summary["rank1"] == pytest.approx(0.5)
    assert summary["rank5"] == pytest.approx(1.0) and summary["mINP"] == pytest.approx(0.75)
    assert (summary["num_query"], summary["num_gallery"]) == (2, 2)
    assert len(os.listdir(tmp_path / "r")) == 2
    assert features.format_summary(summary).splitlines()[0].startswith("feature files: 2 valid")


def test_feature_file_errors(tmp_path):
    good = _feature_file(tmp_path / "good.npz", ["0001_c1.jpg"], [[1, 0]])
    unparsed = _feature_file(tmp_path / "bad.npz", ["frame7.jpg"], [[1, 0]])
    other = _feature_file(tmp_path / "other.npz", ["0001_c2.jpg"], [[1, 0]],
                          {"image_size": [64, 32]})
    with pytest.raises(ValueError, match="do not parse .*frame7.jpg"):
        feature_files.evaluate_feature_files(unparsed, good)
    with pytest.raises(ValueError, match="different exports"):
        feature_files.evaluate_feature_files(good, other)
    with pytest.raises(ValueError, match="needs both"):
        feature_files.evaluate_feature_files(good, None)
    np.savez(tmp_path / "plain.npz", features=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="not a bin/extract feature file .*paths"):
        feature_files.load_feature_file(str(tmp_path / "plain.npz"))


def test_list_images(tmp_path):
    (tmp_path / "imgs" / "b").mkdir(parents=True)
    for name in ("imgs/b/2.png", "imgs/1.JPG", "imgs/notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert feature_files.list_images(str(tmp_path / "imgs")) == [
        str(tmp_path / "imgs" / "1.JPG"), str(tmp_path / "imgs" / "b" / "2.png")]
    (tmp_path / "list.txt").write_text("imgs/b/2.png\n\n" + str(tmp_path / "imgs/1.JPG") + "\n")
    assert feature_files.list_images(str(tmp_path / "list.txt")) == [
        str(tmp_path / "imgs" / "b" / "2.png"), str(tmp_path / "imgs" / "1.JPG")]
    (tmp_path / "broken.txt").write_text("imgs/1.JPG\nimgs/gone.jpg\n")
    with pytest.raises(FileNotFoundError, match="1 image.* missing .*gone.jpg"):
        feature_files.list_images(str(tmp_path / "broken.txt"))
    with pytest.raises(FileNotFoundError, match="neither a folder nor a list file"):
        feature_files.list_images(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no JPEG or PNG images"):
        feature_files.list_images(str(tmp_path / "empty"))
