#!/usr/bin/env python3
"""Step time and peak memory of the MLC objective step against the memory size N (issue 11).

The step is what the memory costs each training step: similarities of the batch to every slot,
MPLP targets (cycle check on the kNN graph, or exact ranks), the MMCL loss and its gradient with
respect to the features, and the memory update. The backbone is left out: random L2-normalised
(B, d) features are fed directly, as the BN-neck feature would be. The bank holds clusters of 8
rows with within-cluster cosine about 0.7, so MPLP finds positives; the graph variable is filled
with each slot's cluster, then the next slots (its refresh runs between epochs, not in the step).
Each case runs in its own process, so its peak resident memory (ru_maxrss) is its own.

  nice -n 10 python bench/memory_bench.py     # the README table: d = 256, 2,048, 6,144
  python bench/memory_bench.py --cases=100000:256:float32:exact,100000:256:float32:graph

With --mplp_agreement=WORKDIR it instead compares graph MPLP with exact MPLP on the memory banks
of a run's epoch checkpoints (keep them all: --keep_checkpoints), every slot an anchor: with a
fresh graph (of the same bank), and with the graph of the epoch before, as stale as it gets at
the end of an epoch without the per-write refresh. For a run trained with --mplp_graph_k the
checkpoints also hold the graph as training left it (refreshed at the epoch's start and for
every slot written since): the 'live' column.

  python bench/memory_bench.py --mplp_agreement=runs/h5_demo
"""

import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

# N:d:dtype:mplp cases of the README table (exact MPLP where its up-to-64 candidate passes fit).
# N:d:dtype:mplp[:B] cases of the README table (exact MPLP where its up to 64 candidate passes
# fit; batch 32 where 128 x N float32 intermediates would not fit this 24 GiB machine).
_CASES = [
    "10000:256:float32:exact", "10000:256:float32:graph", "100000:256:float32:exact",
    "100000:256:float32:graph", "100000:256:bfloat16:graph", "1000000:256:float32:graph",
    "1000000:256:bfloat16:graph", "4200000:256:float32:graph:32",
    "4200000:256:bfloat16:graph:32", "10000:2048:float32:graph", "100000:2048:float32:graph",
    "1000000:2048:bfloat16:graph", "10000:6144:float32:graph", "100000:6144:float32:graph",
    "100000:6144:bfloat16:graph", "300000:6144:bfloat16:graph",
]
LUPERSON_SLOTS = 4_180_000
_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

flags.DEFINE_list("cases", _CASES, "N:d:dtype:mplp[:B] cases (mplp: graph or exact; B "
                  "defaults to --batch_size).")
flags.DEFINE_integer("batch_size", 128, "Global batch B (the paper's) of cases without one.")
flags.DEFINE_integer("graph_k", 64, "Neighbours per slot of the MPLP kNN graph.")
flags.DEFINE_integer("steps", 2, "Timed steps after one untimed (tracing) step.")
flags.DEFINE_string("mplp_agreement", "", "A workdir: compare graph and exact MPLP on the "
                    "memory of its checkpoints instead of timing.")
flags.DEFINE_list("agreement_k", ["16", "32", "64", "128"], "Graph sizes of --mplp_agreement.")
flags.DEFINE_string("one", "", "Internal: run this one case in this process, print JSON.")
FLAGS = flags.FLAGS


def _fill_bank(bank, seed: int) -> None:
    """Clusters of 8 rows (cosine about 0.7 inside), written a block at a time."""
    import numpy as np
    rng = np.random.default_rng(seed)
    block = max(8, (1 << 22) // bank.dim // 8 * 8)
    for start in range(0, bank.num_slots, block):
        size = min(block, bank.num_slots - start)
        centres = np.repeat(rng.normal(size=(-(-size // 8), bank.dim)), 8, axis=0)[:size]
        rows = centres + 0.65 * rng.normal(size=(size, bank.dim))
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        bank.variable[start:start + size].assign(rows.astype(bank.variable.dtype.as_numpy_dtype))
    if bank.neighbours is not None:
        # Each slot's own cluster first (itself at 0), then the slots after the cluster.
        offsets = np.arange(bank.neighbours.shape[1], dtype=np.int64)[None, :]
        for start in range(0, bank.num_slots, 1 << 16):
            slots = np.arange(start, min(start + (1 << 16), bank.num_slots), dtype=np.int64)
            first = (slots // 8 * 8)[:, None]
            lists = np.where(offsets < 8, first + (slots[:, None] % 8 + offsets) % 8,
                             first + offsets)
            bank.neighbours[start:start + len(slots)].assign(lists % bank.num_slots)


def _resident_gib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _parse(case: str) -> tuple[int, int, str, str, int]:
    """N:d:dtype:mplp[:B] -> (N, d, dtype, mplp, B)."""
    num_slots, dim, dtype, mplp, *batch = case.split(":")
    return int(num_slots), int(dim), dtype, mplp, int(batch[0]) if batch else FLAGS.batch_size


def _run_one(case: str) -> dict:
    import numpy as np
    import tensorflow as tf

    from mlc_tf import config as config_lib
    from mlc_tf import losses, memory

    num_slots, dim, dtype, mplp, batch_size = _parse(case)
    graph_k = FLAGS.graph_k if mplp == "graph" else 0
    bank = memory.MemoryBank(num_slots, dim, dtype=dtype, graph_k=graph_k)
    _fill_bank(bank, seed=0)
    options = config_lib.LossConfig(mplp_graph_k=graph_k)
    rng = np.random.default_rng(1)

    @tf.function
    def step(features, indices):
        with tf.GradientTape() as tape:
            tape.watch(features)
            out = losses.mlc_objective(neck=features, pooled=features, indices=indices,
                                       memory=bank.variable, options=options,
                                       memory_targets="mplp", neighbours=bank.neighbours)
        gradient = tape.gradient(out["loss"], features)
        # After the gradient, the last reader of the bank: a write while a read of it is alive
        # makes TensorFlow copy the whole bank first.
        with tf.control_dependencies([gradient]):
            bank.update(out["embedded"], indices, 0.25)
        return out["loss"], out["positives"], tf.reduce_sum(gradient)

    def batch():
        # Slots of whole clusters, as a PK batch would hold them.
        clusters = rng.choice(num_slots // 8, batch_size // 4, replace=False)
        indices = (clusters[:, None] * 8 + np.arange(4)[None, :]).reshape(-1)
        rows = np.asarray(tf.cast(tf.gather(bank.variable, indices), tf.float32))
        features = rows + 0.3 * rng.normal(size=rows.shape)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        return tf.constant(features, tf.float32), tf.constant(indices, tf.int64)

    resident_before = _resident_gib()
    loss, positives, _ = step(*batch())
    times = []
    for _ in range(FLAGS.steps):
        features, indices = batch()
        start = time.perf_counter()
        loss, positives, _ = step(features, indices)
        float(loss)
        times.append(time.perf_counter() - start)
    return {"case": case, "seconds": float(np.median(times)),
            "peak_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "resident_before_gib": resident_before,
            "bank_gib": num_slots * dim * _BYTES[dtype] / 2**30,
            "positives": float(positives), "loss": float(loss)}


def _mplp_agreement(workdir: str) -> None:
    import numpy as np
    import tensorflow as tf

    from mlc_tf import config as config_lib
    from mlc_tf import losses
    from mlc_tf.clustering import knn

    options = config_lib.load_json(os.path.join(workdir, "config.json")).loss
    directory = os.path.join(workdir, "checkpoints")
    state = tf.train.get_checkpoint_state(directory)
    paths = sorted(state.all_model_checkpoint_paths, key=lambda p: int(p.rsplit("-", 1)[1]))
    readers = {int(p.rsplit("-", 1)[1]): tf.train.load_checkpoint(p) for p in paths}
    banks = {epoch: reader.get_tensor("memory/.ATTRIBUTES/VARIABLE_VALUE").astype(np.float32)
             for epoch, reader in readers.items()}
    live_name = "memory_neighbours/.ATTRIBUTES/VARIABLE_VALUE"
    live = {epoch: reader.get_tensor(live_name) for epoch, reader in readers.items()
            if reader.has_tensor(live_name)}

    def targets(bank, graph):
        memory = tf.constant(bank)
        return np.concatenate([losses.mplp_targets(
            memory, tf.range(start, min(start + 256, len(bank))),
            threshold=options.mplp_threshold, min_candidates=options.mplp_min_candidates,
            max_candidates=options.mplp_max_candidates,
            second_candidate_quirk=options.mplp_quirk,
            neighbours=None if graph is None else tf.constant(graph)).numpy()
            for start in range(0, len(bank), 256)]) > 0

    print(f"{workdir}: every slot an anchor; % of anchors whose positive set differs from "
          "exact MPLP's; mean positives")
    live_header = f" {'k=' + str(options.mplp_graph_k) + ' live':>15}" if live else ""
    print(f"{'epoch':>5} {'exact':>6} " + " ".join(
        f"{'k=' + k + ' fresh':>15} {'k=' + k + ' stale':>15}" for k in FLAGS.agreement_k)
        + live_header)
    epochs = sorted(banks)
    for before, epoch in zip(epochs, epochs[1:]):
        if epoch <= options.warmup_epochs:
            continue  # no MPLP in that epoch
        exact = targets(banks[epoch], None)
        graphs = [knn.neighbours(source, k, "exact").indices
                  for k in map(int, FLAGS.agreement_k) for source in (banks[epoch], banks[before])]
        cells = []
        for graph in graphs + ([live[epoch]] if epoch in live else []):
            found = targets(banks[epoch], graph)
            differs = np.any(found != exact, axis=1).mean()
            cells.append(f"{differs:>6.1%} {found.sum(axis=1).mean():>8.2f}")
        print(f"{epoch:>5} {exact.sum(axis=1).mean():>6.2f} " + " ".join(
            f"{cell:>15}" for cell in cells), flush=True)


def _print_bank_sizes() -> None:
    print(f"\nBank bytes at LUPerson size (N = {LUPERSON_SLOTS:,}), against one GPU:")
    print(f"{'d':>6} {'dtype':>9} {'GB':>7} {'80 GB':>7} {'141 GB':>7}")
    for dim in (256, 2048, 6144):
        for dtype in ("float32", "bfloat16"):
            size = LUPERSON_SLOTS * dim * _BYTES[dtype] / 1e9
            print(f"{dim:>6} {dtype:>9} {size:>7.1f} {size / 80:>6.0%} {size / 141:>6.0%}")


def main(argv):
    del argv
    if FLAGS.one:
        print(json.dumps(_run_one(FLAGS.one)))
        return
    if FLAGS.mplp_agreement:
        _mplp_agreement(FLAGS.mplp_agreement)
        return
    print(f"CPU, MPLP graph k {FLAGS.graph_k}; median of {FLAGS.steps} steps after one untimed")
    print(f"{'N':>9} {'d':>5} {'dtype':>9} {'mplp':>6} {'B':>4} {'s/step':>8} {'bank GiB':>9} "
          f"{'peak GiB':>9} {'positives':>10}", flush=True)
    for case in FLAGS.cases:
        command = [sys.executable, os.path.abspath(__file__), f"--one={case}",
                   f"--batch_size={FLAGS.batch_size}", f"--graph_k={FLAGS.graph_k}",
                   f"--steps={FLAGS.steps}"]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        num_slots, dim, dtype, mplp, batch_size = _parse(case)
        row = f"{num_slots:>9,} {dim:>5} {dtype:>9} {mplp:>6} {batch_size:>4}"
        if done.returncode:
            errors = [line for line in done.stderr.splitlines() if "Error" in line] or ["?"]
            print(f"{row} failed (exit {done.returncode}): {errors[-1]}", flush=True)
            continue
        result = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"{row} {result['seconds']:>8.3f} "
              f"{result['bank_gib']:>9.2f} {result['peak_gib']:>9.2f} "
              f"{result['positives']:>10.1f}", flush=True)
    _print_bank_sizes()


if __name__ == "__main__":
    app.run(main)
