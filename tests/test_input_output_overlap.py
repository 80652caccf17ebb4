"""An output inside the input, or an input inside an output, is refused (issue 22, point 10)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from batch.core.errors import UsageError
from batch.engine.inputs import check_input_output_disjoint
from batch.output.commit import list_committed_runs
from jobs.score import main as score_main
from tests.plain_model import build_plain_model, write_plain_data


class TestCheckInputOutputDisjoint:
    @pytest.mark.parametrize(
        "input_spec",
        ["{root}", "{root}/*.parquet", "{root}/**/*.parquet", "{root}/part-000.parquet"],
    )
    def test_an_output_inside_the_input_is_refused(self, tmp_path: Path, input_spec: str) -> None:
        spec = input_spec.format(root=tmp_path / "in")
        if spec.endswith("part-000.parquet"):
            check_input_output_disjoint(spec, tmp_path / "in" / "out")  # a file holds no folder
            return
        with pytest.raises(
            UsageError, match=re.escape(f"--output={tmp_path / 'in' / 'out'} is inside")
        ):
            check_input_output_disjoint(spec, tmp_path / "in" / "out")

    def test_an_input_inside_an_output_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(UsageError, match="is inside --output="):
            check_input_output_disjoint(str(tmp_path / "out" / "m" / "1"), tmp_path / "out")

    def test_a_symbolic_link_does_not_hide_the_overlap(self, tmp_path: Path) -> None:
        (tmp_path / "in").mkdir()
        (tmp_path / "link").symlink_to(tmp_path / "in")
        with pytest.raises(UsageError, match="is inside --input="):
            check_input_output_disjoint(str(tmp_path / "in"), tmp_path / "link" / "scores")

    def test_siblings_pass(self, tmp_path: Path) -> None:
        check_input_output_disjoint(str(tmp_path / "in"), tmp_path / "in-scores")


def test_scoring_into_the_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = build_plain_model(tmp_path / "model")
    data = tmp_path / "in"
    write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
    out = data / "scores"
    rc = score_main([f"--input={data}", f"--model={model}", f"--output={out}", "--key_columns=id"])
    err = capsys.readouterr().err
    assert rc == 2
    assert f"--output={out} is inside --input={data}" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not list_committed_runs(out)
