"""Category columns read dictionary-encoded (batch.core.dictionaries): the checks and
drift counting run once per distinct value, and every answer, output and count is the
one the plain column gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.contract.contract import ColumnRule, load_contract
from batch.core.columns import REASON_COLUMN, RUN_ID_COLUMN
from batch.core.dictionaries import decode_dictionaries, dictionary_indices, per_value, row_flags
from batch.engine.inputs import open_parquet
from batch.engine.job import encoded_columns
from batch.engine.scorer import dictionary_inputs
from batch.engine.validate import INVALID_UTF8, UNSEEN_CATEGORY, RowValidator
from batch.model.loading import ServingFunction, import_tensorflow
from batch.observe.drift import CATEGORICAL, FeatureBaseline
from batch.output.commit import MANIFEST, list_committed_runs
from tests.conftest import score
from tests.plain_model import plain_model_expected, write_plain_data

# Values as a Parquet reader hands them over: unchecked bytes, some not UTF-8.
VALUES = [b"web", b"branch", b"phone", b"", b"x y", "caf\u00e9".encode(), b"bad-\xff", None]
KNOWN = ("web", "branch", "phone", "caf\u00e9")


def _text(values: list[bytes | None]) -> pa.Array:
    return pa.array(values, pa.binary()).view(pa.string())


def _encoded(batch: pa.RecordBatch, names: tuple[str, ...]) -> pa.RecordBatch:
    columns = [
        pc.dictionary_encode(column) if name in names else column
        for column, name in zip(batch.columns, batch.schema.names, strict=True)
    ]
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def test_per_value_spreads_a_result_computed_once_per_distinct_value() -> None:
    plain = _text([b"a", None, b"b", b"a", b"c"]).slice(1)
    encoded = pc.dictionary_encode(plain)
    calls: list[int] = []

    def upper(values: pa.Array) -> pa.Array:
        calls.append(len(values))
        return pc.utf8_upper(values)

    assert per_value(encoded, upper).to_pylist() == [None, "B", "A", "C"]
    assert calls == [3]
    assert per_value(plain, upper).to_pylist() == [None, "B", "A", "C"]


def test_decoding_keeps_only_the_columns_asked_for() -> None:
    batch = _encoded(
        pa.RecordBatch.from_pydict({"a": ["x", "y"], "b": ["p", None], "n": [1, 2]}), ("a", "b")
    )
    kept = decode_dictionaries(batch, keep=("a",))
    assert pa.types.is_dictionary(kept.schema.field("a").type)
    assert kept.schema.field("b").type == pa.string()
    assert kept.column("b").to_pylist() == ["p", None]
    plain = decode_dictionaries(batch)
    assert [f.type for f in plain.schema] == [pa.string(), pa.string(), pa.int64()]


RULES = (
    ColumnRule(name="cat", kind="string", required=True, categories=KNOWN, unseen="reject"),
    ColumnRule(
        name="free",
        kind="string",
        required=False,
        categories=KNOWN,
        unseen="oov",
        pattern="^[a-z]+$",
        fill="web",
    ),
)


@settings(max_examples=60, deadline=None)
@given(
    cat=st.lists(st.sampled_from(VALUES), min_size=1, max_size=60),
    free=st.lists(st.sampled_from(VALUES), min_size=60, max_size=60),
    start=st.integers(0, 20),
)
def test_an_encoded_batch_partitions_exactly_as_its_plain_batch(
    cat: list[bytes | None], free: list[bytes | None], start: int
) -> None:
    rows = len(cat)
    plain = pa.RecordBatch.from_arrays(
        [
            pa.array(np.arange(rows, dtype=np.int64)),
            _text(cat),
            _text(free[:rows]),
            pa.array(np.linspace(0, 1, rows)),
        ],
        names=["id", "cat", "free", "x"],
    ).slice(min(start, rows - 1))
    validator = RowValidator({"x": pa.float64(), "cat": pa.string()}, RULES)
    expected = validator.partition(plain)
    got = validator.partition(_encoded(plain, ("cat", "free")).slice(0))
    assert got.valid.schema == expected.valid.schema
    assert got.valid.equals(expected.valid)
    assert got.rejected.equals(expected.rejected)
    assert got.filled == expected.filled
    assert got.passed_to_oov == expected.passed_to_oov


def test_the_checks_on_an_encoded_column_name_each_value() -> None:
    plain = pa.RecordBatch.from_arrays(
        [_text([b"web", b"bad-\xff", b"nope", None, b"phone"]), pa.array([1.0] * 5)],
        names=["cat", "x"],
    )
    part = RowValidator({"x": pa.float64()}, RULES[:1]).partition(_encoded(plain, ("cat",)))
    assert part.valid.column("cat").to_pylist() == ["web", "phone"]
    assert part.rejected.column(REASON_COLUMN).to_pylist() == [
        INVALID_UTF8,
        UNSEEN_CATEGORY,
        "null_value",
    ]
    messages = part.rejected.column("reject_message").to_pylist()
    assert "column 'cat' = 'bad-\\xff' is not valid UTF-8" in messages[0]
    assert messages[1].startswith("column 'cat' = 'nope' is not a known category (web, ")
    part.rejected.validate(full=True)


@given(st.lists(st.sampled_from([v for v in VALUES if v != b"bad-\xff"]), max_size=80))
def test_drift_counts_an_encoded_column_as_its_plain_column(values: list[bytes | None]) -> None:
    feature = FeatureBaseline("cat", CATEGORICAL, (0.25, 0.25, 0.25, 0.25), categories=KNOWN[:2])
    plain = _text(values)
    encoded = pc.dictionary_encode(plain)
    np.testing.assert_array_equal(feature.count(encoded), feature.count(plain))
    assert feature.count(encoded).sum() == len(values)


def test_only_text_columns_stored_with_dictionaries_are_read_encoded(tmp_path: Path) -> None:
    table = pa.table(
        {
            "a": ["web", "branch"] * 50,
            "b": ["p", "q"] * 50,
            "n": list(range(100)),
            "c": ["x", "y"] * 50,
        }
    )
    path = tmp_path / "mixed.parquet"
    pq.write_table(table, path, use_dictionary=["a", "n", "c"], row_group_size=30)
    read = open_parquet(path, {"a", "b", "n"}).read()
    assert pa.types.is_dictionary(read.schema.field("a").type)  # asked, and a dictionary
    assert read.schema.field("b").type == pa.string()  # asked, but stored plain
    assert read.schema.field("n").type == pa.int64()  # asked, but not text
    assert read.schema.field("c").type == pa.string()  # a dictionary, but not asked
    assert read.column("a").cast(pa.string()).equals(table.column("a"))
    assert open_parquet(path).read().equals(table)


@pytest.mark.parametrize("length", [5, 25, 20_000])
def test_a_column_whose_dictionary_overflowed_is_read_plain(tmp_path: Path, length: int) -> None:
    """A writer whose dictionary outgrows its page limit writes the rest of the row group
    plain (the footer still lists a dictionary page): that column is read plain, not
    hashed back into a dictionary; a column of few values beside it stays encoded."""
    rows = 2_000
    table = pa.table(
        {
            "few": [f"c{i % 40}" for i in range(rows)],
            "many": [f"{i:0{length}d}" for i in range(rows)],
        }
    )
    path = tmp_path / "overflow.parquet"
    pq.write_table(table, path, dictionary_pagesize_limit=4_000, row_group_size=1_000)
    metadata = pq.ParquetFile(path).metadata
    assert all(metadata.row_group(g).column(1).has_dictionary_page for g in range(2))
    read = open_parquet(path, {"few", "many"}).read()
    assert pa.types.is_dictionary(read.schema.field("few").type)
    assert read.schema.field("many").type == pa.string()
    assert read.column("many").equals(table.column("many"))


def test_row_groups_much_smaller_than_a_batch_are_read_plain(tmp_path: Path) -> None:
    """Each row group's dictionary ends a batch: read in batches of more than twice its row
    groups, a file is read plain, so that its batches keep their size."""
    path = tmp_path / "small-groups.parquet"
    pq.write_table(pa.table({"few": ["a", "b", "c"] * 100}), path, row_group_size=100)
    for batch_rows, encoded in ((150, True), (200, True), (201, False), (65_536, False)):
        parquet = open_parquet(path, {"few"}, batch_rows)
        assert pa.types.is_dictionary(parquet.schema_arrow.field("few").type) is encoded
        sizes = [b.num_rows for b in parquet.iter_batches(batch_size=batch_rows)]
        assert sum(sizes) == 300 and (max(sizes) <= 100) is encoded


def test_a_large_string_column_keeps_its_type(tmp_path: Path) -> None:
    """Read encoded, a large_string column would come back as string: it is read plain."""
    table = pa.table({"a": pa.array(["web", "branch"] * 5, pa.large_string())})
    pq.write_table(table, tmp_path / "large.parquet")
    assert open_parquet(tmp_path / "large.parquet", {"a"}).read().equals(table)


def _outputs(output: Path, kind: str) -> pa.Table:
    (run,) = list_committed_runs(output)
    table = pq.read_table(run.run_dir / kind).sort_by("id")
    return table.drop_columns([n for n in (RUN_ID_COLUMN,) if n in table.column_names])


def test_a_job_scores_dictionary_pages_as_it_scores_plain_pages(
    plain_model: Path, tmp_path: Path
) -> None:
    """The same messy rows, written with dictionary pages (as most writers do for such
    columns) and without: the same predictions, rejected rows and counts."""
    table = write_plain_data(tmp_path / "rows", files=1, rows_per_file=900, row_group_rows=300)
    s = [v.encode() for v in table.column("s").to_pylist()]
    s[5], s[6], s[400] = b"code-\xff", b"nope", b""
    channel = [VALUES[i % len(VALUES)] for i in range(table.num_rows)]
    table = table.set_column(3, "s", _text(s)).append_column("channel", _text(channel))
    for name, dictionary in (("dictionary", True), ("plain", False)):
        (tmp_path / name).mkdir()
        pq.write_table(
            table, tmp_path / name / "part-0.parquet", row_group_size=300, use_dictionary=dictionary
        )
    contract = tmp_path / "contract"
    contract.mkdir()
    codes = " ".join(f'value: "code-{i}"' for i in range(90))
    (contract / "schema.pbtxt").write_text(
        f'feature {{ name: "s" type: BYTES domain: "s" }}\n'
        f'feature {{ name: "channel" type: BYTES domain: "channel" }}\n'
        f'string_domain {{ name: "s" {codes} }}\n'
        'string_domain { name: "channel" value: "web" value: "branch" value: "phone" }\n'
    )
    (contract / "rules.toml").write_text(
        '[unseen_categories]\ns = "reject"\nchannel = "oov"\n[fill]\nchannel = "web"\n'
    )
    # The job reads both category columns dictionary-encoded where the file allows it.
    rules = load_contract(str(contract)).columns.values()
    assert encoded_columns(rules, None) == {"s", "channel"}
    manifests = []
    for name in ("dictionary", "plain"):
        rc = score(
            tmp_path / name,
            tmp_path / f"out-{name}",
            "--key_columns=id",
            "--passthrough_columns=channel",
            f"--contract={contract}",
            "--max_error_rate=0.3",
            model=plain_model,
        )
        assert rc == 0
        (run,) = list_committed_runs(tmp_path / f"out-{name}")
        manifests.append(json.loads((run.run_dir / MANIFEST).read_text()))
    for kind in ("predictions", "rejected"):
        encoded, plain = (
            _outputs(tmp_path / "out-dictionary", kind),
            _outputs(tmp_path / "out-plain", kind),
        )
        assert encoded.schema == plain.schema
        assert encoded.equals(plain), kind
    assert manifests[0]["counts"] == manifests[1]["counts"]
    assert manifests[0]["contract"] == manifests[1]["contract"]
    counts = manifests[0]["counts"]["rejected_by_reason"]
    assert counts[INVALID_UTF8] >= 1 and counts[UNSEEN_CATEGORY] > 0
    assert manifests[0]["contract"]["passed_to_oov"]["channel"] > 0
    rejected = _outputs(tmp_path / "out-dictionary", "rejected")
    assert "code-\\xff" in rejected.column("s").to_pylist()
    assert pa.types.is_string(rejected.schema.field("channel").type)


def test_rows_passed_on_keep_the_encoding_the_scorer_takes() -> None:
    """The rows passed on keep a column encoded for the model (no decode); a column a fill
    value completes, and every dead-letter row, come decoded; the values are the plain
    batch's."""
    plain = pa.RecordBatch.from_arrays(
        [_text([b"web", None, b"nope", b"phone"]), _text([b"a", b"b", None, b"c"])],
        names=["cat", "free"],
    )
    rules = (
        ColumnRule("cat", "string", required=True, categories=KNOWN, unseen="reject"),
        ColumnRule("free", "string", required=False, fill="z"),
    )
    validator = RowValidator(
        {"cat": pa.string(), "free": pa.string()}, rules, keep_encoded=frozenset({"cat", "free"})
    )
    part = validator.partition(_encoded(plain, ("cat", "free")))
    assert pa.types.is_dictionary(part.valid.schema.field("cat").type)
    assert pa.types.is_string(part.valid.schema.field("free").type)  # filled: decoded
    assert part.valid.column("cat").to_pylist() == ["web", "phone"]
    assert part.valid.column("free").to_pylist() == ["a", "c"]
    assert all(pa.types.is_string(f.type) for f in part.rejected.schema)
    assert part.rejected.column("cat").to_pylist() == [None, "nope"]


def test_a_string_input_stored_with_dictionary_pages_scores_as_plain_pages(
    plain_model: Path, tmp_path: Path
) -> None:
    """Without a contract or baseline naming it, the model's string input is read encoded
    (the model is fed from its dictionary) and scores exactly as the plain column."""
    table = write_plain_data(tmp_path / "rows", files=1, rows_per_file=700, row_group_rows=300)
    s = table.column("s").to_pylist()
    s[3], s[500] = "", "code with spaces; and more"
    table = table.set_column(3, "s", pa.array(s, pa.string()))
    for name, dictionary in (("dictionary", True), ("plain", False)):
        (tmp_path / name).mkdir()
        pq.write_table(
            table, tmp_path / name / "part-0.parquet", row_group_size=300, use_dictionary=dictionary
        )
        out = tmp_path / f"out-{name}"
        assert score(tmp_path / name, out, "--key_columns=id", model=plain_model) == 0
    encoded, plain = (
        _outputs(tmp_path / "out-dictionary", "predictions"),
        _outputs(tmp_path / "out-plain", "predictions"),
    )
    # Equal to the last bit but where the two files' batches end at other rows (the
    # kernels' vector tails round differently).
    assert encoded.schema == plain.schema and encoded.column("id").equals(plain.column("id"))
    expected = plain_model_expected(table.sort_by("id"))
    for scored in (encoded, plain):
        assert np.allclose(scored.column("score").to_numpy(), expected, atol=1e-6)
    # What made the job read the column encoded and feed it from the dictionary:
    signature = ServingFunction(import_tensorflow(), plain_model, "plain").signature
    assert dictionary_inputs(signature, ("id",)) == {"s"}
    assert dictionary_inputs(signature, ("id",), passthrough=("s",)) == set()


@pytest.mark.parametrize("dictionary", [True, False])
def test_the_file_stores_what_the_test_expects(tmp_path: Path, dictionary: bool) -> None:
    """The job test above compares two real encodings: check that they are."""
    path = tmp_path / "f.parquet"
    pq.write_table(pa.table({"s": ["a", "b"]}), path, use_dictionary=dictionary)
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).has_dictionary_page is dictionary


def test_row_flags_reads_a_sliced_column_and_ignores_what_a_null_row_indexes() -> None:
    """A null row's index may hold anything (here 99, past the dictionary's end); an
    encoded column may start inside its buffers (a slice)."""
    validity = pa.py_buffer(bytes([0b111011]))  # row 2 is null
    raw = pa.py_buffer(np.array([0, 1, 99, 2, 1, 0], np.int32).tobytes())
    indices = pa.Array.from_buffers(pa.int32(), 6, [validity, raw])
    encoded = pa.DictionaryArray.from_arrays(indices, pa.array(["web", "phone", "nope"]))
    plain = encoded.dictionary_decode()

    def unseen(values: pa.Array) -> np.ndarray:
        known = pc.is_in(values, pa.array(["web", "phone"]))
        return ~np.asarray(known.to_numpy(zero_copy_only=False), bool)

    for start in range(6):
        expected = [v is not None and v not in ("web", "phone") for v in plain[start:].to_pylist()]
        assert row_flags(encoded.slice(start), unseen).tolist() == expected
        assert row_flags(plain.slice(start), unseen).tolist() == expected
    assert dictionary_indices(encoded.slice(3)).tolist() == [2, 1, 0]
    assert row_flags(encoded.slice(6), unseen).tolist() == []
