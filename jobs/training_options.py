"""The options of a training job, shared by ``jobs.train`` and ``jobs.tune`` (not a
command: no command line imports another)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from batch.core.errors import UsageError
from batch.demo.paths import (
    SIGNING_KEY_ENV,
    default_signing_key,
    demo_data_dir,
    demo_model_repo,
)
from batch.engine.prepare import parse_key_columns
from jobs.cli import positive_float, positive_int

# training.trainer imports TensorFlow quietly first, before its own imports.
from training.model_fn import TASKS
from training.trainer import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_MODEL_FN,
    DEFAULT_SEED,
    DEFAULT_TRAIN_ROWS,
    DEFAULT_WORKER_TIMEOUT_S,
    DEMO,
    TrainingRequest,
)


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Every option of ``python -m jobs.train`` but --summary_file."""
    parser.add_argument(
        "--input",
        type=Path,
        default=None,
        help="folder of Parquet files (searched recursively, e.g. dt=... partitions); "
        f"default (demo only): the demo data, {demo_data_dir()}, written if missing",
    )
    parser.add_argument(
        "--contract",
        default=None,
        help="the data contract: a name under schemas/ or a folder holding schema.pbtxt "
        "(and rules.toml); its schema gives the raw feature spec (required features "
        "FixedLenFeature, optional ones VarLenFeature). Default: the demo's, "
        f"{DEMO.contract}, with the demo's other defaults",
    )
    parser.add_argument(
        "--preprocessing_fn",
        default=None,
        metavar="MODULE:FUNCTION",
        help="the tf.Transform preprocessing_fn, imported from the Python path (PYTHONPATH "
        "included); required with --contract. It must output the label. Default (demo "
        f"only): {DEMO.preprocessing_fn}",
    )
    parser.add_argument(
        "--model_fn",
        default=DEFAULT_MODEL_FN,
        metavar="MODULE:FUNCTION",
        help="model_fn(tft_output, hyperparameters) returning a compiled tf_keras.Model "
        "whose inputs are named like transformed features (default: %(default)s, an MLP "
        "for tabular data)",
    )
    parser.add_argument(
        "--label",
        default=None,
        help="label column (default: `label` in the contract's rules.toml)",
    )
    parser.add_argument(
        "--key_columns",
        default=None,
        help="comma-separated columns that identify a row; the held-out split hashes them "
        "(default: `key_columns` in the contract's rules.toml)",
    )
    parser.add_argument(
        "--name",
        default=None,
        help="registered model name; each run adds the next version; required with "
        f"--contract (demo: {DEMO.name})",
    )
    parser.add_argument(
        "--model_repo",
        type=Path,
        default=None,
        help=f"model repository to register into (default: {demo_model_repo()})",
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
        "--task",
        default="auto",
        choices=TASKS,
        help="binary, multiclass or regression; auto (default) reads it from the "
        "transformed label: float is regression, an int with a vocabulary of more than 2 "
        "classes multiclass, any other int binary",
    )
    parser.add_argument(
        "--output_name",
        default=None,
        help="name of the model's output, the prediction column (default: probability, "
        "probabilities or prediction by task; demo: default_probability)",
    )
    parser.add_argument(
        "--hyperparameters",
        default=None,
        metavar="JSON",
        help='a JSON object passed to the model_fn, e.g. \'{"hidden_units": [64, 32], '
        '"learning_rate": 0.002}\' (the default model_fn also reads max_embedding_dim and '
        "features); label, key_columns, task, num_classes, output_name and seed are added",
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
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="fit data-parallel on N worker processes this job starts on this machine "
        "(tf.distribute.MultiWorkerMirroredStrategy, TF_CONFIG with 127.0.0.1 ports; each "
        "worker reads its shard of the transformed rows, the global batch is --batch_size). "
        "Default 1: one process, no strategy. README: Training at scale",
    )
    parser.add_argument(
        "--worker_timeout",
        type=positive_float,
        default=DEFAULT_WORKER_TIMEOUT_S,
        metavar="SECONDS",
        help="with --workers > 1: stop the workers and fail when fitting takes longer "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--mixed_precision",
        action="store_true",
        help="fit under Keras's mixed precision policy (mixed_bfloat16 on CPU, "
        "mixed_float16 on a GPU; the output layer stays float32, the signature float32 in "
        "and out); a float32 model is fitted too and the held-out metric change against it "
        "is recorded in metadata.json (training.precision)",
    )
    parser.add_argument(
        "--input_manifest",
        type=Path,
        default=None,
        metavar="FILE",
        help="retrain on exactly the data snapshot FILE pins: a version's metadata.json "
        "(its lineage.training_data: every file with size and sha256) or that JSON alone. "
        "Refuses a file whose size or content changed; --input=DIR reads the same files "
        "from another folder",
    )


def training_request(args: argparse.Namespace, beam_args: Sequence[str]) -> TrainingRequest:
    """The request the options describe (the demo's defaults without --contract)."""
    unknown = [a for a in beam_args if not a.startswith("--")]
    if unknown:
        raise UsageError(
            f"unexpected argument(s) {' '.join(unknown)}; options are --name=value (see --help)"
        )
    if args.contract is None:
        base = DEMO
    else:
        for option, value in (("--preprocessing_fn", args.preprocessing_fn), ("--name", args.name)):
            if not value:
                raise UsageError(f"--contract={args.contract}: {option} is required with it")
        if args.input is None and args.input_manifest is None:
            raise UsageError(
                f"--contract={args.contract}: --input=DATA (or --input_manifest=FILE) is "
                "required with it"
            )
        base = TrainingRequest(args.contract, args.preprocessing_fn, args.name)
    hyperparameters: dict[str, Any] = {}
    if args.hyperparameters:
        try:
            hyperparameters = json.loads(args.hyperparameters)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--hyperparameters: expected a JSON object; {exc}") from exc
        if not isinstance(hyperparameters, dict):
            raise UsageError(
                f"--hyperparameters: expected a JSON object; found {type(hyperparameters).__name__}"
            )
    keys = tuple(parse_key_columns(args.key_columns)) if args.key_columns is not None else ()
    return TrainingRequest(
        contract=base.contract,
        preprocessing_fn=args.preprocessing_fn or base.preprocessing_fn,
        name=args.name or base.name,
        input=args.input,
        model_fn=args.model_fn,
        label=args.label,
        key_columns=keys,
        task=args.task,
        output_name=args.output_name or base.output_name,
        hyperparameters=hyperparameters,
        model_repo=args.model_repo,
        train_rows=args.train_rows,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        beam_args=tuple(beam_args),
        signing_key=args.key,
        workers=args.workers,
        worker_timeout_s=args.worker_timeout,
        mixed_precision=args.mixed_precision,
        input_manifest=args.input_manifest,
    )
