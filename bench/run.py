"""Whole-job benchmark: every path scores the same files with the same SavedModel.

    python -m bench.run [--rows=2000000]

Each path runs as its own process and is timed from process start to exit
(start-up, TensorFlow import and model load included); the peak resident
memory of its whole process tree is sampled from /proc. Results go to
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from batch.model_repo import ModelRepository
from jobs import demo_paths

PROJECT = Path(__file__).resolve().parent.parent
PY = sys.executable


@dataclass(frozen=True)
class Measurement:
    path: str
    rows: int
    seconds: float
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def _tree_rss_kb(pid: int) -> int:
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as handle:
                for line in handle:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    pending.extend(int(c) for c in handle.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def measure(label: str, rows: int, command: Sequence[str]) -> Measurement:
    print(f"bench: {label} ...", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss_kb(process.pid))
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise SystemExit(f"bench: {label} failed (exit {process.returncode}):\n{output[-3000:]}")
    return Measurement(label, rows, seconds, peak / 1024)


def markdown(results: Sequence[Measurement], rows: int) -> str:
    lines = [
        f"### {rows:,} rows ({dt.date.today().isoformat()}, {os.cpu_count()} cores)",
        "",
        "| path | wall s | predictions/s | peak RSS MB |",
        "|---|---:|---:|---:|",
    ]
    for m in results:
        lines.append(f"| {m.path} | {m.seconds:.1f} | {m.rate:,.0f} | {m.peak_rss_mb:,.0f} |")
    return "\n".join(lines) + "\n"


SPARK_NATIVE = "batchscore, native Spark (PySparkRunner, Spark reads the input), local[2]"
SPARK_SPLITS = "batchscore, native Spark (PySparkRunner, batchscore.input=splits), local[2]"
SPARK_UDF = "stock Spark: predict_batch_udf, local[2]"


def spark_ratio(results: Sequence[Measurement]) -> str:
    """The native Spark runner's speed over predict_batch_udf's, measured in this run."""
    by_path = {m.path: m for m in results}
    if SPARK_UDF not in by_path:
        return ""
    lines = [
        f"- {label} / predict_batch_udf: **{by_path[label].rate / by_path[SPARK_UDF].rate:.2f}x**"
        for label in (SPARK_NATIVE, SPARK_SPLITS)
        if label in by_path
    ]
    return "\nSame run, same data and model:\n\n" + "\n".join(lines) + "\n" if lines else ""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--rows",
        type=int,
        default=2_000_000,
        help="Rows to generate and score (default: %(default)s).",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=demo_paths.demo_dir() / "bench",
        help="Where data and outputs go (default: %(default)s).",
    )
    args = parser.parse_args(argv)

    from jobs.make_demo import ensure_demo_data

    data = ensure_demo_data(
        args.workdir / f"data-{args.rows}", rows=args.rows, days=8, files_per_day=1
    )
    repo = ModelRepository(demo_paths.demo_model_repo())
    if not repo.versions(demo_paths.DEMO_MODEL_NAME):
        subprocess.run([PY, "-m", "jobs.train"], cwd=PROJECT, check=True)
    model = repo.resolve(demo_paths.DEMO_MODEL_NAME)
    out = args.workdir / "out"
    rows = args.rows
    results = [
        measure(
            "batchscore, Beam DirectRunner",
            rows,
            [
                PY,
                "-m",
                "jobs.score",
                f"--input={data}",
                f"--model={model.label}",
                f"--model_repo={repo.root}",
                f"--output={out}",
                "--runner=DirectRunner",
                "--force",
            ],
        ),
        measure(
            SPARK_NATIVE,
            rows,
            [
                PY,
                "-m",
                "jobs.score",
                f"--input={data}",
                f"--model={model.label}",
                f"--model_repo={repo.root}",
                f"--output={out}",
                "--runner=PySparkRunner",
                "--spark_master=local[2]",
                "--force",
            ],
        ),
        measure(
            SPARK_SPLITS,
            rows,
            [
                PY,
                "-m",
                "jobs.score",
                f"--input={data}",
                f"--model={model.label}",
                f"--model_repo={repo.root}",
                f"--output={out}",
                "--runner=PySparkRunner",
                "--spark_master=local[2]",
                "--spark_conf=batchscore.input=splits",
                "--force",
            ],
        ),
        measure(
            SPARK_UDF,
            rows,
            [
                PY,
                "-m",
                "bench.spark_udf",
                f"--input={data}",
                f"--model={model.saved_model_dir}",
                f"--output={out / 'spark_udf'}",
                "--key_column=loan_id",
                f"--inputs={','.join(model.metadata['signature']['inputs'])}",
                "--master=local[2]",
            ],
        ),
        measure(
            "single process floor (pyarrow -> signature -> ParquetWriter)",
            rows,
            [
                PY,
                "-m",
                "bench.floor",
                f"--input={data}",
                f"--model={model.saved_model_dir}",
                f"--output={out / 'floor.parquet'}",
                "--key_column=loan_id",
            ],
        ),
    ]
    table = markdown(results, rows) + spark_ratio(results)
    print(table)
    report = PROJECT / "docs" / "benchmarks.md"
    report.parent.mkdir(exist_ok=True)
    header = "# Benchmarks\n\nProduced by `make bench` (`python -m bench.run`). Whole-process wall time, start-up included.\n\n"
    body = report.read_text().removeprefix(header) if report.is_file() else ""
    report.write_text(header + table + "\n" + body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
