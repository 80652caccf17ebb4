"""Training benchmark (issue 18 point 6): the same transformed rows fitted with 1 and N
worker processes (MultiWorkerMirroredStrategy) and with mixed precision on and off.

    python -m bench.train [--rows=50000] [--epochs=3] [--workers=1,2] [--repeat=1]
                          [--json=PATH]          (make bench-train)

tf.Transform runs once (its time is printed apart); each configuration is then fitted from
the same transformed rows and evaluated on the same held-out rows. Per configuration:
``fit s`` is the whole fit step as ``jobs.train`` times it (with workers: their processes
started, TensorFlow imported, the cluster formed, the fit, the weights read back);
``model.fit s`` is Keras's fit alone (with workers: the chief's); examples/s is
training rows x epochs over each; held-out AUC.

On a 2-core machine expect N=2 to be *slower* than N=1: both workers' TensorFlow thread
pools share the same two cores, every step all-reduces the gradients over gRPC, and each
worker process pays TensorFlow's import (several seconds). Data parallelism pays off with
a core set (or a host) per worker and steps long enough to hide the all-reduce; this
benchmark measures the overhead, not that speed-up. Mixed precision (bfloat16) is only
faster on CPUs that compute bfloat16 natively (AVX512_BF16, AMX) and for layers wide enough
to be compute-bound; the demo's small MLP is neither, so expect float32 to win here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batch.demo.data import ensure_demo_data
from batch.release.evaluation import auc
from training.export import ServingModule
from training.fitting import FLOAT32, mixed_policy
from training.trainer import (
    DEMO,
    fit_model,
    job_hyperparameters,
    predict,
    transformed_labels,
    transformed_rows,
)


def _workers(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected worker counts like 1,2; found '{text}'")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.train",
        description="Training speed: 1 vs N workers, float32 vs mixed precision (module "
        "docstring: what is measured, and why 2 cores favour one float32 process).",
    )
    parser.add_argument("--rows", type=int, default=50_000, help="demo rows (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs (default: %(default)s)")
    parser.add_argument(
        "--workers", type=_workers, default=[1, 2], help="worker counts (default: 1,2)"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the median is kept")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="batchscore-bench-train-"))
    try:
        data = ensure_demo_data(
            root / "data", rows=args.rows, days=1, files_per_day=4, dirty_fraction=0, log=None
        )
        request = dataclasses.replace(
            DEMO, input=data, model_repo=root / "models", train_rows=args.rows, epochs=args.epochs
        )
        started = time.perf_counter()
        with transformed_rows(request, None) as rows:
            transform_s = time.perf_counter() - started
            hyperparameters = job_hyperparameters(request, rows.prepared, rows.task, rows.labels)
            heldout_labels = transformed_labels(
                rows.tft_output, rows.heldout, rows.prepared.spec, rows.prepared.label
            )
            results: list[dict[str, Any]] = []
            for workers in args.workers:
                for policy in (FLOAT32, mixed_policy()):
                    runs = []
                    for attempt in range(args.repeat):
                        fitted = fit_model(
                            rows,
                            dataclasses.replace(request, workers=workers),
                            hyperparameters,
                            policy,
                            work_name=f"bench-{workers}-{policy}-{attempt}",
                        )
                        module = ServingModule(
                            fitted.model,
                            rows.tft_output,
                            rows.prepared.raw_spec,
                            hyperparameters["output_name"],
                        )
                        runs.append((fitted, auc(heldout_labels, predict(module, rows.heldout))))
                    runs.sort(key=lambda run: run[0].seconds)
                    fitted, heldout_auc = runs[len(runs) // 2]
                    examples = rows.labels.size * args.epochs
                    results.append(
                        {
                            "workers": workers,
                            "policy": policy,
                            "fit_s": fitted.seconds,
                            "model_fit_s": fitted.model_fit_s,
                            "examples_per_s": round(examples / fitted.seconds, 1),
                            "model_fit_examples_per_s": round(examples / fitted.model_fit_s, 1),
                            "heldout_auc": round(heldout_auc, 4),
                        }
                    )
                    print(_line(results[-1]), flush=True)
            report = {
                "rows_read": rows.raw.num_rows,
                "train_rows": int(rows.labels.size),
                "heldout_rows": rows.heldout.num_rows,
                "epochs": args.epochs,
                "batch_size": request.batch_size,
                "tft_analyze_transform_s": round(transform_s, 2),
                "machine": f"{platform.machine()}, {_cores()} cores",
                "results": results,
            }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(_table(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _line(result: dict[str, Any]) -> str:
    return (
        f"bench.train: workers={result['workers']} {result['policy']}: fit {result['fit_s']:.1f}s "
        f"(model.fit {result['model_fit_s']:.1f}s), AUC {result['heldout_auc']:.4f}"
    )


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"training benchmark: {report['train_rows']:,} training rows x {report['epochs']} "
        f"epochs, batch {report['batch_size']}, {report['machine']}; tf.Transform "
        f"{report['tft_analyze_transform_s']:.1f}s (once)",
        "| workers | precision | fit s | examples/s | model.fit s | examples/s (model.fit) "
        "| held-out AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['workers']} | {r['policy']} | {r['fit_s']:.1f} | {r['examples_per_s']:,.0f} "
            f"| {r['model_fit_s']:.1f} | {r['model_fit_examples_per_s']:,.0f} "
            f"| {r['heldout_auc']:.4f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
