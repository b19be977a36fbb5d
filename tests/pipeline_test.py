"""Tests of the tf.data pipelines: loading, eval order, seeded train epochs and PK batches."""

import os

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf.config import AugmentConfig
from mlc_tf.data import pipeline

SIZE = (16, 8)
NO_AUGMENT = AugmentConfig(crop="none", flip=0.0, rotation=0.0, color_jitter=0.0,
                           random_erasing=0.0)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Twenty flat-coloured 24x12 JPEGs; image i has grey level 10 * i + 20."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(20):
        pixels = np.full((24, 12, 3), 10 * i + 20, np.uint8)
        path = os.path.join(folder, f"{i:03d}.jpg")
        tf.io.write_file(path, tf.io.encode_jpeg(pixels, quality=100))
        paths.append(path)
    return paths


def _grey_of(image: np.ndarray) -> int:
    return int(round((float(image.mean()) - 20) / 10))


def _train(paths, epoch=0, seed=1, batch_size=6, augment=AugmentConfig()):
    n = len(paths)
    return pipeline.make_train_dataset(paths, [i % 3 for i in range(n)], list(range(100, 100 + n)),
                                       image_size=SIZE, batch_size=batch_size, seed=seed,
                                       epoch=epoch, augment=augment)


def test_load_image_resizes_to_float_rgb(images):
    image = pipeline.load_image(tf.constant(images[3]), SIZE)
    assert image.shape == (*SIZE, 3) and image.dtype == tf.float32
    np.testing.assert_allclose(image.numpy(), 50.0, atol=2.0)


def test_eval_dataset_keeps_order_without_augmentation(images):
    batches = list(pipeline.make_eval_dataset(images, SIZE, 8))
    assert [b.shape[0] for b in batches] == [8, 8, 4]
    flat = np.concatenate([b.numpy() for b in batches])
    assert [_grey_of(im) for im in flat] == list(range(20))
    again = np.concatenate([b.numpy() for b in pipeline.make_eval_dataset(images, SIZE, 8)])
    np.testing.assert_array_equal(flat, again)


def test_train_dataset_keys_shapes_and_single_visit(images):
    dataset = _train(images)
    assert dataset.cardinality() == pipeline.train_steps_per_epoch(20, 6) == 3
    seen = []
    for batch in dataset:
        assert set(batch) == {"image", "index", "camid"}  # never a pid
        assert batch["image"].shape == (6, *SIZE, 3) and batch["image"].dtype == tf.float32
        assert batch["index"].dtype == tf.int32 and batch["camid"].dtype == tf.int32
        pixels = batch["image"].numpy()
        assert pixels.min() >= 0 and pixels.max() <= 255
        index = batch["index"].numpy()
        np.testing.assert_array_equal(batch["camid"].numpy(), (index - 100) % 3)
        seen.extend(index.tolist())
    assert len(seen) == 18 == len(set(seen)) and set(seen) <= set(range(100, 120))


def test_train_images_belong_to_their_index(images):
    for batch in _train(images, augment=NO_AUGMENT):
        for image, index in zip(batch["image"].numpy(), batch["index"].numpy()):
            assert _grey_of(image) == index - 100


def test_train_dataset_is_reproducible_and_changes_with_epoch(images):
    def run(epoch, seed=1):
        batches = list(_train(images, epoch=epoch, seed=seed))
        return (np.concatenate([b["index"].numpy() for b in batches]),
                np.concatenate([b["image"].numpy() for b in batches]))

    order, pixels = run(0)
    order_again, pixels_again = run(0)
    np.testing.assert_array_equal(order, order_again)
    np.testing.assert_array_equal(pixels, pixels_again)
    assert not np.array_equal(order, run(1)[0])
    assert not np.array_equal(order, run(0, seed=2)[0])


def test_train_and_pk_datasets_resume_without_reading_the_skipped_batches(images, tmp_path):
    copies = [str(tmp_path / os.path.basename(path)) for path in images]
    for path, copy in zip(images, copies):
        tf.io.gfile.copy(path, copy)
    labels = np.repeat(np.arange(5), 4)

    def pk(paths, **kwargs):
        return pipeline.make_pk_dataset(paths, np.arange(20) % 2, np.arange(20), labels,
                                        num_instances=2, batch_size=6, image_size=SIZE, seed=3,
                                        epoch=1, augment=AugmentConfig(), **kwargs)

    def train(paths, **kwargs):
        return pipeline.make_train_dataset(paths, np.arange(20) % 3, np.arange(20),
                                           image_size=SIZE, batch_size=6, seed=1, epoch=4,
                                           augment=AugmentConfig(), **kwargs)

    for make in (train, pk):
        full = list(make(copies))
        assert len(full) >= 3
        # Delete the files only the first batch reads: a skipped batch reads nothing.
        first = set(full[0]["index"].numpy()) - set(np.concatenate(
            [b["index"].numpy() for b in full[1:]]))
        assert first
        for i in first:
            os.remove(copies[i])
        resumed = list(make(copies, skip_batches=1))
        assert len(resumed) == len(full) - 1
        for want, got in zip(full[1:], resumed):
            np.testing.assert_array_equal(want["index"].numpy(), got["index"].numpy())
            np.testing.assert_array_equal(want["image"].numpy(), got["image"].numpy())
        for i in first:
            tf.io.gfile.copy(images[i], copies[i])
    with pytest.raises(ValueError, match="skip_batches must be >= 0"):
        train(copies, skip_batches=-1)


def test_pk_dataset_labels_outliers_and_p_by_k_batches(images):
    # Cluster sizes 4, 3, 5, 1, 4 and two outliers; K = 2, P = 3.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, -1, 2, 2, 2, 2, 2, 3, 4, -1, 4, 4, 4, 4])
    indices = np.arange(500, 520)
    dataset = pipeline.make_pk_dataset(images, np.arange(20) % 2, indices, labels,
                                       num_instances=2, batch_size=6, image_size=SIZE, seed=3,
                                       epoch=2, augment=NO_AUGMENT, camera_aware=True)
    assert dataset.cardinality() == pipeline.pk_steps_per_epoch(labels, 6) == 3
    for batch in dataset:
        assert set(batch) == {"image", "index", "camid", "label"}
        index = batch["index"].numpy()
        label = batch["label"].numpy()
        assert batch["label"].dtype == tf.int32 and len(index) == 6
        np.testing.assert_array_equal(label, labels[index - 500])
        np.testing.assert_array_equal(batch["camid"].numpy(), (index - 500) % 2)
        assert np.all(label >= 0)
        # P = 3 pairs, each of one cluster; only the size-1 cluster repeats its sample.
        assert all(label[i] == label[i + 1] for i in range(0, 6, 2))
        assert len(set(label)) == 3
        repeated = [i for i in set(index) if list(index).count(i) > 1]
        assert set(labels[np.array(repeated, int) - 500]) <= {3}
        for image, i in zip(batch["image"].numpy(), index):
            assert _grey_of(image) == i - 500


def test_pk_dataset_is_reproducible_and_changes_with_epoch(images):
    labels = np.repeat(np.arange(5), 4)

    def run(epoch):
        batches = pipeline.make_pk_dataset(images, [0] * 20, range(20), labels, num_instances=4,
                                           batch_size=8, image_size=SIZE, seed=5, epoch=epoch,
                                           augment=AugmentConfig())
        return [(b["index"].numpy(), b["image"].numpy()) for b in batches]

    first, again, other = run(0), run(0), run(1)
    for (index, image), (index_again, image_again) in zip(first, again):
        np.testing.assert_array_equal(index, index_again)
        np.testing.assert_array_equal(image, image_again)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_errors(images):
    with pytest.raises(ValueError, match="batch"):
        _train(images[:4], batch_size=6)
    with pytest.raises(ValueError, match="same length"):
        pipeline.make_train_dataset(images, [0] * 3, range(20), image_size=SIZE, batch_size=4,
                                    seed=0, epoch=0, augment=NO_AUGMENT)
    with pytest.raises(ValueError, match="distinct"):
        pipeline.make_train_dataset(images, [0] * 20, [0] * 20, image_size=SIZE, batch_size=4,
                                    seed=0, epoch=0, augment=NO_AUGMENT)
    with pytest.raises(ValueError, match="pseudo label"):
        pipeline.make_pk_dataset(images, [0] * 20, range(20), [-1] * 20,
                                 num_instances=2, batch_size=4, image_size=SIZE, seed=0, epoch=0,
                                 augment=NO_AUGMENT)
    with pytest.raises(ValueError, match="multiple of num_instances"):
        pipeline.make_pk_dataset(images, [0] * 20, range(20), [0] * 20,
                                 num_instances=4, batch_size=6, image_size=SIZE, seed=0, epoch=0,
                                 augment=NO_AUGMENT)
    for camstyle in ([[p, p] for p in images[:19]], [[p, p] for p in images[:19]] + [[images[19]]],
                     [[] for _ in images]):
        with pytest.raises(ValueError, match="one row per sample"):
            pipeline.make_train_dataset(images, [0] * 20, range(20), image_size=SIZE,
                                        batch_size=4, seed=0, epoch=0, augment=NO_AUGMENT,
                                        camstyle=camstyle)
        with pytest.raises(ValueError, match="one row per sample"):
            pipeline.make_pk_dataset(images, [0] * 20, range(20), [0] * 20, num_instances=2,
                                     batch_size=4, image_size=SIZE, seed=0, epoch=0,
                                     augment=NO_AUGMENT, camstyle=camstyle)


def test_corrupt_image_error_names_the_file(tmp_path, images):
    for i, content in enumerate([b"", b"not an image at all", b"\xff\xd8\xff\xe0 cut"]):
        bad = tmp_path / f"broken_{i}.jpg"
        bad.write_bytes(content)
        with pytest.raises(tf.errors.InvalidArgumentError, match=f"broken_{i}.jpg"):
            list(pipeline.make_eval_dataset([images[0], str(bad)], SIZE, 2))
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken_2.jpg"):
        list(_train(images[:5] + [str(bad)], batch_size=2))


def test_truncated_jpeg_is_named_but_padding_after_the_end_marker_is_fine(tmp_path, images):
    with open(images[0], "rb") as f:
        data = f.read()
    padded, truncated = tmp_path / "padded.jpg", tmp_path / "truncated.jpg"
    padded.write_bytes(data + b"\0" * 100)
    truncated.write_bytes(data[:len(data) // 2])
    image = pipeline.load_image(tf.constant(str(padded)), SIZE)
    np.testing.assert_array_equal(image, pipeline.load_image(tf.constant(images[0]), SIZE))
    with pytest.raises(tf.errors.InvalidArgumentError, match="truncated.jpg"):
        pipeline.load_image(tf.constant(str(truncated)), SIZE)
