"""Seeded per-image training augmentation (MMCL-style crop, flip, rotation, jitter, erasing).

augment_image runs in the tf.data pipeline; augment_batch runs the same ops in the training step.
"""

from __future__ import annotations

import math

import tensorflow as tf

from mlc_tf.config import AugmentConfig

# Per-channel ImageNet mean in the [0, 255] RGB input space: the random-erasing fill (spec A18).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
# ITU-R 601 luma, the weights PIL's convert('L') uses (torchvision's jitter works on it).
_LUMA = (0.299, 0.587, 0.114)
# Candidate draws per image for the rectangle searches; MMCL's crop tries 10 times, Zhong's
# erasing up to 100, but with these ranges a valid rectangle is almost always among the first few.
_CROP_TRIES = 10
_ERASE_TRIES = 10
_NUM_OPS = 6


def sample_seed(seed: int, epoch: int | tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """The stateless seed of one sample: a function of (seed, epoch, position in the epoch)."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64)])
    return tf.random.experimental.stateless_fold_in(base, tf.cast(position, tf.int64))


def _uniform(seed: tf.Tensor, shape, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed, minval=low, maxval=high)


def _first_fit(heights: tf.Tensor, widths: tf.Tensor,
               fits: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(found, h, w) of the first candidate rectangle that fits."""
    first = tf.argmax(tf.cast(fits, tf.int32))
    return tf.reduce_any(fits), heights[first], widths[first]


def _offset(u: tf.Tensor, room: tf.Tensor) -> tf.Tensor:
    """An integer offset uniform in [0, room] from u uniform in [0, 1)."""
    room = tf.maximum(room, 0)
    return tf.minimum(tf.cast(tf.floor(u * tf.cast(room + 1, tf.float32)), tf.int32), room)


def _rect_candidates(seed: tf.Tensor, area: tf.Tensor, area_range: tuple[float, float],
                     aspect_range: tuple[float, float], tries: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Rounded (h, w) of candidate rectangles of random area fraction and aspect h/w."""
    seeds = tf.random.experimental.stateless_split(seed, 2)
    target = area * _uniform(seeds[0], [tries], *area_range)
    aspect = _uniform(seeds[1], [tries], *aspect_range)
    heights = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
    widths = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
    return heights, widths


def resized_rect_crop(image: tf.Tensor, seed: tf.Tensor, image_size: tuple[int, int],
                      area_range: tuple[float, float] = (0.64, 1.0),
                      aspect_range: tuple[float, float] = (2.0, 3.0)) -> tf.Tensor:
    """MMCL RandomSizedRectCrop: a random rectangle resized (bilinear) to image_size.

    Falls back to resizing the whole image when none of the candidate rectangles fits.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    heights, widths = _rect_candidates(seeds[0], tf.cast(height * width, tf.float32),
                                       area_range, aspect_range, _CROP_TRIES)
    found, h, w = _first_fit(heights, widths, (heights <= height) & (widths <= width))
    h = tf.where(found, h, height)
    w = tf.where(found, w, width)
    offsets = _uniform(seeds[1], [2])
    top, left = _offset(offsets[0], height - h), _offset(offsets[1], width - w)
    crop = image[top:top + h, left:left + w]
    return tf.image.resize(crop, image_size, method="bilinear")


def pad_crop(image: tf.Tensor, seed: tf.Tensor, pad: int) -> tf.Tensor:
    """Zero-pads by pad pixels on every side, then crops back a random window of the same size."""
    size = tf.shape(image)[:2]
    padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
    u = _uniform(seed, [2])
    top, left = _offset(u[0], tf.constant(2 * pad)), _offset(u[1], tf.constant(2 * pad))
    return padded[top:top + size[0], left:left + size[1]]


def _rotation_transforms(degrees: tf.Tensor, height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """(B, 8) projective transforms rotating (height, width) images about their centre."""
    angle = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    cos, sin = tf.cos(angle), tf.sin(angle)
    cy, cx = (tf.cast(height, tf.float32) - 1.0) / 2.0, (tf.cast(width, tf.float32) - 1.0) / 2.0
    # The transform maps output (x, y) to input coordinates: an inverse rotation about the centre.
    zeros = tf.zeros_like(angle)
    return tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                     sin, cos, cy - sin * cx - cos * cy, zeros, zeros], axis=1)


def _rotate_images(images: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """Rotates each of (B, H, W, C) images by its degrees (B,) (bilinear, zero fill)."""
    size = tf.shape(images)[1:3]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=_rotation_transforms(degrees, size[0], size[1]),
        output_shape=size, fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")


def rotate(image: tf.Tensor, degrees: tf.Tensor) -> tf.Tensor:
    """Rotates about the image centre (bilinear, zero fill outside the source)."""
    return _rotate_images(image[tf.newaxis], tf.reshape(degrees, [1]))[0]


def _gray(image: tf.Tensor) -> tf.Tensor:
    # A (pixels, 3) x (3, 1) matmul: about 3x faster here than a multiply and a channel sum.
    gray = tf.matmul(tf.reshape(image, [-1, 3]), tf.constant(_LUMA, shape=(3, 1)))
    return tf.reshape(gray, tf.concat([tf.shape(image)[:-1], [1]], axis=0))


def adjust_colour(image: tf.Tensor, brightness: tf.Tensor | float, contrast: tf.Tensor | float,
                  saturation: tf.Tensor | float) -> tf.Tensor:
    """Scales brightness, then contrast (about the mean grey level), then saturation (about each
    pixel's grey value), as torchvision's adjust_* do, clipping to [0, 255] after each.

    image is (H, W, 3) with scalar factors, or (B, H, W, 3) with factors of shape (B,).
    """
    def per_image(value):  # a factor or the mean grey level, broadcast over (H, W, 3)
        value = tf.cast(value, tf.float32)
        return tf.reshape(value, tf.concat([tf.shape(value), [1, 1, 1]], axis=0))

    image = tf.clip_by_value(image * per_image(brightness), 0.0, 255.0)
    # The mean grey level is the grey level of the mean colour (luma is linear).
    mean = tf.tensordot(tf.reduce_mean(image, axis=[-3, -2]), tf.constant(_LUMA), 1)
    contrast = per_image(contrast)
    image = tf.clip_by_value(image * contrast + (1.0 - contrast) * per_image(mean), 0.0, 255.0)
    saturation = per_image(saturation)
    return tf.clip_by_value(image * saturation + (1.0 - saturation) * _gray(image), 0.0, 255.0)


def color_jitter(image: tf.Tensor, seed: tf.Tensor, strength: float) -> tf.Tensor:
    """adjust_colour with each factor uniform in [1 - strength, 1 + strength].

    torchvision shuffles the order of the three per image; a fixed order keeps this simple and the
    factors' distributions are the same.
    """
    return adjust_colour(image, *tf.unstack(_uniform(seed, [3], 1.0 - strength, 1.0 + strength)))


def random_erasing(image: tf.Tensor, seed: tf.Tensor,
                   area_range: tuple[float, float] = (0.02, 0.2),
                   aspect_range: tuple[float, float] = (0.3, 3.33),
                   fill: tuple[float, float, float] = IMAGENET_MEAN) -> tf.Tensor:
    """Zhong et al. random erasing of one rectangle (the caller decides whether to erase at all).

    Area fraction and aspect h/w are uniform in their ranges; the first of several draws that fits
    strictly inside the image is filled with `fill`; if none fits the image is unchanged.
    """
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    seeds = tf.random.experimental.stateless_split(seed, 2)
    heights, widths = _rect_candidates(seeds[0], tf.cast(height * width, tf.float32),
                                       area_range, aspect_range, _ERASE_TRIES)
    found, h, w = _first_fit(heights, widths, (heights < height) & (widths < width))
    offsets = _uniform(seeds[1], [2])
    top, left = _offset(offsets[0], height - h), _offset(offsets[1], width - w)
    h, w = tf.where(found, h, 0), tf.where(found, w, 0)  # an empty rectangle: no change
    # Writing only the rectangle is about 4x faster here than a whole-image select.
    return tf.raw_ops.TensorStridedSliceUpdate(
        input=image, begin=tf.stack([top, left, 0]), end=tf.stack([top + h, left + w, 3]),
        strides=[1, 1, 1], value=tf.broadcast_to(tf.constant(fill, tf.float32), [h, w, 3]))


def augment_image(image: tf.Tensor, seed: tf.Tensor, image_size: tuple[int, int],
                  config: AugmentConfig) -> tf.Tensor:
    """Augments one decoded image of any size into a float32 [0, 255] image of image_size.

    Args:
        image: (h, w, 3) RGB, any numeric dtype in [0, 255].
        seed: int64 (2,) stateless seed (see sample_seed); equal seeds give equal outputs.
        image_size: output (height, width).
        config: which ops to apply and their ranges.

    Returns:
        float32 (height, width, 3) in [0, 255].
    """
    image = tf.cast(image, tf.float32)
    seeds = tf.random.experimental.stateless_split(seed, _NUM_OPS)
    if config.crop == "resized":
        image = resized_rect_crop(image, seeds[0], image_size, config.crop_area, config.crop_aspect)
    else:
        image = tf.image.resize(image, image_size, method="bilinear")
        if config.crop == "pad" and config.crop_padding > 0:
            image = pad_crop(image, seeds[0], config.crop_padding)
    # tf.cond rather than tf.where: the skipped branch costs nothing (about a third of the time
    # of the whole augmentation on a 2-core CPU).
    if config.flip > 0:
        image = tf.cond(_uniform(seeds[1], []) < config.flip,
                        lambda: tf.reverse(image, axis=[1]), lambda: image)
    if config.rotation > 0:
        image = rotate(image, _uniform(seeds[2], [], -config.rotation, config.rotation))
    if config.color_jitter > 0:
        image = color_jitter(image, seeds[3], config.color_jitter)
    if config.random_erasing > 0:
        image = tf.cond(_uniform(seeds[5], []) < config.random_erasing,
                        lambda: random_erasing(image, seeds[4], config.erasing_area,
                                               config.erasing_aspect),
                        lambda: image)
    image = tf.clip_by_value(image, 0.0, 255.0)
    return tf.ensure_shape(image, (*image_size, 3))



def augment_params(image_shape: tf.Tensor, seed: tf.Tensor, image_size: tuple[int, int],
                   config: AugmentConfig) -> dict[str, tf.Tensor]:
    """The random draws augment_image makes for one image, from the same seed.

    Stateless random ops do not vectorise over per-image seeds, so the draws (a few scalars)
    are made per image, on the host; augment_batch then does the pixel work batched.

    Args:
        image_shape: int (2,), (h, w) of the decoded image.
        seed: int64 (2,) stateless seed (see sample_seed).
        image_size: output (height, width).
        config: as augment_image.

    Returns:
        {'crop': int32 (4,) top, left, h, w of the region resized to image_size; 'shift':
        int32 (2,) the pad crop's offsets in [0, 2 * crop_padding]; 'flip': bool; 'angle':
        float32 degrees; 'colour': float32 (3,) brightness, contrast, saturation factors;
        'erase': int32 (4,) top, left, h, w of the erased rectangle (h = w = 0: none)}.
    """
    height, width = tf.unstack(tf.cast(image_shape, tf.int32))
    seeds = tf.random.experimental.stateless_split(seed, _NUM_OPS)
    params = {"crop": tf.stack([0, 0, height, width]), "shift": tf.zeros([2], tf.int32),
              "flip": tf.constant(False), "angle": tf.constant(0.0),
              "colour": tf.ones([3]), "erase": tf.zeros([4], tf.int32)}
    if config.crop == "resized":
        crop_seeds = tf.random.experimental.stateless_split(seeds[0], 2)
        heights, widths = _rect_candidates(crop_seeds[0], tf.cast(height * width, tf.float32),
                                           config.crop_area, config.crop_aspect, _CROP_TRIES)
        found, h, w = _first_fit(heights, widths, (heights <= height) & (widths <= width))
        h, w = tf.where(found, h, height), tf.where(found, w, width)
        offsets = _uniform(crop_seeds[1], [2])
        params["crop"] = tf.stack([_offset(offsets[0], height - h),
                                   _offset(offsets[1], width - w), h, w])
    elif config.crop == "pad" and config.crop_padding > 0:
        u = _uniform(seeds[0], [2])
        room = tf.constant(2 * config.crop_padding)
        params["shift"] = tf.stack([_offset(u[0], room), _offset(u[1], room)])
    if config.flip > 0:
        params["flip"] = _uniform(seeds[1], []) < config.flip
    if config.rotation > 0:
        params["angle"] = _uniform(seeds[2], [], -config.rotation, config.rotation)
    if config.color_jitter > 0:
        params["colour"] = _uniform(seeds[3], [3], 1.0 - config.color_jitter,
                                    1.0 + config.color_jitter)
    if config.random_erasing > 0:
        out_height, out_width = image_size
        erase_seeds = tf.random.experimental.stateless_split(seeds[4], 2)
        heights, widths = _rect_candidates(erase_seeds[0], float(out_height * out_width),
                                           config.erasing_area, config.erasing_aspect,
                                           _ERASE_TRIES)
        found, h, w = _first_fit(heights, widths, (heights < out_height) & (widths < out_width))
        offsets = _uniform(erase_seeds[1], [2])
        top, left = _offset(offsets[0], out_height - h), _offset(offsets[1], out_width - w)
        found &= _uniform(seeds[5], []) < config.random_erasing
        params["erase"] = tf.stack([top, left, tf.where(found, h, 0), tf.where(found, w, 0)])
    return params


def _source_pixels(start: tf.Tensor, length: tf.Tensor,
                   size: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Bilinear (half-pixel) source rows of `size` outputs from `length` inputs at `start`.

    The arithmetic of TensorFlow's resize kernel: source = (i + 0.5) * length / size - 0.5,
    neighbours clamped to the region.

    Returns:
        (lower, upper, weight of upper): (B, size) each.
    """
    scale = tf.cast(length, tf.float32) / float(size)
    source = (tf.range(size, dtype=tf.float32) + 0.5) * scale[:, tf.newaxis] - 0.5
    floor = tf.floor(source)
    lower = tf.maximum(tf.cast(floor, tf.int32), 0)
    upper = tf.minimum(tf.cast(tf.math.ceil(source), tf.int32), length[:, tf.newaxis] - 1)
    return start[:, tf.newaxis] + lower, start[:, tf.newaxis] + upper, source - floor


def _resize_regions(images: tf.Tensor, regions: tf.Tensor,
                    image_size: tuple[int, int]) -> tf.Tensor:
    """Each image's region (top, left, h, w) resized (bilinear) to image_size, as
    tf.image.resize of the cropped region computes it."""
    top, left, h, w = tf.unstack(regions, axis=1)
    row0, row1, row_weight = _source_pixels(top, h, image_size[0])
    col0, col1, col_weight = _source_pixels(left, w, image_size[1])
    col_weight = col_weight[:, tf.newaxis, :, tf.newaxis]

    def rows_blend(rows):
        rows = tf.gather(images, rows, axis=1, batch_dims=1)
        left_pixels = tf.gather(rows, col0, axis=2, batch_dims=1)
        return left_pixels + (tf.gather(rows, col1, axis=2, batch_dims=1) - left_pixels) * col_weight

    upper_rows = rows_blend(row0)
    return upper_rows + (rows_blend(row1) - upper_rows) * row_weight[:, :, tf.newaxis, tf.newaxis]


def _shift_images(images: tf.Tensor, shifts: tf.Tensor, pad: int) -> tf.Tensor:
    """pad_crop of each image: output (i, j) is input (i + dy - pad, j + dx - pad), else zero."""
    height, width = images.shape[1], images.shape[2]
    rows = tf.range(height)[tf.newaxis] + shifts[:, :1] - pad
    cols = tf.range(width)[tf.newaxis] + shifts[:, 1:] - pad
    inside = (((rows >= 0) & (rows < height))[:, :, tf.newaxis]
              & ((cols >= 0) & (cols < width))[:, tf.newaxis, :])
    moved = tf.gather(tf.gather(images, tf.clip_by_value(rows, 0, height - 1), axis=1,
                                batch_dims=1),
                      tf.clip_by_value(cols, 0, width - 1), axis=2, batch_dims=1)
    return tf.where(inside[..., tf.newaxis], moved, 0.0)


def _erase_rectangles(images: tf.Tensor, rectangles: tf.Tensor) -> tf.Tensor:
    """Fills each image's rectangle (top, left, h, w) with IMAGENET_MEAN."""
    top, left, h, w = (value[:, tf.newaxis] for value in tf.unstack(rectangles, axis=1))
    rows, cols = tf.range(images.shape[1])[tf.newaxis], tf.range(images.shape[2])[tf.newaxis]
    inside = (((rows >= top) & (rows < top + h))[:, :, tf.newaxis]
              & ((cols >= left) & (cols < left + w))[:, tf.newaxis, :])
    return tf.where(inside[..., tf.newaxis], tf.constant(IMAGENET_MEAN, tf.float32), images)


def augment_batch(images: tf.Tensor, params: dict[str, tf.Tensor], image_size: tuple[int, int],
                  config: AugmentConfig) -> tf.Tensor:
    """augment_image on a batch, batched: the same pixels (to float rounding) on any device.

    Every op works on the whole batch with static shapes (no per-image crop of a dynamic size,
    which on a GPU would stop for the crop's size on the host for every image).

    Args:
        images: (B, h_max, w_max, 3) decoded images, any numeric dtype in [0, 255], each
            zero-padded at the bottom and right.
        params: augment_params of each image, stacked: each value with a leading B axis.
        image_size: output (height, width).
        config: as augment_image.

    Returns:
        float32 (B, height, width, 3) in [0, 255].
    """
    size = tuple(int(v) for v in image_size)
    images = _resize_regions(tf.cast(images, tf.float32), tf.cast(params["crop"], tf.int32), size)
    if config.crop == "pad" and config.crop_padding > 0:
        images = _shift_images(images, tf.cast(params["shift"], tf.int32), config.crop_padding)
    if config.flip > 0:
        images = tf.where(params["flip"][:, tf.newaxis, tf.newaxis, tf.newaxis],
                          tf.reverse(images, axis=[2]), images)
    if config.rotation > 0:
        images = _rotate_images(images, params["angle"])
    if config.color_jitter > 0:
        images = adjust_colour(images, *tf.unstack(params["colour"], axis=1))
    if config.random_erasing > 0:
        images = _erase_rectangles(images, tf.cast(params["erase"], tf.int32))
    return tf.ensure_shape(tf.clip_by_value(images, 0.0, 255.0), (None, *size, 3))
