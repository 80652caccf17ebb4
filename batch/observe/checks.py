"""Run-level checks against the service levels users set, and the run summary.

Checks (manifest ``checks``; each ``{name, value, threshold, status, message}``):

    error_rate                    rows rejected / rows read vs --max_error_rate
                                  (fail: the run is not committed)
    drift_psi:<feature>           PSI vs --max_drift (status: --on_drift)
    drift_unseen_share:<feature>  unseen category share vs --max_unseen_share
    drift_psi:prediction          PSI of the predictions vs --max_drift

The run summary (``--summary_file``, and the manifest's ``summary``) is what an
alerting system reads: ``{"status": "ok"|"warn"|"fail", "run_id", "run_dir"
(null when nothing was committed), "reason", "checks", "counts",
"error_rate", "drift_status"}``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

SUMMARY_FORMAT = 1

# The statuses of checks, drift entries and runs, least severe first. Prometheus
# exports a status as its rank; reports sort and badge by it.
OK, WARN, FAIL = "ok", "warn", "fail"
STATUS_RANK: dict[str, int] = {OK: 0, WARN: 1, FAIL: 2}


def check(name: str, value: float, threshold: float, status: str, message: str) -> dict[str, Any]:
    return {
        "name": name,
        "value": value,
        "threshold": threshold,
        "status": status,
        "message": message,
    }


def error_rate(rows_rejected: int, rows_read: int) -> float:
    """Rejected rows as a share of rows read (0 for no rows)."""
    return rows_rejected / rows_read if rows_read else 0.0


def over_error_budget(rate: float, max_error_rate: float) -> bool:
    """The one definition of a breached error budget: strictly above the limit."""
    return rate > max_error_rate


def run_checks(
    rows_read: int, rows_rejected: int, max_error_rate: float, drift: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """Every check of a run, whatever its outcome."""
    rate = error_rate(rows_rejected, rows_read)
    over = over_error_budget(rate, max_error_rate)
    checks = [
        check(
            "error_rate",
            rate,
            max_error_rate,
            FAIL if over else OK,
            f"{rows_rejected:,} of {rows_read:,} rows rejected ({rate:.4%}); "
            f"{'above' if over else 'within'} --max_error_rate={max_error_rate:g}",
        )
    ]
    thresholds = drift.get("thresholds", {})
    entries = [
        *drift.get("features", []),
        *([drift["prediction"]] if drift.get("prediction") else []),
    ]
    for entry in entries:
        breached = entry["status"] != OK
        psi_over = entry["psi"] > thresholds["max_psi"]
        checks.append(
            check(
                f"drift_psi:{entry['name']}",
                entry["psi"],
                thresholds["max_psi"],
                entry["status"] if breached and psi_over else OK,
                f"{entry['kind']} '{entry['name']}': PSI {entry['psi']:.4f} "
                f"{'above' if psi_over else 'within'} --max_drift={thresholds['max_psi']:g}",
            )
        )
        unseen = entry.get("unseen_share")
        if unseen is not None:
            unseen_over = unseen > thresholds["max_unseen_share"]
            checks.append(
                check(
                    f"drift_unseen_share:{entry['name']}",
                    unseen,
                    thresholds["max_unseen_share"],
                    entry["status"] if breached and unseen_over else OK,
                    f"categorical '{entry['name']}': {unseen:.2%} of values unseen in training; "
                    f"{'above' if unseen_over else 'within'} "
                    f"--max_unseen_share={thresholds['max_unseen_share']:g}",
                )
            )
    return checks


def worst(statuses: Iterable[object]) -> str | None:
    """The most severe of ``ok``/``warn``/``fail`` in ``statuses`` (anything else is
    ignored); ``None`` when there is none."""
    known = [str(s) for s in statuses if s in STATUS_RANK]
    return max(known, key=STATUS_RANK.__getitem__, default=None)


def run_summary(
    *,
    run_id: str | None,
    run_dir: str | None,
    checks: Sequence[Mapping[str, Any]] = (),
    counts: Mapping[str, Any] | None = None,
    drift_status: str | None = None,
    reason: str | None = None,
    model: str | None = None,
) -> dict[str, Any]:
    """The machine-readable outcome of a run; ``fail`` whenever nothing was committed."""
    status = FAIL if run_dir is None else worst(c["status"] for c in checks) or OK
    rows_read = (counts or {}).get("rows_read", 0)
    rows_rejected = (counts or {}).get("rows_rejected", 0)
    return {
        "format": SUMMARY_FORMAT,
        "status": status,
        "run_id": run_id,
        "run_dir": run_dir,
        "model": model,
        "reason": reason,
        "checks": list(checks),
        "counts": dict(counts) if counts is not None else None,
        "error_rate": rows_rejected / rows_read if counts is not None and rows_read else None,
        "drift_status": drift_status,
    }


def job_summary(job: str, status: str, **fields: Any) -> dict[str, Any]:
    """The ``--summary_file`` JSON of a job other than scoring (compare, verify, report,
    backfill): the same ``format`` and ``status`` keys as :func:`run_summary`, the job's
    name, and its own fields."""
    return {"format": SUMMARY_FORMAT, "job": job, "status": status, **fields}


@dataclass(frozen=True)
class RunOutcome:
    """What a finished (committed or refused) run reports to its observers."""

    summary: dict[str, Any]
    metrics: dict[str, Any]
    drift: dict[str, Any]
    model_name: str
    model_version: str
