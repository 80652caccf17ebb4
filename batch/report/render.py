"""The run report: one self-contained HTML page about a committed run.

The page is built from the run's ``_MANIFEST.json`` and a few bounded reads of
its Parquet outputs (a strided sample of the prediction columns, a handful of
rejected rows as examples). Plots are drawn with matplotlib's Agg backend and
embedded as base64 PNG, the CSS is inline, and nothing refers to a URL, so the
file can be mailed, attached to a ticket or archived as it is.

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
import html
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from batch.core.columns import CONSTANT_COLUMNS, MESSAGE_COLUMN, REASON_COLUMN
from batch.core.errors import UsageError
from batch.output.commit import (
    LATEST,
    MANIFEST,
    PREDICTIONS,
    REJECTED,
    RUN_PREFIX,
    STAGING,
    SUCCESS,
)

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

STATUS_ORDER = {"ok": 0, "warn": 1, "fail": 2}
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
    """The manifest of the committed run in ``run_dir``; a :class:`ReportError` that says
    what to pass instead when ``run_dir`` is not one."""
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
        payload = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(
            f"{manifest_path}: cannot be read as JSON ({exc}); the run folder was damaged "
            "after its commit: check it with python -m jobs.verify and rerun the job"
        ) from exc
    if not isinstance(payload, dict):
        raise ReportError(
            f"{manifest_path}: expected a JSON object, found {type(payload).__name__}; "
            "check the run with python -m jobs.verify and rerun the job"
        )
    return payload


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


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


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


def _status_class(status: object) -> str:
    return str(status) if status in STATUS_ORDER else "unknown"


def _pill(status: object) -> str:
    return f'<span class="pill {_status_class(status)}">{_esc(status)}</span>'


def worst_status(statuses: Iterable[object]) -> str | None:
    """The most severe of ``ok``/``warn``/``fail``; ``None`` when there is none."""
    known = [s for s in statuses if s in STATUS_ORDER]
    return max(known, key=lambda s: STATUS_ORDER[str(s)]) if known else None


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    align: str = "",
    cls: str = "",
    row_status: Sequence[object] = (),
) -> str:
    """An HTML table; cells are already escaped HTML. ``align`` has one letter per column,
    ``l`` or ``r`` (numbers); by default the first column is text and the others numbers.
    Rows whose ``row_status`` is warn or fail are tinted."""
    align = align or "l" + "r" * (len(headers) - 1)

    def cls_of(i: int) -> str:
        return "num" if i < len(align) and align[i] == "r" else ""

    def tint(i: int) -> str:
        status = row_status[i] if i < len(row_status) else None
        return f' class="row-{status}"' if status in ("warn", "fail") else ""

    head = "".join(f'<th class="{cls_of(i)}">{_esc(h)}</th>' for i, h in enumerate(headers))
    body = "".join(
        f"<tr{tint(r)}>"
        + "".join(f'<td class="{cls_of(i)}">{cell}</td>' for i, cell in enumerate(row))
        + "</tr>"
        for r, row in enumerate(rows)
    )
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _absent(text: str) -> str:
    return f'<p class="absent">{_esc(text)}</p>'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


# --------------------------------------------------------------------------- plots


def _new_figure(width: float, height: float) -> Figure:
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


def _embed(figure: Figure, alt: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", facecolor="white")
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img class="plot" alt="{_esc(alt)}" src="data:image/png;base64,{encoded}">'


def _timeline_plot(timeline: Sequence[Mapping[str, Any]]) -> str:
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


def _latency_plot(latency: Mapping[str, Any]) -> str:
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
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    _style_axes(axes)
    return _embed(figure, "histogram of batch latencies")


def _reasons_plot(by_reason: Mapping[str, int]) -> str:
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
) -> str:
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


def _distribution_plot(title: str, series: Sequence[tuple[str, np.ndarray, str]]) -> str:
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


@dataclass(frozen=True)
class Section:
    anchor: str
    title: str
    body: str
    status: str | None = None


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


def _header(run: RunData, baseline: RunData | None) -> str:
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
    grid = "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in facts)
    return (
        '<header class="top">'
        f'<div class="title"><h1>Run report <span class="model">{_esc(run.model_label)}</span></h1>'
        f'<div class="badge {_status_class(status)}" id="status-badge">{_esc(label.upper())}</div></div>'
        f'<p class="why">{_esc(why)}</p>'
        f'<dl class="facts">{grid}</dl>'
        "</header>"
    )


def _change(current: object, previous: object) -> str:
    if isinstance(current, bool) or isinstance(previous, bool):
        return ""
    if not isinstance(current, int | float) or not isinstance(previous, int | float):
        return "—"
    if previous == 0:
        return "—" if current == 0 else "new"
    return f"{(current - previous) / abs(previous):+.1%}"


def _counts_section(run: RunData, baseline: RunData | None) -> Section:
    counts = _counts(run.manifest)
    if not counts:
        return Section(
            "counts", "Counts and reconciliation", _absent("This manifest has no counts.")
        )
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
    headers = ["", "this run"] + (["baseline run", "change"] if baseline else [])
    table_rows = []
    for label, value, previous, fmt in figures:
        cells = [_esc(label), fmt(value)]
        if baseline:
            cells += [fmt(previous), _change(value, previous)]
        table_rows.append(cells)
    checks = reconcile(run.manifest)
    status = "ok" if all(r.ok for r in checks) else "fail"
    recon = _table(
        ["reconciliation", "expected", "found", "status"],
        [
            [
                _esc(r.name),
                _esc(f"{r.expected:,}" if isinstance(r.expected, int) else r.expected),
                _esc(f"{r.found:,}" if isinstance(r.found, int) else r.found),
                _pill("ok" if r.ok else "fail"),
            ]
            for r in checks
        ],
    )
    outputs = run.manifest.get("outputs") or {}
    parts = []
    for kind in (PREDICTIONS, REJECTED):
        listed = outputs.get(kind) or []
        size = sum(int(p.get("bytes", 0)) for p in listed)
        parts.append(f"{kind}/: {len(listed):,} files, {size / 1e6:,.2f} MB")
    verdict = (
        "Every input row is either scored or rejected, and the files hold exactly the rows the manifest counts."
        if status == "ok"
        else "The counts do NOT reconcile: rows were lost or counted twice. Check the run with python -m jobs.verify."
    )
    body = (
        f'<div class="two">{_table(headers, table_rows)}{recon}</div>'
        f"<p>{_pill(status)} {_esc(verdict)}</p>"
        + _note(
            "Output files: "
            + "; ".join(parts)
            + ". File checksums are checked by python -m jobs.verify, not here."
        )
    )
    return Section("counts", "Counts and reconciliation", body, status)


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
            _absent(
                "No run metrics in this manifest (it was written before batchscore recorded "
                "metrics): no timeline and no batch latencies." + estimate
            ),
        )
    latency = metrics.get("batch_latency_seconds") or {}
    other = _metrics(baseline.manifest) if baseline else None
    other_latency = (other or {}).get("batch_latency_seconds") or {}
    figures = [
        (
            "wall time (start-up included)",
            metrics.get("wall_seconds"),
            (other or {}).get("wall_seconds"),
            _seconds,
        ),
        (
            "predictions per second",
            metrics.get("predictions_per_second"),
            (other or {}).get("predictions_per_second"),
            lambda v: _num(v, 0),
        ),
        (
            "model load",
            metrics.get("model_load_seconds"),
            (other or {}).get("model_load_seconds"),
            _seconds,
        ),
        ("batches", metrics.get("batches"), (other or {}).get("batches"), _int),
        ("batch latency p50", latency.get("p50"), other_latency.get("p50"), _seconds),
        ("batch latency p95", latency.get("p95"), other_latency.get("p95"), _seconds),
        ("batch latency p99", latency.get("p99"), other_latency.get("p99"), _seconds),
    ]
    headers = ["", "this run"] + (["baseline run", "change"] if baseline else [])
    rows = []
    for name, value, previous, fmt in figures:
        cells = [_esc(name), fmt(value)]
        if baseline:
            cells += [fmt(previous) if other else "—", _change(value, previous) if other else "—"]
        rows.append(cells)
    timeline = metrics.get("timeline") or []
    parts = [_table(headers, rows)]
    if baseline and other is None:
        parts.append(_note("The baseline run's manifest has no metrics to compare with."))
    parts.append(_timeline_plot(timeline) if timeline else _absent("No timeline recorded."))
    if latency.get("counts"):
        parts.append(_latency_plot(latency))
    else:
        parts.append(_absent("No batch latency histogram recorded."))
    return Section("throughput", title, "".join(parts))


def _rejects_section(run: RunData) -> Section:
    counts = _counts(run.manifest)
    by_reason: dict[str, int] = dict(counts.get("rejected_by_reason") or {})
    title = "Reject reasons"
    if not by_reason:
        if counts.get("rows_rejected") == 0:
            return Section("rejects", title, _note("No rows were rejected."), "ok")
        return Section("rejects", title, _absent("This manifest has no rejects by reason."))
    total = sum(by_reason.values())
    rows = []
    for reason, n in sorted(by_reason.items(), key=lambda item: -item[1]):
        examples = run.reject_examples.get(reason) or []
        listing = "".join(f"<li><code>{_esc(e)}</code></li>" for e in examples) or "—"
        rows.append(
            [
                _esc(reason),
                _int(n),
                _pct(n / total if total else 0, 1),
                f'<ul class="examples">{listing}</ul>',
            ]
        )
    table = _table(
        ["reason", "rows", "share", "examples (keys: message)"], rows, align="lrrl", cls="rejects"
    )
    body = (
        _reasons_plot(by_reason)
        + table
        + _note(f"The rejected rows, with every input column, are in {run.run_dir / REJECTED}.")
    )
    return Section("rejects", title, body)


def _histogram_of(
    entry: Mapping[str, Any] | None,
) -> tuple[list[str], list[float], list[float]] | None:
    histogram = (entry or {}).get("histogram") or {}
    bins, base, current = histogram.get("bins"), histogram.get("baseline"), histogram.get("current")
    if not bins or base is None or current is None:
        return None
    return [str(b) for b in bins], list(base), list(current)


def _predictions_section(run: RunData, baseline: RunData | None) -> Section:
    title = "Predictions"
    parts: list[str] = []
    drift = _drift(run.manifest)
    prediction = (drift or {}).get("prediction")
    histogram = _histogram_of(prediction)
    status = None
    parts.append("<h3>Against the training baseline</h3>")
    if histogram is not None and prediction is not None:
        status = _status_class(prediction.get("status"))
        bins, base, current = histogram
        source = ((drift or {}).get("baseline") or {}).get("source", "training data")
        parts.append(
            f"<p>{_pill(prediction.get('status'))} PSI {_num(prediction.get('psi'))} "
            f"against {_esc(source)}.</p>"
        )
        parts.append(
            _binned_plot(
                "prediction",
                bins,
                [("training baseline", base, BASELINE_COLOR), ("this run", current, CURRENT_COLOR)],
            )
        )
    elif drift is None:
        parts.append(
            _absent(
                "No drift data in this manifest (written before batchscore recorded drift): no training baseline to compare with."
            )
        )
    else:
        parts.append(
            _absent(
                "The model has no training baseline for its predictions (drift.prediction is empty)."
            )
        )
    parts.append(
        "<h3>Distribution in this run" + (" and in the baseline run" if baseline else "") + "</h3>"
    )
    if not run.prediction_sample:
        parts.append(
            _absent(
                "No predictions to plot (the run scored no rows, or its output has no numeric prediction column)."
            )
        )
    for column, values in run.prediction_sample.items():
        series = [("this run", values, CURRENT_COLOR)]
        if baseline is not None:
            other = baseline.prediction_sample.get(column)
            if other is not None:
                series.append((f"baseline run {baseline.run_id}", other, OTHER_RUN_COLOR))
        parts.append(_distribution_plot(column, series))
        parts.append(
            _table(
                ["", "rows sampled", "mean", "p05", "p50", "p95"],
                [
                    [
                        _esc(label),
                        _int(int(v.size)),
                        *(
                            [
                                _num(float(np.mean(v)), 4),
                                *(_num(float(q), 4) for q in np.quantile(v, [0.05, 0.5, 0.95])),
                            ]
                            if v.size
                            else ["—"] * 4
                        ),
                    ]
                    for label, v, _ in series
                ],
            )
        )
        if baseline is not None and column not in baseline.prediction_sample:
            parts.append(_absent(f"The baseline run has no prediction column {column!r}."))
    if baseline is None:
        parts.append(
            _note(
                "Pass --baseline RUN_DIR to overlay another run's predictions (last week's, say)."
            )
        )
    return Section("predictions", title, "".join(parts), status)


def _drift_section(run: RunData) -> Section:
    title = "Drift"
    drift = _drift(run.manifest)
    if drift is None:
        return Section(
            "drift",
            title,
            _absent(
                "No drift data in this manifest (it was written before batchscore recorded drift)."
            ),
        )
    if not drift.get("baseline"):
        return Section(
            "drift",
            title,
            _absent(
                "The model was registered without a training baseline, so drift was not measured. Register the model with its baseline to get this section."
            ),
        )
    base = drift["baseline"]
    thresholds = drift.get("thresholds") or {}
    features = [f for f in drift.get("features") or [] if isinstance(f, Mapping)]
    features.sort(key=lambda f: -float(f.get("psi") or 0.0))
    parts = [
        f"<p>{_pill(drift.get('status'))} Baseline: {_esc(base.get('source', '—'))}, "
        f"{_int(base.get('rows'))} rows. Thresholds: PSI ≤ {_num(thresholds.get('max_psi'), 2)}, "
        f"unseen categories ≤ {_pct(thresholds.get('max_unseen_share'), 1)}, action "
        f"<b>{_esc(thresholds.get('action', '—'))}</b>.</p>"
    ]
    if not features:
        parts.append(_absent("No features were measured."))
        return Section("drift", title, "".join(parts), _status_class(drift.get("status")))
    rows = []
    for f in features:
        unseen = f.get("unseen_share")
        rows.append(
            [
                _esc(f.get("name")),
                _esc(f.get("kind", "—")),
                f'<span class="psi">{_num(f.get("psi"))}</span>',
                _pct(f.get("null_rate"), 2),
                _pct(f.get("baseline_null_rate"), 2),
                _pct(unseen, 2) if unseen is not None else "—",
                _pill(f.get("status")),
            ]
        )
    parts.append(
        _table(
            ["feature", "kind", "PSI", "null rate", "baseline null rate", "unseen", "status"],
            rows,
            align="llrrrrl",
            cls="drift",
            row_status=[f.get("status") for f in features],
        )
    )
    flagged = sum(1 for f in features if f.get("status") in ("warn", "fail"))
    worst = features[
        : min(len(features), max(WORST_FEATURES_MIN, min(flagged, WORST_FEATURES_MAX)))
    ]
    plots = []
    for f in worst:
        histogram = _histogram_of(f)
        if histogram is None:
            plots.append(_absent(f"{f.get('name')}: no histogram recorded."))
            continue
        bins, base_fractions, current = histogram
        plots.append(
            _binned_plot(
                f"{f.get('name')} (PSI {_num(f.get('psi'))})",
                bins,
                [
                    ("training baseline", base_fractions, BASELINE_COLOR),
                    ("this run", current, CURRENT_COLOR),
                ],
            )
        )
    parts.append(f"<h3>The {len(worst)} features with the highest PSI</h3>")
    parts.append(f'<div class="grid">{"".join(plots)}</div>')
    return Section("drift", title, "".join(parts), _status_class(drift.get("status")))


def _checks_section(run: RunData) -> Section:
    checks = _checks(run.manifest)
    title = "Checks"
    if checks is None:
        return Section(
            "checks",
            title,
            _absent(
                "No checks in this manifest (it was written before batchscore recorded checks)."
            ),
        )
    if not checks:
        return Section("checks", title, _note("No checks were configured for this run."))
    order = sorted(checks, key=lambda c: -STATUS_ORDER.get(str(c.get("status")), 1))
    rows = [
        [
            _esc(c.get("name")),
            _num(c.get("value"), 4),
            _num(c.get("threshold"), 4),
            _pill(c.get("status")),
            _esc(c.get("message", "")),
        ]
        for c in order
    ]
    status = worst_status(c.get("status") for c in checks)
    return Section(
        "checks",
        title,
        _table(
            ["check", "value", "threshold", "status", "message"],
            rows,
            align="lrrll",
            cls="checks",
            row_status=[c.get("status") for c in order],
        ),
        status,
    )


# --------------------------------------------------------------------------- page

_CSS = """
:root { --ok:#15803d; --ok-bg:#dcfce7; --warn:#a16207; --warn-bg:#fef9c3; --fail:#b91c1c;
  --fail-bg:#fee2e2; --unknown:#475569; --unknown-bg:#e2e8f0; --line:#e5e7eb; --muted:#6b7280; }
* { box-sizing: border-box; }
body { margin:0; background:#f8fafc; color:#111827;
  font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 28px 48px; }
header.top { background:#fff; border:1px solid var(--line); border-radius:10px; padding:20px 24px; }
.title { display:flex; align-items:center; justify-content:space-between; gap:16px; }
h1 { font-size:22px; margin:0; font-weight:600; }
h1 .model { color:#1d4ed8; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:20px; }
h2 { font-size:17px; margin:0 0 12px; font-weight:600; display:flex; align-items:center; gap:10px; }
h3 { font-size:14px; margin:18px 0 8px; color:#374151; font-weight:600; }
.badge { font-weight:700; letter-spacing:.06em; padding:6px 16px; border-radius:999px; font-size:14px; }
.why { margin:6px 0 14px; color:var(--muted); }
dl.facts { display:grid; grid-template-columns: max-content 1fr max-content 1fr; gap:4px 16px; margin:0; }
dl.facts dt { color:var(--muted); }
dl.facts dd { margin:0; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12.5px;
  overflow-wrap:anywhere; }
nav { margin:16px 0; display:flex; flex-wrap:wrap; gap:8px; }
nav a { text-decoration:none; color:#1f2937; background:#fff; border:1px solid var(--line);
  border-radius:999px; padding:3px 12px; font-size:13px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:18px 24px;
  margin-top:16px; }
table { border-collapse:collapse; margin:8px 0; font-size:13px; }
th { text-align:left; font-weight:600; color:#374151; border-bottom:2px solid var(--line);
  padding:6px 12px 6px 0; }
td { border-bottom:1px solid var(--line); padding:5px 12px 5px 0; vertical-align:top; }
.num { text-align:right; font-variant-numeric: tabular-nums; }
table.rejects, table.drift, table.checks { width:100%; }
ul.examples { margin:0; padding-left:16px; }
code { font-size:12px; overflow-wrap:anywhere; }
.two { display:flex; flex-wrap:wrap; gap:32px; align-items:flex-start; }
.grid { display:grid; grid-template-columns: 1fr 1fr; gap:12px; }
img.plot { max-width:100%; height:auto; display:block; margin:8px 0; }
.grid img.plot { margin:0; }
.pill { display:inline-block; padding:1px 10px; border-radius:999px; font-size:12px; font-weight:600; }
.ok { color:var(--ok); background:var(--ok-bg); } .warn { color:var(--warn); background:var(--warn-bg); }
.fail { color:var(--fail); background:var(--fail-bg); }
.unknown { color:var(--unknown); background:var(--unknown-bg); }
.absent { color:var(--unknown); background:#f1f5f9; border-left:4px solid #cbd5e1;
  padding:8px 12px; margin:8px 0; border-radius:4px; }
.note { color:var(--muted); font-size:13px; }
tr.row-warn td { background:#fffbeb; } tr.row-fail td { background:#fef2f2; }
footer { color:var(--muted); font-size:12px; margin-top:24px; text-align:center; }
"""

# The first script records errors from anything after it (a broken image fires an
# error event that reaches window in the capture phase); the last one, on load,
# writes the verdict into #page-check, where a headless browser's DOM dump shows it.
_ERROR_WATCH = """<script>
window.__reportErrors = [];
window.addEventListener("error", function (e) {
  window.__reportErrors.push(String(e.message || (e.target && e.target.tagName) || e.type));
}, true);
</script>"""

_PAGE_CHECK = """<script>
window.addEventListener("load", function () {
  var images = document.images, broken = 0;
  for (var i = 0; i < images.length; i++) {
    if (!images[i].complete || images[i].naturalWidth === 0) { broken++; }
  }
  var check = document.getElementById("page-check");
  check.setAttribute("data-images", String(images.length));
  check.setAttribute("data-broken-images", String(broken));
  check.setAttribute("data-errors", String(window.__reportErrors.length));
  check.setAttribute("data-status", broken === 0 && window.__reportErrors.length === 0 ? "ok" : "fail");
});
</script>"""


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
            _absent(
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
    nav = "".join(
        f'<a href="#{s.anchor}">{_esc(s.title)}'
        + (
            f' <span class="pill {s.status}">{_esc(s.status)}</span>'
            if s.status in STATUS_ORDER
            else ""
        )
        + "</a>"
        for s in sections
    )
    body = "".join(
        f'<section id="{s.anchor}"><h2>{_esc(s.title)}'
        + (_pill(s.status) if s.status in STATUS_ORDER else "")
        + f"</h2>{s.body}</section>"
        for s in sections
    )
    when = (generated_at or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    title = f"Run report {run.model_label} {run.run_id}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style>{_ERROR_WATCH}</head>"
        f"<body><main>{_header(run, baseline)}<nav>{nav}</nav>{body}"
        f"<footer>Generated by batchscore from {_esc(run.run_dir / MANIFEST)} at {_esc(when)}.</footer>"
        '<div id="page-check" hidden data-status="pending"></div>'
        f"</main>{_PAGE_CHECK}</body></html>\n"
    )
