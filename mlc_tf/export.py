"""SavedModel export of the feature extractor: uint8 images in, L2-normalised features out."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from mlc_tf import model as model_lib

METADATA_FILE = "mlc_metadata.json"
ENDPOINT = "serve"
METADATA_ENDPOINT = "metadata"


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A reloaded export. Holds the loaded object so its functions stay alive.

    Attributes:
        loaded: what tf.saved_model.load returned.
        metadata: the export's metadata ({} for a SavedModel not written by this module).
    """

    loaded: object
    metadata: dict

    def __call__(self, images) -> np.ndarray:
        """Features of a batch.

        Args:
            images: uint8 RGB (B, H, W, 3), any H and W.

        Returns:
            float32 (B, D), each row of unit L2 norm.

        Raises:
            TypeError: images are not uint8.
        """
        images = tf.convert_to_tensor(images)
        if images.dtype != tf.uint8:
            # A float batch could be [0, 1] or [0, 255]; refuse rather than guess.
            raise TypeError(f"images must be uint8 RGB, got {images.dtype.name}")
        return _serving_function(self.loaded)(images=images)["features"].numpy()


def export_feature_extractor(model: keras.Model, path: str, *,
                             image_size: Sequence[int] | None = None, feature: str = "pooled",
                             metadata: dict | None = None) -> str:
    """Writes a SavedModel whose 'serve' (= serving_default) endpoint maps images to features.

    The endpoint takes uint8 RGB 'images' (None, None, None, 3), casts to float32, resizes
    bilinearly to image_size, runs the model in inference mode and returns
    {'features': L2-normalised float32 (B, D)} of the chosen output. The metadata is written
    to METADATA_FILE inside the directory and is also returned by the 'metadata' endpoint
    (a JSON string), so a deployment needs nothing from this project. The export is written
    to a temporary sibling directory and renamed into place, so a failure leaves any earlier
    export at `path` untouched.

    Args:
        model: Keras model returning a dict holding `feature` (as build_model does) or a
            single (B, D) tensor.
        path: output directory. It must not exist, be empty, or hold a SavedModel.
        image_size: (height, width) fed to the model; defaults to the model's input size.
        feature: 'pooled' (pre-BN f_all, the evaluation default) or 'neck' (after the BN).
        metadata: extra JSON-serialisable entries, e.g. {'test_set_selected': False}.

    Returns:
        path.

    Raises:
        ValueError: bad feature, image_size, metadata, or a `path` that holds something other
            than a SavedModel.
    """
    image_size = _check_image_size(model, image_size)
    if feature not in ("pooled", "neck"):
        raise ValueError(f"feature must be 'pooled' or 'neck', got {feature!r}")
    sample = model(tf.zeros((1, *image_size, 3)), training=False)
    if isinstance(sample, dict):
        if feature not in sample:
            raise ValueError(f"model outputs {sorted(sample)}, not {feature!r}")
        dim = int(sample[feature].shape[-1])
    else:
        dim = int(sample.shape[-1])
    info = _metadata(model, image_size, feature, dim, metadata or {})
    path = os.path.abspath(path)
    if os.path.exists(path) and os.listdir(path) and not _is_saved_model(path):
        raise ValueError(f"{path} exists and is not a SavedModel; refusing to replace it")

    def serve(images):
        pixels = tf.image.resize(tf.cast(images, tf.float32), image_size, method="bilinear")
        outputs = model(pixels, training=False)
        features = outputs[feature] if isinstance(outputs, dict) else outputs
        return {"features": tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1)}

    info_json = json.dumps(info, sort_keys=True)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(ENDPOINT, serve, input_signature=[
        tf.TensorSpec((None, None, None, 3), tf.uint8, name="images")])
    archive.add_endpoint(METADATA_ENDPOINT, lambda: tf.constant(info_json), input_signature=[])

    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        archive.write_out(staging, verbose=False)
        with open(os.path.join(staging, METADATA_FILE), "w") as handle:
            handle.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
        _replace_dir(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def load_feature_extractor(path: str) -> FeatureExtractor:
    """Loads an export written by export_feature_extractor (or any SavedModel with 'serve').

    Raises:
        FileNotFoundError: `path` is not a SavedModel directory.
        ValueError: the SavedModel has neither a 'serve' function nor a serving_default
            signature taking 'images' and returning 'features'.
    """
    if not _is_saved_model(path):
        raise FileNotFoundError(f"{path} is not a SavedModel directory (no saved_model.pb)")
    loaded = tf.saved_model.load(path)
    try:
        _serving_function(loaded)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    metadata_path = os.path.join(path, METADATA_FILE)
    metadata = {}
    if os.path.isfile(metadata_path):
        with open(metadata_path) as handle:
            metadata = json.load(handle)
    return FeatureExtractor(loaded=loaded, metadata=metadata)


def _serving_function(loaded):
    signature = getattr(loaded, "signatures", {}).get("serving_default")
    if signature is not None:
        inputs = signature.structured_input_signature[1]
        if "images" in inputs and "features" in signature.structured_outputs:
            return signature
    raise ValueError("no serving_default signature mapping 'images' to 'features'")


def _check_image_size(model: keras.Model, image_size) -> tuple[int, int]:
    model_size = tuple(model.input_shape[1:3])
    if image_size is None:
        if None in model_size:
            raise ValueError("the model takes any image size; pass image_size")
        image_size = model_size
    if len(image_size) != 2 or any(int(v) <= 0 for v in image_size):
        raise ValueError(f"image_size must be (height, width) > 0, got {image_size}")
    image_size = (int(image_size[0]), int(image_size[1]))
    if None not in model_size and image_size != model_size:
        raise ValueError(f"image_size {image_size} differs from the model input {model_size}")
    return image_size


def _metadata(model, image_size, feature, dim, extra: dict) -> dict:
    try:
        info = model_lib.describe_model(model)
    except ValueError:
        info = {}  # any Keras model can be exported; only build_model's options are known
    info.update(image_size=list(image_size), feature=feature, feature_dim=dim,
                input="uint8 RGB (B, H, W, 3), resized bilinearly to image_size",
                output="features: float32 (B, feature_dim), L2-normalised")
    clashes = sorted(k for k in extra if k in info and extra[k] != info[k])
    if clashes:
        raise ValueError(f"metadata entries {clashes} contradict the exported model")
    info.update(extra)
    try:
        json.dumps(info)
    except TypeError as err:
        raise ValueError(f"metadata must be JSON-serialisable: {err}") from err
    return info


def _is_saved_model(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def _replace_dir(source: str, target: str) -> None:
    """Moves `source` to `target`, replacing an existing export only once `source` is whole."""
    if not os.path.exists(target):
        os.rename(source, target)
        return
    backup = tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.old-",
                              dir=os.path.dirname(target))
    os.rmdir(backup)
    os.rename(target, backup)
    try:
        os.rename(source, target)
    except OSError:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
