"""Compressed models side by side: the float32 parent and its int8, prune and distill
versions (python -m jobs.compress), each scored by a whole jobs.score job on the same data.

    python -m bench.compress [--rows=2000000] [--repeat=2] [--train_rows=200000]
                             [--epochs=3] [--runner=DirectRunner] [--workdir=DIR]

Trains the parent into a repository of its own under --workdir (once), compresses it with
each method (once per parent), then measures the paths in rounds (parent, int8, ...; again)
so that every ratio compares runs made side by side. Per method: size of the SavedModel
folder on disk (and of the TFLite file inside), rows/s of the median run, the held-out
metric of jobs.compress and its difference to the parent, the speed ratio to the parent,
and the verdict of jobs.compare against the parent (default thresholds, 10% sample).
The table is printed and written to docs/compression.md (newest first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batch.demo import paths as demo_paths
from batch.model.repository import ModelRepository
from batch.model.resolved import ResolvedModel
from batch.model.tflite import TFLITE_FILE
from bench.run import PROJECT, PY, Measurement, measure

REPORT = PROJECT / "docs" / "compression.md"
HEADER = (
    "# Compressed models: size, speed and accuracy\n\n"
    "Written by `make bench-compress` (`python -m bench.compress`); newest first. Each "
    "table scores the same generated rows with the float32 parent and its compressed "
    "versions in rounds, whole jobs.score processes, start-up included.\n\n"
)
# (path key, jobs.compress options); the parent is the path "float32".
VARIANTS: dict[str, tuple[str, ...]] = {
    "int8": ("--method=int8", "--quantization=full_integer"),
    "int8_dynamic": ("--method=int8", "--quantization=dynamic_range"),
    "prune": ("--method=prune", "--sparsity=0.5"),
    "distill": ("--method=distill", "--student_hidden_units=16"),
}
NAME = "loan_default"


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _parent(repo: ModelRepository, train_rows: int, epochs: int) -> ResolvedModel:
    """The float32 parent: version 1 of the bench's own repository (trained once)."""
    if not repo.versions(NAME):
        subprocess.run(
            [
                PY,
                "-m",
                "jobs.train",
                f"--model_repo={repo.root}",
                f"--name={NAME}",
                f"--train_rows={train_rows}",
                f"--epochs={epochs}",
            ],
            cwd=PROJECT,
            check=True,
        )
    return repo.resolve(f"{NAME}@1")


def _variants(repo: ModelRepository, parent: ResolvedModel) -> dict[str, ResolvedModel]:
    """Each variant of ``parent`` (made once; found again by its recorded options)."""
    made: dict[str, ResolvedModel] = {}
    for key, options in VARIANTS.items():
        marker = repo.root / f".bench-{parent.content_hash[:12]}-{key}"
        if marker.is_file():
            made[key] = repo.resolve(marker.read_text().strip())
            continue
        before = repo.versions(NAME)
        subprocess.run(
            [PY, "-m", "jobs.compress", parent.label, f"--model_repo={repo.root}", *options],
            cwd=PROJECT,
            check=True,
        )
        (version,) = sorted(set(repo.versions(NAME)) - set(before))
        made[key] = repo.resolve(f"{NAME}@{version}")
        marker.write_text(made[key].label)
    return made


def _score(model: ResolvedModel, repo: Path, data: Path, out: Path, runner: str) -> list[str]:
    return [
        PY,
        "-m",
        "jobs.score",
        f"--input={data}",
        f"--model={model.label}",
        f"--model_repo={repo}",
        f"--output={out}",
        f"--runner={runner}",
        "--force",
    ]


def _verdict(repo: Path, data: Path, parent: ResolvedModel, model: ResolvedModel) -> str:
    """jobs.compare of ``model`` against ``parent`` (no blessing written): PASS or the
    checks that failed."""
    summary = repo.parent / f"compare-{model.version}.json"
    done = subprocess.run(
        [
            PY,
            "-m",
            "jobs.compare",
            f"--input={data}",
            f"--baseline={parent.label}",
            f"--candidate={model.label}",
            f"--model_repo={repo}",
            f"--output={repo.parent / 'comparisons'}",
            "--no_bless",
            f"--summary_file={summary}",
        ],
        cwd=PROJECT,
        capture_output=True,
        text=True,
    )
    if done.returncode not in (0, 3):
        return f"error (exit {done.returncode})"
    report: dict[str, Any] = json.loads(summary.read_text())
    checks = report.get("checks") or report.get("comparison", {}).get("checks") or []
    failed = [c["name"] for c in checks if not c.get("passed", True)]
    return "pass" if done.returncode == 0 else "FAIL " + ", ".join(failed)


def _metric(model: ResolvedModel) -> tuple[str, float]:
    metrics = model.metadata.get("metrics", {})
    for name in ("heldout_auc", "heldout_accuracy", "heldout_rmse"):
        if metrics.get(name) is not None:
            return name.removeprefix("heldout_"), float(metrics[name])
    return "metric", float("nan")


CALL_ROWS = 65536


def call_rates(
    parent: ResolvedModel, models: dict[str, ResolvedModel], data: Path, calls: int
) -> dict[str, float]:
    """Rows/s of the model call alone (``loaded.function(feeds)``, what the scorer calls per
    batch) on one batch of CALL_ROWS valid rows from one calling thread (TensorFlow still uses
    its intra-op threads; LiteRT runs with one), the median of ``calls`` rounds
    over every model after one warm-up round; ``transform only`` is the parent's transform signature: what no backend change
    of the model part can remove."""
    import pyarrow.compute as pc

    from batch.engine.inputs import find_input_files, open_parquet
    from batch.engine.prepare import trust_policy
    from batch.engine.scorer import BatchScorer
    from batch.model.loading import load_model
    from batch.model.signature import SignatureChoice

    trust = trust_policy(None, False)
    loaded = {key: load_model(model, trust) for key, model in {"float32": parent, **models}.items()}
    loaded["transform only"] = load_model(
        parent,
        trust,
        SignatureChoice(name=str(parent.metadata["signature"]["transform_signature"])),
    )
    inputs = list(BatchScorer(loaded["float32"], (), "bench").input_types)
    first = find_input_files(str(data))[0]
    batch = next(open_parquet(first).iter_batches(batch_size=2 * CALL_ROWS, columns=inputs))
    valid = pc.is_valid(batch.column(inputs[0]))
    for name in inputs[1:]:
        valid = pc.and_(valid, pc.is_valid(batch.column(name)))
    batch = batch.filter(valid).slice(0, CALL_ROWS)
    feeds = {key: BatchScorer(model, (), "bench").feeds(batch) for key, model in loaded.items()}
    seconds: dict[str, list[float]] = {key: [] for key in loaded}
    for round_ in range(calls + 1):  # in rounds, so that a busy moment hits every model
        for key, model in loaded.items():
            started = time.perf_counter()
            model.function(feeds[key])
            if round_:  # the first round warms up
                seconds[key].append(time.perf_counter() - started)
    return {key: batch.num_rows / statistics.median(found) for key, found in seconds.items()}


def call_table(rates: dict[str, float]) -> str:
    base = rates["float32"]
    lines = [
        f"Model call alone (one {CALL_ROWS:,}-row batch, one calling thread, transform + model; the "
        "median call of rounds over all models):",
        "",
        "| model | rows/s of the call | vs float32 |",
        "|---|---|---|",
    ]
    lines += [f"| {key} | {rate:,.0f} | {rate / base:.2f}x |" for key, rate in rates.items()]
    return "\n".join(lines) + "\n"


def table(
    rows: int,
    runner: str,
    parent: ResolvedModel,
    models: dict[str, ResolvedModel],
    medians: dict[str, Measurement],
    verdicts: dict[str, str],
) -> str:
    name, parent_metric = _metric(parent)
    lines = [
        f"{rows:,} rows, {runner}; parent {parent.label} ({name} {parent_metric:.4f} held-out)",
        "",
        f"| method | version | SavedModel on disk | rows/s | speed vs float32 | CPU s | held-out "
        f"{name} | change vs parent | jobs.compare vs parent |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    base = medians["float32"]
    for key, model in {"float32": parent, **models}.items():
        size = folder_bytes(model.saved_model_dir)
        tflite = model.saved_model_dir / TFLITE_FILE
        shown = f"{size / 1e6:.2f} MB" + (
            f" (TFLite {tflite.stat().st_size / 1e3:.0f} KB)" if tflite.is_file() else ""
        )
        _, metric = _metric(model)
        change = "" if key == "float32" else f"{metric - parent_metric:+.4f}"
        run = medians[key]
        lines.append(
            f"| {key} | {model.label} | {shown} | {run.rate:,.0f} | "
            f"{base.seconds / run.seconds:.2f}x | {run.cpu_seconds:.1f} | {metric:.4f} | {change} | "
            f"{verdicts.get(key, '')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.compress",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=2_000_000, help="Rows to score.")
    parser.add_argument("--repeat", type=int, default=2, help="Rounds (median run shown).")
    parser.add_argument("--train_rows", type=int, default=200_000, help="The parent's rows.")
    parser.add_argument("--epochs", type=int, default=3, help="The parent's epochs.")
    parser.add_argument("--runner", default="DirectRunner", help="jobs.score --runner.")
    parser.add_argument("--calls", type=int, default=20, help="Model calls timed per model.")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=demo_paths.demo_dir() / "bench-compress",
        help="Where the repository, data and outputs go (default: %(default)s).",
    )
    parser.add_argument("--no_report", action="store_true", help="Leave docs/ as it is.")
    parser.add_argument(
        "--calls_only", action="store_true", help="Print the model-call table only (no jobs)."
    )
    args = parser.parse_args(argv)
    from batch.demo.data import ensure_demo_data

    repo = ModelRepository(args.workdir / "models")
    parent = _parent(repo, args.train_rows, args.epochs)
    models = _variants(repo, parent)
    data = ensure_demo_data(
        args.workdir / f"data-{args.rows}", rows=args.rows, days=8, files_per_day=1
    )
    if args.calls_only:
        print(call_table(call_rates(parent, models, data, args.calls)))
        return 0
    runs: dict[str, list[Measurement]] = {}
    for _round in range(args.repeat):
        for key, model in {"float32": parent, **models}.items():
            out = args.workdir / "out" / key
            command = _score(model, repo.root, data, out, args.runner)
            runs.setdefault(key, []).append(measure(key, key, args.rows, command))
    medians = {
        key: sorted(found, key=lambda m: m.seconds)[len(found) // 2] for key, found in runs.items()
    }
    for key, found in runs.items():
        print(f"bench: {key}: {', '.join(f'{m.seconds:.1f}s' for m in found)}")
    verdicts = {key: _verdict(repo.root, data, parent, model) for key, model in models.items()}
    rates = call_rates(parent, models, data, args.calls)
    started = dt.datetime.now()
    text = (
        f"## {started:%Y-%m-%d %H:%M}: `python -m bench.compress "
        f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
        + table(args.rows, args.runner, parent, models, medians, verdicts)
        + "\n"
        + call_table(rates)
        + "\nMedian wall seconds: "
        + "; ".join(
            f"{key} {statistics.median(m.seconds for m in found):.1f}"
            for key, found in runs.items()
        )
        + "\n"
    )
    print(text)
    if not args.no_report:
        body = REPORT.read_text().removeprefix(HEADER) if REPORT.is_file() else ""
        REPORT.write_text(HEADER + text + "\n" + body)
        print(f"bench: wrote {REPORT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
