"""jobs.train: one SavedModel with the tf.Transform graph inside, registered with metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.contract.contract import TENSOR_DTYPES, feature_columns
from batch.core.errors import InputDataError, UsageError
from batch.core.fsutil import read_json
from batch.demo.data import generate
from batch.model.repository import ModelRepository
from batch.model.signature import SignatureInfo
from tests.conftest import TRAINED_ROWS, TrainedModel

pytestmark = pytest.mark.slow

RAW_FEATURES = {
    k: TENSOR_DTYPES[v]
    for k, v in feature_columns("loans").items()
    if k not in ("loan_id", "defaulted")
}


def _load(model: TrainedModel) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(model.model.saved_model_dir))


def _spec() -> dict[str, Any]:
    from batch.contract.contract import load_contract
    from training.dataset import feature_spec

    return feature_spec(load_contract("loans"))


def _raw_spec() -> dict[str, Any]:
    return {k: v for k, v in _spec().items() if k not in ("loan_id", "defaulted")}


def _rows(model: TrainedModel, count: int) -> pa.Table:
    from batch.contract.contract import load_contract
    from training import dataset

    files = dataset.parquet_files(model.data_dir)
    table = dataset.read_rows(files, _spec(), count)
    return dataset.clean_rows(table, load_contract("loans")).table


def test_registered_with_metadata(trained_model: TrainedModel) -> None:
    from training import trainer as train

    model = trained_model.model
    assert model.label == "loan_default@1"
    assert ModelRepository(trained_model.repo).resolve("loan_default@latest") == model
    meta = read_json(model.saved_model_dir.parent / "metadata.json")
    assert (model.saved_model_dir.parent / "transform_output" / "transform_fn").is_dir()

    assert meta["signature"]["inputs"] == {
        name: {"dtype": dtype, "shape": [None]} for name, dtype in RAW_FEATURES.items()
    }
    assert meta["signature"]["outputs"] == {
        "default_probability": {"dtype": "float32", "shape": [None]}
    }
    recorded = SignatureInfo.from_json(meta["signature"])
    assert set(recorded.inputs) == set(RAW_FEATURES)
    training = meta["training"]
    assert training["rows_used"] == TRAINED_ROWS
    assert training["rows_dropped_dirty"] == 100  # 20,000 * 0.005
    assert training["train_rows"] + training["heldout_rows"] == TRAINED_ROWS - 100
    assert 0.05 < training["heldout_rows"] / training["train_rows"] < 0.2
    files = train.parquet_files(trained_model.data_dir)
    assert training["data_fingerprint"] == train.data_fingerprint(trained_model.data_dir, files)
    assert training["epochs"] == 1 and training["seed"] == 7
    metrics = meta["metrics"]
    assert metrics["heldout_auc"] > 0.75
    assert 0.0 < metrics["heldout_log_loss"] < 0.45
    assert set(meta["framework"]) >= {"tensorflow", "tensorflow_transform", "tf_keras"}
    assert meta["key_columns"] == ["loan_id"]
    assert meta["label"] == "defaulted"


def test_signature_takes_raw_1d_columns_named_like_parquet(trained_model: TrainedModel) -> None:
    import tensorflow as tf

    loaded = _load(trained_model)
    assert set(loaded.signatures) == {
        "serving_default",
        "serving_tf_example",
        "transform_features",
    }
    dtypes = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}
    for signature in ("serving_default", "transform_features"):
        args, kwargs = loaded.signatures[signature].structured_input_signature
        assert args == ()
        assert set(kwargs) == set(RAW_FEATURES)
        for name, spec in kwargs.items():
            assert spec.name == name
            assert spec.shape.as_list() == [None]
            assert spec.dtype == dtypes[RAW_FEATURES[name]], name
    outputs = loaded.signatures["serving_default"].structured_outputs
    assert list(outputs) == ["default_probability"]
    assert outputs["default_probability"].shape.as_list() == [None]
    assert outputs["default_probability"].dtype == tf.float32


def test_saved_model_scores_rows(trained_model: TrainedModel) -> None:
    from training import trainer as train

    rows = _rows(trained_model, 3_000)
    loaded = _load(trained_model)
    scores = loaded.signatures["serving_default"](**train.raw_inputs(rows, _raw_spec()))
    probability = scores["default_probability"].numpy()
    assert probability.shape == (rows.num_rows,)
    assert np.all((probability >= 0) & (probability <= 1))
    labels = rows.column("defaulted").to_numpy()
    assert train.auc(labels, probability) > 0.75


def test_dirty_values_do_not_crash_the_served_transform(trained_model: TrainedModel) -> None:
    from training import trainer as train

    clean = generate(4, seed=1).to_pylist()
    clean[0].update(applicant_age=240, credit_score=9999, annual_income=-52000.0)
    clean[1].update(home_ownership="RENT;DROP", channel="web<script>", state="N@")
    clean[2].update(employer_id="EMP0047€", product_code="PL-GOLD 07€", loan_purpose="???")
    clean[3].update(product_code="", employer_id="never-seen", debt_to_income=1e30)
    table = pa.Table.from_pylist(clean, schema=generate(1, seed=1).schema)
    loaded = _load(trained_model)
    probability = loaded.signatures["serving_default"](**train.raw_inputs(table, _raw_spec()))
    values = probability["default_probability"].numpy()
    assert values.shape == (4,)
    assert np.all(np.isfinite(values))


def test_transform_parity_training_vs_serving(trained_model: TrainedModel) -> None:
    """tf.Transform's Beam output at training equals the exported graph at serving."""
    from training import trainer as train

    rows = _rows(trained_model, 2_000)
    expected = train.tft_transform_rows(
        rows, trained_model.transform_output_dir, _spec(), "loan_id"
    )
    loaded = _load(trained_model)
    served = loaded.signatures["transform_features"](**train.raw_inputs(rows, _raw_spec()))
    assert set(served) <= set(expected)
    assert len(served) >= 20
    for name, tensor in served.items():
        got = tensor.numpy()
        want = expected[name]
        assert got.shape == want.shape == (rows.num_rows,), name
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6, err_msg=name)


def test_clean_training_rows_drops_each_kind_of_dirt() -> None:
    from batch.contract.contract import load_contract
    from training import dataset

    table = generate(6, seed=3).to_pylist()
    table[1]["applicant_age"] = None
    table[2]["credit_score"] = 9999
    table[3]["home_ownership"] = "RENT;DROP"
    table[4]["product_code"] = "PL-GOLD 07€"
    raw = pa.Table.from_pylist(table, schema=generate(1, seed=3).schema)
    spec_table = dataset.cast_to_spec(raw, _spec())
    result = dataset.clean_rows(spec_table, load_contract("loans"))
    assert result.dropped == 4
    assert result.table.num_rows == 2
    assert result.reasons == {
        "bad_characters": 1,
        "null_value": 1,
        "out_of_range": 1,
        "unseen_category": 1,
    }


def test_input_errors_name_file_column_and_fix(tmp_path: Path) -> None:
    from batch.contract.contract import load_contract
    from training import dataset

    contract = load_contract("loans")

    def check(folder: Path) -> None:
        dataset.check_files(dataset.parquet_files(folder), contract, _spec(), "defaulted")

    with pytest.raises(UsageError, match="make_demo"):
        check(tmp_path / "missing")
    table = generate(10, seed=1)
    bad = table.set_column(
        table.schema.get_field_index("credit_score"),
        "credit_score",
        table.column("credit_score").cast(pa.string()),
    )
    pq.write_table(bad, tmp_path / "part.parquet")
    with pytest.raises(
        InputDataError, match=r"part\.parquet: column 'credit_score' expected int64"
    ):
        check(tmp_path)
    pq.write_table(table.drop_columns(["state"]), tmp_path / "part.parquet")
    with pytest.raises(InputDataError, match="missing state"):
        check(tmp_path)
    pq.write_table(table.drop_columns(["defaulted"]), tmp_path / "part.parquet")
    with pytest.raises(InputDataError, match="label column 'defaulted'"):
        check(tmp_path)


def test_command_line_help(capsys: pytest.CaptureFixture[str]) -> None:
    from jobs import train

    with pytest.raises(SystemExit) as exit_info:
        train.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in (
        "--input",
        "--model_repo",
        "--name",
        "--train_rows",
        "--epochs",
        "--seed",
        "--batch_size",
        "pipeline options",
    ):
        assert option in text
