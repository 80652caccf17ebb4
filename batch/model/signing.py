"""Signing SavedModels and verifying them before they are loaded.

A TensorFlow SavedModel is a program: loading one runs its graph, which can
read and write files and start processes. So batchscore loads only a model
whose files are exactly the files someone holding a trusted private key
signed, or one the user explicitly accepts unsigned (``--allow_unsigned``).

Signatures are made and checked by the OpenSSF ``model-signing`` library
(sigstore's model signing) with an elliptic-curve key pair (PEM; P-256, P-384
or P-521). The library hashes every file of the SavedModel directory; a
changed byte, an added or a removed file, or a signature made with another
key fails verification.

Where the signature lives: beside the signed directory, never inside it, as
``<directory>.sig``. For a registered version that is
``<repo>/<name>/<version>/saved_model.sig``; for a plain SavedModel directory
``/models/churn`` it is ``/models/churn.sig``.

:func:`verify_once` is what the scorer calls before ``tf.saved_model.load`` in
every process that loads a model; it verifies a model once per process and
trust policy. This module imports neither TensorFlow nor any engine; the library's
check runs in a child Python (its import takes about a second, which a job's
imports of TensorFlow and Beam, running meanwhile, would otherwise wait for).
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch.core import storage
from batch.core.errors import ModelError, UsageError
from batch.core.fsutil import file_sha256, iter_files
from batch.model.resolved import ResolvedModel, signature_path

log = logging.getLogger(__name__)

SIGN_COMMAND = "python -m jobs.models sign"
SUPPORTED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


# -- errors ---------------------------------------------------------------------------


class ModelVerificationError(ModelError):
    """A model was refused before loading: unsigned, tampered with, or signed by another key."""


class UnsignedModelError(ModelVerificationError):
    """The model has no signature file and ``--allow_unsigned`` was not given."""


class NoPublicKeyError(ModelVerificationError):
    """The model is signed but no public key was configured to check it with."""


class WrongKeyError(ModelVerificationError):
    """The signature was made with a key other than the configured public key's pair."""


class SignatureMismatchError(ModelVerificationError):
    """The SavedModel's files differ from the files that were signed."""


class BadSignatureError(ModelVerificationError):
    """The signature file is unreadable or its signature is not valid."""


class SigningKeyError(UsageError):
    """A key file is missing, unreadable or of an unsupported kind."""


# -- keys -----------------------------------------------------------------------------


def key_fingerprint(public_key_pem: bytes) -> str:
    """SHA-256 (hex) of the PEM SubjectPublicKeyInfo: the same hint model-signing writes
    into every signature, so a signature names the key that made it."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_public_key(public_key_pem)
    canonical = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(canonical).hexdigest()


def short(fingerprint: str | None) -> str:
    """The first 16 hex digits of a key fingerprint, as messages and listings show it."""
    return fingerprint[:16] if fingerprint else "unknown"


def load_public_key(path: Path | str) -> bytes:
    """The PEM bytes of an EC public key file (or object: gs://, s3://), checked; a private
    key file is refused."""
    if storage.is_uri(path):
        pem = storage.read_bytes(str(path))
        _check_public_pem(pem, str(path))
        return pem
    path = Path(path).expanduser()
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(
            f"public key {path}: cannot read it ({exc.strerror or exc}); expected a PEM "
            "EC public key file (openssl ec -in signing_key.pem -pubout -out public_key.pem)"
        ) from exc
    _check_public_pem(pem, str(path))
    return pem


def _check_public_pem(pem: bytes, source: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if b"PRIVATE KEY" in pem:
        raise SigningKeyError(
            f"public key {source}: found a PRIVATE key; expected the PUBLIC key of the pair "
            "(openssl ec -in PRIVATE.pem -pubout -out public_key.pem). Keep private keys "
            "away from scoring jobs"
        )
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SigningKeyError(
            f"public key {source}: not a PEM public key ({exc}); expected a file starting "
            "with -----BEGIN PUBLIC KEY-----"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in SUPPORTED_CURVES:
        found = key.curve.name if isinstance(key, ec.EllipticCurvePublicKey) else type(key).__name__
        raise SigningKeyError(
            f"public key {source}: expected an elliptic-curve key on one of "
            f"{', '.join(SUPPORTED_CURVES)}; found {found}"
        )


def _load_private_key(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError(
            f"signing key {path}: cannot read it ({exc.strerror or exc}); expected a PEM EC "
            "private key (openssl ecparam -name prime256v1 -genkey -noout -out signing_key.pem)"
        ) from exc
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError(
            f"signing key {path}: not an unencrypted PEM private key ({exc}); expected a file "
            "starting with -----BEGIN EC PRIVATE KEY----- or -----BEGIN PRIVATE KEY-----"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SUPPORTED_CURVES:
        found = (
            key.curve.name if isinstance(key, ec.EllipticCurvePrivateKey) else type(key).__name__
        )
        raise SigningKeyError(
            f"signing key {path}: expected an elliptic-curve key on one of "
            f"{', '.join(SUPPORTED_CURVES)}; found {found}"
        )
    return key


def public_key_of(private_key_path: Path | str) -> bytes:
    """The PEM public key that belongs to a private key file."""
    from cryptography.hazmat.primitives import serialization

    key = _load_private_key(Path(private_key_path).expanduser())
    pem: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem


def generate_key_pair(private_key_path: Path, public_key_path: Path) -> None:
    """Write a new EC P-256 key pair (the private key readable by its owner only).

    Files are written under temporary names and renamed into place, the public
    key last, so a reader never finds half a key or a public key without its pair.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for path, data, mode in (
        (private_key_path, private_pem, 0o600),
        (public_key_path, public_pem, 0o644),
    ):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)


# -- the trust policy -----------------------------------------------------------------


@dataclass(frozen=True)
class TrustPolicy:
    """What a process accepts as a loadable model. Small and picklable: it travels to
    every worker inside the scoring job, key bytes included (a key *path* on the
    driver need not exist on a Dataflow or Spark worker).

    public_key:      PEM bytes of the EC public key signatures are checked with
                     (a path is read when the policy is made); None: no key.
    allow_unsigned:  load a model that has no signature file (logged as a WARNING,
                     recorded in the manifest). A signature that exists but fails
                     is refused all the same.
    key_source:      where the key came from, for messages (e.g. the file path).
    """

    public_key: bytes | None = None
    allow_unsigned: bool = False
    key_source: str = ""

    def __post_init__(self) -> None:
        key: Any = self.public_key
        if isinstance(key, str | os.PathLike):
            object.__setattr__(self, "key_source", self.key_source or str(key))
            object.__setattr__(self, "public_key", load_public_key(Path(key)))
        elif key is not None:
            _check_public_pem(key, self.key_source or "(given as bytes)")

    @classmethod
    def from_key_file(cls, path: Path | str | None, allow_unsigned: bool = False) -> TrustPolicy:
        if path is None:
            return cls(None, allow_unsigned)
        return cls(load_public_key(path), allow_unsigned, str(path))

    @property
    def fingerprint(self) -> str | None:
        return key_fingerprint(self.public_key) if self.public_key is not None else None


# Signed models only, and no key to check them with: nothing loads until a policy is given.
STRICT = TrustPolicy()


@dataclass(frozen=True)
class VerificationResult:
    """What was checked before a model was loaded; recorded in the run manifest."""

    model: str
    verified: bool
    signature_file: str | None
    key_fingerprint: str | None
    allow_unsigned: bool
    seconds: float = 0.0

    def to_manifest(self) -> dict[str, Any]:
        return {
            "verified": self.verified,
            "signature_file": self.signature_file,
            "key_fingerprint": self.key_fingerprint,
            "allow_unsigned": self.allow_unsigned,
        }


# -- where signatures live ------------------------------------------------------------


def signature_key_hint(sig_file: Path) -> str | None:
    """The fingerprint of the key that made a signature, as the signature states it."""
    try:
        bundle = json.loads(sig_file.read_text())
        hint = bundle["verificationMaterial"]["publicKey"]["hint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(hint) if hint else None


def describe_signature(saved_model_dir: Path) -> dict[str, Any]:
    """Signature facts for listings (not a verification): file, present, signing key."""
    sig = signature_path(saved_model_dir)
    signed = sig.is_file()
    return {
        "signed": signed,
        "signature_file": str(sig),
        "key_fingerprint": signature_key_hint(sig) if signed else None,
    }


# -- signing --------------------------------------------------------------------------


def sign_model(saved_model_dir: Path | str, private_key_path: Path | str) -> Path:
    """Sign every file of ``saved_model_dir`` with an EC private key; return the signature
    file (``<dir>.sig``), which is written whole or not at all and replaces any older one."""
    model_dir = Path(saved_model_dir).expanduser()
    if not model_dir.is_dir():
        raise ModelError(f"{model_dir}: expected a SavedModel directory to sign; found none")
    key_path = Path(private_key_path).expanduser()
    _load_private_key(key_path)
    links = sorted(
        path
        for path in model_dir.rglob("*")
        if path.is_symlink() or not (path.is_file() or path.is_dir())
    )
    if links:
        link = links[0]
        target = f" -> {os.readlink(link)}" if link.is_symlink() else ""
        raise ModelError(
            f"{model_dir}: cannot sign it: {link.relative_to(model_dir)}{target} is "
            f"{'a symlink' if target else 'not a regular file'} ({len(links)} such path(s)); "
            "a signed model holds regular files only, so that the signed bytes are the "
            "loaded bytes. Replace links by copies (cp -rL) and sign again"
        )
    sig = signature_path(model_dir)
    tmp = sig.with_name(f".{sig.name}.{uuid.uuid4().hex}.tmp")
    from model_signing import signing

    try:
        signing.Config().use_elliptic_key_signer(private_key=key_path).sign(model_dir, tmp)
        os.replace(tmp, sig)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{model_dir}: cannot sign it ({exc})") from exc
    finally:
        tmp.unlink(missing_ok=True)
    log.info("signed %s with %s -> %s", model_dir, key_path, sig)
    return sig


# -- verifying ------------------------------------------------------------------------


def verify_model(
    model: ResolvedModel, policy: TrustPolicy, shown_as: Path | None = None
) -> VerificationResult:
    """Check ``model`` against ``policy``; raise a :class:`ModelVerificationError` naming
    the model, what was expected, what was found and what to do, or return what was checked.

    ``shown_as``: the folder messages name when ``model`` is a private copy of it
    (batch.model.snapshot)."""
    started = time.perf_counter()
    model_dir = model.saved_model_dir
    sig = signature_path(model_dir)
    where = f"model {model.label} ({shown_as or model_dir})"
    if model.source is not None:  # downloaded from a bucket: name where it really is
        where = f"model {model.label} ({model.source}, downloaded to {shown_as or model_dir})"
    sig_shown = signature_path(shown_as) if shown_as else sig
    sign_hint = _sign_hint(model)
    if not sig.is_file():
        if policy.allow_unsigned:
            _warn_unverified(where, f"it has no signature file ({sig_shown})")
            return VerificationResult(model.label, False, None, None, True)
        raise UnsignedModelError(
            f"{where} is not signed: expected a signature file {sig_shown}, found none. Sign it "
            f"with {sign_hint}, or pass --allow_unsigned to load it unverified (logged and "
            "recorded in the manifest)"
        )
    signer = signature_key_hint(sig)
    if policy.public_key is None:
        if policy.allow_unsigned:
            _warn_unverified(where, "no public key was given to check its signature with")
            return VerificationResult(model.label, False, str(sig), None, True)
        missing = f" ({policy.key_source})" if policy.key_source else ""
        raise NoPublicKeyError(
            f"{where} is signed (key {short(signer)}, {sig_shown}) but no public key is configured"
            f"{missing}: pass --public_key=PUBLIC_KEY.pem, the pair of the key that signed it"
        )
    expected = key_fingerprint(policy.public_key)
    source = policy.key_source or "the configured public key"
    if signer is not None and signer != expected:
        raise WrongKeyError(
            f"{where}: signed by another key: the signature {sig_shown} names key {short(signer)}, "
            f"the public key {source} is {short(expected)}. Pass the matching "
            f"--public_key=PEM, or re-sign the model with the private key paired with {source} "
            f"({_sign_hint(model, force=True)})"
        )
    _verify_with_library(
        where, model_dir, sig, policy.public_key, source, _sign_hint(model, force=True), sig_shown
    )
    elapsed = time.perf_counter() - started
    log.info("verified %s: signed by key %s (%.2fs)", where, short(expected), elapsed)
    return VerificationResult(
        model.label, True, str(sig), expected, policy.allow_unsigned, round(elapsed, 3)
    )


def _sign_hint(model: ResolvedModel, force: bool = False) -> str:
    target = model.label if model.registered else str(model.saved_model_dir)
    return f"`{SIGN_COMMAND} {target} --key=PRIVATE_KEY.pem{' --force' if force else ''}`"


def _warn_unverified(where: str, why: str) -> None:
    log.warning(
        "!!! UNVERIFIED MODEL !!! %s is loaded WITHOUT signature verification because "
        "--allow_unsigned was given: %s. A SavedModel is a program; load only models you "
        "trust. This is recorded in the run manifest",
        where,
        why,
    )


# The library's check, run by a child Python: importing ``model_signing`` takes about a
# second of CPU with the GIL held (its ``verifying`` module imports every signer it
# supports), which in this process would hold up TensorFlow's and Beam's imports, which
# run meanwhile in threads. One child per process serves every check (a job checks the
# model in its driver, then each private copy its worker loads), so the library is
# imported once, on a core of its own; this process only waits. A request is one JSON
# line (folder, signature, key file), the answer one JSON line: the outcome, or the
# library's exception and message. The child ends when this process closes its stdin.
_CHECKER = """
import json, os, sys
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # whatever the library prints stays out of the answers
try:
    from model_signing import verifying
except ImportError as exc:
    print(json.dumps({"unavailable": str(exc)}), file=answers, flush=True)
    sys.exit(0)
for line in sys.stdin:
    ask = json.loads(line)
    try:
        verifying.Config().use_elliptic_key_verifier(public_key=ask["key"]).verify(
            ask["model"], ask["sig"]
        )
        answer = {"ok": True}
    except Exception as exc:
        answer = {"ok": False, "type": type(exc).__name__, "message": str(exc)}
    print(json.dumps(answer), file=answers, flush=True)
"""


class _LibraryFailure(Exception):
    """The library's refusal as the child reported it: its exception's type and message."""

    def __init__(self, type_name: str, message: str) -> None:
        super().__init__(message)
        self.type_name = type_name


class _Checker:
    """This process's checking child, started on first use (and again after a fork)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._child: subprocess.Popen[str] | None = None
        self._pid = 0
        self._unavailable = False

    def check(self, model_dir: Path, sig: Path, key_file: Path) -> tuple[bool, Exception | None]:
        """(True, None) if the files verify, (True, the failure) if not, (False, None)
        where no child could give a verdict (then the caller checks them itself)."""
        # Absolute: the child keeps the folder it started in, this process may have moved.
        ask = json.dumps(
            {
                k: os.path.abspath(p)
                for k, p in (("model", model_dir), ("sig", sig), ("key", key_file))
            }
        )
        with self._lock:
            if self._unavailable:
                return False, None
            try:
                child = self._running()
                assert child.stdin is not None and child.stdout is not None
                child.stdin.write(ask + "\n")
                child.stdin.flush()
                verdict = json.loads(child.stdout.readline() or "{}")
            except (OSError, ValueError) as exc:
                log.debug("signature check in a child process failed (%s); checking here", exc)
                self.close()
                return False, None
        if verdict.get("ok") is True:
            return True, None
        if verdict.get("ok") is False:
            failure = _LibraryFailure(str(verdict.get("type")), str(verdict.get("message", "")))
            return True, failure
        log.debug("no signature check in a child process (%s); checking here", verdict)
        with self._lock:
            self._unavailable = "unavailable" in verdict
            self.close()
        return False, None

    def _running(self) -> subprocess.Popen[str]:
        if self._child is None or self._pid != os.getpid() or self._child.poll() is not None:
            self._child = subprocess.Popen(
                [sys.executable, "-I", "-c", _CHECKER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            self._pid = os.getpid()
        return self._child

    def close(self) -> None:
        """End the child (it exits when its stdin closes)."""
        if self._child is not None and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                if self._child.stdin is not None:
                    self._child.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._child.wait(timeout=5)
        self._child = None


_CHECKING_CHILD = _Checker()
atexit.register(_CHECKING_CHILD.close)


def _check_here(model_dir: Path, sig: Path, key_file: Path) -> Exception | None:
    from model_signing import verifying

    try:
        verifying.Config().use_elliptic_key_verifier(public_key=key_file).verify(model_dir, sig)
    except Exception as exc:  # the library raises ValueError, InvalidSignature, JSON errors
        return exc
    return None


def _verify_with_library(
    where: str,
    model_dir: Path,
    sig: Path,
    public_pem: bytes,
    source: str,
    sign_hint: str,
    sig_shown: Path | None = None,
) -> None:
    with tempfile.TemporaryDirectory(prefix="batchscore-pubkey-") as folder:
        key_file = Path(folder) / "public_key.pem"
        key_file.write_bytes(public_pem)
        decided, failure = _CHECKING_CHILD.check(model_dir, sig, key_file)
        if not decided:
            failure = _check_here(model_dir, sig, key_file)
    if failure is None:
        return
    message = str(failure)
    kind = failure.type_name if isinstance(failure, _LibraryFailure) else type(failure).__name__
    shown = sig_shown or sig
    if message.startswith("Signature mismatch"):
        changes = describe_changes(model_dir, sig) or _first_line(message)
        raise SignatureMismatchError(
            f"{where}: its files differ from the files that were signed ({changes}; "
            f"signature {shown}). Restore the signed files; if the change is intended, re-sign "
            f"it with {sign_hint}. --allow_unsigned does not override a failed signature"
        ) from failure
    if message.startswith("Key mismatch"):
        raise WrongKeyError(
            f"{where}: signed by another key: the signature {shown} does not name the public "
            f"key {source}. Pass the matching --public_key=PEM"
        ) from failure
    raise BadSignatureError(
        f"{where}: the signature {shown} does not verify with the public key {source} "
        f"({kind}: {_first_line(message) or 'invalid signature'}). Expected "
        f"a model-signing bundle made by that key's pair; re-sign it with {sign_hint}"
    ) from failure


def _first_line(text: str, limit: int = 300) -> str:
    return text.strip().splitlines()[0][:limit] if text.strip() else ""


def signed_files(sig: Path) -> dict[str, str] | None:
    """File -> sha256 hex as recorded in a signature's payload (unauthenticated: only
    for explaining a verification failure), or None if the payload cannot be read."""
    try:
        bundle = json.loads(sig.read_text())
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        resources = statement["predicate"]["resources"]
        return {str(r["name"]): str(r["digest"]) for r in resources if r["algorithm"] == "sha256"}
    except (OSError, ValueError, KeyError, TypeError, binascii.Error):
        return None


def describe_changes(model_dir: Path, sig: Path, limit: int = 5) -> str:
    """``changed: a; added: b; missing: c`` between a directory and what was signed."""
    recorded = signed_files(sig)
    if recorded is None:
        return ""
    actual = {p.relative_to(model_dir).as_posix(): p for p in iter_files(model_dir)}
    changed = sorted(
        name
        for name in recorded.keys() & actual.keys()
        if file_sha256(actual[name]) != recorded[name]
    )
    added = sorted(name for name in actual.keys() - recorded.keys() if not name.startswith(".git"))
    missing = sorted(recorded.keys() - actual.keys())

    def listing(label: str, names: list[str]) -> str:
        more = f" and {len(names) - limit} more" if len(names) > limit else ""
        return f"{label}: {', '.join(names[:limit])}{more}"

    parts = [
        listing(label, names)
        for label, names in (("changed", changed), ("added", added), ("missing", missing))
        if names
    ]
    return "; ".join(parts)


_VERIFIED_LOCK = threading.Lock()
_VERIFIED: dict[tuple[str, str, TrustPolicy], VerificationResult] = {}


def verify_once(model: ResolvedModel, policy: TrustPolicy) -> VerificationResult:
    """:func:`verify_model`, remembered for this process per model directory and policy
    (a success only: a refused model is checked, and refused, again on every call)."""
    key = (str(Path(os.path.abspath(model.saved_model_dir))), model.content_hash, policy)
    with _VERIFIED_LOCK:
        cached = _VERIFIED.get(key)
        if cached is None:
            cached = verify_model(model, policy)
            _VERIFIED[key] = cached
        return cached
