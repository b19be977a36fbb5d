"""Decode once: the training images as decoded uint8 pixels in host memory, looked up by file.

Augmentation crops from the decoded image at its own size (mlc_tf.data.augment), so the cache
keeps each image as decoded, not resized: an epoch read from it is bit for bit the epoch read
from the files. Market-1501's 12,936 crops of 128x64 take 318 MB; with its CamStyle views
(6 per image) 1.9 GB.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

__all__ = ["DecodedImages", "decode_all", "for_training", "MODES"]

MODES = ("auto", "memory", "none")


class DecodedImages:
    """Decoded RGB uint8 images of a set of files, concatenated in one flat host buffer."""

    def __init__(self, files: Sequence[str], pixels: np.ndarray, shapes: np.ndarray):
        """Keeps the pixels on the host CPU.

        Args:
            files: the decoded files, distinct.
            pixels: uint8 (P,), the images' (h, w, 3) pixels one after another, in file order.
            shapes: int (len(files), 2), (h, w) of each image.

        Raises:
            ValueError: repeated files, or pixels and shapes that disagree.
        """
        shapes = np.asarray(shapes, np.int64).reshape(-1, 2)
        sizes = shapes[:, 0] * shapes[:, 1] * 3
        if len(shapes) != len(files) or sizes.sum() != len(pixels):
            raise ValueError(f"{len(files)} files, {len(shapes)} shapes and {len(pixels)} pixel "
                             f"bytes (the shapes need {sizes.sum()}) do not agree")
        self._rows = {path: row for row, path in enumerate(files)}
        if len(self._rows) != len(files):
            raise ValueError("files must be distinct")
        self.nbytes = int(len(pixels))
        self.max_shape = tuple(int(v) for v in shapes.max(axis=0)) if len(shapes) else (0, 0)
        with tf.device("/cpu:0"):
            self._pixels = tf.constant(pixels, tf.uint8)
            self._starts = tf.constant(np.concatenate([[0], np.cumsum(sizes)[:-1]]), tf.int64)
            self._shapes = tf.constant(shapes, tf.int64)

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self, files: Sequence[str]) -> np.ndarray:
        """int32 (len(files),) row of each file, for image().

        Raises:
            ValueError: naming a file the cache does not hold.
        """
        try:
            return np.array([self._rows[path] for path in files], np.int32)
        except KeyError as error:
            raise ValueError(f"{error.args[0]} is not among the {len(self)} decoded images") \
                from None

    def image(self, row: tf.Tensor) -> tf.Tensor:
        """uint8 (h, w, 3): the decoded image of a scalar int32 row."""
        shape = self._shapes[row]
        size = shape[0] * shape[1] * 3
        flat = self._pixels[self._starts[row]:self._starts[row] + size]
        return tf.reshape(flat, tf.concat([shape, [3]], axis=0))


Decoder = Callable[[tf.Tensor], tf.Tensor]


def decode_all(files: Sequence[str], decode: Decoder, *,
               budget_bytes: int | None = None) -> DecodedImages | None:
    """Decodes every file once (in parallel, through tf.data) into a DecodedImages.

    Args:
        files: image files; repeats are decoded once.
        decode: scalar string path -> uint8 (h, w, 3), the decoder of the uncached pipeline.
        budget_bytes: stop and return None as soon as the pixels exceed this; None = no limit.

    Returns:
        the cache, or None when the images do not fit budget_bytes.
    """
    files = list(dict.fromkeys(files))
    decoded = (tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string))
               .map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .prefetch(tf.data.AUTOTUNE))
    chunks, shapes, total = [], [], 0
    for image in decoded.as_numpy_iterator():
        total += image.size
        if budget_bytes is not None and total > budget_bytes:
            return None
        chunks.append(image.reshape(-1))
        shapes.append(image.shape[:2])
    pixels = np.concatenate(chunks) if chunks else np.zeros([0], np.uint8)
    del chunks  # building the tensor takes two more copies for a moment (peak 3x the pixels)
    return DecodedImages(files, pixels, np.asarray(shapes, np.int64).reshape(-1, 2))


def for_training(mode: str, files: Sequence[str], decode: Decoder,
                 budget_bytes: int) -> DecodedImages | None:
    """The cache that mode asks for: 'memory' (must fit), 'auto' (if it fits) or 'none'.

    Args:
        mode: one of MODES.
        files: every file an epoch may read (originals and CamStyle views).
        decode: as decode_all.
        budget_bytes: the most host memory the pixels may take.

    Returns:
        the cache, or None ('none', or 'auto' when the images do not fit: decoded per epoch).

    Raises:
        ValueError: an unknown mode, or 'memory' when the images do not fit.
    """
    if mode not in MODES:
        raise ValueError(f"decode_cache={mode!r}; expected one of {MODES}")
    if mode == "none":
        return None
    cache = decode_all(files, decode, budget_bytes=budget_bytes)
    if cache is None and mode == "memory":
        raise ValueError(f"the {len(set(files))} decoded training images exceed the budget of "
                         f"{budget_bytes} bytes; raise --decode_cache_gib or use "
                         "--decode_cache=auto")
    return cache
