"""The driver with 10,000 small files (issue 21 point 7): footers read and parts hashed on
a thread pool must plan and commit exactly what a serial pass would, in the same order.

Files are written as copies of a few pre-encoded Parquet payloads (rows 1 to 7, so each
file's rows and each part's hash tell which one it is), which keeps the test to seconds.
"""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from batch.core.fsutil import file_sha256
from batch.engine.inputs import inspect_inputs, plan_splits, scan_inputs
from batch.output.commit import PREDICTIONS, RunLayout, commit_run, new_run_id, verify_run

FILES = 10_000
DAYS = 10
SHAPES = 7  # distinct payloads: file i holds i % SHAPES + 1 rows


def _payload(rows: int, **columns: pa.DataType) -> bytes:
    table = pa.table({name: pa.array(range(rows)).cast(kind) for name, kind in columns.items()})
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def _manifest(keys: list[str]) -> dict[str, object]:
    return {
        "batchscore_version": "test",
        "model": {"name": "m", "version": "1"},
        "input": {},
        "key_columns": keys,
        "runner": {"name": "test"},
        "batch_size": 1,
        "started": "2026-12-02T00:00:00+00:00",
    }


def test_10000_small_files_plan_and_commit_as_a_serial_pass_would(tmp_path: Path) -> None:
    inputs = [_payload(n + 1, id=pa.int64(), x=pa.float64()) for n in range(SHAPES)]
    data = tmp_path / "data"
    paths = []
    for index in range(FILES):
        day = data / f"dt=2026-01-{index % DAYS + 1:02d}"
        day.mkdir(parents=True, exist_ok=True)
        path = day / f"part-{index:05d}.parquet"
        path.write_bytes(inputs[index % SHAPES])
        paths.append(path)
    # Two bad files among them: not Parquet, and another dataset's columns.
    paths[4321].write_bytes(b"not parquet")
    paths[8765].write_bytes(_payload(3, other=pa.string()))

    listing = scan_inputs(str(data))
    assert listing.files == sorted(paths)
    files, bad = inspect_inputs(listing.all)
    assert [b.path for b in bad] == [str(paths[4321]), str(paths[8765])]
    assert "cannot be read as one" in bad[0].reason
    assert "column 'other' is extra" in bad[1].reason
    good = [p for p in sorted(paths) if p not in (paths[4321], paths[8765])]
    assert [f.path for f in files] == [str(p) for p in good]
    assert [f.num_rows for f in files] == [int(p.stem[5:]) % SHAPES + 1 for p in good]

    splits = plan_splits(files)
    assert [s.index for s in splits] == list(range(FILES - 2))
    assert [(s.path, s.num_rows) for s in splits] == [(f.path, f.num_rows) for f in files]

    # Stage one prediction part per split, as the workers would, then commit.
    parts = [_payload(n + 1, id=pa.int64()) for n in range(SHAPES)]
    layout = RunLayout(tmp_path / "out", "m", "1", new_run_id())
    (layout.staging_dir / PREDICTIONS).mkdir(parents=True)
    for split in splits:
        layout.staged_part(PREDICTIONS, split.index).write_bytes(parts[split.num_rows - 1])
    rows_in = sum(f.num_rows for f in files)
    committed = commit_run(layout, _manifest(["id"]), rows_in, max_error_rate=0.0)

    listed = committed.manifest().outputs[PREDICTIONS]
    assert [p.path for p in listed] == [f"{PREDICTIONS}/part-{s.index:05d}.parquet" for s in splits]
    assert [p.rows for p in listed] == [s.num_rows for s in splits]
    digests = [file_sha256(Path(committed.run_dir) / p.path) for p in listed[:: SHAPES * 11]]
    assert [p.sha256 for p in listed[:: SHAPES * 11]] == digests
    assert committed.manifest().counts.rows_scored == rows_in

    # jobs.verify's concurrent pass: one changed part is named, and nothing else.
    changed = listed[5000]
    (Path(committed.run_dir) / changed.path).write_bytes(parts[changed.rows % SHAPES])
    problems = verify_run(committed.run_dir)
    assert problems and all(p.startswith(f"{changed.path}: ") for p in problems), problems
