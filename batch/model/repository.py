"""A local model repository: ``<repo>/<name>/<version>/`` folders, registered atomically.

Layout of one registered version::

    <repo>/<name>/<version>/
        saved_model/        the SavedModel; ``serving_default`` takes raw 1-D columns
        transform_output/   the tf.Transform output the model's transform layer came from
        metadata.json       name, version, created, signature, training fingerprint, metrics

Versions are positive integers, assigned in order at registration. A version
folder is first assembled under ``<repo>/<name>/.staging-*`` (signed there, when
a key is given: ``saved_model.sig`` beside ``saved_model/``, see
:mod:`batch.model.signing`) and then renamed into place, so a reader never sees a
half-registered or not-yet-signed version.

Aliases (``production``, ``canary``, ...) name one version each; they live in
``<repo>/<name>/aliases.json``, which :meth:`ModelRepository.promote` replaces
atomically, with the history of every promotion (who, when, forced or not).
``NAME@ALIAS`` resolves wherever ``NAME@VERSION`` does.

Promotion asks gates (:class:`PromotionGate`): the version is signed
(:class:`SignedGate`), and, for ``production``, it carries a blessing against
the version ``production`` points at now (:class:`BlessedGate`), which a passing
``python -m jobs.compare`` writes into its ``metadata.json``
(:meth:`ModelRepository.add_blessing`; outside the signed folder).

This module never imports TensorFlow: resolving a model must be fast enough to
reject a bad ``--model`` argument before any heavy start-up.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import getpass
import logging
import os
import re
import shutil
import socket
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from batch.contract.contract import RULES_FILE, SCHEMA_FILE
from batch.core import storage
from batch.core.errors import ModelError, UsageError
from batch.core.fsutil import directory_sha256, locked, read_json, write_json_atomic
from batch.model.resolved import ResolvedModel, signature_path
from batch.model.signing import SIGN_COMMAND, sign_model

SAVED_MODEL_DIR = "saved_model"
TRANSFORM_OUTPUT_DIR = "transform_output"
METADATA_FILE = "metadata.json"
ALIASES_FILE = "aliases.json"
log = logging.getLogger(__name__)

# Inside the SavedModel, where its signature covers it: <folder>/<contract name>/schema.pbtxt
CONTRACT_FOLDER = "assets.extra/batchscore_contract"
# What changes how a version is scored, signed with it (metadata.json is not signed).
SCORING_METADATA = "assets.extra/batchscore_scoring.json"
SIGNED_KEYS = ("key_columns", "contract", "signature")
LATEST = "latest"
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def is_saved_model_dir(path: Path) -> bool:
    return (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file()


# Where TFX puts the SavedModel inside a Trainer's model artifact (Format-Serving since TFX
# 0.21, serving_model_dir before), tried before any other subfolder.
TFX_SERVING_FOLDERS = ("Format-Serving", "serving_model_dir")


def find_saved_model(path: Path) -> Path:
    """The SavedModel at ``path``, or inside it as TFX lays it out: a Trainer's model
    artifact (``Format-Serving/``), a Pusher's or an Estimator export's timestamped
    versions (the highest number wins), or one subfolder holding a SavedModel."""
    return _find(path, is_saved_model_dir, TFX_SERVING_FOLDERS, "a SavedModel (saved_model.pb)")


def find_transform_output(path: Path) -> Path:
    """The tf.Transform output at ``path`` (``transform_fn/`` and ``transformed_metadata/``),
    or inside it as TFX's Transform component writes its ``transform_graph`` artifact."""

    def is_transform_output(folder: Path) -> bool:
        return (folder / "transform_fn").is_dir()

    return _find(path, is_transform_output, (), "a tf.Transform output (transform_fn/)")


def _find(path: Path, found: Any, preferred: Sequence[str], what: str) -> Path:
    if not path.is_dir():
        raise UsageError(f"{path}: expected a folder holding {what}; no such directory")
    if found(path):
        return path
    for name in preferred:
        if found(path / name):
            return path / name
    children = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith("."))
    candidates = [c for c in children if found(c)]
    candidates += [c / n for c in children for n in preferred if found(c / n)]
    numbered = [c for c in candidates if c.name.isdigit() or c.parent.name.isdigit()]
    if numbered:  # timestamped exports or run ids: the newest
        return max(numbered, key=lambda c: int(c.name if c.name.isdigit() else c.parent.name))
    if len(candidates) == 1:
        return candidates[0]
    listed = ", ".join(c.relative_to(path).as_posix() for c in candidates)
    raise UsageError(
        f"{path}: expected {what} in it, or in one subfolder as TFX writes it "
        f"({'/'.join(preferred) or 'a version folder'}); found "
        f"{'several: ' + listed if candidates else 'none'}. Pass the folder itself"
    )


def embed_contract(saved_model_dir: Path, contract_dir: Path) -> Path:
    """Copy a contract's files into the SavedModel (``CONTRACT_FOLDER/<name>/``), so that the
    model's signature covers them and scoring finds them from any folder and worker."""
    if not (contract_dir / SCHEMA_FILE).is_file():
        raise UsageError(f"contract {contract_dir}: expected {SCHEMA_FILE} in it; found none")
    target = saved_model_dir / CONTRACT_FOLDER / contract_dir.name
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for name in (SCHEMA_FILE, RULES_FILE):
        if (contract_dir / name).is_file():
            shutil.copyfile(contract_dir / name, target / name)
    return target


def embedded_contract(saved_model_dir: Path) -> Path | None:
    """The contract folder a SavedModel carries (:func:`embed_contract`), or None."""
    folder = saved_model_dir / CONTRACT_FOLDER
    found = sorted(folder.glob(f"*/{SCHEMA_FILE}")) if folder.is_dir() else []
    return found[0].parent if len(found) == 1 else None


def embed_scoring_metadata(saved_model_dir: Path, metadata: dict[str, Any]) -> None:
    """Write what changes how a version is scored (``SIGNED_KEYS`` of ``metadata``) into
    the SavedModel, where its signature covers it (``SCORING_METADATA``)."""
    signed = {key: metadata[key] for key in SIGNED_KEYS if metadata.get(key) is not None}
    write_json_atomic(saved_model_dir / SCORING_METADATA, signed)


def _signed_view(meta: dict[str, Any], saved_model_dir: Path, label: str) -> dict[str, Any]:
    """``meta`` (metadata.json, which no signature covers) with ``SIGNED_KEYS`` taken from
    the signed copy inside the SavedModel. A signed version registered without that copy
    has those keys ignored (an edited metadata.json must not switch checks off); an
    unsigned one keeps them, as it keeps everything else unverified."""
    unsigned = {k: v for k, v in meta.items() if k not in SIGNED_KEYS}
    path = saved_model_dir / SCORING_METADATA
    if path.is_file():
        try:
            signed = read_json(path)
        except (OSError, ValueError) as exc:
            raise ModelError(
                f"model {label}: {path} cannot be read ({exc}); the version is damaged: "
                "verify it (python -m jobs.models verify) and register it again"
            ) from exc
        ignored = sorted(k for k in SIGNED_KEYS if k in meta and meta[k] != signed.get(k))
        if ignored:
            log.warning(
                "model %s: metadata.json differs from the signed %s on %s; the signed "
                "values are used",
                label,
                SCORING_METADATA,
                ", ".join(ignored),
            )
        return {**unsigned, **{k: v for k, v in signed.items() if k in SIGNED_KEYS}}
    if not signature_path(saved_model_dir).is_file():
        return meta
    dropped = sorted(k for k in SIGNED_KEYS if meta.get(k) is not None)
    if dropped:
        log.warning(
            "model %s: %s in metadata.json are ignored: no signature covers them (the "
            "version was registered before batchscore signed them). Register it again "
            "(python -m jobs.models register) to have them signed",
            label,
            ", ".join(dropped),
        )
    return unsigned


def _with_embedded_contract(meta: dict[str, Any], saved_model_dir: Path) -> dict[str, Any]:
    """``meta`` whose ``contract`` is the absolute path of the contract the version carries
    (when it carries one): what scoring loads, whatever the caller's working folder."""
    embedded = embedded_contract(saved_model_dir)
    if embedded is None:
        return meta
    return {**meta, "contract": str(embedded.resolve())}


@dataclass(frozen=True)
class Promotion:
    """One move of an alias, as recorded in ``aliases.json``."""

    name: str
    alias: str
    version: int
    previous_version: int | None
    promoted_at: str
    promoted_by: str
    forced: bool
    # Gate refusals that --force overrode (empty when nothing was overridden).
    overridden: tuple[str, ...] = ()
    reason: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "alias": self.alias,
            "version": self.version,
            "previous_version": self.previous_version,
            "promoted_at": self.promoted_at,
            "promoted_by": self.promoted_by,
            "forced": self.forced,
            "overridden": list(self.overridden),
            "reason": self.reason,
        }


class PromotionGate(Protocol):
    """A condition a version must meet before an alias may point at it.

    :meth:`ModelRepository.promote` asks every gate; a refusal stops the
    promotion unless it is forced, and a forced promotion records the refusals
    it overrode. New conditions are new gates (:class:`BlessedGate` is one).
    """

    name: str

    def check(self, repo: ModelRepository, model: ResolvedModel, alias: str) -> str | None:
        """None if ``model`` may become ``alias``; otherwise why not, in one sentence."""
        ...


class SignedGate:
    """Only a signed version may be promoted: scoring refuses unsigned models anyway."""

    name = "signed"

    def check(self, repo: ModelRepository, model: ResolvedModel, alias: str) -> str | None:
        if model.signature_file.is_file():
            return None
        return (
            f"{model.label} is not signed (no {model.signature_file}); sign it first with "
            f"`{SIGN_COMMAND} {model.label} --key=PRIVATE_KEY.pem`"
        )


BLESSINGS = "blessings"
COMPARE_COMMAND = "python -m jobs.compare"


class BlessedGate:
    """A version may become a gated alias (``production``) only with a blessing against the
    version the alias points at now.

    A blessing is what a passing ``jobs.compare`` writes into the candidate's
    ``metadata.json`` (:meth:`ModelRepository.add_blessing`): baseline and candidate
    content hashes, metrics, thresholds. It counts only if its baseline is the
    current version of the alias, so a comparison against a version that has
    since been replaced must be run again. An alias that points at nothing yet
    has nothing to compare against, and a version with the same bytes as the
    current one scores identically; both pass.
    """

    name = "blessed"

    def __init__(self, aliases: Sequence[str] = ("production",)) -> None:
        self.aliases = tuple(aliases)

    def check(self, repo: ModelRepository, model: ResolvedModel, alias: str) -> str | None:
        if alias not in self.aliases:
            return None
        current_version = repo.aliases(model.name).get(alias)
        if current_version is None or str(current_version) == model.version:
            return None
        current = repo.resolve(f"{model.name}@{current_version}")
        if current.content_hash == model.content_hash:
            return None
        blessings = model.metadata.get(BLESSINGS) or []
        for blessing in blessings:
            if (
                blessing.get("baseline", {}).get("content_hash") == current.content_hash
                and blessing.get("candidate", {}).get("content_hash") == model.content_hash
            ):
                return None
        against = sorted(
            {
                f"{b.get('baseline', {}).get('name')}@{b.get('baseline', {}).get('version')}"
                for b in blessings
            }
        )
        found = (
            f"it is blessed only against {', '.join(against)}" if against else "it has no blessing"
        )
        return (
            f"'{alias}' is {current.label} and {model.label} has no blessing against it ({found}); "
            f"compare them first: `{COMPARE_COMMAND} --input=DATA --baseline={model.name}@{alias} "
            f"--candidate={model.label} --model_repo={repo.root}`, which blesses on a pass"
        )


DEFAULT_PROMOTION_GATES: tuple[PromotionGate, ...] = (SignedGate(), BlessedGate())


class PromotionRefused(ModelError):
    """A gate refused a promotion and it was not forced."""


class ModelRepository:
    """Registered models under one root folder."""

    def __init__(self, root: Path | str) -> None:
        # A repository in a bucket is read only through its URI (batch.model.remote).
        self.uri = str(root) if storage.is_uri(str(root)) else None
        self.root = Path(root)

    # -- reading -----------------------------------------------------------------
    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _is_name(p.name))

    def versions(self, name: str) -> list[int]:
        folder = self.root / name
        if not folder.is_dir():
            return []
        return sorted(
            int(p.name)
            for p in folder.iterdir()
            if p.name.isdigit() and (p / METADATA_FILE).is_file()
        )

    def version_dir(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def metadata(self, name: str, version: int) -> dict[str, Any]:
        meta: dict[str, Any] = read_json(self.version_dir(name, version) / METADATA_FILE)
        return meta

    def aliases_file(self, name: str) -> Path:
        return self.root / name / ALIASES_FILE

    def alias_state(self, name: str) -> dict[str, Any]:
        """``{"aliases": {alias: promotion record}, "history": [promotion records]}``."""
        path = self.aliases_file(name)
        if not path.is_file():
            return {"aliases": {}, "history": []}
        try:
            state: dict[str, Any] = read_json(path)
            state.setdefault("aliases", {})
            state.setdefault("history", [])
        except (ValueError, OSError) as exc:
            raise ModelError(
                f"{path}: cannot read the aliases of '{name}' ({exc}); expected the JSON that "
                "`python -m jobs.models promote` writes"
            ) from exc
        return state

    def aliases(self, name: str) -> dict[str, int]:
        """Alias -> version for ``name``."""
        return {
            alias: int(record["version"])
            for alias, record in sorted(self.alias_state(name)["aliases"].items())
        }

    def resolve(self, spec: str) -> ResolvedModel:
        """Resolve ``NAME``, ``NAME@VERSION``, ``NAME@latest`` or ``NAME@ALIAS``."""
        name, _, selector = spec.partition("@")
        if not _is_name(name):
            raise ModelError(
                f"model '{spec}': expected NAME, NAME@VERSION or the path of a SavedModel "
                "directory; found neither a registered name nor an existing directory"
            )
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelError(
                f"model '{spec}': no registered model named '{name}' in repository "
                f"{self.root} (registered: {known}). Train one with `python -m jobs.train`, "
                "pass --model_repo=DIR, or give the path of a SavedModel directory"
            )
        alias = None
        if selector in ("", LATEST):
            version = versions[-1]
        elif selector.isdigit() and int(selector) in versions:
            version = int(selector)
        elif selector in (aliases := self.aliases(name)):
            alias, version = selector, aliases[selector]
            if version not in versions:
                raise ModelError(
                    f"model '{spec}': alias '{alias}' points to version {version}, which is "
                    f"not registered in {self.root / name} (versions: "
                    f"{', '.join(map(str, versions))}). Promote a registered version: "
                    f"`python -m jobs.models promote {name}@VERSION --to {alias}`"
                )
        else:
            known = ", ".join(aliases) or "none"
            raise ModelError(
                f"model '{spec}': '{name}' has no version or alias '{selector}' in {self.root} "
                f"(versions: {', '.join(map(str, versions))}; aliases: {known}; or use @latest)"
            )
        meta = self.metadata(name, version)
        saved_model_dir = self.version_dir(name, version) / SAVED_MODEL_DIR
        return ResolvedModel(
            name=name,
            version=str(version),
            saved_model_dir=saved_model_dir,
            content_hash=str(meta["content_hash"]),
            registered=True,
            metadata=_with_embedded_contract(
                _signed_view(meta, saved_model_dir, f"{name}@{version}"), saved_model_dir
            ),
            alias=alias,
        )

    # -- writing -----------------------------------------------------------------
    def register(
        self,
        name: str,
        saved_model_dir: Path,
        metadata: dict[str, Any],
        transform_output_dir: Path | None = None,
        signing_key: Path | None = None,
        contract_dir: Path | None = None,
    ) -> ResolvedModel:
        """Copy a SavedModel (and its transform output) in as the next version of ``name``,
        signed with ``signing_key`` (a PEM EC private key) before it becomes visible.
        ``contract_dir``'s files are copied into the SavedModel first (:func:`embed_contract`),
        so the signature covers them."""
        if not _is_name(name):
            raise ModelError(
                f"model name '{name}': expected letters, digits, '_', '-' or '.', "
                "not starting with '.'"
            )
        if not is_saved_model_dir(saved_model_dir):
            raise ModelError(f"{saved_model_dir}: expected a SavedModel directory (saved_model.pb)")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        staging = folder / f".staging-{uuid.uuid4().hex}"
        try:
            shutil.copytree(saved_model_dir, staging / SAVED_MODEL_DIR)
            if contract_dir is not None:
                embed_contract(staging / SAVED_MODEL_DIR, contract_dir)
            embed_scoring_metadata(staging / SAVED_MODEL_DIR, metadata)
            if transform_output_dir is not None:
                shutil.copytree(transform_output_dir, staging / TRANSFORM_OUTPUT_DIR)
            content_hash = directory_sha256(staging / SAVED_MODEL_DIR)
            if signing_key is not None:
                sign_model(staging / SAVED_MODEL_DIR, signing_key)
            for _attempt in range(100):
                version = (self.versions(name) or [0])[-1] + 1
                meta = {
                    **metadata,
                    "name": name,
                    "version": version,
                    "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "content_hash": content_hash,
                }
                write_json_atomic(staging / METADATA_FILE, meta)
                try:
                    # rename(2) of a directory onto a missing name is atomic; if a
                    # concurrent registration took this version, try the next one.
                    os.rename(staging, self.version_dir(name, version))
                except OSError:
                    if self.version_dir(name, version).exists():
                        continue
                    raise
                return self.resolve(f"{name}@{version}")
            raise ModelError(f"could not allocate a version for '{name}' in {folder}")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def amend(
        self,
        model: ResolvedModel,
        files: dict[str, bytes],
        metadata: dict[str, Any],
        signing_key: Path,
        note: str,
    ) -> ResolvedModel:
        """Add or replace ``files`` (paths relative to ``saved_model/``) in a registered
        version and sign it again with ``signing_key``; merge ``metadata`` into its
        ``metadata.json`` with the new content hash and an entry in ``amendments``.

        The new SavedModel is assembled and signed in a staging folder beside the version,
        then swapped in under the version's lock (two renames: a reader in between sees
        no ``saved_model/`` and fails; it never loads a half-written one). Blessings of the
        old bytes no longer match the new content hash, as they should not.
        """
        if not model.registered:
            raise ModelError(
                f"model {model.label} ({model.saved_model_dir}) is not a registered version; "
                "register it first with `python -m jobs.models register`"
            )
        version_dir = model.saved_model_dir.parent
        staging = version_dir.parent / f".amend-{model.version}-{uuid.uuid4().hex}"
        try:
            staged = staging / SAVED_MODEL_DIR
            shutil.copytree(model.saved_model_dir, staged)
            for relative, payload in files.items():
                target = staged / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(payload)
            content_hash = directory_sha256(staged)
            sign_model(staged, signing_key)
            with locked(version_dir.parent / ".metadata.lock"):
                meta: dict[str, Any] = read_json(version_dir / METADATA_FILE)
                amendment = {
                    "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "by": who(),
                    "note": note,
                    "files": sorted(files),
                    "previous_content_hash": meta["content_hash"],
                }
                meta.update(metadata)
                meta["content_hash"] = content_hash
                meta["amendments"] = [*(meta.get("amendments") or []), amendment]
                old = staging / "old"
                os.rename(model.saved_model_dir, old)
                os.rename(staged, model.saved_model_dir)
                os.replace(signature_path(staged), model.signature_file)
                write_json_atomic(version_dir / METADATA_FILE, meta)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return resolve_model(str(version_dir), self)

    def promote(
        self,
        spec: str,
        alias: str,
        *,
        force: bool = False,
        actor: str | None = None,
        reason: str | None = None,
        gates: Sequence[PromotionGate] = DEFAULT_PROMOTION_GATES,
    ) -> Promotion:
        """Point ``alias`` of a model at the version ``spec`` (NAME@VERSION) names.

        Every gate is asked first; a refusal raises :class:`PromotionRefused`
        unless ``force``, and a forced promotion records what it overrode.
        ``aliases.json`` is read, changed and replaced atomically under a lock,
        so concurrent promotions never lose one another's changes and a reader
        sees the old or the new file, never a mix.
        """
        if not _ALIAS.match(alias) or alias == LATEST:
            raise UsageError(
                f"alias '{alias}': expected lower-case letters, digits, '_' or '-', starting "
                f"with a letter (e.g. production, canary), and not '{LATEST}'"
            )
        model = self.resolve(spec)
        if model.alias is not None:
            raise UsageError(
                f"promote {spec}: name the version to promote (NAME@VERSION), not an alias; "
                f"{spec} is {model.label} now"
            )
        refusals = [r for gate in gates if (r := gate.check(self, model, alias)) is not None]
        if refusals and not force:
            raise PromotionRefused(
                f"cannot promote {model.label} to '{alias}': {'; '.join(refusals)}. Fix that, "
                "or pass --force to promote anyway (recorded as forced)"
            )
        with self._aliases_lock(model.name):
            state = self.alias_state(model.name)
            previous = state["aliases"].get(alias)
            promotion = Promotion(
                name=model.name,
                alias=alias,
                version=int(model.version),
                previous_version=int(previous["version"]) if previous else None,
                promoted_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                promoted_by=actor or who(),
                forced=force,
                overridden=tuple(refusals),
                reason=reason,
            )
            state["aliases"][alias] = promotion.to_json()
            state["history"].append(promotion.to_json())
            write_json_atomic(self.aliases_file(model.name), state)
        return promotion

    def add_blessing(self, model: ResolvedModel, blessing: dict[str, Any]) -> Path:
        """Append ``blessing`` to the registered version's ``metadata.json``, atomically and
        under a lock. ``metadata.json`` sits beside the signed ``saved_model/``, so the
        model's signature is unaffected. Returns the metadata file."""
        if not model.registered:
            raise ModelError(
                f"model {model.label} ({model.saved_model_dir}) is not a registered version; "
                "only registered versions carry blessings. Register it with "
                "`python -m jobs.models register` and compare again"
            )
        path = model.saved_model_dir.parent / METADATA_FILE
        with locked(model.saved_model_dir.parent.parent / ".metadata.lock"):
            meta: dict[str, Any] = read_json(path)
            meta[BLESSINGS] = [*(meta.get(BLESSINGS) or []), blessing]
            write_json_atomic(path, meta)
        return path

    def _aliases_lock(self, name: str) -> AbstractContextManager[None]:
        return locked(self.root / name / ".aliases.lock")


def who() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def _is_name(text: str) -> bool:
    return bool(text) and not text.startswith(".") and all(c.isalnum() or c in "_-." for c in text)


def resolve_model(spec: str, repository: ModelRepository) -> ResolvedModel:
    """Resolve ``--model``: a SavedModel path, a registered version folder, or
    NAME[@VERSION|@latest|@ALIAS] in ``repository``. A ``gs://`` or ``s3://`` URI of either
    folder is downloaded first (batch.model.remote, cached by content hash)."""
    if storage.is_uri(spec):
        from batch.model.remote import fetch_model

        return dataclasses.replace(resolve_model(str(fetch_model(spec)), repository), source=spec)
    if repository.uri is not None and os.sep not in spec:
        from batch.model.remote import version_in_bucket

        return resolve_model(version_in_bucket(spec, repository.uri), repository)
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / METADATA_FILE).is_file() and is_saved_model_dir(path / SAVED_MODEL_DIR):
            meta = read_json(path / METADATA_FILE)
            return ResolvedModel(
                name=str(meta["name"]),
                version=str(meta["version"]),
                saved_model_dir=path / SAVED_MODEL_DIR,
                content_hash=str(meta["content_hash"]),
                registered=True,
                metadata=_with_embedded_contract(
                    _signed_view(meta, path / SAVED_MODEL_DIR, f"{meta['name']}@{meta['version']}"),
                    path / SAVED_MODEL_DIR,
                ),
            )
        if is_saved_model_dir(path):
            content_hash = directory_sha256(path)
            return ResolvedModel(
                name=path.resolve().name,
                version=f"sha256-{content_hash[:12]}",
                saved_model_dir=path,
                content_hash=content_hash,
                registered=False,
            )
        raise ModelError(
            f"model '{spec}': the directory exists but holds no saved_model.pb; expected a "
            "SavedModel directory (tf.saved_model.save output) or a registered version folder"
        )
    if not is_registered_name(spec):
        raise ModelError(f"model '{spec}': no such directory")
    return repository.resolve(spec)


def is_registered_name(spec: str) -> bool:
    """Whether ``--model`` names a version in a repository (NAME, NAME@VERSION, NAME@ALIAS)
    rather than a folder or a URI: only then is ``--model_repo`` read."""
    return (
        not storage.is_uri(spec)
        and os.sep not in spec
        and not spec.startswith(".")
        and not Path(spec).expanduser().is_dir()
    )
