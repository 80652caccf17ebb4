"""Shadow comparison: score the same sample of rows with two models and judge the candidate.

The sample is the rows whose key hash falls in ``sample`` (:mod:`batch.release.routing`),
so it is the same whatever reads it and it is exactly the share a canary of
the same fraction routes to the candidate. Rows are read split by split as
Arrow batches (never a whole file), validated by the same
:class:`~batch.engine.validate.RowValidator` scoring uses (rejected rows are counted
and left out), and scored by both models in this process with the scoring
core's :class:`~batch.engine.scorer.BatchScorer`. A row on which either model raises
is counted as ``model_error`` and left out.

Memory: the two scores (and the label) of every compared row are kept, about
20 bytes a row, for the exact PSI and AUC; the most divergent rows are kept as
a running top-N.

This module imports neither Beam nor Spark; TensorFlow is imported when the
models are loaded.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.contract.contract import Contract, contract_sha256
from batch.core.errors import ModelError
from batch.core.fsutil import write_json_atomic
from batch.core.masks import to_arrow
from batch.engine.inputs import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_SPLIT_ROWS,
    BadFile,
    InputFile,
    fingerprint,
    plan_splits,
)
from batch.engine.job import (
    check_inputs,
    columns_to_read,
    model_manifest,
    model_signature,
    read_split,
)
from batch.engine.scorer import BatchScorer
from batch.engine.validate import MODEL_ERROR, RowValidator
from batch.model.loading import load_model
from batch.model.resolved import ResolvedModel
from batch.model.signature import SignatureInfo, output_width
from batch.model.signing import TrustPolicy, verify_once
from batch.output.commit import count_reasons
from batch.release.evaluation import Check, Thresholds, labelled_metrics, pairwise_metrics, verdict
from batch.release.routing import ROUTING_HASH, in_share

log = logging.getLogger(__name__)

COMPARISON_FILE = "comparison.json"
DIVERGENT_FILE = "divergent_rows.parquet"
BASELINE_SCORE = "baseline_score"
CANDIDATE_SCORE = "candidate_score"
ABS_DIFF = "abs_diff"
LABEL = "label"
DEFAULT_TOP_N = 100
# Carries each row's position through the scorers, to pair the two models' rows.
_ROW = "__batchscore_row"


@dataclass(frozen=True)
class ComparisonRequest:
    input_spec: str
    files: Sequence[InputFile]
    baseline: ResolvedModel
    candidate: ResolvedModel
    key_columns: tuple[str, ...]
    sample: float
    trust: TrustPolicy
    thresholds: Thresholds = field(default_factory=Thresholds)
    contract: Contract | None = None
    skipped_files: Sequence[BadFile] = ()
    score_output: str | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    top_n: int = DEFAULT_TOP_N


@dataclass(frozen=True)
class Comparison:
    report: dict[str, Any]
    divergent: pa.Table
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)


def choose_score_output(
    baseline: ResolvedModel,
    base_sig: SignatureInfo,
    candidate: ResolvedModel,
    cand_sig: SignatureInfo,
    requested: str | None,
) -> str:
    """The output both models give one number per row for: ``requested``, or the only one."""
    shared = [
        name
        for name, info in base_sig.outputs.items()
        if name in cand_sig.outputs
        and output_width(info.shape) == 1
        and output_width(cand_sig.outputs[name].shape) == 1
    ]
    if requested is not None:
        if requested not in shared:
            raise ModelError(
                f"--score_output={requested}: expected an output that both {baseline.label} "
                f"(outputs: {', '.join(base_sig.outputs)}) and {candidate.label} (outputs: "
                f"{', '.join(cand_sig.outputs)}) give as one number per row; pass one of: "
                f"{', '.join(shared) or 'none'}"
            )
        return requested
    wide = [
        f"{name} {list(info.shape)}"
        for name, info in base_sig.outputs.items()
        if name in cand_sig.outputs and name not in shared
    ]
    if not shared and wide:
        raise ModelError(
            f"{baseline.label} and {candidate.label} share no one-number-per-row output; they "
            f"give {', '.join(wide)} (several numbers a row, e.g. a multiclass model's class "
            "probabilities), and jobs.compare compares one score per row, so it cannot judge "
            "or bless them: check the candidate another way and promote it with "
            "python -m jobs.models promote --force (recorded as forced)"
        )
    if len(shared) != 1:
        raise ModelError(
            f"{baseline.label} and {candidate.label} share {len(shared)} one-number-per-row "
            f"outputs ({', '.join(shared) or 'none'}); expected exactly one to compare. "
            "Name it with --score_output=NAME"
        )
    return shared[0]


def compare_models(request: ComparisonRequest) -> Comparison:
    """Score the sample with both models and measure them against ``request.thresholds``."""
    started = dt.datetime.now(dt.UTC)
    req = request
    verifications = [verify_once(m, req.trust) for m in (req.baseline, req.candidate)]
    signatures = [model_signature(m, req.trust) for m in (req.baseline, req.candidate)]
    for signature in signatures:
        check_inputs(req.files, signature, req.key_columns, req.contract)
    score_output = choose_score_output(
        req.baseline, signatures[0], req.candidate, signatures[1], req.score_output
    )
    schema = req.files[0].schema if req.files else pa.schema([])
    label = req.contract.label if req.contract else None
    label = label if label and label in schema.names else None
    columns = list(
        dict.fromkeys(
            [
                *(c for s in signatures for c in columns_to_read(schema, s, req.key_columns, None)),
                *(columns_to_read(schema, signatures[0], (), req.contract)),
                *([label] if label else []),
            ]
        )
    )
    row_keys = (*req.key_columns, _ROW)
    baseline = BatchScorer(load_model(req.baseline, req.trust), row_keys, "compare")
    candidate = BatchScorer(load_model(req.candidate, req.trust), row_keys, "compare")
    # A null is an absent value where both models can take one (a sparse or ragged input,
    # an optional tf.Example feature); where either needs the column, the row is rejected.
    needed = {n for s in signatures for n, c in s.input_columns().items() if c.required}
    validator = RowValidator(
        _merged_input_types(baseline, candidate),
        tuple(req.contract.columns.values()) if req.contract else (),
        frozenset().union(*(s.optional_columns() for s in signatures)) - needed,
    )
    tally = _Tally(req.key_columns, score_output, req.top_n, label is not None)
    for split in plan_splits(req.files, DEFAULT_SPLIT_ROWS):
        _, batches = read_split(split, columns, req.batch_size)
        for batch in batches:
            tally.rows_read += batch.num_rows
            sampled = batch.filter(to_arrow(in_share(batch, req.key_columns, req.sample)))
            tally.rows_sampled += sampled.num_rows
            part = validator.partition(sampled)
            tally.rejected.update(count_reasons([part.rejected]))
            valid = _with_row_numbers(part.valid)
            tally.add(valid, _scored_rows(baseline, valid), _scored_rows(candidate, valid), label)
    metrics = tally.metrics(req.thresholds.agreement_threshold)
    checks = verdict(metrics, req.thresholds)
    report = {
        "kind": "batchscore.comparison",
        "verdict": "pass" if all(c.passed for c in checks) else "fail",
        "baseline": model_manifest(req.baseline, verifications[0]),
        "candidate": model_manifest(req.candidate, verifications[1]),
        "input": {
            "spec": req.input_spec,
            "fingerprint": fingerprint(req.files),
            "files": len(req.files),
            "skipped_files": [{"path": b.path, "reason": b.reason} for b in req.skipped_files],
        },
        "contract": (
            {"name": req.contract.name, "sha256": contract_sha256(req.contract)}
            if req.contract
            else None
        ),
        "key_columns": list(req.key_columns),
        "sample": {"fraction": req.sample, "routing": ROUTING_HASH},
        "score_output": score_output,
        "label_column": label,
        "counts": tally.counts(),
        # JSON has no NaN: an undefined metric (e.g. AUC with one label class) is null.
        "metrics": {k: None if _is_nan(v) else v for k, v in metrics.items()},
        "thresholds": req.thresholds.to_json(),
        "checks": [c.to_json() for c in checks],
        "started": started.isoformat(timespec="seconds"),
        "finished": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    return Comparison(report, tally.divergent(), checks)


def write_comparison(comparison: Comparison, folder: Path) -> None:
    """``folder/divergent_rows.parquet``, then ``folder/comparison.json`` (last: complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{DIVERGENT_FILE}.tmp"
    pq.write_table(comparison.divergent, tmp)
    tmp.rename(folder / DIVERGENT_FILE)
    write_json_atomic(folder / COMPARISON_FILE, comparison.report)


def _merged_input_types(*scorers: BatchScorer) -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {}
    for scorer in scorers:
        for name, arrow_type in scorer.input_types.items():
            if types.setdefault(name, arrow_type) != arrow_type:
                raise ModelError(
                    f"input '{name}': {scorers[0].loaded.model.label} takes {types[name]} but "
                    f"{scorers[1].loaded.model.label} takes {arrow_type}; both models must take "
                    "a shared input column as the same type to be compared on the same rows"
                )
    return types


def _with_row_numbers(batch: pa.RecordBatch) -> pa.RecordBatch:
    rows = pa.array(np.arange(batch.num_rows, dtype=np.int64))
    return pa.RecordBatch.from_arrays([*batch.columns, rows], [*batch.schema.names, _ROW])


def _scored_rows(scorer: BatchScorer, batch: pa.RecordBatch) -> pa.Table:
    """The predictions of the rows the model does not raise on, in row order."""
    predictions, _poisoned = scorer.score_isolating(batch)
    return pa.Table.from_batches(predictions, scorer.output_schema(batch.schema))


class _Tally:
    """What a comparison accumulates batch by batch."""

    def __init__(
        self, key_columns: Sequence[str], score_output: str, top_n: int, labelled: bool
    ) -> None:
        self.key_columns = tuple(key_columns)
        self.score_output = score_output
        self.top_n = top_n
        self.labelled = labelled
        self.rows_read = 0
        self.rows_sampled = 0
        self.rejected: Counter[str] = Counter()
        self._baseline: list[np.ndarray] = []
        self._candidate: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self._top: pa.Table | None = None

    def add(
        self, valid: pa.RecordBatch, baseline: pa.Table, candidate: pa.Table, label: str | None
    ) -> None:
        base_rows = baseline.column(_ROW).to_numpy()
        cand_rows = candidate.column(_ROW).to_numpy()
        # Rows come back in order, minus those a model raised on: keep the rows both scored.
        both, base_at, cand_at = np.intersect1d(
            base_rows, cand_rows, assume_unique=True, return_indices=True
        )
        if valid.num_rows > len(both):
            self.rejected[MODEL_ERROR] += valid.num_rows - len(both)
        if len(both) == 0:
            return
        base_scores = _floats(baseline.column(self.score_output))[base_at]
        cand_scores = _floats(candidate.column(self.score_output))[cand_at]
        self._baseline.append(base_scores.astype(np.float32))
        self._candidate.append(cand_scores.astype(np.float32))
        labels = None
        if label is not None:
            labels = _floats(valid.column(label))[both]
            self._labels.append(labels)
        self._keep_top(baseline.take(pa.array(base_at)), base_scores, cand_scores, labels)

    def _keep_top(
        self,
        rows: pa.Table,
        base_scores: np.ndarray,
        cand_scores: np.ndarray,
        labels: np.ndarray | None,
    ) -> None:
        diff = np.abs(cand_scores - base_scores)
        if len(diff) > self.top_n:
            chosen = np.argpartition(-diff, self.top_n - 1)[: self.top_n]
        else:
            chosen = np.arange(len(diff))
        columns: dict[str, Any] = {
            name: rows.column(name).take(chosen) for name in self.key_columns
        }
        columns[BASELINE_SCORE] = pa.array(base_scores[chosen])
        columns[CANDIDATE_SCORE] = pa.array(cand_scores[chosen])
        columns[ABS_DIFF] = pa.array(diff[chosen])
        if labels is not None:
            columns[LABEL] = pa.array(labels[chosen])
        table = pa.table(columns)
        merged = table if self._top is None else pa.concat_tables([self._top, table])
        order = pc.sort_indices(merged, [(ABS_DIFF, "descending")])
        self._top = merged.take(order.slice(0, self.top_n))

    def counts(self) -> dict[str, Any]:
        rejected = sum(self.rejected.values())
        return {
            "rows_read": self.rows_read,
            "rows_sampled": self.rows_sampled,
            "rows_rejected": rejected,
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "rows_compared": sum(len(a) for a in self._baseline),
        }

    def metrics(self, agreement_threshold: float) -> dict[str, Any]:
        baseline = _concat(self._baseline)
        candidate = _concat(self._candidate)
        metrics: dict[str, Any] = {"rows_compared": len(baseline)}
        metrics.update(pairwise_metrics(baseline, candidate, agreement_threshold))
        if self.labelled:
            labels = _concat(self._labels)
            known = ~np.isnan(labels)
            metrics.update(labelled_metrics(labels[known], baseline[known], candidate[known]))
        return metrics

    def divergent(self) -> pa.Table:
        if self._top is None:
            return pa.table({BASELINE_SCORE: pa.array([], pa.float64())})
        return self._top


def _floats(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    values: np.ndarray = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    return values


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def blessing(report: dict[str, Any], comparison_dir: Path, blessed_by: str) -> dict[str, Any]:
    """The blessing a passing comparison writes into the candidate's metadata.json."""
    if report["verdict"] != "pass":
        raise ValueError("only a passing comparison blesses")

    def identity(model: dict[str, Any]) -> dict[str, Any]:
        keep = ("name", "version", "content_hash", "alias", "registered")
        return {key: model.get(key) for key in keep}

    return {
        "baseline": identity(report["baseline"]),
        "candidate": identity(report["candidate"]),
        "metrics": report["metrics"],
        "thresholds": report["thresholds"],
        "input": {k: report["input"][k] for k in ("spec", "fingerprint")},
        "sample": report["sample"],
        "key_columns": report["key_columns"],
        "comparison": str(comparison_dir),
        "blessed_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "blessed_by": blessed_by,
    }


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)
