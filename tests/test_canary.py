"""Gray release: `jobs.score --canary=... --canary_fraction=F`, on Beam and on Spark.

Real signed SavedModels with different weights (tests/plain_model.py), so every row's
score tells which model scored it, and the routing hash says which one should have.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.demo.paths import ensure_signing_key
from batch.model.repository import ModelRepository
from batch.output.commit import CommittedRun, list_committed_runs
from batch.release.routing import ROUTING_HASH, in_share
from tests.conftest import PlainModels, score
from tests.plain_model import plain_model_expected, write_plain_data

PRODUCTION_WEIGHT, CANARY_WEIGHT = 0.75, 2.0
FRACTION = 0.1


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory, plain_models: PlainModels) -> ModelRepository:
    """plain@1 (production) and plain@2 (canary), both signed; other@1 has another signature."""
    root = tmp_path_factory.mktemp("canary")
    models = ModelRepository(root / "repo")
    key = ensure_signing_key()
    for weight in (PRODUCTION_WEIGHT, CANARY_WEIGHT):  # plain@1, then plain@2
        export = plain_models(weight=weight, sign=False)
        models.register("plain", export, {"key_columns": ["id"]}, signing_key=key)
    models.register("other", _one_input_model(root / "other"), {}, signing_key=key)
    models.promote("plain@1", "production")
    models.promote("plain@2", "canary")
    return models


def _one_input_model(path: Path) -> Path:
    import tensorflow as tf

    class OneInput(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            return {"score": tf.sigmoid(x)}

    module = OneInput()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    folder = tmp_path_factory.mktemp("data")
    return folder, write_plain_data(folder, files=3, rows_per_file=4000, row_group_rows=700)


def _canary_args(fraction: float = FRACTION) -> tuple[str, ...]:
    return ("--model=plain@production", "--canary=plain@canary", f"--canary_fraction={fraction}")


def _runs(output: Path) -> list[CommittedRun]:
    return list_committed_runs(output)


def _predictions(run: CommittedRun) -> pa.Table:
    parts = sorted((run.run_dir / "predictions").glob("part-*.parquet"))
    return pa.concat_tables(pq.read_table(p) for p in parts).sort_by("id")


def _version_by_key(run: CommittedRun) -> dict[int, str]:
    table = _predictions(run)
    return dict(
        zip(table.column("id").to_pylist(), table.column("model_version").to_pylist(), strict=True)
    )


def test_canary_run_routes_by_key_and_records_both_models(
    repo: ModelRepository,
    data: tuple[Path, pa.Table],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, table = data
    output = tmp_path / "out"
    assert (
        score(folder, output, f"--model_repo={repo.root}", "--runner=DirectRunner", *_canary_args())
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"canary\s+plain@2 \(as @canary\), signature verified", out), out
    assert "10.0% of keys to the canary; scored by plain@1: " in out
    (run,) = _runs(output)
    assert (run.model_name, run.model_version) == ("plain", "1")  # under production's version

    predictions = _predictions(run)
    table = table.sort_by("id")
    to_canary = in_share(table, ["id"], FRACTION)
    versions = np.array(predictions.column("model_version").to_pylist())
    assert np.array_equal(versions == "2", to_canary)
    assert set(predictions.column("model_name").to_pylist()) == {"plain"}
    scores = predictions.column("score").to_numpy()
    expected = np.where(
        to_canary,
        plain_model_expected(table, CANARY_WEIGHT),
        plain_model_expected(table, PRODUCTION_WEIGHT),
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    assert abs(to_canary.mean() - FRACTION) < 0.02

    manifest = run.manifest().to_json()
    canary = manifest["canary"]
    assert canary["model"]["name"] == "plain" and canary["model"]["version"] == "2"
    assert canary["model"]["alias"] == "canary"
    assert canary["model"]["content_hash"] == repo.resolve("plain@2").content_hash
    assert canary["model"]["signature"]["verified"] is True
    assert canary["fraction"] == FRACTION and canary["routing"] == ROUTING_HASH
    assert canary["key_columns"] == ["id"]
    assert canary["rows_scored"] == {
        "plain@1": int((~to_canary).sum()),
        "plain@2": int(to_canary.sum()),
    }
    assert manifest["model"]["version"] == "1" and manifest["model"]["alias"] == "production"
    assert sum(canary["rows_scored"].values()) == manifest["counts"]["rows_scored"]


def test_a_canary_run_and_a_plain_run_are_never_taken_for_each_other(
    repo: ModelRepository,
    data: tuple[Path, pa.Table],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, _ = data
    output = tmp_path / "out"
    assert score(folder, output, f"--model_repo={repo.root}", "--model=plain@production") == 0
    assert len(_runs(output)) == 1
    # Same input and production model, plus a canary: not up to date, scores.
    assert score(folder, output, f"--model_repo={repo.root}", *_canary_args()) == 0
    assert len(_runs(output)) == 2
    capsys.readouterr()
    # The same canary again: up to date (the canary run), nothing scored.
    assert score(folder, output, f"--model_repo={repo.root}", *_canary_args()) == 0
    out = capsys.readouterr().out
    assert out.startswith("up to date: ") and "with canary plain@2 on 10.0% of keys" in out
    assert "canary" in _runs(output)[1].manifest().to_json()
    assert f"run={_runs(output)[1].run_id}" in out
    # Another fraction is another run.
    assert score(folder, output, f"--model_repo={repo.root}", *_canary_args(0.2)) == 0
    assert len(_runs(output)) == 3
    capsys.readouterr()
    # Plain again: up to date with the plain run, not a canary run.
    assert score(folder, output, f"--model_repo={repo.root}", "--model=plain@production") == 0
    out = capsys.readouterr().out
    assert f"run={_runs(output)[0].run_id}" in out and "with canary" not in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--canary=plain@canary",), "--canary=plain@canary needs --canary_fraction"),
        (("--canary_fraction=0.1",), "--canary_fraction=0.1 needs --canary=MODEL"),
        (
            ("--canary=plain@nope", "--canary_fraction=0.1"),
            "model 'plain@nope': 'plain' has no version or alias 'nope'",
        ),
        (
            ("--canary=plain@1", "--canary_fraction=0.1"),
            "--canary=plain@1 has the same files as --model=plain@1",
        ),
        (
            ("--canary=other@1", "--canary_fraction=0.1"),
            "--canary=other@1: its serving signature differs from --model=plain@1's "
            "(input 'n' missing; input 's' missing; output 'pair' missing)",
        ),
    ],
)
def test_bad_canary_options_are_one_line_errors(
    repo: ModelRepository,
    data: tuple[Path, pa.Table],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    rc = score(
        data[0], tmp_path / "out", f"--model_repo={repo.root}", "--model=plain@production", *args
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    (line,) = err.strip().splitlines()
    assert message in line, line
    assert not list_committed_runs(tmp_path / "out")


@pytest.mark.parametrize("fraction", ["0", "1", "1.5", "ten"])
def test_canary_fraction_must_be_strictly_between_0_and_1(
    repo: ModelRepository,
    data: tuple[Path, pa.Table],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    fraction: str,
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        score(
            data[0],
            tmp_path,
            f"--model_repo={repo.root}",
            "--canary=plain@canary",
            f"--canary_fraction={fraction}",
        )
    assert exit_info.value.code == 2
    assert "--canary_fraction: " in capsys.readouterr().err


@pytest.mark.slow
def test_beam_and_spark_route_every_key_to_the_same_model(
    repo: ModelRepository, data: tuple[Path, pa.Table], tmp_path: Path
) -> None:
    folder, _ = data
    common = ("--batch_size=1000", "--split_rows=2000", *_canary_args(0.3))
    assert (
        score(
            folder, tmp_path / "beam", f"--model_repo={repo.root}", "--runner=DirectRunner", *common
        )
        == 0
    )
    assert (
        score(
            folder,
            tmp_path / "spark",
            f"--model_repo={repo.root}",
            "--runner=PySparkRunner",
            "--spark_master=local[2]",
            "--batch_size=777",  # other batch boundaries than Beam's
            *common[1:],
        )
        == 0
    )
    (beam,), (spark,) = _runs(tmp_path / "beam"), _runs(tmp_path / "spark")
    beam_map, spark_map = _version_by_key(beam), _version_by_key(spark)
    assert len(beam_map) == 12_000 and beam_map == spark_map
    assert (
        beam.manifest().to_json()["canary"]["rows_scored"]
        == spark.manifest().to_json()["canary"]["rows_scored"]
    )
    assert spark.manifest().to_json()["runner"]["name"] == "pyspark"
    # Same model per key; scores equal up to float32 rounding (other batch sizes vectorize
    # differently).
    np.testing.assert_allclose(
        _predictions(beam).column("score").to_numpy(),
        _predictions(spark).column("score").to_numpy(),
        rtol=1e-6,
    )
