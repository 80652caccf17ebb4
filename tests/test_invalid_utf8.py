"""Bytes that are not UTF-8 in string columns go to the dead-letter as ``invalid_utf8``, with
the values written escaped, and never reach the predictions (issue 22, point 5)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.engine.validate import INVALID_UTF8, RowValidator
from batch.output.commit import list_committed_runs
from jobs.score import main as score_main
from tests.plain_model import build_plain_model, write_plain_data

BAD_CODE = b"key-\xff\xfe"
BAD_S = b"code-\xc3"


def _strings(values: list[bytes]) -> pa.Array:
    """A ``string`` column holding ``values`` unchecked, as a Parquet reader hands them over."""
    return pa.array(values, pa.binary()).view(pa.string())


def test_the_validator_rejects_the_rows_and_escapes_them() -> None:
    batch = pa.RecordBatch.from_pydict(
        {"k": _strings([b"a", BAD_CODE, b"c"]), "x": pa.array([1.0, 2.0, 3.0])}
    )
    part = RowValidator({"x": pa.float32()}).partition(batch)
    assert part.valid.column("k").to_pylist() == ["a", "c"]
    rejected = part.rejected.to_pylist()
    assert [(r["k"], r["reject_reason"]) for r in rejected] == [("key-\\xff\\xfe", INVALID_UTF8)]
    assert "column 'k' = 'key-\\xff\\xfe' is not valid UTF-8" in rejected[0]["reject_message"]
    part.rejected.validate(full=True)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plain_model(tmp_path_factory.mktemp("utf8") / "model")


def test_a_run_dead_letters_invalid_utf8_and_writes_only_readable_files(
    plain_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "in"
    write_plain_data(data, files=1, rows_per_file=200, row_group_rows=100)
    path = data / "part-000.parquet"
    table = pq.read_table(path)
    codes = [f"key-{i}".encode() for i in range(200)]
    codes[3] = BAD_CODE
    s = [v.encode() for v in table.column("s").to_pylist()]
    s[7] = BAD_S
    table = table.append_column("code", _strings(codes))
    table = table.set_column(table.schema.get_field_index("s"), "s", _strings(s))
    pq.write_table(table, path)
    contract = tmp_path / "contract"
    contract.mkdir()
    (contract / "schema.pbtxt").write_text('feature { name: "s" type: BYTES }\n')
    (contract / "rules.toml").write_text("[patterns]\ns = '^[a-z]+-[0-9]+$'\n")
    out = tmp_path / "out"
    rc = score_main(
        [
            f"--input={data}",
            f"--model={plain_model}",
            f"--output={out}",
            "--key_columns=code",
            f"--contract={contract}",
            "--max_error_rate=0.05",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    (run,) = list_committed_runs(out)
    assert run.manifest().to_json()["counts"]["rejected_by_reason"] == {INVALID_UTF8: 2}
    predictions = pq.read_table(run.run_dir / "predictions")
    predictions.validate(full=True)
    assert predictions.num_rows == 198
    rejected = pq.read_table(run.run_dir / "rejected")
    rejected.validate(full=True)
    rows = sorted(rejected.to_pylist(), key=lambda r: r["code"])
    assert [(r["code"], r["s"]) for r in rows] == [
        ("key-7", "code-\\xc3"),
        ("key-\\xff\\xfe", "code-3"),
    ]
    assert {r["reject_reason"] for r in rows} == {INVALID_UTF8}
