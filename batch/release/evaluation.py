"""Model quality and model-vs-model metrics, in numpy (no scikit-learn, no TensorFlow).

Training reports AUC and log-loss with these functions; ``jobs.compare`` uses
them and the distribution metrics below to decide whether a candidate model
may replace a baseline (:func:`verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from batch.observe.drift import psi

# Floors probabilities, so a 0/1 score keeps the log-loss finite.
EPSILON = 1e-7
PSI_BINS = 10


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula; ties get average ranks."""
    labels = labels.astype(bool)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(len(scores), dtype=np.float64)
    # Average rank within runs of equal scores.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    averages = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(averages, ends - starts)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def log_loss(labels: np.ndarray, scores: np.ndarray) -> float:
    p = np.clip(scores.astype(np.float64), EPSILON, 1 - EPSILON)
    y = labels.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def score_psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index (:func:`batch.observe.drift.psi`) of the scores
    ``actual`` against the scores ``expected``; NaN when either is empty.

    Bins are ``expected``'s quantiles (deciles by default; repeated edges merged),
    so each bin holds about the same share of the expected scores.
    """
    if len(expected) == 0 or len(actual) == 0:
        return float("nan")
    edges = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    return psi(_shares(expected, edges), _shares(actual, edges))


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return counts / len(values)


@dataclass(frozen=True)
class Thresholds:
    """What a candidate must meet against its baseline to pass a comparison."""

    agreement_threshold: float = 0.5
    min_agreement: float = 0.99
    max_mean_abs_diff: float = 0.02
    max_psi: float = 0.1
    max_auc_drop: float = 0.01
    min_rows: int = 100

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Check:
    """One line of a verdict: a metric, its limit, and whether it is within it."""

    name: str
    value: float | None
    limit: float
    # "min": value must be >= limit; "max": value must be <= limit.
    bound: str
    passed: bool
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def pairwise_metrics(
    baseline: np.ndarray, candidate: np.ndarray, agreement_threshold: float
) -> dict[str, float]:
    """How far two models' scores on the same rows are apart."""
    if len(baseline) == 0:
        return {}
    diff = np.abs(candidate.astype(np.float64) - baseline.astype(np.float64))
    agree = (baseline >= agreement_threshold) == (candidate >= agreement_threshold)
    return {
        "agreement": float(agree.mean()),
        "mean_abs_diff": float(diff.mean()),
        "max_abs_diff": float(diff.max()),
        "psi": score_psi(baseline, candidate),
        "baseline_mean": float(baseline.mean()),
        "candidate_mean": float(candidate.mean()),
    }


def labelled_metrics(
    labels: np.ndarray, baseline: np.ndarray, candidate: np.ndarray
) -> dict[str, float]:
    """AUC and log-loss of both models on the labelled rows, and the candidate's AUC drop."""
    base_auc, cand_auc = auc(labels, baseline), auc(labels, candidate)
    return {
        "labelled_rows": len(labels),
        "positive_rate": float(labels.mean()) if len(labels) else float("nan"),
        "baseline_auc": base_auc,
        "candidate_auc": cand_auc,
        "auc_drop": base_auc - cand_auc,
        "baseline_log_loss": log_loss(labels, baseline) if len(labels) else float("nan"),
        "candidate_log_loss": log_loss(labels, candidate) if len(labels) else float("nan"),
    }


def verdict(metrics: Mapping[str, Any], thresholds: Thresholds) -> list[Check]:
    """The checks of a comparison; it passes when every check passes."""
    t = thresholds
    checks = [
        _check("rows_compared", metrics.get("rows_compared", 0), t.min_rows, "min"),
        _check("agreement", metrics.get("agreement"), t.min_agreement, "min"),
        _check("mean_abs_diff", metrics.get("mean_abs_diff"), t.max_mean_abs_diff, "max"),
        _check("psi", metrics.get("psi"), t.max_psi, "max"),
    ]
    if "auc_drop" in metrics:
        if math.isnan(metrics["auc_drop"]):
            checks.append(
                Check("auc_drop", None, t.max_auc_drop, "max", True, "skipped: one label class")
            )
        else:
            checks.append(_check("auc_drop", metrics["auc_drop"], t.max_auc_drop, "max"))
    return checks


def _check(name: str, value: float | None, limit: float, bound: str) -> Check:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return Check(name, None, limit, bound, False, "no rows to measure")
    passed = value >= limit if bound == "min" else value <= limit
    return Check(name, float(value), limit, bound, bool(passed))
