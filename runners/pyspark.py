"""Apache Spark adapter (pyspark): the same scoring as on Beam, natively on Spark.

Two ways for rows to reach the core (``--spark_conf batchscore.input=...``); by
default (``auto``) the runner takes ``splits`` whenever the workers can read the input's
paths themselves (:func:`choose_input`: local masters, a cluster on this host, object-store
URIs, paths under ``--spark_conf batchscore.shared_paths=PREFIX,...``) and ``spark``
otherwise; the manifest's ``runner.options`` records which (``input``) and why
(``input_reason``).

``spark``
    ``spark.read.parquet(files).select(columns).mapInArrow(score)``: Spark's
    reader hands each partition's rows to a Python worker as Arrow record
    batches of ``--batch_size`` rows, and the worker passes them to the core's
    :func:`~batch.engine.job.score_batches`, staged as output part ``<partition id>``.
    The partition id is the same for every attempt of a task, so a retried (or
    speculative) task replaces its own part.
``splits``
    Spark schedules the planned splits (one task per task slot) and each task
    reads its splits with pyarrow through :func:`~batch.engine.job.score_split`, as
    the Beam runner does; part = split index. No row passes through the JVM,
    which saves the JVM's row conversion, as much CPU as the model's own work.

Each task returns tiny summaries; the driver collects them and the core
reconciles and commits the run as it does for every runner.

One model per Python worker process: Spark reuses its Python workers across
tasks (``spark.python.worker.reuse``, forced on) and the core caches the loaded
model per process, so a worker loads the model once for the whole job.

Where things must live on a real cluster: the input files, the output folder
and the model are read and written by the executors by path, so they must be
on a filesystem every worker mounts at the same path (NFS, a mounted bucket);
the workers' Python (``PYSPARK_PYTHON``) must have batchscore and its
dependencies. On ``local[*]`` and a single-host cluster, local disk is that
filesystem.

Local masters get a JVM tuned for one short job (C1-only JIT, serial GC, a
class-data-sharing archive built once per installation) that boots while the
driver checks the input (:meth:`PySparkRunner.start`).

This is the only module that imports pyspark.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import hashlib
import importlib
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import partial
from itertools import chain, pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.core import errors, storage
from batch.core.dictionaries import decoded_schema
from batch.core.errors import BatchScoreError, UsageError
from batch.engine.inputs import Split
from batch.engine.job import (
    ScoringJob,
    SplitResult,
    read_columns,
    rows_after_restarts,
    score_batches,
    score_split,
)
from batch.engine.memory import NOT_SHARED, Sharing, WorkerMemory

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

RUNNER_NAME = "PySparkRunner"
DEFAULT_MASTER = "local[*]"
BATCH_SIZE_CONF = "spark.sql.execution.arrow.maxRecordsPerBatch"
BATCH_BYTES_CONF = "spark.sql.execution.arrow.maxBytesPerBatch"
NO_BYTE_LIMIT = 2**31 - 1  # Spark skips the byte check for exactly this value
WORKER_REUSE_CONF = "spark.python.worker.reuse"
# How the input reaches the Python workers (--spark_conf batchscore.input=...):
#   spark   Spark's Parquet reader reads the input files; each partition's rows come to
#           the workers as Arrow batches through mapInArrow.
#   splits  Spark schedules the planned splits; each task reads its split's row groups
#           with pyarrow, exactly as the Beam runner does. No rows pass through the JVM.
#   auto    splits where the workers can read the input's paths (choose_input), else
#           spark (default).
INPUT_OPTION = "batchscore.input"
INPUT_SPARK = "spark"
INPUT_SPLITS = "splits"
INPUT_AUTO = "auto"
# --spark_conf batchscore.shared_paths=/mnt/nfs,/data: folders every worker mounts at the
# same path, so that auto reads input there with pyarrow on any cluster.
SHARED_PATHS_OPTION = "batchscore.shared_paths"
TASK_CPUS_CONF = "spark.task.cpus"
EXECUTOR_CORES_CONF = "spark.executor.cores"
# With input=splits on a local master one task (one Python worker, one model) per this
# many cores, scoring with as many threads: TF import and model load paid once per task.
MAX_LOCAL_TASK_CPUS = 4
SUMMARY_SCHEMA = pa.schema(
    [
        ("part_index", pa.int32()),
        ("rows_in", pa.int64()),
        ("rows_scored", pa.int64()),
        ("rows_rejected", pa.int64()),
    ]
)
SUMMARY_DDL = "part_index int, rows_in long, rows_scored long, rows_rejected long"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")
# A local job's JVM lives for one job: JIT-compiling with C1 only and a serial GC spend
# far less of the machine's CPU on the JVM itself (measured: see docs/benchmarks.md).
JAVA_OPTIONS_CONF = "spark.driver.extraJavaOptions"
LOCAL_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
# --spark_conf batchscore.jvm_cache=off: no class-data-sharing archive for local JVMs.
JVM_CACHE_OPTION = "batchscore.jvm_cache"
CACHE_DIR_ENV = "BATCHSCORE_CACHE_DIR"
# The JVM lists every class it cannot archive (hundreds of lines) unless told not to.
QUIET_CDS = "-Xlog:cds=off,cds+dynamic=off"
# Writing the class archive as the JVM exits takes several seconds, once.
JVM_EXIT_TIMEOUT_S = 300
# Archives Spark ships to executors (spark-submit --archives; YARN's own key).
ARCHIVES_CONFS = ("spark.archives", "spark.yarn.dist.archives")
# When no part has finished this long after the job starts, say why (an archive unpacking).
SLOW_START_NOTE_S = 20.0


class SparkRunnerError(BatchScoreError):
    """Spark could not start or the Spark job failed for a reason outside the core."""


def parse_spark_confs(items: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` strings (``--spark_conf``) as a dict; a malformed one fails naming it."""
    confs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip().startswith(("spark.", "batchscore.")):
            raise UsageError(
                f"--spark_conf {item}: expected KEY=VALUE with a Spark key (spark.*) or a "
                "PySparkRunner setting (batchscore.*), e.g. --spark_conf spark.executor.memory=4g"
            )
        confs[key.strip()] = value
    return confs


def is_local_master(master: str) -> bool:
    return master == "local" or master.startswith("local[") or master.startswith("local-cluster[")


def local_cores(master: str) -> int:
    """Task slots of a local master: local[N] and local[N,F] -> N, local[*] -> cores, else 1."""
    match = re.match(r"local\[([^,\]]+)", master)
    if not match:
        return 1
    if match.group(1) == "*":
        return os.cpu_count() or 1
    try:
        return max(1, int(match.group(1)))
    except ValueError:
        return 1


def default_task_cpus(master: str, input_mode: str) -> int | None:
    """batchscore's ``spark.task.cpus`` where the job sets none: on a local master whose
    input batchscore reads (not input=spark), one task per MAX_LOCAL_TASK_CPUS cores."""
    if input_mode != INPUT_SPARK and re.match(r"local(\[|$)", master):
        return min(local_cores(master), MAX_LOCAL_TASK_CPUS)
    return None


def _positive_int(value: str | None) -> int | None:
    """A Spark setting's positive whole number (None: unset or not one)."""
    try:
        number = int(value) if value is not None else 0
    except ValueError:
        return None
    return number if number > 0 else None


# A Spark executor's JVM is started with its cores on its command line
# (``...CoarseGrainedExecutorBackend ... --cores N``: standalone, YARN and Kubernetes).
EXECUTOR_BACKEND = "CoarseGrainedExecutorBackend"
# A Python worker's executor JVM is its parent (pyspark's daemon forks the workers) or its
# grandparent; a few more levels cover a wrapper process.
_PARENT_LEVELS = 4


def backend_cores(args: Sequence[str]) -> int | None:
    """The ``--cores`` of an executor backend's command line; None for any other."""
    if not any(arg.endswith(EXECUTOR_BACKEND) for arg in args):
        return None
    for flag, value in pairwise(args):
        if flag == "--cores":
            return _positive_int(value)
    return None


def executor_cores(pid: int | None = None) -> int | None:
    """The cores of the Spark executor whose Python worker this process is: the ``--cores``
    of the executor's JVM among the process's parents (Linux ``/proc``). None where there
    is none: a local master's workers (their JVM is the driver's), another system."""
    pid = os.getppid() if pid is None else pid
    for _ in range(_PARENT_LEVELS):
        if pid < 1:
            return None
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        cores = backend_cores([arg.decode(errors="replace") for arg in args])
        if cores is not None or pid == 1:  # a container's JVM may be its first process
            return cores
        pid = int(stat.rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ..."
    return None


def executor_memory(
    memory: WorkerMemory | None, task_cpus: int, cores: int | None
) -> WorkerMemory | None:
    """A Python worker's memory plan in an executor with ``cores`` (:func:`executor_cores`):
    where the driver could not know how many task slots share the executor's memory (a job
    that does not set ``spark.executor.cores``, whose executors on a standalone cluster take
    all their worker's cores, SPARK-30299), each of the executor's ``cores // task_cpus``
    Python workers takes that part of the default budget, as a local master's do. A
    ``--worker_memory`` is each process's already, and sharing the driver planned is
    kept."""
    if memory is None or memory.budget_bytes or memory.sharing.processes > 1:
        return memory
    slots = (cores or 1) // max(task_cpus, 1)
    if slots <= 1:
        return memory
    return dataclasses.replace(memory, sharing=dataclasses.replace(memory.sharing, processes=slots))


def _worker_job(job: ScoringJob) -> ScoringJob:
    """``job`` as this Python worker scores it: its memory shared with the other task
    slots of its executor (:func:`executor_memory`)."""
    from pyspark import TaskContext

    context = TaskContext.get()
    task_cpus = context.cpus() if context is not None else 1
    memory = executor_memory(job.memory, task_cpus, executor_cores())
    return job if memory is job.memory else dataclasses.replace(job, memory=memory)


def choose_input(
    mode: str,
    master: str,
    paths: Sequence[str],
    shared_paths: Sequence[str] = (),
    skip_bad_files: bool = False,
) -> tuple[str, str]:
    """How the input reaches the workers (INPUT_SPLITS or INPUT_SPARK) and why, in words.

    ``splits`` (2x faster: no row passes through the JVM) needs every worker to read the
    input's paths with pyarrow: true on local masters and clusters on this host, for
    object-store URIs, and for paths under ``shared_paths`` (declared by the user).
    Elsewhere Spark's reader reads the input."""
    if mode == INPUT_SPLITS:
        return INPUT_SPLITS, f"--spark_conf {INPUT_OPTION}={INPUT_SPLITS}"
    if skip_bad_files:
        return INPUT_SPLITS, (
            "--on_bad_file=skip: batchscore reads the files itself, so that a file damaged "
            "inside is skipped whole instead of failing Spark's read"
        )
    if mode == INPUT_SPARK:
        return INPUT_SPARK, f"--spark_conf {INPUT_OPTION}={INPUT_SPARK}"
    if any(storage.is_uri(path) for path in paths):
        return INPUT_SPLITS, (
            "object-store input: every worker reads it with pyarrow (the JVM needs no cloud "
            "connector)"
        )
    if is_local_master(master):
        return INPUT_SPLITS, f"{master} runs the workers on this machine"
    if _is_loopback_master(master):
        return INPUT_SPLITS, f"{master} is a cluster on this host: its workers see its files"
    roots = [root.rstrip("/") + "/" for root in shared_paths]
    if paths and roots and all(os.path.abspath(p).startswith(tuple(roots)) for p in paths):
        return INPUT_SPLITS, f"every input file is under {SHARED_PATHS_OPTION}"
    return INPUT_SPARK, (
        f"the workers of {master} may not mount the input's paths; to read them with pyarrow "
        f"(about 2x faster) declare a folder every worker mounts: --spark_conf "
        f"{SHARED_PATHS_OPTION}=PREFIX"
    )


def _is_loopback_master(master: str) -> bool:
    if is_local_master(master):
        return True
    match = re.match(r"spark://([^,/]+?)(?::\d+)?(?:,|/|$)", master)
    return bool(match) and match is not None and match.group(1) in _LOOPBACK_HOSTS


MASTER_CONNECT_TIMEOUT_S = 5.0
_MASTER_FORMS = (
    "local, local[N], local[*], spark://HOST:PORT[,HOST:PORT...], yarn (with "
    "HADOOP_CONF_DIR or YARN_CONF_DIR set) or k8s://https://HOST:PORT"
)


def check_master(master: str) -> str:
    """``master`` if Spark can use it from this process, else a one-line UsageError: an
    unknown form, yarn without its configuration, or a standalone master none of whose
    addresses accepts a connection within MASTER_CONNECT_TIMEOUT_S (instead of Spark's
    own minute of retries)."""
    if is_local_master(master) or master.startswith("k8s://"):
        return master
    if master == "yarn":
        if not (os.environ.get("HADOOP_CONF_DIR") or os.environ.get("YARN_CONF_DIR")):
            raise UsageError(
                "--spark_master=yarn: Spark finds the YARN cluster through HADOOP_CONF_DIR "
                "or YARN_CONF_DIR, and neither is set; export one (the folder holding "
                "yarn-site.xml), or submit with spark-submit --master yarn"
            )
        return master
    match = re.fullmatch(r"spark://((?:[^,/:]+:\d+)(?:,[^,/:]+:\d+)*)/?", master)
    if match is None:
        raise UsageError(f"--spark_master={master}: expected {_MASTER_FORMS}")
    failures = []
    for address in match.group(1).split(","):
        host, port = address.rsplit(":", 1)
        try:
            with socket.create_connection((host, int(port)), MASTER_CONNECT_TIMEOUT_S):
                return master
        except OSError as exc:
            failures.append(f"{address}: {exc.strerror or exc}")
    raise UsageError(
        f"--spark_master={master}: no Spark master answers ({'; '.join(failures)}; waited "
        f"up to {MASTER_CONNECT_TIMEOUT_S:g} s each). Start it (README: 'Spark standalone "
        "cluster') or correct the host and port"
    )


class PySparkRunner:
    """Runs a scoring job as one Spark job, locally or on a cluster.

    ``master`` is ``--spark_master``. Under ``spark-submit`` (or with a
    SparkContext already running in the process) the master is the one already
    set, and a different ``--spark_master`` is an error; otherwise it is
    ``--spark_master``, by default ``local[*]``. ``confs`` are ``--spark_conf``
    pairs, applied when the session is created.
    """

    name = "pyspark"

    def __init__(self, master: str | None = None, confs: Mapping[str, str] | None = None) -> None:
        self.requested_master = master
        given = dict(confs or {})
        self.confs = {k: v for k, v in given.items() if not k.startswith("batchscore.")}
        settings = {k: v for k, v in given.items() if k.startswith("batchscore.")}
        self.input_mode = settings.pop(INPUT_OPTION, INPUT_AUTO).strip()
        if self.input_mode not in (INPUT_AUTO, INPUT_SPARK, INPUT_SPLITS):
            raise UsageError(
                f"--spark_conf {INPUT_OPTION}={self.input_mode}: expected {INPUT_AUTO} (the "
                f"default: {INPUT_SPLITS} where the workers can read the input's paths), "
                f"{INPUT_SPARK} (Spark reads the Parquet input) or {INPUT_SPLITS} (each task "
                "reads its planned split with pyarrow)"
            )
        shared = settings.pop(SHARED_PATHS_OPTION, "")
        self.shared_paths = tuple(
            os.path.abspath(os.path.expanduser(p.strip())) for p in shared.split(",") if p.strip()
        )
        # What options() records: the input mode once execute has chosen it, and why.
        self._recorded: dict[str, Any] = {}
        jvm_cache = settings.pop(JVM_CACHE_OPTION, "on").strip()
        if jvm_cache not in ("on", "off"):
            raise UsageError(f"--spark_conf {JVM_CACHE_OPTION}={jvm_cache}: expected on or off")
        self.jvm_cache = jvm_cache == "on"
        if settings:
            raise UsageError(
                f"--spark_conf {', '.join(sorted(settings))}: unknown PySparkRunner setting; "
                f"known: {INPUT_OPTION}={INPUT_AUTO}|{INPUT_SPARK}|{INPUT_SPLITS}, "
                f"{SHARED_PATHS_OPTION}=PREFIX[,PREFIX], {JVM_CACHE_OPTION}=on|off"
            )
        # (archive being written, where it goes) while this runner's JVM builds the cache.
        self._archive: tuple[Path, Path] | None = None
        self._launcher: threading.Thread | None = None
        self._launch_error: BaseException | None = None
        if self.confs.get(WORKER_REUSE_CONF, "true").strip().lower() != "true":
            raise UsageError(
                f"--spark_conf {WORKER_REUSE_CONF}={self.confs[WORKER_REUSE_CONF]}: batchscore "
                "needs Python worker reuse (one model load per worker); drop this option"
            )
        if BATCH_SIZE_CONF in self.confs:
            raise UsageError(
                f"--spark_conf {BATCH_SIZE_CONF}: the Arrow batch size is --batch_size; "
                "use --batch_size instead"
            )
        self._master: str | None = None

    def options(self) -> dict[str, Any]:
        """The options the manifest records. With ``batchscore.input=auto`` the mode depends
        on the input's paths, which execute sees: the dict returned is this runner's own
        and execute sets ``input`` and ``input_reason`` in it (the manifest is written
        after the run has been executed)."""
        self._recorded.update(
            {
                "master": self.master(),
                "input": self._recorded.get("input", self.input_mode),
                "confs": dict(sorted(self.confs.items())),
            }
        )
        if self.shared_paths:
            self._recorded["shared_paths"] = list(self.shared_paths)
        return self._recorded

    @property
    def splits_at_once(self) -> int | None:
        """A local master's task slots: its cores over ``spark.task.cpus`` (the job's,
        else batchscore's default: one task per MAX_LOCAL_TASK_CPUS cores when batchscore
        reads the input). None for a cluster, whose executors are known once its session
        runs, after the splits are planned (they get the default size)."""
        master = self.master()
        if not (master == "local" or master.startswith("local[")):
            return None
        return max(1, local_cores(master) // self._task_cpus())

    @property
    def memory_sharing(self) -> Sharing:
        """The Python worker processes that share a worker's memory: one a task slot. A
        local master's slots share this machine's default budget; a cluster executor's
        (``spark.executor.cores`` over ``spark.task.cpus``, where the job sets the
        executor's cores) share the executor's: its container's cgroup on YARN and
        Kubernetes. Otherwise the driver cannot know them before the executors start, and
        each Python worker finds its executor's slots itself (:func:`executor_memory`)."""
        slots = self.splits_at_once
        if slots is None:
            cores = _positive_int(self._setting(EXECUTOR_CORES_CONF))
            slots = cores // self._task_cpus() if cores else 1
        return Sharing(processes=slots) if slots > 1 else NOT_SHARED

    def _task_cpus(self) -> int:
        """``spark.task.cpus`` as the job's tasks get it: set by the job, else the default
        of the session this runner builds (:func:`default_task_cpus`), else Spark's (1)."""
        given = _positive_int(self._setting(TASK_CPUS_CONF))
        if given is not None:
            return given
        if _active_context() is not None:
            return 1
        return default_task_cpus(self.master(), self.input_mode) or 1

    def _setting(self, key: str) -> str | None:
        """A Spark setting as the job will have it: ``--spark_conf``, else spark-submit's
        or the active SparkContext's (None where none sets it)."""
        if key in self.confs:
            return self.confs[key]
        self.master()  # joins spark-submit's JVM, where there is one
        if not (_under_spark_submit() or _active_context() is not None):
            return None
        SparkConf, SparkContext, _ = _pyspark()
        active = SparkContext._active_spark_context
        conf = active.getConf() if active is not None else SparkConf()
        value = conf.get(key)
        return None if value is None else str(value)

    def master(self) -> str:
        """The master this runner's job runs on (joins spark-submit's JVM to learn it)."""
        if self._master is None:
            wait_for_stops()
            if _under_spark_submit() or _active_context() is not None:
                SparkConf, SparkContext, _ = _pyspark()
                active = SparkContext._active_spark_context
                if active is not None:
                    found, source = str(active.master), "the active SparkContext"
                else:
                    try:
                        SparkContext._ensure_initialized()
                    except Exception as exc:
                        raise translate_spark_error(exc) from exc
                    found = SparkConf().get("spark.master") or DEFAULT_MASTER
                    source = "spark-submit"
                self._master = self._check_master(found, source)
            else:
                self._master = check_master(self.requested_master or DEFAULT_MASTER)
        return self._master

    def execute(self, job: ScoringJob, splits: Sequence[Split]) -> None:
        if not splits:
            log.info("no rows to score; no Spark job")
            try:
                self._join_launch()  # a JVM start() began is left whole
            except BatchScoreError as exc:
                log.warning("Spark did not start (no job needed it): %s", exc)
            if self._archive is not None:
                self._stop_and_keep_archive(None, *self._archive)
                self._archive = None
            return
        spark, created = self._session()
        try:
            # One scoring thread per core a task holds.
            task_cpus = int(spark.sparkContext.getConf().get(TASK_CPUS_CONF, "1"))
            job = dataclasses.replace(
                job, scoring_threads=max(1, task_cpus), scoring_cpus=max(1, task_cpus)
            )
            mode, reason = choose_input(
                self.input_mode,
                self.master(),
                [split.path for split in splits],
                self.shared_paths,
                job.skip_bad_files,
            )
            self._recorded.update(input=mode, input_reason=reason)
            log.info("spark input: %s (%s)", mode, reason)
            with explain_slow_start(spark.sparkContext):
                if mode == INPUT_SPLITS:
                    results = self._score_splits(spark, job, splits)
                else:
                    results = self._score_spark_input(spark, job, splits)
        except BatchScoreError:
            raise
        except Exception as exc:
            raise translate_spark_error(exc) from exc
        finally:
            if created and self._archive is not None:
                self._stop_and_keep_archive(spark, *self._archive)
                self._archive = None
            elif created:
                stop_in_background(spark)
        indexes = [r.split_index for r in results]
        if len(set(indexes)) != len(indexes):
            raise SparkRunnerError(
                f"Spark returned part indexes {sorted(indexes)}: expected each part once; "
                "nothing was committed, rerun the job"
            )
        log.info(
            "spark scored %d row(s) in %d task(s): %d scored, %d rejected",
            sum(r.rows_in for r in results),
            len(results),
            sum(r.rows_scored for r in results),
            sum(r.rows_rejected for r in results),
        )

    def _score_spark_input(
        self, spark: SparkSession, job: ScoringJob, splits: Sequence[Split]
    ) -> list[SplitResult]:
        """Spark reads the files; each partition's Arrow batches are scored as one part."""
        paths = list(dict.fromkeys(split.path for split in splits))
        columns = read_columns(job)
        target = _common_schema(paths, columns)
        spark.conf.set(BATCH_SIZE_CONF, str(job.batch_size))
        if BATCH_BYTES_CONF not in self.confs:
            # Batches are bounded by rows (--batch_size). Any byte limit makes Spark
            # measure every Arrow vector after every row: a sixth of the JVM's work.
            spark.conf.set(BATCH_BYTES_CONF, str(NO_BYTE_LIMIT))
        frame = spark.read.parquet(*(_file_uri(p) for p in paths)).select(*columns)
        live = LiveMetrics(spark)
        scored = frame.mapInArrow(partial(score_partition, job, target, live), SUMMARY_DDL)
        results = [SplitResult(*row) for row in scored.collect()]
        live.log()
        return results

    def _score_splits(
        self, spark: SparkSession, job: ScoringJob, splits: Sequence[Split]
    ) -> list[SplitResult]:
        """One task per task slot, each scoring its share of the planned splits (a part per
        split, named by its index). Every task costs a quarter of a second or more of
        Spark and Python overhead, so there are no more tasks than can run at once."""
        context = spark.sparkContext
        task_cpus = int(context.getConf().get(TASK_CPUS_CONF, "1"))
        slots = max(1, context.defaultParallelism // max(1, task_cpus))
        shares = share_splits(splits, slots)
        tasks = context.parallelize(shares, len(shares))
        live = LiveMetrics(spark)
        scored = tasks.mapPartitions(partial(score_splits, job, tuple(splits), live))
        results: list[SplitResult] = scored.collect()
        live.log()
        return results

    def _session(self) -> tuple[SparkSession, bool]:
        """The SparkSession to run on, and whether this runner created it (and must stop it)."""
        SparkConf, SparkContext, SparkSession = _pyspark()
        master = self.master()
        wait_for_stops()
        active = SparkContext._active_spark_context
        if active is not None:
            session = SparkSession.builder.getOrCreate()
            for key, value in self.confs.items():
                try:
                    session.conf.set(key, value)
                except Exception as exc:
                    raise UsageError(
                        f"--spark_conf {key}={value}: cannot be changed on the already running "
                        f"SparkContext ({_first_line(exc)}); set it when the context is created"
                    ) from exc
            self._check_worker_reuse(active.getConf().get(WORKER_REUSE_CONF, "true"))
            return session, False

        self._join_launch()
        try:
            # Starts the JVM unless start() or an earlier session did; under spark-submit,
            # joins its JVM.
            self._launch_jvm()
            # Backed by the JVM: holds spark-defaults.conf and spark-submit's --conf.
            conf = SparkConf().setMaster(master)
        except Exception as exc:
            raise translate_spark_error(exc) from exc
        # No progress bar: it garbles the job's own output (pyspark turns it on by default).
        conf.set("spark.ui.showConsoleProgress", "false")
        defaults = {"spark.app.name": "batchscore", WORKER_REUSE_CONF: "true"}
        if _is_loopback_master(master):
            # Nothing of a one-machine job needs to listen beyond loopback, its UI included.
            defaults |= {
                "spark.driver.host": "127.0.0.1",
                "spark.driver.bindAddress": "127.0.0.1",
                "spark.ui.enabled": "false",
            }
        task_cpus = default_task_cpus(master, self.input_mode)
        if task_cpus is not None:
            defaults[TASK_CPUS_CONF] = str(task_cpus)
        for key, value in defaults.items():
            if not conf.contains(key):
                conf.set(key, value)
        for key, value in self.confs.items():
            conf.set(key, value)
        self._check_worker_reuse(conf.get(WORKER_REUSE_CONF, "true"))
        try:
            session = SparkSession.builder.config(conf=conf).getOrCreate()
        except Exception as exc:
            raise translate_spark_error(exc) from exc
        return session, True

    def _jvm_defaults(self, master: str) -> dict[str, str]:
        """Settings for a local master's JVM, which is driver and executor for one job."""
        if not is_local_master(master):
            return {}
        options = LOCAL_JVM_OPTIONS
        use_cache = (
            self.jvm_cache
            and JAVA_OPTIONS_CONF not in self.confs
            and not master.startswith("local-cluster")
        )
        archive = jvm_class_archive(LOCAL_JVM_OPTIONS) if use_cache else None
        if archive is not None and archive.is_file():
            options += f" {QUIET_CDS} -XX:SharedArchiveFile={archive}"
        elif archive is not None:
            building = _new_archive_path(archive)
            # Shown whatever the log level: this run takes ~20 s longer, once.
            print(
                f"spark: building the JVM start-up archive {archive} (once per installation "
                "and Spark version; this run starts about 20 s slower, later ones faster; "
                "--spark_conf batchscore.jvm_cache=off skips it)",
                file=sys.stderr,
                flush=True,
            )
            self._archive = (building, archive)
            options += f" {QUIET_CDS} -XX:ArchiveClassesAtExit={building}"
        return {JAVA_OPTIONS_CONF: options}

    def start(self) -> None:
        """Start Spark's JVM in the background, so that it boots while the driver checks
        the input and the model; :meth:`execute` then finds it running. Does nothing under
        spark-submit or when this process already has a JVM."""
        _, SparkContext, _ = _pyspark()
        if self._launcher is not None or SparkContext._gateway is not None:
            return
        if _under_spark_submit():
            return
        self.master()  # a master that cannot work is refused now, in this thread

        def launch() -> None:
            try:
                self._launch_jvm()
            except BaseException as exc:  # re-raised by execute, in the caller's thread
                self._launch_error = exc

        self._launcher = threading.Thread(target=launch, name="batchscore-spark-start")
        self._launcher.start()

    def _join_launch(self) -> None:
        if self._launcher is not None:
            self._launcher.join()
            self._launcher = None
        if self._launch_error is not None:
            error, self._launch_error = self._launch_error, None
            raise translate_spark_error(error)

    def _launch_jvm(self) -> None:
        """Start (or, under spark-submit, join) the JVM, with the JVM-wide settings that
        only apply at its start."""
        SparkConf, SparkContext, _ = _pyspark()
        if SparkContext._gateway is not None or _under_spark_submit():
            SparkContext._ensure_initialized()
            return
        master = self.master()
        if _is_loopback_master(master):
            # The JVM then binds loopback only (and skips a hostname lookup).
            os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        launch = SparkConf().setMaster(master)
        jvm_wide = {k: v for k, v in self.confs.items() if k.startswith("spark.driver.")}
        for key, value in {**self._jvm_defaults(master), **jvm_wide}.items():
            launch.set(key, value)
        SparkContext._ensure_initialized(conf=launch)

    @staticmethod
    def _stop_and_keep_archive(spark: SparkSession | None, building: Path, archive: Path) -> None:
        """Stop Spark and its JVM, which writes the class archive as it exits; the archive
        is moved into place only if the JVM exited cleanly (a torn one would crash the
        next JVM that maps it)."""
        _, SparkContext, _ = _pyspark()
        try:
            if spark is not None:
                spark.stop()
            gateway = SparkContext._gateway
            gateway.shutdown()
            gateway.proc.stdin.close()  # the JVM exits when its stdin closes
            code = gateway.proc.wait(timeout=JVM_EXIT_TIMEOUT_S)
            if code == 0 and building.is_file() and building.stat().st_size > 0:
                os.replace(building, archive)
        except Exception as exc:  # the cache is an optimisation: never fail a job over it
            log.warning("the Spark JVM class cache was not kept: %s", _first_line(exc))
        finally:
            SparkContext._gateway = None
            SparkContext._jvm = None
            building.unlink(missing_ok=True)

    def _check_master(self, found: str, source: str) -> str:
        if self.requested_master and self.requested_master != found:
            raise UsageError(
                f"--spark_master={self.requested_master}, but {source} already set the master "
                f"to {found}; give the master in one place only"
            )
        return found

    @staticmethod
    def _check_worker_reuse(value: str) -> None:
        if value.strip().lower() != "true":
            raise UsageError(
                f"{WORKER_REUSE_CONF}={value}: batchscore needs Python worker reuse (one model "
                "load per worker); remove that setting from spark-submit or spark-defaults.conf"
            )


def cache_dir() -> Path:
    """$BATCHSCORE_CACHE_DIR, else $XDG_CACHE_HOME/batchscore, else ~/.cache/batchscore."""
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchscore"


def _java_executable() -> Path | None:
    # The java that Spark's launcher scripts run.
    java_home = os.environ.get("JAVA_HOME")
    found = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).is_file() else None


def jvm_class_archive(jvm_options: str) -> Path | None:
    """Where the class-data-sharing archive of a local Spark JVM lives (it may not yet exist).

    Spark's JVM loads some 10,000 classes from 250 jars at every start; an AppCDS
    archive of them halves the start. It is keyed by everything it depends on
    (Spark's version and folder, the JVM's build, the JVM options), so a changed
    installation simply gets a new one. None when there is no usable cache folder.
    """
    import pyspark

    java = _java_executable()
    folder = cache_dir()
    if java is None or " " in str(folder):
        return None
    libjvm = next(iter(java.parent.parent.glob("lib/server/libjvm.so")), java)
    stat = libjvm.stat()
    spark_home = Path(pyspark.__file__).resolve().parent
    key = "\0".join(
        [
            pyspark.__version__,
            str(spark_home),
            str(libjvm),
            str(stat.st_size),
            str(stat.st_mtime_ns),
            jvm_options,
        ]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder / f"spark-{pyspark.__version__}-{digest}.jsa"


def _new_archive_path(archive: Path) -> Path:
    """A private name to build ``archive`` under; clears ones that dead builds left."""
    cutoff = time.time() - 3600
    for stale in archive.parent.glob(".spark-*.jsa.*.tmp"):
        with contextlib.suppress(OSError):
            if stale.stat().st_mtime < cutoff:
                stale.unlink()
    return archive.with_name(f".{archive.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


_STOPPING: list[threading.Thread] = []


def stop_in_background(spark: SparkSession) -> None:
    """Stop a session this runner created while the driver commits the run.

    Every task has finished and every part is renamed into place once the job's
    results are collected; stopping Spark takes about a second that the commit
    need not wait for. A later session in this process waits for it, and so does
    a normal interpreter exit.
    """
    thread = threading.Thread(target=spark.stop, name="batchscore-spark-stop", daemon=True)
    thread.start()
    _STOPPING.append(thread)


@contextlib.contextmanager
def explain_slow_start(context: Any, after_s: float = SLOW_START_NOTE_S) -> Iterator[None]:
    """While the job runs: if no task has finished ``after_s`` after it started and the
    application ships archives, log once that executors are unpacking them (a packed venv
    of about 0.8 GB takes a minute or more per executor, on each new application)."""
    archives = [
        a for key in ARCHIVES_CONFS for a in (context.getConf().get(key) or "").split(",") if a
    ]
    if not archives:
        yield
        return
    done = threading.Event()

    def note() -> None:
        if done.wait(after_s):
            return
        tracker = context.statusTracker()
        stages = [tracker.getStageInfo(i) for i in tracker.getActiveStageIds()]
        if any(stage is not None and stage.numCompletedTasks for stage in stages):
            return
        log.warning(
            "no part has finished %.0f s after the job started: each executor first fetches "
            "and unpacks %s into its work folder before its first task (a minute or more "
            "per executor for a packed venv, on every new application; README: Spark "
            "clusters). Scoring starts once they are unpacked",
            after_s,
            ", ".join(_archive_shown(a) for a in archives),
        )

    watcher = threading.Thread(target=note, name="batchscore-slow-start", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()


def _archive_shown(archive: str) -> str:
    """An --archives entry with its size where the driver can see the file."""
    location = archive.split("#", 1)[0]
    path = Path(location.removeprefix("file://").removeprefix("file:"))
    try:
        return f"{location} ({path.stat().st_size / 2**30:.1f} GiB)"
    except OSError:
        return location


def wait_for_stops() -> None:
    while _STOPPING:
        _STOPPING.pop().join()


atexit.register(wait_for_stops)


def _under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands the Python driver its gateway port.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def _active_context() -> Any:
    pyspark = sys.modules.get("pyspark")
    return getattr(getattr(pyspark, "SparkContext", None), "_active_spark_context", None)


def _pyspark() -> tuple[Any, Any, Any]:
    """pyspark's SparkConf, SparkContext and SparkSession, with the environment they need."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    warnings.filterwarnings(
        "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
    )
    try:
        from pyspark import SparkConf, SparkContext
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise UsageError(
            f"--runner={RUNNER_NAME} needs pyspark, which is not installed ({exc}); "
            "install it with: pip install 'batchscore[spark]'"
        ) from exc
    return SparkConf, SparkContext, SparkSession


def _file_uri(path: str) -> str:
    # Explicit scheme: a cluster whose default filesystem is HDFS still reads the local path.
    return "file://" + os.path.abspath(path)


def _common_schema(paths: Sequence[str], columns: Sequence[str]) -> pa.Schema | None:
    """The input files' Arrow schema of ``columns`` if every file has the same one.

    Workers cast Spark's batches back to it, so the Spark runner writes exactly
    the column types the Beam runner writes (which reads the files with pyarrow).
    """
    common: pa.Schema | None = None
    for path in paths:
        schema = decoded_schema(pq.read_schema(path))
        fields = pa.schema([schema.field(name) for name in columns])
        if common is None:
            common = fields
        elif not common.equals(fields):
            return None
    return common


def conform_batch(batch: pa.RecordBatch, target: pa.Schema | None) -> pa.RecordBatch:
    """``batch`` with the input files' column types, or at least without Arrow's large types.

    Spark hands strings as large_string when spark.sql.execution.arrow.useLargeVarTypes
    is on and maps some Parquet types to its own (timestamps, unsigned integers):
    key and dead-letter columns are written as they arrive, so every part must
    get the same, predictable types.
    """
    if target is not None:
        if batch.schema.equals(target):
            return batch
        return batch.cast(target)
    fields = [_small_field(field) for field in batch.schema]
    schema = pa.schema(fields)
    return batch if schema.equals(batch.schema) else batch.cast(schema)


def _small_field(field: pa.Field) -> pa.Field:
    if pa.types.is_large_string(field.type):
        return field.with_type(pa.string())
    if pa.types.is_large_binary(field.type):
        return field.with_type(pa.binary())
    return field


class LiveMetrics:
    """Spark accumulators that tasks add to after every batch: rows_read, batches and
    batch_seconds, readable on the driver while the job runs (and logged at its end).

    Spark may apply a retried task's updates twice; the manifest's metrics come from
    the parts' stats files instead (batch.observe.metrics), which a retry replaces.
    """

    def __init__(self, spark: SparkSession) -> None:
        context = spark.sparkContext
        self.rows_read = context.accumulator(0)
        self.batches = context.accumulator(0)
        self.batch_seconds = context.accumulator(0.0)

    def observe(self, rows: int, seconds: float) -> None:
        self.rows_read.add(rows)
        self.batches.add(1)
        self.batch_seconds.add(seconds)

    def log(self) -> None:
        log.info(
            "spark accumulators: rows_read=%d batches=%d batch_seconds=%.2f",
            self.rows_read.value,
            self.batches.value,
            self.batch_seconds.value,
        )


def score_partition(
    job: ScoringJob,
    target: pa.Schema | None,
    live: LiveMetrics | None,
    batches: Iterator[pa.RecordBatch],
) -> Iterator[pa.RecordBatch]:
    """The ``mapInArrow`` function: scores one Spark partition, yields its summary row."""
    from pyspark import TaskContext

    context = TaskContext.get()
    job = _worker_job(job)
    # The partition id names the staged part: the same for every attempt of this task.
    part_index = context.partitionId() if context is not None else 0
    conformed = (conform_batch(batch, target) for batch in batches)
    # Spark runs the task again after its Python worker died (the kernel's OOM killer
    # among the causes): smaller batches then.
    attempt = context.attemptNumber() if context is not None else 0
    rows, restarted = rows_after_restarts(job.batch_size, attempt, part_index)
    if restarted:
        conformed = (b.slice(i, rows) for b in conformed for i in range(0, b.num_rows, rows))
    first = next(conformed, None)
    if first is None:
        result = SplitResult(part_index, 0, 0, 0)
    else:
        observe = live.observe if live is not None else None
        result = score_batches(
            job, chain([first], conformed), first.schema, part_index, observe, restarted
        )
    yield pa.RecordBatch.from_arrays(
        [
            pa.array([part_index], pa.int32()),
            pa.array([result.rows_in], pa.int64()),
            pa.array([result.rows_scored], pa.int64()),
            pa.array([result.rows_rejected], pa.int64()),
        ],
        schema=SUMMARY_SCHEMA,
    )


def share_splits(splits: Sequence[Split], tasks: int) -> list[list[int]]:
    """Split indexes dealt to at most ``tasks`` tasks, largest first to the least loaded."""
    count = max(1, min(tasks, len(splits)))
    shares: list[list[int]] = [[] for _ in range(count)]
    loads = [0] * count
    for split in sorted(splits, key=lambda s: (-s.num_rows, s.index)):
        least = loads.index(min(loads))
        shares[least].append(split.index)
        loads[least] += split.num_rows
    return [sorted(share) for share in shares]


def score_splits(
    job: ScoringJob,
    splits: Sequence[Split],
    live: LiveMetrics | None,
    shares: Iterator[list[int]],
) -> Iterator[SplitResult]:
    """The task function of input=splits: read and score the splits it is dealt."""
    job = _worker_job(job)
    by_index = {split.index: split for split in splits}
    observe = live.observe if live is not None else None
    for share in shares:
        for index in share:
            yield score_split(job, by_index[index], observe)


_QUALIFIED_ERROR = re.compile(r"^((?:batch|schemas|runners|transforms)(?:\.\w+)*)\.(\w+): (.+)$")
_BARE_ERROR = re.compile(r"^(\w+): (.+)$")


def _core_error(line: str) -> BatchScoreError | None:
    """The batchscore error that a Python worker's traceback line names, rebuilt."""
    qualified = _QUALIFIED_ERROR.match(line)
    if qualified:
        module_name, class_name, message = qualified.groups()
        try:
            module: Any = importlib.import_module(module_name)
        except ImportError:
            return None
    else:
        bare = _BARE_ERROR.match(line)
        if not bare:
            return None
        module, (class_name, message) = errors, bare.groups()
    error_class = getattr(module, class_name, None)
    if not (isinstance(error_class, type) and issubclass(error_class, BatchScoreError)):
        return None
    # The same class and message, whatever arguments its constructor takes.
    error: BatchScoreError = error_class.__new__(error_class)
    Exception.__init__(error, message.strip())
    return error


def translate_spark_error(exc: BaseException) -> BatchScoreError:
    """A one-line :class:`BatchScoreError` for a failed Spark start or job.

    A batchscore error raised in a Python worker (bad data, a broken or
    untrusted model) travels back inside Spark's exception text; it is raised
    again as the same class with the same message, as if it had happened on
    the driver.
    """
    text = str(exc)
    rebuilt = [e for e in map(_core_error, (line.strip() for line in text.splitlines())) if e]
    if rebuilt:
        return rebuilt[-1]
    worker_error = [
        line.strip()
        for line in text.splitlines()
        if re.match(r"^\w+(?:\.\w+)*(?:Error|Exception): ", line.strip())
    ]
    detail = worker_error[-1] if worker_error else _first_line(exc)
    if "JAVA_GATEWAY_EXITED" in text or "Java gateway process exited" in text:
        return SparkRunnerError(
            f"Spark could not start: expected a Java 11+ runtime ('java' on PATH or JAVA_HOME), "
            f"found none that works ({detail})"
        )
    return SparkRunnerError(
        f"the Spark job failed: {detail}. Nothing was committed; see the Spark log above, "
        "fix the cause and rerun"
    )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
