"""The checks every job makes before it starts an engine: inputs, model trust, contract,
key columns, output folder. Shared by scoring, comparisons and backfills, so each fails
the same way, in one line, before Beam, Spark or TensorFlow start."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from batch.contract.contract import Contract, load_contract
from batch.core.errors import InputDataError, UsageError
from batch.demo.paths import default_public_key
from batch.engine.inputs import BadFile, IgnoredFile, InputFile, inspect_inputs, scan_inputs
from batch.model.resolved import ResolvedModel
from batch.model.signing import TrustPolicy

log = logging.getLogger(__name__)

OnBadFile = Literal["fail", "skip"]


def trust_policy(public_key: str | Path | None, allow_unsigned: bool) -> TrustPolicy:
    """--public_key / --allow_unsigned as a policy; the default key
    (batch.demo.paths.default_public_key) may be absent (then only ``allow_unsigned`` lets
    a model load), a key that was named must exist."""
    if public_key is not None:
        return TrustPolicy.from_key_file(public_key, allow_unsigned)
    default = default_public_key()
    if default.is_file():
        return TrustPolicy.from_key_file(default, allow_unsigned)
    return TrustPolicy(None, allow_unsigned, key_source=f"the default {default} does not exist")


def check_local_path(option: str, value: str | None) -> None:
    """Inputs, models and outputs are POSIX paths: the commit protocol needs atomic rename
    and flock (docs/commit-protocol.md), which object stores do not give."""
    if value and "://" in value:
        raise UsageError(
            f"{option}={value}: batchscore reads and writes file system paths only, not URLs; "
            "its commit protocol needs atomic rename and file locks, which object stores such "
            "as GCS or S3 lack. Put the data on a file system that the driver and every worker "
            "mount at the same path (a local disk, or an NFS share such as Filestore) and "
            "pass that path"
        )


def check_output_writable(output: Path, option: str = "--output") -> None:
    try:
        output.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise UsageError(
            f"{option}={output}: cannot write there ({exc.strerror or exc}); "
            "choose a folder you can write to"
        ) from exc


@dataclass(frozen=True)
class ResolvedInputs:
    """What ``--input`` gives a job, from one listing of it."""

    files: list[InputFile]
    # Unreadable files skipped by --on_bad_file=skip (the manifest's input.skipped_files).
    bad: list[BadFile]
    # What looks like data but is not read (the manifest's input.ignored).
    ignored: list[IgnoredFile]


def resolve_inputs(spec: str, on_bad_file: OnBadFile) -> ResolvedInputs:
    """The readable Parquet files of ``spec``, the bad ones (by ``on_bad_file``) and what
    is not read; listed once, each non-read path logged as a warning so it is never silent."""
    listing = scan_inputs(spec)
    if listing.ignored:
        log.warning(
            "%d path(s) under --input=%s look like data but are not read (listed in the "
            "manifest as input.ignored): %s",
            len(listing.ignored),
            spec,
            "; ".join(f"{i.path}: {i.reason}" for i in listing.ignored[:10])
            + ("; ..." if len(listing.ignored) > 10 else ""),
        )
    files, bad = inspect_inputs(listing.files)
    if bad and on_bad_file == "fail":
        bad_listed = "\n  ".join(f"{b.path}: {b.reason}" for b in bad)
        raise InputDataError(
            f"{len(bad)} bad input file(s); remove or replace them, or pass "
            f"--on_bad_file=skip to score the others and record these in the manifest:\n  "
            + bad_listed
        )
    for b in bad:
        log.warning("skipping %s: %s", b.path, b.reason)
    if not files:
        raise InputDataError(f"--input={spec}: every input file is bad; nothing to score")
    return ResolvedInputs(files, bad, listing.ignored)


def job_contract(option: str | None, model: ResolvedModel) -> Contract | None:
    """The contract named, else the one the model was trained with, else none."""
    name = option or model.metadata.get("contract")
    return load_contract(str(name)) if name else None


def parse_key_columns(option: str | Sequence[str], what: str = "--key_columns") -> list[str]:
    """Key column names from a comma-separated string or a list: blanks stripped, a name
    given twice kept once (in first-seen order); none at all is a :class:`UsageError`
    (a run without a key cannot be checked or joined)."""
    names = option.split(",") if isinstance(option, str) else list(option)
    keys = list(dict.fromkeys(c.strip() for c in names if c.strip()))
    if not keys:
        raise UsageError(
            f"{what}={option if isinstance(option, str) else ','.join(option)!r}: expected "
            "one or more column names that identify a row, found none; e.g. "
            f"{what}=customer_id,dt"
        )
    return keys


def job_key_columns(
    option: str | Sequence[str] | None, model: ResolvedModel, contract: Contract | None
) -> list[str]:
    """The key columns named (a comma-separated string or a list), else the model's
    recorded keys, else the contract's."""
    if option is not None:
        return parse_key_columns(option)
    recorded = model.metadata.get("key_columns") or (contract.key_columns if contract else ())
    if recorded:
        return [str(c) for c in recorded]
    raise UsageError(
        f"--key_columns is required for model {model.label}: it records no key columns. "
        "Name the input columns that identify a row, e.g. --key_columns=customer_id,dt"
    )
