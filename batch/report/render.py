"""The run report: one self-contained HTML page about a committed run.

The page is built from the run's ``_MANIFEST.json`` and a few bounded reads of
its Parquet outputs (a strided sample of the prediction columns, a handful of
rejected rows as examples). Plots are drawn with matplotlib's Agg backend and
embedded as base64 PNG, the CSS is inline, and nothing refers to a URL, so the
file can be mailed, attached to a ticket or archived as it is.

This module prepares the data: each section is a plain dataclass. The HTML is in
Jinja2 templates shipped with the package (``batch/report/templates/``: the page,
one partial per section, the CSS), rendered with autoescape, so every string from
the manifest is escaped by the template engine.

Every section renders from the manifest fields when they are there and says so
in the page when they are not: manifests written before run metrics and drift
were recorded have no ``metrics``, ``drift`` or ``checks``, and a model
registered without a training baseline has ``drift.baseline = null``.

Sections: header with a status badge, counts and reconciliation, throughput,
reject reasons, the prediction distribution (against the training baseline and
against another run), drift, checks.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.core.columns import CONSTANT_COLUMNS, MESSAGE_COLUMN, REASON_COLUMN
from batch.core.errors import CommitError, UsageError
from batch.observe.checks import STATUS_RANK as STATUS_ORDER
from batch.observe.checks import worst as worst_status
from batch.output.commit import (
    LATEST,
    MANIFEST,
    PREDICTIONS,
    REJECTED,
    RUN_PREFIX,
    STAGING,
    SUCCESS,
)
from batch.output.manifest import read_manifest

if TYPE_CHECKING:  # matplotlib and jinja2 load with the first report (~0.5 s)
    import jinja2
    from matplotlib.figure import Figure

# Enough for a smooth histogram; a 20M-row run is read one column at a time and
# only every k-th value is kept, so memory stays flat whatever the run's size.
DEFAULT_SAMPLE_ROWS = 200_000
EXAMPLES_PER_REASON = 3
# Rejected rows scanned for examples at most (a run that rejected millions of rows
# still shows examples of each frequent reason without reading them all).
MAX_REJECTED_SCANNED = 500_000
# A run shorter than this has no throughput estimate from its second-resolution times.
MIN_SECONDS_FOR_ESTIMATE = 10
WORST_FEATURES_MIN = 3
WORST_FEATURES_MAX = 5

# Colours shared by the page and its plots.
CURRENT_COLOR = "#2563eb"
BASELINE_COLOR = "#9ca3af"
OTHER_RUN_COLOR = "#f59e0b"


class ReportError(UsageError):
    """The report cannot be made from what was given (no such run, not committed, bad manifest)."""


@dataclass(frozen=True)
class RunData:
    """A committed run as the report sees it: its folder and its manifest."""

    run_dir: Path
    manifest: dict[str, Any]
    prediction_sample: dict[str, np.ndarray] = field(default_factory=dict)
    reject_examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return str(self.manifest.get("run_id") or self.run_dir.name.removeprefix(RUN_PREFIX))

    @property
    def model_label(self) -> str:
        model = self.manifest.get("model") or {}
        return f"{model.get('name', '?')}@{model.get('version', '?')}"


# --------------------------------------------------------------------------- loading


def read_committed_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of the committed run in ``run_dir`` (read by
    :func:`batch.output.manifest.read_manifest`, as JSON for the templates); a
    :class:`ReportError` that says what to pass instead when ``run_dir`` is not one."""
    hint = "pass the run folder that python -m jobs.score printed: OUTPUT/<model>/<version>/run=<run id>"
    if not run_dir.exists():
        raise ReportError(f"{run_dir}: no such folder; {hint}")
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: not a folder; {hint}")
    manifest_path = run_dir / MANIFEST
    if (run_dir / LATEST).is_file():
        newest = _latest_run_dir(run_dir)
        suggestion = f"; its newest committed run is {newest}" if newest else ""
        raise ReportError(
            f"{run_dir}: a model version folder, not a run folder{suggestion}; {hint}"
        )
    if run_dir.parent.name == STAGING:
        raise ReportError(
            f"{run_dir}: a staged run that was never committed (it is under {STAGING}/); "
            "only committed runs have a report: wait for the job to finish, or rerun it"
        )
    if not (run_dir / SUCCESS).is_file():
        what = (
            f"has {MANIFEST} but no {SUCCESS}" if manifest_path.is_file() else f"has no {SUCCESS}"
        )
        raise ReportError(
            f"{run_dir}: not a committed run ({what}): its job is still running or died "
            "before the commit; report on a committed run (python -m jobs.score cleans "
            "up dead runs on its next start)"
        )
    if not manifest_path.is_file():
        raise ReportError(
            f"{manifest_path}: missing although {SUCCESS} is there; the run folder was "
            "damaged after its commit: check it with python -m jobs.verify and rerun the job"
        )
    try:
        manifest = read_manifest(run_dir)
    except CommitError as exc:
        raise ReportError(
            f"{exc}; the run folder was damaged after its commit: check it with "
            "python -m jobs.verify and rerun the job"
        ) from exc
    return manifest.to_json()


def _latest_run_dir(version_dir: Path) -> Path | None:
    try:
        pointer = json.loads((version_dir / LATEST).read_text())
        return version_dir / str(pointer["run_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def load_run(run_dir: Path, *, sample_rows: int = DEFAULT_SAMPLE_ROWS) -> RunData:
    """Read what the report needs from a committed run: the manifest, a sample of its
    prediction columns and a few rejected rows per reason."""
    manifest = read_committed_manifest(run_dir)
    return RunData(
        run_dir=run_dir,
        manifest=manifest,
        prediction_sample=sample_predictions(run_dir, manifest, sample_rows),
        reject_examples=reject_examples(run_dir, manifest),
    )


def _part_paths(run_dir: Path, manifest: Mapping[str, Any], kind: str) -> list[Path]:
    parts = (manifest.get("outputs") or {}).get(kind) or []
    return [
        run_dir / str(part["path"]) for part in parts if (run_dir / str(part["path"])).is_file()
    ]


def _is_numeric(arrow_type: pa.DataType) -> bool:
    return bool(pa.types.is_floating(arrow_type) or pa.types.is_integer(arrow_type))


def prediction_columns(schema: pa.Schema, key_columns: Iterable[str]) -> list[str]:
    """The model's output columns in a predictions part: numeric (or lists of numbers),
    neither a key nor one of the constant columns every run adds."""
    skip = {*key_columns, *CONSTANT_COLUMNS}
    columns = []
    for schema_field in schema:
        if schema_field.name in skip:
            continue
        value_type = schema_field.type
        if pa.types.is_list(value_type) or pa.types.is_fixed_size_list(value_type):
            value_type = value_type.value_type
        if _is_numeric(value_type):
            columns.append(schema_field.name)
    return columns


def sample_predictions(
    run_dir: Path, manifest: Mapping[str, Any], sample_rows: int = DEFAULT_SAMPLE_ROWS
) -> dict[str, np.ndarray]:
    """Every k-th value of each prediction column, k chosen so that about ``sample_rows``
    values are kept; parts are streamed batch by batch, so memory does not grow with the
    run. List columns contribute all their elements."""
    paths = _part_paths(run_dir, manifest, PREDICTIONS)
    if not paths:
        return {}
    columns = prediction_columns(pq.read_schema(paths[0]), manifest.get("key_columns") or [])
    if not columns:
        return {}
    total = sum(pq.ParquetFile(path).metadata.num_rows for path in paths)
    stride = max(1, math.ceil(total / max(1, sample_rows)))
    kept: dict[str, list[np.ndarray]] = {name: [] for name in columns}
    offset = 0  # global index of the next row, so the stride runs across batch boundaries
    for path in paths:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=65_536, columns=columns):
            first = (-offset) % stride
            if first < batch.num_rows:
                index = pa.array(np.arange(first, batch.num_rows, stride))
                for name in columns:
                    values = pc.take(batch.column(name), index)
                    if pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
                        values = pc.list_flatten(values)
                    kept[name].append(
                        values.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
                    )
            offset += batch.num_rows
    return {
        name: np.concatenate(chunks) if chunks else np.empty(0) for name, chunks in kept.items()
    }


def reject_examples(
    run_dir: Path, manifest: Mapping[str, Any], per_reason: int = EXAMPLES_PER_REASON
) -> dict[str, list[str]]:
    """Up to ``per_reason`` rejected rows per reason, as ``key=value, ...: message``."""
    reasons = set(((manifest.get("counts") or {}).get("rejected_by_reason") or {}).keys())
    examples: dict[str, list[str]] = {}
    scanned = 0
    for path in _part_paths(run_dir, manifest, REJECTED):
        parquet = pq.ParquetFile(path)
        names = set(parquet.schema_arrow.names)
        if REASON_COLUMN not in names:
            continue
        keys = [k for k in manifest.get("key_columns") or [] if k in names]
        wanted = [*keys, REASON_COLUMN] + ([MESSAGE_COLUMN] if MESSAGE_COLUMN in names else [])
        for batch in parquet.iter_batches(batch_size=65_536, columns=wanted):
            for row in batch.to_pylist():
                found = examples.setdefault(str(row[REASON_COLUMN]), [])
                if len(found) < per_reason:
                    key_text = ", ".join(f"{k}={row[k]}" for k in keys)
                    message = str(row.get(MESSAGE_COLUMN) or "")
                    found.append(f"{key_text}: {message}" if key_text else message)
            scanned += batch.num_rows
            full = all(len(examples.get(r, [])) >= per_reason for r in reasons)
            if (reasons and full) or scanned >= MAX_REJECTED_SCANNED:
                return examples
    return examples


# --------------------------------------------------------------------------- formatting
# Number formats of the page: the figure tables are formatted here, and the templates
# use the same functions as filters (count, number, percent, thousands, status_class).


def _int(value: object) -> str:
    return f"{value:,}" if isinstance(value, int) else "—"


def _num(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{value:,.{digits}f}"


def _pct(value: object, digits: int = 3) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{value:.{digits}%}"


def _seconds(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    if value < 1:
        return f"{value * 1000:,.1f} ms"
    return f"{value:,.2f} s"


def _thousands(value: object) -> str:
    """A count with thousands separators; anything else (a missing count) as it is."""
    return f"{value:,}" if isinstance(value, int) else str(value)


def _status_class(status: object) -> str:
    return str(status) if status in STATUS_ORDER else "unknown"


# --------------------------------------------------------------------------- plots


@dataclass(frozen=True)
class Plot:
    """A figure as a base64 PNG, which the page embeds as a data: URL (base64 needs no
    escaping in an HTML attribute)."""

    alt: str
    png_base64: str


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _style_axes(axes: Any) -> None:
    axes.spines[["top", "right"]].set_visible(False)
    axes.grid(axis="y", color="#e5e7eb", linewidth=0.8)
    axes.set_axisbelow(True)
    axes.tick_params(labelsize=8)


def _share_tick(value: float, _: object) -> str:
    return f"{value:.0%}" if abs(value * 100 - round(value * 100)) < 1e-9 else f"{value:.1%}"


def _embed(figure: Figure, alt: str) -> Plot:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    return Plot(alt, base64.b64encode(buffer.getvalue()).decode("ascii"))


def _timeline_plot(timeline: Sequence[Mapping[str, Any]]) -> Plot:
    points = sorted((float(p["t"]), float(p["rows"])) for p in timeline)
    if points[0][0] > 0:  # no row is done at the start; a short run has one sample only
        points.insert(0, (0.0, 0.0))
    t = np.array([p[0] for p in points])
    rows = np.array([p[1] for p in points])
    figure = _new_figure(9, 2.8)
    done, rate = figure.subplots(1, 2)
    done.plot(t, rows, color=CURRENT_COLOR, linewidth=1.8)
    done.fill_between(t, rows, color=CURRENT_COLOR, alpha=0.08)
    done.set_title("Rows done", fontsize=9, loc="left")
    done.set_xlabel("seconds since start", fontsize=8)
    done.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    if len(t) > 1:
        dt_ = np.diff(t)
        per_second = np.divide(np.diff(rows), dt_, out=np.zeros_like(dt_), where=dt_ > 0)
        rate.stairs(per_second, t, baseline=None, color=CURRENT_COLOR, linewidth=1.5)
    rate.set_title("Rows per second (between samples)", fontsize=9, loc="left")
    rate.set_xlabel("seconds since start", fontsize=8)
    rate.yaxis.set_major_formatter(lambda v, _: f"{v:,.0f}")
    for axes in (done, rate):
        _style_axes(axes)
        axes.set_xlim(left=0)
        axes.set_ylim(bottom=0)
    return _embed(figure, "rows done and rows per second over the run")


def _bucket_label(bound: object) -> str:
    try:
        seconds = float(bound)  # type: ignore[arg-type]  # numbers, or "+Inf" as Prometheus writes it
    except (TypeError, ValueError):
        return str(bound)
    if not math.isfinite(seconds):
        return "more"
    return f"≤{seconds * 1000:g} ms" if seconds < 1 else f"≤{seconds:g} s"


def _latency_plot(latency: Mapping[str, Any]) -> Plot:
    bounds = list(latency.get("le") or [])
    counts = list(latency.get("counts") or [])
    labels = [_bucket_label(b) for b in bounds]
    labels += ["more"] * (len(counts) - len(labels))  # an implicit +Inf bucket
    figure = _new_figure(9, 2.4)
    axes = figure.subplots()
    axes.bar(range(len(counts)), counts, color=CURRENT_COLOR, width=0.7)
    crowded = len(counts) > 8
    axes.set_xticks(
        range(len(counts)),
        labels[: len(counts)],
        rotation=45 if crowded else 0,
        ha="right" if crowded else "center",
        fontsize=7,
    )
    axes.set_title("Batches by latency", fontsize=9, loc="left")
    axes.set_ylabel("batches", fontsize=8)
    from matplotlib.ticker import MaxNLocator

    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    _style_axes(axes)
    return _embed(figure, "histogram of batch latencies")


def _reasons_plot(by_reason: Mapping[str, int]) -> Plot:
    ordered = sorted(by_reason.items(), key=lambda item: item[1])
    figure = _new_figure(9, 0.5 + 0.32 * len(ordered))
    axes = figure.subplots()
    bars = axes.barh([name for name, _ in ordered], [n for _, n in ordered], color="#dc2626")
    axes.bar_label(bars, labels=[f"{n:,}" for _, n in ordered], padding=3, fontsize=8)
    axes.spines[["top", "right"]].set_visible(False)
    axes.tick_params(labelsize=8)
    axes.set_xlabel("rejected rows", fontsize=8)
    axes.margins(x=0.12)
    return _embed(figure, "rejected rows by reason")


def _binned_plot(
    title: str, bins: Sequence[str], series: Sequence[tuple[str, Sequence[float], str]]
) -> Plot:
    """Grouped bars of pre-binned fractions (a drift histogram): one group per bin."""
    figure = _new_figure(5.6, 2.7)
    axes = figure.subplots()
    width = 0.8 / max(1, len(series))
    x = np.arange(len(bins))
    for i, (label, fractions, color) in enumerate(series):
        values = [float(v) for v in fractions][: len(bins)]
        axes.bar(
            x[: len(values)] + (i - (len(series) - 1) / 2) * width,
            values,
            width,
            label=label,
            color=color,
        )
    rotate = len(bins) > 6 or max((len(str(b)) for b in bins), default=0) > 8
    axes.set_xticks(
        x,
        [str(b) for b in bins],
        rotation=45 if rotate else 0,
        ha="right" if rotate else "center",
        fontsize=7,
    )
    axes.yaxis.set_major_formatter(_share_tick)
    axes.set_title(title, fontsize=9, loc="left")
    # Above the plot, beside the title: bins fill the whole width.
    axes.legend(
        fontsize=7, frameon=False, ncols=len(series), loc="lower right", bbox_to_anchor=(1, 1)
    )
    _style_axes(axes)
    return _embed(figure, f"histogram of {title}: baseline against this run")


def _distribution_plot(title: str, series: Sequence[tuple[str, np.ndarray, str]]) -> Plot:
    """Overlaid histograms (share of rows per bin) of raw samples on shared bins."""
    finite = [values[np.isfinite(values)] for _, values, _ in series]
    combined = np.concatenate(finite) if finite else np.empty(0)
    edges = np.histogram_bin_edges(combined, bins=40) if combined.size else np.linspace(0, 1, 41)
    figure = _new_figure(9, 2.8)
    axes = figure.subplots()
    # This run on top, so it stays visible where the distributions coincide.
    for order, ((label, _, color), values) in enumerate(zip(series, finite, strict=True)):
        if not values.size:
            continue
        weights = np.full(values.size, 1.0 / values.size)
        axes.hist(
            values,
            bins=edges.tolist(),
            weights=weights,
            histtype="stepfilled",
            alpha=0.2,
            color=color,
            zorder=10 - order,
        )
        axes.hist(
            values,
            bins=edges.tolist(),
            weights=weights,
            histtype="step",
            linewidth=1.6,
            color=color,
            zorder=10 - order,
            label=f"{label} ({values.size:,} sampled)",
        )
    axes.yaxis.set_major_formatter(_share_tick)
    axes.set_title(title, fontsize=9, loc="left")
    axes.set_ylabel("share of rows", fontsize=8)
    axes.legend(fontsize=7, frameon=False)
    _style_axes(axes)
    return _embed(figure, f"distribution of {title}")


# --------------------------------------------------------------------------- sections
# Each section is a plain dataclass of what its template (templates/sections/) shows;
# the template lays it out. Strings from the manifest are escaped by the templates.


@dataclass(frozen=True)
class Message:
    """A section that is one paragraph: what the manifest lacks (``absent``) or a remark
    (``note``)."""

    text: str
    kind: Literal["absent", "note"] = "absent"
    template: ClassVar[str] = "sections/message.html.j2"


@dataclass(frozen=True)
class Comparison:
    """One row of a figures table: this run's value and, with a baseline run, its value
    and the change; formatted already."""

    label: str
    value: str
    previous: str = "—"
    change: str = "—"


@dataclass(frozen=True)
class CountsView:
    figures: list[Comparison]
    compared: bool
    reconciliation: list[Reconciliation]
    status: str
    outputs: list[str]
    template: ClassVar[str] = "sections/counts.html.j2"


@dataclass(frozen=True)
class ThroughputView:
    figures: list[Comparison]
    compared: bool
    baseline_has_metrics: bool
    timeline: Plot | None
    latency: Plot | None
    template: ClassVar[str] = "sections/throughput.html.j2"


@dataclass(frozen=True)
class RejectReason:
    reason: str
    rows: int
    share: float
    examples: list[str]


@dataclass(frozen=True)
class RejectsView:
    plot: Plot
    reasons: list[RejectReason]
    rejected_dir: Path
    template: ClassVar[str] = "sections/rejects.html.j2"


@dataclass(frozen=True)
class TrainingComparison:
    """The prediction's drift entry: its status and PSI against the training baseline."""

    status: object
    psi: object
    source: object
    plot: Plot


@dataclass(frozen=True)
class SampleStats:
    label: str
    rows: int
    mean: float | None
    p05: float | None
    p50: float | None
    p95: float | None


@dataclass(frozen=True)
class Distribution:
    column: str
    plot: Plot
    samples: list[SampleStats]
    missing_in_baseline: bool


@dataclass(frozen=True)
class PredictionsView:
    training: TrainingComparison | None
    drift_recorded: bool
    compared: bool
    distributions: list[Distribution]
    template: ClassVar[str] = "sections/predictions.html.j2"


@dataclass(frozen=True)
class DriftFeature:
    """A feature's drift entry as the manifest has it; values may be missing (``None``)."""

    name: object
    kind: object
    psi: object
    null_rate: object
    baseline_null_rate: object
    unseen_share: object
    status: object


@dataclass(frozen=True)
class FeaturePlot:
    name: object
    plot: Plot | None


@dataclass(frozen=True)
class DriftView:
    status: object
    source: object
    rows: object
    max_psi: object
    max_unseen_share: object
    action: object
    features: list[DriftFeature]
    plots: list[FeaturePlot]
    template: ClassVar[str] = "sections/drift.html.j2"


@dataclass(frozen=True)
class CheckRow:
    name: object
    value: object
    threshold: object
    status: object
    message: object


@dataclass(frozen=True)
class ChecksView:
    checks: list[CheckRow]
    template: ClassVar[str] = "sections/checks.html.j2"


SectionBody = (
    Message | CountsView | ThroughputView | RejectsView | PredictionsView | DriftView | ChecksView
)


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    body: SectionBody
    status: str | None = None


@dataclass(frozen=True)
class Header:
    model_label: str
    status: str
    badge: str
    why: str
    facts: list[tuple[str, str]]


def _counts(manifest: Mapping[str, Any]) -> dict[str, Any]:
    return dict(manifest.get("counts") or {})


def _metrics(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    metrics = manifest.get("metrics")
    return dict(metrics) if isinstance(metrics, Mapping) else None


def _drift(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    drift = manifest.get("drift")
    return dict(drift) if isinstance(drift, Mapping) else None


def _checks(manifest: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    checks = manifest.get("checks")
    return [dict(c) for c in checks if isinstance(c, Mapping)] if isinstance(checks, list) else None


@dataclass(frozen=True)
class Reconciliation:
    name: str
    expected: object
    found: object

    @property
    def ok(self) -> bool:
        return self.expected == self.found


def reconcile(manifest: Mapping[str, Any]) -> list[Reconciliation]:
    """Every count the manifest states twice, side by side; each must agree."""
    counts = _counts(manifest)
    rows_in, scored, rejected = (
        counts.get("rows_in"),
        counts.get("rows_scored"),
        counts.get("rows_rejected"),
    )
    results = []
    if isinstance(scored, int) and isinstance(rejected, int):
        results.append(Reconciliation("rows in = scored + rejected", rows_in, scored + rejected))
    outputs = manifest.get("outputs") or {}
    for kind, expected in ((PREDICTIONS, scored), (REJECTED, rejected)):
        if kind in outputs:
            found = sum(int(part.get("rows", 0)) for part in outputs[kind])
            results.append(Reconciliation(f"rows in {kind}/ files = rows {kind}", expected, found))
    files = (manifest.get("input") or {}).get("files") or []
    if files and all(isinstance(f.get("rows"), int) for f in files):
        found = sum(f["rows"] for f in files)
        results.append(Reconciliation("rows in input files = rows in", rows_in, found))
    by_reason = counts.get("rejected_by_reason")
    if isinstance(by_reason, Mapping):
        results.append(
            Reconciliation(
                "rejected by reason, summed = rows rejected", rejected, sum(by_reason.values())
            )
        )
    metrics = _metrics(manifest)
    if metrics is not None:
        for metric, count in (
            ("rows_read", rows_in),
            ("rows_scored", scored),
            ("rows_rejected", rejected),
        ):
            if metric in metrics:
                results.append(Reconciliation(f"metrics.{metric} = counts", count, metrics[metric]))
    return results


def overall_status(manifest: Mapping[str, Any]) -> tuple[str, str]:
    """The badge: the worst of the checks, the drift status and the reconciliation."""
    if any(not r.ok for r in reconcile(manifest)):
        return "fail", "the counts do not reconcile"
    checks = _checks(manifest) or []
    drift = _drift(manifest) or {}
    worst = worst_status([c.get("status") for c in checks] + [drift.get("status")])
    if worst is None:
        return "unknown", "counts reconcile; this manifest records no checks"
    failing = [str(c.get("name")) for c in checks if c.get("status") == worst and worst != "ok"]
    if worst != "ok" and drift.get("status") == worst:
        failing.append("drift")
    if worst == "ok":
        return "ok", f"counts reconcile; all {len(checks)} checks ok"
    return worst, f"{worst}: {', '.join(failing)}"


def _header(run: RunData, baseline: RunData | None) -> Header:
    manifest = run.manifest
    model = manifest.get("model") or {}
    signature = model.get("signature") or {}
    if signature.get("verified"):
        signed = f"verified (key {str(signature.get('key_fingerprint', ''))[:16]})"
    elif signature.get("allow_unsigned"):
        signed = "not verified (--allow_unsigned)"
    else:
        signed = "—"
    counts = _counts(manifest)
    files = (manifest.get("input") or {}).get("files") or []
    input_bytes = sum(int(f.get("bytes", 0)) for f in files)
    runner = manifest.get("runner") or {}
    contract = manifest.get("contract") or {}
    status, why = overall_status(manifest)
    label = {"unknown": "committed"}.get(status, status)
    facts = [
        ("Model", f"{model.get('name', '—')} version {model.get('version', '—')}"),
        ("Content hash", str(model.get("content_hash", "—"))[:16]),
        ("Signature", signed),
        ("Run id", run.run_id),
        ("Runner", str(runner.get("name", "—"))),
        ("Started", str(manifest.get("started", "—"))),
        ("Committed", str(manifest.get("finished", "—"))),
        (
            "Input",
            f"{len(files):,} files, {input_bytes / 1e6:,.1f} MB, {_int(counts.get('rows_in'))} rows",
        ),
        ("Contract", str(contract.get("name", "—"))),
        ("batchscore", str(manifest.get("batchscore_version", "—"))),
        ("Run folder", str(run.run_dir)),
    ]
    if baseline is not None:
        facts.append(("Compared with", f"run {baseline.run_id} ({baseline.model_label})"))
    return Header(run.model_label, status, label.upper(), why, facts)


def _change(current: object, previous: object) -> str:
    if isinstance(current, bool) or isinstance(previous, bool):
        return ""
    if not isinstance(current, int | float) or not isinstance(previous, int | float):
        return "—"
    if previous == 0:
        return "—" if current == 0 else "new"
    return f"{(current - previous) / abs(previous):+.1%}"


def _comparisons(
    figures: Iterable[tuple[str, object, object, Callable[[object], str]]], compared: bool
) -> list[Comparison]:
    return [
        Comparison(label, fmt(value), fmt(previous), _change(value, previous))
        if compared
        else Comparison(label, fmt(value))
        for label, value, previous, fmt in figures
    ]


def _counts_section(run: RunData, baseline: RunData | None) -> Section:
    title = "Counts and reconciliation"
    counts = _counts(run.manifest)
    if not counts:
        return Section("counts", title, Message("This manifest has no counts."))
    other = _counts(baseline.manifest) if baseline else {}
    figures: list[tuple[str, object, object, Callable[[object], str]]] = [
        (label, counts.get(key), other.get(key), fmt)
        for label, key, fmt in (
            ("rows in", "rows_in", _int),
            ("rows scored", "rows_scored", _int),
            ("rows rejected", "rows_rejected", _int),
            ("error rate", "error_rate", _pct),
            ("error budget (--max_error_rate)", "max_error_rate", _pct),
        )
    ]
    if baseline:  # reasons side by side, so a new kind of bad row stands out
        reasons = counts.get("rejected_by_reason") or {}
        other_reasons = other.get("rejected_by_reason") or {}
        for reason in sorted({*reasons, *other_reasons}):
            figures.append(
                (f"rejected: {reason}", reasons.get(reason, 0), other_reasons.get(reason, 0), _int)
            )
    checks = reconcile(run.manifest)
    status = "ok" if all(r.ok for r in checks) else "fail"
    outputs = run.manifest.get("outputs") or {}
    parts = []
    for kind in (PREDICTIONS, REJECTED):
        listed = outputs.get(kind) or []
        size = sum(int(p.get("bytes", 0)) for p in listed)
        parts.append(f"{kind}/: {len(listed):,} files, {size / 1e6:,.2f} MB")
    view = CountsView(
        figures=_comparisons(figures, compared=baseline is not None),
        compared=baseline is not None,
        reconciliation=checks,
        status=status,
        outputs=parts,
    )
    return Section("counts", title, view, status)


def _timestamp(value: object) -> dt.datetime | None:
    try:
        return dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _throughput_section(run: RunData, baseline: RunData | None) -> Section:
    title = "Throughput"
    metrics = _metrics(run.manifest)
    if metrics is None:
        counts = _counts(run.manifest)
        started, finished = (
            _timestamp(run.manifest.get("started")),
            _timestamp(run.manifest.get("finished")),
        )
        estimate = ""
        if started and finished and isinstance(counts.get("rows_scored"), int):
            seconds = (finished - started).total_seconds()
            # The times are to the second: below 10 s the estimate would be off by over 10%.
            estimate = (
                f" From the manifest's start and commit times (to the second, start-up "
                f"included): {seconds:,.0f} s, about {counts['rows_scored'] / seconds:,.0f} "
                "predictions/s."
                if seconds >= MIN_SECONDS_FOR_ESTIMATE
                else f" By the manifest's start and commit times (to the second) the run took "
                f"under {MIN_SECONDS_FOR_ESTIMATE} s, too short to estimate its throughput."
            )
        return Section(
            "throughput",
            title,
            Message(
                "No run metrics in this manifest (it was written before batchscore recorded "
                "metrics): no timeline and no batch latencies." + estimate
            ),
        )
    latency = metrics.get("batch_latency_seconds") or {}
    other = _metrics(baseline.manifest) if baseline else None
    previous = other or {}
    other_latency = previous.get("batch_latency_seconds") or {}
    figures: list[tuple[str, object, object, Callable[[object], str]]] = [
        (
            "wall time (start-up included)",
            metrics.get("wall_seconds"),
            previous.get("wall_seconds"),
            _seconds,
        ),
        (
            "predictions per second",
            metrics.get("predictions_per_second"),
            previous.get("predictions_per_second"),
            lambda v: _num(v, 0),
        ),
        (
            "model load",
            metrics.get("model_load_seconds"),
            previous.get("model_load_seconds"),
            _seconds,
        ),
        ("batches", metrics.get("batches"), previous.get("batches"), _int),
        ("batch latency p50", latency.get("p50"), other_latency.get("p50"), _seconds),
        ("batch latency p95", latency.get("p95"), other_latency.get("p95"), _seconds),
        ("batch latency p99", latency.get("p99"), other_latency.get("p99"), _seconds),
    ]
    timeline = metrics.get("timeline") or []
    view = ThroughputView(
        # Without the baseline run's metrics the baseline columns show "—" throughout.
        figures=_comparisons(figures, compared=other is not None),
        compared=baseline is not None,
        baseline_has_metrics=other is not None,
        timeline=_timeline_plot(timeline) if timeline else None,
        latency=_latency_plot(latency) if latency.get("counts") else None,
    )
    return Section("throughput", title, view)


def _rejects_section(run: RunData) -> Section:
    counts = _counts(run.manifest)
    by_reason: dict[str, int] = dict(counts.get("rejected_by_reason") or {})
    title = "Reject reasons"
    if not by_reason:
        if counts.get("rows_rejected") == 0:
            return Section("rejects", title, Message("No rows were rejected.", "note"), "ok")
        return Section("rejects", title, Message("This manifest has no rejects by reason."))
    total = sum(by_reason.values())
    reasons = [
        RejectReason(
            reason=reason,
            rows=n,
            share=n / total if total else 0,
            examples=list(run.reject_examples.get(reason) or []),
        )
        for reason, n in sorted(by_reason.items(), key=lambda item: -item[1])
    ]
    view = RejectsView(_reasons_plot(by_reason), reasons, run.run_dir / REJECTED)
    return Section("rejects", title, view)


def _histogram_of(
    entry: Mapping[str, Any] | None,
) -> tuple[list[str], list[float], list[float]] | None:
    histogram = (entry or {}).get("histogram") or {}
    bins, base, current = histogram.get("bins"), histogram.get("baseline"), histogram.get("current")
    if not bins or base is None or current is None:
        return None
    return [str(b) for b in bins], list(base), list(current)


def _sample_stats(label: str, values: np.ndarray) -> SampleStats:
    if not values.size:
        return SampleStats(label, 0, None, None, None, None)
    p05, p50, p95 = (float(q) for q in np.quantile(values, [0.05, 0.5, 0.95]))
    return SampleStats(label, int(values.size), float(np.mean(values)), p05, p50, p95)


def _predictions_section(run: RunData, baseline: RunData | None) -> Section:
    drift = _drift(run.manifest)
    prediction = (drift or {}).get("prediction")
    histogram = _histogram_of(prediction)
    status = None
    training = None
    if histogram is not None and prediction is not None:
        status = _status_class(prediction.get("status"))
        bins, base, current = histogram
        training = TrainingComparison(
            status=prediction.get("status"),
            psi=prediction.get("psi"),
            source=((drift or {}).get("baseline") or {}).get("source", "training data"),
            plot=_binned_plot(
                "prediction",
                bins,
                [("training baseline", base, BASELINE_COLOR), ("this run", current, CURRENT_COLOR)],
            ),
        )
    distributions = []
    for column, values in run.prediction_sample.items():
        series = [("this run", values, CURRENT_COLOR)]
        if baseline is not None:
            other = baseline.prediction_sample.get(column)
            if other is not None:
                series.append((f"baseline run {baseline.run_id}", other, OTHER_RUN_COLOR))
        distributions.append(
            Distribution(
                column=column,
                plot=_distribution_plot(column, series),
                samples=[_sample_stats(label, v) for label, v, _ in series],
                missing_in_baseline=baseline is not None
                and column not in baseline.prediction_sample,
            )
        )
    view = PredictionsView(
        training=training,
        drift_recorded=drift is not None,
        compared=baseline is not None,
        distributions=distributions,
    )
    return Section("predictions", "Predictions", view, status)


def _drift_section(run: RunData) -> Section:
    title = "Drift"
    drift = _drift(run.manifest)
    if drift is None:
        return Section(
            "drift",
            title,
            Message(
                "No drift data in this manifest (it was written before batchscore recorded drift)."
            ),
        )
    if not drift.get("baseline"):
        return Section(
            "drift",
            title,
            Message(
                "The model was registered without a training baseline, so drift was not measured. Register the model with its baseline to get this section."
            ),
        )
    base = drift["baseline"]
    thresholds = drift.get("thresholds") or {}
    features = [f for f in drift.get("features") or [] if isinstance(f, Mapping)]
    features.sort(key=lambda f: -float(f.get("psi") or 0.0))
    flagged = sum(1 for f in features if f.get("status") in ("warn", "fail"))
    worst = features[
        : min(len(features), max(WORST_FEATURES_MIN, min(flagged, WORST_FEATURES_MAX)))
    ]
    plots = []
    for f in worst:
        histogram = _histogram_of(f)
        if histogram is None:
            plots.append(FeaturePlot(f.get("name"), None))
            continue
        bins, base_fractions, current = histogram
        plot = _binned_plot(
            f"{f.get('name')} (PSI {_num(f.get('psi'))})",
            bins,
            [
                ("training baseline", base_fractions, BASELINE_COLOR),
                ("this run", current, CURRENT_COLOR),
            ],
        )
        plots.append(FeaturePlot(f.get("name"), plot))
    view = DriftView(
        status=drift.get("status"),
        source=base.get("source", "—"),
        rows=base.get("rows"),
        max_psi=thresholds.get("max_psi"),
        max_unseen_share=thresholds.get("max_unseen_share"),
        action=thresholds.get("action", "—"),
        features=[
            DriftFeature(
                name=f.get("name"),
                kind=f.get("kind", "—"),
                psi=f.get("psi"),
                null_rate=f.get("null_rate"),
                baseline_null_rate=f.get("baseline_null_rate"),
                unseen_share=f.get("unseen_share"),
                status=f.get("status"),
            )
            for f in features
        ],
        plots=plots,
    )
    return Section("drift", title, view, _status_class(drift.get("status")))


def _checks_section(run: RunData) -> Section:
    checks = _checks(run.manifest)
    title = "Checks"
    if checks is None:
        return Section(
            "checks",
            title,
            Message(
                "No checks in this manifest (it was written before batchscore recorded checks)."
            ),
        )
    if not checks:
        return Section("checks", title, Message("No checks were configured for this run.", "note"))
    order = sorted(checks, key=lambda c: -STATUS_ORDER.get(str(c.get("status")), 1))
    rows = [
        CheckRow(
            name=c.get("name"),
            value=c.get("value"),
            threshold=c.get("threshold"),
            status=c.get("status"),
            message=c.get("message", ""),
        )
        for c in order
    ]
    return Section("checks", title, ChecksView(rows), worst_status(c.get("status") for c in checks))


# --------------------------------------------------------------------------- page

TEMPLATE_PACKAGE = "batch.report"
PAGE_TEMPLATE = "report.html.j2"


@functools.cache
def template_environment() -> jinja2.Environment:
    """The templates in batch/report/templates, read through the package's loader (so they
    are found in a wheel or a zip as well as in a checkout). Every template is HTML, so
    every value is escaped unless a template marks it otherwise (none does)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.PackageLoader(TEMPLATE_PACKAGE, "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    environment.filters.update(
        count=_int,
        number=_num,
        percent=_pct,
        thousands=_thousands,
        status_class=_status_class,
    )
    environment.tests["known_status"] = lambda status: status in STATUS_ORDER
    return environment


def _guarded(anchor: str, title: str, build: Callable[[], Section]) -> Section:
    """One section; a manifest field of an unexpected shape spoils that section only, and
    the page says which field and why instead of the whole report failing."""
    try:
        return build()
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        detail = f"{type(exc).__name__}: {exc}"
        return Section(
            anchor,
            title,
            Message(
                f"This section could not be drawn from the manifest ({detail}); the manifest "
                "fields it reads have an unexpected shape. The other sections are unaffected."
            ),
            "unknown",
        )


def render_report(
    run: RunData, baseline: RunData | None = None, *, generated_at: dt.datetime | None = None
) -> str:
    """The whole page, as one HTML string."""
    sections = [
        _guarded("counts", "Counts and reconciliation", lambda: _counts_section(run, baseline)),
        _guarded("throughput", "Throughput", lambda: _throughput_section(run, baseline)),
        _guarded("rejects", "Reject reasons", lambda: _rejects_section(run)),
        _guarded("predictions", "Predictions", lambda: _predictions_section(run, baseline)),
        _guarded("drift", "Drift", lambda: _drift_section(run)),
        _guarded("checks", "Checks", lambda: _checks_section(run)),
    ]
    when = (generated_at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    page = template_environment().get_template(PAGE_TEMPLATE)
    return page.render(
        title=f"Run report {run.model_label} {run.run_id}",
        header=_header(run, baseline),
        sections=sections,
        manifest_path=run.run_dir / MANIFEST,
        generated_at=when,
    )
