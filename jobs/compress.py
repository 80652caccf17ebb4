"""Make a smaller or faster version of a registered model and register it beside its parent.

    python -m jobs.compress NAME@VERSION --method=int8|prune|distill [--model_repo=DIR]
                            [--key=PEM] [--public_key=PEM] [--input=DIR]
                            [--sparsity=0.5] [--epochs=N] [--learning_rate=RATE]
                            [--student_hidden_units=16] [--quantization=full_integer]
                            [--representative_rows=1000]

The work is done by :mod:`training.compress`. The new version is judged like any other:
``python -m jobs.compare --baseline=NAME@PARENT --candidate=NAME@NEW`` blesses it on a pass,
and only a blessed version can be promoted to production.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from batch.api import write_summary_file
from batch.observe.checks import OK, job_summary
from jobs.cli import JobParser, add_summary_file, exit_process, positive_int, run_main

# training.compress imports TensorFlow quietly first, before its own imports.
from training.compress import (
    METHODS,
    QUANTIZATIONS,
    CompressOptions,
    CompressRequest,
    compress,
)

PROG = "python -m jobs.compress"


def _widths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths, e.g. 16 or 32,16; found '{text}'"
        ) from None


def build_parser() -> argparse.ArgumentParser:
    defaults = CompressOptions()
    parser = JobParser(
        prog=PROG,
        allow_abbrev=False,
        description=(
            "Compress a registered model version into a new version of the same name: "
            "int8 (the Keras part converted to TFLite with post-training quantization, "
            "calibrated on its training rows; scored with LiteRT after the exact tf.Transform "
            "graph), prune (magnitude pruning of the Dense kernels to --sparsity, then "
            "fine-tuning with the mask held) or distill (a smaller student trained on the "
            "parent's scores). The rows come from the parent's lineage (its training data "
            "snapshot, checked unchanged). The version is signed and registered; its lineage "
            "names the parent, the method and the options; metadata.json `compression` holds "
            "the held-out metrics' change and both sizes on disk. Judge it with "
            "`python -m jobs.compare --baseline=PARENT --candidate=NEW` before promoting it."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("parent", help="The registered version to compress: NAME@VERSION.")
    parser.add_argument("--method", required=True, choices=METHODS, help="How to compress.")
    parser.add_argument(
        "--model_repo", help="Model repository folder. Default: the demo repository."
    )
    parser.add_argument(
        "--key", help="PEM EC private key to sign the new version with. Default: the demo's."
    )
    parser.add_argument(
        "--public_key", help="PEM EC public key the parent must verify with. Default: the demo's."
    )
    parser.add_argument(
        "--allow_unsigned", action="store_true", help="Accept an unsigned parent (WARNING)."
    )
    parser.add_argument(
        "--input",
        help="Folder holding the parent's training data snapshot, if it moved. Default: "
        "where the parent's lineage says it was.",
    )
    group = parser.add_argument_group("options of the methods")
    group.add_argument(
        "--sparsity",
        type=float,
        default=defaults.sparsity,
        help="prune: share of every Dense kernel's weights set to zero.",
    )
    group.add_argument(
        "--epochs",
        type=positive_int,
        help="prune: fine-tuning epochs (default 1); distill: the student's epochs (default 5).",
    )
    group.add_argument(
        "--learning_rate",
        type=float,
        help="prune (default 0.001), distill (default 0.002).",
    )
    group.add_argument(
        "--batch_size", type=positive_int, default=defaults.batch_size, help="prune, distill."
    )
    group.add_argument(
        "--student_hidden_units",
        type=_widths,
        default=defaults.student_hidden_units,
        help="distill: the student's hidden layer widths (the parent's model_fn builds it).",
    )
    group.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        default=defaults.quantization,
        help="int8: full_integer (int8 weights and activations, calibrated) or dynamic_range "
        "(int8 weights only).",
    )
    group.add_argument(
        "--representative_rows",
        type=positive_int,
        default=defaults.representative_rows,
        help="int8 full_integer: training rows that calibrate the activations' ranges.",
    )
    group.add_argument("--seed", type=int, default=7, help="prune, distill.")
    add_summary_file(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    started = time.perf_counter()

    def run() -> int:
        request = CompressRequest(
            parent=args.parent,
            method=args.method,
            options=CompressOptions(
                sparsity=args.sparsity,
                epochs=args.epochs,
                learning_rate=args.learning_rate,
                batch_size=args.batch_size,
                student_hidden_units=args.student_hidden_units,
                quantization=args.quantization,
                representative_rows=args.representative_rows,
            ),
            model_repo=Path(args.model_repo) if args.model_repo else None,
            input=Path(args.input) if args.input else None,
            signing_key=Path(args.key) if args.key else None,
            public_key=Path(args.public_key) if args.public_key else None,
            allow_unsigned=args.allow_unsigned,
            seed=args.seed,
        )
        model = compress(request)
        seconds = time.perf_counter() - started
        print(f"compress: done in {seconds:.1f}s")
        if args.summary_file:
            done = job_summary(
                "compress",
                OK,
                model=model.label,
                path=str(model.saved_model_dir),
                seconds=seconds,
                compression=model.metadata.get("compression"),
            )
            write_summary_file(args.summary_file, done, "compress")
        return 0

    return run_main(run, "compress", job="compress", summary_file=args.summary_file)


if __name__ == "__main__":
    exit_process(main())
