"""Hyperparameter search over what the model_fn declares, then the best trial trained and
registered (``python -m jobs.tune``).

A model_fn declares its search space as an attribute, ``model_fn.search_space``: a dict
from hyperparameter name to one of

- ``{"type": "float", "low": 1e-4, "high": 1e-2, "log": true}``
- ``{"type": "int", "low": 16, "high": 128, "step": 16}``
- ``{"type": "choice", "values": [[32], [64, 32], [128, 64]]}`` (any JSON values)

``batch_size`` in the space is the fit's batch size; every other name is passed to the
model_fn in ``hyperparameters``. :data:`training.model_fn.DEFAULT_SEARCH_SPACE` is the
default model_fn's (learning rate, layer widths, dropout, batch size).

Optuna drives the search (TPE sampler, seeded; a median pruner stops a trial whose
objective is behind the median of earlier trials at the same epoch). It was chosen over
keras-tuner because keras-tuner builds on Keras 3 (``import keras``) while tf.Transform
1.21 needs the Keras 2 of ``tf_keras`` here, and because Optuna asks only for a score per
epoch, so a trial is the same fit as ``jobs.train``'s (build_model, fit).

tf.Transform runs once; every trial fits on the transformed training rows minus a
validation share (a seeded permutation; the held-out rows stay untouched, so the
registered version's held-out metrics are not chosen by the search) with early stopping on
the objective. The best trial's hyperparameters are then fitted on all the training rows
and registered (:func:`training.trainer.fit_and_register`); ``metadata.json`` ``tuning``
holds every trial (parameters, score, state, epochs, seconds) and the lineage the best
one's hyperparameters.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tf_keras

from batch.core.errors import UsageError
from batch.demo.paths import ensure_signing_key
from batch.model.resolved import ResolvedModel
from batch.model.signing import public_key_of
from training.fitting import FLOAT32, build_model, fit, mixed_policy, precision_policy
from training.lineage import load_function
from training.trainer import (
    TrainingRequest,
    TransformedRows,
    fit_and_register,
    job_hyperparameters,
    transformed_rows,
)

SEARCH_SPACE_ATTRIBUTE = "search_space"
DEFAULT_VALIDATION_FRACTION = 0.2
DEFAULT_PATIENCE = 2
_LOWER_IS_BETTER = ("loss", "error", "rmse", "mae", "mse")

log = logging.getLogger("batchscore.tune")


@dataclass(frozen=True)
class TuningRequest:
    """One search (the options of ``python -m jobs.tune``)."""

    training: TrainingRequest  # epochs: the most any trial (and the final fit) runs
    trials: int = 10
    objective: str = "val_auc"
    direction: str = "auto"  # maximize, minimize, or auto (minimize losses and errors)
    time_budget_s: float | None = None
    patience: int = DEFAULT_PATIENCE
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION


@dataclass(frozen=True)
class Tuned:
    model: ResolvedModel
    study: dict[str, Any]  # what metadata.json `tuning` holds


def search_space(model_fn: Any, spec: str) -> dict[str, dict[str, Any]]:
    """The search space ``model_fn`` declares, checked; one line naming what is wrong."""
    space = getattr(model_fn, SEARCH_SPACE_ATTRIBUTE, None)
    if not isinstance(space, Mapping) or not space:
        raise UsageError(
            f"--model_fn={spec}: declares no search space; set `{spec.partition(':')[2]}."
            f"{SEARCH_SPACE_ATTRIBUTE} = {{NAME: {{'type': 'float', 'low': ..., 'high': ...}}, "
            "...}` (types float, int, choice; see training/tuning.py)"
        )
    for name, entry in space.items():
        kind = entry.get("type") if isinstance(entry, Mapping) else None
        needed = {"float": ("low", "high"), "int": ("low", "high"), "choice": ("values",)}
        if kind not in needed or any(key not in entry for key in needed[kind]):
            raise UsageError(
                f"--model_fn={spec}: search_space['{name}'] = {entry!r}; expected "
                "{'type': 'float'|'int', 'low': L, 'high': H} or {'type': 'choice', "
                "'values': [...]}"
            )
    return {name: dict(entry) for name, entry in space.items()}


def _suggest(trial: Any, space: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, entry in space.items():
        if entry["type"] == "float":
            params[name] = trial.suggest_float(
                name, float(entry["low"]), float(entry["high"]), log=bool(entry.get("log"))
            )
        elif entry["type"] == "int":
            params[name] = trial.suggest_int(
                name, int(entry["low"]), int(entry["high"]), step=int(entry.get("step", 1))
            )
        else:  # Optuna's choices must be scalars: choose among their JSON texts
            texts = [json.dumps(value) for value in entry["values"]]
            params[name] = json.loads(trial.suggest_categorical(name, texts))
    return params


def direction_of(objective: str, requested: str) -> str:
    if requested in ("maximize", "minimize"):
        return requested
    if requested != "auto":
        raise UsageError(f"--direction={requested}: expected maximize, minimize or auto")
    lower = any(objective.endswith(word) for word in _LOWER_IS_BETTER)
    return "minimize" if lower else "maximize"


def _validation_split(
    rows: TransformedRows, fraction: float, seed: int
) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], np.ndarray]:
    order = np.random.default_rng(seed).permutation(rows.labels.size)
    cut = round(rows.labels.size * (1 - fraction))
    if cut < 1 or cut >= rows.labels.size:
        raise UsageError(
            f"--validation_fraction={fraction}: leaves {cut} of {rows.labels.size} training "
            "rows to fit on; expected some rows on both sides"
        )
    fit_rows, val_rows = order[:cut], order[cut:]
    features = rows.features
    return (
        {name: values[fit_rows] for name, values in features.items()},
        rows.labels[fit_rows],
        {name: values[val_rows] for name, values in features.items()},
        rows.labels[val_rows],
    )


def tune(request: TuningRequest, report: Callable[[str], None] | None = print) -> Tuned:
    """Search, then train and register the best trial (see the module docstring)."""
    if request.trials < 1:
        raise UsageError(f"--trials={request.trials}: expected at least 1")
    direction_of(request.objective, request.direction)
    model_fn = load_function(request.training.model_fn, "--model_fn")
    search_space(model_fn.function, model_fn.spec)  # before anything heavy
    key = ensure_signing_key(request.training.signing_key)
    public_key_of(key)  # a bad key fails now, not after the search
    with transformed_rows(request.training, report) as rows:
        return tune_rows(rows, request, report, key)


def tune_rows(
    rows: TransformedRows,
    request: TuningRequest,
    report: Callable[[str], None] | None,
    key: Path,
) -> Tuned:
    """The search and the best trial's registration on rows tf.Transform has made."""
    import optuna

    say = report or (lambda _message: None)
    direction = direction_of(request.objective, request.direction)
    training = request.training
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = search_space(rows.prepared.model_fn.function, rows.prepared.model_fn.spec)
    fit_x, fit_y, val_x, val_y = _validation_split(rows, request.validation_fraction, training.seed)
    base = job_hyperparameters(training, rows.prepared, rows.task, rows.labels)
    policy = mixed_policy() if training.mixed_precision else FLOAT32
    records: list[dict[str, Any]] = []
    started = time.monotonic()

    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial, space)
        batch_size = int(params.get("batch_size", training.batch_size))
        hyperparameters = {**base, **{k: v for k, v in params.items() if k != "batch_size"}}
        clock = time.monotonic()
        record: dict[str, Any] = {"number": trial.number, "params": params}
        records.append(record)
        with precision_policy(policy):
            model = build_model(
                rows.prepared.model_fn, rows.tft_output, hyperparameters, list(fit_x)
            )
            history = fit(
                model,
                fit_x,
                fit_y,
                batch_size=batch_size,
                epochs=training.epochs,
                validation=(val_x, val_y),
                callbacks=[
                    tf_keras.callbacks.EarlyStopping(
                        monitor=request.objective,
                        mode="max" if direction == "maximize" else "min",
                        patience=request.patience,
                        restore_best_weights=True,
                    ),
                    _ReportToOptuna(trial, request.objective),
                ],
            )
        if request.objective not in history:
            raise UsageError(
                f"--objective={request.objective}: not among the fit's per-epoch metrics "
                f"({', '.join(sorted(history))}); pick one of the val_ ones"
            )
        values = history[request.objective]
        best = max(values) if direction == "maximize" else min(values)
        record |= {
            "value": round(float(best), 6),
            "epochs": len(values),
            "seconds": round(time.monotonic() - clock, 2),
        }
        say(
            f"tune: trial {trial.number}: {request.objective} {best:.4f} after "
            f"{len(values)} epoch(s) ({describe_params(params)})"
        )
        return float(best)

    study = optuna.create_study(
        direction=direction,
        sampler=optuna.samplers.TPESampler(seed=training.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    study.optimize(
        objective,
        n_trials=request.trials,
        timeout=request.time_budget_s,
        catch=(),
    )
    for trial in study.trials:
        record = next((r for r in records if r["number"] == trial.number), None)
        if record is not None:
            record["state"] = trial.state.name.lower()
            if trial.state.name == "PRUNED":
                record["pruned_at_epoch"] = max(trial.intermediate_values, default=None)
    completed = [t for t in study.trials if t.state.name == "COMPLETE"]
    if not completed:
        raise UsageError(
            f"no trial completed within --time_budget={request.time_budget_s}s; raise it "
            "or lower --epochs / --train_rows"
        )
    best_params = dict(study.best_trial.params)
    best = _suggest(optuna.trial.FixedTrial(best_params), space)
    summary = {
        "library": f"optuna {optuna.__version__}",
        "objective": request.objective,
        "direction": direction,
        "trials_requested": request.trials,
        "trials_run": len(study.trials),
        "time_budget_s": request.time_budget_s,
        "seconds": round(time.monotonic() - started, 2),
        "validation_fraction": request.validation_fraction,
        "patience": request.patience,
        "search_space": space,
        "best_trial": study.best_trial.number,
        "best_value": round(float(study.best_value), 6),
        "best_params": best,
        "trials": records,
    }
    say(
        f"tune: best trial {study.best_trial.number} of {len(study.trials)}: "
        f"{request.objective} {study.best_value:.4f} ({describe_params(best)}); training it on "
        "all the training rows"
    )
    final = replace(
        training,
        hyperparameters={
            **training.hyperparameters,
            **{k: v for k, v in best.items() if k != "batch_size"},
        },
        batch_size=int(best.get("batch_size", training.batch_size)),
    )
    model = fit_and_register(
        rows,
        final,
        report,
        key,
        extra_metadata={"tuning": summary},
        extra_lineage={
            "tuning": {
                k: summary[k]
                for k in ("library", "objective", "direction", "best_trial", "best_value")
            }
        },
    )
    return Tuned(model, summary)


class _ReportToOptuna(tf_keras.callbacks.Callback):
    """Each epoch's objective to Optuna, which may prune the trial (raises TrialPruned)."""

    def __init__(self, trial: Any, objective: str) -> None:
        super().__init__()
        self.trial = trial
        self.objective = objective

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.objective)
        if value is None or not math.isfinite(float(value)):
            return
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            import optuna

            raise optuna.TrialPruned()


def describe_params(params: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{name}={value:.3g}" if isinstance(value, float) else f"{name}={value}"
        for name, value in params.items()
    )


def write_trials(path: Path | str, study: Mapping[str, Any]) -> None:
    """The search record as JSON (``--trials_file``)."""
    from batch.core.fsutil import write_json_atomic

    write_json_atomic(Path(path), dict(study))
