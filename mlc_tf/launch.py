"""bin/launch_local: N bin/train workers on this machine, restarted together when one dies."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

LOOPBACK = "127.0.0.1"
# Seconds a worker gets to stop after SIGTERM before it is killed.
_GRACE_SECONDS = 30.0
_POLL_SECONDS = 0.2


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on the loopback interface just now."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [sock.getsockname()[1] for sock in sockets]


def tf_config(ports: Sequence[int], index: int) -> str:
    """The TF_CONFIG of worker `index` of a loopback cluster on `ports`."""
    return json.dumps({"cluster": {"worker": [f"{LOOPBACK}:{port}" for port in ports]},
                       "task": {"type": "worker", "index": index}})


def _forward(stream, prefix: str, out) -> None:
    for line in stream:
        out.write(f"{prefix}{line}")
        out.flush()


def _start(command: Sequence[str], ports: Sequence[int], out) -> list[subprocess.Popen]:
    workers = []
    for index in range(len(ports)):
        # multi_worker.TF_CONFIG_ENV, named here so that the launcher never loads TensorFlow.
        env = {**os.environ, "TF_CONFIG": tf_config(ports, index)}
        worker = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=_forward, args=(worker.stdout, f"[worker {index}] ", out),
                         daemon=True).start()
        print(f"[launch_local] worker {index} pid {worker.pid} on {LOOPBACK}:{ports[index]}",
              file=out, flush=True)
        workers.append(worker)
    return workers


def _stop(workers: Sequence[subprocess.Popen], sig: int, grace: float) -> None:
    """Sends `sig` to the workers still running, then kills those left after `grace` s."""
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(sig)
    deadline = time.monotonic() + grace
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def launch(command: Sequence[str], *, workers: int, port: int | None = None,
           max_restarts: int = 3, out=None) -> int:
    """Runs `command` as `workers` processes of one loopback cluster until all succeed.

    Each worker gets TF_CONFIG with its index; its output lines are prefixed '[worker i] '.
    When one exits with a non-zero status (or a signal), the others are killed and all start
    again, at most max_restarts times, so that training resumes from the chief's newest
    checkpoint. SIGTERM or SIGINT to the launcher is passed on as SIGTERM to every worker
    (they checkpoint at the same step and stop); it then exits without restarting.

    Args:
        command: the worker command line, e.g. [python, 'bin/train', flags...].
        workers: number of processes, >= 1.
        port: first of `workers` consecutive ports; default free ports, new at each start.
        max_restarts: restarts allowed after failures.
        out: text stream for the output (default sys.stdout).

    Returns:
        0 when every worker succeeded, else the exit status of the failure that ended it
        (128 + signal number for a signal).

    Raises:
        ValueError: workers < 1, max_restarts < 0, or an empty command.
    """
    if workers < 1 or max_restarts < 0 or not command:
        raise ValueError(f"need workers >= 1, max_restarts >= 0 and a command; got {workers}, "
                         f"{max_restarts}, {list(command)!r}")
    out = out or sys.stdout
    stop = threading.Event()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, lambda *_: stop.set())
    try:
        for attempt in range(max_restarts + 1):
            ports = list(range(port, port + workers)) if port else free_ports(workers)
            running = _start(command, ports, out)
            status = _wait(running, stop)
            if status == 0 or stop.is_set():
                _stop(running, signal.SIGTERM, _GRACE_SECONDS)
                return status if status else _status(running)
            failed = next(i for i, w in enumerate(running) if w.returncode not in (None, 0))
            _stop(running, signal.SIGKILL, 0.0)
            if attempt == max_restarts:
                print(f"[launch_local] worker {failed} failed (status {status}); "
                      f"{max_restarts} restarts used, giving up", file=out, flush=True)
                return status
            print(f"[launch_local] worker {failed} failed (status {status}); restarting all "
                  f"{workers} workers ({attempt + 1} of {max_restarts} restarts)", file=out,
                  flush=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 1


def _status(workers: Sequence[subprocess.Popen]) -> int:
    """The first non-zero exit status of finished workers (signals as 128 + number), or 0."""
    for worker in workers:
        code = worker.returncode
        if code:
            return 128 - code if code < 0 else code
    return 0


def _wait(workers: Sequence[subprocess.Popen], stop: threading.Event) -> int:
    """Waits until all workers succeeded (0), one failed (its status) or `stop` is set."""
    while not stop.is_set():
        if any(w.poll() not in (None, 0) for w in workers):
            return _status([w for w in workers if w.returncode is not None])
        if all(w.returncode == 0 for w in workers):
            return 0
        time.sleep(_POLL_SECONDS)
    return 0
