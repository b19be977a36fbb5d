"""MLC training: one assembly (build) and the epoch loop (ML, then ML + SC), checkpoints, export."""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mlc_tf import checkpointing
from mlc_tf import config as config_lib
from mlc_tf import console
from mlc_tf import diagnostics
from mlc_tf import export as export_lib
from mlc_tf import features as features_lib
from mlc_tf import memory as memory_lib
from mlc_tf import model as model_lib
from mlc_tf import multi_worker
from mlc_tf import pictures
from mlc_tf import self_paced
from mlc_tf import summaries
from mlc_tf import train_step
from mlc_tf import warm_start
from mlc_tf.data import datasets
from mlc_tf.data import iteration
from mlc_tf.data import pipeline
from mlc_tf.data import registry

SUMMARY_DIR = "summaries"
EXPORT_DIR = "export"
BEST_EXPORT_DIR = "export_best_by_test"


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the epoch and step."""


def make_strategy(devices=()) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers (each over its local
    GPUs, else its CPU; `devices` must then be empty), else MirroredStrategy over `devices`,
    else every visible GPU, else the CPU.

    Raises:
        multi_worker.TFConfigError: a malformed TF_CONFIG.
        ValueError: devices with several workers.
    """
    task = multi_worker.environment_task()
    if task is not None and len(task.workers) > 1:
        if devices:
            raise ValueError(f"--devices={','.join(devices)} cannot be combined with the "
                             f"{len(task.workers)} workers of TF_CONFIG")
        return multi_worker.make_strategy()
    if not devices:
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in gpus] or ["/device:CPU:0"]
    return tf.distribute.MirroredStrategy(list(devices))


def learning_rate(epoch: int, train: config_lib.TrainConfig) -> float:
    """Step decay lr * lr_gamma ** (epoch // lr_step), after an optional linear warm-up.

    In warm-up epoch e < lr_warmup_epochs the rate is scaled by f + (1 - f) * e / lr_warmup_epochs,
    f = lr_warmup_factor, as MMT's WarmupMultiStepLR does per epoch.
    """
    rate = train.lr * train.lr_gamma ** (epoch // train.lr_step)
    if epoch < train.lr_warmup_epochs:
        progress = epoch / train.lr_warmup_epochs
        rate *= train.lr_warmup_factor + (1 - train.lr_warmup_factor) * progress
    return rate


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """What one epoch does (spec §7.2).

    Attributes:
        targets: memory-loss targets: 'one_hot' (own slot), 'mplp', or 'none' (supervised).
        self_paced: the joint CE + triplet phase is on (when labels are usable).
        relabel: cluster (or take the true labels) before this epoch.
    """

    targets: str
    self_paced: bool
    relabel: bool


def plan_epoch(epoch: int, config: config_lib.Config) -> EpochPlan:
    """The phase of a 0-based epoch."""
    if config.train.supervised:
        return EpochPlan(targets="none", self_paced=True, relabel=epoch == 0)
    cluster = config.cluster
    sc = cluster.clustering != "none" and epoch >= cluster.sc_start_epoch
    return EpochPlan(targets="mplp" if epoch >= config.loss.warmup_epochs else "one_hot",
                     self_paced=sc,
                     relabel=sc and (epoch - cluster.sc_start_epoch) % cluster.recluster_every
                     == 0)


def build(config: config_lib.Config, strategy: tf.distribute.Strategy, num_train: int, *,
          slot_pids: np.ndarray | None = None,
          slot_cameras: np.ndarray | None = None) -> train_step.Learner:
    """Builds the network, the memory bank and the learner of a run inside strategy.scope().

    Args:
        config: the run configuration.
        strategy: the distribution strategy.
        num_train: training images (memory slots).
        slot_pids: (N,) true identities, for the MPLP diagnostics only; None when unknown.
        slot_cameras: (N,) cameras, for --mplp_camera_normalize.

    Returns:
        the Learner (its model starts from --init_from, --pretrained or scratch).
    """
    model_cfg = config.model
    replicas = strategy.num_replicas_in_sync
    with strategy.scope():
        # Synchronised BN makes R replicas compute what one replica would on the global batch.
        model = model_lib.build_model(
            backbone=model_cfg.backbone, image_size=config.data.image_size,
            multiscale=model_cfg.multiscale, pooling=model_cfg.pooling,
            pretrained="none" if model_cfg.init_from else model_cfg.pretrained,
            preprocessing=(warm_start.source_preprocessing(model_cfg.init_from)
                           if model_cfg.init_from else None),
            synchronized_bn=model_cfg.synchronized_bn and replicas > 1)
        memory = None if config.train.supervised else memory_lib.MemoryBank(
            num_train, model_lib.feature_dim(model_cfg.backbone, model_cfg.multiscale),
            dtype=config.loss.memory_dtype, graph_k=config.loss.mplp_graph_k)
    if model_cfg.init_from:
        loaded = warm_start.load_initial_weights(model, model_cfg.init_from)
        logging.info("initial weights from %s (%d layers; %s, epoch %s)", loaded["checkpoint"],
                     loaded["layers"], loaded["kind"], loaded["epoch"])
    train_cfg = config.train
    return train_step.Learner(
        strategy, model, memory, loss=config.loss, lr=train_cfg.lr,
        backbone_lr_mult=train_cfg.backbone_lr_mult, momentum=train_cfg.momentum,
        nesterov=train_cfg.nesterov, weight_decay=train_cfg.weight_decay,
        jit_compile=train_cfg.jit_compile, slot_pids=slot_pids, slot_cameras=slot_cameras,
        augment_images=(pipeline.device_augmentation(config.data.image_size, config.augment)
                        if config.data.augment_on == "device" else None))


def run(config: config_lib.Config, workdir: str, *,
        strategy: tf.distribute.Strategy | None = None,
        data: datasets.ReidDataset | None = None, stop_after_epoch: int | None = None,
        verbose: bool = True) -> dict:
    """Trains MLC (or the supervised baseline), resuming from the newest checkpoint, then exports.

    Args:
        config: the run configuration.
        workdir: folder for config.json, checkpoints/, summaries/, history.jsonl, pictures/
            and export/.
        strategy: MirroredStrategy to use; default make_strategy(config.train.devices).
        data: the dataset; default the one config.data names.
        stop_after_epoch: stop (after its checkpoint) once this 0-based epoch is done, without
            exporting; running again resumes.
        verbose: progress bars on stdout.

    SIGTERM or SIGINT stops the run at the next step boundary: it writes a checkpoint (inside
    an epoch: with the steps done) and returns; running again continues from that step, with
    the batches an uninterrupted run would have trained on.

    Under a MultiWorkerMirroredStrategy every worker runs this with the same arguments; only
    the chief (worker 0) writes `workdir`, the others write into temporary folders they delete
    (multi_worker.write_dir) and restore from the chief's checkpoints.

    Returns:
        {'epochs_done', 'export' (path or None), 'eval' (last evaluation or {}),
        'interrupted' (the signal's name, e.g. 'SIGTERM', or None), 'checkpoint' (newest path
        or None)}; on the other workers the paths are those the chief writes.

    Raises:
        checkpointing.CheckpointMismatchError: the workdir holds a checkpoint of another
            dataset, list of training files or model.
        checkpointing.CheckpointReadError: no checkpoint of the workdir can be read.
        checkpointing.CheckpointWriteError: a checkpoint could not be written (full disk);
            the previous one is kept.
        NonFiniteLossError: the loss became NaN or Inf; the last checkpoint is kept.
    """
    # Created before any other TensorFlow op: a MultiWorkerMirroredStrategy needs that.
    strategy = strategy or make_strategy(config.train.devices)
    collectives = multi_worker.Collectives(strategy)
    with checkpointing.StopRequest() as stop, multi_worker.write_dir(workdir, strategy) as output:
        if collectives.num_workers > 1:
            stop = multi_worker.AgreedStop(stop, collectives)
        result = _run(config, output, stop, strategy=strategy, collectives=collectives,
                      data=data, stop_after_epoch=stop_after_epoch, verbose=verbose,
                      read_dir=workdir)
    if output == workdir:
        return result
    # The other workers' paths pointed into their deleted folders: name the chief's.
    return {**result, **{key: os.path.join(workdir, os.path.relpath(result[key], output))
                         for key in ("export", "checkpoint")
                         if result[key] and result[key].startswith(output + os.sep)}}


def _run(config: config_lib.Config, workdir: str, stop: checkpointing.StopRequest, *,
         strategy: tf.distribute.Strategy, collectives: multi_worker.Collectives,
         data: datasets.ReidDataset | None, stop_after_epoch: int | None, verbose: bool,
         read_dir: str) -> dict:
    """run(), writing into `workdir`, restoring from `read_dir`'s checkpoints, with `stop`
    telling when a signal asked to stop."""
    os.makedirs(workdir, exist_ok=True)
    config_lib.save_json(config, os.path.join(workdir, checkpointing.CONFIG_FILE))
    train_cfg, model_cfg = config.train, config.model
    keras.utils.set_random_seed(train_cfg.seed)
    keras.mixed_precision.set_global_policy(
        "mixed_bfloat16" if train_cfg.mixed_precision else "float32")
    replicas = strategy.num_replicas_in_sync
    if config.data.batch_size % replicas:
        raise ValueError(f"batch_size {config.data.batch_size} is not divisible by the "
                         f"{replicas} replicas")
    if data is None:
        data = registry.create(config.data.dataset, config.data.data_dir,
                               camstyle=config.data.camstyle, **config.data.options())
    registry.check_dataset_supports(config, data)
    num_train = len(data.train)
    verbose = verbose and collectives.is_chief
    if verbose:
        print(console.format_header(
            data.name, num_train=num_train, num_query=len(data.query),
            num_gallery=len(data.gallery), devices=strategy.extended.worker_devices,
            batch_size=config.data.batch_size, workdir=workdir,
            workers=collectives.num_workers), flush=True)
    pids = np.array([s.pid for s in data.train])
    camids = np.array([s.camid for s in data.train])
    known_pids = pids if self_paced.identities_known(pids) else None  # diagnostics only
    labels_from = self_paced.label_source(config, pids, camids)
    learner = build(config, strategy, num_train, slot_pids=known_pids, slot_cameras=camids)
    # Host-side values, outside the scope: MultiWorkerMirroredStrategy cannot broadcast the
    # initial value of a string variable.
    state = checkpointing.RunState()
    with strategy.scope():
        clusters = self_paced.ClusterState(num_train)
    fingerprint = {"dataset": data.name, "num_train": num_train,
                   "feature_dim": model_lib.feature_dim(model_cfg.backbone, model_cfg.multiscale),
                   "backbone": model_cfg.backbone, "multiscale": model_cfg.multiscale,
                   "pooling": model_cfg.pooling, "image_size": list(config.data.image_size)}
    if train_cfg.supervised:
        fingerprint["supervised"] = True
    checkpointer = checkpointing.Checkpointer(
        os.path.join(read_dir, checkpointing.CHECKPOINT_DIR), fingerprint,
        train_cfg.keep_checkpoints,
        train_files=[os.path.relpath(s.path, data.root) for s in data.train],
        write_directory=os.path.join(workdir, checkpointing.CHECKPOINT_DIR))
    start_epoch, start_step = _restore(checkpointer, learner, state, clusters, train_cfg.seed)
    writer = tf.summary.create_file_writer(os.path.join(workdir, SUMMARY_DIR))
    eval_embed = features_lib.make_embedder(learner.model, model_cfg.eval_feature)
    cluster_embed = features_lib.make_embedder(learner.model, "pooled")
    decoded = _decoded_images(config.data, data)
    # Each worker extracts its share of the images; all get all the features.
    extract = functools.partial(collectives.extract_split, features_lib.extract_features)

    def cluster_features() -> np.ndarray:
        if config.cluster.cluster_features == "extract":
            # Pre-BN, L2-normalised, as Cluster Contrast re-extracts them (spec §6.2).
            return extract(
                cluster_embed, [s.path for s in data.train], image_size=config.data.image_size,
                batch_size=config.data.eval_batch_size)
        return learner.memory.numpy()

    last_eval: dict = {}

    def stopped(epochs_done: int, checkpoint: str | None) -> dict:
        logging.info("%s: stopped; checkpoint %s", stop.signal_name, checkpoint)
        iteration.wait_for_retired()
        return {"epochs_done": epochs_done, "export": None, "eval": last_eval,
                "interrupted": stop.signal_name, "checkpoint": checkpoint}

    for epoch in range(start_epoch, train_cfg.epochs):
        if stop.requested:
            return stopped(epoch, checkpointer.latest)
        # What a mid-epoch checkpoint already did in this epoch: steps and summaries.
        trained, scalars = state.partial() if epoch == start_epoch and start_step else ([], {})
        lr = learning_rate(epoch, train_cfg)
        learner.set_learning_rate(lr)
        alpha = memory_lib.alpha_for_epoch(epoch, train_cfg.epochs, config.loss.max_alpha)
        plan = plan_epoch(epoch, config)
        scalars.update({"train/lr": lr, "train/alpha": alpha})
        if plan.relabel and not trained:
            labelled = labels_from.next_round(cluster_features, seed=train_cfg.seed + epoch,
                                              eps=clusters.fixed_eps(),
                                              independence=clusters.fixed_independence())
            labelled = _chief_round(collectives, labelled)
            clusters.assign(labelled)
            _new_classifier(learner, clusters, train_cfg.seed * 1000 + epoch,
                            config.loss.classifier_init)
            scalars.update(labelled.scalars)
            _log_round(epoch, labelled, config.data.batch_size, verbose)
            pictures.write_clusters(workdir, epoch + 1, [s.path for s in data.train],
                                    labelled.labels, known_pids,
                                    seed=train_cfg.seed + epoch, writer=writer)
        joint = plan.self_paced and clusters.num_classes > 0
        # A mid-epoch checkpoint holds the graph as the epoch's steps left it.
        if plan.targets == "mplp" and not (trained and learner.has_mplp_graph()):
            learner.refresh_mplp_graph(seed=train_cfg.seed + epoch)
            _share_chief_graph(collectives, learner)
        labels = clusters.labels.numpy() if joint else None
        batches = multi_worker.distribute_batches(
            strategy, config.data.batch_size,
            lambda shard: _epoch_dataset(config, data, epoch, labels, skip=len(trained),
                                         shard=shard, decoded=decoded))
        steps = _epoch_steps(config, len(data.train), labels)
        trained = _train_epoch(learner, batches, steps, alpha, plan.targets, joint=joint,
                               epoch=epoch, epochs=train_cfg.epochs, lr=lr, verbose=verbose,
                               trained=trained, stop=stop)
        if stop.requested:
            state.set_position(epoch, trained, scalars)
            return stopped(epoch, checkpointer.save(_objects(learner, state, clusters),
                                                    epoch, step=len(trained)))
        scalars.update(_epoch_scalars(_means(trained)))
        if train_cfg.eval_every and ((epoch + 1) % train_cfg.eval_every == 0
                                     or epoch + 1 == train_cfg.epochs):
            last_eval = features_lib.evaluate(
                eval_embed, data, image_size=config.data.image_size,
                batch_size=config.data.eval_batch_size, extract=extract).metrics
            scalars.update({"eval/mAP": last_eval["mAP"], "eval/rank1": last_eval["rank1"]})
            if verbose:
                print(f"  eval after epoch {epoch + 1}: "
                      f"{features_lib.format_metrics(last_eval)}", flush=True)
            if train_cfg.export_best_by_test and last_eval["mAP"] > float(state.best_map.numpy()):
                state.best_map.assign(last_eval["mAP"])
                _export(learner.model, config, os.path.join(workdir, BEST_EXPORT_DIR),
                        epoch + 1, best_by_test=last_eval)
        summaries.write_scalars(writer, scalars, epoch + 1)
        pictures.append_history(workdir, epoch + 1, scalars)
        pictures.write_curves(workdir)
        state.set_position(epoch + 1)
        saved = checkpointer.save(_objects(learner, state, clusters), epoch + 1)
        if stop_after_epoch is not None and epoch >= stop_after_epoch:
            iteration.wait_for_retired()
            return {"epochs_done": epoch + 1, "export": None, "eval": last_eval,
                    "interrupted": None, "checkpoint": saved}
    if stop.requested:
        return stopped(train_cfg.epochs, checkpointer.latest)

    export_path = _export(learner.model, config, os.path.join(workdir, EXPORT_DIR),
                          train_cfg.epochs)
    iteration.wait_for_retired()
    return {"epochs_done": train_cfg.epochs, "export": export_path, "eval": last_eval,
            "interrupted": None, "checkpoint": checkpointer.latest}


def _objects(learner: train_step.Learner, state: checkpointing.RunState,
             clusters: self_paced.ClusterState) -> dict:
    return {**learner.checkpoint_objects(), **state.objects(), **clusters.objects()}


def _new_classifier(learner: train_step.Learner, clusters: self_paced.ClusterState,
                    seed: int, init: str) -> None:
    """A fresh classifier sized to the current labels, or none when there are no classes.

    With init='centroids' its weights are the classes' mean memory rows (a class whose mean is
    zero keeps its random weights; without a memory, a supervised run, all do)."""
    if clusters.num_classes > 0:
        centroids = None
        if init == "centroids" and learner.memory is not None:
            centroids = self_paced.class_centroids(learner.memory.numpy(), clusters.labels.numpy(),
                                                   clusters.num_classes)
        learner.new_classifier(clusters.num_classes, seed=seed, centroids=centroids)
    else:
        learner.drop_classifier()


def _restore(checkpointer: checkpointing.Checkpointer, learner: train_step.Learner,
             state: checkpointing.RunState, clusters: self_paced.ClusterState,
             seed: int) -> tuple[int, int]:
    """Restores the newest readable checkpoint, if any.

    Returns:
        (epoch to start from, steps of it already trained).
    """
    stored = checkpointer.peek()
    if stored is None:
        return 0, 0
    # Build a classifier of the stored size so that the restore can fill it.
    if self_paced.num_classes(stored["pseudo_labels"]) > 0:
        learner.new_classifier(self_paced.num_classes(stored["pseudo_labels"]), seed=seed)
    path = checkpointer.restore(_objects(learner, state, clusters), stored["path"])
    logging.info("resumed from %s after epoch %d%s", path, stored["epoch"],
                 f" and {stored['step']} steps of the next" if stored["step"] else "")
    return stored["epoch"], stored["step"]


def _chief_round(collectives: multi_worker.Collectives,
                 labelled: self_paced.Round) -> self_paced.Round:
    """The chief's labelling round, on every worker.

    Every worker clusters the same features, but approximate neighbours and DBSCAN need not be
    bit-identical across hosts; the chief's labels are the ones trained on.
    """
    if collectives.num_workers == 1:
        return labelled
    labels = collectives.broadcast_from_chief(labelled.labels)
    if not np.array_equal(labels, labelled.labels):
        logging.warning("this worker's clustering differs from the chief's in %d of %d labels; "
                        "training on the chief's", int(np.sum(labels != labelled.labels)),
                        len(labels))
    rest = collectives.broadcast_json({"scalars": labelled.scalars, "eps": labelled.eps,
                                       "independence": labelled.independence})
    return self_paced.Round(labels, rest["scalars"], rest["eps"], rest["independence"])


def _share_chief_graph(collectives: multi_worker.Collectives,
                       learner: train_step.Learner) -> None:
    """Gives every worker the chief's kNN graph of the memory (an approximate search need not
    agree across hosts)."""
    graph = learner.memory.neighbours if learner.memory is not None else None
    if graph is not None and collectives.num_workers > 1:
        graph.assign(collectives.broadcast_from_chief(graph.numpy()))


def _log_round(epoch: int, labelled: self_paced.Round, batch_size: int, verbose: bool) -> None:
    scalars = labelled.scalars
    found = (f"{int(scalars['cluster/num_clusters'])} clusters, "
             f"{100 * scalars.get('cluster/outlier_fraction', 0.0):.1f}% outliers")
    if "cluster/knn_recall" in scalars:
        found += f", kNN recall {scalars['cluster/knn_recall']:.3f}"
    if not labelled.usable:
        logging.warning("epoch %d: clustering gave no usable clusters (%s; need 2 clusters and "
                        "one batch of %d); training this epoch with the multi-label loss only",
                        epoch + 1, found, batch_size)
    quality = ""
    if "cluster/purity" in scalars:
        quality = (f", purity {scalars['cluster/purity']:.3f}, NMI {scalars['cluster/nmi']:.3f}, "
                   f"pair precision {scalars['cluster/pair_precision']:.3f} recall "
                   f"{scalars['cluster/pair_recall']:.3f} (vs true ids, diagnostic only)")
    seconds = f" in {scalars['cluster/seconds']:.1f} s" if "cluster/seconds" in scalars else ""
    if verbose:
        print(f"  labels for epoch {epoch + 1}: {found}{quality}{seconds}", flush=True)


def _epoch_scalars(means: dict[str, float]) -> dict[str, float]:
    """TensorBoard scalars of an epoch's step means, MPLP precision and recall included."""
    scalars = {f"train/{name}": means[name] for name in train_step.STAT_NAMES}
    if "mplp_predicted" in means:
        scalars.update(diagnostics.mplp_precision_recall(
            {name: means[f"mplp_{name}"] for name in diagnostics.MPLP_COUNT_NAMES}))
    return scalars


def _decoded_images(data_cfg: config_lib.DataConfig, data):
    """The run's decode cache (--decode_cache), or None: every epoch decodes the files."""
    decoded = pipeline.decode_images(
        data_cfg.decode_cache, [s.path for s in data.train],
        data.camstyle if data_cfg.camstyle else None,
        budget_bytes=int(data_cfg.decode_cache_gib * 2**30))
    if decoded is not None:
        logging.debug("decode cache: %d decoded images, %.2f GB in host memory", len(decoded),
                      decoded.nbytes / 1e9)
    elif data_cfg.decode_cache == "auto":
        logging.info("decode cache: the decoded images exceed %g GiB; decoding every epoch",
                     data_cfg.decode_cache_gib)
    return decoded


def _epoch_steps(config, num_train: int, labels: np.ndarray | None) -> int:
    """Batches of one epoch (_epoch_dataset's), those a resumed epoch skips included."""
    batch_size = config.data.batch_size
    steps = (pipeline.train_steps_per_epoch(num_train, batch_size) if labels is None
             else pipeline.pk_steps_per_epoch(labels, batch_size))
    return min(steps, config.train.steps_per_epoch) if config.train.steps_per_epoch else steps


def _epoch_dataset(config, data, epoch: int, labels: np.ndarray | None, skip: int = 0,
                   shard: tuple[int, int] = (0, 1),
                   decoded=None) -> tf.data.Dataset:
    """The batches of one epoch (_epoch_steps of them): all images, or PK batches over labels.

    The first `skip` batches are left out, their images unread (a resumed epoch): the
    batches, their augmentation included, are a function of (seed, epoch, position) only, so
    the rest are unchanged; _epoch_steps counts them. With shard (worker i, workers n), each
    batch is the i-th of n consecutive parts of the global batch (pipeline's shard). decoded:
    the run's decode cache, or None.
    """
    data_cfg = config.data
    paths = [s.path for s in data.train]
    camids = [s.camid for s in data.train]
    indices = list(range(len(data.train)))
    common = dict(image_size=tuple(data_cfg.image_size), batch_size=data_cfg.batch_size,
                  seed=config.train.seed, epoch=epoch, augment=config.augment,
                  camstyle=data.camstyle if data_cfg.camstyle else None, decoded=decoded,
                  augment_on=data_cfg.augment_on, shard=shard, skip_batches=skip)
    if labels is None:
        batches = pipeline.make_train_dataset(paths, camids, indices, **common)
    else:
        batches = pipeline.make_pk_dataset(paths, camids, indices, labels,
                                           num_instances=data_cfg.num_instances,
                                           camera_aware=data_cfg.camera_aware_sampler, **common)
    if config.train.steps_per_epoch:
        batches = batches.take(config.train.steps_per_epoch - skip)
    return batches


def _train_epoch(learner, batches, steps: int, alpha: float, targets: str, *, joint: bool,
                 epoch: int, epochs: int, lr: float, verbose: bool,
                 trained: list[dict[str, float]],
                 stop: checkpointing.StopRequest) -> list[dict[str, float]]:
    """Runs the steps of one epoch that follow those already trained, under its progress bar.

    Args:
        batches: the distributed batches after the trained ones.
        steps: batches of the whole epoch.
        trained: statistics of each step already trained in this epoch (resumed epoch).
        stop: checked after each step.

    Returns:
        the statistics of each step trained in this epoch so far (`steps` of them, unless a
        stop was requested).
    """
    shown = [name for name in train_step.STAT_NAMES
             if (joint or name not in ("ce", "triplet"))
             and (targets != "none" or name not in ("mmcl", "positives"))]
    progress = console.ProgressBar(steps, f"Epoch {epoch + 1}/{epochs}", enabled=verbose)
    tracker = summaries.MeanTracker()
    trained = list(trained)
    resumed = len(trained)
    for stats in trained:
        tracker.update(stats)
    for step, batch in enumerate(iteration.iterate(batches), start=len(trained)):
        stats = {k: float(v) for k, v in learner.step(batch, alpha, targets=targets,
                                                      joint=joint).items()}
        if not math.isfinite(stats["loss"]):
            raise NonFiniteLossError(
                f"non-finite loss ({stats['loss']}) at epoch {epoch + 1}, step {step + 1} "
                f"(losses {stats}); training stopped, the last checkpoint is kept")
        trained.append(stats)
        tracker.update(stats)
        means = tracker.result()
        progress.update(step + 1, {name: means[name] for name in shown})
        if stop.requested:
            break
    memory = {"one_hot": "one-hot memory targets", "mplp": "MPLP memory targets",
              "none": "no memory"}[targets]
    progress.finish(f"lr {lr:.3g}, alpha {alpha:.3f}, {memory}"
                    f"{', joint CE + triplet' if joint else ''}"
                    f"{f', resumed after step {resumed}' if resumed else ''}")
    return trained


def _means(step_stats: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each statistic over the steps of an epoch."""
    tracker = summaries.MeanTracker()
    for stats in step_stats:
        tracker.update(stats)
    return tracker.result()


def _export(model, config, path: str, epochs: int, best_by_test: dict | None = None) -> str:
    metadata = {"trained_epochs": epochs, "dataset": config.data.dataset,
                "supervised": config.train.supervised,
                "test_set_selected": best_by_test is not None,
                "mlc_config": config_lib.to_dict(config)}
    if best_by_test is not None:
        metadata["selected_by_test_mAP"] = best_by_test["mAP"]
    return export_lib.export_feature_extractor(model, path, image_size=config.data.image_size,
                                               feature=config.model.eval_feature,
                                               metadata=metadata)
