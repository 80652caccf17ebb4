"""Whole-job benchmark: every path scores the same files with the same SavedModel.

    python -m bench.run [--rows=2000000[,10000000,...]] [--paths=beam,stock_beam,...]
                        [--repeat=N] [--scaling]

Paths (all by default):

  beam          batchscore on Beam's DirectRunner (validation, dead-letter output,
                metrics, manifest, signature verification all on)
  beam_fixed    the same with --batch_size=65536 forced (the fixed batches of before
                batch sizing by bytes): on narrow rows both must be as fast
  beam_nodrift  the same without drift statistics (--drift=off), to show their cost
  spark         batchscore's native Spark runner with default options, local[2] (the
                input mode is chosen: splits, as the workers are this machine)
  spark_reader  the same with --spark_conf batchscore.input=spark (Spark reads the input)
  spark_splits  the same with --spark_conf batchscore.input=splits
  stock_beam    stock Beam: ReadFromParquet rows -> RunInference -> WriteToParquet
  udf           stock Spark: predict_batch_udf over the SavedModel, local[2]
  ray           Ray Data's batch inference: read_parquet -> map_batches(callable class
                holding the SavedModel, batch_format="pyarrow", an actor pool of cores - 1)
                -> write_parquet (bench/ray_data.py; needs the bench extra:
                pip install -e '.[bench]'), in a network namespace of its own
  floor         one process: pyarrow batches -> signature -> ParquetWriter
  backfill      batchscore's backfill (jobs.backfill, DirectRunner) of the same rows
                spread over 30 daily partitions (dt=...), each day its own committed run
  backfill_onejob  one jobs.score job over the same 30 days' folder: the backfill's
                target is at most 1.3x its wall time
  limit         the model-only limit (bench/model_limit.py): the same SavedModel on
                pre-built tensors, batchscore's batch size, as many calls at once as cores,
                plus the fixed start-up; every path is reported as a share of it
  limit_io      the same limit with reading and writing (bench/model_limit.py --output):
                the input's splits read and the predictions written as a job does, two
                splits per core, rows with a null input left out and no other check: what
                a job's reading and writing alone add to the limit; paths are reported
                as a share of it too
  example_columns  batchscore on Beam, the demo model re-saved with a second signature
                that takes serialized tf.Examples (bench/tf_example_model.py), scored
                through its serving_default (one column per input)
  example_tf    the same SavedModel through its tf.Example signature (--signature=
                tf_example): each batch becomes serialized tf.Examples, parsed in the
                graph; compare with example_columns
  float32       batchscore on Beam, the float32 parent of the compressed versions (a
                demo-shaped model trained once into WORKDIR/compress/models)
  int8, int8_dynamic, prune, distill
                the same with its jobs.compress versions (int8 full-integer and dynamic
                range on LiteRT, 50% pruned, a distilled student; made once per parent,
                bench/compress.py); after the runs, a table of size on disk, rows/s and the
                ratio to float32 of the same rounds, held-out AUC and its change, the
                jobs.compare verdict, and the model call alone (also prepended to
                docs/compression.md)

Each path runs as its own process and is timed from process start to exit
(start-up, TensorFlow import and model load included); the peak resident
memory and the CPU time of its whole process tree are sampled from /proc every
0.1 s. Each row count is generated once (demo data shape, 8 files) and
reused. With --repeat=N every path runs N times, in rounds, and the tables show
each path's median run (every run's wall time beside it): the machine's noise
then hits all paths alike.

--scaling adds, at the last (largest) row count: Beam's DirectRunner in multi-process
mode with 1 and 2 workers, and the native Spark runner (both input modes) on
local[1] and local[2].

--startup adds the start-up table: a 100-row job's whole process beside a bare
`python -c "import tensorflow"` and `python -c "import apache_beam"` (median of --repeat
runs each, in rounds), and each piece of a job's start-up timed one after another in
one process (bench/startup.py).

--wide=ROWS adds the wide-row table (bench/wide.py): ROWS rows of 250 KB texts scored
by batchscore on Beam with batches sized by bytes at several --worker_memory budgets,
and with the fixed 65,536-row batches of before: peak RSS, throughput, batch rows.

Results (a Markdown table per row count, ratios to the stock paths, the
targets, and a PNG chart per row count, named after the invocation's start)
go to the top of docs/benchmarks.md under a heading with the command line.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.demo import paths as demo_paths
from batch.model.repository import ModelRepository
from batch.model.resolved import ResolvedModel
from bench import compress
from bench.bucket import bucket_score

PROJECT = Path(__file__).resolve().parent.parent
PY = sys.executable
DOCS = PROJECT / "docs"
REPORT = DOCS / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\nProduced by `make bench` (`python -m bench.run`). "
    "Whole-process wall time, start-up included.\n\n"
)


@dataclass(frozen=True)
class Measurement:
    key: str
    label: str
    rows: int
    seconds: float
    peak_rss_mb: float
    cpu_seconds: float = 0.0
    # Wall seconds of every run of this path when it was measured more than once
    # (the figures above are those of the median run).
    runs: tuple[float, ...] = ()

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


@dataclass(frozen=True)
class Context:
    data: Path
    model: ResolvedModel
    repo: Path
    out: Path
    workdir: Path
    rows: int = 0

    def daily_data(self) -> Path:
        """The same number of rows over BACKFILL_DAYS daily partitions, one file a day
        (generated once)."""
        from batch.demo.data import ensure_demo_data

        return ensure_demo_data(
            self.workdir / f"data-{self.rows}-{BACKFILL_DAYS}days",
            rows=self.rows,
            days=BACKFILL_DAYS,
            files_per_day=1,
        )

    def example_model(self) -> Path:
        """The demo model with a tf.Example signature beside its own (built once)."""
        path = self.workdir / f"tf_example_model-{self.model.content_hash[:12]}"
        if not path.is_dir():
            subprocess.run(
                [
                    PY,
                    "-m",
                    "bench.tf_example_model",
                    f"--model={self.model.saved_model_dir}",
                    f"--output={path}",
                ],
                cwd=PROJECT,
                check=True,
            )
        return path


TICKS = os.sysconf("SC_CLK_TCK")
STARTED = dt.datetime.now()


def _sample_tree(pid: int, cpu_ticks: dict[int, int]) -> int:
    """The resident memory (kB) of ``pid`` and all its descendants now; records each
    process's CPU ticks so far (user + system) in ``cpu_ticks``."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            # Fields 14 and 15 of /proc/PID/stat (utime, stime), counted after the name.
            cpu_ticks[current] = int(fields[11]) + int(fields[12])
            with open(f"/proc/{current}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    pending.extend(int(c) for c in handle.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
            continue
    return total


def measure(key: str, label: str, rows: int, command: Sequence[str]) -> Measurement:
    print(f"bench: {rows:,} rows: {label} ...", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = 0
    cpu_ticks: dict[int, int] = {}
    while process.poll() is None:
        peak = max(peak, _sample_tree(process.pid, cpu_ticks))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise SystemExit(f"bench: {label} failed (exit {process.returncode}):\n{output[-3000:]}")
    # CPU of the process tree as last sampled (up to 0.1 s per process is missed).
    cpu = sum(cpu_ticks.values()) / TICKS
    result = Measurement(key, label, rows, seconds, peak / 1024, cpu)
    print(
        f"bench:   {seconds:.1f} s, {result.rate:,.0f} rows/s, {result.peak_rss_mb:,.0f} MB, "
        f"{cpu:.1f} CPU s"
    )
    return result


def _score(ctx: Context, *options: str, data: Path | None = None) -> list[str]:
    return [
        PY,
        "-m",
        "jobs.score",
        f"--input={data or ctx.data}",
        f"--model={ctx.model.label}",
        f"--model_repo={ctx.repo}",
        f"--output={ctx.out}",
        "--force",
        *options,
    ]


def _example_model_score(ctx: Context, *options: str) -> list[str]:
    """jobs.score on the tf.Example variant of the demo model, with the demo model's
    keys and contract (so both of its paths validate alike)."""
    contract = ctx.model.metadata.get("contract")
    return [
        PY,
        "-m",
        "jobs.score",
        f"--input={ctx.data}",
        f"--model={ctx.example_model()}",
        f"--output={ctx.out}",
        "--key_columns=loan_id",
        *([f"--contract={contract}"] if contract else []),
        "--runner=DirectRunner",
        "--force",
        *options,
    ]


BACKFILL_DAYS = 30


def _backfill(ctx: Context) -> list[str]:
    from batch.demo.data import START_DATE

    last = START_DATE + dt.timedelta(days=BACKFILL_DAYS - 1)
    return [
        PY,
        "-m",
        "jobs.backfill",
        f"--input={ctx.daily_data()}",
        f"--start={START_DATE.isoformat()}",
        f"--end={last.isoformat()}",
        f"--model={ctx.model.label}",
        f"--model_repo={ctx.repo}",
        f"--output={ctx.out / 'backfill'}",
        "--force",
    ]


def _inputs(ctx: Context) -> str:
    return ",".join(ctx.model.metadata["signature"]["inputs"])


@dataclass(frozen=True)
class BenchPath:
    label: str
    command: Callable[[Context], list[str]]


def _native_spark(cores: int, mode: str | None) -> BenchPath:
    """batchscore's native Spark runner on local[cores] with ``--spark_conf
    batchscore.input=mode``: spark (Spark reads the input), splits (each task reads its
    planned splits with pyarrow); None: the default (chosen by the runner)."""
    described = {
        None: "default options",
        "spark": "Spark reads the input",
        "splits": "batchscore.input=splits",
    }[mode]
    options = ["--runner=PySparkRunner", f"--spark_master=local[{cores}]"]
    if mode is not None:
        options.append(f"--spark_conf=batchscore.input={mode}")
    return BenchPath(
        f"batchscore, native Spark ({described}), local[{cores}]",
        lambda ctx: _score(ctx, *options),
    )


def _model_limit(ctx: Context, *options: str) -> list[str]:
    """bench.model_limit on the bench's data and model, with ``options``."""
    return [
        PY,
        "-m",
        "bench.model_limit",
        f"--input={ctx.data}",
        f"--model={ctx.model.label}",
        f"--model_repo={ctx.repo}",
        *options,
    ]


PATHS: dict[str, BenchPath] = {
    "beam": BenchPath(
        "batchscore, Beam DirectRunner",
        lambda ctx: _score(ctx, "--runner=DirectRunner"),
    ),
    "beam_fixed": BenchPath(
        "batchscore, Beam DirectRunner, --batch_size=65536 (fixed batches, as before issue 20)",
        lambda ctx: _score(ctx, "--runner=DirectRunner", "--batch_size=65536"),
    ),
    # Issue 17: input, model and output in a bucket of a local S3 server (bench/bucket.py).
    "beam_s3": BenchPath(
        "batchscore, Beam DirectRunner, bucket to bucket (local S3 server)",
        lambda ctx: bucket_score(
            ctx.data, Path(ctx.model.saved_model_dir).parent, "--runner=DirectRunner"
        ),
    ),
    "beam_nodrift": BenchPath(
        "batchscore, Beam DirectRunner, --drift=off",
        lambda ctx: _score(ctx, "--runner=DirectRunner", "--drift=off"),
    ),
    "spark": _native_spark(cores=2, mode=None),
    "spark_reader": _native_spark(cores=2, mode="spark"),
    "spark_splits": _native_spark(cores=2, mode="splits"),
    "stock_beam": BenchPath(
        "stock Beam: ReadFromParquet -> RunInference -> WriteToParquet",
        lambda ctx: [
            PY,
            "-m",
            "bench.stock_beam",
            f"--input={ctx.data}/*/*.parquet",
            f"--model={ctx.model.saved_model_dir}",
            f"--output={ctx.out / 'stock_beam' / 'part'}",
            "--key_column=loan_id",
        ],
    ),
    "udf": BenchPath(
        "stock Spark: predict_batch_udf, local[2]",
        lambda ctx: [
            PY,
            "-m",
            "bench.spark_udf",
            f"--input={ctx.data}",
            f"--model={ctx.model.saved_model_dir}",
            f"--output={ctx.out / 'spark_udf'}",
            "--key_column=loan_id",
            f"--inputs={_inputs(ctx)}",
            "--master=local[2]",
        ],
    ),
    "ray": BenchPath(
        "Ray Data: read_parquet -> map_batches(actor pool, pyarrow) -> write_parquet",
        lambda ctx: [
            PY,
            "-m",
            "bench.ray_data",
            f"--input={ctx.data}",
            f"--model={ctx.model.saved_model_dir}",
            f"--output={ctx.out / 'ray_data'}",
            "--key_column=loan_id",
            f"--inputs={_inputs(ctx)}",
        ],
    ),
    "limit": BenchPath(
        "model-only limit: SavedModel on pre-built tensors, one call per core",
        lambda ctx: _model_limit(ctx),
    ),
    "limit_io": BenchPath(
        "model-only limit with reading and writing: splits read, scored, written; no checks",
        lambda ctx: _model_limit(ctx, f"--output={ctx.out / 'limit_io'}", "--key_column=loan_id"),
    ),
    "example_columns": BenchPath(
        "batchscore, Beam DirectRunner, tf.Example model via its column signature",
        lambda ctx: _example_model_score(ctx),
    ),
    "example_tf": BenchPath(
        "batchscore, Beam DirectRunner, tf.Example model via its tf.Example signature",
        lambda ctx: _example_model_score(ctx, "--signature=tf_example"),
    ),
    "backfill": BenchPath(
        f"batchscore backfill, {BACKFILL_DAYS} daily partitions as one job (DirectRunner)",
        _backfill,
    ),
    "backfill_onejob": BenchPath(
        f"batchscore, one job over the {BACKFILL_DAYS} days' folder (DirectRunner)",
        lambda ctx: _score(ctx, "--runner=DirectRunner", data=ctx.daily_data()),
    ),
    "floor": BenchPath(
        "single process floor (pyarrow -> signature -> ParquetWriter)",
        lambda ctx: [
            PY,
            "-m",
            "bench.floor",
            f"--input={ctx.data}",
            f"--model={ctx.model.saved_model_dir}",
            f"--output={ctx.out / 'floor.parquet'}",
            "--key_column=loan_id",
        ],
    ),
}


def _compressed(key: str, label: str) -> BenchPath:
    """``key`` of bench/compress.py (the float32 parent or a variant), scored like beam."""

    def command(ctx: Context) -> list[str]:
        model = compress.versions(ctx.workdir / "compress")[key]
        repo = ctx.workdir / "compress" / "models"
        return _score(dataclasses.replace(ctx, model=model, repo=repo), "--runner=DirectRunner")

    return BenchPath(f"batchscore, Beam DirectRunner, {label}", command)


PATHS.update(
    {
        compress.FLOAT32: _compressed(
            compress.FLOAT32, "float32 parent of the compressed versions"
        ),
        "int8": _compressed("int8", "int8 full-integer (TFLite on LiteRT)"),
        "int8_dynamic": _compressed("int8_dynamic", "int8 dynamic range (TFLite on LiteRT)"),
        "prune": _compressed("prune", "pruned to 50% sparsity"),
        "distill": _compressed("distill", "distilled student (16 hidden units)"),
    }
)


def _beam_workers(workers: int) -> BenchPath:
    return BenchPath(
        f"batchscore, Beam DirectRunner multi_processing, {workers} worker(s)",
        lambda ctx: _score(
            ctx,
            "--runner=DirectRunner",
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={workers}",
        ),
    )


SCALING: dict[str, BenchPath] = {
    "beam_mp1": _beam_workers(1),
    "beam_mp2": _beam_workers(2),
    "spark_local1": _native_spark(cores=1, mode="spark"),
    "spark_local2": _native_spark(cores=2, mode="spark"),
    "spark_splits_local1": _native_spark(cores=1, mode="splits"),
    "spark_splits_local2": _native_spark(cores=2, mode="splits"),
}


def _ratio(results: dict[str, Measurement], key: str, base: str) -> str:
    if key not in results or base not in results or key == base:
        return ""
    return f"{results[key].rate / results[base].rate:.2f}x"


def measure_all(
    rows: int, commands: Mapping[str, tuple[str, Sequence[str]]], repeat: int
) -> list[Measurement]:
    """Each path ``repeat`` times, in rounds (every path once per round, so a noisy
    stretch of a shared machine hits all paths alike); per path the median run."""
    measured: dict[str, list[Measurement]] = {key: [] for key in commands}
    for round_number in range(repeat):
        if repeat > 1:
            print(f"bench: round {round_number + 1} of {repeat}", flush=True)
        for key, (label, command) in commands.items():
            measured[key].append(measure(key, label, rows, command))
    results = []
    for runs in measured.values():
        ordered = sorted(runs, key=lambda m: m.seconds)
        median = ordered[(len(ordered) - 1) // 2]
        seconds = tuple(m.seconds for m in runs)
        results.append(dataclasses.replace(median, runs=seconds if repeat > 1 else ()))
    return results


def markdown(results: Sequence[Measurement], rows: int, chart: str | None) -> str:
    by_key = {m.key: m for m in results}
    lines = [
        f"### {rows:,} rows ({dt.date.today().isoformat()}, {os.cpu_count()} cores)",
        "",
        "| path | wall s | predictions/s | peak RSS MB | CPU s | vs stock Beam "
        "| vs predict_batch_udf | share of floor | share of model limit "
        "| share of limit with I/O |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        share, of_limit, of_io = (_share(by_key, m, key) for key in ("floor", "limit", "limit_io"))
        runs = f" ({' / '.join(f'{s:.1f}' for s in m.runs)})" if m.runs else ""
        lines.append(
            f"| {m.label} | {m.seconds:.1f}{runs} | {m.rate:,.0f} | {m.peak_rss_mb:,.0f} "
            f"| {m.cpu_seconds:.0f} | {_ratio(by_key, m.key, 'stock_beam')} | {_ratio(by_key, m.key, 'udf')} "
            f"| {share} | {of_limit} | {of_io} |"
        )
    if any(m.runs for m in results):
        lines += [
            "",
            f"Median of {max(len(m.runs) for m in results)} runs per path, in rounds; "
            "every run's wall seconds in brackets.",
        ]
    lines += ["", *targets(by_key)]
    if chart:
        lines += ["", f"![predictions/s at {rows:,} rows]({chart})"]
    return "\n".join(lines) + "\n"


def _share(by_key: dict[str, Measurement], m: Measurement, base: str) -> str:
    """``m``'s throughput as a share of path ``base``'s ("" where base was not run)."""
    of = by_key.get(base)
    return f"{m.rate / of.rate:.0%}" if of and m.key != base else ""


# The targets that allow a slowdown against their base (shown as a time factor).
SLOWDOWN_TARGETS = frozenset({"beam_s3", "backfill", "example_tf"})


def targets(by_key: dict[str, Measurement]) -> list[str]:
    """The issue's targets, each with the measured figure; absent paths are skipped."""
    checks = [
        ("beam", "stock_beam", 6.0, "batchscore on Beam >= 6x stock Beam RunInference"),
        ("beam", "udf", 3.0, "batchscore on Beam >= 3x predict_batch_udf"),
        ("beam", "ray", 3.0, "batchscore on Beam >= 3x Ray Data"),
        ("beam", "floor", 0.6, "batchscore on Beam >= 60% of the floor's throughput"),
        ("beam", "limit", 0.75, "batchscore on Beam >= 75% of the model-only limit"),
        ("beam", "beam_nodrift", 0.9, "drift statistics cost < 10% (Beam, drift on / off)"),
        ("beam_s3", "beam", 1 / 1.5, "bucket to bucket within 1.5x of local disk (Beam, S3)"),
        ("spark", "udf", 2.5, "native Spark with default options >= 2.5x predict_batch_udf"),
        ("spark_reader", "udf", 2.0, "native Spark (Spark reads) >= 2x predict_batch_udf"),
        ("spark_splits", "udf", 2.0, "native Spark (input=splits) >= 2x predict_batch_udf"),
        (
            "backfill",
            "backfill_onejob",
            1 / 1.3,
            f"{BACKFILL_DAYS}-day backfill within 1.3x the wall time of one job over the same rows",
        ),
        (
            "example_tf",
            "example_columns",
            0.5,
            "tf.Example signature at most 2x slower per row than the column signature (same model)",
        ),
    ]
    lines = []
    for key, base, target, text in checks:
        if key in by_key and base in by_key:
            ratio = by_key[key].rate / by_key[base].rate
            verdict = "met" if ratio >= target else "**not met**"
            # A slowdown allowed ("within 1.3x the wall time") is shown as that factor: the
            # base's throughput over this path's.
            shown = f"{1 / ratio:.2f}x the time" if key in SLOWDOWN_TARGETS else f"{ratio:.2f}x"
            lines.append(f"- {text}: {shown} ({verdict})")
    return ["Targets, same run:", "", *lines] if lines else []


def rss_growth(results: Sequence[Measurement]) -> str:
    """Peak RSS of each path from the smallest to the largest row count measured."""
    lines = []
    for key in dict.fromkeys(m.key for m in results):
        runs = sorted((m for m in results if m.key == key), key=lambda m: m.rows)
        if len(runs) > 1 and runs[0].rows != runs[-1].rows:
            small, large = runs[0], runs[-1]
            growth = large.peak_rss_mb / small.peak_rss_mb - 1
            speed = large.rate / small.rate - 1
            lines.append(
                f"| {small.label} | {small.rows:,} | {small.peak_rss_mb:,.0f} | {large.rows:,} "
                f"| {large.peak_rss_mb:,.0f} | {growth:+.0%} | {speed:+.0%} |"
            )
    if not lines:
        return ""
    return (
        "#### Peak RSS and throughput against input size (same invocation)\n\n"
        "Targets of the 100M-row path (issue 21): throughput and peak RSS within 10% of "
        "the 10M figures (`--rows=10000000,100000000 --large_paths=beam`; the 100M rows "
        "are generated once and kept, about 3 GB of input, about 1 GB of output a run).\n\n"
        "| path | rows | peak RSS MB | rows | peak RSS MB | RSS growth | throughput change |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n" + "\n".join(lines) + "\n"
    )


def scaling_table(results: Sequence[Measurement], rows: int) -> str:
    lines = [
        f"#### Scaling at {rows:,} rows (same invocation)",
        "",
        "| path | workers | wall s | predictions/s | speed-up | CPU s | cores busy |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {m.key: m for m in results}
    for family in ("beam_mp", "spark_local", "spark_splits_local"):
        one = by_key.get(f"{family}1")
        for n in (1, 2):
            m = by_key.get(f"{family}{n}")
            if m is None:
                continue
            speedup = f"{m.rate / one.rate:.2f}x" if one else ""
            lines.append(
                f"| {m.label} | {n} | {m.seconds:.1f} | {m.rate:,.0f} | {speedup} "
                f"| {m.cpu_seconds:.0f} | {m.cpu_seconds / m.seconds:.2f} |"
            )
    return "\n".join(lines) + "\n"


def chart(results: Sequence[Measurement], rows: int) -> str:
    """A horizontal bar chart of predictions/s; returns its path relative to docs/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One file per invocation and row count: a later run must not change the
    # picture an earlier section of docs/benchmarks.md shows.
    name = f"benchmarks-{rows}-{STARTED:%Y%m%d-%H%M%S}.png"
    stock = {"stock_beam", "udf"}
    figure, axes = plt.subplots(figsize=(9, 0.55 * len(results) + 1.2))
    labels = [m.label for m in results][::-1]
    rates = [m.rate for m in results][::-1]
    colors = [
        "#9e9e9e" if m.key in stock else "#607d8b" if m.key == "floor" else "#1565c0"
        for m in results
    ][::-1]
    bars = axes.barh(labels, rates, color=colors)
    axes.bar_label(bars, labels=[f"{r:,.0f}/s" for r in rates], padding=3, fontsize=8)
    axes.set_xlabel("predictions per second, whole job (start-up included)")
    axes.set_title(f"{rows:,} rows, {os.cpu_count()} cores, same run")
    axes.tick_params(axis="y", labelsize=8)
    axes.set_xlim(0, max(rates) * 1.25)
    figure.tight_layout()
    DOCS.mkdir(exist_ok=True)
    figure.savefig(DOCS / name, dpi=110)
    plt.close(figure)
    return name


def startup_table(ctx: Context, repeat: int) -> str:
    """A 100-row job beside bare imports of TensorFlow and Beam (median of ``repeat``
    rounds), then each piece of the start-up timed alone (bench/startup.py)."""
    from batch.demo.data import ensure_demo_data

    small = ensure_demo_data(ctx.workdir / "data-100", rows=100, days=1, files_per_day=1)
    commands = {
        "tf_import": ('bare python -c "import tensorflow"', [PY, "-c", "import tensorflow"]),
        "tf_import_batchscore": (
            "TensorFlow imported as batchscore does (batch.model.loading: no Keras, no "
            "garbage collection)",
            [
                PY,
                "-c",
                "from batch.core.imports import pause_collection; pause_collection(); "
                "from batch.model.loading import import_tensorflow; import_tensorflow()",
            ],
        ),
        "beam_import": ('bare python -c "import apache_beam"', [PY, "-c", "import apache_beam"]),
        "job_100": (
            "batchscore, --runner=DirectRunner, a 100-row job (every check on; scored in "
            "process, Beam not started)",
            _score(ctx, "--runner=DirectRunner", data=small),
        ),
        "job_100_beam": (
            "the same job on Beam (--in_process_rows=0)",
            _score(ctx, "--runner=DirectRunner", "--in_process_rows=0", data=small),
        ),
    }
    by_key = {m.key: m for m in measure_all(100, commands, repeat)}
    tf = by_key["tf_import"].seconds
    lines = [
        "#### Start-up: a 100-row job against a bare TensorFlow import (same invocation)",
        "",
        "| process | wall s | vs bare TensorFlow import | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for m in by_key.values():
        runs = f" ({' / '.join(f'{s:.1f}' for s in m.runs)})" if m.runs else ""
        lines.append(
            f"| {m.label} | {m.seconds:.1f}{runs} | {m.seconds / tf:.2f}x | {m.peak_rss_mb:,.0f} |"
        )
    ratio = by_key["job_100"].seconds / tf
    verdict = "met" if ratio <= 1.1 else "**not met**"
    lines += ["", f"- a 100-row job <= 1.1x a bare TensorFlow import: {ratio:.2f}x ({verdict})"]
    pieces = subprocess.run(
        [
            PY,
            "-m",
            "bench.startup",
            f"--input={small}",
            f"--model={ctx.model.label}",
            f"--model_repo={ctx.repo}",
        ],
        cwd=PROJECT,
        check=True,
        capture_output=True,
        text=True,
    )
    timed: dict[str, float] = json.loads(pieces.stdout.strip().splitlines()[-1])
    lines += [
        "",
        "Each piece alone, one after another in one process (jobs.score overlaps the imports "
        "and the model load with the checks):",
        "",
        "| piece | s |",
        "|---|---:|",
        *(f"| {name} | {seconds:.2f} |" for name, seconds in timed.items()),
        f"| sum | {sum(timed.values()):.2f} |",
    ]
    return "\n".join(lines) + "\n"


def wide_table(rows: int, workdir: Path) -> str:
    """The wide-row paths (bench/wide.py), measured one after another."""
    from bench.wide import DEPTH_KEYS, TEXT_BYTES, WIDE_PATHS, batching_of, score_command

    subprocess.run(
        [PY, "-m", "bench.wide", f"--rows={rows}", f"--workdir={workdir}"], cwd=PROJECT, check=True
    )
    data, model = workdir / f"wide-{rows}", workdir / "wide_model"
    lines = [
        f"### Wide rows: {rows:,} rows of {TEXT_BYTES // 1000} KB texts "
        f"({rows * TEXT_BYTES / 1e6:,.0f} MB), Beam DirectRunner",
        "",
        "| path | wall s | rows/s | input MB/s | peak RSS MB | batch rows | depths "
        "(read, calls, queued, writes) |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for key, (label, options) in WIDE_PATHS.items():
        out = workdir / "out" / key
        m = measure(key, label, rows, score_command(PY, data, model, out, options))
        batching: dict[str, Any] = batching_of(out)
        depths = batching.get("memory", {}).get("depths", {})
        mb_per_s = rows * TEXT_BYTES / 1e6 / m.seconds
        lines.append(
            f"| {label} | {m.seconds:.1f} | {m.rate:,.0f} | {mb_per_s:,.0f} "
            f"| {m.peak_rss_mb:,.0f} | {batching.get('batch_rows', {}).get('max', '')} "
            f"| {', '.join(str(depths.get(k, '')) for k in DEPTH_KEYS)} |"
        )
    return "\n".join(lines) + "\n"


def _row_counts(text: str) -> list[int]:
    try:
        counts = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected row counts separated by commas (e.g. 2000000,10000000), found {text!r}"
        ) from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive row counts, found {text!r}")
    return counts


def _path_keys(text: str) -> list[str]:
    keys = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [key for key in keys if key not in PATHS]
    if unknown or not keys:
        raise argparse.ArgumentTypeError(
            f"unknown path(s) {unknown or text!r}; choose from {', '.join(PATHS)}"
        )
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rows",
        type=_row_counts,
        default=[2_000_000],
        help="Row counts to generate and score, comma-separated (default: 2000000).",
    )
    parser.add_argument(
        "--paths",
        type=_path_keys,
        default=list(PATHS),
        help=f"Paths to run, comma-separated (default: all: {','.join(PATHS)}).",
    )
    parser.add_argument(
        "--large_paths",
        type=_path_keys,
        default=None,
        help="Paths to run at row counts after the first (default: the same as --paths); "
        "e.g. --rows=2000000,20000000 --large_paths=beam for the memory check alone.",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="Runs per path (in rounds); the tables show each path's median run "
        "(default: %(default)s).",
    )
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="Also measure 1 and 2 workers (DirectRunner multi_processing, Spark local[N]) "
        "at the last (largest) row count.",
    )
    parser.add_argument(
        "--startup",
        action="store_true",
        help="Also measure a 100-row job beside bare TensorFlow and Beam imports, and each "
        "piece of the start-up (make bench does).",
    )
    parser.add_argument(
        "--wide",
        type=int,
        default=0,
        metavar="ROWS",
        help="Also score ROWS rows of 250 KB texts at several worker memory budgets and with "
        "fixed 65,536-row batches (default: 0, skipped; make bench uses 2400).",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=demo_paths.demo_dir() / "bench",
        help="Where data and outputs go (default: %(default)s).",
    )
    parser.add_argument(
        "--no_report",
        action="store_true",
        help="Print the tables only; leave docs/benchmarks.md as it is.",
    )
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, found {args.repeat}")
    if "ray" in [*args.paths, *(args.large_paths or ())] and not importlib.util.find_spec("ray"):
        parser.error(
            "path ray needs Ray Data, which batchscore does not depend on: "
            "pip install -e '.[bench]' (make bench does), or leave ray out of --paths"
        )

    from batch.demo.data import ensure_demo_data

    repo = ModelRepository(demo_paths.demo_model_repo())
    if not repo.versions(demo_paths.DEMO_MODEL_NAME):
        subprocess.run([PY, "-m", "jobs.train"], cwd=PROJECT, check=True)
    model = repo.resolve(demo_paths.DEMO_MODEL_NAME)
    sections: list[str] = []
    compressed: list[str] = []
    everything: list[Measurement] = []
    for position, rows in enumerate(args.rows):
        data = ensure_demo_data(args.workdir / f"data-{rows}", rows=rows, days=8, files_per_day=1)
        ctx = Context(data, model, repo.root, args.workdir / "out", args.workdir, rows)
        keys = args.paths if position == 0 or args.large_paths is None else args.large_paths
        commands = {key: (PATHS[key].label, PATHS[key].command(ctx)) for key in keys}
        results = measure_all(rows, commands, args.repeat)
        everything += results
        picture = None if args.no_report else chart(results, rows)
        sections.append(markdown(results, rows, picture))
        if any(m.key in compress.KEYS for m in results):
            compressed.append(compress.section(rows, results, data, args.workdir / "compress"))
            sections.append(compressed[-1])
        if args.scaling and position == len(args.rows) - 1:
            scaled = [
                measure(key, path.label, rows, path.command(ctx)) for key, path in SCALING.items()
            ]
            sections.append(scaling_table(scaled, rows))
    growth = rss_growth(everything)
    if growth:
        sections.append(growth)
    if args.startup:
        sections.append(startup_table(ctx, args.repeat))
    if args.wide:
        sections.append(wide_table(args.wide, args.workdir))
    command = " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)])
    heading = f"## {STARTED:%Y-%m-%d %H:%M}: `{command}`"
    text = f"{heading}\n\n" + "\n".join(sections)
    print(text)
    if not args.no_report:
        if compressed:
            compress.write_report(heading, compressed)
        body = REPORT.read_text().removeprefix(HEADER) if REPORT.is_file() else ""
        REPORT.parent.mkdir(exist_ok=True)
        REPORT.write_text(HEADER + text + "\n" + body)
        print(f"bench: wrote {REPORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
