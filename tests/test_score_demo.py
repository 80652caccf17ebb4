"""Scoring the demo model (tf.Transform graph + Keras model in one SavedModel) end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch.output import list_committed_runs
from batch.scorer import import_tensorflow
from batch.validate import REASON_COLUMN
from jobs.score import main as score_main


@pytest.fixture(scope="module")
def demo_run(trained_model: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    output = tmp_path_factory.mktemp("scores")
    rc = score_main(
        [
            "--runner=DirectRunner",
            f"--input={trained_model.data_dir}",
            f"--model={trained_model.model.name}@{trained_model.model.version}",
            f"--model_repo={trained_model.repo}",
            f"--output={output}",
            "--batch_size=3000",
        ]
    )
    assert rc == 0
    (run,) = list_committed_runs(output)
    return run.run_dir


def _input_rows(trained_model: Any) -> pa.Table:
    return pq.read_table(trained_model.data_dir)


def test_every_key_lands_exactly_once(trained_model: Any, demo_run: Path) -> None:
    rows = _input_rows(trained_model)
    scored = pq.read_table(demo_run / "predictions").column("loan_id").to_pylist()
    rejected = pq.read_table(demo_run / "rejected").column("loan_id").to_pylist()
    together = scored + rejected
    assert len(together) == len(set(together)) == rows.num_rows
    assert set(together) == set(rows.column("loan_id").to_pylist())


def test_scores_equal_a_direct_call_of_the_savedmodel(trained_model: Any, demo_run: Path) -> None:
    tf = import_tensorflow()
    rows = _input_rows(trained_model)
    signature = tf.saved_model.load(str(trained_model.model.saved_model_dir)).signatures[
        "serving_default"
    ]
    _, specs = signature.structured_input_signature
    clean = rows.drop_null().slice(0, 2000)
    feeds = {
        name: tf.constant(clean.column(name).to_numpy().astype(spec.dtype.as_numpy_dtype))
        if spec.dtype != tf.string
        else tf.constant(clean.column(name).to_pylist())
        for name, spec in specs.items()
    }
    direct = signature(**feeds)
    scored = pq.read_table(demo_run / "predictions")
    by_key = dict(zip(scored.column("loan_id").to_pylist(), range(scored.num_rows), strict=True))
    index = pa.array([by_key[k] for k in clean.column("loan_id").to_pylist()])
    for output, values in direct.items():
        ours = pc.take(scored.column(output), index).to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(
            np.asarray(list(ours), dtype=np.float64).reshape(values.shape),
            values.numpy(),
            atol=1e-6,
        )


def test_demo_dirty_rows_with_nulls_are_rejected_with_a_reason(
    trained_model: Any, demo_run: Path
) -> None:
    rows = _input_rows(trained_model)
    bad = pa.array(np.zeros(rows.num_rows, dtype=bool))
    for name in trained_model.model.metadata["signature"]["inputs"]:
        column = rows.column(name)
        bad = pc.or_(bad, column.is_null())
        if pa.types.is_floating(column.type):
            bad = pc.or_(bad, pc.fill_null(pc.invert(pc.is_finite(column)), False))
    expected = set(rows.filter(bad).column("loan_id").to_pylist())
    rejected = pq.read_table(demo_run / "rejected")
    assert expected, "the demo data has dirty rows with nulls"
    assert set(rejected.column("loan_id").to_pylist()) == expected
    assert set(rejected.column(REASON_COLUMN).to_pylist()) <= {"null_value", "not_finite"}
