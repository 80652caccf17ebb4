"""What produced a model: the user's functions (imported by ``MODULE:FUNCTION``, with the
sha256 of their source), and the lineage record a registered version carries."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.core.errors import UsageError
from batch.core.fsutil import file_sha256

LINEAGE_FORMAT = 1


@dataclass(frozen=True)
class FunctionRef:
    """A function named ``MODULE:FUNCTION``, imported, with where its source lives."""

    spec: str
    function: Callable[..., Any]
    source_file: Path | None

    def to_json(self) -> dict[str, Any]:
        module, _, name = self.spec.partition(":")
        return {
            "module": module,
            "function": name,
            "file": str(self.source_file) if self.source_file else None,
            "sha256": file_sha256(self.source_file) if self.source_file else None,
        }


def load_function(spec: str, option: str) -> FunctionRef:
    """Import ``MODULE:FUNCTION`` (the module found on ``sys.path``/PYTHONPATH)."""
    module_name, colon, name = spec.partition(":")
    if not colon or not module_name or not name:
        raise UsageError(
            f"{option}={spec}: expected MODULE:FUNCTION, e.g. transforms.loans:preprocessing_fn"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise UsageError(
            f"{option}={spec}: no module named '{exc.name or module_name}' on the Python path; "
            "put its folder on PYTHONPATH or run from the folder that holds it"
        ) from exc
    except Exception as exc:  # the user's module failed while importing
        raise UsageError(
            f"{option}={spec}: importing module '{module_name}' failed "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    function = getattr(module, name, None)
    if not callable(function):
        found = "not callable" if function is not None else "not defined"
        raise UsageError(
            f"{option}={spec}: module '{module_name}' ({getattr(module, '__file__', '?')}) has "
            f"no function '{name}' ({found})"
        )
    source = inspect.getsourcefile(module)
    return FunctionRef(spec, function, Path(source).resolve() if source else None)


def git_revision(folder: Path) -> dict[str, Any] | None:
    """The git commit of ``folder``'s checkout and whether it has local changes; None when
    it is not a git checkout (an installed wheel) or git is missing."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def lineage(
    *,
    training_data: Mapping[str, Any],
    contract_name: str,
    contract_sha256: str,
    preprocessing: FunctionRef,
    model_fn: FunctionRef,
    hyperparameters: Mapping[str, Any],
    frameworks: Mapping[str, str],
) -> dict[str, Any]:
    """The lineage record of a registered version (``metadata.json`` ``lineage``);
    ``training_data`` is the input snapshot (training.dataset.snapshot: every file with its
    size and sha256), which ``jobs.train --input_manifest`` retrains on."""
    return {
        "format": LINEAGE_FORMAT,
        "training_data": dict(training_data),
        "contract": {"name": contract_name, "sha256": contract_sha256},
        "preprocessing_fn": preprocessing.to_json(),
        "model_fn": model_fn.to_json(),
        "hyperparameters": dict(hyperparameters),
        "libraries": {
            **frameworks,
            "python": sys.version.split()[0],
        },
        "batchscore_git": git_revision(Path(__file__).resolve().parent),
    }
