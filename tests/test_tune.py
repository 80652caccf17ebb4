"""jobs.tune (issue 18 point 2): an Optuna search over the default model_fn's declared
space on small data, every trial recorded, the best one trained and registered with its
hyperparameters in the lineage; early stopping and the time budget."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from batch.core.errors import UsageError
from batch.model.repository import ModelRepository
from tests.training_rows import DemoRows  # the demo_rows fixture: tests/conftest.py

if TYPE_CHECKING:
    from training.tuning import TuningRequest

pytestmark = pytest.mark.slow


def _request(demo_rows: DemoRows, epochs: int = 4, **changes: Any) -> TuningRequest:
    from training.tuning import TuningRequest

    training = dataclasses.replace(demo_rows.request, epochs=epochs)
    return dataclasses.replace(
        TuningRequest(training=training, trials=4, objective="val_auc", patience=1), **changes
    )


def test_trials_recorded_and_the_best_registered_with_its_hyperparameters(
    demo_rows: DemoRows, tmp_path: Path
) -> None:
    from training.tuning import tune_rows

    tuned = tune_rows(demo_rows.rows, _request(demo_rows), None, demo_rows.key)
    study = tuned.study
    assert study["library"].startswith("optuna ")
    assert study["trials_run"] == 4 and len(study["trials"]) == 4
    for trial in study["trials"]:
        assert set(trial["params"]) == {"learning_rate", "hidden_units", "dropout", "batch_size"}
        assert trial["state"] in ("complete", "pruned")
        if trial["state"] == "complete":
            assert 0.4 < trial["value"] <= 1.0
            assert 1 <= trial["epochs"] <= 4  # early stopping may end a trial sooner
    complete = [t for t in study["trials"] if t["state"] == "complete"]
    best = max(complete, key=lambda t: t["value"])
    assert study["best_trial"] == best["number"] and study["best_value"] == best["value"]

    model = ModelRepository(demo_rows.repo).resolve(tuned.model.label)  # signed, verifiable
    meta = model.metadata
    assert meta["tuning"]["trials"] == study["trials"]
    lineage = meta["lineage"]
    assert lineage["tuning"]["best_trial"] == best["number"]
    params = best["params"]
    hyper = lineage["hyperparameters"]
    assert hyper["learning_rate"] == params["learning_rate"]
    assert hyper["hidden_units"] == params["hidden_units"]
    assert hyper["dropout"] == params["dropout"]
    assert meta["training"]["batch_size"] == params["batch_size"]
    assert meta["metrics"]["heldout_auc"] > 0.7


def test_time_budget_stops_starting_trials(demo_rows: DemoRows) -> None:
    from training.tuning import tune_rows

    request = _request(demo_rows, epochs=1, trials=50, time_budget_s=0.1)
    study = tune_rows(demo_rows.rows, request, None, demo_rows.key).study
    assert study["trials_run"] == 1 and study["trials_requested"] == 50


def test_an_objective_the_fit_does_not_report(demo_rows: DemoRows) -> None:
    from training.tuning import tune_rows

    request = _request(demo_rows, epochs=1, trials=1, objective="val_precision")
    with pytest.raises(UsageError, match=re.escape("--objective=val_precision: not among")):
        tune_rows(demo_rows.rows, request, None, demo_rows.key)


def test_a_model_fn_without_a_search_space(tmp_path: Path) -> None:
    from training.tuning import search_space

    def model_fn() -> None: ...

    with pytest.raises(UsageError, match=r"--model_fn=m:model_fn: declares no search space"):
        search_space(model_fn, "m:model_fn")
    model_fn.search_space = {"lr": {"type": "float", "low": 1}}  # type: ignore[attr-defined]
    with pytest.raises(UsageError, match=r"search_space\['lr'\]"):
        search_space(model_fn, "m:model_fn")


def plain_model_fn(tft_output: object, hyperparameters: object) -> None:
    """A model_fn that declares no search space (for the command-line error below)."""


def test_command_line_refuses_a_model_fn_without_a_space_before_any_work(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from jobs import tune

    help_text = tune.build_parser().format_help()
    for option in ("--trials", "--objective", "--time_budget", "--patience", "--workers"):
        assert option in help_text
    code = tune.main(
        [
            "--model_fn=tests.test_tune:plain_model_fn",
            f"--model_repo={tmp_path / 'models'}",
            f"--summary_file={tmp_path / 'summary.json'}",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--model_fn=tests.test_tune:plain_model_fn: declares no search space" in err
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "fail"
    assert not (tmp_path / "models").exists()
