"""Tests of mlc_tf.console and of what bin/* print: quiet logs, progress bars, one-line errors."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys

import pytest

from mlc_tf import config as config_lib
from mlc_tf import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE_CFG = os.path.join(REPO, "configs", "smoke.cfg")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


# ----------------------------------------------------------------------------- progress bars

def test_progress_bar_off_a_terminal_prints_one_line_at_the_end():
    stream = io.StringIO()
    bar = console.ProgressBar(50, "Epoch 3/12", stream=stream, min_interval=0.0)
    for step in range(50):
        bar.update(step + 1, {"loss": 5.0 - step / 100})
    assert stream.getvalue() == ""
    bar.finish("lr 0.05")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in stream.getvalue()
    assert re.fullmatch(r"Epoch 3/12: 50/50 steps in \d+\.\d s \(\d+ ms/step\) - loss 4\.51 "
                        r"\| lr 0\.05", lines[0]), lines[0]


def test_progress_bar_on_a_terminal_redraws_one_line_within_its_width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    stream = _Terminal()
    with console.ProgressBar(4, "query", unit="image", stream=stream, min_interval=0.0) as bar:
        for _ in range(4):
            bar.add(1)
        bar.finish()
    text = stream.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    draws = [draw.removesuffix("\x1b[K") for draw in text.rstrip("\n").split("\r")[1:]]
    assert len(draws) == 5 and all(len(draw) <= 39 for draw in draws)
    assert draws[0].startswith("query: 1/4 [#####...............] ETA")
    assert draws[-1].startswith("query: 4/4 images in")


def test_progress_bar_ends_its_line_when_the_block_fails():
    stream = _Terminal()
    with pytest.raises(RuntimeError):
        with console.ProgressBar(4, "gallery", stream=stream, min_interval=0.0) as bar:
            bar.add(1)
            raise RuntimeError("stop")
    assert stream.getvalue().startswith("\rgallery: 1/4") and stream.getvalue().endswith("\n")


def test_disabled_progress_bar_prints_nothing():
    stream = _Terminal()
    bar = console.ProgressBar(2, "x", stream=stream, enabled=False, min_interval=0.0)
    bar.update(2, {"loss": 1.0})
    bar.finish("done")
    assert stream.getvalue() == ""


# ----------------------------------------------------------------------------- header, filters

def test_header_names_the_data_the_replicas_and_the_workdir():
    devices = ["/job:localhost/replica:0/task:0/device:GPU:0",
               "/job:localhost/replica:0/task:0/device:GPU:1"]
    assert console.format_header("market1501", num_train=12936, num_query=3368,
                                 num_gallery=15913, devices=devices, batch_size=128,
                                 workdir="runs/market") == (
        "market1501: 12936 train, 3368 query, 15913 gallery images | 2 replicas (GPU:0, GPU:1), "
        "batch 128 (64 per replica) | workdir runs/market")
    assert "| 1 replica (CPU:0), batch 32 |" in console.format_header(
        "synthetic", num_train=1, num_query=1, num_gallery=1, devices=["/device:CPU:0"],
        batch_size=32, workdir="w")
    # A multi-worker run: this worker's devices, the replicas of all workers.
    assert "| 4 replicas (GPU:0, GPU:1 on each of 2 workers), batch 128 (32 per replica) |" in (
        console.format_header("market1501", num_train=1, num_query=1, num_gallery=1,
                              devices=devices, batch_size=128, workdir="w", workers=2))


# What TensorFlow 2.21 writes to stderr while loading on this CPU machine, and lines to keep.
TF_IMPORT_LINES = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796170545.605311   20669 port.cc:153] oneDNN custom operations are on.",
    "I0000 00:00:1796170545.605687   20669 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "W0000 00:00:1796170648.514134   21561 dataset.cc:997] Input of GeneratorDatasetOp",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild",
]
CUINIT = ("E0000 00:00:1796170548.912303   20669 cuda_platform.cc:52] failed call to cuInit: "
          "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)")
KEPT = ["E0000 00:00:1796170548.912303   20669 op_kernel.cc:1] Out of memory",
        "Traceback (most recent call last):", "UserWarning: something of ours"]


def test_tensorflow_noise_is_told_from_the_rest():
    for line in TF_IMPORT_LINES:
        assert console.is_tensorflow_noise(line, gpus_found=True), line
    assert console.is_tensorflow_noise(CUINIT, gpus_found=False)
    assert not console.is_tensorflow_noise(CUINIT, gpus_found=True)
    for line in KEPT:
        assert not console.is_tensorflow_noise(line, gpus_found=False), line


def test_quiet_logging_keeps_warnings_and_our_own_info_without_the_prefix():
    def record(level, path):
        return logging.LogRecord("absl", level, path, 1, "resumed from %s", ("ckpt-2",), None)

    ours = os.path.join(REPO, "mlc_tf", "train.py")
    tensorflow = "/venv/site-packages/tensorflow/python/checkpoint/functional_saver.py"
    assert console._own_info_only(record(logging.INFO, ours))
    assert not console._own_info_only(record(logging.INFO, tensorflow))
    assert console._own_info_only(record(logging.WARNING, tensorflow))
    formatter = console._PlainFormatter()
    assert formatter.format(record(logging.INFO, ours)) == "resumed from ckpt-2"
    assert formatter.format(record(logging.WARNING, ours)) == "WARNING: resumed from ckpt-2"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


def test_start_tensorflow_hides_what_loading_prints_unless_all():
    code = ("import sys; from mlc_tf import console; gpus = console.start_tensorflow('{}'); "
            "import tensorflow as tf; tf.constant(1.0) + 1; print('gpus', len(gpus))")
    quiet = _python(code.format("quiet"))
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert quiet.stderr == "" and quiet.stdout.startswith("gpus")
    loud = _python(code.format("all"))
    assert loud.returncode == 0, loud.stderr[-3000:]
    # On this CPU machine: absl's note, oneDNN, cudart_stub and the failed cuInit.
    assert any(console.is_tensorflow_noise(line, gpus_found=False)
               for line in loud.stderr.splitlines())


# ----------------------------------------------------------------------------- checks, errors

def test_check_run_inputs_refuses_what_cannot_be_read(tmp_path):
    known = ["folder", "synthetic"]
    with pytest.raises(console.ExpectedError, match="unknown dataset 'nope'.*folder, synthetic"):
        console.check_run_inputs("nope", str(tmp_path), "none", known_datasets=known)
    with pytest.raises(console.ExpectedError, match="--data_dir=.*absent is not a folder"):
        console.check_run_inputs("folder", str(tmp_path / "absent"), "none", known_datasets=known)
    # The synthetic set is generated into its data_dir, which need not exist yet.
    console.check_run_inputs("synthetic", str(tmp_path / "absent"), "none", known_datasets=known)
    with pytest.raises(console.ExpectedError, match="--pretrained=.*w.h5: no readable file"):
        console.check_run_inputs("folder", str(tmp_path), str(tmp_path / "w.h5"),
                                 known_datasets=known)
    (tmp_path / "w.h5").write_bytes(b"")
    console.check_run_inputs("folder", str(tmp_path), str(tmp_path / "w.h5"), known_datasets=known)


def test_imagenet_weights_must_be_cached_or_downloadable(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(console, "keras_weights_cache", lambda: [str(tmp_path / "keras/models")])
    # Nothing listens on the discard port of this machine: the download is refused at once.
    monkeypatch.setattr(console, "IMAGENET_WEIGHTS_URL", "http://127.0.0.1:9/weights.h5")
    with pytest.raises(console.ExpectedError, match=r"--pretrained=imagenet: resnet50_weights_tf"
                       r".*keras/models and cannot be downloaded .*--pretrained=PATH"):
        console.check_run_inputs("synthetic", "data", "imagenet", known_datasets=["synthetic"])
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / console.IMAGENET_WEIGHTS_FILE).write_bytes(b"")
    console.check_run_inputs("synthetic", "data", "imagenet", known_datasets=["synthetic"])


def test_expected_errors_keep_the_message_and_the_cause():
    with pytest.raises(console.ExpectedError) as caught:
        with console.expected_errors(KeyError):
            raise KeyError("unknown dataset 'x'")
    assert str(caught.value) == "unknown dataset 'x'"
    assert isinstance(caught.value.__cause__, KeyError)
    with pytest.raises(ZeroDivisionError):  # anything else is a bug and keeps its traceback
        with console.expected_errors(KeyError):
            raise ZeroDivisionError


# ----------------------------------------------------------------------------- the binaries

def _bin(name: str, *args, cwd: str = REPO) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run([sys.executable, os.path.join(REPO, "bin", name), *map(str, args)],
                          capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def _one_error_line(result: subprocess.CompletedProcess, program: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    first = result.stderr.splitlines()[0]
    assert first.startswith(f"{program}: error: "), result.stderr
    return result.stderr


@pytest.mark.parametrize("args, message, in_run", [
    (["--dataset=nope"], "unknown dataset 'nope'", False),
    (["--dataset=folder", "--data_dir={tmp}/absent"], "--data_dir=.*absent is not a folder", False),
    # Read inside train.run: a folder without images, the layout named.
    (["--dataset=folder", "--data_dir={tmp}", "--pretrained=none", "--eval_every=0"],
     "folder: no training images .*Expected layout", True),
    (["--dataset=dukemtmc", "--flagfile=configs/duke.cfg", "--data_dir={tmp}",
      "--pretrained={tmp}/resnet50.h5"], "--pretrained=.*resnet50.h5: no readable file", False),
    (["--flagfile={tmp}/absent.cfg"], "cannot read flagfile '.*absent.cfg': No such file", False),
    (["--nosuchflag"], "Unknown command line flag 'nosuchflag'", False),
    (["--tf_log=loud"], "--tf_log=loud: value should be one of <quiet|all>", False),
    (["surplus"], r"unexpected arguments: \['surplus'\]", False),
])
def test_bin_train_expected_failures_are_one_line(tmp_path, args, message, in_run):
    result = _bin("train", *[arg.format(tmp=tmp_path) for arg in args],
                  f"--workdir={tmp_path}/run")
    assert re.search(message, _one_error_line(result, "bin/train"), re.S), result.stderr
    # Checked before train.run, which writes the resolved config first.
    assert (tmp_path / "run" / "config.json").exists() == in_run


def test_bin_train_reads_the_configs_from_any_folder(tmp_path):
    # configs/duke.cfg names base.cfg beside it; parsed, the run stops at the missing weights.
    result = _bin("train", f"--flagfile={REPO}/configs/duke.cfg", f"--data_dir={tmp_path}",
                  f"--pretrained={tmp_path}/resnet50.h5", "--workdir=run", cwd=tmp_path)
    assert re.search("--pretrained=.*resnet50.h5: no readable file",
                     _one_error_line(result, "bin/train")), result.stderr


def test_debug_shows_the_traceback(tmp_path):
    result = _bin("train", "--dataset=nope", "--debug", f"--workdir={tmp_path}")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "unknown dataset 'nope'" in result.stderr


def test_bin_evaluate_and_extract_fail_in_one_line(tmp_path):
    missing = _bin("evaluate", f"--saved_model={tmp_path}/none", "--dataset=nope")
    assert "unknown dataset 'nope'" in _one_error_line(missing, "bin/evaluate")
    extract = _bin("extract", f"--saved_model={tmp_path}", f"--images={tmp_path}",
                   f"--output={tmp_path}/f.npz")
    assert "is not a SavedModel directory" in _one_error_line(extract, "bin/extract")


# What a run prints, line by line, on stdout and stderr together.
LINE_KINDS = {
    "stage": r"Stage [12]: training .+",
    "header": r"synthetic: \d+ train, \d+ query, \d+ gallery images \| 1 replica \(CPU:0\), "
              r"batch \d+ \| workdir .+",
    "initial weights": r"initial weights from .+ \(\d+ layers; workdir, epoch 2\)",
    "epoch": r"Epoch \d+/\d+: \d+/\d+ steps in .+ \| lr .+",
    "round": r"  labels for epoch \d+: \d+ clusters, .+",
    "eval": r"  eval after epoch \d+: mAP \d+\.\d\d%, rank-1 .+ \(\d+\.\d s\)",
    "final": r"final evaluation: mAP .+",
    "export": r"exported SavedModel feature extractor to .+",
}


def _expected_lines(stages: list[config_lib.Config]) -> dict[str, int]:
    """The lines bin/train prints for these stages (the last one's init_from is the first)."""
    from mlc_tf import train

    counts = dict.fromkeys(LINE_KINDS, 0)
    for config in stages:
        epochs, every = config.train.epochs, config.train.eval_every
        counts["header"] += 1
        counts["epoch"] += epochs
        counts["round"] += sum(train.plan_epoch(e, config).relabel for e in range(epochs))
        counts["eval"] += sum(1 for e in range(1, epochs + 1) if every and (
            e % every == 0 or e == epochs))
    counts.update(stage=2 * (len(stages) > 1), final=int(stages[-1].train.eval_every > 0),
                  export=1)
    counts["initial weights"] = len(stages) - 1
    return counts


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory):
    """(root, completed process) of a two-stage smoke run, as the demo's two stages."""
    root = tmp_path_factory.mktemp("two_stage")
    result = _bin("train", f"--flagfile={SMOKE_CFG}", f"--data_dir={root}/data",
                  f"--workdir={root}/target", f"--init_from={root}/source",
                  f"--init_from_flagfile={SMOKE_CFG}")
    assert result.returncode == 0, result.stderr[-5000:]
    return root, result


def test_a_two_stage_run_prints_its_header_epochs_rounds_and_evaluations_only(two_stage_run):
    _, result = two_stage_run
    text = result.stdout + result.stderr
    assert "\r" not in text and "\x1b" not in text  # no redrawing off a terminal
    counts = dict.fromkeys(LINE_KINDS, 0)
    for line in text.splitlines():
        kinds = [kind for kind, pattern in LINE_KINDS.items() if re.fullmatch(pattern, line)]
        assert len(kinds) == 1, f"unexpected line {line!r} in:\n{text}"
        counts[kinds[0]] += 1
    smoke = config_lib.from_flagfile(SMOKE_CFG)
    assert counts == _expected_lines([smoke, smoke])
    assert sum(counts.values()) == 17


def test_the_demo_prints_at_most_80_lines():
    # By the rules the two-stage run above follows line by line.
    source = config_lib.from_flagfile(os.path.join(REPO, "configs", "synthetic_source.cfg"))
    target = config_lib.from_flagfile(os.path.join(REPO, "configs", "synthetic.cfg"))
    assert sum(_expected_lines([source, target]).values()) <= 80


def test_a_checkpoint_of_another_model_is_one_line(two_stage_run):
    root, _ = two_stage_run
    result = _bin("train", f"--flagfile={SMOKE_CFG}", f"--data_dir={root}/data",
                  f"--workdir={root}/target", "--multiscale=false")
    assert "multiscale" in _one_error_line(result, "bin/train")  # names the difference


def test_a_non_finite_loss_is_one_line(tmp_path):
    result = _bin("train", f"--flagfile={SMOKE_CFG}", f"--data_dir={tmp_path}/data",
                  f"--workdir={tmp_path}/run", "--lr=1e30", "--epochs=1", "--eval_every=0")
    assert "non-finite loss (nan) at epoch 1" in _one_error_line(result, "bin/train")
