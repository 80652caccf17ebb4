"""A small job scored in this process, without starting an engine.

A job over a few rows is nearly all fixed cost: TensorFlow's import, the model load
and, on Beam, Beam's own import and pipeline (about 1 s on a 2-core machine). Beam's
DirectRunner, in memory, runs a job's splits one after another in this process with
:func:`batch.engine.job.score_split`; :class:`InProcessRunner` runs the same function on
the same splits without Beam, so the run's parts, checks, manifest and commit are those
of the engine's run. Only the engine's own machinery is left out: its options and its
live metrics (the manifest's counts come from the parts' stats files either way).

:func:`batch.api.score` picks it for an input of at most ``in_process_rows`` rows
(``python -m jobs.score --in_process_rows``, for the DirectRunner without other Beam
options); the manifest's ``runner`` says which ran.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from batch.engine.inputs import Split
from batch.engine.job import ScoringJob, score_split
from batch.engine.memory import NOT_SHARED

IN_PROCESS = "in-process"


class InProcessRunner:
    """Scores the splits of a job in this process, one after another (each split's reading,
    calls and writing overlapped by :func:`score_split` itself, as on an engine's worker)."""

    name = IN_PROCESS
    splits_at_once = 1
    memory_sharing = NOT_SHARED

    def __init__(self, input_rows: int, max_rows: int) -> None:
        self._input_rows = input_rows
        self._max_rows = max_rows

    def options(self) -> dict[str, Any]:
        return {
            "input_rows": self._input_rows,
            "in_process_rows": self._max_rows,
            "reason": f"{self._input_rows:,} input row(s), at most {self._max_rows:,}: scored "
            "in this process without starting an engine",
        }

    def execute(self, job: ScoringJob, splits: Sequence[Split]) -> None:
        for split in splits:
            score_split(job, split)
