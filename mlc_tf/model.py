"""Multi-scale ResNet network of MLC: last stride 1, global/upper/lower pooling, BN neck."""

from __future__ import annotations

import os
from collections.abc import Sequence

import h5py
import keras
import numpy as np
from keras import layers, ops

BACKBONES = ("resnet50", "resnet18")
POOLINGS = ("avg", "max")
# Name of the layer whose output is the conv5 feature map, per backbone.
CONV5_LAYER = {"resnet50": "conv5_block3_out", "resnet18": "conv5_block2_out"}
# Layers trained at the full ("new layer") learning rate; everything else is backbone.
HEAD_LAYER_NAMES = ("bn_neck",)
IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"

_CHANNELS = {"resnet50": 2048, "resnet18": 512}
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def _conv2d(filters: int, size: int, name: str, **options) -> layers.Conv2D:
    """Conv2D with torchvision's ResNet initialisation (He normal, fan_out) for from-scratch runs.

    Each convolution gets its own initializer, whose seed is drawn when it is created: after
    keras.utils.set_random_seed every build is reproducible and no two kernels are equal.
    """
    initializer = keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
    return layers.Conv2D(filters, size, kernel_initializer=initializer, name=name, **options)


@keras.saving.register_keras_serializable(package="mlc_tf")
class Preprocess(layers.Layer):
    """Maps float32 RGB in [0, 255] to what the backbone's weights expect.

    'caffe' (Keras ImageNet ResNet50 weights): RGB -> BGR, subtract the BGR mean.
    'torch' (from scratch): (x / 255 - mean) / std on RGB.
    """

    def __init__(self, mode: str, **kwargs):
        if mode not in ("caffe", "torch"):
            raise ValueError(f"preprocessing mode must be 'caffe' or 'torch', got {mode!r}")
        super().__init__(**kwargs)
        self.mode = mode

    def call(self, images):
        if self.mode == "caffe":
            bgr_mean = ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
            return ops.flip(images, axis=-1) - bgr_mean
        mean = ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
        std = ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
        return (images / 255.0 - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def feature_dim(backbone: str, multiscale: bool) -> int:
    """Length of f_all: C for global-only, 3*C with the upper and lower halves."""
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; expected one of {BACKBONES}")
    return _CHANNELS[backbone] * (3 if multiscale else 1)


def preprocessing_mode(pretrained: str) -> str:
    """Preprocess mode of a network built with `pretrained`: 'caffe' or 'torch'."""
    # The Keras ImageNet weights were trained on caffe-style inputs; from scratch we use the
    # torch convention of the reference codes.
    return "caffe" if pretrained != "none" else "torch"


def build_model(*, backbone: str = "resnet50", image_size: Sequence[int] = (256, 128),
                multiscale: bool = True, pooling: str = "avg", pretrained: str = "none",
                synchronized_bn: bool = False, preprocessing: str | None = None,
                name: str = "mlc") -> keras.Model:
    """Builds the MLC network.

    Args:
        backbone: 'resnet50' (Keras ResNet50 layer names, so ImageNet weights load by name)
            or 'resnet18' (basic blocks, for CPU demos). Both have last stride 1.
        image_size: (height, width) of the float32 RGB [0, 255] input.
        multiscale: concatenate global, upper-half and lower-half pooled features; False
            gives the global feature only ("w/o MN").
        pooling: 'avg' or 'max' pooling for every branch.
        pretrained: 'none', 'imagenet' (downloaded by Keras) or a path to a ResNet50 weights
            file (legacy '.h5', as Keras ships, or Keras 3 '.weights.h5'). resnet50 only.
        synchronized_bn: make every BatchNormalization sync statistics across replicas.
        preprocessing: 'caffe' or 'torch' input normalisation; None = the one `pretrained`
            implies (a warm start takes its source's, see warm_start.source_preprocessing).
        name: model name.

    Returns:
        Functional model mapping (B, H, W, 3) images to {'pooled': f_all (B, D),
        'neck': BN(f_all) (B, D)}, both float32, D = feature_dim(backbone, multiscale).

    Raises:
        ValueError: bad option, input too small for the upper/lower split, or a weights file
            that does not hold matching ResNet50 weights.
        FileNotFoundError: pretrained names a file that does not exist.
        RuntimeError: ImageNet weights could not be fetched.
    """
    height, width = (int(v) for v in image_size)
    feature_dim(backbone, multiscale)  # validates backbone
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pretrained != "none" and backbone != "resnet50":
        raise ValueError(f"pretrained={pretrained!r} needs backbone='resnet50'; "
                         f"{backbone} has no published weights here, use pretrained='none'")
    mode = preprocessing or preprocessing_mode(pretrained)
    # Read the weights first so that a bad source fails before the slow build.
    weights = _read_pretrained(pretrained) if pretrained != "none" else None

    images = keras.Input((height, width, 3), name="images", dtype="float32")
    x = Preprocess(mode, name="preprocess", dtype="float32")(images)
    stem = _resnet50 if backbone == "resnet50" else _resnet18
    fmap = stem(x, synchronized_bn)
    if multiscale and fmap.shape[1] < 2:
        raise ValueError(f"image_size {image_size} gives a conv5 map {fmap.shape[1]} row(s) "
                         "high; the upper/lower split needs at least 2")

    pool_cls = layers.GlobalAveragePooling2D if pooling == "avg" else layers.GlobalMaxPooling2D
    # The head runs in float32 so that mixed-precision training still feeds float32 losses.
    pooled = [pool_cls(name="pool_global", dtype="float32")(fmap)]
    if multiscale:
        rows, half = fmap.shape[1], fmap.shape[1] // 2
        upper = layers.Cropping2D(((0, rows - half), (0, 0)), name="crop_upper")(fmap)
        lower = layers.Cropping2D(((half, 0), (0, 0)), name="crop_lower")(fmap)
        pooled.append(pool_cls(name="pool_upper", dtype="float32")(upper))
        pooled.append(pool_cls(name="pool_lower", dtype="float32")(lower))
        f_all = layers.Concatenate(name="f_all", dtype="float32")(pooled)
    else:
        f_all = layers.Identity(name="f_all", dtype="float32")(pooled[0])
    # PyTorch BatchNorm1d defaults (momentum 0.1 == Keras 0.9, eps 1e-5), as the anchors use.
    neck = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, synchronized=synchronized_bn,
                                     name="bn_neck", dtype="float32")(f_all)
    model = keras.Model(images, {"pooled": f_all, "neck": neck}, name=name)
    if weights is not None:
        assign_by_name(model, weights, pretrained)
    return model


def describe_model(model: keras.Model) -> dict:
    """Reads back the build options of a model made by build_model.

    Returns:
        {'backbone', 'image_size': [H, W], 'multiscale', 'pooling', 'preprocessing',
        'feature_dim'}.

    Raises:
        ValueError: the model was not built by build_model.
    """
    names = {layer.name for layer in model.layers}
    # ResNet50 also has a conv5_block2_out, so look for the deepest conv5 output first.
    backbones = [b for b in BACKBONES if CONV5_LAYER[b] in names]
    if not backbones or not {"preprocess", "pool_global", "bn_neck"} <= names:
        raise ValueError(f"model {model.name!r} was not built by mlc_tf.model.build_model")
    global_pool = model.get_layer("pool_global")
    return {
        "backbone": backbones[0],
        "image_size": [int(model.input_shape[1]), int(model.input_shape[2])],
        "multiscale": "pool_upper" in names,
        "pooling": "avg" if isinstance(global_pool, layers.GlobalAveragePooling2D) else "max",
        "preprocessing": model.get_layer("preprocess").mode,
        "feature_dim": int(model.get_layer("bn_neck").output.shape[-1]),
    }


def head_variables(model: keras.Model) -> list:
    """Trainable variables of the new layers (HEAD_LAYER_NAMES: the BN neck): full lr."""
    return [v for layer in model.layers if layer.name in HEAD_LAYER_NAMES
            for v in layer.trainable_variables]


def backbone_variables(model: keras.Model) -> list:
    """Trainable variables of every other layer (the ResNet): the lower backbone lr."""
    return [v for layer in model.layers if layer.name not in HEAD_LAYER_NAMES
            for v in layer.trainable_variables]


def _batch_norm(x, name: str, synchronized: bool, epsilon: float):
    # momentum 0.9 == PyTorch's 0.1, which the reference codes fine-tune with.
    return layers.BatchNormalization(momentum=0.9, epsilon=epsilon, synchronized=synchronized,
                                     name=name)(x)


def _stem(x, synchronized: bool, epsilon: float, use_bias: bool):
    x = layers.ZeroPadding2D(3, name="conv1_pad")(x)
    x = _conv2d(64, 7, "conv1_conv", strides=2, use_bias=use_bias)(x)
    x = _batch_norm(x, "conv1_bn", synchronized, epsilon)
    x = layers.Activation("relu", name="conv1_relu")(x)
    x = layers.ZeroPadding2D(1, name="pool1_pad")(x)
    return layers.MaxPooling2D(3, strides=2, name="pool1_pool")(x)


def _bottleneck(x, filters: int, stride: int, project: bool, name: str, synchronized: bool):
    """Keras ResNet50 (v1) block: the stride sits on the first 1x1 conv and the shortcut."""
    eps = 1.001e-5  # Keras ResNet50's value, which its ImageNet statistics were saved with
    shortcut = x
    if project:
        shortcut = _conv2d(4 * filters, 1, f"{name}_0_conv", strides=stride)(x)
        shortcut = _batch_norm(shortcut, f"{name}_0_bn", synchronized, eps)
    x = _conv2d(filters, 1, f"{name}_1_conv", strides=stride)(x)
    x = _batch_norm(x, f"{name}_1_bn", synchronized, eps)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv2d(filters, 3, f"{name}_2_conv", padding="same")(x)
    x = _batch_norm(x, f"{name}_2_bn", synchronized, eps)
    x = layers.Activation("relu", name=f"{name}_2_relu")(x)
    x = _conv2d(4 * filters, 1, f"{name}_3_conv")(x)
    x = _batch_norm(x, f"{name}_3_bn", synchronized, eps)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _resnet50(x, synchronized: bool):
    x = _stem(x, synchronized, 1.001e-5, use_bias=True)
    # conv5 keeps stride 1 (last stride 1): at 256x128 its map is 16x8 instead of 8x4.
    for stage, filters, blocks, stride in ((2, 64, 3, 1), (3, 128, 4, 2), (4, 256, 6, 2),
                                           (5, 512, 3, 1)):
        for block in range(1, blocks + 1):
            x = _bottleneck(x, filters, stride if block == 1 else 1, block == 1,
                            f"conv{stage}_block{block}", synchronized)
    return x


def _basic_block(x, filters: int, stride: int, name: str, synchronized: bool):
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = _conv2d(filters, 1, f"{name}_0_conv", strides=stride, use_bias=False)(x)
        shortcut = _batch_norm(shortcut, f"{name}_0_bn", synchronized, 1e-5)
    x = _conv2d(filters, 3, f"{name}_1_conv", strides=stride, padding="same", use_bias=False)(x)
    x = _batch_norm(x, f"{name}_1_bn", synchronized, 1e-5)
    x = layers.Activation("relu", name=f"{name}_1_relu")(x)
    x = _conv2d(filters, 3, f"{name}_2_conv", padding="same", use_bias=False)(x)
    x = _batch_norm(x, f"{name}_2_bn", synchronized, 1e-5)
    x = layers.Add(name=f"{name}_add")([shortcut, x])
    return layers.Activation("relu", name=f"{name}_out")(x)


def _resnet18(x, synchronized: bool):
    x = _stem(x, synchronized, 1e-5, use_bias=False)
    for stage, filters, stride in ((2, 64, 1), (3, 128, 2), (4, 256, 2), (5, 512, 1)):
        x = _basic_block(x, filters, stride, f"conv{stage}_block1", synchronized)
        x = _basic_block(x, filters, 1, f"conv{stage}_block2", synchronized)
    return x


def _read_pretrained(pretrained: str) -> dict[str, dict[str, np.ndarray]]:
    """Returns {layer name: {variable name: array}} of a ResNet50 weights source."""
    if pretrained == "imagenet":
        try:
            reference = keras.applications.ResNet50(include_top=False, weights="imagenet")
        except Exception as err:  # urllib/HTTP/hash errors all mean "could not fetch"
            raise RuntimeError(
                f"could not fetch the Keras ImageNet ResNet50 weights ({err}); on an offline "
                f"machine copy {IMAGENET_WEIGHTS_FILE} over and pass pretrained=PATH") from err
        return layer_weights(reference)
    if not os.path.isfile(pretrained):
        raise FileNotFoundError(f"pretrained weights file {pretrained!r} does not exist "
                                "(expected 'none', 'imagenet' or a path to a ResNet50 .h5)")
    try:
        with h5py.File(pretrained, "r") as handle:
            group = handle["model_weights"] if "model_weights" in handle else handle
            if "layer_names" in group.attrs:  # legacy Keras HDF5, keyed by layer name
                return _read_legacy_h5(group)
    except OSError as err:
        raise ValueError(f"{pretrained!r} is not a readable HDF5 weights file: {err}") from err
    # Keras 3 '.weights.h5' files are keyed by model structure, not layer names: load them
    # into Keras's own ResNet50 first, then copy by name.
    errors = []
    for include_top in (False, True):
        reference = keras.applications.ResNet50(
            include_top=include_top, weights=None,
            input_shape=(224, 224, 3) if include_top else (None, None, 3))
        try:
            reference.load_weights(pretrained)
            return layer_weights(reference)
        except Exception as err:  # Keras raises ValueError/KeyError/TypeError on mismatch
            errors.append(f"include_top={include_top}: {err}")
    raise ValueError(f"{pretrained!r} does not hold keras.applications.ResNet50 weights: "
                     + "; ".join(errors))


def assign_by_name(model: keras.Model, weights: dict[str, dict[str, np.ndarray]],
                   source: str, skip_layers: Sequence[str] = HEAD_LAYER_NAMES) -> int:
    """Sets every layer's weights from `weights`, matched by layer and variable name.

    Every layer is checked before any is set, so on an error the model is unchanged.

    Args:
        model: the model to fill.
        weights: {layer name: {variable name ('kernel', 'gamma', ...): array}}, as
            layer_weights returns.
        source: where the weights come from, for the error message.
        skip_layers: layers left as they are (by default the BN neck, which ImageNet
            weights do not have).

    Returns:
        the number of layers set.

    Raises:
        ValueError: a layer is missing from `weights`, has other variables or other shapes.
    """
    missing, mismatched, updates = [], [], []
    for layer in model.layers:
        if not layer.weights or layer.name in skip_layers:
            continue
        stored = weights.get(layer.name)
        ours = [_variable_name(v.path) for v in layer.weights]
        if stored is None or set(stored) != set(ours):
            missing.append(layer.name)
            continue
        values = [stored[n] for n in ours]
        if any(tuple(a.shape) != tuple(v.shape) for a, v in zip(values, layer.weights)):
            mismatched.append(layer.name)
            continue
        updates.append((layer, values))
    if missing or mismatched:
        raise ValueError(
            f"weights from {source!r} do not match the model: {len(missing)} "
            f"layer(s) missing ({missing[:5]}), {len(mismatched)} with other shapes "
            f"({mismatched[:5]})")
    for layer, values in updates:
        layer.set_weights(values)
    return len(updates)


def _read_legacy_h5(group: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
    weights = {}
    for layer in map(_decode, group.attrs["layer_names"]):
        names = map(_decode, group[layer].attrs["weight_names"])
        weights[layer] = {_variable_name(n): np.asarray(group[layer][n]) for n in names}
    return weights


def layer_weights(model: keras.Model) -> dict[str, dict[str, np.ndarray]]:
    """{layer name: {variable name: array}} of every layer with weights."""
    return {layer.name: {_variable_name(v.path): v.numpy() for v in layer.weights}
            for layer in model.layers if layer.weights}


def _variable_name(path) -> str:
    """'conv1_bn/moving_mean:0' or 'resnet50/conv1_bn/moving_mean' -> 'moving_mean'."""
    return _decode(path).rsplit("/", 1)[-1].split(":")[0]


def _decode(value) -> str:
    return value.decode("utf8") if isinstance(value, bytes) else str(value)
