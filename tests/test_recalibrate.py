"""jobs.recalibrate (issue 18 point 5): a model trained on one label relation, recent data
where the relation shifted (a fifth of the negatives became defaults); Platt inside the
graph improves ECE and log loss on rows it was not fitted on, the new version is signed,
unpromoted, scores through both serving signatures, and is compared with production."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.model.repository import ModelRepository
from tests.training_rows import DemoRows  # the demo_rows fixture: tests/conftest.py

pytestmark = pytest.mark.slow


def _shifted(source: Path, out: Path, share: float = 0.2) -> Path:
    """``source``'s rows with ``share`` of the negatives turned positive."""
    rng = np.random.default_rng(3)
    for path in sorted(source.rglob("*.parquet")):
        table = pq.read_table(path)
        index = table.schema.get_field_index("defaulted")
        labels = table.column(index).to_numpy().copy()
        labels[(labels == 0) & (rng.random(labels.size) < share)] = 1
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        column = pa.array(labels, table.schema.field(index).type)
        pq.write_table(table.set_column(index, table.schema.field(index), column), target)
    return out


def test_recalibrated_version_improves_calibration_on_shifted_labels(
    demo_rows: DemoRows, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import tensorflow as tf

    from batch.demo.data import ensure_demo_data
    from batch.model.signing import public_key_of
    from jobs import models, recalibrate
    from training.recalibration import expected_calibration_error
    from training.trainer import fit_and_register

    repo_dir = tmp_path / "models"
    request = dataclasses.replace(demo_rows.request, model_repo=repo_dir)
    base = fit_and_register(demo_rows.rows, request, None, demo_rows.key)
    public = tmp_path / "public.pem"
    public.write_bytes(public_key_of(demo_rows.key))
    assert (
        models.main(
            ["promote", base.label, "--to", "production", f"--model_repo={repo_dir}", "--force"]
        )
        == 0
    )
    recent = ensure_demo_data(
        tmp_path / "recent_src",
        rows=3_000,
        days=1,
        files_per_day=1,
        seed=99,
        dirty_fraction=0,
        log=None,
    )
    shifted = _shifted(recent, tmp_path / "recent")
    summary_file = tmp_path / "summary.json"
    code = recalibrate.main(
        [
            base.label,
            f"--input={shifted}",
            f"--model_repo={repo_dir}",
            f"--public_key={public}",
            f"--key={demo_rows.key}",
            f"--output={tmp_path / 'comparisons'}",
            f"--summary_file={summary_file}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "compared with loan_default@production: passed" in out

    repo = ModelRepository(repo_dir)
    new = repo.resolve("loan_default@2")  # signed and verifiable like any version
    assert repo.aliases("loan_default") == {"production": 1}  # registered unpromoted
    summary = new.metadata["recalibration"]
    before, after = summary["before"], summary["after"]
    assert after["ece"] < before["ece"] / 2, summary
    assert after["log_loss"] < before["log_loss"] - 0.01, summary
    assert after["auc"] == pytest.approx(before["auc"], abs=1e-3)  # monotone: ranking kept
    assert summary["calibration"]["method"] == "platt" and summary["calibration"]["a"] > 0
    assert new.metadata["lineage"]["recalibrated_from"]["model"] == "loan_default@1"
    assert json.loads(summary_file.read_text())["status"] == "ok"

    # Inside the graph: both serving signatures return the calibrated probability.
    from batch.contract.contract import load_contract
    from training import dataset

    loaded = tf.saved_model.load(str(new.saved_model_dir))
    spec = dataset.feature_spec(load_contract("loans"))
    raw_spec = dataset.raw_features(spec, ("defaulted", "loan_id"))
    table = dataset.read_rows(dataset.parquet_files(shifted), spec, 2_000)
    table = dataset.clean_rows(table, load_contract("loans")).table
    columns = loaded.signatures["serving_default"](**dataset.raw_inputs(table, raw_spec))
    scores = columns["default_probability"].numpy()
    assert scores.dtype == np.float32
    labels = table.column("defaulted").to_numpy().astype(np.float64)
    base_model = tf.saved_model.load(str(base.saved_model_dir))
    base_scores = base_model.signatures["serving_default"](**dataset.raw_inputs(table, raw_spec))
    assert expected_calibration_error(labels, scores) < expected_calibration_error(
        labels, base_scores["default_probability"].numpy()
    )
    examples = []
    for row in table.slice(0, 200).select(list(raw_spec)).to_pylist():
        feature = {}
        for name, value in row.items():
            if isinstance(value, str):
                feature[name] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[value.encode()])
                )
            elif isinstance(value, int):
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
            elif value is not None:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        examples.append(example.SerializeToString())
    parsed = loaded.signatures["serving_tf_example"](examples=tf.constant(examples))
    np.testing.assert_allclose(
        parsed["default_probability"].numpy(), scores[:200], rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_each_method_improves_calibration_and_the_graph_computes_the_same(method: str) -> None:
    import tensorflow as tf

    from training.recalibration import (
        calibration_fn,
        calibration_metrics,
        fit_calibration,
    )

    rng = np.random.default_rng(5)
    scores = rng.beta(2, 5, 20_000).astype(np.float32)  # the model's view
    labels = (rng.random(scores.size) < np.clip(1.6 * scores + 0.05, 0, 1)).astype(np.float64)
    fit, held = slice(0, 10_000), slice(10_000, None)
    calibration = fit_calibration(method, scores[fit], labels[fit])
    before = calibration_metrics(labels[held], scores[held])
    after = calibration_metrics(labels[held], calibration.apply(scores[held]))
    assert after["ece"] < before["ece"] / 3, (before, after)
    assert after["log_loss"] < before["log_loss"]
    if method == "isotonic":
        values = np.asarray(calibration.parameters["values"])
        assert np.all(np.diff(values) >= 0)  # monotone
    probe = np.concatenate([scores[held][:2_000], [0.0, 1.0, 1e-7, 0.999999]]).astype(np.float32)
    graph = calibration_fn(calibration)(tf.constant(probe)).numpy()
    np.testing.assert_allclose(graph, calibration.apply(probe), rtol=0, atol=2e-5)
