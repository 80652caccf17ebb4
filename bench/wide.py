"""The wide-row benchmark (issue 20): rows carrying a 250 KB text, scored by a model that
reads it, at several worker memory budgets and with the old fixed 65,536-row batches.

    python -m bench.wide --build --rows=2400 --workdir=DIR   (data + model, once)

bench.run --wide=ROWS builds them and measures each of ``wide_paths``: wall time,
rows/s, MB/s of input and peak RSS of the process tree, and the batch rows and depths
the run's manifest records.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

TEXT_BYTES = 250_000
ROWS_PER_FILE = 600
ROW_GROUP_ROWS = 300


def write_wide_data(folder: Path, rows: int) -> Path:
    """``rows`` rows (id, x, s: TEXT_BYTES random letters) in files of ROWS_PER_FILE
    rows, row groups of ROW_GROUP_ROWS (75 MB); skipped when already written."""
    marker = folder / "_WIDE.json"
    if marker.is_file() and json.loads(marker.read_text()) == {"rows": rows}:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for index, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        count = min(ROWS_PER_FILE, rows - start)
        letters = rng.integers(97, 123, size=count * TEXT_BYTES, dtype=np.uint8).tobytes()
        offsets = np.arange(count + 1, dtype=np.int32) * TEXT_BYTES
        table = pa.table(
            {
                "id": pa.array(np.arange(start, start + count), pa.int64()),
                "x": pa.array(rng.normal(size=count)),
                "s": pa.StringArray.from_buffers(
                    count, pa.py_buffer(offsets), pa.py_buffer(letters)
                ),
            }
        )
        pq.write_table(table, folder / f"part-{index:03d}.parquet", row_group_size=ROW_GROUP_ROWS)
    marker.write_text(json.dumps({"rows": rows}))
    return folder


def build_wide_model(path: Path) -> Path:
    """A SavedModel over x (float32) and s (string): score = sigmoid(x + count of 'a' in
    s / 10,000); it reads every byte of the text. Unsigned: scored with --allow_unsigned."""
    if (path / "saved_model.pb").is_file():
        return path
    import tensorflow as tf

    class Wide(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.float32, name="x"),
                tf.TensorSpec([None], tf.string, name="s"),
            ]
        )
        def serve(self, x: tf.Tensor, s: tf.Tensor) -> dict[str, tf.Tensor]:
            other = tf.strings.length(tf.strings.regex_replace(s, "a", ""))
            count = tf.cast(tf.strings.length(s) - other, tf.float32)
            return {"score": tf.sigmoid(x + count / 10_000.0)}

    module = Wide()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


DEPTH_KEYS = ("read_ahead", "model_calls", "queued", "write_queue")
# Path key -> (label, jobs.score options beyond input, model, output).
WIDE_PATHS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wide_default": ("sized by bytes, default budget (machine less headroom)", ()),
    "wide_2g": ("sized by bytes, --worker_memory=2G", ("--worker_memory=2G",)),
    "wide_1500m": ("sized by bytes, --worker_memory=1500M", ("--worker_memory=1500M",)),
    "wide_fixed": ("fixed --batch_size=65536 (before this change)", ("--batch_size=65536",)),
}


def score_command(
    python: str, data: Path, model: Path, out: Path, options: Sequence[str]
) -> list[str]:
    return [
        python,
        "-m",
        "jobs.score",
        f"--input={data}",
        f"--model={model}",
        "--allow_unsigned",
        "--key_columns=id",
        f"--output={out}",
        "--progress=off",
        "--force",
        *options,
    ]


def batching_of(out: Path) -> dict[str, object]:
    """The newest committed run's batching section under ``out``."""
    manifests = sorted(out.glob("*/*/run=*/_MANIFEST.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(manifests[-1].read_text())["batching"] if manifests else {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wide", description=__doc__)
    parser.add_argument("--rows", type=int, default=2400)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args(argv)
    write_wide_data(args.workdir / f"wide-{args.rows}", args.rows)
    build_wide_model(args.workdir / "wide_model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
