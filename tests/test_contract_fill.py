"""Optional columns in the contract: fill values (rules.toml [fill]) and TFX SchemaGen
schemas (presence below 1 = optional, ``domain: "NAME"`` resolved to the schema-level
string_domain)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.contract.contract import load_contract
from batch.core.errors import UsageError
from batch.output.commit import CommittedRun, list_committed_runs
from tests.conftest import score
from tests.plain_model import plain_model_expected, write_plain_data

SCHEMAGEN = """
feature { name: "id" type: INT presence { min_fraction: 1.0 min_count: 1 } shape { dim { size: 1 } } }
feature { name: "x" type: FLOAT presence { min_fraction: 0.5 min_count: 1 } }
feature { name: "n" type: INT presence { min_fraction: 1.0 min_count: 1 } }
feature { name: "s" type: BYTES domain: "s" presence { min_fraction: 1.0 min_count: 1 } }
string_domain { name: "s" value: "code-1" value: "code-2" }
"""


def _contract(folder: Path, rules: str = "", schema: str = SCHEMAGEN) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "schema.pbtxt").write_text(schema)
    if rules:
        (folder / "rules.toml").write_text(rules)
    return folder


def _data(folder: Path) -> pa.Table:
    """The plain data with x null in every 7th row."""
    table = write_plain_data(folder, files=2, rows_per_file=300, row_group_rows=100)
    x = table["x"].to_numpy()
    mask = np.arange(len(x)) % 7 == 3
    for index, path in enumerate(sorted(folder.glob("*.parquet"))):
        part = pq.read_table(path)
        rows = slice(index * 300, (index + 1) * 300)
        part = part.set_column(1, "x", pa.array(x[rows], pa.float64(), mask=mask[rows]))
        pq.write_table(part, path)
    return table.set_column(1, "x", pa.array(x, pa.float64(), mask=mask))


def _only_run(output: Path) -> CommittedRun:
    (run,) = list_committed_runs(output)
    return run


class TestSchemaGenSchemas:
    def test_named_domains_and_presence_are_read(self, tmp_path: Path) -> None:
        contract = load_contract(str(_contract(tmp_path / "c")))
        assert contract.columns["s"].categories == ("code-1", "code-2")
        assert contract.columns["x"].required is False
        assert contract.columns["n"].required is True

    def test_an_unknown_domain_name_is_named(self, tmp_path: Path) -> None:
        schema = SCHEMAGEN.replace('domain: "s"', 'domain: "codes"')
        with pytest.raises(
            UsageError,
            match=re.escape("feature 's' names domain 'codes', which the schema does not define"),
        ):
            load_contract(str(_contract(tmp_path / "c", schema=schema)))


class TestUnseenCategories:
    """Without a rules.toml rule an unseen category reaches the model's OOV handling and
    is counted; rules.toml can still say reject."""

    SCHEMA = SCHEMAGEN.replace("min_fraction: 0.5", "min_fraction: 1.0")

    def _score(self, plain_model: Path, tmp_path: Path, rules: str) -> tuple[pa.Table, int]:
        table = write_plain_data(tmp_path / "in", files=2, rows_per_file=300, row_group_rows=100)
        contract = _contract(tmp_path / "c", rules, schema=self.SCHEMA)
        rc = score(
            tmp_path / "in",
            tmp_path / "out",
            "--key_columns=id",
            f"--contract={contract}",
            "--max_error_rate=1",
            model=plain_model,
        )
        assert rc == 0
        unseen = sum(value not in ("code-1", "code-2") for value in table["s"].to_pylist())
        assert 0 < unseen < table.num_rows
        return table, unseen

    def test_a_schemagen_schema_alone_passes_and_counts_them(
        self, plain_model: Path, tmp_path: Path
    ) -> None:
        table, unseen = self._score(plain_model, tmp_path, rules="")
        run = _only_run(tmp_path / "out")
        predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
        assert predictions["id"].to_pylist() == table["id"].to_pylist()
        np.testing.assert_allclose(
            predictions["score"].to_numpy(), plain_model_expected(table), atol=1e-6
        )
        assert run.manifest().to_json()["contract"]["passed_to_oov"] == {"s": unseen}

    def test_rules_toml_can_still_reject_them(self, plain_model: Path, tmp_path: Path) -> None:
        _, unseen = self._score(plain_model, tmp_path, rules='[unseen_categories]\ns = "reject"\n')
        run = _only_run(tmp_path / "out")
        manifest = run.manifest().to_json()
        assert manifest["counts"]["rejected_by_reason"] == {"unseen_category": unseen}
        assert manifest["contract"]["passed_to_oov"] == {}


class TestFill:
    RULES = '[unseen_categories]\ns = "oov"\n\n[fill]\nx = 0\n'

    def test_nulls_become_the_fill_value_before_the_model(
        self, plain_model: Path, tmp_path: Path
    ) -> None:
        table = _data(tmp_path / "in")
        contract = _contract(tmp_path / "c", self.RULES)
        rc = score(
            tmp_path / "in",
            tmp_path / "out",
            "--key_columns=id",
            f"--contract={contract}",
            model=plain_model,
        )
        assert rc == 0
        run = _only_run(tmp_path / "out")
        predictions = pq.read_table(run.run_dir / "predictions").sort_by("id")
        assert predictions.num_rows == table.num_rows, "no row rejected"
        filled = table.set_column(1, "x", table["x"].fill_null(0.0))
        np.testing.assert_allclose(
            predictions["score"].to_numpy(), plain_model_expected(filled), atol=1e-6
        )
        section = run.manifest().to_json()["contract"]
        assert section["fill"] == {"x": 0.0}
        assert section["filled_rows"] == {"x": table["x"].null_count}

    def test_an_optional_column_without_fill_that_the_model_needs_is_rejected(
        self, plain_model: Path, tmp_path: Path
    ) -> None:
        table = _data(tmp_path / "in")
        contract = _contract(tmp_path / "c", '[unseen_categories]\ns = "oov"\n')
        rc = score(
            tmp_path / "in",
            tmp_path / "out",
            "--key_columns=id",
            f"--contract={contract}",
            "--max_error_rate=0.2",
            model=plain_model,
        )
        assert rc == 0
        rejected = pq.read_table(_only_run(tmp_path / "out").run_dir / "rejected")
        assert rejected.num_rows == table["x"].null_count
        assert set(rejected["reject_message"].to_pylist()) == {
            "column 'x' is null; it is required; the contract allows a null, but the model "
            "cannot take one: give the column a fill value in rules.toml ([fill] x = ...)"
        }

    def test_a_fill_of_the_wrong_type_is_named(self, tmp_path: Path) -> None:
        contract = _contract(tmp_path / "c", '[fill]\nn = "zero"\n')
        with pytest.raises(
            UsageError, match=re.escape("fill.n = 'zero'; the column is INT, so its fill must be")
        ):
            load_contract(str(contract))
