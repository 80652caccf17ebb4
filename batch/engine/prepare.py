"""The checks every job makes before it starts an engine: inputs, model trust, contract,
key columns, output folder. Shared by scoring, comparisons and backfills, so each fails
the same way, in one line, before Beam, Spark or TensorFlow start."""

from __future__ import annotations

import logging
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from batch.contract.contract import Contract, load_contract
from batch.core import storage
from batch.core.errors import InputDataError, UsageError
from batch.demo.paths import PUBLIC_KEY_ENV, default_public_key, demo_unavailable
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
    if default is None:
        reason = demo_unavailable()
        return TrustPolicy(
            None,
            allow_unsigned,
            key_source=f"no --public_key given, ${PUBLIC_KEY_ENV} unset, and no demo key: {reason}",
        )
    if default.is_file():
        return TrustPolicy.from_key_file(default, allow_unsigned)
    return TrustPolicy(None, allow_unsigned, key_source=f"the default {default} does not exist")


def check_local_path(option: str, value: str | None) -> None:
    """Paths are local (or mounted) paths or ``gs://`` / ``s3://`` URIs (batch.core.storage;
    docs/commit-protocol.md has the object-store protocol); any other URL is refused before
    anything is made (``Path`` would fold ``x://`` into a folder named ``x:``)."""
    if value and "://" in value and not storage.is_uri(value):
        scheme = value.split("://", 1)[0]
        raise UsageError(
            f"{option}={value}: batchscore reads and writes local paths, gs:// and s3:// "
            f"URIs; {scheme}:// is not one of them. Copy the data to GCS or S3 (or a mounted "
            "folder) and pass that"
        )


def check_output_writable(output: Path | str, option: str = "--output") -> None:
    if storage.is_uri(str(output)):
        probe = storage.join(str(output), f".write-check-{secrets.token_hex(6)}")
        try:
            storage.write_bytes(probe, b"")
            storage.delete(probe)
        except storage.StorageError as exc:
            raise UsageError(f"{option}={output}: cannot write there: {exc}") from exc
        return
    output = Path(output)
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
    files, bad = inspect_inputs(listing.all)
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
    """The contract named (a name, a folder, or a gs:// / s3:// folder, downloaded), else
    the one the model was trained with, else none."""
    if option is not None and storage.is_uri(option):
        local = Path(tempfile.mkdtemp(prefix="batchscore-contract-")) / storage.name(option)
        storage.download_tree(option, str(local))
        return load_contract(str(local))
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
