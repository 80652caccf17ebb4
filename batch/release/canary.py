"""A gray release inside one run: each row scored by the production or the canary model,
as its key decides (batch.release.routing)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from batch.core.columns import MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN
from batch.core.errors import ModelError, UsageError
from batch.engine.job import ScoringJob, model_manifest, model_signature
from batch.engine.scorer import BatchScorer
from batch.engine.validate import filter_rows
from batch.model.loading import LoadedModel, load_model
from batch.model.resolved import ResolvedModel
from batch.model.signature import (
    DEFAULT_CHOICE,
    SignatureChoice,
    SignatureInfo,
    signature_differences,
)
from batch.model.signing import TrustPolicy, verify_once
from batch.output.commit import PREDICTIONS
from batch.release.routing import ROUTING_HASH, in_share


@dataclass(frozen=True)
class Canary:
    """A gray release: ``model`` scores the rows whose keys fall in ``fraction``; the run's
    main model scores the others, in the same run.

    A :class:`batch.engine.job.ScoringVariant`: checked on the driver, it wraps each
    worker's scorer in a :class:`CanaryScorer` and records itself as the manifest's
    ``canary`` section (with the rows each model scored).
    """

    model: ResolvedModel
    fraction: float

    manifest_key = "canary"

    def prepare(
        self,
        model: ResolvedModel,
        signature: SignatureInfo,
        key_columns: Sequence[str],
        trust: TrustPolicy,
        choice: SignatureChoice = DEFAULT_CHOICE,
    ) -> dict[str, Any]:
        section = {
            "model": model_manifest(self.model, verify_once(self.model, trust)),
            "fraction": self.fraction,
            "routing": ROUTING_HASH,
            "key_columns": list(key_columns),
        }
        check_canary_signature(model, signature, self, model_signature(self.model, trust, choice))
        return section

    def wrap(self, scorer: BatchScorer, job: ScoringJob) -> CanaryScorer:
        canary = BatchScorer(
            load_model(self.model, job.trust, job.signature),
            job.key_columns,
            scorer.run_id,
            keep_non_finite=scorer.keep_non_finite,
            passthrough=job.passthrough_columns,
            backoff=scorer.backoff,
        )
        return CanaryScorer(scorer, canary, job.key_columns, self.fraction)

    def finish(self, staging_dir: Path, section: dict[str, Any]) -> None:
        section["rows_scored"] = rows_by_model(staging_dir)

    def describe(self) -> str:
        return f"canary {self.model.label} on {self.fraction:.1%} of keys"


class CanaryScorer:
    """Scores each row with the production or the canary model, as the row's keys decide.

    A row goes to the canary when its key hash falls in ``fraction``
    (:func:`batch.release.routing.in_share`), so a key is scored by the same model on
    every runner, batch and rerun. Both scorers must give the same output schema;
    each prediction row names the model that scored it (model_name, model_version).
    """

    def __init__(
        self,
        production: BatchScorer,
        canary: BatchScorer,
        key_columns: Sequence[str],
        fraction: float,
    ) -> None:
        self.production = production
        self.canary = canary
        self.key_columns = tuple(key_columns)
        self.fraction = fraction

    @property
    def loaded(self) -> LoadedModel:
        """The production model: the one the run is named after."""
        return self.production.loaded

    @property
    def input_types(self) -> dict[str, pa.DataType]:
        return self.production.input_types

    @property
    def takes_encoded(self) -> frozenset[str]:
        return self.production.takes_encoded & self.canary.takes_encoded

    def output_schema(self, input_schema: pa.Schema) -> pa.Schema:
        return self.production.output_schema(input_schema)

    def score_isolating(
        self, batch: pa.RecordBatch
    ) -> tuple[list[pa.RecordBatch], list[pa.RecordBatch]]:
        mask = in_share(batch, self.key_columns, self.fraction)
        if not mask.any():
            return self.production.score_isolating(batch)
        if mask.all():
            return self.canary.score_isolating(batch)
        scored, rejected = self.production.score_isolating(filter_rows(batch, ~mask))
        canary_scored, canary_rejected = self.canary.score_isolating(filter_rows(batch, mask))
        return scored + canary_scored, rejected + canary_rejected


def check_canary_signature(
    model: ResolvedModel, signature: SignatureInfo, canary: Canary, canary_signature: SignatureInfo
) -> None:
    """A canary writes into the same predictions output: it must take and give the same tensors."""
    if not 0.0 < canary.fraction < 1.0:
        raise UsageError(
            f"--canary_fraction={canary.fraction}: expected a share strictly between 0 and 1 "
            "(e.g. 0.1 for 10% of keys); to score everything with one model use --model alone"
        )
    if canary.model.content_hash == model.content_hash:
        raise UsageError(
            f"--canary={canary.model.label} has the same files as --model={model.label}; a "
            "canary must be another model. Promote the candidate to the canary alias first"
        )
    differences = signature_differences(signature, canary_signature)
    if differences:
        raise ModelError(
            f"--canary={canary.model.label}: its serving signature differs from --model="
            f"{model.label}'s ({'; '.join(differences)}); a canary writes into the same "
            "predictions output, so it must take and give the same tensors. Choose a candidate "
            "with the same signature, or compare the two with `python -m jobs.compare`"
        )


def rows_by_model(run_dir: Path) -> dict[str, int]:
    """Prediction rows of a (staged) run by the model that scored them: {"NAME@VERSION": rows}."""
    counts: Counter[str] = Counter()
    for path in sorted((run_dir / PREDICTIONS).glob("part-*.parquet")):
        table = pq.read_table(path, columns=[MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN])
        for row in (
            table.group_by([MODEL_NAME_COLUMN, MODEL_VERSION_COLUMN])
            .aggregate([([], "count_all")])
            .to_pylist()
        ):
            counts[f"{row[MODEL_NAME_COLUMN]}@{row[MODEL_VERSION_COLUMN]}"] += row["count_all"]
    return dict(sorted(counts.items()))
