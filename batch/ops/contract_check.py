"""How data breaks a contract, without scoring (``python -m jobs.contract check``).

Per file: the schema problems scoring would refuse before any compute (a missing or
mistyped column, a required column that is entirely null), then the row checks scoring
applies (batch.engine.validate: nulls, NaN, ranges, unseen categories, characters),
counted by reason with a few example messages. Reads record batches; holds no table.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from batch.contract.contract import Contract
from batch.core.columns import MESSAGE_COLUMN, REASON_COLUMN
from batch.engine.inputs import footer_null_counts
from batch.engine.validate import RowValidator

EXAMPLES = 3


@dataclass(frozen=True)
class FileCheck:
    path: Path
    rows: int
    schema_problems: tuple[str, ...]
    rejected: dict[str, int] = field(default_factory=dict)
    examples: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.schema_problems and not self.rejected


def check_contract(
    files: Sequence[Path], contract: Contract, max_rows: int | None = None
) -> list[FileCheck]:
    """Every file of ``files`` checked against ``contract`` (the first ``max_rows`` rows of
    each for the row checks; the schema checks always see the whole file's footer)."""
    return [_check_file(path, contract, max_rows) for path in files]


def _check_file(path: Path, contract: Contract, max_rows: int | None) -> FileCheck:
    parquet = pq.ParquetFile(path)
    schema = parquet.schema_arrow
    rows = parquet.metadata.num_rows
    nulls = footer_null_counts(parquet.metadata)
    problems = [
        f"{path}: column '{rule.name}' is missing; contract '{contract.name}' declares it "
        f"{'required' if rule.required else 'optional'}"
        for rule in contract.columns.values()
        if schema.get_field_index(rule.name) < 0
    ]
    problems += contract.schema_problems(schema, nulls, rows, str(path))
    if problems:
        return FileCheck(path, rows, tuple(problems))
    validator = RowValidator({}, tuple(contract.columns.values()))
    reasons: Counter[str] = Counter()
    examples: list[str] = []
    seen = 0
    for batch in parquet.iter_batches(batch_size=65536, columns=list(contract.columns)):
        if max_rows is not None and seen >= max_rows:
            break
        if max_rows is not None:
            batch = batch.slice(0, max_rows - seen)
        seen += batch.num_rows
        rejected = validator.partition(batch).rejected
        if rejected.num_rows:
            reasons.update(rejected.column(REASON_COLUMN).to_pylist())
            for message in rejected.column(MESSAGE_COLUMN).to_pylist():
                if len(examples) < EXAMPLES:
                    examples.append(str(message))
    return FileCheck(path, rows, (), dict(sorted(reasons.items())), tuple(examples))
