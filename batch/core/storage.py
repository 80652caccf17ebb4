"""One filesystem layer for local paths and object-store URIs (``gs://``, ``s3://``).

Everything batchscore reads or writes in a bucket goes through here: listing, file
information, the driver's footer reads (:func:`read_tail`, one or two requests a file),
row groups (pyarrow reads them through the :class:`pyarrow.fs.FileSystem` this module
returns), part writes, small JSON objects,
and the one operation pyarrow cannot do: a conditional write (:func:`put_if`), which
the run pointer of the object-store commit protocol needs (docs/commit-protocol.md).

Credentials come from the libraries' standard chains (AWS environment, profile or
instance role; Google application default credentials). Endpoints are overridden with
the standard variables: ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` for S3 and
S3-compatible stores, ``STORAGE_EMULATOR_HOST`` for GCS (an emulator such as
fake-gcs-server; access is then anonymous).
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import json
import os
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from batch.core.errors import BatchScoreError

SCHEMES = ("gs", "s3")
S3_ENDPOINT_ENVS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


class StorageError(BatchScoreError):
    """An object store refused or failed a request; the message names the URI."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the object changed since it was read."""


def is_uri(value: object) -> bool:
    """Whether ``value`` names an object in a bucket (``gs://`` or ``s3://``)."""
    return isinstance(value, str) and value.split("://", 1)[0] in SCHEMES and "://" in value


def join(uri: str, *parts: str) -> str:
    """``uri`` with ``parts`` appended, ``/``-separated (URIs never go through ``Path``:
    it would fold ``gs://`` into ``gs:/``)."""
    out = uri.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def parent(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[0]


def name(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def set_endpoints(s3: str | None = None, gcs: str | None = None) -> None:
    """Point ``s3://`` at an S3-compatible store or emulator and ``gs://`` at a GCS
    emulator, as the standard environment variables do (AWS_ENDPOINT_URL_S3,
    STORAGE_EMULATOR_HOST): they are set, so the processes this one starts (local Beam
    workers, Spark executors on this machine) and the cloud clients see the same."""
    if s3:
        os.environ[S3_ENDPOINT_ENVS[0]] = s3
    if gcs:
        os.environ[GCS_EMULATOR_ENV] = gcs


def _s3_endpoint() -> str | None:
    for env in S3_ENDPOINT_ENVS:
        if os.environ.get(env):
            return os.environ[env]
    return None


def _gcs_emulator() -> str | None:
    host = os.environ.get(GCS_EMULATOR_ENV)
    if not host:
        return None
    return host if "://" in host else f"http://{host}"


@functools.lru_cache(maxsize=8)
def _filesystem(scheme: str, endpoint: str | None) -> pafs.FileSystem:
    if scheme == "s3":
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        if endpoint is None:
            return pafs.S3FileSystem(region=region)
        parsed = urlparse(endpoint)
        return pafs.S3FileSystem(
            endpoint_override=parsed.netloc or parsed.path,
            scheme=parsed.scheme or "https",
            region=region or "us-east-1",
            allow_bucket_creation=True,
        )
    if endpoint is None:
        return pafs.GcsFileSystem()
    parsed = urlparse(endpoint)
    return pafs.GcsFileSystem(
        endpoint_override=parsed.netloc, scheme=parsed.scheme or "http", anonymous=True
    )


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem for ``uri`` and the path within it (``bucket/key``); a local
    path gives the local filesystem and its absolute path."""
    if not is_uri(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    scheme, rest = uri.split("://", 1)
    endpoint = _s3_endpoint() if scheme == "s3" else _gcs_emulator()
    return _filesystem(scheme, endpoint), rest.rstrip("/")


def to_uri(uri_like: str, fs_path: str) -> str:
    """The URI of ``fs_path`` (a path a listing of ``uri_like``'s filesystem returned)."""
    return f"{uri_like.split('://', 1)[0]}://{fs_path}" if is_uri(uri_like) else fs_path


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def error(uri: str, action: str, exc: BaseException) -> StorageError:
    """``exc`` (from pyarrow, boto3 or the GCS client) as one line naming ``uri``."""
    text = _one_line(exc)
    lowered = text.lower()
    denied = ("access denied", "accessdenied", "access_denied", "invalid_access_key", "forbidden")
    if any(word in lowered for word in denied) or "403" in lowered:
        hint = "permission denied: check the credentials and that they may access this bucket"
    elif "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        hint = "check the bucket name"
    elif isinstance(exc, FileNotFoundError) or any(
        word in lowered for word in ("not found", "404", "nosuchkey")
    ):
        hint = "check the bucket and object names"
    else:
        hint = (
            "check the bucket name, the credentials and the endpoint "
            f"({', '.join(S3_ENDPOINT_ENVS)} / {GCS_EMULATOR_ENV})"
        )
    return StorageError(f"{uri}: cannot {action} ({text}); {hint}")


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    mtime_ns: int
    is_dir: bool


def info(uri: str) -> ObjectInfo | None:
    """Size and modification time of ``uri``; None when it does not exist."""
    fs, path = filesystem(uri)
    try:
        found = fs.get_file_info(path)
    except OSError as exc:
        raise error(uri, "read its metadata", exc) from exc
    if found.type == pafs.FileType.NotFound:
        return None
    return ObjectInfo(
        uri,
        found.size or 0,
        found.mtime_ns or 0,
        found.type == pafs.FileType.Directory,
    )


def is_folder(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is a local folder, or a bucket prefix holding objects."""
    text = os.fspath(location)
    if not is_uri(text):
        return os.path.isdir(os.path.expanduser(text))
    return bool(list_files(text))


def child(location: str | os.PathLike[str], name_: str) -> str:
    """``location/name_`` as a string, for a local path or a URI alike."""
    text = os.fspath(location)
    return join(text, name_) if is_uri(text) else os.path.join(text, name_)


def version_token(uri: str) -> str:
    """The object's version as the store names it (S3 ETag, GCS generation): what changes
    whenever the object is rewritten, whatever its size and time."""
    scheme, bucket, key = _bucket_key(uri)
    client = _client(scheme)
    try:
        if scheme == "s3":
            return str(client.head_object(Bucket=bucket, Key=key)["ETag"])
        blob = client.bucket(bucket).get_blob(key)
    except Exception as exc:
        raise error(uri, "read its metadata", exc) from exc
    if blob is None:
        raise StorageError(f"{uri}: cannot read its metadata (not found); check the object name")
    return str(blob.generation)


@dataclass(frozen=True)
class ObjectTail:
    """The last bytes of an object (all of it when it is shorter), and the object's size,
    modification time (as :func:`info` reports it) and version (as :func:`version_token`)."""

    data: bytes
    size: int
    mtime_ns: int
    version: str


def read_tail(uri: str, length: int) -> ObjectTail:
    """The last ``length`` bytes of the object ``uri`` and its facts, in as few round trips
    as the store allows: one on S3 (a suffix-range GET answers with the bytes, the total
    size, the ETag and the time), two on GCS (the object's metadata as pyarrow reads it,
    for a modification time equal to :func:`info`'s, then the range, whose response names
    the generation)."""
    scheme, bucket, key = _bucket_key(uri)
    client = _client(scheme)
    if scheme == "s3":
        try:
            try:
                response = client.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{length}")
            except client.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "InvalidRange":
                    raise
                # An empty object has no byte to range over.
                response = {**client.head_object(Bucket=bucket, Key=key), "Body": None}
            data = response["Body"].read() if response["Body"] is not None else b""
        except Exception as exc:
            raise error(uri, "read it", exc) from exc
        total = str(response.get("ContentRange") or "").rpartition("/")[2]
        size = int(total) if total.isdigit() else int(response["ContentLength"])
        return ObjectTail(data, size, _ns(response["LastModified"]), str(response["ETag"]))
    found = info(uri)
    if found is None or found.is_dir:
        raise StorageError(f"{uri}: cannot read it (not found); check the bucket and object names")
    blob = client.bucket(bucket).blob(key)
    try:
        data = blob.download_as_bytes(start=max(0, found.size - length)) if found.size else b""
    except Exception as exc:
        raise error(uri, "read it", exc) from exc
    version = str(blob.generation) if blob.generation is not None else version_token(uri)
    return ObjectTail(data, found.size, found.mtime_ns, version)


def _ns(when: dt.datetime) -> int:
    """A timezone-aware time as nanoseconds since the epoch, exactly (no float)."""
    return calendar.timegm(when.utctimetuple()) * 1_000_000_000 + when.microsecond * 1000


def list_files(uri: str, recursive: bool = True) -> list[ObjectInfo]:
    """Every object (file) under the prefix ``uri``, sorted by URI; an empty list when
    there is none."""
    fs, path = filesystem(uri)
    try:
        found = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    except OSError as exc:
        raise error(uri, "list it", exc) from exc
    return sorted(
        (
            ObjectInfo(to_uri(uri, f.path), f.size or 0, f.mtime_ns or 0, False)
            for f in found
            if f.type == pafs.FileType.File
        ),
        key=lambda o: o.uri,
    )


def list_dirs(uri: str) -> list[str]:
    """The immediate sub-prefixes ("folders") of ``uri`` that hold objects, as URIs
    (from a recursive listing: object stores have no folders of their own)."""
    prefix = uri.rstrip("/") + "/"
    return sorted(
        {
            join(uri, obj.uri[len(prefix) :].split("/", 1)[0])
            for obj in list_files(uri)
            if "/" in obj.uri[len(prefix) :]
        }
    )


def open_input(uri: str) -> pa.NativeFile:
    fs, path = filesystem(uri)
    try:
        return fs.open_input_file(path)
    except OSError as exc:
        raise error(uri, "open it for reading", exc) from exc


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as stream:
            return bytes(stream.read())
    except OSError as exc:
        raise error(uri, "read it", exc) from exc


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` as one object: a reader sees the whole object or none (an upload
    becomes visible only once complete)."""
    fs, path = filesystem(uri)
    try:
        if not is_uri(uri):
            fs.create_dir(os.path.dirname(path), recursive=True)
        with fs.open_output_stream(path) as stream:
            stream.write(data)
    except OSError as exc:
        raise error(uri, "write it", exc) from exc


def read_json(uri: str) -> Any:
    return json.loads(read_bytes(uri))


def write_json(uri: str, payload: Any) -> None:
    write_bytes(uri, (json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n").encode())


def delete(uri: str) -> None:
    """Remove one object; a missing one is not an error."""
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        if "not found" in str(exc).lower() or "nosuchkey" in str(exc).lower():
            return
        raise error(uri, "delete it", exc) from exc


def download_tree(uri: str, target: str) -> list[str]:
    """Copy every object under ``uri`` into the local folder ``target``; the relative
    paths copied, sorted."""
    copied = []
    prefix = uri.rstrip("/") + "/"
    for obj in list_files(uri):
        rel = obj.uri[len(prefix) :]
        local = os.path.join(target, *rel.split("/"))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        fs, path = filesystem(obj.uri)
        try:
            with fs.open_input_stream(path) as stream, open(local, "wb") as out:
                while chunk := stream.read(1 << 20):
                    out.write(chunk)
        except OSError as exc:
            raise error(obj.uri, "download it", exc) from exc
        copied.append(rel)
    return copied


# -- conditional writes (the run pointer) -------------------------------------------
# pyarrow's filesystems cannot write conditionally; S3 (If-None-Match / If-Match on
# PutObject) goes through boto3, GCS (ifGenerationMatch) through google-cloud-storage.

_CLIENTS: dict[tuple[str, str | None], Any] = {}
_CLIENTS_LOCK = threading.Lock()


def _client(scheme: str) -> Any:
    endpoint = _s3_endpoint() if scheme == "s3" else _gcs_emulator()
    with _CLIENTS_LOCK:
        client = _CLIENTS.get((scheme, endpoint))
        if client is None:
            if scheme == "s3":
                import boto3

                client = boto3.client("s3", endpoint_url=endpoint)
            else:
                from google.cloud import storage as gcs  # type: ignore[attr-defined,unused-ignore]

                if endpoint is None:
                    client = gcs.Client()
                else:
                    from google.auth.credentials import AnonymousCredentials

                    client = gcs.Client(
                        project=os.environ.get("GOOGLE_CLOUD_PROJECT", "batchscore"),
                        credentials=AnonymousCredentials(),
                        client_options={"api_endpoint": endpoint},
                    )
            _CLIENTS[(scheme, endpoint)] = client
        return client


def _bucket_key(uri: str) -> tuple[str, str, str]:
    scheme, rest = uri.split("://", 1)
    bucket, _, key = rest.partition("/")
    return scheme, bucket, key


def read_versioned(uri: str) -> tuple[bytes, str] | None:
    """The object's bytes and its version token (S3 ETag, GCS generation); None when it
    does not exist. The token is what :func:`put_if` expects."""
    scheme, bucket, key = _bucket_key(uri)
    client = _client(scheme)
    try:
        if scheme == "s3":
            try:
                response = client.get_object(Bucket=bucket, Key=key)
            except client.exceptions.NoSuchKey:
                return None
            return response["Body"].read(), str(response["ETag"])
        blob = client.bucket(bucket).get_blob(key)
        if blob is None:
            return None
        return blob.download_as_bytes(if_generation_match=blob.generation), str(blob.generation)
    except Exception as exc:
        if _is_precondition(exc):  # replaced between metadata and bytes: read again
            return read_versioned(uri)
        raise error(uri, "read it", exc) from exc


def put_if(uri: str, data: bytes, token: str | None) -> None:
    """Write ``data`` only if the object is still at version ``token`` (None: only if it
    does not exist); raises :class:`PreconditionFailed` when another writer got there
    first."""
    scheme, bucket, key = _bucket_key(uri)
    client = _client(scheme)
    try:
        if scheme == "s3":
            condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
            client.put_object(Bucket=bucket, Key=key, Body=data, **condition)
        else:
            client.bucket(bucket).blob(key).upload_from_string(
                data, if_generation_match=0 if token is None else int(token)
            )
    except Exception as exc:
        if _is_precondition(exc):
            raise PreconditionFailed(f"{uri}: changed by another writer") from exc
        raise error(uri, "write it", exc) from exc


def _is_precondition(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (
            409,
            412,
        )
    return getattr(exc, "code", None) == 412
