"""Starting a model from one of this project's own runs (--init_from): a workdir or an export.

The weights of every layer, the BN neck included, are read from the source and copied into
the new model by layer name, so the input image size may differ. The source is a workdir
(config.json and checkpoints/, whose newest readable checkpoint is read by restoring it into a
model built from config.json; a damaged newer one is skipped with a warning) or an export (read
from the SavedModel's own variables, whose names are the Keras variable paths
'layer/variable'). Only the network is read: the classifier,
memory bank and optimizer state of the source are not. A source of another architecture is
refused, naming the difference, before anything is assigned.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import tensorflow as tf

from mlc_tf import checkpointing
from mlc_tf import config as config_lib
from mlc_tf import export as export_lib
from mlc_tf import model as model_lib

# describe_model entries that must agree; the others (image size, pooling) change no shapes.
# Preprocessing changes no shapes, but weights trained on caffe inputs are wrong on torch inputs.
MATCHED_OPTIONS = ("backbone", "multiscale", "feature_dim", "preprocessing")


def load_initial_weights(model: keras.Model, path: str) -> dict:
    """Copies the network weights of a workdir's newest readable checkpoint or of an export.

    Args:
        model: a model built by model.build_model, any image size.
        path: a workdir of mlc_tf.train (config.json + checkpoints/) or a folder written by
            export.export_feature_extractor.

    Returns:
        {'kind': 'workdir' or 'export', 'path': the source folder, 'checkpoint': the
        checkpoint prefix or the export folder, 'epoch': completed epochs of the source
        (None if unknown), 'layers': number of layers loaded}.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: `path` is neither a workdir with a checkpoint nor an export; the source
            has another architecture (naming each difference) or other layers or shapes; or
            `model` was not built by build_model. Nothing is assigned then.
        checkpointing.CheckpointReadError: no checkpoint of the workdir can be read.
    """
    target = model_lib.describe_model(model)
    path = os.path.abspath(path)
    kind = _source_kind(path)
    if kind == "workdir":
        options, weights, checkpoint, epoch = _read_workdir(path)
    else:
        options, weights, checkpoint, epoch = _read_export(path)
    differences = [f"{key} {options.get(key)!r} there, {target[key]!r} here"
                   for key in MATCHED_OPTIONS if options.get(key) != target[key]]
    if options.get("preprocessing") != target["preprocessing"]:
        differences.append("build the model with the source's preprocessing "
                           "(build_model(preprocessing=source_preprocessing(path)))")
    if differences:
        raise ValueError(f"init_from {path}: " + "; ".join(differences))
    layers = model_lib.assign_by_name(model, weights, f"init_from {path}", skip_layers=())
    return {"kind": kind, "path": path, "checkpoint": checkpoint, "epoch": epoch,
            "layers": layers}


def source_preprocessing(path: str) -> str:
    """The input preprocessing ('caffe' or 'torch') of the run at path, to build a model with.

    Raises:
        FileNotFoundError, ValueError: as load_initial_weights, for a path that is no run.
    """
    path = os.path.abspath(path)
    if _source_kind(path) == "workdir":
        run_config = config_lib.load_json(os.path.join(path, checkpointing.CONFIG_FILE))
        return model_lib.preprocessing_mode(run_config.model.pretrained)
    with open(os.path.join(path, export_lib.METADATA_FILE)) as handle:
        return json.load(handle).get("preprocessing", "torch")


def _source_kind(path: str) -> str:
    expected = (f"init_from={path!r} must be a training workdir ({checkpointing.CONFIG_FILE} "
                f"and at least one checkpoint in {checkpointing.CHECKPOINT_DIR}/) or an export "
                f"(saved_model.pb and {export_lib.METADATA_FILE})")
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{expected}; it does not exist")
    if os.path.isfile(os.path.join(path, checkpointing.CONFIG_FILE)):
        checkpoints = os.path.join(path, checkpointing.CHECKPOINT_DIR)
        if not checkpointing.checkpoint_candidates(checkpoints):
            raise ValueError(f"{expected}; it has {checkpointing.CONFIG_FILE} but no checkpoint")
        return "workdir"
    if all(os.path.isfile(os.path.join(path, name))
           for name in ("saved_model.pb", export_lib.METADATA_FILE)):
        return "export"
    raise ValueError(f"{expected}; it holds {sorted(os.listdir(path))[:8]}")


def _read_workdir(path: str):
    """Returns (describe_model options, layer weights, checkpoint prefix, epoch) of a workdir."""
    run_config = config_lib.load_json(os.path.join(path, checkpointing.CONFIG_FILE))
    checkpoint, _ = checkpointing.read_newest(
        os.path.join(path, checkpointing.CHECKPOINT_DIR),
        lambda prefix: checkpointing.read_every_tensor(tf.train.load_checkpoint(prefix)),
        "init_from uses")
    # A checkpoint restores by object structure, so rebuild the network it was saved from.
    source = model_lib.build_model(
        backbone=run_config.model.backbone, image_size=run_config.data.image_size,
        multiscale=run_config.model.multiscale, pooling=run_config.model.pooling,
        pretrained="none")
    try:
        # expect_partial: the optimizers, memory, classifier and run state are not read.
        status = tf.train.Checkpoint(model=source).restore(checkpoint).expect_partial()
        status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as err:
        raise ValueError(f"init_from {path}: checkpoint {checkpoint} does not hold the network "
                         f"that {checkpointing.CONFIG_FILE} describes ({err})") from None
    # Checkpointer.save numbers each checkpoint by its completed epochs.
    epoch = int(checkpoint.rsplit("-", 1)[-1])
    # The run's own inputs, which a network built without its ImageNet weights does not have.
    options = {**model_lib.describe_model(source),
               "preprocessing": model_lib.preprocessing_mode(run_config.model.pretrained)}
    return options, model_lib.layer_weights(source), checkpoint, epoch


def _read_export(path: str):
    """Returns (describe_model options, layer weights, export folder, epoch) of an export."""
    with open(os.path.join(path, export_lib.METADATA_FILE)) as handle:
        metadata = json.load(handle)
    if "backbone" not in metadata:
        raise ValueError(f"init_from {path}: the export's {export_lib.METADATA_FILE} does not "
                         "describe a network of mlc_tf.model.build_model (no 'backbone')")
    loaded = tf.saved_model.load(path)
    weights: dict[str, dict[str, np.ndarray]] = {}
    for variable in loaded.variables:
        # Keras creates each variable of a layer as the tf.Variable 'layer/variable:0'.
        scope, _, name = variable.name.split(":")[0].rpartition("/")
        layer = scope.rsplit("/", 1)[-1]
        if not layer or name in weights.get(layer, {}):
            raise ValueError(f"init_from {path}: the SavedModel variable {variable.name!r} "
                             "does not name one Keras layer weight")
        weights.setdefault(layer, {})[name] = variable.numpy()
    return metadata, weights, path, metadata.get("trained_epochs")
