"""Tests for mlc_tf.model: shapes, last stride, pooling, BN neck, preprocessing, weight loading."""

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import model as model_lib

RNG = np.random.default_rng(0)


def _images(batch, height, width):
    return RNG.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def reference_resnet50():
    """A randomly initialised keras.applications.ResNet50 with non-default BN statistics."""
    reference = keras.applications.ResNet50(include_top=False, weights=None,
                                            input_shape=(None, None, 3))
    for layer in reference.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            # Distinct positive values per variable, so a swapped gamma/moving_variance shows.
            layer.set_weights([RNG.uniform(0.5 + i, 1.0 + i, w.shape).astype(np.float32)
                               for i, w in enumerate(layer.get_weights())])
    return reference


def _assert_backbone_equal(model, reference):
    layers = [layer for layer in reference.layers if layer.weights]
    assert len(layers) == 53 + 53  # 53 convolutions, each followed by a BatchNormalization
    for layer in layers:
        for ours, theirs in zip(model.get_layer(layer.name).weights, layer.weights, strict=True):
            np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)


@pytest.mark.parametrize("multiscale,pooling", [(True, "avg"), (False, "max")])
def test_resnet18_output_shapes(multiscale, pooling):
    model = model_lib.build_model(backbone="resnet18", image_size=(64, 32),
                                  multiscale=multiscale, pooling=pooling)
    outputs = model(_images(2, 64, 32), training=False)
    dim = model_lib.feature_dim("resnet18", multiscale)
    assert dim == (1536 if multiscale else 512)
    assert outputs["pooled"].shape == (2, dim) and outputs["neck"].shape == (2, dim)
    assert outputs["pooled"].dtype == tf.float32
    # Last stride 1: 64x32 -> /16, not /32.
    assert model.get_layer(model_lib.CONV5_LAYER["resnet18"]).output.shape == (None, 4, 2, 512)
    assert model_lib.describe_model(model) == {
        "backbone": "resnet18", "image_size": [64, 32], "multiscale": multiscale,
        "pooling": pooling, "preprocessing": "torch", "feature_dim": dim}


def test_resnet50_last_stride_and_keras_layer_names(reference_resnet50):
    model = model_lib.build_model(backbone="resnet50", image_size=(256, 128))
    assert model.get_layer("conv4_block6_out").output.shape == (None, 16, 8, 1024)
    assert model.get_layer("conv5_block3_out").output.shape == (None, 16, 8, 2048)
    assert model.output["pooled"].shape == (None, 6144)
    assert model_lib.feature_dim("resnet50", True) == 6144
    assert model_lib.feature_dim("resnet50", False) == 2048
    assert model.get_layer("conv5_block1_1_conv").strides == (1, 1)
    assert model.get_layer("conv5_block1_0_conv").strides == (1, 1)
    assert model.get_layer("conv4_block1_1_conv").strides == (2, 2)
    for layer in reference_resnet50.layers[1:]:  # all but the input layer
        ours = model.get_layer(layer.name)  # raises if a Keras name is missing
        assert [w.shape for w in ours.weights] == [w.shape for w in layer.weights], layer.name


@pytest.mark.parametrize("pooling,reduce", [("avg", np.mean), ("max", np.max)])
def test_multiscale_pooling_matches_numpy(pooling, reduce):
    # 80x32 gives a 5x2 conv5 map: an odd height, so the h//2 split is uneven (2 + 3 rows).
    model = model_lib.build_model(backbone="resnet18", image_size=(80, 32), pooling=pooling)
    conv5 = model.get_layer(model_lib.CONV5_LAYER["resnet18"]).output
    probe = keras.Model(model.input, [conv5, model.output["pooled"]])
    fmap, pooled = (np.asarray(t) for t in probe(_images(3, 80, 32), training=False))
    assert fmap.shape == (3, 5, 2, 512)
    expected = np.concatenate([reduce(fmap, axis=(1, 2)), reduce(fmap[:, :2], axis=(1, 2)),
                               reduce(fmap[:, 2:], axis=(1, 2))], axis=1)
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-5)


def test_bn_neck_settings_and_numerics():
    model = model_lib.build_model(backbone="resnet18", image_size=(64, 32))
    neck = model.get_layer("bn_neck")
    assert neck.momentum == pytest.approx(0.9) and neck.epsilon == pytest.approx(1e-5)
    gamma, beta, mean, var = (RNG.uniform(0.5, 2.0, 1536).astype(np.float32) for _ in range(4))
    neck.set_weights([gamma, beta, mean, var])
    images = _images(4, 64, 32)

    outputs = model(images, training=False)
    pooled = np.asarray(outputs["pooled"])
    expected = (pooled - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(outputs["neck"], expected, rtol=1e-4, atol=1e-4)

    # In training mode the neck normalises with the batch's own (biased) statistics.
    outputs = model(images, training=True)
    pooled = np.asarray(outputs["pooled"])
    expected = (pooled - pooled.mean(0)) / np.sqrt(pooled.var(0) + 1e-5) * gamma + beta
    np.testing.assert_allclose(outputs["neck"], expected, rtol=1e-3, atol=1e-3)


def test_preprocessing_values():
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)
    caffe = model_lib.Preprocess("caffe")(pixel)
    np.testing.assert_allclose(caffe[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68],
                               rtol=1e-6)
    torch_style = model_lib.Preprocess("torch")(pixel)
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224,
                (30 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(torch_style[0, 0, 0], expected, rtol=1e-5)
    restored = model_lib.Preprocess.from_config(model_lib.Preprocess("caffe").get_config())
    assert restored.mode == "caffe"
    with pytest.raises(ValueError, match="caffe"):
        model_lib.Preprocess("tf")


@pytest.mark.parametrize("synchronized", [True, False])
def test_synchronized_flag_reaches_every_batch_norm(synchronized):
    model = model_lib.build_model(backbone="resnet18", image_size=(64, 32),
                                  synchronized_bn=synchronized)
    batch_norms = [layer for layer in model.layers
                   if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(batch_norms) == 1 + 2 * 8 + 3 + 1  # stem, blocks, projections, neck
    assert all(layer.synchronized == synchronized for layer in batch_norms)


def _conv_kernels(seed):
    keras.utils.set_random_seed(seed)
    model = model_lib.build_model(backbone="resnet18", image_size=(64, 32))
    return {layer.name: layer.kernel.numpy() for layer in model.layers
            if isinstance(layer, keras.layers.Conv2D)}


def test_initial_weights_follow_the_seed_and_differ_per_layer():
    first, again, other = _conv_kernels(7), _conv_kernels(7), _conv_kernels(8)
    for name, kernel in first.items():
        np.testing.assert_array_equal(kernel, again[name], err_msg=name)
        assert not np.array_equal(kernel, other[name]), name
    # Same-shaped convolutions (the 3x3 64->64 kernels of conv2) start from different draws.
    same_shape = [first[n] for n in ("conv2_block1_1_conv", "conv2_block1_2_conv",
                                     "conv2_block2_1_conv", "conv2_block2_2_conv")]
    assert {k.shape for k in same_shape} == {(3, 3, 64, 64)}
    for i, kernel in enumerate(same_shape):
        for later in same_shape[i + 1:]:
            assert not np.allclose(kernel, later)
    # He normal, fan_out: std sqrt(2 / (3 * 3 * 64)).
    assert np.std(same_shape[0]) == pytest.approx(np.sqrt(2 / (9 * 64)), rel=0.05)


def test_backbone_and_head_variables_partition_the_trainables():
    model = model_lib.build_model(backbone="resnet18", image_size=(64, 32))
    head = model_lib.head_variables(model)
    backbone = model_lib.backbone_variables(model)
    assert [v.path for v in head] == ["bn_neck/gamma", "bn_neck/beta"]
    assert len(head) + len(backbone) == len(model.trainable_variables)
    assert {id(v) for v in head + backbone} == {id(v) for v in model.trainable_variables}
    assert any(v.path == "conv1_conv/kernel" for v in backbone)


def test_loads_keras3_weights_file(reference_resnet50, tmp_path):
    path = str(tmp_path / "resnet50.weights.h5")
    reference_resnet50.save_weights(path)
    model = model_lib.build_model(backbone="resnet50", image_size=(64, 32), pretrained=path)
    _assert_backbone_equal(model, reference_resnet50)
    assert model_lib.describe_model(model)["preprocessing"] == "caffe"

    # Same weights and the caffe preprocessing => the same conv4 map as Keras's own network
    # (conv4 precedes the stride change, so the two graphs agree there).
    images = _images(2, 64, 32)
    ours = keras.Model(model.input, model.get_layer("conv4_block6_out").output)(images)
    theirs_model = keras.Model(reference_resnet50.input,
                               reference_resnet50.get_layer("conv4_block6_out").output)
    theirs = theirs_model(images[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-3)


def _write_legacy_h5(model, path, skip=()):
    """Writes Keras's legacy by-name HDF5 layout (the ImageNet file's), BN variables reversed."""
    with h5py.File(path, "w") as handle:
        names = [layer.name for layer in model.layers if layer.name not in skip]
        handle.attrs["layer_names"] = [n.encode() for n in names]
        for layer in model.layers:
            if layer.name in skip:
                continue
            group = handle.create_group(layer.name)
            weight_names = [f"{layer.name}/{v.path.split('/')[-1]}:0" for v in layer.weights]
            order = list(reversed(range(len(weight_names))))
            group.attrs["weight_names"] = [weight_names[i].encode() for i in order]
            for i in order:
                group.create_dataset(weight_names[i], data=layer.weights[i].numpy())


def test_loads_legacy_h5_by_name(reference_resnet50, tmp_path):
    path = str(tmp_path / "resnet50_notop.h5")
    _write_legacy_h5(reference_resnet50, path)
    # Global-only ("w/o MN") variant here, to cover its ResNet50 forward pass too.
    model = model_lib.build_model(backbone="resnet50", image_size=(64, 32), multiscale=False,
                                  pretrained=path)
    _assert_backbone_equal(model, reference_resnet50)
    outputs = model(_images(1, 64, 32), training=False)
    assert outputs["pooled"].shape == (1, 2048) and outputs["neck"].shape == (1, 2048)

    partial = str(tmp_path / "partial.h5")
    _write_legacy_h5(reference_resnet50, partial, skip=("conv3_block2_2_conv",))
    with pytest.raises(ValueError, match="conv3_block2_2_conv"):
        model_lib.build_model(backbone="resnet50", image_size=(64, 32), pretrained=partial)


def test_imagenet_goes_through_keras_applications(reference_resnet50, monkeypatch):
    requested = {}

    def fake_resnet50(**kwargs):
        requested.update(kwargs)
        return reference_resnet50

    monkeypatch.setattr(keras.applications, "ResNet50", fake_resnet50)
    model = model_lib.build_model(backbone="resnet50", image_size=(64, 32), pretrained="imagenet")
    assert requested["weights"] == "imagenet" and requested["include_top"] is False
    _assert_backbone_equal(model, reference_resnet50)

    def offline(**kwargs):
        raise Exception("URL fetch failure")

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    with pytest.raises(RuntimeError, match=model_lib.IMAGENET_WEIGHTS_FILE):
        model_lib.build_model(backbone="resnet50", image_size=(64, 32), pretrained="imagenet")


def test_bad_pretrained_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_lib.build_model(backbone="resnet50", image_size=(64, 32),
                              pretrained=str(tmp_path / "missing.h5"))
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"not an hdf5 file")
    with pytest.raises(ValueError, match="HDF5"):
        model_lib.build_model(backbone="resnet50", image_size=(64, 32), pretrained=str(garbage))
    with pytest.raises(ValueError, match="resnet50"):
        model_lib.build_model(backbone="resnet18", pretrained="imagenet")


def test_bad_options():
    with pytest.raises(ValueError, match="backbone"):
        model_lib.build_model(backbone="vgg16")
    with pytest.raises(ValueError, match="pooling"):
        model_lib.build_model(backbone="resnet18", pooling="sum")
    # 16x16 input leaves a single conv5 row, which cannot be split into halves.
    with pytest.raises(ValueError, match="split"):
        model_lib.build_model(backbone="resnet18", image_size=(16, 16))
    with pytest.raises(ValueError, match="build_model"):
        model_lib.describe_model(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
