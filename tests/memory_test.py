"""Tests for mlc_tf.memory: alpha schedule, bank reads and writes, MirroredStrategy update."""

import textwrap

import numpy as np
import pytest
import tensorflow as tf

from mlc_tf import memory


def _normalise(rows):
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_alpha_for_epoch():
    assert memory.alpha_for_epoch(0, 60) == 0.0
    assert memory.alpha_for_epoch(30, 60) == 0.25
    assert memory.alpha_for_epoch(59, 60) == pytest.approx(0.4917, abs=1e-4)
    assert memory.alpha_for_epoch(5, 10, max_alpha=0.8) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="total_epochs"):
        memory.alpha_for_epoch(0, 0)
    with pytest.raises(ValueError, match="epoch"):
        memory.alpha_for_epoch(-1, 60)


def test_bank_variable():
    bank = memory.MemoryBank(5, 3)
    variable = bank.variable
    assert variable.shape == (5, 3) and variable.dtype == tf.float32
    assert not variable.trainable
    assert variable.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
    assert variable.name.startswith("memory_bank")
    np.testing.assert_array_equal(variable.numpy(), np.zeros((5, 3)))
    assert len(bank.variables) == 1 and bank.variables[0] is variable
    with pytest.raises(ValueError, match="positive"):
        memory.MemoryBank(0, 3)


def test_similarities_are_constant_in_memory():
    bank = memory.MemoryBank(3, 2)
    bank.variable.assign(_normalise([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]]))  # (1,0) (0,1) (.6,.8)
    features = tf.Variable([[0.6, 0.8]])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(bank.variable)
        logits = memory.similarities(features, bank.variable)
        total = tf.reduce_sum(logits)
    np.testing.assert_allclose(logits.numpy(), [[0.6, 0.8, 1.0]], rtol=1e-6)
    # d(sum of logits)/d(features) = sum of memory rows = (1.6, 1.8).
    np.testing.assert_allclose(tape.gradient(total, features).numpy(), [[1.6, 1.8]], rtol=1e-6)
    assert tape.gradient(total, bank.variable) is None


def test_camera_centred_matches_the_clustering_centring():
    from mlc_tf import self_paced
    rng = np.random.default_rng(3)
    rows = rng.normal(size=(7, 4)).astype(np.float32) + np.array([3.0, 0, 0, 0], np.float32)
    cameras = np.array([0, 1, 0, 2, 1, 2, 0])
    centred = memory.camera_centred(tf.constant(rows), tf.constant(cameras), 3).numpy()
    np.testing.assert_allclose(centred, self_paced.camera_normalized(rows, cameras), atol=1e-6)
    narrow = memory.camera_centred(tf.constant(rows, tf.bfloat16), tf.constant(cameras), 3)
    assert narrow.dtype == tf.float32
    # Each camera's rows had its mean removed: a plain renormalisation would keep them apart.
    assert np.abs(centred - rows / np.linalg.norm(rows, axis=1, keepdims=True)).max() > 0.1


def test_update_worked_example():
    bank = memory.MemoryBank(3, 2)
    # alpha = 0 on a zero row: the row becomes the normalised feature (3,4)/5.
    bank.update(tf.constant([[3.0, 4.0]]), tf.constant([1]), 0.0)
    np.testing.assert_allclose(bank.variable.numpy(), [[0, 0], [0.6, 0.8], [0, 0]], rtol=1e-6)
    # alpha = .5: .5 (.6, .8) + .5 (1, 0) = (.8, .4), norm √.8 -> (.8944, .4472).
    bank.update(tf.constant([[1.0, 0.0]]), tf.constant([1]), 0.5)
    np.testing.assert_allclose(bank.variable.numpy()[1], [0.8 / np.sqrt(0.8), 0.4 / np.sqrt(0.8)],
                               rtol=1e-6)
    np.testing.assert_array_equal(bank.variable.numpy()[[0, 2]], np.zeros((2, 2)))


def test_update_matches_numpy_in_tf_function():
    rng = np.random.default_rng(0)
    initial = _normalise(rng.normal(size=(20, 4))).astype(np.float32)
    features = _normalise(rng.normal(size=(6, 4))).astype(np.float32)
    indices = np.array([3, 0, 19, 7, 8, 12])
    bank = memory.MemoryBank(20, 4)
    bank.variable.assign(initial)
    tf.function(bank.update)(tf.constant(features), tf.constant(indices), tf.constant(0.3))
    expected = initial.copy()
    expected[indices] = _normalise(0.3 * initial[indices] + 0.7 * features)
    np.testing.assert_allclose(bank.variable.numpy(), expected, rtol=1e-5, atol=1e-7)


def test_duplicate_indices_keep_last_occurrence():
    bank = memory.MemoryBank(4, 2)
    bank.variable.assign(_normalise([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]))
    features = tf.constant([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]])
    bank.update(features, tf.constant([2, 3, 2]), 0.5)
    # Slot 2 appears twice: the last occurrence wins, .5 (1,0) + .5 (1,0) -> (1, 0), whereas
    # the first, (0, 1), would give (1, 1)/√2. Slot 3: .5 (0,1) + .5 (1,1) = (.5, 1) -> unit.
    np.testing.assert_allclose(bank.variable.numpy()[2], [1.0, 0.0], atol=1e-7)
    np.testing.assert_allclose(bank.variable.numpy()[3], _normalise(np.array([0.5, 1.0])),
                               rtol=1e-6)


def test_cross_replica_concat_without_strategy_is_identity():
    tensor = tf.constant([[1.0], [2.0]])
    assert memory.cross_replica_concat(tensor) is tensor


def test_checkpoint_round_trip(tmp_path):
    bank = memory.MemoryBank(3, 2)
    bank.variable.assign(_normalise([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]]))
    path = tf.train.Checkpoint(memory=bank).save(str(tmp_path / "ckpt"))
    restored = memory.MemoryBank(3, 2)
    tf.train.Checkpoint(memory=restored).restore(path).assert_consumed()
    np.testing.assert_array_equal(restored.variable.numpy(), bank.variable.numpy())



def test_bank_rejects_bad_dtype_and_graph_k():
    with pytest.raises(ValueError, match="memory dtype 'int8'"):
        memory.MemoryBank(3, 2, dtype="int8")
    with pytest.raises(ValueError, match="graph_k must be in"):
        memory.MemoryBank(3, 2, graph_k=4)
    with pytest.raises(ValueError, match="no kNN graph"):
        memory.MemoryBank(3, 2).refresh_neighbours()


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_narrow_bank_stores_narrow_and_computes_in_float32(dtype, monkeypatch):
    rng = np.random.default_rng(0)
    initial = _normalise(rng.normal(size=(40, 8)))
    features = _normalise(rng.normal(size=(5, 8)))
    indices = np.array([3, 39, 0, 17, 8])
    narrow, wide = memory.MemoryBank(40, 8, dtype=dtype), memory.MemoryBank(40, 8)
    narrow.variable.assign(initial.astype(dtype))
    wide.variable.assign(initial)
    assert narrow.variable.dtype == tf.as_dtype(dtype) and narrow.numpy().dtype == np.float32
    # Rows rounded once when stored: about 3 (bfloat16) or 4 (float16) significant digits.
    tolerance = 1e-2 if dtype == "bfloat16" else 1e-3
    # Blocks of 3 rows (the last one short), so that the blocked float32 cast is exercised.
    monkeypatch.setattr(memory, "_CAST_BLOCK_ELEMENTS", 24)
    watched = tf.constant(features, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(watched)
        logits = memory.similarities(watched, narrow.variable)
        total = tf.reduce_sum(logits)
    assert logits.dtype == tf.float32 and logits.shape == (5, 40)
    # d(sum of logits)/d(features) = the sum of the stored rows, through the blocked loop.
    np.testing.assert_allclose(tape.gradient(total, watched).numpy(),
                               np.tile(narrow.numpy().sum(axis=0), (5, 1)), rtol=1e-5, atol=1e-5)
    # Exactly the float32 products of the stored (rounded) rows, within float32 rounding ...
    np.testing.assert_allclose(logits.numpy(), features @ narrow.numpy().T, rtol=1e-6, atol=1e-6)
    # ... and close to those of a float32 bank.
    np.testing.assert_allclose(logits.numpy(), memory.similarities(features, wide.variable),
                               atol=tolerance)
    narrow.update(features, indices, 0.3)
    wide.update(features, indices, 0.3)
    assert narrow.variable.dtype == tf.as_dtype(dtype)
    np.testing.assert_allclose(narrow.numpy(), wide.numpy(), atol=tolerance)
    # The update is computed in float32 from the stored rows, then rounded once.
    expected = narrow.numpy().copy()
    stored = initial.astype(dtype).astype(np.float32)
    expected[indices] = _normalise(0.3 * stored[indices] + 0.7 * features)
    np.testing.assert_array_equal(narrow.numpy(), expected.astype(dtype).astype(np.float32))


def test_refresh_neighbours_lists_nearest_slots_self_first():
    # Four unit rows at angles 0, 10, 90 and 95 degrees.
    angles = np.radians([0.0, 10.0, 90.0, 95.0])
    bank = memory.MemoryBank(4, 2, graph_k=2)
    bank.variable.assign(np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32))
    assert bank.neighbours.dtype == tf.int64 and bank.neighbours.shape == (4, 2)
    bank.refresh_neighbours(backend="exact")
    np.testing.assert_array_equal(bank.neighbours.numpy(), [[0, 1], [1, 0], [2, 3], [3, 2]])
    # Not part of what train checkpoints (the variable alone), and rebuilt each MPLP epoch.
    assert not bank.neighbours.trainable
    # A write recomputes the written slot's list only: slot 3 moves to 4 degrees, nearest 0;
    # slot 1 (10 degrees) keeps its older list although 3 is now its nearest.
    bank.update(tf.constant([[np.cos(np.radians(4.0)), np.sin(np.radians(4.0))]]),
                tf.constant([3]), 0.0)
    np.testing.assert_array_equal(bank.neighbours.numpy(), [[0, 1], [1, 0], [2, 3], [3, 0]])


def test_cross_replica_concat_rejects_int32():
    with pytest.raises(TypeError, match="int32.*int64"):
        memory.cross_replica_concat(tf.constant([1, 2], tf.int32))
    assert memory.cross_replica_concat(tf.constant([1, 2], tf.int64)).dtype == tf.int64


def test_bfloat16_checkpoint_round_trip(tmp_path):
    bank = memory.MemoryBank(3, 2, dtype="bfloat16")
    bank.variable.assign(_normalise([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]]).astype("bfloat16"))
    path = tf.train.Checkpoint(memory=bank.variable).save(str(tmp_path / "ckpt"))
    restored = memory.MemoryBank(3, 2, dtype="bfloat16")
    tf.train.Checkpoint(memory=restored.variable).restore(path).assert_consumed()
    assert restored.variable.dtype == tf.bfloat16
    np.testing.assert_array_equal(restored.numpy(), bank.numpy())

# Runs in its own process: logical devices must be configured before any TF op, and one
# MirroredStrategy per process avoids collective-op clashes.
_MIRRORED_SCRIPT = textwrap.dedent("""
    import json
    import numpy as np
    import tensorflow as tf
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
    from mlc_tf import memory

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    initial = rng.normal(size=(16, 5)).astype(np.float32)
    features = rng.normal(size=(8, 5)).astype(np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    indices = np.array([9, 2, 14, 0, 5, 11, 3, 7], np.int32)
    alpha = 0.25

    with strategy.scope():
        bank = memory.MemoryBank(16, 5)
        cross_bank = memory.MemoryBank(16, 5)
    initial /= np.linalg.norm(initial, axis=1, keepdims=True)
    bank.variable.assign(initial)
    cross_bank.variable.assign(initial)
    reference = memory.MemoryBank(16, 5)
    reference.variable.assign(initial)
    reference.update(features, indices, alpha)

    # Replica r holds rows 4r .. 4r+3 of the global batch.
    local = lambda array: strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(array[4 * context.replica_id_in_sync_group:][:4]))

    @tf.function
    def replica_step(features, indices):
        bank.update(features, indices, alpha)
        return memory.cross_replica_concat(tf.cast(indices, tf.int64))

    gathered = strategy.run(replica_step, args=(local(features), local(indices)))
    # Cross-replica context: update the whole global batch at once.
    cross_bank.update(features, indices, alpha)
    print(json.dumps({
        "replicas": strategy.num_replicas_in_sync,
        "gathered": [v.numpy().tolist() for v in strategy.experimental_local_results(gathered)],
        "copies": [v.numpy().tolist() for v in bank.variable.values],
        "cross_copies": [v.numpy().tolist() for v in cross_bank.variable.values],
        "reference": reference.variable.numpy().tolist(),
        "initial": initial.tolist(),
    }))
""")


def test_update_under_mirrored_strategy_writes_all_replicas_rows(run_json_script):
    result = run_json_script(_MIRRORED_SCRIPT, timeout=240)
    assert result["replicas"] == 2
    indices = [9, 2, 14, 0, 5, 11, 3, 7]
    assert result["gathered"] == [indices, indices]
    reference = np.array(result["reference"])
    for copy in result["copies"] + result["cross_copies"]:
        np.testing.assert_allclose(np.array(copy), reference, rtol=1e-6, atol=1e-7)
    # The reference really rewrote the rows of both replicas' halves and nothing else, so
    # the equality above would catch a bank that kept only replica 0's rows.
    initial = np.array(result["initial"])
    untouched = sorted(set(range(16)) - set(indices))
    np.testing.assert_allclose(reference[untouched], initial[untouched], rtol=1e-6)
    assert np.all(np.abs(reference[indices] - initial[indices]).max(axis=1) > 1e-2)
