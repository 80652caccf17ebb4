"""A property-based fuzz suite over the input layer (issue 22, point 11).

Hypothesis draws whole input folders for the plain model (tests/plain_model.py: x
float32, n int64, s string; key id): column types (narrower and wider ints and floats,
large and dictionary-encoded strings, binary with bytes that are not UTF-8), nulls,
values the model refuses (poison rows), row-group sizes, empty files, extra columns, a
file reachable twice through a symlink, a symlink loop. Each draw is scored through the
real pipeline (jobs.score on Beam's DirectRunner, in this process) and must keep the
promises every time:

- the job either commits (exit 0) or fails as one line on stderr with exit 2, a
  summary file that says fail and nothing committed; never a traceback;
- a committed run holds each input row exactly once, in predictions or in rejected;
- its manifest's counts equal the input files' rows and the parts, and jobs.verify
  agrees.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from batch.output.commit import list_committed_runs, verify_run
from jobs.score import main as score_main
from tests.plain_model import POISON_ABOVE

X_TYPES = [pa.float32(), pa.float64(), pa.int32(), pa.int64(), pa.float16()]
N_TYPES = [pa.int64(), pa.int32(), pa.int8(), pa.uint16()]
S_KINDS = ["string", "large_string", "dictionary", "binary"]


@dataclass(frozen=True)
class FileSpec:
    rows: int
    row_group_rows: int
    x_type: pa.DataType
    n_type: pa.DataType
    s_kind: str
    null_rows: tuple[int, ...]  # rows whose x, n or s is null (column chosen by row)
    bad_utf8_rows: tuple[int, ...]
    poison_rows: tuple[int, ...]
    extra_column: bool


@st.composite
def file_specs(
    draw: st.DrawFn, x_type: pa.DataType, n_type: pa.DataType, s_kind: str, extra: bool
) -> FileSpec:
    rows = draw(st.integers(0, 60))
    indexes = st.lists(st.integers(0, max(rows - 1, 0)), max_size=4, unique=True)
    if draw(st.integers(0, 7)) == 0:  # now and then a file whose types differ from the rest
        x_type, n_type = draw(st.sampled_from(X_TYPES)), draw(st.sampled_from(N_TYPES))
        s_kind, extra = draw(st.sampled_from(S_KINDS)), draw(st.booleans())
    return FileSpec(
        rows=rows,
        row_group_rows=draw(st.integers(1, 40)),
        x_type=x_type,
        n_type=n_type,
        s_kind=s_kind,
        null_rows=tuple(draw(indexes)) if rows else (),
        bad_utf8_rows=tuple(draw(indexes)) if rows else (),
        poison_rows=tuple(draw(indexes)) if rows else (),
        extra_column=extra,
    )


@dataclass(frozen=True)
class Layout:
    files: tuple[FileSpec, ...]
    alias: bool  # one file also reachable through a symlink
    loop: bool  # a folder symlink pointing back to the root


@st.composite
def layouts(draw: st.DrawFn) -> Layout:
    types = (
        draw(st.sampled_from(X_TYPES)),
        draw(st.sampled_from(N_TYPES)),
        draw(st.sampled_from(S_KINDS)),
        draw(st.booleans()),
    )
    files = draw(st.lists(file_specs(*types), min_size=1, max_size=3))
    return Layout(tuple(files), alias=draw(st.booleans()), loop=draw(st.booleans()))


def _table(spec: FileSpec, first_id: int) -> pa.Table:
    ids = list(range(first_id, first_id + spec.rows))
    xs: list[float | None] = [float((i * 7) % 11) / 4 for i in range(spec.rows)]
    ns: list[int | None] = [i % 5 for i in range(spec.rows)]
    ss: list[bytes | None] = [f"code-{i % 13}".encode() for i in range(spec.rows)]
    for row in spec.poison_rows:
        xs[row] = POISON_ABOVE * 2  # the model raises on it: a poison row
    for row in spec.bad_utf8_rows if spec.s_kind == "binary" else ():
        ss[row] = b"bad-\xff\xfe"
    for row in spec.null_rows:
        column = (xs, ns, ss)[row % 3]
        column[row] = None
    x = pa.array(xs, pa.float64())
    if pa.types.is_integer(spec.x_type):
        x = pa.array([None if v is None else int(v) for v in xs], spec.x_type)
    else:
        x = pc.cast(x, spec.x_type)
    binary = pa.array(ss, pa.binary())
    if spec.s_kind == "binary":  # the only kind that can hold bytes that are not UTF-8
        s = binary
    else:
        s = pc.cast(binary, pa.string())
        if spec.s_kind == "large_string":
            s = pc.cast(s, pa.large_string())
        elif spec.s_kind == "dictionary":
            s = s.dictionary_encode()
    columns = {
        "id": pa.array(ids, pa.int64()),
        "x": x,
        "n": pa.array(ns, spec.n_type),
        "s": s,
    }
    if spec.extra_column:
        columns["notes"] = pa.array(["free text"] * spec.rows, pa.string())
    return pa.table(columns)


@dataclass(frozen=True)
class Drawn:
    root: Path
    ids: frozenset[int]


def _write(layout: Layout, root: Path) -> Drawn:
    data = root / "in"
    data.mkdir(parents=True)
    ids: set[int] = set()
    first = 0
    for index, spec in enumerate(layout.files):
        table = _table(spec, first)
        first += spec.rows + 1000
        ids.update(table.column("id").to_pylist())
        folder = data / f"dt=2026-01-0{index + 1}"
        folder.mkdir()
        pq.write_table(table, folder / "part-0.parquet", row_group_size=spec.row_group_rows)
    if layout.alias:
        os.symlink(data / "dt=2026-01-01" / "part-0.parquet", data / "alias.parquet")
    if layout.loop:
        os.symlink(data, data / "dt=2026-01-01" / "loop")
    return Drawn(data, frozenset(ids))


def _kind_of(reason: str | None) -> str:
    """A failure's reason without its paths and numbers, for hypothesis' statistics."""
    if not reason:
        return "committed"
    words = [w for w in reason.split() if "/" not in w and not any(c.isdigit() for c in w)]
    return " ".join(words)[:120]


def _ids(folder: Path) -> list[int]:
    """The keys of a run's parts of one kind (an input without rows stages no part)."""
    parts = sorted(folder.glob("*.parquet"))
    return [i for part in parts for i in pq.read_table(part, columns=["id"])["id"].to_pylist()]


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="batchscore-fuzz-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@settings(
    max_examples=int(os.environ.get("BATCHSCORE_FUZZ_EXAMPLES", "20")),
    deadline=None,
    derandomize=True,  # the same draws in every CI run; raise the count to explore more
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layout=layouts())
def test_every_row_once_or_one_line_failure(
    layout: Layout,
    workdir: Path,
    plain_model: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = Path(tempfile.mkdtemp(dir=workdir))
    drawn = _write(layout, root)
    out, summary_file = root / "out", root / "summary.json"
    code = score_main(
        [
            f"--input={drawn.root}",
            f"--output={out}",
            f"--model={plain_model}",
            "--key_columns=id",
            "--max_error_rate=1",
            f"--summary_file={summary_file}",
        ]
    )
    _, err = capsys.readouterr()
    assert "Traceback" not in err, err
    summary = json.loads(summary_file.read_text())
    runs = list_committed_runs(out)
    event(f"exit {code}: {_kind_of(summary.get('reason'))}")
    if code != 0:
        assert code == 2, err
        lines = [line for line in err.splitlines() if line.startswith("python -m jobs.score:")]
        assert len(lines) == 1 and ": error: " in lines[0], err
        assert summary["status"] == "fail" and summary["reason"], summary
        assert runs == []
        return
    (run,) = runs
    assert summary["status"] in ("ok", "warn"), summary
    manifest = run.manifest()
    scored, rejected = (_ids(run.run_dir / kind) for kind in ("predictions", "rejected"))
    assert sorted(scored + rejected) == sorted(drawn.ids), "each input row exactly once"
    assert manifest.counts.rows_in == len(drawn.ids)
    assert manifest.counts.rows_scored == len(scored)
    assert manifest.counts.rows_rejected == len(rejected)
    assert sum(f["rows"] for f in manifest.input["files"]) == manifest.counts.rows_in
    assert verify_run(run.run_dir) == []
