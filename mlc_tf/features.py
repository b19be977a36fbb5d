"""Feature extraction through an exported SavedModel, batch by batch, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf


def _decode_uint8(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image = tf.image.resize(image, image_size)
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def extract_features(extractor: Callable[[np.ndarray], np.ndarray], paths: Sequence[str], *,
                     image_size: Sequence[int], batch_size: int = 128,
                     progress: bool = False) -> np.ndarray:
    """Features of the images at paths, in order.

    Images are decoded to uint8 RGB and resized to image_size (the export's own size, so its
    in-graph resize is the identity), then fed through extractor in batches.

    Args:
        extractor: maps uint8 (B, H, W, 3) to float (B, D), e.g. an
            mlc_tf.export.FeatureExtractor.
        paths: image files.
        image_size: (height, width).
        batch_size: images per call.
        progress: show a progress bar.

    Returns:
        float32 (len(paths), D).

    Raises:
        ValueError: paths is empty.
    """
    if not paths:
        raise ValueError("no images to extract features from")
    size = tuple(int(v) for v in image_size)
    dataset = (tf.data.Dataset.from_tensor_slices(list(paths))
               .map(lambda p: _decode_uint8(p, size), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
               .batch(batch_size).prefetch(tf.data.AUTOTUNE))
    bar = keras.utils.Progbar(len(paths), unit_name="image") if progress else None
    chunks = []
    for images in dataset:
        chunks.append(np.asarray(extractor(images), np.float32))
        if bar is not None:
            bar.add(len(chunks[-1]))
    return np.concatenate(chunks)
