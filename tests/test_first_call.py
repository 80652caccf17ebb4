"""A model's first call prepared at its load, and Beam imported after TensorFlow.

TensorFlow prepares a session's call (the graph's optimization passes, the executor and
its kernels) on the call's first run: the loader runs it on no rows
(batch.model.loading.ServingFunction.prepare_first_call), so that a job's first batch does
not wait for it. A job that scores in its own process on Beam's DirectRunner imports Beam
after TensorFlow (jobs.score), so that Beam's import overlaps the model's load and that
preparation instead of taking turns with TensorFlow's import on the GIL.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.engine.prepare import trust_policy
from batch.model.loading import ServingFunction, import_tensorflow, load_model
from batch.model.repository import ModelRepository, resolve_model
from batch.model.signature import SignatureChoice
from batch.output.commit import list_committed_runs
from tests.conftest import score, score_args
from tests.model_zoo import (
    _sign,
    build_keras3_model,
    build_predict_only_model,
    build_ragged_signature_model,
    build_sparse_signature_model,
    build_tf_keras_model,
)
from tests.plain_model import build_plain_model, write_plain_data

ROOT = Path(__file__).resolve().parent.parent

BUILDERS: dict[str, Callable[[Path], Path]] = {
    "plain (string, int64, float32 [None])": build_plain_model,
    "keras 3 export (Input(shape=(1,)), [None, 3])": build_keras3_model,
    "tf-keras save (int64, string, float32 [None, 1])": build_tf_keras_model,
    "sparse tensor signature": build_sparse_signature_model,
    "ragged tensor signature": build_ragged_signature_model,
}


def build_empty_batch_refusing_model(path: Path) -> Path:
    """A signature that asserts its batch holds a row (``x`` float32 [None] -> ``y``,
    twice ``x``), as a graph with a fixed batch size or a shape check does."""
    import tensorflow as tf

    class Refusing(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: tf.Tensor) -> dict[str, tf.Tensor]:
            check = tf.debugging.assert_positive(tf.size(x), message="an empty batch")
            with tf.control_dependencies([check]):
                return {"y": x * 2.0}

    module = Refusing()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return _sign(path)


@pytest.mark.parametrize("kind", sorted(BUILDERS))
def test_the_first_call_of_a_model_exported_the_usual_ways_is_prepared_at_the_load(
    kind: str, tmp_path: Path
) -> None:
    model = BUILDERS[kind](tmp_path / "model")
    function = ServingFunction(import_tensorflow(), model, kind)
    assert function.prepare_first_call(), f"{kind}: the call on no rows was refused"


def test_a_model_with_only_a_named_signature_has_its_first_call_prepared(
    tmp_path: Path,
) -> None:
    model = build_predict_only_model(tmp_path / "model")
    function = ServingFunction(import_tensorflow(), model, "predict", SignatureChoice("predict"))
    assert function.prepare_first_call()


def test_a_load_for_the_signature_only_prepares_nothing_and_a_load_to_call_prepares_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A driver reads the signature only (batch.engine.job.model_signature): no call is
    # prepared that no call will use. A worker's load of the same model prepares it once.
    model = resolve_model(
        str(build_plain_model(tmp_path / "model", weight=0.25)),
        ModelRepository(tmp_path / "repo"),
    )
    trust = trust_policy(None, False)
    caplog.set_level(logging.INFO, logger="batch.model.loading")

    def prepared() -> int:
        return sum("its first call prepared" in r.getMessage() for r in caplog.records)

    signature_only = load_model(model, trust, to_call=False)
    assert prepared() == 0
    assert load_model(model, trust) is signature_only
    assert load_model(model, trust) is signature_only
    assert prepared() == 1


def test_a_model_that_refuses_an_empty_batch_still_scores_every_row(tmp_path: Path) -> None:
    model = build_empty_batch_refusing_model(tmp_path / "model")
    assert not ServingFunction(import_tensorflow(), model, "refusing").prepare_first_call()
    data = tmp_path / "in"
    data.mkdir()
    table = pa.table(
        {"id": pa.array(range(300), pa.int64()), "x": pa.array(range(300), pa.float64())}
    )
    pq.write_table(table, data / "part-0.parquet", row_group_size=100)
    assert score(data, tmp_path / "out", "--key_columns=id", model=model) == 0
    (run,) = list_committed_runs(tmp_path / "out")
    predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
    assert predictions["id"].to_pylist() == list(range(300))
    assert predictions["y"].to_pylist() == [2.0 * i for i in range(300)]


# Runs jobs.score as its users do, noting, when the process first imports a module of
# Beam, whether TensorFlow's import had ended (batch.model.loading._TF_IMPORTED).
_WATCH_BEAM = """
import importlib.abc, os, runpy, sys
out = sys.argv.pop(1)
seen = []

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "apache_beam" and not seen:
            seen.append(bool(sys.modules["batch.model.loading"]._TF_IMPORTED))
        return None

sys.meta_path.insert(0, Watch())
exit_now = os._exit

def report(code):
    with open(out, "w") as file:
        file.write(repr(seen))
    exit_now(code)

os._exit = report
runpy.run_module("jobs.score", run_name="__main__", alter_sys=True)
"""


@pytest.mark.parametrize(
    "mode",
    [(), ("--direct_running_mode=multi_threading", "--direct_num_workers=2")],
    ids=["in_memory", "multi_threading"],
)
def test_a_job_scored_in_its_process_on_beam_imports_beam_after_tensorflow(
    tmp_path: Path, plain_model: Path, mode: tuple[str, ...]
) -> None:
    data = tmp_path / "in"
    write_plain_data(data, files=2, rows_per_file=200, row_group_rows=100)
    seen = tmp_path / "seen"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _WATCH_BEAM,
            str(seen),
            *score_args(
                data,
                tmp_path / "out",
                "--key_columns=id",
                "--runner=DirectRunner",
                "--in_process_rows=0",
                *mode,
                model=plain_model,
            ),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # [True]: Beam was imported (the job ran on it), once TensorFlow's import had ended.
    assert seen.read_text() == "[True]"
    assert len(list_committed_runs(tmp_path / "out")) == 1
