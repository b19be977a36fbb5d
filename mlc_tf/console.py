"""What the binaries print: quiet TensorFlow logs, progress bars, the run header, one-line errors.

Nothing here imports TensorFlow at module level: start_tensorflow must run before it loads.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.request
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TextIO

from absl import app, flags, logging

from mlc_tf import config

TF_LOG_CHOICES = ("quiet", "all")
# The file keras.applications.ResNet50(weights="imagenet") fetches (model.IMAGENET_WEIGHTS_FILE).
IMAGENET_WEIGHTS_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/resnet/"
                        + IMAGENET_WEIGHTS_FILE)
# Datasets that are generated into --data_dir rather than read from it.
GENERATED_DATASETS = ("synthetic",)
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# TensorFlow's C++ INFO and WARNING lines (absl format: I0000 00:00:... file.cc:12] ...), absl's
# note that precedes the first of them, and the continuation of the CPU-instructions notice.
_CPP_NOISE = re.compile(r"^([IW]\d{4} \d\d:\d\d:\d\d|WARNING: All log messages before absl::"
                        r"InitializeLog|To enable the following instructions)")
# On a machine without a GPU driver the CUDA platform still calls cuInit and logs its failure.
_NO_GPU_NOISE = re.compile(r"^E\d{4} .*(cuInit|cuda_platform|cuda_diagnostics|CUDA)")


class ExpectedError(Exception):
    """A failure the user can fix from its message alone: printed as one line, no traceback."""


def define_flags(flag_values: flags.FlagValues) -> None:
    """Defines --tf_log and --debug, the flags every binary shares."""
    flags.DEFINE_enum("tf_log", "quiet", TF_LOG_CHOICES,
                      "quiet: hide TensorFlow's C++ INFO/WARNING lines, its Python INFO lines and "
                      "Keras/TensorFlow Python warnings; all: show everything.",
                      flag_values=flag_values)
    flags.DEFINE_bool("debug", False, "Show the traceback of expected failures too.",
                      flag_values=flag_values)


def start_tensorflow(tf_log: str = "quiet") -> list[str]:
    """Configures logging, then imports TensorFlow and finds its GPUs, quietly unless 'all'.

    Call it before anything imports TensorFlow: its C++ log level is read once, at import.
    Some lines are logged by static initialisers before any log level applies, and the CUDA
    platform logs a failed cuInit on machines without a GPU driver; 'quiet' drops those from
    what the import and the device query write to stderr and passes everything else through.

    Args:
        tf_log: 'quiet' or 'all' (TF_LOG_CHOICES).

    Returns:
        The names of the physical GPUs ('/physical_device:GPU:0', ...), empty on a CPU machine.

    Raises:
        ValueError: tf_log is not one of TF_LOG_CHOICES.
    """
    if tf_log not in TF_LOG_CHOICES:
        raise ValueError(f"tf_log must be one of {TF_LOG_CHOICES}, got {tf_log!r}")
    quiet = tf_log == "quiet"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2" if quiet else "0"
    std_logging.getLogger("tensorflow").setLevel(std_logging.WARNING if quiet
                                                 else std_logging.NOTSET)
    if quiet:
        for module in ("keras", "tensorflow", "absl"):
            warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
        handler = logging.get_absl_handler()
        handler.setFormatter(_PlainFormatter())
        handler.addFilter(_own_info_only)
        gpus, written = _capturing_stderr(_import_and_list_gpus)
        sys.stderr.writelines(line for line in written.splitlines(keepends=True)
                              if not is_tensorflow_noise(line, gpus_found=bool(gpus)))
        sys.stderr.flush()
        return gpus
    return _import_and_list_gpus()


def is_tensorflow_noise(line: str, *, gpus_found: bool) -> bool:
    """Whether a line TensorFlow wrote while loading is one that quiet mode hides.

    Args:
        line: one line of stderr.
        gpus_found: whether TensorFlow found a GPU (else CUDA errors are noise too).

    Returns:
        True for C++ INFO and WARNING lines and absl's pre-initialisation note, and, without
        a GPU, for the CUDA platform's errors (the failed cuInit).
    """
    return bool(_CPP_NOISE.match(line) or not gpus_found and _NO_GPU_NOISE.match(line))


def _import_and_list_gpus() -> list[str]:
    import tensorflow as tf

    return [device.name for device in tf.config.list_physical_devices("GPU")]


def _capturing_stderr(function: Callable[[], list[str]]) -> tuple[list[str], str]:
    """Calls function with file descriptor 2 (C++ logs included) redirected to a buffer.

    Returns:
        (what function returned, what was written to stderr meanwhile). On an exception
        the writing goes to stderr unfiltered before the exception propagates.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            result = function()
        except BaseException:
            sys.stderr.flush()
            _restore_fd(saved, 2)
            capture.seek(0)
            sys.stderr.write(capture.read().decode("utf-8", "replace"))
            raise
        sys.stderr.flush()
        _restore_fd(saved, 2)
        capture.seek(0)
        return result, capture.read().decode("utf-8", "replace")


def _restore_fd(saved: int, target: int) -> None:
    os.dup2(saved, target)
    os.close(saved)


def _own_info_only(record: std_logging.LogRecord) -> bool:
    """Keeps warnings and mlc_tf's INFO records: TensorFlow logs INFO through absl as well."""
    return record.levelno > std_logging.INFO or record.pathname.startswith(_PACKAGE_DIR)


class _PlainFormatter(std_logging.Formatter):
    """absl log records as 'message' (INFO) or 'WARNING: message', without the absl prefix."""

    def format(self, record: std_logging.LogRecord) -> str:
        message = super().format(record)
        return message if record.levelno <= std_logging.INFO else f"{record.levelname}: {message}"


class ProgressBar:
    """A one-line progress bar: redrawn in place on a terminal, else printed once at the end.

    Use it as a context manager, so that a failure on a terminal ends the line first.
    """

    def __init__(self, total: int, label: str, *, unit: str = "step",
                 stream: TextIO | None = None, enabled: bool = True,
                 min_interval: float = 0.1):
        """Args:
            total: the count that completes the bar (> 0).
            label: what the bar measures, first on the line ('Epoch 3/12', 'query').
            unit: what one count is ('step', 'image').
            stream: where to print; default sys.stdout as it is now.
            enabled: False prints nothing.
            min_interval: least seconds between redraws on a terminal.
        """
        self.total, self.label, self.unit = total, label, unit
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.min_interval = min_interval
        self.done = 0
        self.values: dict[str, float] = {}
        self._start = time.perf_counter()
        self._drawn_at = -float("inf")
        self._on_terminal = enabled and _is_terminal(self.stream)
        self._closed = False

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc_info) -> None:
        if exc_info[0] is not None and self._on_terminal and not self._closed:
            self.stream.write("\n")
            self.stream.flush()

    def update(self, done: int, values: Mapping[str, float] | None = None) -> None:
        """Sets the count done and the values shown after it (running means, say)."""
        self.done = done
        if values:
            self.values.update(values)
        now = time.perf_counter()
        if self._on_terminal and now - self._drawn_at >= self.min_interval:
            self._drawn_at = now
            self._write("\r" + self._fit(self._line(final=False)) + "\x1b[K")

    def add(self, count: int) -> None:
        """Adds count to the count done."""
        self.update(self.done + count)

    def finish(self, note: str = "") -> None:
        """Prints the final line (count, time, rate, values, then note) and ends it."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        line = self._line(final=True) + (f" | {note}" if note else "")
        self._write(("\r" + self._fit(line) + "\x1b[K" if self._on_terminal else line) + "\n")

    def _line(self, final: bool) -> str:
        elapsed = time.perf_counter() - self._start
        count = f"{self.done}/{self.total}"
        if final:
            text = f"{self.label}: {count} {self.unit}s in {_duration(elapsed)}"
            if self.done:
                text += f" ({_rate(elapsed / self.done, self.unit)})"
        else:
            width = 20
            filled = width * min(self.done, self.total) // max(self.total, 1)
            eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
            text = (f"{self.label}: {count} [{'#' * filled}{'.' * (width - filled)}] "
                    f"ETA {_duration(eta)}")
        values = " ".join(f"{name} {value:.4g}" for name, value in self.values.items())
        return f"{text} - {values}" if values else text

    def _fit(self, line: str) -> str:
        # A redrawn line that wraps would leave one line per redraw.
        columns = shutil.get_terminal_size((120, 24)).columns
        return line[:max(columns - 1, 10)]

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else \
        f"{minutes}:{seconds:02d}"


def _rate(seconds_per_unit: float, unit: str) -> str:
    if seconds_per_unit >= 1:
        return f"{seconds_per_unit:.2f} s/{unit}"
    return f"{1000 * seconds_per_unit:.0f} ms/{unit}"


def format_header(dataset: str, *, num_train: int, num_query: int, num_gallery: int,
                  devices: Sequence[str], batch_size: int, workdir: str,
                  workers: int = 1) -> str:
    """The line a training run starts with: data, replicas and devices, workdir.

    Args:
        dataset: the dataset's name.
        num_train, num_query, num_gallery: image counts of its splits.
        devices: this worker's replica device names
            ('/job:localhost/replica:0/task:0/device:GPU:0').
        batch_size: the global batch.
        workdir: where the run writes.
        workers: hosts of a multi-worker run, each with as many replicas as `devices`.
    """
    short = [name.split("device:")[-1] for name in devices]
    replicas = len(short) * workers
    where = (f"{', '.join(short)}" if workers == 1
             else f"{', '.join(short)} on each of {workers} workers")
    return (f"{dataset}: {num_train} train, {num_query} query, {num_gallery} gallery images | "
            f"{replicas} replica{'s' if replicas != 1 else ''} ({where}), batch "
            f"{batch_size}{f' ({batch_size // replicas} per replica)' if replicas > 1 else ''}"
            f" | workdir {workdir}")


def check_run_inputs(dataset: str, data_dir: str, pretrained: str, *,
                     known_datasets: Sequence[str]) -> None:
    """Refuses, before any heavy work, a run whose dataset or initial weights cannot be had.

    Args:
        dataset: the dataset name.
        data_dir: the folder it is read from (or generated into, GENERATED_DATASETS).
        pretrained: 'none', 'imagenet' or a weights file (model.build_model's pretrained).
        known_datasets: the registered dataset names.

    Raises:
        ExpectedError: an unknown dataset, a missing data folder, a weights file that cannot
            be read, or ImageNet weights neither in the Keras cache nor downloadable.
    """
    if dataset not in known_datasets:
        raise ExpectedError(f"unknown dataset {dataset!r} (--dataset); known: "
                            f"{', '.join(sorted(known_datasets))}")
    if dataset not in GENERATED_DATASETS and not os.path.isdir(data_dir):
        raise ExpectedError(f"--data_dir={data_dir} is not a folder; it should hold the "
                            f"{dataset} dataset (see the README's Datasets)")
    if pretrained == "imagenet":
        _check_imagenet_weights()
    elif pretrained != "none" and not (os.path.isfile(pretrained)
                                       and os.access(pretrained, os.R_OK)):
        raise ExpectedError(f"--pretrained={pretrained}: no readable file there (expected "
                            "'none', 'imagenet' or a ResNet50 .h5 weights file)")


def keras_weights_cache() -> list[str]:
    """Where Keras looks for downloaded weights: $KERAS_HOME/models, ~/.keras/models, /tmp."""
    home = os.path.expanduser("~")
    base = os.environ.get("KERAS_HOME") or os.path.join(
        home if os.access(home, os.W_OK) else "/tmp", ".keras")
    return [os.path.join(base, "models"), os.path.join("/tmp", ".keras", "models")]


def _check_imagenet_weights(timeout: float = 10.0) -> None:
    folders = keras_weights_cache()
    if any(os.path.isfile(os.path.join(folder, IMAGENET_WEIGHTS_FILE)) for folder in folders):
        return
    try:
        urllib.request.urlopen(urllib.request.Request(IMAGENET_WEIGHTS_URL, method="HEAD"),
                               timeout=timeout).close()
    except (OSError, ValueError) as err:  # URLError and timeouts are OSErrors
        reason = getattr(err, "reason", err)
        raise ExpectedError(
            f"--pretrained=imagenet: {IMAGENET_WEIGHTS_FILE} is not in {folders[0]} and cannot "
            f"be downloaded ({reason}); copy it there or pass --pretrained=PATH (README: "
            "ImageNet weights on an offline machine)") from err


@contextlib.contextmanager
def expected_errors(*types: type[BaseException]) -> Iterator[None]:
    """Turns exceptions of the given types, raised in the block, into ExpectedError."""
    try:
        yield
    except types as err:
        raise ExpectedError(error_message(err)) from err


def error_message(err: BaseException) -> str:
    """The message of an exception (a KeyError's without the quotes str() adds)."""
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str):
        return err.args[0]
    return str(err) or type(err).__name__


def run(main: Callable[[list[str]], object], *, program: str,
        flag_values: flags.FlagValues, argv: list[str] | None = None) -> None:
    """app.run with one-line failures: bad flags, app.UsageError and ExpectedError.

    Each ends as 'program: error: message' on stderr and exit status 1, with no traceback
    unless --debug (define_flags) is set.

    Args:
        main: the binary's main(argv).
        program: the name the error lines start with ('bin/train').
        flag_values: the FlagValues holding the binary's flags and define_flags' ones.
        argv: the command line; default sys.argv.
    """

    def parse(args: list[str]) -> list[str]:
        try:
            return flag_values(config.expand_flagfiles(args))
        except flags.Error as err:
            _fail(program, f"{err} (--helpfull lists the flags)")
        except ValueError as err:  # a flagfile that cannot be read
            _fail(program, str(err))

    def guarded_main(args: list[str]) -> object:
        try:
            return main(args)
        except (ExpectedError, app.UsageError) as err:
            if flag_values["debug"].value:
                raise
            _fail(program, error_message(err))

    app.run(guarded_main, argv=argv, flags_parser=parse)


def _fail(program: str, message: str) -> None:
    sys.stdout.flush()
    print(f"{program}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)
