"""jobs.contract: a contract inferred from data loads in TFT's schema_utils and in batchscore's
contract loader; check reports how data breaks a contract without scoring."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.contract.contract import ColumnRule, load_contract
from batch.demo.deliveries import write_deliveries
from batch.engine.validate import RowValidator
from jobs import contract as contract_cli


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_deliveries(tmp_path_factory.mktemp("contract") / "data", rows=3_000, files=2)


@pytest.fixture(scope="module")
def inferred(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inferred") / "deliveries_inferred"
    assert contract_cli.main(["infer", f"--input={data}", f"--out={out}"]) == 0
    return out


class TestInfer:
    def test_loads_in_batchscore_contract_loader(self, data: Path, inferred: Path) -> None:
        contract = load_contract(str(inferred))
        columns = contract.columns
        assert columns["order_id"].kind == "int" and columns["order_id"].required
        assert columns["city"].categories is not None and len(columns["city"].categories) == 12
        assert columns["weather"].required is False
        assert columns["weather"].categories == ("cloudy", "fog", "rain", "snow", "sunny")
        assert columns["courier_rating"].required is False
        low, high = columns["courier_rating"].minimum, columns["courier_rating"].maximum
        assert low is not None and high is not None and 1.0 <= low < high <= 5.0
        table = pq.read_table(data)
        assert columns["items"].maximum == pc_max(table, "items")

    def test_loads_in_tft_schema_utils(self, inferred: Path) -> None:
        import tensorflow as tf
        from tensorflow_transform.tf_metadata import schema_utils

        from batch.contract.contract import load_schema

        spec = schema_utils.schema_as_feature_spec(load_schema(str(inferred))).feature_spec
        assert spec["distance_km"] == tf.io.FixedLenFeature([], tf.float32)
        assert spec["order_id"] == tf.io.FixedLenFeature([], tf.int64)
        assert spec["weather"] == tf.io.VarLenFeature(tf.string)
        assert spec["traffic_index"] == tf.io.VarLenFeature(tf.float32)

    def test_rules_skeleton_is_commented_toml(self, inferred: Path) -> None:
        text = (inferred / "rules.toml").read_text()
        assert tomllib.loads(text) == {"patterns": {}, "unseen_categories": {"default": "oov"}}
        assert "# key_columns = ['order_id']" in text

    def test_the_data_it_came_from_conforms(
        self, data: Path, inferred: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert contract_cli.main(["check", f"--input={data}", f"--contract={inferred}"]) == 0
        assert "2 of 2 file(s) conform" in capsys.readouterr().out

    def test_refuses_to_overwrite(
        self, data: Path, inferred: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        assert contract_cli.main(["infer", f"--input={data}", f"--out={inferred}"]) == 2
        assert "pass --force to replace" in capsys.readouterr().err


def pc_max(table: pa.Table, name: str) -> float:
    return float(np.max(table.column(name).to_numpy()))


class TestCheck:
    def test_counts_rows_that_break_it(
        self, data: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        summary = data.parent / "summary.json"
        argv = ["check", f"--input={data}", "--contract=deliveries", f"--summary_file={summary}"]
        assert contract_cli.main(argv) == 1
        out = capsys.readouterr().out
        assert "out_of_range" in out and "column 'distance_km' = -1; expected [0, 100]" in out
        assert "unseen_category" not in out  # a missing weather is no unseen category
        assert '"status": "fail"' in summary.read_text()

    def test_schema_problems_name_file_and_column(
        self, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        table = pq.read_table(data)
        bad = table.set_column(
            table.schema.get_field_index("hour"), "hour", table.column("hour").cast(pa.string())
        ).drop_columns(["city"])
        pq.write_table(bad, tmp_path / "bad.parquet")
        argv = ["check", f"--input={tmp_path / 'bad.parquet'}", "--contract=deliveries"]
        assert contract_cli.main(argv) == 1
        out = capsys.readouterr().out
        assert "bad.parquet: column 'city' is missing" in out
        assert "bad.parquet: column 'hour' is string" in out


def test_null_in_optional_categorical_is_not_an_unseen_category() -> None:
    rule = ColumnRule(
        "weather", "string", required=False, categories=("rain", "sun"), unseen="reject"
    )
    batch = pa.record_batch({"weather": pa.array(["rain", None, "hail"])})
    part = RowValidator({}, (rule,)).partition(batch)
    assert part.valid.column("weather").to_pylist() == ["rain", None]
    assert part.rejected.column("reject_reason").to_pylist() == ["unseen_category"]


@pytest.mark.parametrize("command", ["infer", "check"])
def test_help_documents_every_option(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        contract_cli.main([command, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--input", "--rows", "--summary_file"):
        assert option in text
    assert ("--out" if command == "infer" else "--contract") in text
