"""One root exception for the engine core, and its few specialisations.

Every error batchscore raises on purpose is a :class:`BatchScoreError`; the
command lines print its message as one line and exit non-zero. Messages say
what was expected, what was found, and how to fix it.
"""

from __future__ import annotations


class BatchScoreError(Exception):
    """Root of every error batchscore raises on purpose."""


class UsageError(BatchScoreError):
    """A command-line argument is wrong (no such input, model or output)."""


class ModelError(BatchScoreError):
    """A model cannot be resolved, loaded or called as batchscore needs."""


class InputDataError(BatchScoreError):
    """Input data does not fit the model or the contract."""


class CommitError(BatchScoreError):
    """A run could not be committed; nothing was made visible."""


class ErrorBudgetExceeded(InputDataError):
    """More rows were rejected than ``--max_error_rate`` allows; nothing was committed."""


class DriftExceeded(InputDataError):
    """The input drifted beyond ``--max_drift`` with ``--on_drift=fail``; nothing was committed."""


class DamagedFileError(InputDataError):
    """A file whose footer was readable holds a data page that cannot be decoded; with
    ``--on_bad_file=skip`` the whole file is skipped, as for a damaged footer."""
