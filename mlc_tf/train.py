"""MLC training run: strategy, epoch loop (ML phase, then ML + SC), checkpoints, export."""

from __future__ import annotations

import dataclasses
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mlc_tf import checkpointing
from mlc_tf import config as config_lib
from mlc_tf import evaluation
from mlc_tf import export as export_lib
from mlc_tf import memory as memory_lib
from mlc_tf import model as model_lib
from mlc_tf import self_paced
from mlc_tf import summaries
from mlc_tf import train_step
from mlc_tf.data import iteration
from mlc_tf.data import pipeline
from mlc_tf.data import registry

SUMMARY_DIR = "summaries"
EXPORT_DIR = "export"
BEST_EXPORT_DIR = "export_best_by_test"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the epoch and step."""


def make_strategy(devices=()) -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over `devices`, else every visible GPU, else the CPU."""
    if not devices:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or ["/device:CPU:0"]
    return tf.distribute.MirroredStrategy(list(devices))


def learning_rate(epoch: int, train: config_lib.TrainConfig) -> float:
    """Step decay: lr * lr_gamma ** (epoch // lr_step)."""
    return train.lr * train.lr_gamma ** (epoch // train.lr_step)


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """What one epoch does (spec §7.2).

    Attributes:
        use_mplp: MPLP multi-label targets (else one-hot on the own slot).
        self_paced: the SC phase is on.
        recluster: cluster before this epoch.
    """

    use_mplp: bool
    self_paced: bool
    recluster: bool


def plan_epoch(epoch: int, config: config_lib.Config) -> EpochPlan:
    """The phase of a 0-based epoch."""
    cluster = config.cluster
    sc = cluster.clustering != "none" and epoch >= cluster.sc_start_epoch
    return EpochPlan(use_mplp=epoch >= config.loss.warmup_epochs, self_paced=sc,
                     recluster=sc and (epoch - cluster.sc_start_epoch) % cluster.recluster_every
                     == 0)


def run(config: config_lib.Config, workdir: str, *,
        strategy: tf.distribute.Strategy | None = None, stop_after_epoch: int | None = None,
        verbose: bool = True) -> dict:
    """Trains MLC, resuming from the newest checkpoint in `workdir`, then exports.

    Args:
        config: the run configuration.
        workdir: folder for config.json, checkpoints/, summaries/ and export/.
        strategy: MirroredStrategy to use; default make_strategy(config.train.devices).
        stop_after_epoch: stop (after its checkpoint) once this 0-based epoch is done, without
            exporting; running again resumes.
        verbose: progress bars on stdout.

    Returns:
        {'epochs_done', 'export' (path or None), 'eval' (last evaluation or {})}.

    Raises:
        checkpointing.CheckpointMismatchError: the workdir holds a checkpoint of another
            dataset or model.
        NonFiniteLossError: the loss became NaN or Inf; the last checkpoint is kept.
    """
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_json(config, os.path.join(workdir, checkpointing.CONFIG_FILE))
    train_cfg = config.train
    keras.utils.set_random_seed(train_cfg.seed)
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if train_cfg.mixed_precision else "float32")
    strategy = strategy or make_strategy(train_cfg.devices)
    replicas = strategy.num_replicas_in_sync
    if config.data.batch_size % replicas:
        raise ValueError(f"batch_size {config.data.batch_size} is not divisible by the "
                         f"{replicas} replicas")
    data = registry.create(config.data.dataset, config.data.data_dir, **config.data.options())
    num_train = len(data.train)
    logging.info("%s: %d train, %d query, %d gallery images; %d replica(s), %d images per "
                 "replica", data.name, num_train, len(data.query), len(data.gallery), replicas,
                 config.data.batch_size // replicas)

    model_cfg = config.model
    dim = model_lib.feature_dim(model_cfg.backbone, model_cfg.multiscale)
    with strategy.scope():
        # Synchronised BN makes R replicas compute what one replica would on the global batch.
        model = model_lib.build_model(
            backbone=model_cfg.backbone, image_size=config.data.image_size,
            multiscale=model_cfg.multiscale, pooling=model_cfg.pooling,
            pretrained=model_cfg.pretrained,
            synchronized_bn=model_cfg.synchronized_bn and replicas > 1)
        memory = memory_lib.MemoryBank(num_train, dim)
        state = checkpointing.RunState(num_train)
    learner = train_step.Learner(
        strategy, model, memory, weights=_loss_weights(config.loss), lr=train_cfg.lr,
        backbone_lr_mult=train_cfg.backbone_lr_mult, momentum=train_cfg.momentum,
        nesterov=train_cfg.nesterov, weight_decay=train_cfg.weight_decay,
        jit_compile=train_cfg.jit_compile)
    fingerprint = {"dataset": data.name, "num_train": num_train, "feature_dim": dim,
                   "backbone": model_cfg.backbone, "multiscale": model_cfg.multiscale,
                   "pooling": model_cfg.pooling, "image_size": list(config.data.image_size)}
    checkpointer = checkpointing.Checkpointer(os.path.join(workdir, checkpointing.CHECKPOINT_DIR),
                                              fingerprint, train_cfg.keep_checkpoints)
    start_epoch = _restore(checkpointer, learner, state, train_cfg.seed)
    writer = tf.summary.create_file_writer(os.path.join(workdir, SUMMARY_DIR))
    eval_embed = make_embedder(model, model_cfg.eval_feature)
    cluster_embed = make_embedder(model, "pooled")
    true_pids = np.array([s.pid for s in data.train])
    last_eval: dict = {}

    for epoch in range(start_epoch, train_cfg.epochs):
        lr = learning_rate(epoch, train_cfg)
        learner.set_learning_rate(lr)
        alpha = memory_lib.alpha_for_epoch(epoch, train_cfg.epochs, config.loss.max_alpha)
        plan = plan_epoch(epoch, config)
        scalars = {"train/lr": lr, "train/alpha": alpha}
        if plan.recluster:
            scalars.update(_recluster(config, epoch, learner, state, data, true_pids,
                                      cluster_embed, verbose))
        elif not plan.self_paced and learner.classifier is not None:
            learner.drop_classifier()
        joint = plan.self_paced and learner.classifier is not None
        if verbose:
            print(f"Epoch {epoch + 1}/{train_cfg.epochs} lr={lr:.4g} alpha={alpha:.3f} "
                  f"{'MPLP' if plan.use_mplp else 'one-hot'} targets"
                  f"{', joint CE + triplet' if joint else ''}", flush=True)
        batches, steps = _epoch_dataset(config, data, epoch,
                                        state.pseudo_labels.numpy() if joint else None)
        means = _train_epoch(learner, strategy.experimental_distribute_dataset(batches), steps,
                             alpha, joint=joint, use_mplp=plan.use_mplp, epoch=epoch,
                             verbose=verbose)
        scalars.update({f"train/{name}": value for name, value in means.items()})
        if train_cfg.eval_every and ((epoch + 1) % train_cfg.eval_every == 0
                                     or epoch + 1 == train_cfg.epochs):
            last_eval = evaluate(eval_embed, data, config, verbose=verbose)
            scalars.update({"eval/mAP": last_eval["mAP"], "eval/rank1": last_eval["rank1"]})
            logging.info("epoch %d: mAP %.4f rank-1 %.4f", epoch + 1, last_eval["mAP"],
                         last_eval["rank1"])
            if train_cfg.export_best_by_test and last_eval["mAP"] > float(state.best_map.numpy()):
                state.best_map.assign(last_eval["mAP"])
                _export(model, config, os.path.join(workdir, BEST_EXPORT_DIR), epoch + 1,
                        best_by_test=last_eval)
        summaries.write_scalars(writer, scalars, epoch + 1)
        state.epoch.assign(epoch + 1)
        checkpointer.save(_objects(learner, state), epoch + 1)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            iteration.wait_for_retired()
            return {"epochs_done": epoch + 1, "export": None, "eval": last_eval}

    export_path = _export(model, config, os.path.join(workdir, EXPORT_DIR), train_cfg.epochs)
    iteration.wait_for_retired()
    return {"epochs_done": train_cfg.epochs, "export": export_path, "eval": last_eval}


def _loss_weights(loss: config_lib.LossConfig) -> train_step.LossWeights:
    names = {f.name for f in dataclasses.fields(train_step.LossWeights)}
    return train_step.LossWeights(**{n: getattr(loss, n) for n in names})


def _objects(learner: train_step.Learner, state: checkpointing.RunState) -> dict:
    objects = {"model": learner.model, "backbone_optimizer": learner.backbone_optimizer,
               "head_optimizer": learner.head_optimizer, "memory": learner.memory.variable,
               **state.objects()}
    if learner.classifier is not None:
        objects.update(classifier=learner.classifier,
                       classifier_optimizer=learner.classifier_optimizer)
    return objects


def _restore(checkpointer: checkpointing.Checkpointer, learner: train_step.Learner,
             state: checkpointing.RunState, seed: int) -> int:
    """Restores the newest checkpoint, if any; returns the epoch to start from."""
    stored = checkpointer.peek()
    if stored is None:
        return 0
    if stored["num_classes"] > 0:
        # Build a classifier of the stored size so that the restore can fill it.
        learner.new_classifier(stored["num_classes"], seed=seed)
    path = checkpointer.restore(_objects(learner, state))
    logging.info("resumed from %s after epoch %d", path, stored["epoch"])
    return stored["epoch"]


def _recluster(config, epoch, learner, state, data, true_pids, cluster_embed,
               verbose) -> dict[str, float]:
    """Clusters, stores the pseudo labels and (re)builds the classifier; returns scalars."""
    if config.cluster.cluster_features == "extract":
        # Pre-BN, L2-normalised, as Cluster Contrast re-extracts them (spec §6.2).
        features = extract_features(cluster_embed, [s.path for s in data.train],
                                    config.data.image_size,
                                    config.data.eval_batch_size, verbose=verbose)
    else:
        features = learner.memory.variable.numpy()
    stored_eps = float(state.cluster_eps.numpy())
    labels, stats = self_paced.pseudo_labels(features, config.cluster,
                                             seed=config.train.seed + epoch,
                                             camids=np.array([s.camid for s in data.train]),
                                             eps=stored_eps if stored_eps > 0 else None,
                                             verbose=verbose)
    if stats.get("eps") is not None:
        state.cluster_eps.assign(stats["eps"])
    num_classes = int(labels.max()) + 1 if labels.size else 0
    scalars = summaries.cluster_diagnostics(labels, true_pids)
    scalars["cluster/seconds"] = float(stats["seconds"])
    if stats.get("eps") is not None:
        scalars["cluster/eps"] = float(stats["eps"])
    if self_paced.usable(labels, config.data.batch_size):
        state.pseudo_labels.assign(labels.astype(np.int64))
        state.num_classes.assign(num_classes)
        learner.new_classifier(num_classes, seed=config.train.seed * 1000 + epoch)
        logging.info("epoch %d: %d clusters, %.1f%% outliers, purity %.3f, NMI %.3f",
                     epoch + 1, num_classes, 100 * scalars["cluster/outlier_fraction"],
                     scalars["cluster/purity"], scalars["cluster/nmi"])
    else:
        state.pseudo_labels.assign(np.full(len(labels), -1, np.int64))
        state.num_classes.assign(0)
        learner.drop_classifier()
        logging.warning("epoch %d: clustering gave no usable clusters (%d clusters, %d of %d "
                        "samples clustered; need 2 clusters and one batch of %d); training this "
                        "epoch with the multi-label loss only", epoch + 1, num_classes,
                        int((labels >= 0).sum()), len(labels), config.data.batch_size)
    if verbose:
        print(f"  clustering: {num_classes} clusters, "
              f"{100 * scalars['cluster/outlier_fraction']:.1f}% outliers, purity "
              f"{scalars['cluster/purity']:.3f}, NMI {scalars['cluster/nmi']:.3f} (vs true ids, "
              "diagnostic only)", flush=True)
    return scalars


def _epoch_dataset(config, data, epoch: int,
                   pseudo_labels: np.ndarray | None) -> tuple[tf.data.Dataset, int]:
    """(batches, number of batches) of one epoch: all images, or PK batches over pseudo labels."""
    data_cfg = config.data
    paths = [s.path for s in data.train]
    camids = [s.camid for s in data.train]
    indices = list(range(len(data.train)))
    common = dict(image_size=tuple(data_cfg.image_size), batch_size=data_cfg.batch_size,
                  seed=config.train.seed, epoch=epoch, augment=config.augment)
    if pseudo_labels is None:
        batches = pipeline.make_train_dataset(paths, camids, indices, **common)
        steps = pipeline.train_steps_per_epoch(len(paths), data_cfg.batch_size)
    else:
        batches = pipeline.make_pk_dataset(paths, camids, indices, pseudo_labels,
                                           num_instances=data_cfg.num_instances,
                                           camera_aware=data_cfg.camera_aware_sampler, **common)
        steps = pipeline.pk_steps_per_epoch(pseudo_labels, data_cfg.batch_size)
    if config.train.steps_per_epoch:
        batches = batches.take(config.train.steps_per_epoch)
        steps = min(steps, config.train.steps_per_epoch)
    return batches, steps


def _train_epoch(learner, batches, steps: int, alpha: float, *, joint: bool, use_mplp: bool,
                 epoch: int, verbose: bool) -> dict[str, float]:
    """Runs the steps of one epoch; returns the mean of each statistic."""
    progress = keras.utils.Progbar(steps, verbose=1 if verbose else 0,
                                   stateful_metrics=train_step.STAT_NAMES)
    tracker = summaries.MeanTracker()
    for step, batch in enumerate(iteration.iterate(batches)):
        stats = {k: float(v) for k, v in learner.step(batch, alpha, joint=joint,
                                                      use_mplp=use_mplp).items()}
        if not math.isfinite(stats["loss"]):
            raise NonFiniteLossError(
                f"non-finite loss ({stats['loss']}) at epoch {epoch + 1}, step {step + 1} "
                f"(losses {stats}); training stopped, the last checkpoint is kept")
        tracker.update(stats)
        means = tracker.result()
        progress.update(step + 1, [(k, means[k]) for k in train_step.STAT_NAMES
                                   if joint or k not in ("ce", "triplet")])
    return tracker.result()


def make_embedder(model: keras.Model, feature: str = "pooled"):
    """A tf.function mapping a float32 image batch to L2-normalised inference features."""

    @tf.function(reduce_retracing=True)
    def embed(images):
        outputs = model(images, training=False)
        return tf.math.l2_normalize(tf.cast(outputs[feature], tf.float32), axis=1)

    return embed


def extract_features(embed, paths, image_size, batch_size: int, *,
                     verbose: bool = False) -> np.ndarray:
    """Features of images in order, without augmentation.

    Args:
        embed: function from make_embedder.
        paths: image files.
        image_size: (height, width).
        batch_size: images per batch.
        verbose: progress bar.

    Returns:
        float32 (len(paths), D).
    """
    batches = pipeline.make_eval_dataset(list(paths), tuple(image_size), batch_size)
    progress = keras.utils.Progbar(len(paths), verbose=1 if verbose else 0, unit_name="image")
    chunks = []
    for images in iteration.iterate(batches):
        chunks.append(embed(images).numpy())
        progress.add(len(chunks[-1]))
    return np.concatenate(chunks)


def evaluate(embed, data, config: config_lib.Config, *,
             verbose: bool = False) -> dict[str, float]:
    """Query/gallery evaluation (mAP, rank-1/5/10, mINP, seconds) of an embedder."""
    size, batch = config.data.image_size, config.data.eval_batch_size
    start = time.time()
    query = extract_features(embed, [s.path for s in data.query], size, batch, verbose=verbose)
    gallery = extract_features(embed, [s.path for s in data.gallery], size, batch,
                               verbose=verbose)
    result = evaluation.evaluate_features(
        query, gallery, np.array([s.pid for s in data.query]),
        np.array([s.pid for s in data.gallery]), np.array([s.camid for s in data.query]),
        np.array([s.camid for s in data.gallery]))
    return {**evaluation.headline_metrics(result), "seconds": time.time() - start}


def _export(model, config, path: str, epochs: int, best_by_test: dict | None = None) -> str:
    metadata = {"trained_epochs": epochs, "dataset": config.data.dataset,
                "test_set_selected": best_by_test is not None,
                "mlc_config": config_lib.to_dict(config)}
    if best_by_test is not None:
        metadata["selected_by_test_mAP"] = best_by_test["mAP"]
    return export_lib.export_feature_extractor(model, path, image_size=config.data.image_size,
                                               feature=config.model.eval_feature,
                                               metadata=metadata)
