"""Tests for mlc_tf.data.decode_cache and the cached and device-augmented training pipelines."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf.config import AugmentConfig
from mlc_tf.data import decode_cache, pipeline

SIZE = (16, 8)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """(paths, camstyle): 12 noisy JPEGs of three sizes, and 2 CamStyle views of each."""
    folder = tmp_path_factory.mktemp("decode_cache")
    rng = np.random.default_rng(0)

    def write(name, shape):
        path = os.path.join(folder, name)
        tf.io.write_file(path, tf.io.encode_jpeg(rng.integers(0, 256, (*shape, 3), np.uint8)))
        return path

    shapes = [(24, 12), (20, 10), (26, 9)]
    paths = [write(f"{i:02d}.jpg", shapes[i % 3]) for i in range(12)]
    camstyle = [[path, write(f"{i:02d}_c1.jpg", shapes[(i + 1) % 3])]
                for i, path in enumerate(paths)]
    return paths, camstyle


def _columns(paths):
    return [i % 3 for i in range(len(paths))], list(range(len(paths)))


def _epoch(paths, camstyle=None, pk=False, **kwargs):
    """[batch dicts as NumPy] of one epoch, seed 5, epoch 2."""
    camids, indices = _columns(paths)
    common = dict(image_size=SIZE, batch_size=4, seed=5, epoch=2, augment=AugmentConfig(),
                  camstyle=camstyle, **kwargs)
    if pk:
        dataset = pipeline.make_pk_dataset(paths, camids, indices, [i // 3 for i in indices],
                                           num_instances=2, **common)
    else:
        dataset = pipeline.make_train_dataset(paths, camids, indices, **common)
    return list(dataset.as_numpy_iterator())


def _assert_same_epochs(expected, actual):
    assert len(expected) == len(actual) > 0
    for want, got in zip(expected, actual):
        assert set(want) == set(got)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_image_returns_each_file_as_decoded(files):
    paths, _ = files
    cache = pipeline.decode_images("memory", paths[:5], budget_bytes=10**6)
    assert len(cache) == 5 and cache.max_shape == (26, 12)
    assert cache.nbytes == sum(24 * 12 * 3 if i % 3 == 0 else 20 * 10 * 3 if i % 3 == 1
                               else 26 * 9 * 3 for i in range(5))
    for row in (4, 0, 2):
        expected = tf.io.decode_jpeg(tf.io.read_file(paths[row]), channels=3).numpy()
        np.testing.assert_array_equal(cache.image(tf.constant(row)).numpy(), expected)
    np.testing.assert_array_equal(cache.rows([paths[3], paths[1]]), [3, 1])


@pytest.mark.parametrize("pk", [False, True])
def test_cached_epoch_is_the_uncached_epoch_bit_for_bit(files, pk):
    paths, _ = files
    cache = pipeline.decode_images("auto", paths, budget_bytes=10**6)
    _assert_same_epochs(_epoch(paths, pk=pk), _epoch(paths, pk=pk, decoded=cache))


def test_camstyle_views_are_cached_too(files):
    paths, camstyle = files
    cache = pipeline.decode_images("memory", paths, camstyle, budget_bytes=10**6)
    assert len(cache) == 24  # each original once, although it is also its own camera's view
    _assert_same_epochs(_epoch(paths, camstyle), _epoch(paths, camstyle, decoded=cache))
    without_views = pipeline.decode_images("memory", paths, budget_bytes=10**6)
    with pytest.raises(ValueError, match="_c1.jpg is not among the 12 decoded images"):
        _epoch(paths, camstyle, decoded=without_views)


def test_budget_modes(files):
    paths, _ = files
    need = sum(24 * 12 * 3 if i % 3 == 0 else 20 * 10 * 3 if i % 3 == 1 else 26 * 9 * 3
               for i in range(12))
    assert len(pipeline.decode_images("auto", paths, budget_bytes=need)) == 12
    assert pipeline.decode_images("auto", paths, budget_bytes=need - 1) is None
    assert pipeline.decode_images("none", paths, budget_bytes=10**9) is None
    with pytest.raises(ValueError, match="exceed the budget of 1000 bytes; raise --decode_cache_gib"):
        pipeline.decode_images("memory", paths, budget_bytes=1000)
    with pytest.raises(ValueError, match="decode_cache='disk'"):
        pipeline.decode_images("disk", paths, budget_bytes=10**9)


def test_inconsistent_buffers_and_repeated_files_are_refused():
    with pytest.raises(ValueError, match="do not agree"):
        decode_cache.DecodedImages(["a", "b"], np.zeros(11, np.uint8), [[1, 2], [1, 2]])
    with pytest.raises(ValueError, match="distinct"):
        decode_cache.DecodedImages(["a", "a"], np.zeros(12, np.uint8), [[1, 2], [1, 2]])


@pytest.mark.parametrize("cached", [False, True])
def test_device_augmentation_gives_the_input_side_pixels(files, cached):
    paths, _ = files
    cache = pipeline.decode_images("memory", paths, budget_bytes=10**6) if cached else None
    input_side = _epoch(paths, decoded=cache)
    device_side = _epoch(paths, decoded=cache, augment_on="device")
    augment = tf.function(pipeline.device_augmentation(SIZE, AugmentConfig()))
    for want, got in zip(input_side, device_side):
        assert got["image"].dtype == np.uint8 and got["augment"]["crop"].shape == (4, 4)
        np.testing.assert_array_equal(got["index"], want["index"])
        images = augment(tf.nest.map_structure(tf.constant, got)).numpy()
        np.testing.assert_allclose(images, want["image"], atol=1e-3)


def test_unknown_augment_on_is_refused(files):
    with pytest.raises(ValueError, match="augment_on='gpu'"):
        _epoch(files[0], augment_on="gpu")
