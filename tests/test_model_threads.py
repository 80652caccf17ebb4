"""TensorFlow's thread pools sized for a worker's concurrent model calls
(batch.model.loading.plan_model_threads): each op of a call uses its share of the cores,
and idle pool threads sleep instead of spin-waiting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from batch.model import loading
from batch.model.loading import (
    MODEL_CALLS_AT_ONCE,
    ServingFunction,
    import_tensorflow,
    intra_op_threads,
    plan_model_threads,
    session_config,
)


@pytest.fixture
def plan(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    saved = list(loading._THREAD_PLAN)
    yield
    loading._THREAD_PLAN[:] = saved


@pytest.mark.usefixtures("plan")
@pytest.mark.parametrize(
    ("calls", "cpus", "threads"), [(2, 2, 1), (2, 8, 4), (3, 8, 2), (4, 2, 1), (1, 1, 1), (0, 4, 4)]
)
def test_each_call_gets_its_share_of_the_cores(calls: int, cpus: int, threads: int) -> None:
    plan_model_threads(calls, cpus)
    assert intra_op_threads() == threads


@pytest.mark.usefixtures("plan")
def test_the_default_plan_shares_the_cores_this_process_may_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loading, "usable_cpus", lambda: 6)
    plan_model_threads(MODEL_CALLS_AT_ONCE)
    assert intra_op_threads() == 6 // MODEL_CALLS_AT_ONCE


@pytest.mark.usefixtures("plan")
def test_tf_num_intraop_threads_overrides_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    plan_model_threads(2, 8)
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "3")
    assert intra_op_threads() == 0  # 0: TensorFlow reads the variable itself
    config = session_config(import_tensorflow())
    assert config.intra_op_parallelism_threads == 0


@pytest.mark.usefixtures("plan")
def test_a_loaded_model_runs_in_a_session_of_the_plan(tmp_path: Path) -> None:
    """A real SavedModel: its session has the planned options, and its calls answer."""
    tf = import_tensorflow()

    class Double(tf.Module):  # type: ignore[name-defined]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x * 2.0}

    module = Double()
    tf.saved_model.save(module, str(tmp_path / "m"), signatures={"serving_default": module.serve})
    plan_model_threads(2, 6)
    served = ServingFunction(tf, tmp_path / "m", "double@1")
    options = served.session._config  # the ConfigProto the session was made with
    assert options.intra_op_parallelism_threads == 3
    assert options.experimental.disable_thread_spinning
    x = np.arange(5, dtype=np.float32)
    np.testing.assert_array_equal(served({"x": x})["y"], x * 2)
