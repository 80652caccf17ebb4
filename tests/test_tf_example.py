"""Models that take serialized tf.Examples (TFX's serve_tf_examples_fn), scored from columns.

The model is exported the TFX way (tests/model_zoo.py): tf.Transform analysed on Beam, a
tf-keras model, ``serving_default`` parsing tf.Examples with the raw feature spec. The
data has missing values in four columns. Predictions on Beam and on Spark must equal a
direct call of the signature on tf.Examples built with ``tf.train.Example`` (a null left
out), within 1e-6, every key once.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch.core.errors import ModelError
from batch.engine.scorer import serialized_examples
from batch.model.loading import ServingFunction, import_tensorflow
from batch.model.signature import ExampleFeature, InputColumn, SignatureChoice
from batch.output.commit import CommittedRun, list_committed_runs
from tests.conftest import score, score_in_a_new_process
from tests.model_zoo import (
    REVIEWS_KEY,
    REVIEWS_LABEL,
    build_tfx_example_model,
    signature_call,
    tf_examples,
    write_reviews_data,
)

FEATURES = ("age", "city", "income", "rating", "tags")
BUDGET = "--max_error_rate=0.01"


class Reviews:
    def __init__(self, data: Path, table: pa.Table, model: Path) -> None:
        self.data, self.table, self.model = data, table, model


@pytest.fixture(scope="module")
def reviews(tmp_path_factory: pytest.TempPathFactory) -> Reviews:
    root = tmp_path_factory.mktemp("reviews")
    table = write_reviews_data(root / "train")
    model = build_tfx_example_model(root, table.filter(pc.is_valid(table["income"])))
    # Scoring data: the same rows without the label, which the model does not parse.
    scoring = root / "score"
    scoring.mkdir()
    for path in sorted((root / "train").glob("*.parquet")):
        pq.write_table(pq.read_table(path).drop_columns([REVIEWS_LABEL]), scoring / path.name)
    return Reviews(scoring, table.drop_columns([REVIEWS_LABEL]), model)


def _only_run(output: Path) -> CommittedRun:
    (run,) = list_committed_runs(output)
    return run


def _expected(reviews: Reviews, keys: np.ndarray) -> np.ndarray:
    rows = reviews.table.take(pa.array(keys))
    outputs = signature_call(reviews.model, {"examples": tf_examples(rows, FEATURES)})
    return np.asarray(outputs["outputs"]).reshape(-1)


def _check_run(reviews: Reviews, run: CommittedRun) -> None:
    predictions = pq.read_table(run.run_dir / "predictions")
    rejected = pq.read_table(run.run_dir / "rejected")
    keys = [*predictions[REVIEWS_KEY].to_pylist(), *rejected[REVIEWS_KEY].to_pylist()]
    assert sorted(keys) == list(range(reviews.table.num_rows)), "every key exactly once"
    # Only the required feature without a default (income) rejects a null.
    assert set(rejected["reject_reason"].to_pylist()) == {"null_value"}
    assert rejected[REVIEWS_KEY].to_pylist() == sorted(
        np.flatnonzero(reviews.table["income"].is_null().to_numpy(zero_copy_only=False)).tolist()
    )
    scored_keys = predictions[REVIEWS_KEY].to_numpy()
    got = predictions["outputs"].to_numpy()
    np.testing.assert_allclose(got, _expected(reviews, scored_keys), atol=1e-6, rtol=0)
    serving = run.manifest().to_json()["model"]["serving"]
    assert serving["input"] == "tf_example"
    assert sorted(serving["columns"]) == sorted(FEATURES)


@pytest.mark.slow
def test_beam_scores_like_a_direct_call_on_tf_examples(reviews: Reviews, tmp_path: Path) -> None:
    rc = score(
        reviews.data,
        tmp_path / "out",
        f"--key_columns={REVIEWS_KEY}",
        BUDGET,
        "--batch_size=100",
        model=reviews.model,
    )
    assert rc == 0
    _check_run(reviews, _only_run(tmp_path / "out"))


def test_a_job_process_scores_the_tfx_export_without_importing_keras(
    reviews: Reviews, tmp_path: Path
) -> None:
    """A job's own process imports TensorFlow without Keras (batch.core.imports); the
    TFX-style export (tf-keras, compiled with its optimizer, a tf.Transform layer) loads
    and scores like a direct call of its signature."""
    rc, err, imported = score_in_a_new_process(
        reviews.data,
        tmp_path / "out",
        f"--key_columns={REVIEWS_KEY}",
        BUDGET,
        model=reviews.model,
    )
    assert rc == 0, err
    assert not imported & {"keras", "tf_keras"}, "Keras was imported"
    _check_run(reviews, _only_run(tmp_path / "out"))


@pytest.mark.slow
def test_spark_scores_like_a_direct_call_on_tf_examples(reviews: Reviews, tmp_path: Path) -> None:
    rc = score(
        reviews.data,
        tmp_path / "out",
        f"--key_columns={REVIEWS_KEY}",
        BUDGET,
        "--runner=PySparkRunner",
        "--spark_master=local[2]",
        model=reviews.model,
    )
    assert rc == 0
    _check_run(reviews, _only_run(tmp_path / "out"))


def test_the_parsed_features_are_read_from_the_graph(reviews: Reviews) -> None:
    tf = import_tensorflow()
    signature = ServingFunction(tf, reviews.model, "reviews").signature
    assert signature.examples == {
        "age": ExampleFeature("float32", "sparse"),
        "city": ExampleFeature("string", "sparse"),
        "income": ExampleFeature("int64", "dense", (), has_default=False),
        "rating": ExampleFeature("float32", "dense", (), has_default=True),
        "tags": ExampleFeature("string", "sparse"),
    }
    assert signature.example_input == "examples"
    assert signature.optional_columns() == {"age", "city", "rating", "tags"}


class TestColumnsThatCannotFeedTheExamplesFailBeforeCompute:
    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (
                {"drop": "city"},
                "column 'city' is missing; the model expects it as a tf.Example bytes_list "
                "feature (string, any number of values a row, may be null) (its tf.Example "
                "input 'examples' is built from the columns named like the features it parses)",
            ),
            (
                {"income": pa.array(np.linspace(1, 2, 300), pa.float64())},
                "column 'income' is double; the model expects a tf.Example int64_list feature "
                "(int64): a float column never feeds an integer input",
            ),
        ],
        ids=["missing", "float into int64_list"],
    )
    def test_the_problem_is_named(
        self,
        reviews: Reviews,
        change: dict[str, object],
        message: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        data = tmp_path / "in"
        data.mkdir()
        for path in sorted(reviews.data.glob("*.parquet")):
            table = pq.read_table(path)
            if "drop" in change:
                table = table.drop_columns([str(change["drop"])])
            for name, values in change.items():
                if name != "drop":
                    table = table.set_column(table.schema.get_field_index(name), name, values)
            pq.write_table(table, data / path.name)
        rc = score(data, tmp_path / "out", f"--key_columns={REVIEWS_KEY}", model=reviews.model)
        err = capsys.readouterr().err
        assert rc == 2
        assert "2 input problem(s)" in err
        assert message in err
        assert not list_committed_runs(tmp_path / "out")


def test_input_format_columns_feeds_the_string_input_from_its_column(
    reviews: Reviews, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = score(
        reviews.data,
        tmp_path / "out",
        f"--key_columns={REVIEWS_KEY}",
        "--input_format=columns",
        model=reviews.model,
    )
    assert rc == 2
    assert "column 'examples' is missing; the model expects it as string" in (
        capsys.readouterr().err
    )


def test_input_format_tf_example_refuses_a_model_that_parses_none(plain_model: Path) -> None:
    tf = import_tensorflow()
    with pytest.raises(ModelError, match=re.escape("--input_format=tf_example, but the")):
        ServingFunction(tf, plain_model, "plain", SignatureChoice(input_format="tf_example"))


def test_examples_are_those_tf_train_example_builds() -> None:
    """The encoder's bytes parse to what tf.train.Example's bytes parse to (proto field
    order may differ, so the parsed values are compared): nulls, negative and large
    integers, long strings and long lists (lengths of several varint bytes), empty
    lists, nulls inside lists, integers into float_list."""
    tf = import_tensorflow()
    long_text = "x" * 300 + "é"
    table = pa.table(
        {
            "i": pa.array([1, None, -(2**40), 2**62], pa.int64()),
            "f": pa.array([0.5, 1.25, None, -3.0], pa.float64()),
            "s": pa.array(["a", None, "été", long_text], pa.string()),
            "b": pa.array([b"\x00\xff", b"", None, b"z" * 200], pa.binary()),
            "l": pa.array(
                [[1.0, 2.0], None, [], [float(v) for v in range(70)]], pa.list_(pa.float32())
            ),
            "il": pa.array([[5, -1], [], None, list(range(-40, 40))], pa.list_(pa.int64())),
            "sl": pa.array([["p", "q"], [long_text] * 3, [], None], pa.list_(pa.string())),
            "n": pa.array([3, 2**24 + 1, None, 7], pa.int64()),
        }
    )
    kinds = {"i": "int64", "f": "float32", "s": "string", "b": "string", "l": "float32"}
    kinds |= {"il": "int64", "sl": "string", "n": "float32"}
    columns = {
        name: InputColumn(dtype, None, required=False, example=True)
        for name, dtype in kinds.items()
    }
    tf_types = {"int64": tf.int64, "float32": tf.float32, "string": tf.string}
    spec = {name: tf.io.VarLenFeature(tf_types[dtype]) for name, dtype in kinds.items()}
    ours = serialized_examples(table.to_batches()[0], columns).to_pylist()
    mine = tf.io.parse_example(tf.constant(ours), spec)
    reference_table = table.drop_columns(["b", "n"]).append_column(
        "n", pa.array([3.0, float(np.float32(2**24 + 1)), None, 7.0], pa.float32())
    )
    names = ["i", "f", "s", "l", "il", "sl", "n"]
    theirs = tf.io.parse_example(
        tf.constant(tf_examples(reference_table, names)), {k: spec[k] for k in names}
    )
    for name in names:
        for part in ("indices", "values", "dense_shape"):
            assert getattr(mine[name], part).numpy().tolist() == (
                getattr(theirs[name], part).numpy().tolist()
            ), (name, part)
    assert tf.sparse.to_dense(mine["b"], default_value=b"?").numpy().tolist() == [
        [b"\x00\xff"],
        [b""],
        [b"?"],
        [b"z" * 200],
    ]
