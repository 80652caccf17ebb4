"""Attach a drift baseline to a registered version trained elsewhere (``python -m jobs.models
baseline NAME@VERSION --input=TRAINING_DATA``).

The model is verified and loaded as scoring loads it; the first ``rows`` rows of the input
(the columns the model reads) are checked with the contract's row checks, the valid ones
scored with the engine's own scorer, and the columns and the first output described as a
:class:`batch.observe.drift.Baseline`. The baseline is written inside the SavedModel
(``assets.extra/batchscore_baseline.json``), which is then signed again
(:meth:`batch.model.repository.ModelRepository.amend`), so the signature covers it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch.core.errors import InputDataError, UsageError
from batch.engine.inputs import list_data_files
from batch.engine.prepare import job_contract
from batch.engine.scorer import BatchScorer
from batch.engine.validate import RowValidator
from batch.model.loading import load_model
from batch.model.repository import SAVED_MODEL_DIR, ModelRepository
from batch.model.resolved import ResolvedModel
from batch.model.signing import TrustPolicy
from batch.observe.drift import BASELINE_FILE, BASELINE_FOLDER, Baseline, compute_baseline

DEFAULT_BASELINE_ROWS = 200_000


@dataclass(frozen=True)
class BaselineRequest:
    model: str  # NAME@VERSION in the repository
    input: Path
    signing_key: Path
    trust: TrustPolicy
    rows: int = DEFAULT_BASELINE_ROWS
    force: bool = False


def attach_baseline(
    repo: ModelRepository, request: BaselineRequest, report: Callable[[str], None] | None = None
) -> ResolvedModel:
    """Compute the baseline of ``request.input`` and attach it (see the module docstring);
    return the amended version."""
    model = repo.resolve(request.model)
    existing = Baseline.load(model.saved_model_dir, model.label)
    if existing is not None and not request.force:
        raise UsageError(
            f"model {model.label} already has a drift baseline ({existing.rows:,} rows of "
            f"{existing.source}); pass --force to replace it"
        )
    if request.rows < 1:
        raise UsageError(f"--rows={request.rows}: expected at least 1")
    files = list_data_files(request.input).files if request.input.is_dir() else [request.input]
    if not files or not files[0].is_file():
        raise UsageError(f"--input={request.input}: expected Parquet files; found none")
    loaded = load_model(model, request.trust)
    scorer = BatchScorer(loaded, (), run_id="baseline")
    contract = job_contract(None, model)
    features = list(scorer.input_types)
    table = _read(files, features, request.rows)
    validator = RowValidator(
        scorer.input_types, tuple(contract.columns.values()) if contract else ()
    )
    valid = validator.partition(table.combine_chunks().to_batches()[0]).valid
    predictions = None
    output_name = "prediction"
    if valid.num_rows:
        scored = scorer.score(valid)
        field = scored.schema.field(0)
        output_name = field.name
        if not pa.types.is_list(field.type) and not pa.types.is_fixed_size_list(field.type):
            predictions = np.asarray(scored.column(0).to_numpy(zero_copy_only=False))
    baseline = compute_baseline(
        table,
        features,
        source=f"{request.input} (first {table.num_rows:,} rows; predictions on the "
        f"{valid.num_rows:,} valid ones)",
        predictions=predictions,
        prediction_name=output_name,
    )
    payload = (json.dumps(baseline.to_json(), indent=2, sort_keys=True) + "\n").encode()
    relative = f"{BASELINE_FOLDER}/{BASELINE_FILE}"
    amended = repo.amend(
        model,
        {relative: payload},
        {
            "drift_baseline": {
                "path": f"{SAVED_MODEL_DIR}/{relative}",
                "sha256": hashlib.sha256(payload).hexdigest(),
                "rows": baseline.rows,
                "prediction_rows": baseline.prediction_rows,
                "features": len(baseline.features),
            }
        },
        request.signing_key,
        note=f"drift baseline from {request.input}",
    )
    if report:
        report(
            f"baseline: attached to {amended.label} ({baseline.rows:,} rows, "
            f"{len(baseline.features)} features, predictions on {baseline.prediction_rows:,}); "
            f"re-signed ({amended.signature_file})"
        )
    return amended


def _read(files: list[Path], columns: list[str], rows: int) -> pa.Table:
    tables = []
    read = 0
    for path in files:
        if read >= rows:
            break
        schema = pq.read_schema(path)
        missing = [name for name in columns if schema.get_field_index(name) < 0]
        if missing:
            raise InputDataError(
                f"{path}: expected the columns the model reads; missing {', '.join(missing)}. "
                "Pass the model's training data as --input"
            )
        table = pq.read_table(path, columns=columns).slice(0, rows - read)
        tables.append(table)
        read += table.num_rows
    return pa.concat_tables(tables, promote_options="permissive")
