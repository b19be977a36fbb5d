"""Tests for mlc_tf.losses: MPLP targets, MMCL, label-smoothed CE, batch-hard triplet."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import losses

# Worked MPLP example: unit vectors at these angles (degrees). A tight hub H0..H3, an
# anchor A whose third candidate (H3) sees the whole hub before it, a point B near A, and
# Q whose only above-threshold neighbour is the hub member H0.
_ANGLES = {"H0": 0, "H1": 2, "H2": 5, "H3": 9, "A": 60, "B": 100, "Q": -52}
_SLOT = {name: slot for slot, name in enumerate(_ANGLES)}


def _angle_memory():
    radians = np.deg2rad(list(_ANGLES.values()))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def _slots(*names):
    return sorted(_SLOT[name] for name in names)


def _positives(targets_row):
    return sorted(np.flatnonzero(targets_row).tolist())


def _mplp_reference(memory, anchor, threshold, min_candidates, quirk):
    """Plain transcription of MMCL's per-anchor loop, with the anchor as the cycle reference."""
    memory = memory.astype(np.float64)
    sims = memory @ memory[anchor]
    ranking = np.argsort(-sims)
    num_above = int(np.sum(sims > threshold))
    k = max(num_above, min_candidates)
    step = 1 if quirk else -1
    first_failure = k
    for j in range(k):
        candidate_ranking = np.argsort(-(memory @ memory[ranking[j]]))
        position = int(np.flatnonzero(candidate_ranking == anchor)[0])
        if position > k:
            first_failure = j
            break
        step = max(step, j)
    count = min(step + 1, num_above)
    targets = np.zeros(len(memory), np.float32)
    targets[ranking[:max(count, 0)]] = 1.0
    targets[anchor] = 1.0
    return targets, {"num_above": num_above, "first_failure": first_failure, "count": count}


def _clustered_memory(seed, num_slots=160, dim=12):
    """Clusters of very different sizes and spreads, so n_above and failures vary."""
    rng = np.random.default_rng(seed)
    rows = []
    while len(rows) < num_slots:
        center = rng.normal(size=dim)
        size = int(rng.choice([1, 2, 3, 5, 8, 15, 30]))
        spread = rng.uniform(0.2, 0.9)
        rows.extend(center + spread * rng.normal(size=(size, dim)))
    memory = np.asarray(rows[:num_slots], np.float32)
    return memory / np.linalg.norm(memory, axis=1, keepdims=True)


def _graph(memory, graph_k):
    """(N, graph_k) nearest slots of every slot by cosine similarity, itself first (NumPy)."""
    sims = memory.astype(np.float64) @ memory.astype(np.float64).T
    return np.argsort(-sims, axis=1, kind="stable")[:, :graph_k].astype(np.int64)


class TestMplpTargets:

    @pytest.mark.parametrize("quirk", [True, False])
    def test_worked_example_min_candidates_1(self, quirk):
        memory = _angle_memory()
        anchors = [_SLOT["A"], _SLOT["Q"], _SLOT["H0"]]
        targets = losses.mplp_targets(memory, anchors, min_candidates=1,
                                      second_candidate_quirk=quirk).numpy()
        # A (60°): sims B .766, H3 .629 (> .6), H2 .574: n_above = 3 = K. j=1: B ranks A
        # first. j=2: H3 sees H2, H1, H0 (cos 4°, 7°, 9°) before A (cos 51°): position 4 > 3,
        # fails, f = 2, count = min(max(2, 2), 3) = 2.
        assert _positives(targets[0]) == _slots("A", "B")
        # Q (-52°): only H0 (cos 52° = .616) above t: n_above = 2 = K. j=1: H0 sees H1, H2,
        # H3 before Q: position 4 > 2, f = 1. Quirk: count = min(2, 2) = 2; without: 1.
        assert _positives(targets[1]) == (_slots("Q", "H0") if quirk else _slots("Q"))
        # H0: n_above = 5 (hub and Q at .616) = K; every candidate ranks H0 at position
        # <= 3 (H2 ranks H1 .9986, H3 .9976 before H0 .9962): count = 5.
        assert _positives(targets[2]) == _slots("H0", "H1", "H2", "H3", "Q")

    def test_worked_example_min_candidates_10_accepts_all_above(self):
        # K = 10 > N - 1 = 6, so no check can fail and count = n_above.
        targets = losses.mplp_targets(_angle_memory(), [_SLOT["A"], _SLOT["Q"]]).numpy()
        assert _positives(targets[0]) == _slots("A", "B", "H3")
        assert _positives(targets[1]) == _slots("Q", "H0")

    def test_anchor_always_positive_even_with_no_neighbours(self):
        memory = np.zeros((6, 3), np.float32)
        memory[2] = [1.0, 0.0, 0.0]
        targets = losses.mplp_targets(memory, [0, 2], min_candidates=1).numpy()
        # Zero row: n_above = 0, count = 0, only its own slot. Slot 2: n_above = 1.
        np.testing.assert_array_equal(targets[0], [1, 0, 0, 0, 0, 0])
        np.testing.assert_array_equal(targets[1], [0, 0, 1, 0, 0, 0])

    @pytest.mark.parametrize("seed", [0, 2])
    @pytest.mark.parametrize("quirk", [True, False])
    @pytest.mark.parametrize("min_candidates", [1, 10])
    def test_matches_reference_loop(self, seed, quirk, min_candidates):
        memory = _clustered_memory(seed)
        anchors = np.arange(len(memory))
        targets = losses.mplp_targets(memory, anchors, min_candidates=min_candidates,
                                      max_candidates=len(memory),
                                      second_candidate_quirk=quirk).numpy()
        stats = []
        for anchor in anchors:
            expected, info = _mplp_reference(memory, anchor, 0.6, min_candidates, quirk)
            np.testing.assert_array_equal(targets[anchor], expected, err_msg=f"anchor {anchor}")
            stats.append(info)
        # The data must exercise every branch of the procedure.
        assert any(s["num_above"] < 2 for s in stats)
        assert any(s["num_above"] > 10 for s in stats)
        assert any(2 <= s["first_failure"] < s["num_above"] for s in stats)
        assert any(s["first_failure"] == 1 and s["num_above"] >= 2 for s in stats)
        assert any(s["first_failure"] >= s["num_above"] >= 3 for s in stats)

    def test_cap_keeps_prefix_of_reference(self):
        memory = _clustered_memory(0)
        cap = 4
        targets = losses.mplp_targets(memory, np.arange(len(memory)), max_candidates=cap).numpy()
        for anchor in range(len(memory)):
            _, info = _mplp_reference(memory, anchor, 0.6, 10, True)
            ranking = np.argsort(-(memory.astype(np.float64) @ memory[anchor]))
            expected = np.zeros(len(memory), np.float32)
            expected[ranking[:max(min(info["count"], cap), 0)]] = 1.0
            expected[anchor] = 1.0
            np.testing.assert_array_equal(targets[anchor], expected)

    def test_compiles_with_xla(self):
        memory = tf.constant(_clustered_memory(1, num_slots=40))
        compiled = tf.function(lambda m, i: losses.mplp_targets(m, i, max_candidates=16),
                               jit_compile=True)
        anchors = tf.constant([0, 5, 17, 39])
        np.testing.assert_array_equal(
            compiled(memory, anchors).numpy(),
            losses.mplp_targets(memory, anchors, max_candidates=16).numpy())

    @pytest.mark.parametrize("quirk", [True, False])
    def test_graph_of_every_slot_equals_exact_on_worked_example(self, quirk):
        memory = _angle_memory()
        anchors = [_SLOT["A"], _SLOT["Q"], _SLOT["H0"]]
        exact = losses.mplp_targets(memory, anchors, min_candidates=1,
                                    second_candidate_quirk=quirk).numpy()
        graph = losses.mplp_targets(memory, anchors, min_candidates=1,
                                    second_candidate_quirk=quirk,
                                    neighbours=_graph(memory, len(memory))).numpy()
        np.testing.assert_array_equal(graph, exact)
        assert _positives(graph[0]) == _slots("A", "B")

    def test_graph_that_misses_the_anchor_fails_it_only_within_its_reach(self):
        # Anchor A: K = 3 and candidate H3 ranks A at position 4 (see the worked example).
        # A list of K + 1 = 4 slots covers the check: A absent, H3 fails, as exact MPLP.
        anchor = [_SLOT["A"]]
        covering = losses.mplp_targets(_angle_memory(), anchor, min_candidates=1,
                                       neighbours=_graph(_angle_memory(), 4)).numpy()
        assert _positives(covering[0]) == _slots("A", "B")
        # A list of 3 does not reach position K: unknown, H3 passes (the documented deviation).
        short = losses.mplp_targets(_angle_memory(), anchor, min_candidates=1,
                                    neighbours=_graph(_angle_memory(), 3)).numpy()
        assert _positives(short[0]) == _slots("A", "B", "H3")

    @pytest.mark.parametrize("seed", [0, 2])
    @pytest.mark.parametrize("quirk", [True, False])
    @pytest.mark.parametrize("min_candidates", [1, 10])
    def test_graph_covering_every_check_matches_reference_loop(self, seed, quirk,
                                                               min_candidates):
        memory = _clustered_memory(seed)
        anchors = np.arange(len(memory))
        infos = [_mplp_reference(memory, a, 0.6, min_candidates, quirk) for a in anchors]
        # The shortest lists that still cover the top K+1 of every anchor's check.
        graph_k = max(max(info["num_above"], min_candidates) for _, info in infos) + 1
        assert graph_k < len(memory) // 2
        targets = losses.mplp_targets(memory, anchors, min_candidates=min_candidates,
                                      max_candidates=len(memory), second_candidate_quirk=quirk,
                                      neighbours=_graph(memory, graph_k)).numpy()
        for anchor, (expected, _) in zip(anchors, infos):
            np.testing.assert_array_equal(targets[anchor], expected, err_msg=f"anchor {anchor}")

    def test_narrow_memory_is_read_in_float32(self):
        memory = _clustered_memory(1, num_slots=40)
        rounded = tf.cast(tf.cast(memory, tf.bfloat16), tf.float32)
        anchors = tf.constant([0, 5, 17, 39])
        np.testing.assert_array_equal(
            losses.mplp_targets(tf.cast(memory, tf.bfloat16), anchors).numpy(),
            losses.mplp_targets(rounded, anchors).numpy())

    def test_rejects_tiny_cap(self):
        with pytest.raises(ValueError, match="max_candidates"):
            losses.mplp_targets(_angle_memory(), [0], max_candidates=1)


def test_one_hot_targets():
    np.testing.assert_array_equal(losses.one_hot_targets(tf.constant([2, 0]), 3).numpy(),
                                  [[0, 0, 1], [1, 0, 0]])


def _mmcl_reference(logits, targets, ratio, delta):
    rows = []
    for z, t in zip(logits.astype(np.float64), targets):
        positives = t > 0
        loss = delta * np.mean((1 - z[positives]) ** 2)
        negatives = np.sort(z[~positives])[::-1]
        num_hard = int(ratio * len(negatives))
        if num_hard > 0:
            loss += np.mean((1 + negatives[:num_hard]) ** 2)
        rows.append(loss)
    return np.array(rows)


class TestMmclLoss:

    def test_worked_example(self):
        logits = tf.constant([[0.8, 0.2, -0.5, 0.6, 0.0], [0.1, 0.9, 0.3, -0.2, 0.4]])
        targets = tf.constant([[1.0, 0, 0, 1, 0], [0, 1.0, 0, 0, 0]])
        loss = losses.mmcl_loss(logits, targets, hard_negative_ratio=0.5).numpy()
        # Row 0: positives .8, .6 -> 5 * ((.2² + .4²) / 2) = 0.5; floor(.5 * 3) = 1 hard
        # negative, .2 -> 1.2² = 1.44. Total 1.94.
        # Row 1: positive .9 -> 5 * .1² = 0.05; floor(.5 * 4) = 2 hard negatives .4, .3 ->
        # (1.4² + 1.3²) / 2 = 1.825. Total 1.875.
        np.testing.assert_allclose(loss, [1.94, 1.875], rtol=1e-6)

    def test_no_hard_negatives_when_ratio_times_n_below_one(self):
        logits = tf.constant([[0.5, 0.9, -0.9]])
        targets = tf.constant([[1.0, 0, 0]])
        # floor(.01 * 2) = 0 hard negatives: only 5 * .5² = 1.25, and no NaN.
        np.testing.assert_allclose(losses.mmcl_loss(logits, targets).numpy(), [1.25])

    def test_row_dependent_hard_count_at_boundary(self):
        # N = 201, r = .01: one positive -> floor(2.00) = 2 negatives; two positives ->
        # floor(1.99) = 1.
        rng = np.random.default_rng(0)
        logits = rng.uniform(-1, 1, size=(2, 201)).astype(np.float32)
        targets = np.zeros((2, 201), np.float32)
        targets[0, 3] = 1
        targets[1, [3, 7]] = 1
        np.testing.assert_allclose(losses.mmcl_loss(logits, targets).numpy(),
                                   _mmcl_reference(logits, targets, 0.01, 5.0), rtol=1e-5)

    def test_matches_reference_and_gradient(self):
        rng = np.random.default_rng(1)
        logits = rng.uniform(-1, 1, size=(6, 700)).astype(np.float32)
        targets = (rng.uniform(size=(6, 700)) < 0.02).astype(np.float32)
        targets[np.arange(6), np.arange(6)] = 1.0
        logits_var = tf.Variable(logits)
        with tf.GradientTape() as tape:
            loss = losses.mmcl_loss(logits_var, targets, hard_negative_ratio=0.01, delta=5.0)
            total = tf.reduce_sum(loss)
        np.testing.assert_allclose(loss.numpy(), _mmcl_reference(logits, targets, 0.01, 5.0),
                                   rtol=1e-5)
        gradient = tape.gradient(total, logits_var).numpy()
        expected = np.zeros_like(logits)
        for row in range(6):
            positives = targets[row] > 0
            expected[row, positives] = -2 * 5.0 * (1 - logits[row, positives]) / positives.sum()
            negative_slots = np.flatnonzero(~positives)
            num_hard = int(0.01 * len(negative_slots))
            hard = negative_slots[np.argsort(-logits[row, negative_slots])[:num_hard]]
            expected[row, hard] = 2 * (1 + logits[row, hard]) / num_hard
        np.testing.assert_allclose(gradient, expected, rtol=1e-5, atol=1e-7)

    def test_compiles_with_xla(self):
        logits = tf.random.stateless_uniform((3, 300), seed=(1, 2), minval=-1.0)
        targets = losses.one_hot_targets([0, 1, 2], 300)
        compiled = tf.function(losses.mmcl_loss, jit_compile=True)
        np.testing.assert_allclose(compiled(logits, targets).numpy(),
                                   losses.mmcl_loss(logits, targets).numpy(), rtol=1e-6)


class TestLabelSmoothedCrossEntropy:

    def test_worked_example(self):
        # softmax([0, ln 2, 0]) = [.25, .5, .25]; label 1, ε = .1, C = 3: targets
        # [1/30, 0.9 + 1/30, 1/30]; loss = (2/30) ln 4 + (28/30) ln 2 = (32/30) ln 2.
        loss = losses.label_smoothed_cross_entropy(tf.constant([[0.0, math.log(2.0), 0.0]]),
                                                   tf.constant([1]), epsilon=0.1)
        np.testing.assert_allclose(loss.numpy(), [32 / 30 * math.log(2.0)], rtol=1e-6)

    def test_matches_reference_and_plain_ce_at_zero(self):
        rng = np.random.default_rng(2)
        logits = rng.normal(size=(5, 7)).astype(np.float32)
        labels = rng.integers(0, 7, size=5)
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        smoothed = np.full((5, 7), 0.1 / 7)
        smoothed[np.arange(5), labels] += 0.9
        np.testing.assert_allclose(
            losses.label_smoothed_cross_entropy(logits, labels).numpy(),
            -(smoothed * log_probs).sum(axis=1), rtol=1e-5)
        np.testing.assert_allclose(
            losses.label_smoothed_cross_entropy(logits, labels, epsilon=0.0).numpy(),
            tf.keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True),
            rtol=1e-5)


def _triplet_reference(anchors, anchor_labels, batch, batch_labels, margin, soft):
    rows = []
    for feature, label in zip(anchors.astype(np.float64), anchor_labels):
        distances = np.sqrt(np.maximum(((batch - feature) ** 2).sum(axis=1), 1e-12))
        same = batch_labels == label
        if not same.any() or same.all():
            rows.append(0.0)
            continue
        difference = distances[same].max() - distances[~same].min() + margin
        rows.append(np.log1p(np.exp(difference)) if soft else max(difference, 0.0))
    return np.array(rows)


class TestBatchHardTriplet:

    # a=(0,0) and b=(3,0) have label 0; c=(0,4) and d=(1,0) have label 1.
    features = tf.constant([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [1.0, 0.0]])
    labels = tf.constant([0, 0, 1, 1])

    def test_worked_example(self):
        loss = losses.batch_hard_triplet(self.features, self.labels, self.features, self.labels)
        # a: d_ap = |ab| = 3, d_an = |ad| = 1 -> 2.  b: 3 vs |bd| = 2 -> 1.
        # c: d_ap = |cd| = √17, d_an = |ca| = 4 -> √17 - 4.  d: √17 vs |da| = 1 -> √17 - 1.
        root17 = math.sqrt(17.0)
        np.testing.assert_allclose(loss.numpy(), [2.0, 1.0, root17 - 4, root17 - 1], rtol=1e-5)
        hinge = losses.batch_hard_triplet(self.features, self.labels, self.features,
                                          self.labels, margin=-1.5)
        np.testing.assert_allclose(hinge.numpy(), [0.5, 0.0, 0.0, root17 - 2.5], rtol=1e-5)
        soft = losses.batch_hard_triplet(self.features, self.labels, self.features,
                                         self.labels, soft=True)
        np.testing.assert_allclose(
            soft.numpy(), np.log1p(np.exp([2.0, 1.0, root17 - 4, root17 - 1])), rtol=1e-5)

    def test_local_anchors_against_global_batch(self):
        loss = losses.batch_hard_triplet(self.features[2:], self.labels[2:], self.features,
                                         self.labels)
        np.testing.assert_allclose(loss.numpy(), [math.sqrt(17.0) - 4, math.sqrt(17.0) - 1],
                                   rtol=1e-5)

    def test_self_as_only_positive_and_missing_negative_or_positive(self):
        features = tf.constant([[0.0, 0.0], [2.0, 0.0], [5.0, 0.0]])
        # Anchor 0 is its only positive: d_ap ≈ 0, d_an = 2 -> 0 (hinge), softplus(-2) soft.
        loss = losses.batch_hard_triplet(features, [0, 1, 1], features, [0, 1, 1], soft=True)
        np.testing.assert_allclose(loss.numpy()[0], math.log1p(math.exp(-2.0)), rtol=1e-4)
        # One label only: no negative anywhere -> 0, finite.
        same_label = losses.batch_hard_triplet(features, [1, 1, 1], features, [1, 1, 1], soft=True)
        np.testing.assert_array_equal(same_label.numpy(), [0.0, 0.0, 0.0])
        # An anchor whose label is absent from the batch has no positive -> 0.
        absent = losses.batch_hard_triplet(features[:1], [7], features, [0, 1, 1], margin=1.0)
        np.testing.assert_array_equal(absent.numpy(), [0.0])

    @pytest.mark.parametrize("soft", [False, True])
    def test_matches_reference_with_finite_gradients(self, soft):
        rng = np.random.default_rng(3)
        batch = rng.normal(size=(12, 5)).astype(np.float32)
        batch[5] = batch[4]  # a zero distance between two samples of the same label
        batch_labels = np.repeat(np.arange(3), 4)
        batch_labels[-1] = 9  # a label present once
        variable = tf.Variable(batch)
        with tf.GradientTape() as tape:
            loss = losses.batch_hard_triplet(variable[:6], batch_labels[:6], variable,
                                             batch_labels, margin=0.3, soft=soft)
            total = tf.reduce_sum(loss)
        np.testing.assert_allclose(
            loss.numpy(),
            _triplet_reference(batch[:6], batch_labels[:6], batch, batch_labels, 0.3, soft),
            rtol=1e-5, atol=1e-6)
        gradient = tape.gradient(total, variable).numpy()
        assert np.all(np.isfinite(gradient)) and np.any(gradient != 0)


# ----------------------------------------------------------------------------- mlc_objective

def _objective_case():
    """A batch of 4 whose neck and pooled features differ, with a 6-slot memory and a classifier."""
    rng = np.random.default_rng(0)
    memory = rng.normal(size=(6, 3)).astype(np.float32)
    memory /= np.linalg.norm(memory, axis=1, keepdims=True)
    neck = rng.normal(size=(4, 3)).astype(np.float32)
    pooled = 5.0 * rng.normal(size=(4, 3)).astype(np.float32)
    kernel = rng.normal(size=(3, 2)).astype(np.float32)
    return dict(neck=tf.constant(neck), pooled=tf.constant(pooled),
                indices=tf.constant([0, 2, 3, 5]), memory=tf.constant(memory),
                classifier=lambda x: tf.matmul(x, kernel),
                labels=tf.constant([0, 0, 1, 1])), kernel


def _options(**overrides):
    from mlc_tf import config
    return config.LossConfig(**{"lambda_mmcl": 0.25, "lambda_sc": 2.0,
                                "hard_negative_ratio": 0.5, **overrides})


def test_mlc_objective_weights_the_terms_and_feeds_each_loss_its_feature():
    case, kernel = _objective_case()
    options = _options()
    out = losses.mlc_objective(**case, options=options, memory_targets="one_hot")
    embedded = case["neck"] / tf.norm(case["neck"], axis=1, keepdims=True)
    logits = tf.matmul(embedded, case["memory"], transpose_b=True)
    mmcl = tf.reduce_mean(losses.mmcl_loss(
        logits, losses.one_hot_targets(case["indices"], 6), hard_negative_ratio=0.5))
    ce = tf.reduce_mean(losses.label_smoothed_cross_entropy(
        tf.matmul(case["neck"], kernel), case["labels"]))
    triplet = tf.reduce_mean(losses.batch_hard_triplet(
        case["pooled"], case["labels"], case["pooled"], case["labels"]))
    # The pooled and neck features give clearly different triplet and CE values here, so a
    # loss fed the wrong feature fails below.
    wrong_triplet = tf.reduce_mean(losses.batch_hard_triplet(
        case["neck"], case["labels"], case["neck"], case["labels"]))
    assert abs(float(wrong_triplet) - float(triplet)) > 0.1
    np.testing.assert_allclose(out["embedded"], embedded, atol=1e-6)
    np.testing.assert_allclose(out["mmcl"], mmcl, rtol=1e-6)
    np.testing.assert_allclose(out["ce"], ce, rtol=1e-6)
    np.testing.assert_allclose(out["triplet"], triplet, rtol=1e-6)
    np.testing.assert_allclose(out["loss"], 0.25 * mmcl + 2.0 * (ce + triplet), rtol=1e-6)
    assert float(out["positives"]) == pytest.approx(1.0)


def test_mlc_objective_memory_only_supervised_and_normalized_triplet():
    case, _ = _objective_case()
    options = _options()
    memory_only = losses.mlc_objective(
        **{**case, "labels": None, "classifier": None}, options=options, memory_targets="mplp")
    assert float(memory_only["loss"]) == pytest.approx(float(memory_only["mmcl"]))
    assert float(memory_only["ce"]) == float(memory_only["triplet"]) == 0.0
    supervised = losses.mlc_objective(**{**case, "memory": None}, options=options,
                                      memory_targets="none")
    assert supervised["targets"] is None and float(supervised["mmcl"]) == 0.0
    np.testing.assert_allclose(supervised["loss"],
                               2.0 * (supervised["ce"] + supervised["triplet"]), rtol=1e-6)
    normalized = losses.mlc_objective(**case, options=_options(triplet_feature="normalized"),
                                      memory_targets="one_hot")
    unit = case["pooled"] / tf.norm(case["pooled"], axis=1, keepdims=True)
    np.testing.assert_allclose(normalized["triplet"], tf.reduce_mean(losses.batch_hard_triplet(
        unit, case["labels"], unit, case["labels"])), rtol=1e-6)


def test_mlc_objective_mines_triplets_over_the_gathered_batch():
    case, _ = _objective_case()
    extra = tf.constant([[100.0, 0.0, 0.0]])  # a far positive of label 0 on "another replica"
    gathered = losses.mlc_objective(
        **case, options=_options(), memory_targets="one_hot",
        gather=lambda t: tf.concat([t, extra if t.dtype == tf.float32 else
                                    tf.constant([0], t.dtype)], axis=0))
    local = losses.mlc_objective(**case, options=_options(), memory_targets="one_hot")
    assert float(gathered["triplet"]) > float(local["triplet"]) + 10.0


def test_mlc_objective_predicts_positives_from_the_label_memory():
    case, _ = _objective_case()
    options = _options(mplp_threshold=0.0)
    rng = np.random.default_rng(5)
    label_memory = tf.math.l2_normalize(tf.constant(rng.normal(size=(6, 3)), tf.float32), axis=1)
    out = losses.mlc_objective(**{**case, "labels": None, "classifier": None}, options=options,
                               memory_targets="mplp", label_memory=label_memory)
    expected = losses.mplp_targets(label_memory, case["indices"], threshold=0.0)
    plain = losses.mplp_targets(case["memory"], case["indices"], threshold=0.0)
    assert np.abs(expected.numpy() - plain.numpy()).max() == 1.0  # the two banks disagree
    np.testing.assert_array_equal(out["targets"], expected)
    embedded = case["neck"] / tf.norm(case["neck"], axis=1, keepdims=True)
    logits = tf.matmul(embedded, case["memory"], transpose_b=True)  # MMCL reads `memory`
    np.testing.assert_allclose(out["mmcl"], tf.reduce_mean(losses.mmcl_loss(
        logits, expected, hard_negative_ratio=0.5)), rtol=1e-6)


def test_mlc_objective_rejects_inconsistent_arguments():
    case, _ = _objective_case()
    with pytest.raises(ValueError, match="memory_targets"):
        losses.mlc_objective(**case, options=_options(), memory_targets="soft")
    with pytest.raises(ValueError, match="needs the memory loss, labels"):
        losses.mlc_objective(**{**case, "labels": None}, options=_options(),
                             memory_targets="none")
    with pytest.raises(ValueError, match="classifier"):
        losses.mlc_objective(**{**case, "classifier": None}, options=_options(),
                             memory_targets="one_hot")


def _largest_intermediate(concrete_function):
    """Most elements of any tensor a traced function (and its loop bodies) produces."""
    graph = concrete_function.graph
    # Loop bodies and conditions are separate function graphs in the traced graph's library
    # (a private attribute: TensorFlow has no public way to reach them).
    graphs = [graph] + [function.graph for function in graph._functions.values()]
    largest = 0
    for each in graphs:
        for op in each.get_operations():
            for output in op.outputs:
                if output.shape.rank is not None and None not in output.shape.as_list():
                    largest = max(largest, output.shape.num_elements())
    return largest


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("graph_k", [0, 32])
def test_mlc_step_intermediates_grow_as_batch_times_slots_not_slots_squared(dtype, graph_k):
    from mlc_tf import memory as memory_lib
    num_slots, dim, batch = 2048, 8, 4
    bank = memory_lib.MemoryBank(num_slots, dim, dtype=dtype, graph_k=graph_k)
    options = _options(hard_negative_ratio=0.01)

    @tf.function
    def objective_and_update(neck, indices):
        out = losses.mlc_objective(neck=neck, pooled=neck, indices=indices,
                                   memory=bank.variable, options=options,
                                   memory_targets="mplp", neighbours=bank.neighbours)
        bank.update(out["embedded"], indices, 0.5)
        return out["loss"]

    traced = objective_and_update.get_concrete_function(
        tf.TensorSpec([batch, dim], tf.float32), tf.TensorSpec([batch], tf.int64))
    # B x N logits and targets, the N x D bank, B x width x k_graph graph lists: never N x N
    # (4.2 M elements here) nor B x width x N (0.5 M).
    assert _largest_intermediate(traced) == max(batch * num_slots, num_slots * dim,
                                                batch * 64 * graph_k)
