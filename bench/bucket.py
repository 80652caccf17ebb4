"""The bucket-to-bucket benchmark path: input, model and output in a bucket of a local S3
server (moto's, on 127.0.0.1, started once per benchmark and stopped by its PID at
exit; tests/object_stores.py starts it). The data and the model are uploaded before
the measured command starts; the command is the same ``jobs.score`` as the local path.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
from pathlib import Path

BUCKET = "s3://batchscore-bench"
_SERVER = contextlib.ExitStack()
_UPLOADED: dict[Path, str] = {}


def _server() -> None:
    """Start the S3 server once and point this process (and so every measured command,
    which inherits its environment) at it."""
    if "BATCHSCORE_BENCH_S3" in os.environ:
        return
    from tests.object_stores import make_bucket, moto_server

    folder = Path(tempfile.mkdtemp(prefix="batchscore-bench-s3-"))
    endpoint = _SERVER.enter_context(moto_server(folder))
    atexit.register(_SERVER.close)
    os.environ.update(
        {
            "BATCHSCORE_BENCH_S3": endpoint,
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    make_bucket(BUCKET)


def _upload(local: Path, name: str) -> str:
    from tests.object_stores import upload_tree

    if local not in _UPLOADED:
        uri = f"{BUCKET}/{name}"
        print(f"bench: uploading {local} to {uri} (not measured)", flush=True)
        upload_tree(local, uri)
        _UPLOADED[local] = uri
    return _UPLOADED[local]


def bucket_score(data: Path, version_dir: Path, *options: str) -> list[str]:
    """``jobs.score`` from ``data`` (uploaded) with the registered version ``version_dir``
    (uploaded) into the bucket, on the DirectRunner."""
    _server()
    data_uri = _upload(data, f"data/{data.name}")
    model_uri = _upload(version_dir, f"models/{version_dir.parent.name}/{version_dir.name}")
    return [
        sys.executable,
        "-m",
        "jobs.score",
        f"--input={data_uri}",
        f"--model={model_uri}",
        f"--output={BUCKET}/out",
        "--runner=DirectRunner",
        "--force",
        *options,
    ]
