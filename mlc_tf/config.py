"""Frozen run configuration of MLC training (spec §7.4 defaults), with JSON and flag mapping."""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Mapping
from typing import Any

from absl import flags


def _field(default, help_text: str, choices: tuple[str, ...] | None = None):
    """A dataclass field whose metadata also drives the command-line flag of the same name."""
    return dataclasses.field(default=default, metadata={"help": help_text, "choices": choices})


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Dataset, input size and batching."""

    dataset: str = _field("synthetic", "Dataset name (mlc_tf.data.registry.names()).")
    data_dir: str = _field("data", "Folder holding the datasets (and the synthetic cache).")
    dataset_options: tuple[str, ...] = _field(
        (), "Extra key=value options for registry.create, e.g. "
        "num_train_ids=32,images_per_camera=4.")
    image_size: tuple[int, int] = _field((256, 128), "Input height,width.")
    batch_size: int = _field(128, "Global training batch (all replicas together).")
    num_instances: int = _field(4, "K of the PK sampler in the SC phase (P = batch_size / K).")
    camera_aware_sampler: bool = _field(False, "PK sampler prefers instances from other cameras.")
    eval_batch_size: int = _field(128, "Batch size of feature extraction.")
    camstyle: bool = _field(
        False, "Train on CamStyle copies too (market1501, dukemtmc; ECN's "
        "bounding_box_train_camstyle/ beside bounding_box_train/), as MMCL: each draw of a "
        "training image picks a camera uniformly, loading the original for its own camera and "
        "that camera's style copy otherwise (originals 1 in 6 on Market, 1 in 8 on Duke); a "
        "copy keeps its source's memory slot and pseudo label.")
    decode_cache: str = _field(
        "auto", "Decode the training images once and keep their uint8 pixels in host memory "
        "(CamStyle views too), at the size they decode to: 'memory' (fail if they exceed "
        "decode_cache_gib), 'auto' (cache if they fit, else decode every epoch, logged) or "
        "'none'. Epochs are the same either way.", ("auto", "memory", "none"))
    decode_cache_gib: float = _field(4.0, "Host memory budget of decode_cache, in GiB.")
    augment_on: str = _field(
        "input", "Where the training augmentation runs: 'input' (tf.data, on the host) or "
        "'device' (the same seeded ops inside the training step, on the accelerator).",
        ("input", "device"))

    def options(self) -> dict[str, Any]:
        """dataset_options as a dict, with ints, floats and booleans converted."""
        return parse_key_values(self.dataset_options)


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation (mlc_tf.data.augment); an op is off at zero probability/strength."""

    crop: str = _field("resized", "Training crop: MMCL 'resized' (a rectangle of crop_area and "
                       "crop_aspect resized to the input; a plain resize when no draw fits), "
                       "'pad' (resize, zero-pad by crop_padding, random crop back) or 'none'.",
                       ("resized", "pad", "none"))
    flip: float = _field(0.5, "Horizontal-flip probability.")
    random_erasing: float = _field(0.5, "Probability of erasing one rectangle (Zhong et al.).")
    color_jitter: float = _field(0.2, "Brightness, contrast and saturation factors uniform in "
                                 "[1 - s, 1 + s] (0 = off).")
    rotation: float = _field(10.0, "Rotation uniform in [-r, r] degrees, zero fill (0 = off).")
    crop_area: tuple[float, float] = _field((0.64, 1.0),
                                            "Area fraction low,high of the 'resized' crop.")
    crop_aspect: tuple[float, float] = _field((2.0, 3.0),
                                              "Aspect h/w low,high of the 'resized' crop.")
    crop_padding: int = _field(10, "Zero padding in pixels of the 'pad' crop.")
    erasing_area: tuple[float, float] = _field((0.02, 0.2),
                                               "Area fraction low,high of the erased rectangle.")
    erasing_aspect: tuple[float, float] = _field((0.3, 3.33),
                                                 "Aspect h/w low,high of the erased rectangle.")

    def __post_init__(self):
        _check_choices(self)
        for name in ("flip", "random_erasing"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(
                    f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        if self.rotation < 0 or not 0 <= self.color_jitter < 1 or self.crop_padding < 0:
            raise ValueError(f"rotation and crop_padding must be >= 0 and color_jitter in [0, 1), "
                             f"got {self.rotation}, {self.crop_padding}, {self.color_jitter}")
        for name, top in (("crop_area", 1.0), ("crop_aspect", None), ("erasing_area", 1.0),
                          ("erasing_aspect", None)):
            low_high = getattr(self, name)
            if (len(low_high) != 2 or not 0 < low_high[0] <= low_high[1]
                    or (top is not None and low_high[1] > top)):
                bound = f" <= {top}" if top else ""
                raise ValueError(f"{name} must be two numbers 0 < low <= high{bound}, "
                                 f"got {low_high}")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Network options (spec §3)."""

    backbone: str = _field("resnet50", "Backbone network.", ("resnet50", "resnet18"))
    multiscale: bool = _field(True, "Global + upper + lower features; false = 'w/o MN' ablation.")
    pooling: str = _field("avg", "Pooling of every branch (spec A1).", ("avg", "max"))
    pretrained: str = _field("imagenet", "'none', 'imagenet' or a ResNet50 weights file.")
    init_from: str = _field("", "Start from a run of this project: a workdir (its newest "
                            "checkpoint) or an export; weights load by layer name, the memory, "
                            "classifier and optimizer start fresh. Empty = --pretrained.")
    init_from_flagfile: str = _field(
        "", "Flagfile of the run init_from names: bin/train trains it into init_from first "
        "unless it has an export there (the demo's supervised source stage).")
    synchronized_bn: bool = _field(
        True, "Sync BatchNorm statistics across replicas (one-replica-equivalent training).")
    eval_feature: str = _field("pooled", "Feature evaluated and exported: pre-BN 'pooled' or "
                               "after-BN 'neck' (spec A15).", ("pooled", "neck"))


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """Multi-label (MPLP + MMCL) and pseudo-label (CE + triplet) losses (spec §5, §6.5)."""

    mplp_threshold: float = _field(0.6, "MPLP similarity threshold t.")
    mplp_min_candidates: int = _field(10, "MPLP minimum number of candidates examined.")
    mplp_max_candidates: int = _field(64, "MPLP static cap on candidates (and positives).")
    mplp_quirk: bool = _field(True, "MPLP accepts the second candidate unchecked, as the MMCL "
                              "code does (spec A21).")
    hard_negative_ratio: float = _field(0.01, "MMCL ratio r of hardest negatives kept.")
    delta: float = _field(5.0, "MMCL weight delta of the positive term (spec A3).")
    warmup_epochs: int = _field(6, "Epochs with one-hot (own-slot) targets before MPLP (A8).")
    max_alpha: float = _field(0.5, "Memory momentum alpha grows linearly from 0 to this.")
    lambda_mmcl: float = _field(0.3, "Weight of the MMCL loss in the joint phase (lambda1).")
    lambda_sc: float = _field(1.0, "Weight of CE + triplet in the joint phase (lambda2).")
    label_smoothing: float = _field(0.1, "Label-smoothing epsilon of the pseudo-label CE.")
    triplet_margin: float = _field(0.0, "Batch-hard triplet margin (spec A4).")
    triplet_soft: bool = _field(False, "Soft-margin triplet log(1 + exp(d_ap - d_an)).")
    triplet_feature: str = _field("pooled", "Triplet on pre-BN f_all or its L2-normalised form.",
                                  ("pooled", "normalized"))
    mplp_camera_normalize: bool = _field(
        False, "Not in the paper: MPLP ranks the memory with each camera's mean row subtracted "
        "(rows re-normalised), so that its positives are not the other people one camera sees "
        "when camera style dominates the features; MMCL's logits still use the plain memory.")
    memory_dtype: str = _field("float32", "Storage dtype of the memory bank; reads and updates "
                               "are computed in float32.", ("float32", "bfloat16", "float16"))
    mplp_graph_k: int = _field(0, "MPLP cycle check on a kNN graph of the memory with this many "
                               "neighbours per slot (itself included), recomputed at the start of "
                               "every MPLP epoch and for the slots each step writes; 0 = exact "
                               "ranks against the whole bank.")
    classifier_init: str = _field(
        "normal", "Initial weights of each round's fresh pseudo-label classifier: N(0, 0.001^2) "
        "as torchreid/SpCL, or each cluster's L2-normalised mean memory row as MMT does (A14).",
        ("normal", "centroids"))


@dataclasses.dataclass(frozen=True)
class ClusterConfig:
    """Self-paced clustering (spec §6)."""

    clustering: str = _field("dbscan", "SC clusterer; 'none' trains the multi-label loss only.",
                             ("dbscan", "kmeans", "none"))
    sc_start_epoch: int = _field(15, "First 0-based epoch with self-paced clustering (A9).")
    recluster_every: int = _field(1, "Re-cluster every this many epochs while SC is on (A10).")
    cluster_features: str = _field("memory", "Cluster the memory rows or re-extracted features.",
                                   ("memory", "extract"))
    k1: int = _field(20, "k-reciprocal neighbours k1.")
    k2: int = _field(6, "Local query expansion k2.")
    jaccard_variant: str = _field("zhong", "Weighting of the neighbour vectors (A20).",
                                  ("zhong", "spcl"))
    min_samples: int = _field(4, "DBSCAN min_samples.")
    eps: float = _field(0.6, "DBSCAN eps on the Jaccard distance (eps_mode=fixed).")
    eps_mode: str = _field("fixed", "Fixed eps or the rho rule at the first clustering (A11).",
                           ("fixed", "rho"))
    rho: float = _field(1.6e-3, "rho of the rho rule.")
    num_clusters: int = _field(500, "Number of k-means clusters (clustering=kmeans).")
    camera_normalize: bool = _field(
        False, "Not in the paper: subtract each camera's mean feature before clustering, so "
        "that clusters can span cameras when camera style dominates the features (used by the "
        "from-scratch synthetic demo).")
    knn_backend: str = _field("auto", "Nearest-neighbour backend of the Jaccard distance.",
                              ("auto", "exact", "ivf", "pynndescent", "faiss_hnsw", "faiss_ivf"))
    knn_recall_floor: float = _field(
        0.9, "Least sampled recall@(k1+1) of approximate neighbours: below it the search is "
        "widened, then replaced by exact neighbours (0 only measures).")
    reliability_gap: float = _field(
        0.0, "Not in the paper: SpCL's cluster reliability criterion with DBSCAN also at eps "
        "-/+ this gap (SpCL: 0.02); only independent clusters' compact cores are kept (0 = off).")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule and loop (spec §7.1)."""

    supervised: bool = _field(
        False, "Train on the dataset's true train identities with CE + triplet over PK "
        "batches, no memory loss and no clustering (the paper's supervised Baseline1).")
    epochs: int = _field(60, "Number of epochs (0 exports the untrained network, a baseline).")
    lr: float = _field(0.1, "Learning rate of the new layers (BN neck, classifier).")
    backbone_lr_mult: float = _field(0.1, "Backbone learning rate = lr * this.")
    lr_step: int = _field(30, "Divide the learning rates by 1/lr_gamma every this many epochs "
                          "(paper 30; MMCL code 40).")
    lr_gamma: float = _field(0.1, "Step-decay factor.")
    lr_warmup_epochs: int = _field(
        0, "Linear learning-rate warm-up over this many epochs, from lr_warmup_factor x the rate "
        "(MMT/SpCL source pre-training: 10 of 80 epochs, factor 0.01); 0 = none.")
    lr_warmup_factor: float = _field(0.01, "Fraction of the rate the warm-up starts from.")
    momentum: float = _field(0.9, "SGD momentum.")
    nesterov: bool = _field(True, "Nesterov momentum.")
    weight_decay: float = _field(5e-4, "L2 weight decay added to the gradients, PyTorch style.")
    seed: int = _field(0, "Seed of initialisation, data order, augmentation and clustering.")
    mixed_precision: bool = _field(False, "Compute in bfloat16 (mixed_bfloat16 policy).")
    jit_compile: bool = _field(False, "XLA-compile the training step (a GPU option).")
    steps_per_epoch: int = _field(0, "Cap on steps per epoch (0 = the whole epoch).")
    eval_every: int = _field(10, "Evaluate on query/gallery every this many epochs (0 = never).")
    keep_checkpoints: int = _field(3, "Number of epoch checkpoints kept.")
    export_best_by_test: bool = _field(
        False, "Also export the epoch with the best test mAP (test-set selection; marked so).")
    devices: tuple[str, ...] = _field((), "Devices for MirroredStrategy (default: all GPUs, "
                                      "else the CPU).")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run depends on."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    cluster: ClusterConfig = dataclasses.field(default_factory=ClusterConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def __post_init__(self):
        validate(self)


SECTIONS: dict[str, type] = {"data": DataConfig, "augment": AugmentConfig, "model": ModelConfig,
                             "loss": LossConfig, "cluster": ClusterConfig, "train": TrainConfig}


def validate(config: Config) -> None:
    """Checks choices and ranges.

    Raises:
        ValueError: naming the first bad option.
    """
    for section in SECTIONS:
        _check_choices(getattr(config, section))
    data, train = config.data, config.train
    checks = [
        (len(data.image_size) == 2 and min(data.image_size) > 0, "image_size must be H,W > 0"),
        (data.batch_size > 0 and data.eval_batch_size > 0, "batch sizes must be positive"),
        (data.num_instances > 0 and data.batch_size % data.num_instances == 0,
         "batch_size must be a multiple of num_instances"),
        (train.epochs >= 0, "epochs must be >= 0"),
        (train.lr > 0 and train.backbone_lr_mult >= 0, "lr must be > 0, backbone_lr_mult >= 0"),
        (train.lr_step > 0, "lr_step must be positive"),
        (train.lr_warmup_epochs >= 0 and 0 < train.lr_warmup_factor <= 1,
         "lr_warmup_epochs must be >= 0 and lr_warmup_factor in (0, 1]"),
        (train.weight_decay >= 0, "weight_decay must be >= 0"),
        (train.steps_per_epoch >= 0 and train.eval_every >= 0,
         "steps_per_epoch and eval_every must be >= 0"),
        (train.keep_checkpoints > 0, "keep_checkpoints must be positive"),
        (config.cluster.recluster_every > 0, "recluster_every must be positive"),
        (config.cluster.num_clusters > 1, "num_clusters must be > 1"),
        (config.cluster.reliability_gap >= 0 and (
            config.cluster.eps_mode == "rho" or config.cluster.reliability_gap == 0
            or 0 < config.cluster.eps - config.cluster.reliability_gap
            and config.cluster.eps + config.cluster.reliability_gap < 1),
         "reliability_gap must be >= 0 with eps -/+ reliability_gap in (0, 1)"),
        (config.loss.warmup_epochs >= 0 and config.cluster.sc_start_epoch >= 0,
         "warmup_epochs and sc_start_epoch must be >= 0"),
        (0.0 <= config.loss.max_alpha < 1.0, "max_alpha must be in [0, 1)"),
        (config.model.init_from or not config.model.init_from_flagfile,
         "init_from_flagfile needs init_from (the workdir to train it into)"),
        # Refused here, before any source stage trains (mlc_tf.data.camstyle.DATASETS).
        (not data.camstyle or data.dataset in ("market1501", "dukemtmc"),
         f"camstyle needs --dataset=market1501 or dukemtmc (ECN's bounding_box_train_camstyle/); "
         f"the {data.dataset} dataset has no CamStyle images; set --camstyle=false"),
        # The graph holds neighbours of the plain bank, not of the camera-centred one.
        (not (config.loss.mplp_camera_normalize and config.loss.mplp_graph_k),
         "mplp_camera_normalize needs the exact MPLP check: set --mplp_graph_k=0"),
        (data.decode_cache_gib > 0, "decode_cache_gib must be > 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    parse_key_values(data.dataset_options)


def _check_choices(section) -> None:
    """Raises ValueError naming the first option of a section outside its choices."""
    for field in dataclasses.fields(section):
        choices = field.metadata.get("choices")
        if choices and getattr(section, field.name) not in choices:
            raise ValueError(f"{field.name}={getattr(section, field.name)!r}; expected one of "
                             f"{choices}")


def parse_key_values(items) -> dict[str, Any]:
    """['a=1', 'b=x', 'c=true'] -> {'a': 1, 'b': 'x', 'c': True}.

    Raises:
        ValueError: an item without '='.
    """
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"dataset option {item!r} is not key=value")
        parsed[key.strip()] = _scalar(value.strip())
    return parsed


def _scalar(text: str):
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def to_dict(config: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict (tuples become lists), ready for json.dumps."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def from_dict(values: Mapping[str, Mapping[str, Any]]) -> Config:
    """Inverse of to_dict. Missing entries take their defaults.

    Raises:
        ValueError: an unknown section or option, or a value failing validation.
    """
    unknown = set(values) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown config sections {sorted(unknown)}")
    return Config(**{name: _build(cls, values.get(name, {})) for name, cls in SECTIONS.items()})


def from_flat(values: Mapping[str, Any]) -> Config:
    """Builds a Config from {option name: value} (option names are unique across sections).

    Raises:
        ValueError: an unknown option, or a value failing validation.
    """
    owner = {f.name: section for section, cls in SECTIONS.items()
             for f in dataclasses.fields(cls)}
    unknown = set(values) - set(owner)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}")
    nested: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for name, value in values.items():
        nested[owner[name]][name] = value
    return from_dict(nested)


def save_json(config: Config, path: str) -> None:
    """Writes the resolved config as indented JSON."""
    with open(path, "w") as handle:
        json.dump(to_dict(config), handle, indent=2, sort_keys=True)
        handle.write("\n")


def load_json(path: str) -> Config:
    """Reads a config written by save_json."""
    with open(path) as handle:
        return from_dict(json.load(handle))


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines one absl flag per option, with its default, help and choices, on flag_values."""
    define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
              str: flags.DEFINE_string}
    for name, default, kind, help_text, choices in option_specs():
        if choices:
            flags.DEFINE_enum(name, default, choices, help_text, flag_values=flag_values)
        elif kind is tuple:
            flags.DEFINE_list(name, [str(v) for v in default], help_text,
                              flag_values=flag_values)
        else:
            define[kind](name, default, help_text, flag_values=flag_values)


def from_flag_values(flag_values: flags.FlagValues) -> Config:
    """Config from parsed flags defined by define_flags.

    Raises:
        ValueError: a value failing validation.
    """
    return from_flat({name: flag_values[name].value for name, *_ in option_specs()})


def from_flagfile(path: str, *extra_flags: str) -> Config:
    """The Config a flagfile (then extra flags such as '--data_dir=x') resolves to.

    Raises:
        ValueError: an unknown flag or a value failing validation.
    """
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    try:
        flag_values(expand_flagfiles(["from_flagfile", f"--flagfile={path}", *extra_flags]))
    except flags.Error as err:
        raise ValueError(f"{path}: {err}") from err
    return from_flag_values(flag_values)


# Flags whose value names a file: in a flagfile a relative one is read from that flagfile's
# folder when it is there, else from the working directory (absl reads only the latter).
_FILE_FLAGS = ("flagfile", "init_from_flagfile")


def expand_flagfiles(argv: list[str]) -> list[str]:
    """argv with every --flagfile=PATH replaced, in place, by the flags it holds (recursively).

    The same flags as absl's own reading, except that a relative path inside a flagfile (a
    nested --flagfile, an --init_from_flagfile) is found beside that flagfile first, so the
    configs work from any folder. Paths on the command line are read from the working folder.

    Raises:
        ValueError: a flagfile that cannot be read or that includes itself.
    """
    expanded, rest = list(argv[:1]), iter(argv[1:])
    for arg in rest:
        if arg == "--":  # absl parses nothing after it
            return [*expanded, arg, *rest]
        name, has_value, value = arg.lstrip("-").partition("=")
        if arg.startswith("-") and name == "flagfile":
            expanded += _flagfile_lines(os.path.expanduser(value if has_value else next(rest, "")))
        else:
            expanded.append(arg)
    return expanded


def _flagfile_lines(path: str, including: tuple[str, ...] = ()) -> list[str]:
    """The flag lines of one flagfile, nested flagfiles expanded, comments and blanks dropped."""
    real = os.path.realpath(path)
    if real in including:
        raise ValueError(f"flagfile {path} includes itself")
    try:
        with open(path) as handle:
            lines = [line.strip() for line in handle]
    except OSError as err:
        raise ValueError(f"cannot read flagfile {path!r}: {err.strerror}") from err
    flag_lines = []
    for line in lines:
        if not line or line.startswith(("#", "//")):
            continue
        name, has_value, value = line.lstrip("-").partition("=")
        if line.startswith("-") and value and name in _FILE_FLAGS:
            value = os.path.expanduser(value)
            beside = os.path.join(os.path.dirname(path), value)
            value = beside if os.path.exists(beside) else value
            if name == "flagfile":
                flag_lines += _flagfile_lines(value, (*including, real))
                continue
            line = f"--{name}={value}"
        flag_lines.append(line)
    return flag_lines


def with_default_flagfile(argv, flagfile: str) -> list[str]:
    """argv with --flagfile=flagfile first when it names neither a flagfile nor a dataset.

    So `bin/train` runs the demo and `bin/train --seed=1` the demo with another seed, while
    `bin/train --dataset=market1501 ...` starts from the paper defaults.
    """
    names = {arg.lstrip("-").split("=", 1)[0] for arg in argv[1:] if arg.startswith("--")}
    if names & {"flagfile", "dataset"}:
        return list(argv)
    return [argv[0], f"--flagfile={flagfile}", *argv[1:]]


def option_specs() -> list[tuple[str, Any, type, str, tuple[str, ...] | None]]:
    """(name, default, base type, help, choices) of every option, for defining flags.

    The base type is bool, int, float, str, or tuple for list-valued options.
    """
    specs = []
    for cls in SECTIONS.values():
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            kind = _base_type(hints[field.name])
            specs.append((field.name, field.default, kind, field.metadata["help"],
                          field.metadata.get("choices")))
    return specs


def _base_type(hint) -> type:
    origin = typing.get_origin(hint)
    if origin in (tuple, list):
        return tuple
    if origin in (typing.Union, types.UnionType):
        return _base_type(next(a for a in typing.get_args(hint) if a is not type(None)))
    return hint


def _build(cls: type, values: Mapping[str, Any]):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} options {sorted(unknown)}")
    kwargs = {}
    for name, value in values.items():
        kind = _base_type(hints[name])
        if kind is tuple:
            item = typing.get_args(hints[name])[0]
            kwargs[name] = tuple(item(v) for v in value)
        elif kind is float:
            kwargs[name] = float(value)
        elif kind in (int, bool) and not isinstance(value, kind):
            raise ValueError(f"{name}={value!r} is not {kind.__name__}")
        else:
            kwargs[name] = value
    return cls(**kwargs)
