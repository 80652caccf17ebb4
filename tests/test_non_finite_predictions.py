"""NaN and infinite predictions are dead-lettered as ``non_finite_prediction`` and count
against the error budget, unless the job keeps them (issue 22, point 9)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.engine.scorer import BatchScorer
from batch.engine.validate import NON_FINITE_PREDICTION
from batch.model.loading import load_model
from batch.model.repository import ModelRepository, resolve_model
from batch.model.signing import TrustPolicy
from batch.output.commit import list_committed_runs
from jobs.score import main as score_main


def build_sqrt_model(path: Path) -> Path:
    """score = sqrt(x): NaN for x < 0; pair = [score, 1/x]: inf for x == 0. Signed."""
    import tensorflow as tf

    from batch.demo.paths import ensure_signing_key
    from batch.model.signing import sign_model

    class Sqrt(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            score = tf.sqrt(x)
            return {"score": score, "pair": tf.stack([score, 1.0 / x], axis=1)}

    module = Sqrt()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    sign_model(path, ensure_signing_key())
    return path


@pytest.fixture(scope="module")
def sqrt_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_sqrt_model(tmp_path_factory.mktemp("sqrt") / "model")


def _data(folder: Path, x: list[float]) -> Path:
    folder.mkdir(parents=True)
    table = pa.table({"id": pa.array(range(len(x)), pa.int64()), "x": pa.array(x, pa.float64())})
    pq.write_table(table, folder / "part-000.parquet")
    return folder


def _scorer(model_dir: Path, tmp_path: Path, keep: bool) -> BatchScorer:
    model = resolve_model(str(model_dir), ModelRepository(tmp_path / "repo"))
    loaded = load_model(model, TrustPolicy(None, allow_unsigned=True))
    return BatchScorer(loaded, ["id"], "run", keep_non_finite=keep)


class TestBatchScorer:
    BATCH = pa.RecordBatch.from_pydict(
        {
            "id": pa.array([0, 1, 2, 3], pa.int64()),
            "x": pa.array([4.0, -1.0, 0.0, 9.0], pa.float32()),
        }
    )

    def test_non_finite_rows_are_dead_lettered_naming_output_and_value(
        self, sqrt_model: Path, tmp_path: Path
    ) -> None:
        scored, rejected = _scorer(sqrt_model, tmp_path, keep=False).score_isolating(self.BATCH)
        assert pa.Table.from_batches(scored).column("id").to_pylist() == [0, 3]
        dead = pa.Table.from_batches(rejected).to_pylist()
        assert [(r["id"], r["reject_reason"]) for r in dead] == [
            (1, NON_FINITE_PREDICTION),
            (2, NON_FINITE_PREDICTION),
        ]
        assert (
            "predicted nan for output 'pair'; expected a finite number" in dead[0]["reject_message"]
        )
        assert "predicted inf for output 'pair'" in dead[1]["reject_message"]

    def test_kept_when_asked(self, sqrt_model: Path, tmp_path: Path) -> None:
        scored, rejected = _scorer(sqrt_model, tmp_path, keep=True).score_isolating(self.BATCH)
        assert rejected == []
        values = pa.Table.from_batches(scored).column("score").to_numpy()
        assert np.isnan(values[1]) and values[0] == 2.0


def test_a_run_with_nan_predictions_is_not_ok(
    sqrt_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _data(tmp_path / "in", [float(i) + 1 for i in range(98)] + [-1.0, -4.0])
    args = [f"--input={data}", f"--model={sqrt_model}", "--key_columns=id"]
    rc = score_main([*args, f"--output={tmp_path / 'strict'}"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "By reason: non_finite_prediction: 2" in err
    assert not list_committed_runs(tmp_path / "strict")

    rc = score_main([*args, f"--output={tmp_path / 'out'}", "--max_error_rate=0.05"])
    assert rc == 0, capsys.readouterr().err
    (run,) = list_committed_runs(tmp_path / "out")
    assert run.manifest().to_json()["counts"]["rejected_by_reason"] == {NON_FINITE_PREDICTION: 2}
    predictions = pq.read_table(run.run_dir / "predictions")
    assert predictions.num_rows == 98
    assert np.isfinite(predictions.column("score").to_numpy()).all()
