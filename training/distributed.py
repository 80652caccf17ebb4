"""Data-parallel training: ``tf.distribute.MultiWorkerMirroredStrategy`` across worker
processes that the training job starts on this machine (``jobs.train --workers=N``).

The job (the supervisor, :func:`fit_on_workers`) writes the transformed training rows and a
spec to its work folder, picks N free ports on 127.0.0.1 and starts N processes
``python -m training.distributed SPEC``, each with its own ``TF_CONFIG``::

    {"cluster": {"worker": ["127.0.0.1:PORT0", "127.0.0.1:PORT1"]},
     "task": {"type": "worker", "index": I}}

Each worker builds the model with the same ``model_fn`` inside the strategy's scope (the
chief's initial weights are broadcast), reads the rows as a ``tf.data`` dataset that the
strategy auto-shards by element (``AutoShardPolicy.DATA``: worker I keeps every N-th
example; the global batch is ``--batch_size``, N replicas of batch_size/N), and fits with
gradients all-reduced across workers every step. Worker 0 (the chief) writes the weights
and the history; the job loads them into a model built without a strategy and exports it
as a one-process run does.

The supervisor polls the workers: one that exits non-zero or is killed stops the others
(by their PIDs) and fails the job with one line naming it; the whole fit is bounded by
``timeout_s`` and each collective by ``collective_timeout_s``, so nothing waits forever on a
lost peer. On real hosts the same ``TF_CONFIG`` names each host's address instead of
127.0.0.1 (README: Training, distributed).
"""

from __future__ import annotations

import os

# Before TensorFlow is imported in a worker process: quiet C++ logs, Keras 2.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch.core.faults import fault_point
from batch.core.fsutil import read_json, write_json_atomic, write_text_atomic
from training.fitting import TrainingError

SPEC_FILE = "spec.json"
DATA_FILE = "rows.npz"
WEIGHTS_FILE = "weights.npz"
HISTORY_FILE = "history.json"
ERROR_FILE = "error.txt"
TIMING_FILE = "timing.json"  # the chief's model.fit seconds (no process start)
LAUNCHER_LOG = "launcher.log"
LABEL_KEY = "__label__"
WORKER_MODULE = "training.distributed"
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_COLLECTIVE_TIMEOUT_S = 300.0
_POLL_S = 0.2
_STOP_WAIT_S = 10.0


def worker_fault_point(index: int) -> str:
    """The fault point (batch.core.faults) that kills worker ``index`` after its first epoch."""
    return f"training-worker-{index}"


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker process needs (spec.json in the work folder)."""

    tft_output: str
    model_fn: str
    hyperparameters: dict[str, Any]
    batch_size: int
    epochs: int
    seed: int
    policy: str
    collective_timeout_s: float
    # TensorFlow's intra- and inter-op threads per worker (0: TensorFlow's default, every
    # core): local workers share the machine's cores instead of each taking them all.
    threads: int = 0


def threads_per_worker(workers: int) -> int:
    """This machine's cores (the ones this process may use) shared among ``workers``."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1 (held open together while chosen)."""
    with ExitStack() as stack:
        sockets = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [int(sock.getsockname()[1]) for sock in sockets]


def tf_config(addresses: list[str], index: int) -> dict[str, Any]:
    return {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}


@dataclass(frozen=True)
class DistributedFit:
    weights: list[np.ndarray]
    history: dict[str, list[float]]
    workers: int
    seconds: float  # the whole fit: processes started, TensorFlow imported, cluster formed
    worker_fit_s: float  # model.fit on the chief only


def fit_on_workers(
    spec: WorkerSpec,
    features: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    workers: int,
    work_dir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    say: Callable[[str], None] = lambda _m: None,
) -> DistributedFit:
    """Fit on ``workers`` local worker processes (see the module docstring).

    TensorFlow's gRPC server listens on every interface of its port, whatever address
    TF_CONFIG gives. So that the local workers are reachable from this machine only, they
    run inside a private network namespace (``unshare -rn``: only a loopback interface)
    where the kernel allows one; elsewhere they run beside the job, and a line says so."""
    work_dir.mkdir(parents=True, exist_ok=True)
    # Strings (a passed-through key) as fixed-width bytes: object arrays need pickle.
    arrays: dict[str, Any] = {
        name: values.astype(np.bytes_) if values.dtype == object else values
        for name, values in {LABEL_KEY: labels, **features}.items()
    }
    np.savez(work_dir / DATA_FILE, **arrays)
    write_json_atomic(work_dir / SPEC_FILE, asdict(spec))
    private = private_network_available()
    command = [sys.executable, "-m", WORKER_MODULE, "launch", str(work_dir), str(workers)]
    command += [str(timeout_s), "private" if private else "shared"]
    if private:
        command = ["unshare", "--net", "--map-root-user", "--", *command]
    else:
        say(
            "train: no private network namespace here (unshare -rn failed): the workers' "
            "gRPC servers listen on all interfaces of their 127.0.0.1 ports"
        )
    env_path = os.pathsep.join(
        [p or os.getcwd() for p in sys.path if p is not None] + [os.environ.get("PYTHONPATH", "")]
    )
    started = time.monotonic()
    with open(work_dir / LAUNCHER_LOG, "wb") as log:
        launcher = subprocess.Popen(
            command,
            env={**os.environ, "PYTHONPATH": env_path},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    say(f"train: fitting on {workers} workers (launcher pid {launcher.pid})")
    try:
        # The launcher enforces timeout_s itself; this bound only covers a launcher that hangs.
        code = launcher.wait(timeout=timeout_s + _STOP_WAIT_S * 3)
    except subprocess.TimeoutExpired:
        code = None
    finally:
        _stop([launcher])  # its workers die with it (PR_SET_PDEATHSIG)
    error = work_dir / ERROR_FILE
    if error.exists():
        raise TrainingError(error.read_text().strip())
    if code != 0:
        raise TrainingError(
            f"the training worker launcher (pid {launcher.pid}) "
            + ("did not finish" if code is None else f"exited with status {code}")
            + f" without a result after {time.monotonic() - started:.0f}s (its last log line: "
            f"{_last_line(work_dir / LAUNCHER_LOG)}); nothing was registered. Rerun, or "
            "train with --workers=1"
        )
    with np.load(work_dir / WEIGHTS_FILE) as saved:
        weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    history = read_json(work_dir / HISTORY_FILE)
    return DistributedFit(
        weights,
        history,
        workers,
        round(time.monotonic() - started, 2),
        float(read_json(work_dir / TIMING_FILE)["fit_s"]),
    )


_PRIVATE_NETWORK: list[bool] = []


def private_network_available() -> bool:
    """Whether this machine lets an unprivileged process make a network namespace with a
    working loopback (checked once per process)."""
    if not _PRIVATE_NETWORK:
        try:
            done = subprocess.run(
                ["unshare", "--net", "--map-root-user", "--", "ip", "link", "set", "lo", "up"],
                capture_output=True,
                timeout=10,
                check=False,
            )
            _PRIVATE_NETWORK.append(done.returncode == 0)
        except (OSError, subprocess.SubprocessError):
            _PRIVATE_NETWORK.append(False)
    return _PRIVATE_NETWORK[0]


def launch(work_dir: Path, workers: int, timeout_s: float, private: bool) -> int:
    """The launcher process: (in its private network namespace, bring up loopback,) start
    the workers, each dying with the launcher, and supervise them. A failure is written to
    ``work_dir/error.txt`` as one line."""
    try:
        if private:
            subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
        addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
        started = time.monotonic()
        processes: list[subprocess.Popen[bytes]] = []
        logs = [work_dir / f"worker-{index}.log" for index in range(workers)]
        try:
            for index in range(workers):
                env = {**os.environ, "TF_CONFIG": json.dumps(tf_config(addresses, index))}
                with open(logs[index], "wb") as log:
                    processes.append(
                        subprocess.Popen(
                            [sys.executable, "-m", WORKER_MODULE, "work", str(work_dir)],
                            env=env,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent,
                        )
                    )
            print(
                f"workers {', '.join(f'{p.pid}@{a}' for p, a in zip(processes, addresses, strict=True))}",
                flush=True,
            )
            _supervise(processes, logs, addresses, started, timeout_s)
        finally:
            _stop(processes)
    except TrainingError as exc:
        write_text_atomic(work_dir / ERROR_FILE, str(exc))
        return 1
    return 0


def _die_with_parent() -> None:
    """In a worker before exec: SIGKILL when the launcher dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def _supervise(
    processes: list[subprocess.Popen[bytes]],
    logs: list[Path],
    addresses: list[str],
    started: float,
    timeout_s: float,
) -> None:
    count = len(processes)
    while True:
        codes = [process.poll() for process in processes]
        for index, code in enumerate(codes):
            if code is not None and code != 0:
                how = (
                    f"was killed by {signal.Signals(-code).name}"
                    if code < 0
                    else f"exited with status {code}"
                )
                raise TrainingError(
                    f"training worker {index} of {count} (pid {processes[index].pid}, "
                    f"{addresses[index]}) {how} after {time.monotonic() - started:.0f}s; the "
                    f"other workers were stopped and nothing was registered (its last log "
                    f"line: {_last_line(logs[index])}). Rerun, or train with --workers=1"
                )
        if all(code == 0 for code in codes):
            return
        if time.monotonic() - started > timeout_s:
            running = [str(i) for i, code in enumerate(codes) if code is None]
            raise TrainingError(
                f"training workers {', '.join(running)} of {count} did not finish within "
                f"--worker_timeout={timeout_s:.0f}s; they were stopped and nothing was "
                f"registered (worker {running[0]}'s last log line: "
                f"{_last_line(logs[int(running[0])])}). Raise --worker_timeout or train on "
                "fewer rows"
            )
        time.sleep(_POLL_S)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Kill the workers still running (each by its own PID) and reap them, bounded."""
    for process in processes:
        if process.poll() is None:
            process.kill()
    deadline = time.monotonic() + _STOP_WAIT_S
    for process in processes:
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return "(no log)"
    lines = [line for line in lines if line]
    if not lines:
        return "(empty)"
    line = lines[-1]
    return line if len(line) <= 300 else line[:297] + "..."


# -- the worker process ----------------------------------------------------------------


def run_worker(work_dir: Path) -> None:
    """One worker: TF_CONFIG from the environment, the spec and rows from ``work_dir``."""
    import tensorflow as tf
    import tensorflow_transform as tft
    import tf_keras

    from training.fitting import build_model, precision_policy
    from training.lineage import load_function

    spec = WorkerSpec(**read_json(work_dir / SPEC_FILE))
    index = int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    if spec.threads:
        tf.config.threading.set_intra_op_parallelism_threads(spec.threads)
        tf.config.threading.set_inter_op_parallelism_threads(spec.threads)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=spec.collective_timeout_s
        )
    )
    with np.load(work_dir / DATA_FILE) as saved:
        labels = saved[LABEL_KEY]
        features = {name: saved[name] for name in saved.files if name != LABEL_KEY}
    tft_output = tft.TFTransformOutput(spec.tft_output)
    model_fn = load_function(spec.model_fn, "--model_fn")
    with precision_policy(spec.policy), strategy.scope():
        model = build_model(model_fn, tft_output, spec.hyperparameters, list(features))
    rows = tf.data.Dataset.from_tensor_slices(
        ({name: features[name] for name in model.input_names}, labels)
    )
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    rows = (
        rows.shuffle(len(labels), seed=spec.seed, reshuffle_each_iteration=True)
        .batch(spec.batch_size)
        .with_options(options)
    )

    class FaultAfterFirstEpoch(tf_keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
            fault_point(worker_fault_point(index))

    started = time.perf_counter()
    history = model.fit(rows, epochs=spec.epochs, verbose=0, callbacks=[FaultAfterFirstEpoch()])
    seconds = round(time.perf_counter() - started, 2)
    if index == 0:
        np.savez(work_dir / WEIGHTS_FILE, *model.get_weights())
        write_json_atomic(
            work_dir / HISTORY_FILE,
            {name: [float(v) for v in values] for name, values in history.history.items()},
        )
        write_json_atomic(work_dir / TIMING_FILE, {"fit_s": seconds})


if __name__ == "__main__":
    if sys.argv[1] == "launch":
        _dir, _count, _timeout, _network = sys.argv[2:6]
        sys.exit(launch(Path(_dir), int(_count), float(_timeout), _network == "private"))
    run_worker(Path(sys.argv[2]))
