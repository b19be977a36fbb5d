"""Distributed MLC training step: MMCL on the memory, CE + triplet on pseudo labels, SGD."""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from mlc_tf import losses
from mlc_tf import model as model_lib
from mlc_tf.memory import MemoryBank

# Per-step statistics returned by Learner.step, as global-batch means.
STAT_NAMES = ("loss", "mmcl", "ce", "triplet", "positives")


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Loss options the step needs (a subset of config.LossConfig)."""

    mplp_threshold: float = 0.6
    mplp_min_candidates: int = 10
    mplp_max_candidates: int = 64
    mplp_quirk: bool = True
    hard_negative_ratio: float = 0.01
    delta: float = 5.0
    lambda_mmcl: float = 0.3
    lambda_sc: float = 1.0
    label_smoothing: float = 0.1
    triplet_margin: float = 0.0
    triplet_soft: bool = False
    triplet_feature: str = "pooled"


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

    def __init__(self, strategy: tf.distribute.Strategy, model: keras.Model, memory: MemoryBank,
                 *, weights: LossWeights, lr: float, backbone_lr_mult: float, momentum: float,
                 nesterov: bool, weight_decay: float, jit_compile: bool = False):
        """Builds the optimizers.

        Args:
            strategy: the strategy the model and memory were built under.
            model: network from model.build_model.
            memory: memory bank of the training set.
            weights: loss options.
            lr: base learning rate (BN neck, classifier).
            backbone_lr_mult: backbone learning rate = lr * this.
            momentum: SGD momentum.
            nesterov: Nesterov momentum.
            weight_decay: coupled L2 decay: wd * w is added to each gradient, as PyTorch SGD does.
            jit_compile: XLA-compile the forward and backward pass of the network.
        """
        self.strategy = strategy
        self.model = model
        self.memory = memory
        self.weights = weights
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
        self._steps: dict[tuple[bool, bool], tf.types.experimental.GenericFunction] = {}

    def set_learning_rate(self, lr: float) -> None:
        """Sets the base rate (neck, classifier) and the backbone rate lr * backbone_lr_mult."""
        self.backbone_optimizer.learning_rate = lr * self.backbone_lr_mult
        self.head_optimizer.learning_rate = lr
        if self.classifier_optimizer is not None:
            self.classifier_optimizer.learning_rate = lr

    def new_classifier(self, num_classes: int, seed: int) -> None:
        """Replaces the classifier by a fresh bias-free Dense(num_classes) with fresh slots.

        Initialised N(0, 0.001^2) like the torchreid/SpCL classifiers, from `seed`. A classifier
        of the same size is re-initialised in place instead (same values, zeroed momentum), so
        the traced steps stay valid and are not traced again.
        """
        initializer = keras.initializers.RandomNormal(stddev=0.001, seed=seed)
        if self.classifier is not None and self.classifier.units == num_classes:
            kernel = self.classifier.kernel
            kernel.assign(initializer(kernel.shape, kernel.dtype))
            for slot in self.classifier_optimizer.momentums:
                slot.assign(tf.zeros_like(slot))
            self.classifier_optimizer.iterations.assign(0)
            return
        dim = self.model.output["neck"].shape[-1]
        lr = float(self.head_optimizer.learning_rate.numpy())
        with self.strategy.scope():
            self.classifier = keras.layers.Dense(
                num_classes, use_bias=False, dtype="float32", name="classifier",
                kernel_initializer=initializer)
            self.classifier.build((None, dim))
            self.classifier_optimizer = sgd(lr, self._momentum, self._nesterov)
            self.classifier_optimizer.build(self.classifier.trainable_variables)
        # Steps closing over the previous classifier are stale.
        self._steps = {key: fn for key, fn in self._steps.items() if not key[0]}

    def drop_classifier(self) -> None:
        """Forgets the classifier (an epoch without usable clusters or before SC)."""
        self.classifier = None
        self.classifier_optimizer = None
        self._steps = {key: fn for key, fn in self._steps.items() if not key[0]}

    def step(self, batch, alpha: float, *, joint: bool, use_mplp: bool) -> dict[str, tf.Tensor]:
        """One optimisation step on a distributed global batch.

        Args:
            batch: per-replica dict {'image', 'index'} (plus 'label' when joint), as
                strategy.experimental_distribute_dataset yields it.
            alpha: memory momentum of this epoch.
            joint: add the pseudo-label CE and triplet losses (needs a classifier).
            use_mplp: MPLP multi-label targets; otherwise one-hot on the own slot.

        Returns:
            {name: scalar} for STAT_NAMES, means over the global batch.

        Raises:
            ValueError: joint without a classifier.
        """
        if joint and self.classifier is None:
            raise ValueError("joint step needs a classifier; call new_classifier first")
        key = (joint, use_mplp)
        if key not in self._steps:
            self._steps[key] = self._make_step(joint, use_mplp)
        return self._steps[key](batch, tf.constant(alpha, tf.float32))

    def _make_step(self, joint: bool, use_mplp: bool):
        def replica_step(batch, alpha):
            return self._replica_step(batch, alpha, joint, use_mplp)

        @tf.function(reduce_retracing=True)
        def distributed_step(batch, alpha):
            stats = self.strategy.run(replica_step, args=(batch, alpha))
            return {name: self.strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)
                    for name, value in stats.items()}

        return distributed_step

    def _call_model(self, images):
        return self.model(images, training=True)

    def _replica_step(self, batch, alpha, joint: bool, use_mplp: bool):
        context = tf.distribute.get_replica_context()
        weights = self.weights
        indices = tf.cast(batch["index"], tf.int32)
        # The last batch of an epoch may be short or uneven across replicas: average over
        # the true global count.
        global_size = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                         tf.shape(indices)[0])

        def average(per_example):
            return tf.nn.compute_average_loss(per_example, global_batch_size=global_size)

        variables = self.backbone_variables + self.head_variables
        if joint:
            variables = variables + self.classifier.trainable_variables
        with tf.GradientTape() as tape:
            outputs = self._forward(batch["image"])
            embedded = tf.math.l2_normalize(tf.cast(outputs["neck"], tf.float32), axis=1)
            logits = self.memory.similarities(embedded)
            if use_mplp:
                targets = losses.mplp_targets(
                    self.memory.variable, indices, threshold=weights.mplp_threshold,
                    min_candidates=weights.mplp_min_candidates,
                    max_candidates=weights.mplp_max_candidates,
                    second_candidate_quirk=weights.mplp_quirk)
            else:
                targets = losses.one_hot_targets(indices, self.memory.num_slots)
            mmcl = average(losses.mmcl_loss(logits, targets,
                                             hard_negative_ratio=weights.hard_negative_ratio,
                                             delta=weights.delta))
            zero = tf.zeros((), tf.float32)
            ce, triplet = zero, zero
            total = mmcl
            if joint:
                labels = tf.cast(batch["label"], tf.int32)
                class_logits = self.classifier(tf.cast(outputs["neck"], tf.float32))
                ce = average(losses.label_smoothed_cross_entropy(
                    class_logits, labels, epsilon=weights.label_smoothing))
                features = tf.cast(outputs["pooled"], tf.float32)
                if weights.triplet_feature == "normalized":
                    features = tf.math.l2_normalize(features, axis=1)
                # Local anchors are mined against the whole global batch, so that the
                # result does not depend on how the batch is split across replicas.
                all_features = context.all_gather(features, axis=0)
                all_labels = context.all_gather(labels, axis=0)
                triplet = average(losses.batch_hard_triplet(
                    features, labels, all_features, all_labels,
                    margin=weights.triplet_margin, soft=weights.triplet_soft))
                total = weights.lambda_mmcl * mmcl + weights.lambda_sc * (ce + triplet)
        gradients = tape.gradient(total, variables)
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
        # Logits and targets above read the memory before this write.
        self.memory.update(embedded, indices, alpha)
        positives = average(tf.reduce_sum(tf.cast(targets, tf.float32), axis=1))
        return {"loss": total, "mmcl": mmcl, "ce": ce, "triplet": triplet,
                "positives": positives}
