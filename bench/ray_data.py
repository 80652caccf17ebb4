"""Ray Data's documented batch inference: read_parquet -> map_batches(actor) -> write_parquet.

The pattern of Ray Data's "End-to-end: offline batch inference" guide: a callable class
whose constructor loads the model once per actor (here the SavedModel's serving
signature), ``map_batches`` with ``batch_format="pyarrow"`` on an actor pool sized for
the machine, and ``write_parquet``. Rows with a null model input are dropped first (the
model cannot take them). No validation, dead-letter output or manifest; batchscore is
measured against it. Ray is not a dependency of batchscore: ``pip install -e '.[bench]'``.

    python -m bench.ray_data --input=DIR --model=SAVED_MODEL_DIR --output=DIR \\
        --key_column=loan_id --inputs=col1,col2,... [--actors=N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch.engine.inputs import DEFAULT_BATCH_SIZE


class Predictor:
    """One per actor: loads the SavedModel once, then scores pyarrow batches."""

    def __init__(self, model_dir: str, key_column: str, inputs: Sequence[str], output: str):
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        self._tf = tf
        self._signature = tf.saved_model.load(model_dir).signatures["serving_default"]
        _, self._specs = self._signature.structured_input_signature
        self._key, self._inputs, self._output = key_column, list(inputs), output

    def __call__(self, batch: pa.Table) -> pa.Table:
        valid = pc.is_valid(batch[self._inputs[0]])
        for name in self._inputs[1:]:
            valid = pc.and_(valid, pc.is_valid(batch[name]))
        batch = batch.filter(valid)
        feeds = {
            name: self._tf.constant(
                batch[name].to_numpy(zero_copy_only=False), dtype=self._specs[name].dtype
            )
            for name in self._inputs
        }
        scores = self._signature(**feeds)[self._output].numpy().reshape(batch.num_rows, -1)[:, 0]
        return pa.table({self._key: batch[self._key], self._output: pa.array(scores)})


def default_actors() -> int:
    """One actor per core, less one core left to the read and write tasks."""
    return max(1, (os.cpu_count() or 2) - 1)


# Set in the process that runs inside its own network namespace.
ISOLATED_ENV = "BATCHSCORE_RAY_NETNS"


def run_isolated(argv: Sequence[str]) -> None:
    """Re-run this command in a network namespace of its own with only loopback up: Ray
    binds its servers to the machine's address (it resolves 127.0.0.1 to it), and nothing
    of a benchmark may listen beyond this machine. Needs ``unshare -n`` (root)."""
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        raise SystemExit(
            "bench.ray_data: Ray would listen on the machine's network address; run it as "
            "root so that it runs in its own network namespace (unshare -n), or pass "
            "--no_isolation on a machine where that is acceptable"
        )
    os.environ[ISOLATED_ENV] = "1"
    script = 'ip link set lo up && exec "$0" "$@"'
    command = [unshare, "-n", "sh", "-c", script, sys.executable, "-m", "bench.ray_data", *argv]
    os.execv(unshare, command)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ray_data", description=__doc__)
    parser.add_argument("--input", required=True, help="Folder of Parquet files (recursive).")
    parser.add_argument("--model", required=True, help="SavedModel directory.")
    parser.add_argument("--output", required=True, help="Output folder (replaced).")
    parser.add_argument("--key_column", required=True, help="Column copied to the output.")
    parser.add_argument("--inputs", required=True, help="Comma-separated model input columns.")
    parser.add_argument("--output_name", default="default_probability", help="Model output.")
    parser.add_argument(
        "--actors",
        type=int,
        default=default_actors(),
        help="Actors in the pool, each with one model (default: cores - 1, at least 1: "
        "%(default)s).",
    )
    parser.add_argument(
        "--batch_size",
        type=int,
        default=DEFAULT_BATCH_SIZE,
        help="Rows per model call (default: batchscore's, %(default)s).",
    )
    parser.add_argument(
        "--no_isolation",
        action="store_true",
        help="Run Ray in this network namespace (its servers listen on the machine's address).",
    )
    args = parser.parse_args(argv)
    if not args.no_isolation and not os.environ.get(ISOLATED_ENV):
        run_isolated(sys.argv[1:] if argv is None else list(argv))
    started = time.perf_counter()
    import ray

    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    inputs = [c.strip() for c in args.inputs.split(",") if c.strip()]
    shutil.rmtree(args.output, ignore_errors=True)
    dataset: Any = ray.data.read_parquet(
        os.path.abspath(args.input), columns=[args.key_column, *inputs]
    )
    scored = dataset.map_batches(
        Predictor,
        fn_constructor_args=(
            os.path.abspath(args.model),
            args.key_column,
            inputs,
            args.output_name,
        ),
        batch_format="pyarrow",
        batch_size=args.batch_size,
        concurrency=args.actors,
        num_cpus=1,
    )
    scored.write_parquet(os.path.abspath(args.output))
    ray.shutdown()
    print(f"ray_data: scored in {time.perf_counter() - started:.1f}s with {args.actors} actor(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
