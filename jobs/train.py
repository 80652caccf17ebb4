"""Train a model on a dataset with a contract and register it (tf.Transform on Beam, then
tf-keras); with no --contract, the loans demo.

    python -m jobs.train --input=DATA --contract=schemas/NAME|DIR
                         --preprocessing_fn=MODULE:FUNCTION [--model_fn=MODULE:FUNCTION]
                         [--label=COLUMN] [--key_columns=A,B] --name=MODEL
                         [--model_repo=DIR] [--key=PEM] [--task=auto] [--output_name=NAME]
                         [--hyperparameters=JSON] [--train_rows=200000] [--epochs=3]
                         [--batch_size=512] [--seed=7] [--workers=1] [--mixed_precision]
                         [--input_manifest=FILE]
                         [Beam pipeline options, e.g. --direct_num_workers=2]

The steps are described in :mod:`training.trainer`, which does the work.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from batch.api import write_summary_file
from batch.observe.checks import OK, job_summary
from jobs.cli import JobParser, add_summary_file, exit_process, run_main

# training.trainer imports TensorFlow quietly first, before its own imports.
from jobs.training_options import add_training_options, training_request
from training.trainer import TRAINING_STEPS, train

__all__ = ["build_parser", "main", "training_request"]

# -- command line --------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog="python -m jobs.train",
        allow_abbrev=False,
        description=(
            "Train a model on your dataset: read the input Parquet and drop the rows that "
            "break the contract, analyze and transform them with your preprocessing_fn "
            "(tf.Transform on Apache Beam), build the Keras model with the model_fn, fit it, "
            "export one SavedModel (signatures serving_default: raw columns in; "
            "serving_tf_example: serialized tf.Examples in; transform_features) and register "
            "it, signed, as the next version of --name. With no --contract it trains the "
            "loans demo (transforms/loans.py, schemas/loans). Unrecognized --options are "
            "passed to Beam as pipeline options (e.g. --direct_num_workers=2)."
        ),
    )
    add_training_options(parser)
    add_summary_file(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    started = time.perf_counter()

    def run() -> int:
        model = train(training_request(args, beam_args))
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

    return run_main(run, "train", job="train", summary_file=args.summary_file)


if __name__ == "__main__":
    exit_process(main())
