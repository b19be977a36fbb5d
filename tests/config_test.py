"""Tests for mlc_tf.config: spec defaults, validation, JSON, flags and every configs/*.cfg."""

import dataclasses
import glob
import os
import subprocess
import sys

import pytest
from absl import flags

from mlc_tf import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.cfg")))
# What configs/base.cfg resolved to when it still restated the defaults: the paper settings of
# market.cfg, duke.cfg and msmt17.cfg (which add dataset and lambda_mmcl), pinned here so that
# changing a default in mlc_tf/config.py cannot change those runs unnoticed.
PAPER_SETTINGS = dict(
    backbone="resnet50", pretrained="imagenet", multiscale=True, pooling="avg",
    synchronized_bn=True, eval_feature="pooled", image_size=(256, 128), batch_size=128,
    num_instances=4, eval_batch_size=256, crop="resized", flip=0.5, random_erasing=0.5,
    color_jitter=0.2, rotation=10.0, epochs=60, lr=0.1, backbone_lr_mult=0.1, lr_step=30,
    lr_gamma=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, mplp_threshold=0.6,
    mplp_min_candidates=10, hard_negative_ratio=0.01, delta=5.0, warmup_epochs=6,
    max_alpha=0.5, lambda_sc=1.0, label_smoothing=0.1, triplet_margin=0.0,
    triplet_feature="pooled", clustering="dbscan", sc_start_epoch=15, recluster_every=1,
    cluster_features="memory", k1=20, k2=6, jaccard_variant="zhong", min_samples=4, eps=0.6,
    eps_mode="fixed", eval_every=5, keep_checkpoints=3)


def _parse(*argv: str) -> config_lib.Config:
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flags.DEFINE_string("workdir", None, "as bin/train", flag_values=flag_values)
    flags.DEFINE_integer("stop_after_epoch", None, "as bin/train", flag_values=flag_values)
    cwd = os.getcwd()
    os.chdir(REPO)  # the --flagfile paths given here are relative to the repository
    try:
        flag_values(config_lib.expand_flagfiles(["train", *argv]))
    finally:
        os.chdir(cwd)
    return config_lib.from_flag_values(flag_values)


def test_defaults_are_the_spec_hyperparameters():
    config = config_lib.Config()
    assert (config.loss.mplp_threshold, config.loss.mplp_min_candidates) == (0.6, 10)
    assert (config.loss.hard_negative_ratio, config.loss.delta) == (0.01, 5.0)
    assert (config.loss.warmup_epochs, config.loss.max_alpha) == (6, 0.5)
    assert (config.loss.lambda_mmcl, config.loss.lambda_sc) == (0.3, 1.0)
    assert (config.loss.label_smoothing, config.loss.triplet_margin) == (0.1, 0.0)
    assert not config.loss.triplet_soft
    cluster = config.cluster
    assert (cluster.clustering, cluster.sc_start_epoch, cluster.recluster_every) == (
        "dbscan", 15, 1)
    assert (cluster.k1, cluster.k2, cluster.min_samples, cluster.eps) == (20, 6, 4, 0.6)
    assert cluster.cluster_features == "memory"
    train = config.train
    assert (train.epochs, train.lr, train.backbone_lr_mult, train.lr_step) == (60, 0.1, 0.1, 30)
    assert (train.momentum, train.nesterov, train.weight_decay) == (0.9, True, 5e-4)
    assert (config.data.batch_size, config.data.num_instances) == (128, 4)
    assert config.data.image_size == (256, 128)
    assert (config.model.backbone, config.model.multiscale, config.model.pooling) == (
        "resnet50", True, "avg")


def test_json_round_trip(tmp_path):
    config = config_lib.from_flat({"image_size": ["64", "32"], "backbone": "resnet18",
                                   "dataset_options": ["num_train_ids=4"], "lr": 1,
                                   "multiscale": False})
    assert config.data.image_size == (64, 32) and isinstance(config.train.lr, float)
    path = str(tmp_path / "config.json")
    config_lib.save_json(config, path)
    assert config_lib.load_json(path) == config
    assert config_lib.from_dict(config_lib.to_dict(config)) == config


@pytest.mark.parametrize("options, message", [
    ({"lr_typo": 1.0}, "unknown options"),
    ({"crop": "pad_typo"}, "crop='pad_typo'"),
    ({"random_erasing": 1.5}, "random_erasing must be a probability"),
    ({"crop_area": ["0.5"]}, r"crop_area must be two numbers 0 < low <= high <= 1.0"),
    ({"crop_area": ["0.5", "1.5"]}, "crop_area must be two numbers"),
    ({"erasing_aspect": ["3", "0.3"]}, "erasing_aspect must be two numbers 0 < low <= high,"),
    ({"backbone": "vgg"}, "backbone='vgg'"),
    ({"batch_size": 30, "num_instances": 4}, "multiple of num_instances"),
    ({"epochs": -1}, "epochs"),
    ({"max_alpha": 1.0}, "max_alpha"),
    ({"dataset_options": ["no_equals_sign"]}, "key=value"),
    ({"epochs": "60"}, "not int"),
    ({"mplp_camera_normalize": True, "mplp_graph_k": 32}, "needs the exact MPLP check"),
    ({"reliability_gap": 0.5}, "reliability_gap"),
    ({"reliability_gap": -0.01}, "reliability_gap"),
    ({"decode_cache": "disk"}, "decode_cache='disk'"),
    ({"decode_cache_gib": 0.0}, "decode_cache_gib must be > 0"),
    ({"augment_on": "gpu"}, "augment_on='gpu'"),
    ({"lr_warmup_epochs": -1}, "lr_warmup_epochs must be >= 0"),
    ({"lr_warmup_factor": 0.0}, "lr_warmup_factor in"),
])
def test_bad_options_are_rejected(options, message):
    with pytest.raises(ValueError, match=message):
        config_lib.from_flat(options)


def test_augmentation_is_the_augment_section_under_the_same_flag_names():
    config = _parse("--crop=pad", "--flip=0", "--random_erasing=0.25", "--color_jitter=0",
                    "--rotation=5", "--crop_padding=4", "--erasing_area=0.1,0.3")
    assert config.augment == config_lib.AugmentConfig(
        crop="pad", flip=0.0, random_erasing=0.25, color_jitter=0.0, rotation=5.0,
        crop_padding=4, erasing_area=(0.1, 0.3))
    assert config.data == config_lib.DataConfig()


def test_config_loads_without_tensorflow():
    # bin/train parses its flags before TensorFlow is imported (seconds) to reject bad ones fast.
    code = "import sys, mlc_tf.config; sys.exit('tensorflow' in sys.modules)"
    completed = subprocess.run([sys.executable, "-c", code], cwd=REPO, timeout=60, check=False,
                               env=dict(os.environ, PYTHONPATH=REPO))
    assert completed.returncode == 0, "importing mlc_tf.config imported TensorFlow"


def test_unknown_section_is_rejected():
    with pytest.raises(ValueError, match="unknown config sections"):
        config_lib.from_dict({"optimizer": {}})


def test_parse_key_values_converts_scalars():
    assert config_lib.parse_key_values(["a=1", "b=0.5", "c=true", "d=x", " e = False "]) == {
        "a": 1, "b": 0.5, "c": True, "d": "x", "e": False}
    assert config_lib.Config(data=config_lib.DataConfig(
        dataset_options=("num_ids=3",))).data.options() == {"num_ids": 3}


def test_option_names_are_unique_and_documented():
    specs = config_lib.option_specs()
    names = [name for name, *_ in specs]
    assert len(names) == len(set(names))
    assert all(help_text for _, _, _, help_text, _ in specs)
    total = sum(len(dataclasses.fields(cls)) for cls in config_lib.SECTIONS.values())
    assert len(names) == total


def test_flags_override_flagfiles_in_order():
    config = _parse("--flagfile=configs/duke.cfg", "--epochs=3", "--nomultiscale",
                    "--image_size=128,64")
    assert config.data.dataset == "dukemtmc" and config.train.epochs == 3
    assert not config.model.multiscale and config.data.image_size == (128, 64)


def test_nested_flagfile_paths_are_read_beside_their_flagfile(tmp_path, monkeypatch):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "base.cfg").write_text("# shared\n--epochs=7\n--seed=3\n")
    (tmp_path / "cfg" / "source.cfg").write_text("--epochs=2\n")
    (tmp_path / "cfg" / "run.cfg").write_text(
        "--flagfile=base.cfg\n\n// absl's other comment\n--seed=4\n"
        "--init_from_flagfile=source.cfg\n--init_from=runs/source\n")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "cwd.cfg").write_text("--epochs=9\n")
    (tmp_path / "cfg" / "fallback.cfg").write_text("--flagfile=elsewhere/cwd.cfg\n")
    monkeypatch.chdir(tmp_path)
    run = str(tmp_path / "cfg" / "run.cfg")
    # In place and in order: later flags win, the nested file's flags come where it was named.
    assert config_lib.expand_flagfiles(["train", "--epochs=1", f"--flagfile={run}", "--k1=5"]) == [
        "train", "--epochs=1", "--epochs=7", "--seed=3", "--seed=4",
        f"--init_from_flagfile={tmp_path / 'cfg' / 'source.cfg'}", "--init_from=runs/source",
        "--k1=5"]
    assert config_lib.expand_flagfiles(["train", "--flagfile", "cfg/run.cfg"])[1:3] == [
        "--epochs=7", "--seed=3"]
    # Not beside the flagfile: read from the working folder, as absl does.
    assert config_lib.expand_flagfiles(["t", "--flagfile=cfg/fallback.cfg"]) == ["t", "--epochs=9"]
    assert config_lib.expand_flagfiles(["t", "--", "--flagfile=x"]) == ["t", "--", "--flagfile=x"]
    with pytest.raises(ValueError, match="cannot read flagfile 'cfg/none.cfg'"):
        config_lib.expand_flagfiles(["t", "--flagfile=cfg/none.cfg"])
    (tmp_path / "cfg" / "loop.cfg").write_text("--flagfile=loop2.cfg\n")
    (tmp_path / "cfg" / "loop2.cfg").write_text("--flagfile=loop.cfg\n")
    with pytest.raises(ValueError, match="includes itself"):
        config_lib.expand_flagfiles(["t", "--flagfile=cfg/loop.cfg"])


def test_repository_configs_work_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    duke = config_lib.from_flagfile(os.path.join(REPO, "configs", "duke.cfg"))
    assert duke == config_lib.from_flat(
        {**PAPER_SETTINGS, "dataset": "dukemtmc", "lambda_mmcl": 0.3})
    demo = config_lib.from_flagfile(os.path.join(REPO, "configs", "synthetic.cfg"))
    assert demo.model.init_from_flagfile == os.path.join(REPO, "configs", "synthetic_source.cfg")


def test_demo_flagfile_comes_first_unless_a_flagfile_or_dataset_is_named():
    demo = "configs/synthetic.cfg"
    assert config_lib.with_default_flagfile(["train"], demo) == ["train", f"--flagfile={demo}"]
    assert config_lib.with_default_flagfile(["train", "--seed=1", "--epochs", "2"], demo) == [
        "train", f"--flagfile={demo}", "--seed=1", "--epochs", "2"]
    for named in (["--flagfile=configs/duke.cfg"], ["--dataset=market1501"], ["--dataset", "x"]):
        assert config_lib.with_default_flagfile(["train", *named], demo) == ["train", *named]
    config = _parse(*config_lib.with_default_flagfile(["train", "--seed=1"], demo)[1:])
    assert (config.model.backbone, config.train.seed) == ("resnet18", 1)


def test_there_are_the_expected_configs():
    assert {os.path.basename(p) for p in CONFIGS} >= {
        "base.cfg", "market.cfg", "duke.cfg", "msmt17.cfg", "synthetic.cfg", "smoke.cfg",
        "synthetic_source.cfg"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_parses_and_documents_its_launch(path):
    with open(path) as handle:
        first_lines = [next(handle) for _ in range(3)]
    assert all(line.startswith("#") for line in first_lines[:2])
    assert any("bin/train" in line for line in first_lines)
    config = _parse(f"--flagfile={os.path.relpath(path, REPO)}")
    assert isinstance(config, config_lib.Config)


def _option_lines(path: str) -> list[tuple[str, str]]:
    """(name, value) of every --name=value line of a flagfile, comments and blanks skipped."""
    with open(path) as handle:
        lines = [line.strip() for line in handle]
    options = [line for line in lines if line and not line.startswith("#")]
    assert all(line.startswith("--") and "=" in line for line in options), options
    return [tuple(line[2:].split("=", 1)) for line in options]


def test_base_config_sets_only_what_differs_from_the_defaults():
    lines = _option_lines(os.path.join(REPO, "configs", "base.cfg"))
    assert lines and all(name != "flagfile" for name, _ in lines)
    defaults = config_lib.Config()
    restated = [f"--{name}={value}" for name, value in lines
                if _parse(f"--{name}={value}") == defaults]
    assert not restated, f"configs/base.cfg restates defaults of mlc_tf/config.py: {restated}"


@pytest.mark.parametrize("name, dataset, lambda_mmcl", [
    ("market", "market1501", 0.4), ("duke", "dukemtmc", 0.3), ("msmt17", "msmt17", 0.3)])
def test_dataset_configs_use_the_paper_settings(name, dataset, lambda_mmcl):
    config = _parse(f"--flagfile=configs/{name}.cfg")
    assert config == config_lib.from_flat(
        {**PAPER_SETTINGS, "dataset": dataset, "lambda_mmcl": lambda_mmcl})


def test_cpu_configs_use_the_small_backbone():
    for name in ("synthetic", "smoke"):
        config = _parse(f"--flagfile=configs/{name}.cfg")
        assert config.data.dataset == "synthetic" and config.model.backbone == "resnet18"
        assert config.model.pretrained == "none"
        assert config.cluster.sc_start_epoch < config.train.epochs
