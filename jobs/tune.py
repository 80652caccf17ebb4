"""Search the hyperparameters the model_fn declares, then train and register the best trial.

    python -m jobs.tune [every jobs.train option] [--trials=10] [--objective=val_auc]
                        [--direction=auto] [--time_budget=SECONDS] [--patience=2]
                        [--validation_fraction=0.2] [--trials_file=PATH]

The search is :mod:`training.tuning` (Optuna); the rest is :mod:`training.trainer`.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence

from batch.api import write_summary_file
from batch.observe.checks import OK, job_summary
from jobs.cli import (
    JobParser,
    add_summary_file,
    exit_process,
    fraction,
    positive_float,
    positive_int,
    run_main,
    text_table,
)

# training.trainer imports TensorFlow quietly first, before its own imports.
from jobs.training_options import add_training_options, training_request
from training.tuning import (
    DEFAULT_PATIENCE,
    DEFAULT_VALIDATION_FRACTION,
    TuningRequest,
    describe_params,
    tune,
    write_trials,
)


def build_parser() -> argparse.ArgumentParser:
    parser = JobParser(
        prog="python -m jobs.tune",
        allow_abbrev=False,
        description=(
            "Hyperparameter search (Optuna) over the search space the model_fn declares "
            "(model_fn.search_space; the default model_fn's: learning_rate, hidden_units, "
            "dropout, batch_size). tf.Transform runs once; each trial fits on the training "
            "rows minus a validation share, with early stopping on --objective, and is "
            "recorded; the best trial is then fitted on all the training rows and registered "
            "like `python -m jobs.train` does, its hyperparameters in the lineage and every "
            "trial in metadata.json `tuning`. Takes every jobs.train option (--epochs is the "
            "most epochs a trial runs)."
        ),
    )
    add_training_options(parser)
    parser.add_argument(
        "--trials", type=positive_int, default=10, help="trials to run (default: %(default)s)"
    )
    parser.add_argument(
        "--objective",
        default="val_auc",
        help="the per-epoch validation metric to optimize, as Keras names it: val_auc, "
        "val_loss, val_rmse, val_accuracy (default: %(default)s)",
    )
    parser.add_argument(
        "--direction",
        default="auto",
        choices=("auto", "maximize", "minimize"),
        help="auto (default) minimizes losses and errors (val_loss, val_rmse), maximizes "
        "anything else",
    )
    parser.add_argument(
        "--time_budget",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="start no new trial after this many seconds of search (default: no limit)",
    )
    parser.add_argument(
        "--patience",
        type=positive_int,
        default=DEFAULT_PATIENCE,
        help="early stopping: end a trial after this many epochs without a better objective "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--validation_fraction",
        type=fraction,
        default=DEFAULT_VALIDATION_FRACTION,
        help="share of the training rows the trials are scored on (default: %(default)s; "
        "the held-out rows stay out of the search)",
    )
    parser.add_argument(
        "--trials_file",
        default=None,
        metavar="PATH",
        help="also write the search record (every trial) as JSON to PATH",
    )
    add_summary_file(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    started = time.perf_counter()

    def run() -> int:
        request = TuningRequest(
            training=training_request(args, beam_args),
            trials=args.trials,
            objective=args.objective,
            direction=args.direction,
            time_budget_s=args.time_budget,
            patience=args.patience,
            validation_fraction=args.validation_fraction,
        )
        tuned = tune(request)
        study = tuned.study
        rows = [
            [
                str(trial["number"]),
                trial.get("state", "?"),
                f"{trial['value']:.4f}" if "value" in trial else "-",
                str(trial.get("epochs", "-")),
                describe_params(trial["params"]),
            ]
            for trial in study["trials"]
        ]
        print(text_table(["trial", "state", study["objective"], "epochs", "parameters"], rows))
        if args.trials_file:
            write_trials(args.trials_file, study)
        seconds = time.perf_counter() - started
        print(
            f"tune: done in {seconds:.1f}s: {study['trials_run']} trials, best "
            f"{study['best_trial']} ({study['objective']} {study['best_value']:.4f}), "
            f"registered {tuned.model.label}"
        )
        if args.summary_file:
            done = job_summary(
                "tune",
                OK,
                model=tuned.model.label,
                path=str(tuned.model.saved_model_dir),
                seconds=seconds,
            )
            write_summary_file(args.summary_file, done, "tune")
        return 0

    return run_main(run, "tune", job="tune", summary_file=args.summary_file)


if __name__ == "__main__":
    exit_process(main())
