"""tf.data input pipelines: in-order evaluation, seeded one-epoch training and PK batches.

Images are decoded inside the graph. Before decoding, a cheap check of the file's signature (and,
for JPEG, of its end-of-image marker) makes iteration fail with an InvalidArgumentError naming
the file when it is empty, truncated or not an image; damage inside a complete file still fails
with TensorFlow's decode error, which does not name it. The dataset readers check every image
up front (mlc_tf.data.datasets, `verify_images=True` / `skip_corrupt=True`).

Training epochs read the files, or a DecodedImages cache of them (decode_images: the same pixels,
decoded once). They augment on the input side (augment_on='input'), or leave the augmentation to
the training step (augment_on='device': device_augmentation runs it in the replica context).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from mlc_tf.config import AugmentConfig
from mlc_tf.data import decode_cache, sampler
from mlc_tf.data.augment import augment_batch, augment_image, augment_params, sample_seed

__all__ = ["load_image", "make_eval_dataset", "make_train_dataset", "make_pk_dataset",
           "train_steps_per_epoch", "pk_steps_per_epoch", "decode_images",
           "device_augmentation", "AUGMENT_ON"]

AUGMENT_ON = ("input", "device")

# Stream tags mixed into the NumPy seeds so the samplers never share a random stream.
_ORDER_STREAM, _PK_STREAM, _CAMSTYLE_STREAM = 0, 1, 2
# Leading bytes of the formats tf.io.decode_image reads (JPEG XL aside).
_JPEG = b"\xff\xd8\xff"
_OTHER_SIGNATURES = (b"\x89PNG", b"GIF8", b"BM", b"RIFF")
# A complete JPEG ends with the FF D9 marker, possibly followed by padding. Entropy-coded data
# never holds FF D9, so a truncated file has none in its tail. The window is wider than the
# 64 bytes mlc_tf.data.datasets looks at, so every file the reader accepts passes here too.
_JPEG_TAIL_BYTES = 1024


def _read_checked(path: tf.Tensor) -> tf.Tensor:
    """The bytes of an image file, with an assertion naming the file if they are not an image."""
    contents = tf.io.read_file(path)
    known = tf.reduce_any([tf.strings.substr(contents, 0, len(sig)) == sig
                           for sig in _OTHER_SIGNATURES])
    tail_start = tf.maximum(tf.strings.length(contents) - _JPEG_TAIL_BYTES, 0)
    tail = tf.io.decode_raw(tf.strings.substr(contents, tail_start, _JPEG_TAIL_BYTES), tf.uint8)
    complete_jpeg = (tf.strings.substr(contents, 0, len(_JPEG)) == _JPEG) & tf.reduce_any(
        (tail[:-1] == 0xFF) & (tail[1:] == 0xD9))
    check = tf.debugging.Assert(
        known | complete_jpeg,
        ["empty, truncated or corrupt image file (not a complete JPEG, PNG, GIF, BMP or WebP):",
         path])
    with tf.control_dependencies([check]):
        return tf.identity(contents)


def _decode(path: tf.Tensor) -> tf.Tensor:
    return tf.io.decode_image(_read_checked(path), channels=3, expand_animations=False)


def load_image(path: tf.Tensor, image_size: tuple[int, int]) -> tf.Tensor:
    """Reads one image file as float32 RGB in [0, 255], resized (bilinear) to image_size.

    Args:
        path: scalar string tensor.
        image_size: (height, width).

    Returns:
        float32 (height, width, 3).
    """
    image = tf.image.resize(tf.cast(_decode(path), tf.float32), image_size, method="bilinear")
    return tf.ensure_shape(image, (*image_size, 3))


def make_eval_dataset(paths: Sequence[str], image_size: tuple[int, int],
                      batch_size: int) -> tf.data.Dataset:
    """Images in the order of paths, without augmentation, in batches (the last may be short).

    Each image is resized (bilinear) and rounded to uint8: the pixels an exported feature
    extractor's serving signature receives.

    Returns:
        Dataset of uint8 (B, height, width, 3).
    """
    size = tuple(int(v) for v in image_size)

    def load(path):
        return tf.cast(tf.clip_by_value(tf.round(load_image(path, size)), 0.0, 255.0), tf.uint8)

    return (tf.data.Dataset.from_tensor_slices(tf.constant(list(paths), tf.string))
            .map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


def train_steps_per_epoch(num_samples: int, batch_size: int) -> int:
    """Batches yielded by make_train_dataset: floor(num_samples / batch_size)."""
    return num_samples // batch_size


def pk_steps_per_epoch(pseudo_labels: np.ndarray, batch_size: int) -> int:
    """Batches yielded by make_pk_dataset: ceil(labelled samples / batch_size)."""
    return sampler.pk_num_batches(pseudo_labels, batch_size)


def _augmented_batches(paths: list[str], camids: np.ndarray, indices: np.ndarray,
                       labels: np.ndarray | None, *, image_size: tuple[int, int],
                       batch_size: int, seed: int, epoch: int, augment: AugmentConfig,
                       decoded: decode_cache.DecodedImages | None,
                       augment_on: str, shard: tuple[int, int] = (0, 1),
                       skip_batches: int = 0) -> tf.data.Dataset:
    """Decodes (or looks up) and augments samples already in epoch order; the position seeds
    each image. With augment_on='device' the batch holds the decoded images and the
    augmentation's draws from their seeds.

    With shard (i, n) only the i-th of n consecutive equal parts of every batch is decoded
    and yielded (a worker's part of the global batch). The first skip_batches batches are
    left out before anything is read.
    """
    if augment_on not in AUGMENT_ON:
        raise ValueError(f"augment_on={augment_on!r}; expected one of {AUGMENT_ON}")
    size = tuple(int(v) for v in image_size)
    columns = {"index": tf.constant(indices, tf.int32), "camid": tf.constant(camids, tf.int32),
               "position": tf.range(len(paths), dtype=tf.int64)}
    if decoded is None:
        columns["path"] = tf.constant(paths, tf.string)
    else:
        columns["row"] = tf.constant(decoded.rows(paths), tf.int32)
    if labels is not None:
        columns["label"] = tf.constant(labels, tf.int32)

    def load(sample):
        image = _decode(sample.pop("path")) if decoded is None else decoded.image(sample.pop("row"))
        image_seed = sample_seed(seed, epoch, sample.pop("position"))
        if augment_on == "device":
            return {"image": image, "augment": augment_params(tf.shape(image)[:2], image_seed,
                                                              size, augment), **sample}
        return {"image": augment_image(image, image_seed, size, augment), **sample}

    if not 0 <= shard[0] < shard[1] or batch_size % shard[1]:
        raise ValueError(f"shard {tuple(shard)} must be (i, n) with 0 <= i < n and n dividing "
                         f"the batch size {batch_size}")
    if skip_batches < 0:
        raise ValueError(f"skip_batches must be >= 0, got {skip_batches}")
    samples = tf.data.Dataset.from_tensor_slices(columns).skip(skip_batches * batch_size)
    if shard[1] > 1:
        part = batch_size // shard[1]
        samples = samples.filter(lambda sample: sample["position"] % batch_size // part
                                 == shard[0])
        batch_size = part
    samples = samples.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # The batch is static (drop_remainder) so MirroredStrategy splits it evenly over replicas.
    # Decoded images of different sizes are zero-padded to the largest of their batch.
    batches = (samples.padded_batch(batch_size, drop_remainder=True) if augment_on == "device"
               else samples.batch(batch_size, drop_remainder=True))
    return batches.prefetch(tf.data.AUTOTUNE)


def device_augmentation(image_size: tuple[int, int],
                        augment: AugmentConfig) -> Callable[[dict], tf.Tensor]:
    """The step-side half of augment_on='device': batch -> float32 (B, H, W, 3) images.

    Call it in the replica context: each sample is augmented by its own seed, so the images do
    not depend on how the global batch is split over replicas.
    """
    size = tuple(int(v) for v in image_size)

    def augment_images(batch: dict) -> tf.Tensor:
        return augment_batch(batch["image"], batch["augment"], size, augment)

    return augment_images


def decode_images(mode: str, paths: Sequence[str],
                  camstyle: Sequence[Sequence[str]] | None = None, *,
                  budget_bytes: int) -> decode_cache.DecodedImages | None:
    """The decode cache of a training set (decode_cache.for_training), CamStyle views included.

    Args:
        mode: 'auto', 'memory' or 'none'.
        paths: image files.
        camstyle: (N, C) view paths of each sample, or None.
        budget_bytes: the most host memory the decoded pixels may take.

    Returns:
        the cache for make_train_dataset / make_pk_dataset, or None (decode every epoch).
    """
    files = list(paths)
    if camstyle is not None:
        files += [view for row in camstyle for view in row]
    return decode_cache.for_training(mode, files, _decode, budget_bytes)


def _epoch_files(paths: np.ndarray, camstyle: np.ndarray | None, order: np.ndarray, seed: int,
                 epoch: int) -> list[str]:
    """The file read for each sample of the epoch order: its own, or a CamStyle view.

    With camstyle (N, C) each position draws a camera uniformly, as MMCL does, and reads that
    camera's view (the original image at its own camera).
    """
    if camstyle is None:
        return list(paths[order])
    rng = np.random.default_rng([seed, epoch, _CAMSTYLE_STREAM])
    return list(camstyle[order, rng.integers(camstyle.shape[1], size=len(order))])


def _check_camstyle(camstyle: Sequence[Sequence[str]] | None,
                    num_samples: int) -> np.ndarray | None:
    """camstyle as an (N, C) object array, or None."""
    if camstyle is None:
        return None
    widths = {len(row) for row in camstyle}
    if len(camstyle) != num_samples or len(widths) != 1 or 0 in widths:
        raise ValueError(f"camstyle must hold one row per sample ({num_samples}), each of the same "
                         f"number (>= 1) of view paths; got {len(camstyle)} rows of "
                         f"{sorted(widths)} paths")
    views = np.empty((num_samples, widths.pop()), dtype=object)
    views[:] = [list(row) for row in camstyle]
    return views


def _check_columns(paths: Sequence[str], camids: Sequence[int],
                   indices: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    paths = np.asarray(list(paths), dtype=object)
    camids = np.asarray(camids, np.int64).reshape(-1)
    indices = np.asarray(indices, np.int64).reshape(-1)
    if not len(paths) == len(camids) == len(indices):
        raise ValueError(f"paths ({len(paths)}), camids ({len(camids)}) and indices "
                         f"({len(indices)}) must have the same length")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("indices must be distinct (each is one memory-bank slot)")
    return paths, camids, indices


def make_train_dataset(paths: Sequence[str], camids: Sequence[int], indices: Sequence[int], *,
                       image_size: tuple[int, int], batch_size: int, seed: int, epoch: int,
                       augment: AugmentConfig,
                       camstyle: Sequence[Sequence[str]] | None = None,
                       decoded: decode_cache.DecodedImages | None = None,
                       augment_on: str = "input",
                       shard: tuple[int, int] = (0, 1),
                       skip_batches: int = 0) -> tf.data.Dataset:
    """One epoch over all samples, each at most once, in an order fixed by (seed, epoch).

    The final partial batch is dropped (static batch shape for MirroredStrategy), so
    train_steps_per_epoch() batches come out; a later epoch's order includes the dropped samples.

    Args:
        paths: image files.
        camids: 0-based camera id of each image.
        indices: memory-bank slot of each image (distinct).
        image_size: (height, width).
        batch_size: global batch size.
        seed: run seed; with epoch, fixes order and augmentation exactly (resumable).
        epoch: 0-based epoch.
        augment: augmentation settings.
        camstyle: (N, C) view paths of each sample (mlc_tf.data.camstyle); each draw of a
            sample reads the view of a camera drawn uniformly, fixed by (seed, epoch). None =
            always the image itself.
        decoded: the decoded images of every file read (decode_images); None = decode the
            files. The batches are the same either way.
        augment_on: 'input' (augment here) or 'device' (device_augmentation, in the step).
        shard: (worker index i, workers n): yield only the i-th of n consecutive equal parts
            of every batch (batch_size / n samples), decoding nothing else.
        skip_batches: leave out the epoch's first batches, reading none of their images (a
            resumed epoch); the rest are unchanged.

    Returns:
        Dataset of {'image': float32 (B, H, W, 3), 'index': int32 (B,), 'camid': int32 (B,)};
        never the true identity. A view keeps its sample's index and camid. With
        augment_on='device', 'image' is the decoded uint8 (B, h, w, 3), zero-padded to the
        batch's largest image, plus 'augment': the augment_params of each image, drawn
        from its seed.

    Raises:
        ValueError: mismatched lengths, repeated indices, fewer samples than batch_size, a
            file decoded lacks, or an unknown augment_on.
    """
    paths, camids, indices = _check_columns(paths, camids, indices)
    camstyle = _check_camstyle(camstyle, len(paths))
    if len(paths) < batch_size:
        raise ValueError(f"{len(paths)} training samples cannot fill one batch of {batch_size}")
    order = np.random.default_rng([seed, epoch, _ORDER_STREAM]).permutation(len(paths))
    order = order[:train_steps_per_epoch(len(paths), batch_size) * batch_size]
    return _augmented_batches(_epoch_files(paths, camstyle, order, seed, epoch), camids[order],
                              indices[order], None,
                              image_size=image_size, batch_size=batch_size, seed=seed,
                              epoch=epoch, augment=augment, decoded=decoded,
                              augment_on=augment_on, shard=shard, skip_batches=skip_batches)


def make_pk_dataset(paths: Sequence[str], camids: Sequence[int], indices: Sequence[int],
                    pseudo_labels: Sequence[int], *, num_instances: int, batch_size: int,
                    image_size: tuple[int, int], seed: int, epoch: int, augment: AugmentConfig,
                    camera_aware: bool = False,
                    camstyle: Sequence[Sequence[str]] | None = None,
                    decoded: decode_cache.DecodedImages | None = None,
                    augment_on: str = "input",
                    shard: tuple[int, int] = (0, 1),
                    skip_batches: int = 0) -> tf.data.Dataset:
    """One epoch of PK batches over the samples with a pseudo label >= 0 (see sampler.pk_batches).

    Every batch is P = batch_size / K clusters x K samples, so every sample has a same-label
    partner in its batch; clusters of fewer than K members are sampled with replacement (a
    repeat gets its own augmentation, seeded by its position). Nearly every labelled sample
    appears once per epoch; pk_steps_per_epoch() batches come out.

    Args:
        paths, camids, indices: as make_train_dataset.
        pseudo_labels: (N,) cluster of each sample, -1 for outliers (never sampled).
        num_instances: K, instances per cluster in a batch.
        batch_size: samples per batch, a multiple of K.
        image_size, seed, epoch, augment: as make_train_dataset.
        camera_aware: mix cameras within each cluster's group of a batch.
        camstyle: as make_train_dataset; a view keeps its sample's pseudo label.
        decoded, augment_on, shard, skip_batches: as make_train_dataset.

    Returns:
        Dataset of the make_train_dataset dict plus 'label': int32 (B,) pseudo label.

    Raises:
        ValueError: mismatched lengths, batch_size not a multiple of K, or no labelled sample.
    """
    paths, camids, indices = _check_columns(paths, camids, indices)
    camstyle = _check_camstyle(camstyle, len(paths))
    labels = np.asarray(pseudo_labels, np.int64).reshape(-1)
    if len(labels) != len(paths):
        raise ValueError(f"pseudo_labels ({len(labels)}) and paths ({len(paths)}) differ in length")
    rng = np.random.default_rng([seed, epoch, _PK_STREAM])
    batches = sampler.pk_batches(labels, camids, num_instances, batch_size, rng, camera_aware)
    order = np.concatenate(batches)
    return _augmented_batches(_epoch_files(paths, camstyle, order, seed, epoch), camids[order],
                              indices[order], labels[order],
                              image_size=image_size, batch_size=batch_size, seed=seed,
                              epoch=epoch, augment=augment, decoded=decoded,
                              augment_on=augment_on, shard=shard, skip_batches=skip_batches)

