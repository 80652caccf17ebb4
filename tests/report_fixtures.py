"""Plausible values for the manifest fields a run report renders but older runs lack.

``with_observability_fields`` takes a real manifest and adds ``metrics``, ``drift``
and ``checks`` in the shape the scoring job records them (issue 8). It exists to
test the report's rendering of those sections before every run records them; the
values are consistent with the manifest's own counts, not measured.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np

LATENCY_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, math.inf]


def _histogram(bins: list[str], baseline: list[float], shift: float) -> dict[str, Any]:
    base = np.asarray(baseline, dtype=float)
    base = base / base.sum()
    current = np.roll(base, 1) * shift + base * (1 - shift)
    return {"bins": bins, "baseline": base.round(4).tolist(), "current": current.round(4).tolist()}


def _shifted_bell(bins: list[str], shift: float) -> dict[str, Any]:
    """A numeric feature whose distribution moved by ``shift`` standard deviations."""
    centers = np.linspace(-2.25, 2.25, len(bins))
    base = np.exp(-(centers**2) / 2)
    current = np.exp(-((centers - shift) ** 2) / 2)
    return {
        "bins": bins,
        "baseline": (base / base.sum()).round(4).tolist(),
        "current": (current / current.sum()).round(4).tolist(),
    }


def _psi(histogram: dict[str, Any]) -> float:
    base = np.clip(np.asarray(histogram["baseline"]), 1e-4, None)
    current = np.clip(np.asarray(histogram["current"]), 1e-4, None)
    return float(np.sum((current - base) * np.log(current / base)))


def _status(value: float, threshold: float) -> str:
    return "ok" if value <= threshold else "warn"


def with_observability_fields(manifest: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(manifest)
    counts = out["counts"]
    rows_in = counts["rows_in"]
    batch_size = int(out.get("batch_size") or 16384)
    batches = max(1, math.ceil(rows_in / batch_size))
    latency_counts = [
        0,
        0,
        1,
        batches // 4,
        batches // 2,
        batches - 1 - batches // 4 - batches // 2,
        0,
        0,
        0,
        0,
    ]
    latency_counts[5] = max(0, latency_counts[5])
    wall = 6.5
    timeline = [{"t": 0.0, "rows": 0}, {"t": 2.4, "rows": 0}]  # start-up: imports, model load
    for i in range(1, 13):
        timeline.append({"t": round(2.4 + i * 0.33, 2), "rows": min(rows_in, rows_in * i // 12)})
    out["metrics"] = {
        "rows_read": rows_in,
        "rows_scored": counts["rows_scored"],
        "rows_rejected": counts["rows_rejected"],
        "rejected_by_reason": dict(counts["rejected_by_reason"]),
        "batches": batches,
        "batch_latency_seconds": {
            "le": LATENCY_BOUNDS,
            "counts": latency_counts,
            "sum": 0.07 * batches,
            "count": batches,
            "p50": 0.062,
            "p95": 0.19,
            "p99": 0.23,
        },
        "model_load_seconds": 1.21,
        "wall_seconds": wall,
        "predictions_per_second": counts["rows_scored"] / wall,
        "timeline": timeline,
    }
    deciles = [f"q{i}" for i in range(1, 11)]
    features: list[dict[str, Any]] = []
    for name, kind, shift in (
        ("credit_score", "numeric", 0.6),
        ("debt_to_income", "numeric", 0.45),
        ("interest_rate", "numeric", 0.3),
        ("annual_income", "numeric", 0.1),
        ("loan_amount", "numeric", 0.05),
        ("state", "categorical", 0.06),
        ("channel", "categorical", 0.01),
    ):
        if kind == "numeric":
            histogram = _shifted_bell(deciles, shift)
        else:
            labels = (
                ["web", "branch", "partner", "phone", "<unseen>"]
                if name == "channel"
                else ["CA", "TX", "NY", "FL", "other"]
            )
            histogram = _histogram(labels, [40, 25, 20, 14, 1], shift)
        psi = _psi(histogram)
        features.append(
            {
                "name": name,
                "kind": kind,
                "psi": round(psi, 4),
                "null_rate": 0.0002,
                "baseline_null_rate": 0.0001,
                "unseen_share": 0.0006 if kind == "categorical" else None,
                "status": _status(psi, 0.2),
                "histogram": histogram,
            }
        )
    prediction_histogram = _histogram(
        [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)],
        [52, 18, 10, 7, 5, 3, 2, 1.5, 1, 0.5],
        0.05,
    )
    out["drift"] = {
        "baseline": {"source": "training data of loan_default@1", "rows": 20_000},
        "thresholds": {"max_psi": 0.2, "max_unseen_share": 0.01, "action": "warn"},
        "features": features,
        "prediction": {
            "name": "prediction",
            "kind": "numeric",
            "psi": round(_psi(prediction_histogram), 4),
            "null_rate": 0.0,
            "baseline_null_rate": 0.0,
            "unseen_share": None,
            "status": "ok",
            "histogram": prediction_histogram,
        },
        "status": "warn",
    }
    worst_psi = max(f["psi"] for f in features)
    out["checks"] = [
        {
            "name": "error_rate",
            "value": counts["error_rate"],
            "threshold": counts["max_error_rate"],
            "status": "ok",
            "message": f"{counts['rows_rejected']} of {rows_in} rows rejected",
        },
        {
            "name": "max_feature_psi",
            "value": worst_psi,
            "threshold": 0.2,
            "status": _status(worst_psi, 0.2),
            "message": "the most drifted feature is credit_score",
        },
    ]
    return out
