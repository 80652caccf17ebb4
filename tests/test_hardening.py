"""Failures a careless user or an attacker causes: each ends as one line on stderr,
exit code 2 and a summary file that says fail, never a traceback (issue 22)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from jobs.verify import main as verify_main
from tests.conftest import score
from tests.plain_model import write_plain_data


def _one_line_failure(
    capsys: pytest.CaptureFixture[str], code: int, summary_file: Path, expected: str
) -> str:
    _, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert lines and expected in lines[-1], err
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "fail", summary
    return lines[-1]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("--key_columns=",), "--key_columns='': expected one or more column names"),
        (("--key_columns=,,",), "--key_columns=',,': expected one or more column names"),
        ((f"--batch_size={2**63}", "--key_columns=id"), "--batch_size"),
        (("--runner=Nonsense", "--key_columns=id"), "Nonsense"),
    ],
)
def test_bad_options_are_one_line_with_a_summary(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    plain_model: Path,
    options: tuple[str, ...],
    expected: str,
) -> None:
    data = tmp_path / "in"
    write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
    summary_file = tmp_path / "summary.json"
    try:
        code = score(
            data, tmp_path / "out", *options, f"--summary_file={summary_file}", model=plain_model
        )
    except SystemExit as exc:  # a usage error found by the argument parser
        code = int(exc.code or 0)
    _one_line_failure(capsys, code, summary_file, expected)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("_SUCCESS"))


def test_a_key_named_twice_is_one_column(tmp_path: Path, plain_model: Path) -> None:
    import pyarrow.parquet as pq

    data = tmp_path / "in"
    write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
    assert score(data, tmp_path / "out", "--key_columns=id,id, id", model=plain_model) == 0
    (part,) = (tmp_path / "out").rglob("predictions/*.parquet")
    names = pq.read_schema(part).names
    assert names.count("id") == 1, names


class TestAfterTheCommitPoint:
    """Once _SUCCESS is written nothing turns the run into a failure (point 6)."""

    def _score_twice(
        self, tmp_path: Path, plain_model: Path, damage: Callable[[Path], None]
    ) -> tuple[int, Path, dict[str, Any]]:
        data = tmp_path / "in"
        write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
        out = tmp_path / "out"
        assert score(data, out, "--key_columns=id", model=plain_model) == 0
        (latest,) = out.glob("*/*/_LATEST")
        damage(latest)
        summary_file = tmp_path / "summary.json"
        code = score(
            data,
            out,
            "--key_columns=id",
            "--force",
            f"--summary_file={summary_file}",
            model=plain_model,
        )
        return code, latest, json.loads(summary_file.read_text())

    def test_a_garbage_pointer_is_rebuilt(self, tmp_path: Path, plain_model: Path) -> None:
        code, latest, summary = self._score_twice(
            tmp_path, plain_model, lambda p: p.write_text("{garbage")
        )
        assert code == 0 and summary["status"] == "ok", summary
        assert json.loads(latest.read_text())["run_id"] == summary["run_id"]

    def test_a_pointer_that_cannot_be_written_is_a_warning(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, plain_model: Path
    ) -> None:
        def make_folder(pointer: Path) -> None:
            pointer.unlink()
            (pointer / "x").mkdir(parents=True)

        code, latest, summary = self._score_twice(tmp_path, plain_model, make_folder)
        out, _ = capsys.readouterr()
        assert code == 0, out
        assert summary["status"] == "warn"
        (warning,) = summary["warnings"]
        assert "is committed, but" in warning and str(latest) in warning
        run_dir = Path(summary["run_dir"])
        assert (run_dir / "_SUCCESS").is_file()
        assert json.loads((run_dir / "_WARNINGS.json").read_text())["warnings"] == [warning]
        assert "WARN: run" in out
        assert verify_main([str(run_dir)]) == 0

    def test_a_lock_that_cannot_be_opened_is_a_warning(
        self, tmp_path: Path, plain_model: Path
    ) -> None:
        def break_lock(pointer: Path) -> None:
            lock = pointer.with_name("_LATEST.lock")
            lock.unlink(missing_ok=True)
            lock.symlink_to(tmp_path / "no-such-folder" / "lock")

        code, _, summary = self._score_twice(tmp_path, plain_model, break_lock)
        assert code == 0 and summary["status"] == "warn", summary
        assert "_LATEST.lock" in summary["warnings"][0] or "_LATEST" in summary["warnings"][0]
