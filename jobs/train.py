"""Train the loan default model and register it (tf.Transform on Beam, then tf-keras).

    python -m jobs.train [--input=DIR] [--model_repo=DIR] [--name=loan_default] [--key=PEM]
                         [--train_rows=200000] [--epochs=3] [--seed=7]
                         [Beam pipeline options, e.g. --direct_num_workers=2]

The steps are described in :mod:`training.trainer`, which does the work.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from batch.api import write_summary_file
from batch.core.errors import UsageError
from batch.demo.paths import (
    DEMO_MODEL_NAME,
    SIGNING_KEY_ENV,
    default_signing_key,
    demo_data_dir,
    demo_model_repo,
)
from batch.observe.checks import OK, job_summary
from jobs.cli import JobParser, add_summary_file, exit_process, run_main

# training.trainer imports TensorFlow quietly first, before its own imports.
from training.trainer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_SEED,
    DEFAULT_TRAIN_ROWS,
    TRAINING_STEPS,
    train_and_register,
)

# -- command line --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog="python -m jobs.train",
        allow_abbrev=False,
        description=(
            "Train the loan default model: read and clean the input Parquet, analyze "
            "transforms/loans.py with tf.Transform on Apache Beam, fit a tf-keras MLP, "
            "export one SavedModel (raw columns in, default_probability out) and register "
            "it as the next version of --name. Unrecognized --options are passed to Beam "
            "as pipeline options (e.g. --direct_num_workers=2)."
        ),
    )
    parser.add_argument(
        "--input",
        type=Path,
        default=None,
        help="folder of Parquet files (searched recursively, e.g. dt=... partitions); "
        f"default: the demo data, {demo_data_dir()}, written by jobs.make_demo if missing",
    )
    parser.add_argument(
        "--model_repo",
        type=Path,
        default=None,
        help=f"model repository to register into (default: {demo_model_repo()})",
    )
    parser.add_argument(
        "--name",
        default=DEMO_MODEL_NAME,
        help="registered model name; each run adds the next version (default: %(default)s)",
    )
    parser.add_argument(
        "--key",
        type=Path,
        default=None,
        help="PEM EC private key the registered SavedModel is signed with (default: "
        f"${SIGNING_KEY_ENV}, else the demo's key {default_signing_key()}, created if "
        "missing); scoring verifies it with the matching --public_key",
    )
    parser.add_argument(
        "--train_rows",
        type=int,
        default=DEFAULT_TRAIN_ROWS,
        help="read the first N rows of the input (files in sorted order), before dropping "
        "dirty rows and holding out 10%% (default: %(default)s)",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=DEFAULT_EPOCHS,
        help="training epochs over the transformed training rows (default: %(default)s)",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="training batch size (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="seed of the weight initialisation and the shuffling (default: %(default)s)",
    )
    add_summary_file(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    started = time.perf_counter()

    def train() -> int:
        unknown = [a for a in beam_args if not a.startswith("--")]
        if unknown:
            raise UsageError(
                f"unexpected argument(s) {' '.join(unknown)}; options are --name=value (see --help)"
            )
        model = train_and_register(
            args.input,
            args.model_repo,
            args.name,
            args.train_rows,
            args.epochs,
            args.seed,
            beam_args,
            args.batch_size,
            signing_key=args.key,
        )
        timings: dict[str, float] = model.metadata["training"]["timings_s"]
        steps = ", ".join(
            f"{step} {seconds:.1f}s"
            for step, seconds in sorted(
                timings.items(), key=lambda item: TRAINING_STEPS.index(item[0])
            )
        )
        seconds = time.perf_counter() - started
        print(f"train: done in {seconds:.1f}s ({steps})")
        if args.summary_file:
            done = job_summary(
                "train", OK, model=model.label, path=str(model.saved_model_dir), seconds=seconds
            )
            write_summary_file(args.summary_file, done, "train")
        return 0

    return run_main(train, "train", job="train", summary_file=args.summary_file)


if __name__ == "__main__":
    exit_process(main())
