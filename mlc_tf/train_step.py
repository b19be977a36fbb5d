"""Distributed MLC training step: MMCL on the memory, CE + triplet on pseudo labels, SGD."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from mlc_tf import config as config_lib
from mlc_tf import diagnostics
from mlc_tf import losses
from mlc_tf import memory as memory_lib
from mlc_tf import model as model_lib

# Per-step statistics returned by Learner.step, as global-batch means.
STAT_NAMES = ("loss", "mmcl", "ce", "triplet", "positives")
# With the true identity of every slot, also the MPLP positive counts of
# diagnostics.mplp_counts, as 'mplp_<name>'.


def sgd(learning_rate: float, momentum: float, nesterov: bool) -> keras.optimizers.SGD:
    """Keras SGD without decoupled weight decay (the step adds coupled decay to gradients).

    Keras keeps -lr * velocity as its momentum buffer where PyTorch keeps the velocity, so
    the two agree step for step while the learning rate is constant and differ only in the
    first steps after a learning-rate drop.
    """
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=momentum,
                                nesterov=nesterov)


class Learner:
    """Model, memory, optimizers and the current classifier of one run, under one strategy.

    The backbone, the BN neck and the classifier each have their own SGD optimizer, so that
    the backbone trains at lr * backbone_lr_mult and a new classifier starts from fresh
    momentum slots. Everything is created in strategy.scope().
    """

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model,
                 memory: memory_lib.MemoryBank | None, *, loss: config_lib.LossConfig, lr: float,
                 backbone_lr_mult: float, momentum: float, nesterov: bool, weight_decay: float,
                 jit_compile: bool = False, slot_pids=None, slot_cameras=None,
                 augment_images=None):
        """Builds the optimizers.

        Args:
            strategy: the strategy the model and memory were built under.
            model: network from model.build_model.
            memory: memory bank of the training set; None for supervised training.
            loss: loss options.
            lr: base learning rate (BN neck, classifier).
            backbone_lr_mult: backbone learning rate = lr * this.
            momentum: SGD momentum.
            nesterov: Nesterov momentum.
            weight_decay: coupled L2 decay: wd * w is added to each gradient, as PyTorch SGD does.
            jit_compile: XLA-compile the forward and backward pass of the network.
            slot_pids: (N,) true identity of every memory slot, for the MPLP precision and
                recall diagnostics (never trained on); None when unknown.
            slot_cameras: (N,) camera of every memory slot; needed by
                loss.mplp_camera_normalize.
            augment_images: per-replica batch -> float32 images, run in the step (the
                augment_on='device' half of mlc_tf.data.pipeline); None = batch['image'] is
                the network input.

        Raises:
            ValueError: loss.mplp_camera_normalize without slot_cameras.
        """
        self.strategy = strategy
        self.model = model
        self.memory = memory
        self.loss = loss
        self._slot_pids = None if slot_pids is None else tf.constant(slot_pids, tf.int64)
        self._slot_cameras = None
        if loss.mplp_camera_normalize and memory is not None:
            if slot_cameras is None:
                raise ValueError("mplp_camera_normalize needs the camera of every memory slot")
            cameras, dense = np.unique(np.asarray(slot_cameras), return_inverse=True)
            self._slot_cameras = (tf.constant(dense.reshape(-1), tf.int32), len(cameras))
        self.backbone_lr_mult = backbone_lr_mult
        self.weight_decay = weight_decay
        self._momentum, self._nesterov = momentum, nesterov
        self.backbone_variables = model_lib.backbone_variables(model)
        self.head_variables = model_lib.head_variables(model)
        with strategy.scope():
            self.backbone_optimizer = sgd(lr * backbone_lr_mult, momentum, nesterov)
            self.head_optimizer = sgd(lr, momentum, nesterov)
            self.backbone_optimizer.build(self.backbone_variables)
            self.head_optimizer.build(self.head_variables)
        self.classifier: keras.layers.Dense | None = None
        self.classifier_optimizer: keras.optimizers.SGD | None = None
        self._forward = (tf.function(self._call_model, jit_compile=True) if jit_compile
                         else self._call_model)
        self._steps: dict[tuple[str, bool], tf.types.experimental.GenericFunction] = {}
        self._augment_images = augment_images

    def set_learning_rate(self, lr: float) -> None:
        """Sets the base rate (neck, classifier) and the backbone rate lr * backbone_lr_mult."""
        self.backbone_optimizer.learning_rate = lr * self.backbone_lr_mult
        self.head_optimizer.learning_rate = lr
        if self.classifier_optimizer is not None:
            self.classifier_optimizer.learning_rate = lr

    def new_classifier(self, num_classes: int, seed: int,
                       centroids: np.ndarray | None = None) -> None:
        """Replaces the classifier by a fresh bias-free Dense(num_classes) with fresh slots.

        Initialised N(0, 0.001^2) like the torchreid/SpCL classifiers, from `seed`, or with the
        given class centroids as weights (MMT's initialisation); a zero centroid row keeps its
        random weights. A classifier of the same size is re-initialised in place instead (same
        values, zeroed momentum), so the traced steps stay valid and are not traced again.

        Args:
            num_classes: C.
            seed: seed of the random weights.
            centroids: optional (C, D) weights, D the neck feature size.
        """
        dim = self.model.output["neck"].shape[-1]
        kernel = keras.initializers.RandomNormal(stddev=0.001, seed=seed)(
            (dim, num_classes), "float32")
        if centroids is not None:
            if centroids.shape != (num_classes, dim):
                raise ValueError(f"centroids of shape {centroids.shape}; expected "
                                 f"{(num_classes, dim)}")
            given = np.linalg.norm(centroids, axis=1) > 0
            kernel = tf.where(given[None, :], tf.constant(centroids.T, tf.float32), kernel)
        if self.classifier is not None and self.classifier.units == num_classes:
            self.classifier.kernel.assign(kernel)
            for slot in self.classifier_optimizer.momentums:
                slot.assign(tf.zeros_like(slot))
            self.classifier_optimizer.iterations.assign(0)
            return
        lr = float(self.head_optimizer.learning_rate.numpy())
        with self.strategy.scope():
            self.classifier = keras.layers.Dense(
                num_classes, use_bias=False, dtype="float32", name="classifier",
                kernel_initializer="zeros")
            self.classifier.build((None, dim))
            self.classifier.kernel.assign(kernel)
            self.classifier_optimizer = sgd(lr, self._momentum, self._nesterov)
            self.classifier_optimizer.build(self.classifier.trainable_variables)
        self._forget_joint_steps()

    def drop_classifier(self) -> None:
        """Forgets the classifier (an epoch without usable clusters or before SC)."""
        self.classifier = None
        self.classifier_optimizer = None
        self._forget_joint_steps()

    def _forget_joint_steps(self) -> None:
        # Steps closing over the previous classifier are stale.
        self._steps = {key: fn for key, fn in self._steps.items() if not key[1]}

    def refresh_mplp_graph(self, seed: int = 0) -> None:
        """Recomputes the memory's kNN graph for MPLP's cycle check; no-op without one.

        Call it between epochs (outside the step), before the steps that use MPLP targets.
        """
        if self.memory is not None and self.memory.neighbours is not None:
            self.memory.refresh_neighbours(seed=seed)

    def has_mplp_graph(self) -> bool:
        """Whether the memory's kNN graph was computed or restored, not the zeros of a new bank
        (a graph of two or more slots lists some slot > 0); True without a graph."""
        if self.memory is None or self.memory.neighbours is None:
            return True
        return bool(tf.reduce_any(tf.not_equal(self.memory.neighbours, 0)))

    def checkpoint_objects(self) -> dict:
        """{name: trackable} of everything the step trains or keeps, for checkpoints."""
        objects = {"model": self.model, "backbone_optimizer": self.backbone_optimizer,
                   "head_optimizer": self.head_optimizer}
        if self.memory is not None:
            objects["memory"] = self.memory.variable
            if self.memory.neighbours is not None:
                objects["memory_neighbours"] = self.memory.neighbours
        if self.classifier is not None:
            objects.update(classifier=self.classifier,
                           classifier_optimizer=self.classifier_optimizer)
        return objects

    def step(self, batch, alpha: float, *, targets: str, joint: bool) -> dict[str, tf.Tensor]:
        """One optimisation step on a distributed global batch.

        Args:
            batch: per-replica dict {'image', 'index'} (plus 'label' when joint), as
                strategy.experimental_distribute_dataset yields it.
            alpha: memory momentum of this epoch.
            targets: memory-loss targets, 'one_hot', 'mplp' or 'none' (no memory loss, no
                memory update: supervised training).
            joint: add the CE and triplet losses on the batch labels (needs a classifier).

        Returns:
            {name: scalar} for STAT_NAMES (and 'mplp_<count>' with slot_pids and MPLP
            targets), means over the global batch.

        Raises:
            ValueError: joint without a classifier, or memory targets without a memory.
        """
        if joint and self.classifier is None:
            raise ValueError("joint step needs a classifier; call new_classifier first")
        if targets != "none" and self.memory is None:
            raise ValueError(f"targets={targets!r} needs a memory bank")
        key = (targets, joint)
        if key not in self._steps:
            self._steps[key] = self._make_step(targets, joint)
        return self._steps[key](batch, tf.constant(alpha, tf.float32))

    def _make_step(self, targets: str, joint: bool):
        def replica_step(batch, alpha):
            return self._replica_step(batch, alpha, targets, joint)

        @tf.function(reduce_retracing=True)
        def distributed_step(batch, alpha):
            stats = self.strategy.run(replica_step, args=(batch, alpha))
            return {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                    for name, value in stats.items()}

        return distributed_step

    def _call_model(self, images):
        return self.model(images, training=True)

    def _label_memory(self) -> tf.Tensor | None:
        """The bank MPLP ranks: camera-centred with mplp_camera_normalize, else None (plain)."""
        if self._slot_cameras is None:
            return None
        return memory_lib.camera_centred(self.memory.variable, *self._slot_cameras)

    def _replica_step(self, batch, alpha, targets: str, joint: bool):
        context = tf.distribute.get_replica_context()
        indices = tf.cast(batch["index"], tf.int32)
        # The last batch of an epoch may be short or uneven across replicas: average over
        # the true global count (int64: GPU collectives need no host-memory placement).
        global_size = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                         tf.shape(indices, out_type=tf.int64)[0])

        def average(per_example):
            return tf.nn.compute_average_loss(per_example, global_batch_size=global_size)

        variables = self.backbone_variables + self.head_variables
        if joint:
            variables = variables + self.classifier.trainable_variables
        images = (batch["image"] if self._augment_images is None
                  else self._augment_images(batch))
        with tf.GradientTape() as tape:
            outputs = self._forward(images)
            objective = losses.mlc_objective(
                neck=outputs["neck"], pooled=outputs["pooled"], indices=indices,
                memory=None if self.memory is None else self.memory.variable,
                options=self.loss, memory_targets=targets,
                label_memory=self._label_memory() if targets == "mplp" else None,
                classifier=self.classifier if joint else None,
                labels=batch["label"] if joint else None,
                gather=memory_lib.cross_replica_concat, average=average,
                neighbours=None if self.memory is None else self.memory.neighbours)
        gradients = tape.gradient(objective["loss"], variables)
        # Coupled weight decay. The optimizers SUM gradients over replicas, so each replica
        # adds its 1/R share of wd * w.
        decay = self.weight_decay / self.strategy.num_replicas_in_sync
        gradients = [(tf.zeros_like(v) if g is None else g) + decay * v
                     for g, v in zip(gradients, variables)]
        num_backbone, num_head = len(self.backbone_variables), len(self.head_variables)
        self.backbone_optimizer.apply_gradients(
            zip(gradients[:num_backbone], self.backbone_variables))
        self.head_optimizer.apply_gradients(
            zip(gradients[num_backbone:num_backbone + num_head], self.head_variables))
        if joint:
            self.classifier_optimizer.apply_gradients(
                zip(gradients[num_backbone + num_head:], self.classifier.trainable_variables))
        if targets != "none":
            # The objective read the memory before this write; after the gradients, the last
            # readers of that read, or TensorFlow copies the whole bank to write it.
            with tf.control_dependencies(gradients):
                self.memory.update(objective["embedded"], indices, alpha)
        stats = {name: objective[name] for name in STAT_NAMES}
        if targets == "mplp" and self._slot_pids is not None:
            counts = diagnostics.mplp_counts(objective["targets"], indices, self._slot_pids)
            stats.update({f"mplp_{name}": average(count) for name, count in counts.items()})
        return stats
