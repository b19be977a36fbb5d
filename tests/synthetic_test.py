"""Tests of the synthetic dataset generator and its Market-layout cache."""

from __future__ import annotations

import collections
import functools
import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf.data import drawing, registry, synthetic

_TINY = dict(num_train_ids=4, num_test_ids=4, images_per_camera=2, num_cameras=3,
             cameras_per_id=3, height=32, width=16, seed=7)


def _files(folder: str) -> dict[str, tuple[bytes, int]]:
    out = {}
    for parent, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(parent, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = (f.read(), os.stat(path).st_mtime_ns)
    return out


def test_deterministic_bytes(tmp_path):
    first = synthetic.generate(str(tmp_path / "a"), **_TINY)
    second = synthetic.generate(str(tmp_path / "b"), **_TINY)
    assert os.path.basename(first) == os.path.basename(second)
    a, b = _files(first), _files(second)
    assert sorted(a) == sorted(b) and len(a) > 20
    assert all(a[name][0] == b[name][0] for name in a)


def test_cache_reused_without_rewriting(tmp_path):
    first = synthetic.create_dataset(str(tmp_path), **_TINY)
    before = _files(first.root)
    second = synthetic.create_dataset(str(tmp_path), **_TINY)
    assert second.root == first.root and second == first
    assert _files(first.root) == before
    assert os.listdir(tmp_path / "synthetic") == [os.path.basename(first.root)]


def test_distinct_params_distinct_folders(tmp_path):
    base = synthetic.generate(str(tmp_path), **_TINY)
    reseeded = synthetic.generate(str(tmp_path), **{**_TINY, "seed": 8})
    fewer = synthetic.generate(str(tmp_path), **{**_TINY, "images_per_camera": 1})
    assert len({base, reseeded, fewer}) == 3
    assert "seed7" in base and "32x16" in base and "ids4-4" in base
    a, b = _files(base), _files(reseeded)
    assert any(a[n][0] != b[n][0] for n in set(a) & set(b)) or set(a) != set(b)


def test_round_trip_through_market_parser(tmp_path):
    data_dir = tmp_path / "not" / "yet"  # created on demand
    data = synthetic.create_dataset(str(data_dir), **_TINY)
    assert data.name == "synthetic" and data.num_cameras == 3
    assert data.root.startswith(str(data_dir / "synthetic"))
    assert {s.pid for s in data.train} == {1, 2, 3, 4}
    assert {s.pid for s in data.query} <= {5, 6, 7, 8}
    gallery_pids = {s.pid for s in data.gallery}
    assert 0 in gallery_pids and -1 not in gallery_pids and {5, 6, 7, 8} <= gallery_pids
    junk = [n for n in os.listdir(os.path.join(data.root, "bounding_box_test"))
            if n.startswith("-1_")]
    assert junk, "junk files are written (and dropped by the reader)"
    assert [s.path for s in data.train] == sorted(s.path for s in data.train)
    assert all(0 <= s.camid < 3 for s in data.train + data.query + data.gallery)
    image = tf.io.decode_jpeg(tf.io.read_file(data.train[0].path))
    assert image.shape == (32, 16, 3)
    assert len(synthetic.create_dataset(str(data_dir), verify_images=True, **_TINY).train) \
        == len(data.train)


def test_several_cameras_per_identity_and_valid_queries(tmp_path):
    data = synthetic.create_dataset(str(tmp_path), **_TINY)
    cams = collections.defaultdict(set)
    for sample in data.train:
        cams[sample.pid].add(sample.camid)
    assert all(len(c) >= 2 for c in cams.values())
    # Training images per identity: images_per_camera per camera that sees it.
    counts = collections.Counter(s.pid for s in data.train)
    assert all(counts[pid] == 2 * len(cams[pid]) for pid in cams)
    for query in data.query:  # every query has a true match in another camera
        assert any(g.pid == query.pid and g.camid != query.camid for g in data.gallery)


def test_images_differ_between_identities_and_cameras(tmp_path):
    data = synthetic.create_dataset(str(tmp_path), **_TINY)
    pixels = np.stack([tf.io.decode_jpeg(tf.io.read_file(s.path)).numpy() for s in data.train])
    flat = pixels.reshape(len(pixels), -1).astype(np.float32)
    assert len({row.tobytes() for row in pixels}) == len(pixels)
    assert flat.std(axis=0).mean() > 10  # not near-constant images


def _market_map(query: np.ndarray, gallery: np.ndarray, q_pids, g_pids, q_cams, g_cams) -> float:
    """Plain Market-protocol mAP: drop same pid+camera, skip queries without a match."""
    aps = []
    for feature, pid, cam in zip(query, q_pids, q_cams):
        order = np.argsort(((gallery - feature) ** 2).sum(axis=1), kind="stable")
        keep = ~((g_pids[order] == pid) & (g_cams[order] == cam))
        hits = (g_pids[order] == pid)[keep]
        if hits.any():
            ranks = np.flatnonzero(hits) + 1
            aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
    return float(np.mean(aps))


def test_raw_pixels_match_poorly_but_identity_cues_are_consistent(tmp_path):
    data = synthetic.create_dataset(str(tmp_path), num_train_ids=1, num_test_ids=24,
                                    images_per_camera=3, num_cameras=4, cameras_per_id=3,
                                    height=64, width=32, seed=0)

    def split(samples, feature):
        pixels = np.stack([tf.io.decode_jpeg(tf.io.read_file(s.path)).numpy() for s in samples])
        flat = feature(pixels.astype(np.float64)).reshape(len(samples), -1)
        return (flat / np.linalg.norm(flat, axis=1, keepdims=True),
                np.array([s.pid for s in samples]), np.array([s.camid for s in samples]))

    def score(feature):
        q, q_pids, q_cams = split(data.query, feature)
        g, g_pids, g_cams = split(data.gallery, feature)
        return _market_map(q, g, q_pids, g_pids, q_cams, g_cams)

    def person_colours(pixels):
        # The middle of the crop, divided by its mean colour: cancels most of the camera cast.
        centre = pixels[:, 8:60, 10:22]
        return centre / centre.mean(axis=(1, 2), keepdims=True) - 1

    raw = score(lambda pixels: pixels)
    assert raw < 0.25  # backgrounds, casts and jitter defeat raw pixels
    assert score(person_colours) > raw + 0.1  # while clothing stays consistent across cameras


# The default (source) domain as generated before domains existed: cache folder, file names and
# the pixels handed to the JPEG encoder, for _TINY (computed from that code, commit 25fc8cb).
_SOURCE_TINY_FOLDER = "ids4-4_cam3_32x16_seed7_e9e8708fb0"
_SOURCE_TINY_NAMES_SHA = "ce29e42a39f16179"
_SOURCE_TINY_PIXELS_SHA = "afd50d58dd6d25fd"


@pytest.mark.parametrize("domain_option", [{}, {"domain": "source"}])
def test_source_domain_is_unchanged(tmp_path, monkeypatch, domain_option):
    pixels_digest = hashlib.sha256()
    encode = tf.io.encode_jpeg

    def recording_encode(pixels, **options):
        pixels_digest.update(pixels.tobytes())
        return encode(pixels, **options)

    monkeypatch.setattr(tf.io, "encode_jpeg", recording_encode)
    folder = synthetic.generate(str(tmp_path), **_TINY, **domain_option)
    splits = ("bounding_box_train", "query", "bounding_box_test")
    names = sorted(f"{split}/{name}" for split in splits
                   for name in os.listdir(os.path.join(folder, split)))
    assert os.path.basename(folder) == _SOURCE_TINY_FOLDER
    assert hashlib.sha256("\n".join(names).encode()).hexdigest()[:16] == _SOURCE_TINY_NAMES_SHA
    assert pixels_digest.hexdigest()[:16] == _SOURCE_TINY_PIXELS_SHA


_SMALL = dict(num_train_ids=12, num_test_ids=4, images_per_camera=2, height=64, width=32, seed=0)


def _both_domains(data_dir: str, **options) -> dict:
    return {domain: registry.create("synthetic", data_dir, domain=domain, **options)
            for domain in synthetic.DOMAINS}


def test_domains_have_disjoint_pids_and_appearances(tmp_path):
    sets = _both_domains(str(tmp_path), **_SMALL)
    pids = {domain: {s.pid for s in data.train + data.query + data.gallery} - {0}
            for domain, data in sets.items()}  # pid 0: Market's one-off distractors
    assert pids["source"] == set(range(1, 17)) and pids["target"] == set(range(5001, 5017))
    assert sets["source"].num_cameras == 6 and sets["target"].num_cameras == 8
    # Appearance draws: the same keys (pids) in both samplers, so a target that reused the
    # source's draws would match exactly.
    keys = [*range(1, 150), *range(5001, 5150)]
    colours = {domain: np.stack([np.concatenate([draw(0, key)["top"], draw(0, key)["bottom"]])
                                 for key in keys])
               for domain, draw in (("source", functools.partial(drawing.identity, "source")),
                                    ("target", functools.partial(drawing.identity, "target")))}
    closest = np.abs(colours["source"][:, None] - colours["target"][None]).max(axis=2).min()
    assert closest > 1e-3


def _blockiness(pixels: np.ndarray) -> float:
    """Horizontal steps inside 2- or 3-pixel blocks over steps at block edges (the smaller).

    About 1 for a camera at full resolution, well below 1 for one whose images are blown up
    from fewer pixels; a colour change (gain or offset per channel) scales both alike.
    """
    steps = np.abs(np.diff(pixels, axis=2)).mean(axis=(0, 1, 3))  # (width - 1,)
    at_edge = [(np.arange(len(steps)) + 1) % block == 0 for block in (2, 3)]
    return min(steps[~edge].mean() / steps[edge].mean() for edge in at_edge)


def test_domains_differ_in_colours_and_camera_pipelines(tmp_path):
    histograms, far_cameras = {}, {}
    for domain, data in _both_domains(str(tmp_path), **_SMALL).items():
        pixels = np.stack([tf.io.decode_jpeg(tf.io.read_file(s.path)).numpy()
                           for s in data.train]).astype(np.float64)
        counts = np.stack([np.histogramdd(image.reshape(-1, 3), bins=4,
                                          range=[(0, 256)] * 3)[0].ravel() for image in pixels])
        histograms[domain] = counts / counts.sum(axis=1, keepdims=True)
        cams = np.array([s.camid for s in data.train])
        far_cameras[domain] = sum(_blockiness(pixels[cams == cam]) < 0.7
                                  for cam in range(data.num_cameras))

    def distance(a, b):  # total variation between mean colour histograms
        return 0.5 * np.abs(a.mean(axis=0) - b.mean(axis=0)).sum()

    source, target = histograms["source"], histograms["target"]
    within = max(distance(source[::2], source[1::2]), distance(target[::2], target[1::2]))
    assert distance(source, target) > 3 * within
    # A recolouring keeps every camera's resolution; the target has far (downsampled) cameras.
    assert far_cameras["source"] == 0 and far_cameras["target"] >= 2


def test_target_round_trips_through_market_parser(tmp_path):
    options = {**_TINY, "num_cameras": None}
    data = registry.create("synthetic", str(tmp_path), domain="target", **options)
    assert data.name == "synthetic" and data.num_cameras == 8
    assert "cam8" in data.root
    assert {s.pid for s in data.train} == {5001, 5002, 5003, 5004}
    assert {s.pid for s in data.query} <= {5005, 5006, 5007, 5008}
    assert {5005, 5006, 5007, 5008} <= {s.pid for s in data.gallery}
    assert all(0 <= s.camid < 8 for s in data.train + data.query + data.gallery)
    for query in data.query:
        assert any(g.pid == query.pid and g.camid != query.camid for g in data.gallery)
    assert tf.io.decode_jpeg(tf.io.read_file(data.train[0].path)).shape == (32, 16, 3)
    again = registry.create("synthetic", str(tmp_path), domain="target", verify_images=True,
                            **options)
    assert [s.path for s in again.train] == [s.path for s in data.train]


def test_leftover_temp_dir_is_not_a_dataset(tmp_path):
    root = tmp_path / "synthetic"
    name = synthetic.cache_name({k: _TINY[k] for k in _TINY})
    leftover = root / f".tmp-{name}-abc123"
    (leftover / "bounding_box_train").mkdir(parents=True)
    (leftover / "bounding_box_train" / "0001_c1s1_000001_00.jpg").write_bytes(b"partial")
    data = synthetic.create_dataset(str(tmp_path), **_TINY)
    assert os.path.basename(data.root) == name and len(data.query) > 0
    assert (leftover / "bounding_box_train" / "0001_c1s1_000001_00.jpg").read_bytes() == b"partial"


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    calls = []
    render = drawing.render

    def failing_render(*args):
        calls.append(1)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return render(*args)

    monkeypatch.setattr(drawing, "render", failing_render)
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(str(tmp_path), **_TINY)
    assert os.listdir(tmp_path) == []


def test_bad_parameters():
    with pytest.raises(ValueError, match="cameras_per_id"):
        synthetic.generate("/nonexistent", **{**_TINY, "cameras_per_id": 4})
    with pytest.raises(TypeError):
        synthetic.generate("/nonexistent", num_ids=3)
    with pytest.raises(ValueError, match="domain 'tagret'; known: source, target"):
        registry.create("synthetic", "/nonexistent", domain="tagret")
    with pytest.raises(ValueError, match="num_train_ids \\+ num_test_ids <= 4999"):
        synthetic.generate("/nonexistent", num_train_ids=4000, num_test_ids=1000)
