"""The generic training job (issue 16): both example datasets through `python -m jobs.train`,
transform parity with optional features, a user module from PYTHONPATH, and the errors
that come before Beam starts."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core.fsutil import read_json
from batch.demo.deliveries import write_deliveries
from batch.model.repository import ModelRepository
from batch.model.resolved import ResolvedModel

pytestmark = pytest.mark.slow

ROWS = 6_000
PROJECT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Deliveries:
    data: Path  # training data, with missing values
    complete: Path  # scoring data, every optional value present
    repo: Path
    model: ResolvedModel


def _train_args(data: Path, repo: Path, *extra: str) -> list[str]:
    return [
        f"--input={data}",
        "--contract=deliveries",
        "--preprocessing_fn=transforms.deliveries:preprocessing_fn",
        "--name=delivery_minutes",
        f"--model_repo={repo}",
        f"--train_rows={ROWS}",
        "--epochs=4",
        *extra,
    ]


@pytest.fixture(scope="module")
def deliveries(tmp_path_factory: pytest.TempPathFactory) -> Deliveries:
    from jobs import train

    root = tmp_path_factory.mktemp("deliveries")
    data = write_deliveries(root / "data", rows=ROWS, files=2)
    complete = write_deliveries(
        root / "complete", rows=2_000, files=2, seed=5, missing_fraction=0, dirty_fraction=0
    )
    assert train.main(_train_args(data, root / "models")) == 0
    model = ModelRepository(root / "models").resolve("delivery_minutes@1")
    return Deliveries(data, complete, root / "models", model)


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def _spec(contract: str = "deliveries") -> dict[str, Any]:
    from batch.contract.contract import load_contract
    from training.dataset import feature_spec

    return feature_spec(load_contract(contract))


def _raw_spec() -> dict[str, Any]:
    return {k: v for k, v in _spec().items() if k not in ("order_id", "delivery_minutes")}


def _load(model: ResolvedModel) -> Any:
    import tensorflow as tf

    return tf.saved_model.load(str(model.saved_model_dir))


def _with_missing(data: Path, rows: int) -> pa.Table:
    from training import dataset

    table = dataset.read_rows(dataset.parquet_files(data), _spec(), rows)
    table = table.filter(pa.array(np.asarray(table.column("distance_km")) >= 0))
    for name in ("weather", "courier_rating", "traffic_index"):
        assert table.column(name).null_count > 0, name
    return table


class TestDeliveriesThroughTheCommandLine:
    def test_registered_regression_with_lineage(self, deliveries: Deliveries) -> None:
        meta = read_json(deliveries.model.saved_model_dir.parent / "metadata.json")
        assert meta["task"] == {"task": "regression", "num_classes": 1}
        assert meta["label"] == "delivery_minutes" and meta["key_columns"] == ["order_id"]
        metrics = meta["metrics"]
        assert metrics["heldout_r2"] > 0.4, metrics
        assert metrics["heldout_rmse"] < 8.0, metrics
        assert meta["signature"]["outputs"] == {"prediction": {"dtype": "float32", "shape": [None]}}
        assert set(meta["signature"]["inputs"]) == set(_raw_spec())
        lineage = meta["lineage"]
        assert lineage["preprocessing_fn"]["module"] == "transforms.deliveries"
        assert lineage["model_fn"]["function"] == "default_model_fn"
        assert len(lineage["preprocessing_fn"]["sha256"]) == 64
        assert lineage["contract"]["name"] == "deliveries"
        assert lineage["hyperparameters"]["task"] == "regression"
        assert lineage["training_data"]["fingerprint"] == meta["training"]["data_fingerprint"]
        assert {"tensorflow", "tensorflow_transform", "apache_beam"} <= set(lineage["libraries"])

    def test_models_show_prints_the_lineage(
        self, deliveries: Deliveries, capsys: pytest.CaptureFixture[str]
    ) -> None:
        import json

        from jobs import models

        argv = ["show", "delivery_minutes@1", f"--model_repo={deliveries.repo}"]
        assert models.main(argv) == 0
        shown = json.loads(capsys.readouterr().out)
        lineage = shown["lineage"]
        assert lineage["preprocessing_fn"]["sha256"] == _sha256(
            PROJECT / "transforms" / "deliveries.py"
        )
        assert (
            lineage["contract"]["sha256"]
            == deliveries.model.metadata["lineage"]["contract"]["sha256"]
        )
        assert shown["repository"]["drift_baseline"]["rows"] == ROWS

    def test_version_carries_contract_and_baseline_inside_the_signed_folder(
        self, deliveries: Deliveries
    ) -> None:
        saved = deliveries.model.saved_model_dir
        embedded = saved / "assets.extra" / "batchscore_contract" / "deliveries"
        assert (embedded / "schema.pbtxt").read_bytes() == (
            PROJECT / "schemas" / "deliveries" / "schema.pbtxt"
        ).read_bytes()
        assert (saved / "assets.extra" / "batchscore_baseline.json").is_file()
        assert deliveries.model.metadata["contract"] == str(embedded.resolve())

    def test_signatures(self, deliveries: Deliveries) -> None:
        import tensorflow as tf

        loaded = _load(deliveries.model)
        assert set(loaded.signatures) == {
            "serving_default",
            "serving_tf_example",
            "transform_features",
        }
        _args, kwargs = loaded.signatures["serving_default"].structured_input_signature
        assert {name: spec.shape.as_list() for name, spec in kwargs.items()} == {
            name: [None] for name in _raw_spec()
        }
        _args, kwargs = loaded.signatures["serving_tf_example"].structured_input_signature
        assert list(kwargs) == ["examples"] and kwargs["examples"].dtype == tf.string

    def test_transform_parity_with_missing_values(self, deliveries: Deliveries) -> None:
        """tf.Transform's Beam output at training equals the served transform graph,
        rows with missing optional values included."""
        from training import trainer

        rows = _with_missing(deliveries.data, 1_500)
        expected = trainer.tft_transform_rows(
            rows,
            deliveries.model.saved_model_dir.parent / "transform_output",
            _spec(),
            "order_id",
        )
        served = _load(deliveries.model).signatures["transform_features"](
            **trainer.raw_inputs(rows, _raw_spec())
        )
        assert {"courier_rating_missing", "weather_id", "distance_bucket"} <= set(served)
        assert expected["courier_rating_missing"].sum() > 0
        for name, tensor in served.items():
            np.testing.assert_allclose(
                tensor.numpy(), expected[name], rtol=0, atol=1e-5, err_msg=name
            )

    def test_tf_example_signature_equals_raw_columns(self, deliveries: Deliveries) -> None:
        """A tf.Example without the feature (null) predicts what NaN / "" does on the
        raw-column signature."""
        import tensorflow as tf

        from training import trainer

        rows = _with_missing(deliveries.data, 400)
        loaded = _load(deliveries.model)
        raw = loaded.signatures["serving_default"](**trainer.raw_inputs(rows, _raw_spec()))
        examples = []
        for row in rows.select(list(_raw_spec())).to_pylist():
            feature = {}
            for name, value in row.items():
                if value is None:
                    continue
                if isinstance(value, str):
                    feature[name] = tf.train.Feature(
                        bytes_list=tf.train.BytesList(value=[value.encode()])
                    )
                elif isinstance(value, int):
                    feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
                else:
                    feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            examples.append(example.SerializeToString())
        parsed = loaded.signatures["serving_tf_example"](examples=tf.constant(examples))
        np.testing.assert_allclose(
            parsed["prediction"].numpy(), raw["prediction"].numpy(), rtol=0, atol=1e-5
        )

    def test_scored_on_beam_from_another_folder_with_drift(
        self, deliveries: Deliveries, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from batch.output.commit import list_committed_runs
        from batch.output.manifest import read_manifest
        from jobs import score
        from training import trainer

        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)  # the contract comes from inside the model
        out = tmp_path / "out"
        code = score.main(
            [
                f"--input={deliveries.complete}",
                "--model=delivery_minutes@1",
                f"--model_repo={deliveries.repo}",
                f"--output={out}",
                "--runner=DirectRunner",
            ]
        )
        assert code == 0
        (committed,) = list_committed_runs(out)
        run = committed.run_dir
        manifest = read_manifest(run)
        assert manifest.counts.rows_scored == 2_000
        scored = pq.read_table(run / "predictions").sort_by("order_id")
        assert scored.column("order_id").to_pylist() == sorted(set(scored["order_id"].to_pylist()))
        rows = pq.read_table(deliveries.complete).sort_by("order_id")
        direct = (
            _load(deliveries.model)
            .signatures["serving_default"](**trainer.raw_inputs(rows, _raw_spec()))["prediction"]
            .numpy()
        )
        np.testing.assert_allclose(scored.column("prediction").to_numpy(), direct, atol=1e-5)
        raw = read_json(run / "_MANIFEST.json")
        assert raw["contract"]["name"] == "deliveries"
        assert raw["drift"]["features"], raw["drift"]


def test_loans_demo_through_the_command_line(tmp_path: Path) -> None:
    """`python -m jobs.train` with the demo's defaults (no --contract) on small data."""
    from batch.demo.data import ensure_demo_data
    from jobs import train

    data = ensure_demo_data(tmp_path / "data", rows=4_000, days=1, seed=3, log=None)
    assert train.main([f"--input={data}", f"--model_repo={tmp_path / 'models'}",
                       "--train_rows=4000", "--epochs=1"]) == 0  # fmt: skip
    model = ModelRepository(tmp_path / "models").resolve("loan_default@1")
    meta = model.metadata
    assert meta["task"]["task"] == "binary"
    assert meta["metrics"]["heldout_auc"] > 0.6
    assert list(meta["signature"]["outputs"]) == ["default_probability"]
    assert meta["lineage"]["preprocessing_fn"]["module"] == "transforms.loans"


USER_MODULE = """
import tensorflow as tf
import tensorflow_transform as tft
import tf_keras


def preprocessing_fn(inputs):
    distance = tf.clip_by_value(inputs["distance_km"], 0.0, 100.0)
    return {
        "distance_z": tft.scale_to_z_score(distance),
        "prep_z": tft.scale_to_z_score(inputs["prep_minutes"]),
        "city_id": tft.compute_and_apply_vocabulary(inputs["city"], num_oov_buckets=1),
        "delivery_minutes": inputs["delivery_minutes"],
    }


def model_fn(tft_output, hyperparameters):
    spec = tft_output.transformed_feature_spec()
    inputs = {
        name: tf_keras.Input(shape=(1,), name=name, dtype=spec[name].dtype)
        for name in ("distance_z", "prep_z")
    }
    x = tf_keras.layers.Concatenate()(list(inputs.values()))
    start = tf_keras.initializers.Constant(hyperparameters["label_mean"])
    out = tf_keras.layers.Dense(1, bias_initializer=start, name=hyperparameters["output_name"])(x)
    model = tf_keras.Model(inputs, out)
    model.compile(optimizer=tf_keras.optimizers.Adam(0.05), loss="mse")
    return model
"""


def test_user_module_from_pythonpath(tmp_path: Path) -> None:
    """--preprocessing_fn and --model_fn from a folder outside the repository, on PYTHONPATH,
    through the real command line; a Keras `Input(shape=(1,))` model is fed [batch, 1]."""
    user = tmp_path / "user_code"
    user.mkdir()
    (user / "my_delivery_model.py").write_text(textwrap.dedent(USER_MODULE))
    data = write_deliveries(tmp_path / "data", rows=3_000, files=1)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(user), str(PROJECT)])}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.train",
            f"--input={data}",
            "--contract=deliveries",
            "--preprocessing_fn=my_delivery_model:preprocessing_fn",
            "--model_fn=my_delivery_model:model_fn",
            "--name=user_model",
            "--output_name=minutes",
            f"--model_repo={tmp_path / 'models'}",
            "--train_rows=3000",
            "--epochs=3",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model = ModelRepository(tmp_path / "models").resolve("user_model@1")
    assert model.metadata["lineage"]["model_fn"]["file"] == str(
        (user / "my_delivery_model.py").resolve()
    )
    assert list(model.metadata["signature"]["outputs"]) == ["minutes"]
    assert model.metadata["metrics"]["heldout_rmse"] < 15


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_deliveries(tmp_path_factory.mktemp("bad") / "data", rows=200, files=1)


class TestErrorsBeforeBeam:
    """Each is one line on stderr, exit 2, and Beam never starts."""

    @pytest.fixture()
    def no_beam(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from training import trainer

        def started(*_args: Any, **_kwargs: Any) -> Any:
            raise AssertionError("Beam started")

        monkeypatch.setattr(trainer, "analyze_and_transform", started)

    def _fails(self, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
        from jobs import train

        assert train.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        return err

    @pytest.mark.parametrize(
        ("function", "expected"),
        [
            ("transforms.deliveries", "expected MODULE:FUNCTION"),
            ("no_such_module_xyz:preprocessing_fn", "no module named 'no_such_module_xyz'"),
            ("transforms.deliveries:no_such_fn", "has no function 'no_such_fn'"),
        ],
    )
    def test_bad_module_path(
        self,
        function: str,
        expected: str,
        data: Path,
        tmp_path: Path,
        no_beam: None,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        argv = _train_args(data, tmp_path / "m")
        argv[2] = f"--preprocessing_fn={function}"
        err = self._fails(argv, capsys)
        assert "--preprocessing_fn=" in err and expected in err

    def test_label_missing_from_the_data(
        self, data: Path, tmp_path: Path, no_beam: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        folder = tmp_path / "nolabel"
        folder.mkdir()
        table = pq.read_table(data)
        pq.write_table(table.drop_columns(["delivery_minutes"]), folder / "part.parquet")
        err = self._fails(_train_args(folder, tmp_path / "m"), capsys)
        assert "part.parquet: expected the label column 'delivery_minutes'" in err

    def test_contract_does_not_match_the_data(
        self, data: Path, tmp_path: Path, no_beam: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        argv = _train_args(data, tmp_path / "m")
        argv[1] = "--contract=loans"
        argv.append("--label=delivery_minutes")
        err = self._fails(argv, capsys)
        assert "--label: column 'delivery_minutes' is not declared" in err
        folder = tmp_path / "nocity"
        folder.mkdir()
        pq.write_table(pq.read_table(data).drop_columns(["city"]), folder / "part.parquet")
        err = self._fails(_train_args(folder, tmp_path / "m"), capsys)
        assert "expected the columns of" in err and "missing city" in err
        folder = tmp_path / "typed"
        folder.mkdir()
        table = pq.read_table(data)
        index = table.schema.get_field_index("items")
        table = table.set_column(index, "items", table.column("items").cast(pa.string()))
        pq.write_table(table, folder / "part.parquet")
        err = self._fails(_train_args(folder, tmp_path / "m"), capsys)
        assert "column 'items' expected int64" in err and "schema.pbtxt" in err

    def test_preprocessing_fn_without_the_label(
        self, data: Path, tmp_path: Path, no_beam: None, capsys: pytest.CaptureFixture[str]
    ) -> None:
        module = tmp_path / "nolabel_fn.py"
        module.write_text("def preprocessing_fn(inputs):\n    return {'x': inputs['hour']}\n")
        sys.path.insert(0, str(tmp_path))
        try:
            argv = _train_args(data, tmp_path / "m")
            argv[2] = "--preprocessing_fn=nolabel_fn:preprocessing_fn"
            err = self._fails(argv, capsys)
        finally:
            sys.path.remove(str(tmp_path))
        assert "expected the label 'delivery_minutes' among its outputs (found: x)" in err


class TestModelsCarryWhatScoringNeeds:
    """jobs.models register takes TFX layouts as they come and stores the contract inside
    the signed folder; jobs.models baseline attaches a drift baseline and re-signs."""

    def test_register_tfx_layout_then_attach_baseline(
        self, deliveries: Deliveries, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        import shutil

        from jobs import models

        version = deliveries.model.saved_model_dir.parent
        serving = tmp_path / "Trainer" / "model" / "7" / "Format-Serving"
        shutil.copytree(deliveries.model.saved_model_dir, serving)
        shutil.rmtree(serving / "assets.extra")  # as TFX writes it: no contract, no baseline
        graph = tmp_path / "Transform" / "transform_graph" / "5"
        shutil.copytree(version / "transform_output", graph)
        repo = tmp_path / "repo"
        argv = [
            "register",
            str(tmp_path / "Trainer" / "model"),
            "--name=tfx_model",
            f"--transform_output={tmp_path / 'Transform' / 'transform_graph'}",
            "--contract=deliveries",
            f"--model_repo={repo}",
        ]
        assert models.main(argv) == 0
        registered = ModelRepository(repo).resolve("tfx_model@1")
        assert registered.metadata["source"] == str(serving.resolve())
        assert (registered.saved_model_dir.parent / "transform_output" / "transform_fn").is_dir()
        contract = registered.saved_model_dir / "assets.extra" / "batchscore_contract"
        assert (contract / "deliveries" / "schema.pbtxt").is_file()
        assert not (
            registered.saved_model_dir / "assets.extra" / "batchscore_baseline.json"
        ).exists()

        argv = ["baseline", "tfx_model@1", f"--input={deliveries.data}", f"--model_repo={repo}"]
        assert models.main(argv) == 0
        amended = ModelRepository(repo).resolve("tfx_model@1")
        assert amended.content_hash != registered.content_hash
        baseline = read_json(amended.saved_model_dir / "assets.extra" / "batchscore_baseline.json")
        assert baseline["rows"] == ROWS
        assert {f["name"] for f in baseline["features"]} == set(_raw_spec())
        assert baseline["prediction"]["name"] == "prediction"
        assert amended.metadata["amendments"][0]["previous_content_hash"] == registered.content_hash
        assert models.main(["verify", "tfx_model@1", f"--model_repo={repo}"]) == 0
        capsys.readouterr()
        assert models.main(argv) == 2  # a second baseline needs --force
        assert "already has a drift baseline" in capsys.readouterr().err


@pytest.mark.parametrize("runner", ["DirectRunner", "PySparkRunner"])
def test_rows_with_missing_values_scored_through_the_tf_example_signature(
    runner: str, deliveries: Deliveries, tmp_path: Path
) -> None:
    """On Beam and on Spark: every valid row (optional values missing included) scored
    through serving_tf_example, equal to the raw-column signature on the same rows; the
    rows that break the contract dead-lettered; drift checked against the baseline."""
    from batch.output.commit import list_committed_runs
    from jobs import score
    from training import trainer

    out = tmp_path / "out"
    argv = [
        f"--input={deliveries.data}",
        "--model=delivery_minutes@1",
        f"--model_repo={deliveries.repo}",
        f"--output={out}",
        "--signature=serving_tf_example",
        "--max_error_rate=0.02",
        f"--runner={runner}",
    ]
    if runner == "PySparkRunner":
        argv.append("--spark_master=local[2]")
    assert score.main(argv) == 0
    (committed,) = list_committed_runs(out)
    manifest = read_json(committed.run_dir / "_MANIFEST.json")
    counts = manifest["counts"]
    assert counts["rows_in"] == ROWS
    assert set(counts["rejected_by_reason"]) == {"out_of_range"}, counts
    assert manifest["drift"]["status"] == "ok", manifest["drift"]
    scored = pq.read_table(committed.run_dir / "predictions").sort_by("order_id")
    assert len(set(scored["order_id"].to_pylist())) == scored.num_rows == counts["rows_scored"]
    rows = _with_missing(deliveries.data, ROWS)  # the valid rows, missing values included
    rows = rows.sort_by("order_id")
    assert rows.column("order_id").to_pylist() == scored.column("order_id").to_pylist()
    direct = (
        _load(deliveries.model)
        .signatures["serving_default"](**trainer.raw_inputs(rows, _raw_spec()))["prediction"]
        .numpy()
    )
    np.testing.assert_allclose(scored.column("prediction").to_numpy(), direct, atol=1e-4)


MULTICLASS_MODULE = '''
import tensorflow as tf
import tensorflow_transform as tft


def preprocessing_fn(inputs):
    """Which weather a delivery had, from how long it took and how far it went."""
    weather = tft.sparse_tensor_to_dense_with_shape(inputs["weather"], [None, 1], "unknown")
    minutes = inputs["delivery_minutes"] - 0.8 * inputs["prep_minutes"]
    return {
        "weather": tft.compute_and_apply_vocabulary(
            tf.squeeze(weather, axis=1), num_oov_buckets=1
        ),
        "slowness_z": tft.scale_to_z_score(minutes / (1.0 + inputs["distance_km"])),
        "distance_z": tft.scale_to_z_score(inputs["distance_km"]),
        "city_id": tft.compute_and_apply_vocabulary(inputs["city"], num_oov_buckets=1),
    }
'''


def test_multiclass_task_from_a_vocabulary_label(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A label mapped by a vocabulary of more than two classes is a multiclass task: the
    default model gives one probability per class ([batch, k]) and accuracy is measured."""
    from jobs import train

    (tmp_path / "weather_task.py").write_text(textwrap.dedent(MULTICLASS_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write_deliveries(tmp_path / "data", rows=3_000, files=1)
    argv = [
        f"--input={data}",
        "--contract=deliveries",
        "--preprocessing_fn=weather_task:preprocessing_fn",
        "--label=weather",
        "--name=weather",
        f"--model_repo={tmp_path / 'models'}",
        "--train_rows=3000",
        "--epochs=2",
    ]
    assert train.main(argv) == 0
    model = ModelRepository(tmp_path / "models").resolve("weather@1")
    classes = model.metadata["task"]["num_classes"]
    # 5 kinds of weather + "unknown" (missing) + 1 OOV bucket
    assert model.metadata["task"]["task"] == "multiclass" and classes == 7
    assert model.metadata["signature"]["outputs"] == {
        "probabilities": {"dtype": "float32", "shape": [None, classes]}
    }
    assert 0.0 <= model.metadata["metrics"]["heldout_accuracy"] <= 1.0
    probabilities = (
        _load(model)
        .signatures["serving_default"](
            **{name: value for name, value in _direct_inputs(data).items()}
        )["probabilities"]
        .numpy()
    )
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)


def _direct_inputs(data: Path) -> dict[str, Any]:
    from training import trainer

    spec = {k: v for k, v in _spec().items() if k not in ("order_id", "weather")}
    return trainer.raw_inputs(_with_missing(data, 500), spec)
