"""A gray release inside one run: each row scored by the production or the canary model,
as its key decides (batch.release.routing)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from batch.engine.scorer import BatchScorer
from batch.model.loading import LoadedModel
from batch.release.routing import in_share


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
        to_canary = pa.array(mask)
        scored, rejected = self.production.score_isolating(batch.filter(pc.invert(to_canary)))
        canary_scored, canary_rejected = self.canary.score_isolating(batch.filter(to_canary))
        return scored + canary_scored, rejected + canary_rejected
