"""Training on several hosts: TF_CONFIG, MultiWorkerMirroredStrategy, per-worker input, the
chief's write rule, and host values shared through the strategy's collectives."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import tensorflow as tf

TF_CONFIG_ENV = "TF_CONFIG"


class TFConfigError(ValueError):
    """TF_CONFIG is not JSON of the form this project runs (workers only, with a task)."""


@dataclasses.dataclass(frozen=True)
class WorkerTask:
    """This process's place in a cluster of workers.

    Attributes:
        workers: 'host:port' of every worker, in task order.
        index: this worker's task index; worker 0 is the chief.
    """

    workers: tuple[str, ...]
    index: int

    @property
    def is_chief(self) -> bool:
        return self.index == 0


def read_tf_config(value: str | None) -> WorkerTask | None:
    """Parses a TF_CONFIG value such as os.environ.get('TF_CONFIG').

    Args:
        value: JSON {'cluster': {'worker': ['host:port', ...]},
            'task': {'type': 'worker', 'index': i}}, or None / '' (no cluster).

    Returns:
        the WorkerTask, or None without a cluster.

    Raises:
        TFConfigError: not JSON, other jobs than 'worker', addresses that are not
            'host:port', or a task that is not one of the workers.
    """
    if not value:
        return None
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise TFConfigError(f"{TF_CONFIG_ENV} is not valid JSON ({err}): {value[:200]!r}") from err
    if not isinstance(parsed, dict) or not isinstance(parsed.get("cluster"), dict):
        raise TFConfigError(f"{TF_CONFIG_ENV} needs a 'cluster' object, got {value[:200]!r}")
    cluster = parsed["cluster"]
    if set(cluster) != {"worker"}:
        raise TFConfigError(f"{TF_CONFIG_ENV} cluster must hold only a 'worker' list (worker 0 "
                            f"is the chief), got jobs {sorted(cluster)}")
    workers = cluster["worker"]
    if not isinstance(workers, list) or not workers or not all(
            isinstance(a, str) and _is_address(a) for a in workers):
        raise TFConfigError(f"{TF_CONFIG_ENV} cluster.worker must be a non-empty list of "
                            f"'host:port' strings, got {workers!r}")
    task = parsed.get("task")
    if not isinstance(task, dict) or task.get("type") != "worker":
        raise TFConfigError(f"{TF_CONFIG_ENV} needs task {{'type': 'worker', 'index': i}}, "
                            f"got {task!r}")
    index = task.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(workers):
        raise TFConfigError(f"{TF_CONFIG_ENV} task.index must be an integer in "
                            f"[0, {len(workers)}), got {index!r}")
    return WorkerTask(tuple(workers), index)


def _is_address(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def environment_task() -> WorkerTask | None:
    """read_tf_config of this process's TF_CONFIG."""
    return read_tf_config(os.environ.get(TF_CONFIG_ENV))


def make_strategy() -> tf.distribute.MultiWorkerMirroredStrategy:
    """MultiWorkerMirroredStrategy over TF_CONFIG's workers: NCCL all-reduce on GPUs, ring on CPU.

    Call it before any other TensorFlow op of the process (collectives are configured at
    start-up), and once per process.

    Raises:
        TFConfigError: a malformed TF_CONFIG.
    """
    environment_task()
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL
                      if tf.config.list_physical_devices("GPU") else
                      tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation))


def worker_position(strategy: tf.distribute.Strategy) -> tuple[int, int]:
    """(this worker's index, number of workers): (0, 1) for a one-host strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return 0, 1
    return int(resolver.task_id), len(resolver.cluster_spec().as_dict().get("worker", [None]))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the run's outputs (worker 0, or a one-host strategy)."""
    return worker_position(strategy)[0] == 0


@contextlib.contextmanager
def write_dir(workdir: str, strategy: tf.distribute.Strategy) -> Iterator[str]:
    """The folder this worker writes to, as TensorFlow's multi-worker guide prescribes.

    The chief writes `workdir`. Every other worker writes the same files (checkpoints and
    the export may read variables collectively, so every worker saves) into a temporary
    folder outside it, deleted on exit. Its name follows from the worker and the workdir, so
    the folder a killed worker left behind is removed when the run restarts.

    Yields:
        workdir on the chief, else the temporary folder.
    """
    index = worker_position(strategy)[0]
    if index == 0:
        yield workdir
        return
    digest = hashlib.sha1(os.path.abspath(workdir).encode("utf8")).hexdigest()[:12]
    temporary = os.path.join(tempfile.gettempdir(), f"mlc_tf-worker{index}-{digest}")
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    try:
        yield temporary
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def distribute_batches(strategy: tf.distribute.Strategy, batch_size: int,
                       worker_batches: Callable[[tuple[int, int]], tf.data.Dataset]):
    """Each worker's share of the global batches, split over its replicas.

    Args:
        strategy: the strategy.
        batch_size: the global batch size (divisible by the number of replicas).
        worker_batches: (worker index, workers) -> the dataset of that worker's consecutive
            1/workers of every global batch, with the global batches' order.

    Returns:
        the distributed dataset: replica r of the whole cluster receives the r-th consecutive
        part of every global batch, as one process holding all replicas would.
    """

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        batches = worker_batches((context.input_pipeline_id, context.num_input_pipelines))
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        if local_replicas == 1:
            return batches
        return batches.rebatch(context.get_per_replica_batch_size(batch_size),
                               drop_remainder=True)

    return strategy.distribute_datasets_from_function(dataset_fn)


class Collectives:
    """Host values shared between the workers of a strategy, through its collectives.

    Every method with several workers is a collective: every worker must call it at the same
    point of the program, with arrays of the same shape and dtype. With one worker they
    return their input.
    """

    def __init__(self, strategy: tf.distribute.Strategy):
        self.strategy = strategy
        self.worker, self.num_workers = worker_position(strategy)
        self._local_replicas = strategy.num_replicas_in_sync // self.num_workers
        self._sum = tf.function(self._sum_over_workers, reduce_retracing=True)

    @property
    def is_chief(self) -> bool:
        return self.worker == 0

    def _sum_over_workers(self, value: tf.Tensor) -> tf.Tensor:
        def contribute(value):
            context = tf.distribute.get_replica_context()
            # Replicas are numbered worker by worker: the first of each worker contributes.
            first = tf.equal(context.replica_id_in_sync_group % self._local_replicas, 0)
            return context.all_reduce(tf.distribute.ReduceOp.SUM,
                                      tf.where(first, value, tf.zeros_like(value)))

        summed = self.strategy.run(contribute, args=(value,))
        return self.strategy.experimental_local_results(summed)[0]

    def all_sum(self, array: np.ndarray) -> np.ndarray:
        """The sum over workers of each worker's `array`.

        Args:
            array: float or int64 array (int32 would not pass NCCL).

        Returns:
            the summed array, identical on every worker.
        """
        if self.num_workers == 1:
            return np.asarray(array)
        return self._sum(tf.constant(array)).numpy()

    def broadcast_from_chief(self, array: np.ndarray) -> np.ndarray:
        """The chief's `array` on every worker; the others pass any array of its shape and
        dtype."""
        array = np.asarray(array)
        return self.all_sum(array if self.is_chief else np.zeros_like(array))

    def broadcast_json(self, value):
        """The chief's JSON-serialisable `value` on every worker (the others' are ignored)."""
        if self.num_workers == 1:
            return value
        encoded = np.frombuffer(json.dumps(value, sort_keys=True).encode("utf8"), np.uint8)
        length = int(self.broadcast_from_chief(np.array([len(encoded)], np.int64))[0])
        if not self.is_chief:
            encoded = np.zeros(length, np.uint8)
        shared = self.broadcast_from_chief(encoded.astype(np.int64)).astype(np.uint8)
        return json.loads(shared.tobytes().decode("utf8"))

    def extract_split(self, extract: Callable[..., np.ndarray], extractor: Callable,
                      paths: Sequence[str], **options) -> np.ndarray:
        """Features of all `paths`: each worker extracts a contiguous share, then all gather.

        Args:
            extract: features.extract_features, or a function of its signature.
            extractor, paths, options: its arguments.

        Returns:
            float32 (len(paths), D), identical on every worker.
        """
        if self.num_workers == 1 or len(paths) < self.num_workers:
            return extract(extractor, paths, **options)
        bounds = np.linspace(0, len(paths), self.num_workers + 1).astype(int)
        start, stop = bounds[self.worker], bounds[self.worker + 1]
        own = extract(extractor, list(paths)[start:stop], **options)
        # Every worker needs D before the sum: the chief's share is never empty.
        dim = int(self.broadcast_from_chief(np.array([own.shape[1]], np.int64))[0])
        features = np.zeros((len(paths), dim), np.float32)
        features[start:stop] = own
        return self.all_sum(features)


class AgreedStop:
    """A StopRequest that all workers agree on: a stop seen by one worker stops them all at
    the same step (each `requested` is a collective: every worker asks at the same points).

    Attributes:
        signal_name: this worker's signal, 'another worker' when only a peer got one, or None.
    """

    def __init__(self, stop, collectives: Collectives):
        """Args:
            stop: a checkpointing.StopRequest.
            collectives: the Collectives of the run's strategy.
        """
        self._stop = stop
        self._collectives = collectives
        self._agreed = False

    @property
    def requested(self) -> bool:
        if not self._agreed:
            flag = np.array([int(self._stop.requested)], np.int64)
            self._agreed = bool(self._collectives.all_sum(flag)[0] > 0)
        return self._agreed

    @property
    def signal_name(self) -> str | None:
        if self._stop.signal_name:
            return self._stop.signal_name
        return "another worker" if self._agreed else None
