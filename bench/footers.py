"""The driver's footer reads in a bucket, with a store's round trip added to every request.

Writes --objects small Parquet files into a bucket of each local store (moto's S3
server, fake-gcs-server: tests/object_stores.py, on 127.0.0.1, stopped by their PIDs),
puts a proxy in front of each that waits --delay_ms before forwarding every request (a
cloud store's round trip) and counts them, and times the planning step that reads
every footer (``batch.engine.inputs.inspect_inputs``, on its thread pool) after the
listing. Uploads and listing are not measured.

    python -m bench.footers [--objects=200] [--delay_ms=30] [--repeat=2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batch.engine.inputs import inspect_inputs, scan_inputs
from tests.object_stores import counting_proxy, make_bucket, object_stores, upload_tree


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.footers", description=__doc__)
    parser.add_argument("--objects", type=int, default=200, help="Files (default %(default)s).")
    parser.add_argument(
        "--delay_ms", type=float, default=30.0, help="Added to every request (default 30)."
    )
    parser.add_argument("--repeat", type=int, default=2, help="Timed passes (median).")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="batchscore-bench-footers-"))
    data = folder / "data"
    data.mkdir()
    for i in range(args.objects):
        table = pa.table({"id": [i] * 10, "x": [0.5] * 10})
        pq.write_table(table, data / f"part-{i:05d}.parquet")
    print(
        f"| store, {args.objects} objects, +{args.delay_ms:.0f} ms a request | requests "
        "| requests a file | wall s (median) | CPU s |\n|---|---:|---:|---:|---:|"
    )
    with object_stores(folder / "servers") as stores:
        os.environ.update(stores.env())
        for scheme, variable, endpoint in (
            ("s3", "AWS_ENDPOINT_URL", stores.s3_endpoint),
            ("gs", "STORAGE_EMULATOR_HOST", stores.gcs_endpoint),
        ):
            uri = f"{scheme}://batchscore-bench-footers/data"
            make_bucket(uri)
            upload_tree(data, uri)
            with counting_proxy(endpoint, folder, args.delay_ms / 1000) as proxy:
                os.environ[variable] = proxy.endpoint
                uris = scan_inputs(uri).uris
                walls, cpus, requests = [], [], 0
                for _ in range(args.repeat):
                    proxy.mark()
                    cpu, wall = time.process_time(), time.perf_counter()
                    files, bad = inspect_inputs(uris)
                    walls.append(time.perf_counter() - wall)
                    cpus.append(time.process_time() - cpu)
                    requests = len(proxy.requests())
                    assert len(files) == args.objects and not bad, bad
                os.environ[variable] = endpoint
            print(
                f"| {scheme}:// | {requests} | {requests / args.objects:.2f} "
                f"| {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
