"""Tests for mlc_tf.features: one extraction path for a network and its export, bin/evaluate."""

import json

import numpy as np
import pytest

from mlc_tf import evaluation, export, features

from conftest import TINY_IMAGE_SIZE as IMAGE_SIZE, TINY_SET as TINY


def test_a_network_and_its_export_evaluate_alike(tiny_export):
    _, _, dataset, network, path = tiny_export
    embed = features.make_embedder(network, "pooled")
    extractor = export.load_feature_extractor(path)
    direct = features.evaluate(embed, dataset, image_size=IMAGE_SIZE, batch_size=5)
    exported = features.evaluate(extractor, dataset, image_size=IMAGE_SIZE, batch_size=4)
    np.testing.assert_allclose(direct.query, exported.query, atol=1e-5)
    np.testing.assert_allclose(direct.gallery, exported.gallery, atol=1e-5)
    assert direct.metrics["mAP"] == pytest.approx(exported.metrics["mAP"], abs=1e-6)
    expected = evaluation.evaluate_features(
        direct.query, direct.gallery, [s.pid for s in dataset.query],
        [s.pid for s in dataset.gallery], [s.camid for s in dataset.query],
        [s.camid for s in dataset.gallery])
    assert direct.metrics["mAP"] == pytest.approx(expected["mAP"])
    np.testing.assert_allclose(np.linalg.norm(direct.query, axis=1), 1.0, atol=1e-5)


def test_evaluate_export_in_process_writes_json_and_ranklists(tiny_export, capsys):
    root, data_dir, dataset, network, path = tiny_export
    out_json, ranklists = root / "metrics.json", root / "ranklists"
    options = [f"{k}={v}" for k, v in TINY.items()]
    summary = features.evaluate_export(path, "synthetic", data_dir, options,
                                       output_json=str(out_json), ranklist_dir=str(ranklists),
                                       num_ranklists=2, progress=False)
    assert json.loads(out_json.read_text()) == summary
    assert summary["num_query"] == len(dataset.query) and len(list(ranklists.iterdir())) == 2
    direct = features.evaluate(features.make_embedder(network), dataset, image_size=IMAGE_SIZE)
    assert summary["mAP"] == pytest.approx(direct.metrics["mAP"], abs=1e-6)
    lines = features.format_summary(summary).splitlines()
    assert lines[1].split() == ["mAP", "rank-1", "rank-5", "rank-10", "mINP"]
    assert lines[2].split()[0] == f"{100 * summary['mAP']:.2f}%"


def test_no_images_is_a_clear_error():
    with pytest.raises(ValueError, match="no images"):
        features.extract_features(lambda x: x, [], image_size=IMAGE_SIZE)
