"""Feature and prediction drift: training baselines, mergeable counts, PSI.

Training describes every raw feature (and the held-out predictions) as a
:class:`Baseline`: numeric columns by quantile bin edges, categorical columns
by their categories (the most frequent :data:`MAX_CATEGORIES`), each with the
share of rows per bin and the null rate. The baseline is saved inside the
SavedModel (``assets.extra/batchscore_baseline.json``), so the model's
signature covers it: a changed baseline fails verification like a changed
weight.

Scoring counts the same bins batch by batch, vectorized (``np.searchsorted``
for numbers, ``pyarrow.compute.index_in`` for categories), into
:class:`DriftCounts` that add up across batches, parts and workers. The run's
drift report compares the merged counts with the baseline: PSI per feature
(with :data:`PSI_EPSILON` for empty bins) and, for categoricals whose
baseline lists every category, the share of values never seen in training.

Bins: numeric ``[edge[i-1], edge[i])`` with open ends, then ``(null)`` (null
or NaN); categorical one per category, ``(other)``, then ``(null)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch.contract.contract import Kind as ContractKind
from batch.contract.contract import arrow_kind
from batch.core.dictionaries import dictionary_indices
from batch.core.errors import ModelError
from batch.core.fsutil import file_sha256, read_json
from batch.core.masks import valid_rows
from batch.observe.checks import OK, worst

Kind = Literal["numeric", "categorical"]
NUMERIC: Kind = "numeric"
CATEGORICAL: Kind = "categorical"
DriftAction = Literal["warn", "fail"]

DEFAULT_BINS = 10
MAX_CATEGORIES = 100
PSI_EPSILON = 1e-4
DEFAULT_MAX_PSI = 0.25
DEFAULT_MAX_UNSEEN_SHARE = 0.05
# Inside the SavedModel folder, where the model's signature covers it.
BASELINE_FOLDER = "assets.extra"
BASELINE_FILE = "batchscore_baseline.json"
BASELINE_FORMAT = 1
OTHER_LABEL = "(other)"
NULL_LABEL = "(null)"
# How a column of each contract kind is binned.
_DRIFT_KINDS: dict[ContractKind | None, Kind] = {
    "int": NUMERIC,
    "float": NUMERIC,
    "string": CATEGORICAL,
}


def baseline_path(saved_model_dir: Path | str) -> Path:
    return Path(saved_model_dir) / BASELINE_FOLDER / BASELINE_FILE


def kind_of(arrow_type: pa.DataType) -> Kind | None:
    """numeric for integers and floats, categorical for strings, None for anything else."""
    return _DRIFT_KINDS.get(arrow_kind(arrow_type))


@dataclass(frozen=True)
class FeatureBaseline:
    """One column's bins and its training shares (``fractions``, one per bin, sum 1)."""

    name: str
    kind: Kind
    fractions: tuple[float, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    # The categories list every value training saw (no tail folded into (other)).
    complete: bool = True

    @property
    def bins(self) -> int:
        if self.kind == NUMERIC:
            return len(self.edges) + 2
        return len(self.categories) + 2

    def labels(self) -> list[str]:
        if self.kind == CATEGORICAL:
            return [*self.categories, OTHER_LABEL, NULL_LABEL]
        bounds = [_number(e) for e in self.edges]
        if not bounds:
            return ["all", NULL_LABEL]
        labels = [f"< {bounds[0]}"]
        labels += [f"[{low}, {high})" for low, high in itertools.pairwise(bounds)]
        return [*labels, f">= {bounds[-1]}", NULL_LABEL]

    @property
    def null_rate(self) -> float:
        return self.fractions[-1]

    def count(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Rows of ``column`` per bin (int64, length :attr:`bins`)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        nulls = column.null_count
        if self.kind == NUMERIC:
            present = pc.drop_null(column) if nulls else column
            values = _as_float32(present.to_numpy(zero_copy_only=False))
            if pa.types.is_floating(column.type):
                nan = np.isnan(values)
                if nan.any():
                    nulls += int(nan.sum())
                    values = values[~nan]
            counts = np.bincount(_bin_index(values, self.edges), minlength=len(self.edges) + 1)
        else:
            counts = self._count_categories(column)
        return np.append(counts, nulls).astype(np.int64)

    def _count_categories(self, column: pa.Array) -> np.ndarray:
        """Non-null rows of a text column per category, then (other). A dictionary-encoded
        column is counted per distinct value (numpy's bincount of its indices), its
        distinct values then looked up once."""
        other = len(self.categories)
        if pa.types.is_dictionary(column.type):
            codes = pc.fill_null(self._category_index(column.dictionary), other)
            rows = dictionary_indices(column)
            if column.null_count:
                rows = rows[valid_rows(column)]
            per_distinct = np.bincount(rows, minlength=len(column.dictionary))
            return np.bincount(
                codes.to_numpy(zero_copy_only=False), weights=per_distinct, minlength=other + 1
            ).astype(np.int64)
        index = pc.fill_null(self._category_index(column), other)
        counts = np.bincount(index.to_numpy(zero_copy_only=False), minlength=other + 1)
        counts[-1] -= column.null_count  # nulls match no category: counted as (other) above
        return counts

    def _category_index(self, values: pa.Array) -> pa.Array:
        """Per value, its index in :attr:`categories` (null: none of them)."""
        return pc.index_in(values, value_set=pa.array(self.categories, type=values.type))

    def to_json(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "fractions": list(self.fractions),
        }
        if self.kind == NUMERIC:
            payload["edges"] = list(self.edges)
        else:
            payload["categories"] = list(self.categories)
            payload["complete"] = self.complete
        return payload

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> FeatureBaseline:
        kind: Kind = NUMERIC if payload["kind"] == NUMERIC else CATEGORICAL
        if payload["kind"] != kind:
            raise ValueError(
                f"feature '{payload.get('name')}': kind '{payload['kind']}' is not {NUMERIC} or {CATEGORICAL}"
            )
        feature = cls(
            name=str(payload["name"]),
            kind=kind,
            fractions=tuple(float(f) for f in payload["fractions"]),
            edges=tuple(float(e) for e in payload.get("edges", ())),
            categories=tuple(str(c) for c in payload.get("categories", ())),
            complete=bool(payload.get("complete", True)),
        )
        if len(feature.fractions) != feature.bins:
            raise ValueError(
                f"feature '{feature.name}': {len(feature.fractions)} fractions for "
                f"{feature.bins} bins"
            )
        return feature


def describe_column(
    name: str, column: pa.Array | pa.ChunkedArray, bins: int = DEFAULT_BINS
) -> FeatureBaseline:
    """The baseline of one column: quantile edges or the top categories, and the shares."""
    kind = kind_of(column.type)
    if kind is None:
        raise ValueError(f"column '{name}': type {column.type} is neither numeric nor a string")
    if kind == NUMERIC:
        values = _as_float32(pc.drop_null(column).to_numpy(zero_copy_only=False))
        values = values[np.isfinite(values)]
        quantiles = np.linspace(0, 1, bins + 1)[1:-1]
        edges: Sequence[float] = (
            np.unique(np.quantile(values, quantiles).astype(np.float32)).tolist()
            if values.size
            else []
        )
        shell = FeatureBaseline(name, NUMERIC, (), edges=tuple(float(e) for e in edges))
    else:
        counted = pc.value_counts(pc.drop_null(column))
        order = np.argsort(-counted.field("counts").to_numpy(), kind="stable")
        values = counted.field("values").to_pylist()
        top = tuple(str(values[i]) for i in order[:MAX_CATEGORIES])
        shell = FeatureBaseline(
            name, CATEGORICAL, (), categories=top, complete=len(values) <= MAX_CATEGORIES
        )
    counts = shell.count(column)
    total = max(int(counts.sum()), 1)
    return FeatureBaseline(
        name=shell.name,
        kind=shell.kind,
        fractions=tuple(float(c) / total for c in counts),
        edges=shell.edges,
        categories=shell.categories,
        complete=shell.complete,
    )


@dataclass(frozen=True)
class Baseline:
    """What training saw: every raw feature and the predictions on held-out rows."""

    source: str
    rows: int
    features: tuple[FeatureBaseline, ...]
    prediction: FeatureBaseline | None = None
    prediction_rows: int = 0
    # sha256 of the file it was read from (recorded in the run's manifest).
    sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": BASELINE_FORMAT,
            "source": self.source,
            "rows": self.rows,
            "features": [f.to_json() for f in self.features],
            "prediction": self.prediction.to_json() if self.prediction else None,
            "prediction_rows": self.prediction_rows,
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any], sha256: str | None = None) -> Baseline:
        prediction = payload.get("prediction")
        return cls(
            source=str(payload.get("source", "")),
            rows=int(payload["rows"]),
            features=tuple(FeatureBaseline.from_json(f) for f in payload["features"]),
            prediction=FeatureBaseline.from_json(prediction) if prediction else None,
            prediction_rows=int(payload.get("prediction_rows", 0)),
            sha256=sha256,
        )

    @classmethod
    def load(cls, saved_model_dir: Path | str, label: str) -> Baseline | None:
        """The baseline stored in a SavedModel, or None when it has none."""
        path = baseline_path(saved_model_dir)
        if not path.is_file():
            return None
        try:
            return cls.from_json(read_json(path), sha256=file_sha256(path))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(
                f"model {label}: drift baseline {path} is unreadable ({exc}); retrain the "
                "model, or score with --drift=off"
            ) from exc


def compute_baseline(
    table: pa.Table,
    features: Sequence[str],
    source: str,
    predictions: np.ndarray | None = None,
    prediction_name: str = "prediction",
    bins: int = DEFAULT_BINS,
) -> Baseline:
    """The baseline of ``features`` of ``table`` (and of held-out ``predictions``)."""
    described = tuple(describe_column(name, table.column(name), bins) for name in features)
    prediction = None
    if predictions is not None:
        prediction = describe_column(prediction_name, pa.array(predictions.reshape(-1)), bins)
    return Baseline(
        source=source,
        rows=table.num_rows,
        features=described,
        prediction=prediction,
        prediction_rows=0 if predictions is None else int(predictions.size),
    )


@dataclass
class DriftCounts:
    """Rows per bin of every baseline feature (and of the predictions); adds up exactly."""

    features: dict[str, np.ndarray] = field(default_factory=dict)
    prediction: np.ndarray | None = None

    def add(self, other: DriftCounts) -> None:
        for name, counts in other.features.items():
            mine = self.features.get(name)
            self.features[name] = counts.copy() if mine is None else mine + counts
        if other.prediction is not None:
            self.prediction = (
                other.prediction.copy()
                if self.prediction is None
                else self.prediction + other.prediction
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "features": {name: counts.tolist() for name, counts in self.features.items()},
            "prediction": None if self.prediction is None else self.prediction.tolist(),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> DriftCounts:
        prediction = payload.get("prediction")
        return cls(
            features={
                str(name): np.asarray(counts, dtype=np.int64)
                for name, counts in payload.get("features", {}).items()
            },
            prediction=None if prediction is None else np.asarray(prediction, dtype=np.int64),
        )


# Feature bins are counted on at most this many rows of each batch, evenly strided:
# exact for batches up to this size, a 1-in-k sample of larger ones (k = 4 for the
# default 65536-row batch). Counting every row of every batch cost 10-15% of a
# 10M-row job's wall time; a quarter of the rows keeps the PSI of millions of
# rows to within sampling noise of ~1e-4 for ~3%.
FEATURE_SAMPLE_ROWS = 16384


def feature_sample(batch: pa.RecordBatch, rows: int = FEATURE_SAMPLE_ROWS) -> pa.RecordBatch:
    """``batch`` itself when it has at most ``rows`` rows, else every k-th row of it."""
    if batch.num_rows <= rows:
        return batch
    step = -(-batch.num_rows // rows)
    return batch.take(pa.array(np.arange(0, batch.num_rows, step)))


def count_features(baseline: Baseline, batch: pa.RecordBatch) -> DriftCounts:
    """The bins of one input batch (every baseline feature it has), counted on
    :func:`feature_sample` of it."""
    present = set(batch.schema.names)
    features = [f for f in baseline.features if f.name in present]
    # Only the baseline's columns are sampled (not keys, labels or passthrough columns).
    batch = feature_sample(batch.select([f.name for f in features]))
    return DriftCounts({f.name: f.count(batch.column(f.name)) for f in features})


def count_prediction(baseline: Baseline, batch: pa.RecordBatch) -> np.ndarray | None:
    """The bins of the prediction column of one output batch, if the baseline has one."""
    feature = baseline.prediction
    if feature is None or feature.name not in batch.schema.names:
        return None
    return feature.count(batch.column(feature.name))


def psi(baseline: Sequence[float] | np.ndarray, current: Sequence[float] | np.ndarray) -> float:
    """Population stability index of two distributions over the same bins.

    ``sum((c - b) * ln(c / b))`` with shares clipped to :data:`PSI_EPSILON`, so an
    empty bin on one side counts heavily but finitely. 0 = identical; by
    convention < 0.1 is stable, 0.1-0.25 a moderate shift, > 0.25 a major one.
    """
    b = np.clip(np.asarray(baseline, dtype=np.float64), PSI_EPSILON, None)
    c = np.clip(np.asarray(current, dtype=np.float64), PSI_EPSILON, None)
    return float(np.sum((c - b) * np.log(c / b)))


@dataclass(frozen=True)
class DriftThresholds:
    max_psi: float = DEFAULT_MAX_PSI
    max_unseen_share: float = DEFAULT_MAX_UNSEEN_SHARE
    action: DriftAction = "warn"

    def to_json(self) -> dict[str, Any]:
        return {
            "max_psi": self.max_psi,
            "max_unseen_share": self.max_unseen_share,
            "action": self.action,
        }


def _feature_report(
    feature: FeatureBaseline, counts: np.ndarray | None, thresholds: DriftThresholds
) -> dict[str, Any]:
    if counts is None or len(counts) != feature.bins:
        counts = np.zeros(feature.bins, dtype=np.int64)
    total = int(counts.sum())
    current = counts / total if total else np.zeros(feature.bins)
    value = psi(feature.fractions, current) if total else 0.0
    unseen = None
    if feature.kind == CATEGORICAL and feature.complete:
        non_null = total - int(counts[-1])
        unseen = float(counts[-2]) / non_null if non_null else 0.0
    breached = value > thresholds.max_psi or (
        unseen is not None and unseen > thresholds.max_unseen_share
    )
    return {
        "name": feature.name,
        "kind": feature.kind,
        "psi": round(value, 6),
        "null_rate": float(current[-1]) if total else 0.0,
        "baseline_null_rate": feature.null_rate,
        "unseen_share": unseen,
        "rows": total,
        "status": thresholds.action if breached else OK,
        "histogram": {
            "bins": feature.labels(),
            "baseline": [round(f, 6) for f in feature.fractions],
            "current": [round(float(f), 6) for f in current],
        },
    }


def drift_report(
    baseline: Baseline | None,
    counts: DriftCounts | None,
    thresholds: DriftThresholds,
    disabled: bool = False,
) -> dict[str, Any]:
    """The manifest's ``drift`` section."""
    report: dict[str, Any] = {
        "baseline": None,
        "thresholds": thresholds.to_json(),
        "features": [],
        "prediction": None,
        "status": OK,
    }
    if disabled:
        report["note"] = "not computed (--drift=off)"
        return report
    if baseline is None:
        report["note"] = "the model has no drift baseline (train it with jobs.train to get one)"
        return report
    counts = counts or DriftCounts()
    report["baseline"] = {
        "source": baseline.source,
        "rows": baseline.rows,
        "prediction_rows": baseline.prediction_rows,
        "sha256": baseline.sha256,
    }
    report["features"] = [
        _feature_report(f, counts.features.get(f.name), thresholds) for f in baseline.features
    ]
    if baseline.prediction is not None:
        report["prediction"] = _feature_report(baseline.prediction, counts.prediction, thresholds)
    entries = [*report["features"], *([report["prediction"]] if report["prediction"] else [])]
    report["status"] = worst(entry["status"] for entry in entries) or OK
    return report


def _as_float32(values: np.ndarray) -> np.ndarray:
    """Numbers are binned in float32: training casts float64 columns to the model's float32
    and scoring may read them as float64, and a value that sits on a bin edge (common in
    discrete-valued columns) must land in the same bin both ways."""
    return np.asarray(values, dtype=np.float32)


def _bin_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """For each value, how many edges are <= it (``searchsorted(edges, values, "right")``).

    With the few edges a baseline has, one vectorized comparison per edge is about three
    times faster than a binary search per value."""
    bounds = np.asarray(edges, dtype=values.dtype)
    if len(bounds) > 100:
        return np.searchsorted(bounds, values, side="right")
    index = np.zeros(values.shape, dtype=np.int8)
    for edge in bounds:
        index += values >= edge
    return index


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"
