"""The compressed versions of ``make bench`` (bench/run.py paths float32, int8,
int8_dynamic, prune and distill): a float32 parent and its int8, prune and distill
versions (python -m jobs.compress), each scored by a whole jobs.score job on the same
generated rows as every other path, in the same rounds.

    python -m bench.run --paths=float32,int8,int8_dynamic,prune,distill [--rows=...] [--repeat=N]
    make bench-compress COMPRESS_ROWS=2000000 COMPRESS_REPEAT=3   # the same, those paths alone

The parent is trained once (jobs.train's defaults, the demo model's) into a repository of
the bench's own (WORKDIR/compress/models), so that no variant ever becomes the demo
model's @latest; each variant is made once per parent (a marker file per parent content
hash and method). After the runs of a row count, :func:`section` adds per method: size of
the SavedModel folder on disk (and of the TFLite file inside), the median run's wall
seconds (every run beside it), rows/s and its ratio to the float32 parent's median run of
the same invocation, CPU seconds, peak RSS, the held-out metric of jobs.compress and its
change against the parent, and the verdict of jobs.compare against the parent (default
thresholds, a sample of about COMPARE_ROWS keys); then the model call alone (transform +
model on one batch, rounds over all models, beside the transform signature alone).
bench/run.py puts it into docs/benchmarks.md and prepends it to docs/compression.md.
"""

from __future__ import annotations

import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch.model.repository import ModelRepository
from batch.model.resolved import ResolvedModel
from batch.model.tflite import TFLITE_FILE

if TYPE_CHECKING:
    from bench.run import Measurement

PROJECT = Path(__file__).resolve().parent.parent
REPORT = PROJECT / "docs" / "compression.md"
HEADER = (
    "# Compressed models: size, speed and accuracy\n\n"
    "Written by `make bench` and `make bench-compress` (`python -m bench.run` with the paths "
    "float32, int8, int8_dynamic, prune, distill); newest first. Each table scores the same "
    "generated rows with the float32 parent and its compressed versions in rounds, whole "
    "jobs.score processes, start-up included.\n\n"
)
NAME = "loan_default"
FLOAT32 = "float32"
# (path key, jobs.compress options); the parent is the path "float32".
VARIANTS: dict[str, tuple[str, ...]] = {
    "int8": ("--method=int8", "--quantization=full_integer"),
    "int8_dynamic": ("--method=int8", "--quantization=dynamic_range"),
    "prune": ("--method=prune", "--sparsity=0.5"),
    "distill": ("--method=distill", "--student_hidden_units=16"),
}
KEYS = (FLOAT32, *VARIANTS)
COMPARE_ROWS = 200_000
CALL_ROWS = 65536
CALLS = 20


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", *args], cwd=PROJECT, check=True)


def _parent(repo: ModelRepository) -> ResolvedModel:
    """The float32 parent: version 1 of the bench's own repository (trained once)."""
    if not repo.versions(NAME):
        _run("jobs.train", f"--model_repo={repo.root}", f"--name={NAME}")
    return repo.resolve(f"{NAME}@1")


def _variants(repo: ModelRepository, parent: ResolvedModel) -> dict[str, ResolvedModel]:
    """Each variant of ``parent`` (made once; found again by its marker file)."""
    made: dict[str, ResolvedModel] = {}
    for key, options in VARIANTS.items():
        marker = repo.root / f".bench-{parent.content_hash[:12]}-{key}"
        if marker.is_file():
            made[key] = repo.resolve(marker.read_text().strip())
            continue
        before = repo.versions(NAME)
        _run("jobs.compress", parent.label, f"--model_repo={repo.root}", *options)
        (version,) = sorted(set(repo.versions(NAME)) - set(before))
        made[key] = repo.resolve(f"{NAME}@{version}")
        marker.write_text(made[key].label)
    return made


@functools.cache
def versions(workdir: Path) -> dict[str, ResolvedModel]:
    """The float32 parent and its variants in ``workdir``/models (made when missing)."""
    repo = ModelRepository(workdir / "models")
    parent = _parent(repo)
    return {FLOAT32: parent, **_variants(repo, parent)}


def _verdict(repo: Path, data: Path, rows: int, parent: ResolvedModel, model: ResolvedModel) -> str:
    """jobs.compare of ``model`` against ``parent`` (no blessing written): pass or the
    checks that failed."""
    summary = repo.parent / f"compare-{model.version}.json"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.compare",
            f"--input={data}",
            f"--baseline={parent.label}",
            f"--candidate={model.label}",
            f"--model_repo={repo}",
            f"--output={repo.parent / 'comparisons'}",
            f"--sample={min(1.0, COMPARE_ROWS / rows):.6f}",
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


def call_rates(
    parent: ResolvedModel, models: dict[str, ResolvedModel], data: Path, calls: int
) -> dict[str, float]:
    """Rows/s of the model call alone (``loaded.function(feeds)``, what the scorer calls per
    batch) on one batch of CALL_ROWS valid rows from one calling thread (TensorFlow still
    uses its intra-op threads; LiteRT runs with one), the median of ``calls`` rounds over
    every model after one warm-up round; ``transform only`` is the parent's transform
    signature: what no backend change of the model part can remove."""
    import pyarrow.compute as pc

    from batch.engine.inputs import find_input_files, open_parquet
    from batch.engine.prepare import trust_policy
    from batch.engine.scorer import BatchScorer
    from batch.model.loading import load_model
    from batch.model.signature import SignatureChoice

    trust = trust_policy(None, False)
    loaded = {key: load_model(model, trust) for key, model in {FLOAT32: parent, **models}.items()}
    loaded["transform only"] = load_model(
        parent,
        trust,
        SignatureChoice(name=str(parent.metadata["signature"]["transform_signature"])),
    )
    inputs = list(BatchScorer(loaded[FLOAT32], (), "bench").input_types)
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
    base = rates[FLOAT32]
    lines = [
        f"Model call alone (one {CALL_ROWS:,}-row batch, one calling thread, transform + model; "
        "the median call of rounds over all models):",
        "",
        "| model | rows/s of the call | vs float32 |",
        "|---|---:|---:|",
    ]
    lines += [f"| {key} | {rate:,.0f} | {rate / base:.2f}x |" for key, rate in rates.items()]
    return "\n".join(lines) + "\n"


def table(
    rows: int,
    models: dict[str, ResolvedModel],
    measured: dict[str, Measurement],
    verdicts: dict[str, str],
) -> str:
    """Per measured method: size, speed (and its ratio to the float32 parent measured in
    the same rounds), held-out metric and its change, jobs.compare's verdict."""
    parent = models[FLOAT32]
    name, parent_metric = _metric(parent)
    base = measured.get(FLOAT32)
    lines = [
        f"#### Compressed versions at {rows:,} rows (same invocation; Beam DirectRunner; "
        f"parent {parent.label}, held-out {name} {parent_metric:.4f})",
        "",
        "| method | version | SavedModel on disk | wall s | rows/s | vs float32 parent | CPU s "
        f"| peak RSS MB | held-out {name} | change vs parent | jobs.compare vs parent |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for key in KEYS:
        run = measured.get(key)
        if run is None:
            continue
        model = models[key]
        tflite = model.saved_model_dir / TFLITE_FILE
        size = f"{folder_bytes(model.saved_model_dir) / 1e6:.2f} MB" + (
            f" (TFLite {tflite.stat().st_size / 1e3:.0f} KB)" if tflite.is_file() else ""
        )
        _, metric = _metric(model)
        change = "" if key == FLOAT32 else f"{metric - parent_metric:+.4f}"
        ratio = f"{run.rate / base.rate:.2f}x" if base else ""
        runs = f" ({' / '.join(f'{s:.1f}' for s in run.runs)})" if run.runs else ""
        lines.append(
            f"| {key} | {model.label} | {size} | {run.seconds:.1f}{runs} | {run.rate:,.0f} "
            f"| {ratio} | {run.cpu_seconds:.1f} | {run.peak_rss_mb:,.0f} | {metric:.4f} "
            f"| {change} | {verdicts.get(key, '')} |"
        )
    return "\n".join(lines) + "\n"


def section(rows: int, results: Sequence[Measurement], data: Path, workdir: Path) -> str:
    """The compression table of one row count, then the model call alone (both measured
    after every path's runs)."""
    measured = {m.key: m for m in results if m.key in KEYS}
    models = versions(workdir)
    parent = models[FLOAT32]
    repo = workdir / "models"
    variants = {key: models[key] for key in VARIANTS if key in measured}
    verdicts = {key: _verdict(repo, data, rows, parent, m) for key, m in variants.items()}
    rates = call_rates(parent, variants, data, CALLS)
    return table(rows, models, measured, verdicts) + "\n" + call_table(rates)


def write_report(heading: str, sections: Sequence[str]) -> None:
    """Prepends ``sections`` under ``heading`` to docs/compression.md."""
    body = REPORT.read_text().removeprefix(HEADER) if REPORT.is_file() else ""
    REPORT.write_text(HEADER + heading + "\n\n" + "\n".join(sections) + "\n" + body)
    print(f"bench: wrote {REPORT}")
