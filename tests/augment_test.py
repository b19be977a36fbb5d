"""Tests of mlc_tf.data.augment: determinism, ranges, and what each op does on tiny images."""

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf.config import AugmentConfig
from mlc_tf.data import augment

SIZE = (16, 8)
OFF = dict(crop="none", flip=0.0, rotation=0.0, color_jitter=0.0, random_erasing=0.0)
MEAN = np.array(augment.IMAGENET_MEAN, np.float32)


def _seed(i: int) -> tf.Tensor:
    return augment.sample_seed(7, 3, tf.constant(i))


def _random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.float32)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="crop"):
        AugmentConfig(crop="pad_crop_typo")
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(flip=1.5)
    with pytest.raises(ValueError):
        AugmentConfig(color_jitter=-0.1)


def test_sample_seed_depends_on_seed_epoch_and_position():
    base = augment.sample_seed(1, 2, tf.constant(3)).numpy()
    np.testing.assert_array_equal(base, augment.sample_seed(1, 2, tf.constant(3)).numpy())
    others = [augment.sample_seed(0, 2, tf.constant(3)), augment.sample_seed(1, 0, tf.constant(3)),
              augment.sample_seed(1, 2, tf.constant(4))]
    for other in others:
        assert not np.array_equal(base, other.numpy())


@pytest.mark.parametrize("crop", ["resized", "pad", "none"])
def test_default_ops_shape_range_and_determinism(crop):
    config = AugmentConfig(crop=crop, random_erasing=1.0)
    image = tf.constant(_random_image(50, 30).astype(np.uint8))
    first = augment.augment_image(image, _seed(0), (32, 16), config)
    again = augment.augment_image(image, _seed(0), (32, 16), config)
    other = augment.augment_image(image, _seed(1), (32, 16), config)
    assert first.shape == (32, 16, 3) and first.dtype == tf.float32
    assert float(tf.reduce_min(first)) >= 0.0 and float(tf.reduce_max(first)) <= 255.0
    np.testing.assert_array_equal(first.numpy(), again.numpy())
    assert not np.array_equal(first.numpy(), other.numpy())


def test_all_ops_off_is_plain_resize():
    image = _random_image(40, 20)
    out = augment.augment_image(tf.constant(image), _seed(0), (20, 10), AugmentConfig(**OFF))
    np.testing.assert_allclose(out.numpy(), tf.image.resize(image, (20, 10)).numpy(), atol=1e-4)


def test_flip_mirrors_columns():
    image = _random_image(8, 6)
    config = AugmentConfig(**{**OFF, "flip": 1.0})
    out = augment.augment_image(tf.constant(image), _seed(0), (8, 6), config).numpy()
    np.testing.assert_allclose(out, image[:, ::-1], atol=1e-4)


def test_flip_probability_is_roughly_half():
    image = _random_image(4, 4)
    config = AugmentConfig(**{**OFF, "flip": 0.5})
    flips = sum(not np.allclose(augment.augment_image(image, _seed(i), (4, 4), config).numpy(),
                                image, atol=1e-4) for i in range(200))
    assert 70 < flips < 130


def test_random_erasing_fills_one_rectangle_with_the_mean():
    height, width = 64, 32
    image = np.zeros((height, width, 3), np.float32)
    fractions, aspects = [], []
    for i in range(60):
        out = augment.random_erasing(tf.constant(image), _seed(i)).numpy()
        filled = np.all(np.abs(out - MEAN) < 1e-4, axis=-1)
        assert np.all(out[~filled] == 0)
        rows, cols = np.flatnonzero(filled.any(1)), np.flatnonzero(filled.any(0))
        assert len(rows) and len(cols)
        h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        # Solid rectangle: the bounding box is completely filled.
        assert filled.sum() == h * w
        assert h < height and w < width
        fractions.append(h * w / (height * width))
        aspects.append(h / w)
    # Rounding h and w to whole pixels moves the area by at most about one row and one column.
    slack = (height + width + 1) / (height * width)
    assert min(fractions) >= 0.02 - slack and max(fractions) <= 0.2 + slack
    assert max(fractions) - min(fractions) > 0.05
    assert min(aspects) < 1.0 < max(aspects)


def test_random_erasing_leaves_the_image_when_no_rectangle_fits():
    # One pixel wide: an erased width must be < 1, i.e. 0, which needs area/aspect < 0.25
    # pixels; the smallest draw is 2 % of 64 pixels / 3.33 = 0.38, so no draw fits.
    image = _random_image(64, 1)
    for i in range(5):
        out = augment.random_erasing(tf.constant(image), _seed(i)).numpy()
        np.testing.assert_array_equal(out, image)


def test_erasing_probability_switch():
    image = np.zeros((32, 16, 3), np.float32)
    never = AugmentConfig(**{**OFF, "random_erasing": 0.0})
    always = AugmentConfig(**{**OFF, "random_erasing": 1.0})
    for i in range(5):
        out = augment.augment_image(image, _seed(i), (32, 16), never)
        np.testing.assert_array_equal(out, image)
        assert np.any(augment.augment_image(image, _seed(i), (32, 16), always).numpy() > 0)


def test_resized_crop_takes_a_rectangle_within_area_and_aspect_bounds():
    height, width = 240, 120
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    # Channels carry the source coordinates, so the output tells which window was cropped.
    image = np.stack([rows, cols, np.zeros_like(rows)], axis=-1).astype(np.float32)
    areas = []
    for i in range(30):
        out = augment.resized_rect_crop(tf.constant(image), _seed(i), (64, 32)).numpy()
        top, bottom = out[..., 0].min(), out[..., 0].max()
        left, right = out[..., 1].min(), out[..., 1].max()
        h, w = bottom - top + 1, right - left + 1
        assert top >= 0 and bottom <= height - 1 and left >= 0 and right <= width - 1
        # Bilinear half-pixel sampling loses up to about one source pixel at each edge.
        assert 0.64 * height * width * 0.93 <= (h + 2) * (w + 2) and h * w <= height * width
        assert 2.0 * 0.9 <= (h + 2) / w and h / (w + 2) <= 3.0 * 1.1
        areas.append(h * w)
    assert max(areas) - min(areas) > 0.1 * height * width


def test_resized_crop_falls_back_to_plain_resize():
    # A wide image: no rectangle of >= 64 % area with h/w >= 2 fits, so every draw fails.
    image = _random_image(20, 80)
    out = augment.resized_rect_crop(tf.constant(image), _seed(0), (16, 8)).numpy()
    np.testing.assert_allclose(out, tf.image.resize(image, (16, 8)).numpy(), atol=1e-4)


def test_pad_crop_is_a_shifted_window_of_the_zero_padded_image():
    image = _random_image(12, 8) + 1.0
    padded = np.pad(image, [[3, 3], [3, 3], [0, 0]])
    shifts = set()
    for i in range(40):
        out = augment.pad_crop(tf.constant(image), _seed(i), 3).numpy()
        matches = [(t, l) for t in range(7) for l in range(7)
                   if np.array_equal(out, padded[t:t + 12, l:l + 8])]
        assert len(matches) == 1
        shifts.add(matches[0])
    assert len(shifts) > 10


def test_rotation_matches_numpy_on_a_square():
    image = _random_image(9, 9)
    np.testing.assert_allclose(augment.rotate(tf.constant(image), 0.0).numpy(), image, atol=1e-3)
    rotated = augment.rotate(tf.constant(image), 90.0).numpy()
    np.testing.assert_allclose(rotated, np.rot90(image, k=1), atol=1e-2)


def test_rotation_keeps_the_centre_and_blanks_corners():
    image = np.full((21, 21, 3), 100.0, np.float32)
    out = augment.rotate(tf.constant(image), 10.0).numpy()
    np.testing.assert_allclose(out[10, 10], 100.0, atol=1e-3)
    assert np.all(out[0, 0] < 100.0)


def _numpy_adjust(image, b, c, s):
    weights = np.array([0.299, 0.587, 0.114], np.float32)
    image = np.clip(image * b, 0, 255)
    mean = (image * weights).sum(-1).mean()
    image = np.clip((image - mean) * c + mean, 0, 255)
    gray = (image * weights).sum(-1, keepdims=True)
    return np.clip((image - gray) * s + gray, 0, 255)


@pytest.mark.parametrize("factors", [(1.0, 1.0, 1.0), (1.2, 0.8, 1.1), (0.8, 1.2, 0.8)])
def test_adjust_colour_against_numpy(factors):
    image = _random_image(6, 5)
    out = augment.adjust_colour(tf.constant(image), *factors).numpy()
    np.testing.assert_allclose(out, _numpy_adjust(image, *factors), atol=1e-3)


def test_color_jitter_factors_stay_in_range():
    image = np.full((4, 4, 3), 100.0, np.float32)  # grey and flat: only brightness acts
    ratios = [float(augment.color_jitter(tf.constant(image), _seed(i), 0.2)[0, 0, 0]) / 100.0
              for i in range(50)]
    assert 0.8 - 1e-5 <= min(ratios) < 0.9 and 1.1 < max(ratios) <= 1.2 + 1e-5


@pytest.mark.parametrize("crop", ["resized", "pad", "none"])
def test_batched_augmentation_gives_the_per_image_pixels(crop):
    # Three decoded sizes, zero-padded into one batch; the 8x30 image is too wide for any
    # 'resized' draw of aspect h/w in [2, 3], so its crop falls back to the whole image.
    rng = np.random.default_rng(0)
    shapes = [(24, 12), (20, 9), (8, 30)]
    config = AugmentConfig(crop=crop, crop_padding=3, random_erasing=1.0, flip=0.5)
    padded = np.zeros((len(shapes) * 4, 24, 30, 3), np.uint8)
    expected, params = [], []
    for i in range(len(padded)):
        h, w = shapes[i % 3]
        padded[i, :h, :w] = rng.integers(0, 256, (h, w, 3))
        seed = augment.sample_seed(7, 1, i)
        expected.append(augment.augment_image(padded[i, :h, :w], seed, SIZE, config).numpy())
        params.append(augment.augment_params(tf.constant([h, w]), seed, SIZE, config))
    stacked = {key: tf.stack([p[key] for p in params]) for key in params[0]}
    batched = tf.function(augment.augment_batch, reduce_retracing=True)
    images = batched(tf.constant(padded), stacked, SIZE, config).numpy()
    np.testing.assert_allclose(images, np.stack(expected), atol=1e-3)
    if crop == "resized":
        np.testing.assert_array_equal(stacked["crop"][2::3].numpy(), [[0, 0, 8, 30]] * 4)
