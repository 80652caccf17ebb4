"""Input shapes Keras writes, chosen signatures and the type conversion table, end to end.

Every model here is exported the way its users export it (tests/model_zoo.py); every
scored run must equal a direct call of the signature within 1e-6, every key once.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.model.loading import import_tensorflow, session_callable
from batch.model.signature import CONVERSIONS, InputColumn, castable, column_problem
from batch.output.commit import CommittedRun, list_committed_runs
from tests.conftest import score, score_in_a_new_process
from tests.model_zoo import (
    build_keras3_model,
    build_predict_only_model,
    build_ragged_signature_model,
    build_sparse_signature_model,
    build_tf_keras_model,
    signature_call,
)

ROWS = 500
README = Path(__file__).resolve().parent.parent / "README.md"


def _only_run(output: Path) -> CommittedRun:
    (run,) = list_committed_runs(output)
    return run


def _write(folder: Path, table: pa.Table) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), folder / "part-0.parquet", row_group_size=100)
    pq.write_table(table.slice(half), folder / "part-1.parquet", row_group_size=100)
    return folder


def _scored(run: CommittedRun, key: str = "id") -> pa.Table:
    predictions = pq.read_table(run.run_dir / "predictions").sort_by(key)
    assert predictions[key].to_pylist() == list(range(ROWS)), "every key exactly once"
    return predictions


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {
        "keras3": build_keras3_model(root / "keras3"),
        "tf_keras": build_tf_keras_model(root / "tf_keras"),
        "predict": build_predict_only_model(root / "predict"),
        "sparse": build_sparse_signature_model(root / "sparse"),
        "ragged": build_ragged_signature_model(root / "ragged"),
    }


def _keras3_table() -> pa.Table:
    rng = np.random.default_rng(1)
    n = rng.integers(-5, 5, ROWS)
    n[7] = 2**24 + 1  # int64 into float32: rounded to 2^24, as documented
    return pa.table(
        {
            "id": pa.array(np.arange(ROWS), pa.int64()),
            "x": pa.array(rng.normal(size=ROWS), pa.float64()),
            "n": pa.array(n, pa.int64()),
            "v": pa.FixedSizeListArray.from_arrays(
                pa.array(rng.normal(size=ROWS * 3), pa.float64()), 3
            ),
        }
    )


def test_keras3_inputs_of_shape_1_and_3_take_plain_and_fixed_size_list_columns(
    models: dict[str, Path], tmp_path: Path
) -> None:
    table = _keras3_table()
    data = _write(tmp_path / "in", table)
    assert score(data, tmp_path / "out", "--key_columns=id", model=models["keras3"]) == 0
    predictions = _scored(_only_run(tmp_path / "out"))
    expected = signature_call(
        models["keras3"],
        {
            "x": table["x"].to_numpy().astype(np.float32).reshape(-1, 1),
            "n": table["n"].to_numpy().astype(np.float32).reshape(-1, 1),
            "v": np.stack(table["v"].to_numpy(zero_copy_only=False)).astype(np.float32),
        },
    )["output_0"]
    np.testing.assert_allclose(
        predictions["output_0"].to_numpy(), expected.reshape(-1), atol=1e-6, rtol=0
    )


@pytest.mark.slow
def test_keras3_model_on_spark_takes_the_fixed_size_list_column(
    models: dict[str, Path], tmp_path: Path
) -> None:
    table = _keras3_table()
    data = _write(tmp_path / "in", table)
    rc = score(
        data,
        tmp_path / "out",
        "--key_columns=id",
        "--runner=PySparkRunner",
        "--spark_master=local[2]",
        model=models["keras3"],
    )
    assert rc == 0
    spark = _scored(_only_run(tmp_path / "out"))
    assert score(data, tmp_path / "beam", "--key_columns=id", model=models["keras3"]) == 0
    beam = _scored(_only_run(tmp_path / "beam"))
    np.testing.assert_allclose(
        spark["output_0"].to_numpy(), beam["output_0"].to_numpy(), atol=1e-6, rtol=0
    )


def _tf_keras_table() -> pa.Table:
    rng = np.random.default_rng(2)
    return pa.table(
        {
            "id": pa.array(np.arange(ROWS), pa.int64()),
            "x": pa.array(rng.normal(size=ROWS), pa.float32()),
            "n": pa.array(rng.integers(0, 9, ROWS), pa.int32()),
            "s": pa.array([f"v{'z' * (i % 7)}" for i in range(ROWS)], pa.string()),
        }
    )


def test_tf_keras_inputs_of_shape_1_with_int_and_string_and_a_two_value_output(
    models: dict[str, Path], tmp_path: Path
) -> None:
    table = _tf_keras_table()
    data = _write(tmp_path / "in", table)
    assert score(data, tmp_path / "out", "--key_columns=id", model=models["tf_keras"]) == 0
    predictions = _scored(_only_run(tmp_path / "out"))
    assert predictions.schema.field("probs").type == pa.list_(pa.float32(), 2)
    expected = signature_call(
        models["tf_keras"],
        {
            "x": table["x"].to_numpy().reshape(-1, 1),
            "n": table["n"].to_numpy().astype(np.int64).reshape(-1, 1),
            "s": np.array(table["s"].to_pylist(), dtype=object).reshape(-1, 1),
        },
    )["probs"]
    got = np.stack(predictions["probs"].to_numpy(zero_copy_only=False))
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    ("name", "table", "output"),
    [("keras3", _keras3_table, "output_0"), ("tf_keras", _tf_keras_table, "probs")],
)
def test_a_job_process_scores_keras_exports_without_importing_keras(
    models: dict[str, Path],
    tmp_path: Path,
    name: str,
    table: Callable[[], pa.Table],
    output: str,
) -> None:
    """A job's own process imports TensorFlow without Keras (batch.core.imports): the
    Keras 3 ``model.export`` and tf-keras ``model.save`` SavedModels load and score as in
    this test process, where Keras is loaded."""
    data = _write(tmp_path / "in", table())
    assert score(data, tmp_path / "here", "--key_columns=id", model=models[name]) == 0
    # On Beam (a job this small is otherwise scored without it: batch.engine.local).
    rc, err, imported = score_in_a_new_process(
        data, tmp_path / "new", "--key_columns=id", "--in_process_rows=0", model=models[name]
    )
    assert rc == 0, err
    assert not imported & {"keras", "tf_keras"}, "Keras was imported"
    assert "tensorflow" in imported and "apache_beam" in imported
    here = _scored(_only_run(tmp_path / "here"))[output].to_pylist()
    assert _scored(_only_run(tmp_path / "new"))[output].to_pylist() == here


class TestChosenSignature:
    def test_a_model_with_only_predict_fails_naming_it(
        self, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        table = pa.table({"id": pa.array(range(ROWS)), "amount": pa.array(np.arange(ROWS) / 3)})
        data = _write(tmp_path / "in", table)
        assert score(data, tmp_path / "out", "--key_columns=id", model=models["predict"]) == 2
        err = capsys.readouterr().err
        assert "it has no signature 'serving_default'; its signatures are predict." in err
        assert "--signature=NAME" in err

    def test_signature_predict_scores_with_it(
        self, models: dict[str, Path], tmp_path: Path
    ) -> None:
        table = pa.table({"id": pa.array(range(ROWS)), "amount": pa.array(np.arange(ROWS) / 3)})
        data = _write(tmp_path / "in", table)
        rc = score(
            data,
            tmp_path / "out",
            "--key_columns=id",
            "--signature=predict",
            model=models["predict"],
        )
        assert rc == 0
        run = _only_run(tmp_path / "out")
        predictions = _scored(run)
        expected = signature_call(
            models["predict"],
            {"amount": table["amount"].to_numpy().astype(np.float32)},
            signature="predict",
        )["doubled"]
        np.testing.assert_allclose(predictions["doubled"].to_numpy(), expected, atol=1e-6, rtol=0)
        assert run.manifest().to_json()["model"]["serving"]["signature"] == "predict"

    def test_a_canary_is_checked_and_scored_with_the_chosen_signature(
        self, models: dict[str, Path], tmp_path: Path
    ) -> None:
        """--signature applies to both models of a canary run (neither has serving_default)."""
        from batch.demo.paths import ensure_signing_key
        from batch.model.signing import sign_model

        canary = tmp_path / "canary"
        shutil.copytree(models["predict"], canary)
        (canary / "assets.extra").mkdir(exist_ok=True)
        (canary / "assets.extra" / "build.txt").write_text("another build, same function")
        sign_model(canary, ensure_signing_key())
        table = pa.table({"id": pa.array(range(ROWS)), "amount": pa.array(np.arange(ROWS) / 3)})
        data = _write(tmp_path / "in", table)
        rc = score(
            data,
            tmp_path / "out",
            "--key_columns=id",
            "--signature=predict",
            f"--canary={canary}",
            "--canary_fraction=0.5",
            model=models["predict"],
        )
        assert rc == 0
        run = _only_run(tmp_path / "out")
        predictions = _scored(run)
        np.testing.assert_allclose(
            predictions["doubled"].to_numpy(),
            table["amount"].to_numpy().astype(np.float32) * 2 + 1,
            atol=1e-6,
            rtol=0,
        )
        by_model = run.manifest().to_json()["canary"]["rows_scored"]
        assert sum(by_model.values()) == ROWS and len(by_model) == 2

    @pytest.mark.slow
    def test_signature_predict_reaches_spark_workers(
        self, models: dict[str, Path], tmp_path: Path
    ) -> None:
        table = pa.table({"id": pa.array(range(ROWS)), "amount": pa.array(np.arange(ROWS) / 3)})
        data = _write(tmp_path / "in", table)
        rc = score(
            data,
            tmp_path / "out",
            "--key_columns=id",
            "--signature=predict",
            "--runner=PySparkRunner",
            "--spark_master=local[2]",
            model=models["predict"],
        )
        assert rc == 0
        predictions = _scored(_only_run(tmp_path / "out"))
        expected = (table["amount"].to_numpy().astype(np.float32) * 2.0 + 1.0).astype(np.float32)
        np.testing.assert_allclose(predictions["doubled"].to_numpy(), expected, atol=1e-6, rtol=0)

    def test_a_tag_the_model_lacks_is_named(
        self, models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        table = pa.table({"id": pa.array(range(ROWS)), "amount": pa.array(np.arange(ROWS) / 3)})
        data = _write(tmp_path / "in", table)
        rc = score(
            data, tmp_path / "out", "--key_columns=id", "--tag=serve,gpu", model=models["predict"]
        )
        assert rc == 2
        assert "no MetaGraph tagged 'gpu,serve'; it has serve." in capsys.readouterr().err


@pytest.mark.parametrize(
    "values",
    [
        pa.array([[1, 2], None, [], [7], [3, 4, 5]] * (ROWS // 5), pa.list_(pa.int64())),
        pa.array([4, None, 6, None, 9] * (ROWS // 5), pa.int32()),
    ],
    ids=["list column", "nullable plain column"],
)
def test_a_sparse_tensor_input_takes_a_list_or_nullable_column(
    models: dict[str, Path], values: pa.Array, tmp_path: Path
) -> None:
    table = pa.table({"id": pa.array(np.arange(ROWS), pa.int64()), "tags_ids": values})
    data = _write(tmp_path / "in", table)
    assert score(data, tmp_path / "out", "--key_columns=id", model=models["sparse"]) == 0
    predictions = _scored(_only_run(tmp_path / "out"))
    tf = import_tensorflow()
    rows = [[] if v is None else (v if isinstance(v, list) else [v]) for v in values.to_pylist()]
    sparse = tf.ragged.constant(rows, dtype=tf.int64).to_sparse()
    expected = tf.saved_model.load(str(models["sparse"])).serve(sparse)["total"].numpy()
    assert predictions["total"].to_numpy().tolist() == expected.tolist()


@pytest.mark.parametrize(
    "values",
    [
        pa.array([[1.5, 2.0], None, [], [7.0], [3.0, None, 5.0]] * (ROWS // 5)),
        pa.array([4, None, 6, None, 9] * (ROWS // 5), pa.int64()),
    ],
    ids=["list column", "nullable plain column"],
)
def test_a_ragged_tensor_input_takes_a_list_or_nullable_column(
    models: dict[str, Path], values: pa.Array, tmp_path: Path
) -> None:
    bias = np.linspace(-1, 1, ROWS).astype(np.float32)
    table = pa.table({"id": pa.array(np.arange(ROWS), pa.int64()), "words": values, "bias": bias})
    data = _write(tmp_path / "in", table)
    assert score(data, tmp_path / "out", "--key_columns=id", model=models["ragged"]) == 0
    predictions = _scored(_only_run(tmp_path / "out"))
    tf = import_tensorflow()

    def present(row: object) -> list[object]:
        values = [] if row is None else (row if isinstance(row, list) else [row])
        return [v for v in values if v is not None]  # a null inside a list is no value

    rows = [present(v) for v in values.to_pylist()]
    ragged = tf.ragged.constant(rows, dtype=tf.float32, ragged_rank=1)
    direct = tf.saved_model.load(str(models["ragged"])).serve(ragged, tf.constant(bias))
    np.testing.assert_allclose(predictions["total"].to_numpy(), direct["total"].numpy(), atol=1e-6)


def test_a_ragged_input_of_rank_two_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_ragged_signature_model(tmp_path / "deep", ragged_rank=2)
    table = pa.table({"id": pa.array(np.arange(ROWS), pa.int64()), "bias": np.zeros(ROWS)})
    data = _write(tmp_path / "in", table)
    assert score(data, tmp_path / "out", "--key_columns=id", model=model) == 2
    err = capsys.readouterr().err
    assert "input 'words' is a RaggedTensor of ragged rank 2" in err
    assert "Export that, or one string input of serialized tf.Examples" in err
    assert not (tmp_path / "out").exists() or not list_committed_runs(tmp_path / "out")


class TestShapeProblemsBeforeCompute:
    @pytest.mark.parametrize(
        ("column", "message"),
        [
            (
                pa.array(np.zeros(ROWS)),
                "column 'v' is double, one value a row; the model expects float32, 3 values a "
                "row: a fixed-size list column of 3",
            ),
            (
                pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(ROWS * 2)), 2),
                "column 'v' is fixed_size_list<double>[2], 2 values a row; the model "
                "expects float32, 3 values a row",
            ),
            (
                pa.array([[1.0, 2.0, 3.0]] * ROWS, pa.list_(pa.float64())),
                "column 'v' is list<double> (a variable number of values a row); the "
                "model expects float32, 3 values a row: a fixed-size list of 3",
            ),
        ],
        ids=["plain column", "list of 2", "variable list"],
    )
    def test_a_column_of_the_wrong_width_is_named(
        self,
        models: dict[str, Path],
        column: pa.Array,
        message: str,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        table = _keras3_table().set_column(3, "v", column)
        data = _write(tmp_path / "in", table)
        assert score(data, tmp_path / "out", "--key_columns=id", model=models["keras3"]) == 2
        err = capsys.readouterr().err
        assert message in err
        assert "part-0.parquet" in err and "part-1.parquet" in err


class TestConversionTable:
    def test_the_readme_table_is_the_code_table(self) -> None:
        text = README.read_text()
        section = text[text.index("### Type conversions") :]
        for dtype, (types, how) in CONVERSIONS.items():
            row = f"| `{dtype}` | {', '.join(str(t) for t in types)} | {how} |"
            assert row in section, f"README's conversion row for {dtype} differs:\n{row}"

    @pytest.mark.parametrize(
        ("found", "dtype", "ok"),
        [
            (pa.int64(), "float32", True),
            (pa.uint64(), "float32", True),
            (pa.int32(), "float64", True),
            (pa.float64(), "float32", True),
            (pa.float32(), "int64", False),
            (pa.float64(), "int32", False),
            (pa.uint64(), "int64", False),
            (pa.int64(), "int32", False),
            (pa.binary(), "string", True),
            (pa.string(), "float32", False),
        ],
    )
    def test_castable(self, found: pa.DataType, dtype: str, ok: bool) -> None:
        assert castable(found, dtype) is ok

    def test_float_to_int_names_found_expected_and_the_fix(self) -> None:
        problem = column_problem(pa.field("n", pa.float64()), InputColumn("int64"))
        assert problem == (
            "is double; the model expects int64: a float column never feeds an integer input "
            "(it would truncate values); round and cast the column to an integer type, or "
            "export the model with a float input"
        )


def test_a_session_callable_checks_shapes_and_gives_what_session_run_gives() -> None:
    """batch.model.loading.session_callable, the model's call without session.run's
    per-call Python: the same outputs as session.run, a value converted to its
    placeholder's dtype, a value of another shape refused before any op takes it, and
    one made after nodes were added (the per-value graph) runs them while an earlier one
    still runs."""
    tf = import_tensorflow()
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 3], name="x")
        words = tf.compat.v1.placeholder(tf.string, [None], name="words")
        total = tf.reduce_sum(x, axis=1) + tf.cast(tf.strings.length(words), tf.float32)
        session = tf.compat.v1.Session(graph=graph)
        call = session_callable(session, [total], [x, words])
        later = tf.identity(total * 2.0)  # added after the first callable was made
        twice = session_callable(session, [later], [x, words])
    values = np.arange(6, dtype=np.float64).reshape(2, 3)  # float64: converted to float32
    texts = np.array([b"ab", b"cde"], dtype=object)
    expected = session.run(total, {x: values, words: texts})
    (found,) = call(values, texts)
    assert found.dtype == np.float32 and found.tolist() == expected.tolist() == [5.0, 15.0]
    assert twice(values, texts)[0].tolist() == [10.0, 30.0]
    with pytest.raises(ValueError, match=r"shape \(2, 4\) to x:0, which has shape \[None, 3\]"):
        call(np.zeros((2, 4)), texts)
    with pytest.raises(ValueError, match="words:0"):
        call(values, texts.reshape(2, 1))
