"""Scoring the demo model (tf.Transform graph + Keras model in one SavedModel) end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch.core.columns import REASON_COLUMN
from batch.demo.data import DEFECTS
from batch.model.loading import import_tensorflow
from batch.output.commit import list_committed_runs
from batch.output.manifest import read_manifest
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
            # The fixture's data is 0.5% dirty, five times the default budget.
            "--max_error_rate=0.01",
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
    scored = pq.read_table(demo_run / "predictions")
    clean = rows.filter(pc.is_in(rows.column("loan_id"), scored.column("loan_id"))).slice(0, 2000)
    feeds = {
        name: tf.constant(clean.column(name).to_numpy().astype(spec.dtype.as_numpy_dtype))
        if spec.dtype != tf.string
        else tf.constant(clean.column(name).to_pylist())
        for name, spec in specs.items()
    }
    direct = signature(**feeds)
    by_key = dict(zip(scored.column("loan_id").to_pylist(), range(scored.num_rows), strict=True))
    index = pa.array([by_key[k] for k in clean.column("loan_id").to_pylist()])
    for output, values in direct.items():
        ours = pc.take(scored.column(output), index).to_numpy(zero_copy_only=False)
        np.testing.assert_allclose(
            np.asarray(list(ours), dtype=np.float64).reshape(values.shape),
            values.numpy(),
            atol=1e-6,
        )


def _expected_rejects(rows: pa.Table) -> dict[str, str]:
    """Key -> reason, from the generator's own table of defects (an independent oracle)."""
    reason_of_bad_string = {
        "home_ownership": "unseen_category",
        "channel": "unseen_category",
        "state": "unseen_category",
        "employer_id": "bad_characters",
        "product_code": "bad_characters",
        "loan_purpose": None,  # rules.toml: unseen purposes go to the model's OOV bucket
    }
    expected: dict[str, str] = {}
    keys = rows.column("loan_id").to_pylist()
    for column, values in DEFECTS:
        found = rows.column(column).to_pylist()
        for key, value in zip(keys, found, strict=True):
            if value is None and None in values:
                expected[key] = "null_value"
            elif value is not None and value in values:
                reason = reason_of_bad_string[column] if isinstance(value, str) else "out_of_range"
                if reason:
                    expected[key] = reason
    return expected


def test_demo_dirty_rows_land_in_the_dead_letter_output_with_the_right_reason(
    trained_model: Any, demo_run: Path
) -> None:
    expected = _expected_rejects(_input_rows(trained_model))
    rejected = pq.read_table(demo_run / "rejected")
    found = dict(
        zip(
            rejected.column("loan_id").to_pylist(),
            rejected.column(REASON_COLUMN).to_pylist(),
            strict=True,
        )
    )
    assert len(expected) > 50
    assert found == expected
    assert set(found.values()) == {
        "null_value",
        "out_of_range",
        "unseen_category",
        "bad_characters",
    }
    for message in rejected.column("reject_message").to_pylist():
        assert message.startswith("column '")


def test_the_manifest_points_to_the_models_record_and_lineage(
    trained_model: Any, demo_run: Path
) -> None:
    model = read_manifest(demo_run).model
    assert model["metadata_file"] == str(
        trained_model.model.saved_model_dir.parent / "metadata.json"
    )
    lineage = model["lineage"]
    assert lineage == trained_model.model.metadata["lineage"]
    assert lineage["contract"]["sha256"]
