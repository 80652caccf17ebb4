"""Recalibrate a registered binary model on recent labeled data (``python -m
jobs.recalibrate NAME@VERSION --input=RECENT``): the operator's answer to a drift check
that failed.

1. resolve NAME@VERSION and verify it as scoring does (signature, key), then load the
   verified private copy;
2. read the recent rows with the contract the version carries (its embedded contract),
   drop the rows that break it, and split them by a hash of the key: calibration rows
   (even buckets) and evaluation rows (odd buckets), so the improvement is measured on rows
   the calibration did not see;
3. score them with the version's ``serving_default`` and fit a calibration of its
   probability: Platt (``sigmoid(a * logit(p) + b)``, two parameters, Newton's method) or
   isotonic (pool-adjacent-violators, interpolated piecewise-linearly);
4. export a new SavedModel that wraps the loaded one: its three signatures keep their
   inputs, and both serving signatures apply the calibration to the probability *inside
   the graph* (so Beam, Spark, the tf.Example path and any TF Serving see the same);
5. write its drift baseline from the recent rows and register it, signed, as the next
   version, unpromoted, with ``recalibration`` (method, parameters, ECE and log loss
   before and after on the evaluation rows) in metadata.json and in the lineage.

The comparison against production is the job's (``jobs.recalibrate`` calls
``batch.api.compare``).
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf

from batch.contract.contract import load_contract
from batch.core.errors import InputDataError, UsageError
from batch.demo.paths import demo_model_repo, ensure_signing_key
from batch.engine.prepare import trust_policy
from batch.model.loading import SERVING_SIGNATURE, load_model
from batch.model.repository import (
    TRANSFORM_OUTPUT_DIR,
    ModelRepository,
    embedded_contract,
)
from batch.model.resolved import ResolvedModel
from batch.release.evaluation import auc, log_loss
from training import dataset
from training.export import TF_EXAMPLE_SIGNATURE, TRANSFORM_SIGNATURE

Method = Literal["platt", "isotonic"]
METHODS: tuple[str, ...] = ("platt", "isotonic")
ECE_BINS = 10
_EPS = 1e-6
# What a new version does not inherit from the one it recalibrates.
_NOT_INHERITED = ("name", "version", "created", "content_hash", "blessings", "blessing")


@dataclass(frozen=True)
class RecalibrationRequest:
    model: str  # NAME@VERSION or NAME@ALIAS
    input: Path  # recent labeled Parquet
    method: Method = "platt"
    model_repo: Path | None = None
    public_key: Path | None = None
    allow_unsigned: bool = False
    signing_key: Path | None = None
    rows: int | None = None  # read at most this many rows


@dataclass(frozen=True)
class Recalibrated:
    base: ResolvedModel
    model: ResolvedModel
    summary: dict[str, Any]  # metadata.json `recalibration`


# -- metrics -------------------------------------------------------------------------


def expected_calibration_error(
    labels: np.ndarray, scores: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE: the row-weighted mean |mean label - mean score| over ``bins`` equal-width score bins."""
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    which = np.minimum((scores * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(labels[inside].mean() - scores[inside].mean())
    return float(total / max(labels.size, 1))


def calibration_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {
        "ece": round(expected_calibration_error(labels, scores), 6),
        "log_loss": round(log_loss(labels, scores), 6),
        "auc": round(auc(labels, scores), 6),
        "mean_prediction": round(float(np.mean(scores)), 6),
        "positive_rate": round(float(np.mean(labels)), 6),
    }


# -- fitting a calibration -----------------------------------------------------------


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def fit_platt(scores: np.ndarray, labels: np.ndarray, iterations: int = 100) -> tuple[float, float]:
    """(a, b) minimizing the log loss of ``sigmoid(a * logit(score) + b)``: Newton's method
    with a halving line search (each step lowers the loss), a little ridge for stability."""
    z = _logit(scores)
    y = np.asarray(labels, np.float64)

    def loss(a: float, b: float) -> float:
        t = a * z + b  # log(1 + e^t) - y t, computed without overflow
        return float(np.sum(np.logaddexp(0.0, t) - y * t) + 5e-7 * ((a - 1) ** 2 + b**2))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        q = 0.5 * (1 + np.tanh(0.5 * (a * z + b)))  # the sigmoid, without overflow
        w = q * (1 - q) + 1e-9
        grad = np.array([np.sum((q - y) * z), np.sum(q - y)]) + 1e-6 * np.array([a - 1, b])
        hess = np.array(
            [[np.sum(w * z * z) + 1e-6, np.sum(w * z)], [np.sum(w * z), np.sum(w) + 1e-6]]
        )
        step = np.linalg.solve(hess, grad)
        scale = 1.0
        while scale > 1e-6:
            trial = loss(a - scale * float(step[0]), b - scale * float(step[1]))
            if trial <= current:
                break
            scale /= 2
        else:
            break
        a, b = a - scale * float(step[0]), b - scale * float(step[1])
        improvement, current = current - trial, trial
        if improvement < 1e-9 * max(1.0, abs(current)):
            break
    return a, b


def fit_isotonic(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Isotonic regression (pool adjacent violators) of the labels on the scores, as
    (thresholds, values): a non-decreasing step function whose steps' centres the graph
    interpolates linearly between (constant outside)."""
    order = np.argsort(scores, kind="stable")
    x = np.asarray(scores, np.float64)[order]
    y = np.asarray(labels, np.float64)[order]
    # blocks: (sum of labels, count, sum of scores)
    sums: list[float] = []
    counts: list[float] = []
    xsums: list[float] = []
    for xi, yi in zip(x, y, strict=True):
        sums.append(yi)
        counts.append(1.0)
        xsums.append(xi)
        while len(sums) > 1 and sums[-2] / counts[-2] >= sums[-1] / counts[-1]:
            s, c, xs = sums.pop(), counts.pop(), xsums.pop()
            sums[-1] += s
            counts[-1] += c
            xsums[-1] += xs
    thresholds = np.array(xsums) / np.array(counts)
    values = np.clip(np.array(sums) / np.array(counts), _EPS, 1 - _EPS)
    return thresholds.astype(np.float32), values.astype(np.float32)


@dataclass(frozen=True)
class Calibration:
    method: Method
    parameters: dict[str, Any]

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """The calibration in numpy (the graph's twin, for the evaluation)."""
        if self.method == "platt":
            a, b = self.parameters["a"], self.parameters["b"]
            return (0.5 * (1 + np.tanh(0.5 * (a * _logit(scores) + b)))).astype(np.float32)
        x = np.asarray(self.parameters["thresholds"], np.float64)
        y = np.asarray(self.parameters["values"], np.float64)
        return np.interp(np.asarray(scores, np.float64), x, y).astype(np.float32)

    def to_json(self) -> dict[str, Any]:
        if self.method == "platt":
            return {"method": "platt", **self.parameters}
        return {"method": "isotonic", "steps": len(self.parameters["thresholds"])}


def fit_calibration(method: str, scores: np.ndarray, labels: np.ndarray) -> Calibration:
    if method == "platt":
        a, b = fit_platt(scores, labels)
        return Calibration("platt", {"a": round(a, 8), "b": round(b, 8)})
    if method == "isotonic":
        thresholds, values = fit_isotonic(scores, labels)
        return Calibration(
            "isotonic", {"thresholds": thresholds.tolist(), "values": values.tolist()}
        )
    raise UsageError(f"--method={method}: expected one of {', '.join(METHODS)}")


# -- the exported graph --------------------------------------------------------------


class CalibratedModel(tf.Module):
    """The loaded SavedModel behind its three signatures, the serving ones calibrated."""

    def __init__(self, loaded: Any, calibrate: Callable[[Any], Any], output: str) -> None:
        super().__init__()
        self.base = loaded  # tracked: its variables and assets (vocabularies) are saved
        self._calibrate = calibrate
        self._output = output
        serving = loaded.signatures[SERVING_SIGNATURE]
        examples = loaded.signatures[TF_EXAMPLE_SIGNATURE]
        transform = loaded.signatures[TRANSFORM_SIGNATURE]
        self.serve = tf.function(
            lambda **columns: self._calibrated(serving(**columns))
        ).get_concrete_function(**serving.structured_input_signature[1])
        self.serve_examples = tf.function(
            lambda **inputs: self._calibrated(examples(**inputs))
        ).get_concrete_function(**examples.structured_input_signature[1])
        self.transform = tf.function(lambda **columns: transform(**columns)).get_concrete_function(
            **transform.structured_input_signature[1]
        )

    def _calibrated(self, outputs: Mapping[str, Any]) -> dict[str, Any]:
        return {
            name: self._calibrate(value) if name == self._output else value
            for name, value in outputs.items()
        }


def calibration_fn(calibration: Calibration) -> Callable[[Any], Any]:
    """The calibration as TensorFlow ops (what the exported graph applies)."""
    if calibration.method == "platt":
        a = tf.constant(calibration.parameters["a"], tf.float32)
        b = tf.constant(calibration.parameters["b"], tf.float32)

        def platt(p: Any) -> Any:
            p = tf.clip_by_value(p, _EPS, 1 - _EPS)
            return tf.sigmoid(a * tf.math.log(p / (1 - p)) + b)

        return platt
    xs = tf.constant(calibration.parameters["thresholds"], tf.float32)
    ys = tf.constant(calibration.parameters["values"], tf.float32)

    def isotonic(p: Any) -> Any:
        # Piecewise-linear between the steps' centres, flat outside (numpy's interp).
        n = tf.shape(xs)[0]
        upper = tf.clip_by_value(tf.searchsorted(xs, p, side="right"), 1, tf.maximum(n - 1, 1))
        lower = upper - 1
        x0, x1 = tf.gather(xs, lower), tf.gather(xs, tf.minimum(upper, n - 1))
        y0, y1 = tf.gather(ys, lower), tf.gather(ys, tf.minimum(upper, n - 1))
        t = tf.clip_by_value(tf.math.divide_no_nan(p - x0, x1 - x0), 0.0, 1.0)
        return tf.where(p <= xs[0], ys[0], tf.where(p >= xs[-1], ys[-1], y0 + t * (y1 - y0)))

    return isotonic


def calibrated_module(loaded: Any, calibration: Calibration, output: str) -> Any:
    """A tf.Module around the loaded SavedModel whose serving signatures return
    ``output`` calibrated (and every other output as it was)."""
    return CalibratedModel(loaded, calibration_fn(calibration), output)


def save_calibrated(module: Any, path: Path) -> None:
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            SERVING_SIGNATURE: module.serve,
            TF_EXAMPLE_SIGNATURE: module.serve_examples,
            TRANSFORM_SIGNATURE: module.transform,
        },
    )


# -- the job -------------------------------------------------------------------------


def _score(signature: Any, table: pa.Table, spec: Mapping[str, Any], output: str) -> np.ndarray:
    scores = [
        signature(**dataset.raw_inputs(table.slice(start, 65536), spec))[output].numpy()
        for start in range(0, table.num_rows, 65536)
    ]
    return np.concatenate(scores).reshape(-1) if scores else np.zeros(0, np.float32)


def recalibrate(
    request: RecalibrationRequest, report: Callable[[str], None] | None = print
) -> Recalibrated:
    """Steps 1-5 of the module docstring; return the base and the new version."""
    from training.trainer import framework_versions, write_drift_baseline

    say = report or (lambda _message: None)
    if request.method not in METHODS:
        raise UsageError(f"--method={request.method}: expected one of {', '.join(METHODS)}")
    key = ensure_signing_key(request.signing_key)
    repo = ModelRepository(request.model_repo or demo_model_repo())
    base = repo.resolve(request.model)
    meta = base.metadata
    task = (meta.get("task") or {}).get("task")
    if task != "binary":
        raise UsageError(
            f"model {base.label}: recalibration fits a binary model's probability; its task "
            f"is {task or 'not recorded'} (metadata.json task). Retrain it on recent data "
            "instead (python -m jobs.train)"
        )
    outputs = list(meta["signature"]["outputs"])
    output = outputs[0]
    # Verified first, as scoring does; everything below reads the verified private copy.
    loaded_model = load_model(base, trust_policy(request.public_key, request.allow_unsigned))
    contract_dir = embedded_contract(Path(loaded_model.model.saved_model_dir))
    if contract_dir is None:
        raise UsageError(
            f"model {base.label}: carries no contract (saved_model/assets.extra); register it "
            "with jobs.train, or attach one, before recalibrating"
        )
    contract = load_contract(str(contract_dir))
    spec = dataset.feature_spec(contract)
    label = str(meta.get("label") or contract.label or "")
    if not label:
        raise UsageError(
            f"model {base.label}: no label recorded (metadata.json label, or the contract's "
            "rules.toml); recalibration needs the label column of the recent data"
        )
    keys = tuple(meta.get("key_columns") or contract.key_columns)
    raw_spec = dataset.raw_features(spec, (label, *keys))
    files = dataset.parquet_files(request.input)
    dataset.check_files(files, contract, spec, label)
    raw = dataset.read_rows(files, spec, request.rows)
    cleaned = dataset.clean_rows(raw, contract)
    buckets = dataset.key_hash_buckets(cleaned.table, keys, 2)
    fit_rows = cleaned.table.filter(pa.array(buckets == 0))
    eval_rows = cleaned.table.filter(pa.array(buckets == 1))
    if fit_rows.num_rows < 50 or eval_rows.num_rows < 50:
        raise InputDataError(
            f"--input={request.input}: expected at least 100 clean labeled rows to fit and "
            f"evaluate a calibration; found {cleaned.table.num_rows} ({cleaned.dropped} "
            "dropped as dirty). Pass more recent data"
        )

    loaded = tf.saved_model.load(str(loaded_model.model.saved_model_dir))
    serving = loaded.signatures[SERVING_SIGNATURE]

    def labels_of(table: pa.Table) -> np.ndarray:
        return pc.cast(table.column(label), pa.float64()).to_numpy(zero_copy_only=False)

    fit_scores = _score(serving, fit_rows, raw_spec, output)
    eval_scores = _score(serving, eval_rows, raw_spec, output)
    calibration = fit_calibration(request.method, fit_scores, labels_of(fit_rows))
    before = calibration_metrics(labels_of(eval_rows), eval_scores)
    after = calibration_metrics(labels_of(eval_rows), calibration.apply(eval_scores))

    work_dir = Path(tempfile.mkdtemp(prefix="batchscore-recalibrate-"))
    try:
        saved_model_dir = work_dir / "saved_model"
        save_calibrated(calibrated_module(loaded, calibration, output), saved_model_dir)
        graph_scores = _score(
            tf.saved_model.load(str(saved_model_dir)).signatures[SERVING_SIGNATURE],
            eval_rows,
            raw_spec,
            output,
        )
        graph_gap = float(np.max(np.abs(graph_scores - calibration.apply(eval_scores)), initial=0))
        if graph_gap > 1e-4:
            raise UsageError(
                f"model {base.label}: the exported calibration differs from the fitted one by "
                f"{graph_gap:.2e} on the evaluation rows (expected < 1e-4); report this"
            )
        baseline = write_drift_baseline(
            saved_model_dir, raw, list(raw_spec), graph_scores, output, request.input
        )
        summary = {
            "base": base.label,
            "method": request.method,
            "calibration": calibration.to_json(),
            "input": str(request.input.resolve()),
            "input_snapshot": dataset.snapshot(request.input, files),
            "rows_read": raw.num_rows,
            "rows_dropped_dirty": cleaned.dropped,
            "fit_rows": fit_rows.num_rows,
            "evaluation_rows": eval_rows.num_rows,
            "before": before,
            "after": after,
        }
        inherited = {k: v for k, v in meta.items() if k not in _NOT_INHERITED}
        metadata = {
            **inherited,
            "drift_baseline": baseline,
            "framework": framework_versions(),
            "recalibration": summary,
            "lineage": {
                **meta.get("lineage", {}),
                "recalibrated_from": {
                    "model": base.label,
                    "content_hash": base.content_hash,
                    "method": request.method,
                    "input_fingerprint": summary["input_snapshot"]["fingerprint"],
                },
            },
        }
        transform_output = Path(base.saved_model_dir).parent / TRANSFORM_OUTPUT_DIR
        model = repo.register(
            base.name,
            saved_model_dir,
            metadata,
            transform_output if transform_output.is_dir() else None,
            signing_key=key,
            contract_dir=contract_dir,
        )
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    say(
        f"recalibrate: registered {model.label} (unpromoted) from {base.label}: {request.method} "
        f"on {fit_rows.num_rows:,} recent rows; on {eval_rows.num_rows:,} others ECE "
        f"{before['ece']:.4f} -> {after['ece']:.4f}, log loss {before['log_loss']:.4f} -> "
        f"{after['log_loss']:.4f} (AUC {before['auc']:.4f} -> {after['auc']:.4f})"
    )
    return Recalibrated(base, model, summary)


__all__ = [
    "METHODS",
    "Recalibrated",
    "RecalibrationRequest",
    "calibration_metrics",
    "expected_calibration_error",
    "fit_calibration",
    "recalibrate",
]
