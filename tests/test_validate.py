"""Row validation: each reason, its message, precedence, and reconciliation under random data."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from batch.contract.contract import ColumnRule, load_contract
from batch.core.columns import MESSAGE_COLUMN, REASON_COLUMN
from batch.engine.job import ScoringJob, score_batches
from batch.engine.validate import RowValidator, _suspects, _utf8_ok
from batch.model.repository import ModelRepository, resolve_model
from batch.model.signing import TrustPolicy
from batch.output.commit import PREDICTIONS, REJECTED, RunLayout, count_reasons
from tests.plain_model import POISON_ABOVE
from tests.signing_keys import KeyPair

AGE = ColumnRule("age", "int", required=True, minimum=18, maximum=100)
INCOME = ColumnRule("income", "float", required=False, minimum=0, maximum=1e7)
HOME = ColumnRule("home", "string", required=True, categories=("RENT", "OWN"), unseen="reject")
PURPOSE = ColumnRule("purpose", "string", required=True, categories=("car",), unseen="oov")
CODE = ColumnRule("code", "string", required=True, pattern=r"^[\w\-\s]+$")
RULES = (AGE, INCOME, HOME, PURPOSE, CODE)
GOOD = {"age": 30, "income": 1000.0, "home": "RENT", "purpose": "car", "code": "PL-GOLD 07"}


def _batch(**changes: object) -> pa.RecordBatch:
    row = {**GOOD, **changes}
    schema = pa.schema(
        [
            ("age", pa.int64()),
            ("income", pa.float64()),
            ("home", pa.string()),
            ("purpose", pa.string()),
            ("code", pa.string()),
        ]
    )
    return pa.RecordBatch.from_pylist([GOOD, row], schema=schema)


@pytest.mark.parametrize(
    ("change", "reason", "message"),
    [
        ({"age": None}, "null_value", "column 'age' is null; it is required"),
        ({"income": math.nan}, "not_finite", "column 'income' is nan; expected a finite number"),
        ({"income": math.inf}, "not_finite", "column 'income' is inf; expected a finite number"),
        ({"age": 240}, "out_of_range", "column 'age' = 240; expected [18, 100]"),
        ({"income": -1.5}, "out_of_range", "column 'income' = -1.5; expected [0, 10000000]"),
        (
            {"home": "RENT;DROP"},
            "unseen_category",
            "column 'home' = 'RENT;DROP' is not a known category (RENT, OWN)",
        ),
        (
            {"code": "PL-GOLD 07€"},
            "bad_characters",
            "column 'code' = 'PL-GOLD 07€' has characters outside ^[\\w\\-\\s]+$",
        ),
        # precedence: the first failing check names the reason
        ({"age": None, "home": "X"}, "null_value", "column 'age' is null"),
        ({"age": 5, "code": "a;b"}, "out_of_range", "column 'age' = 5"),
    ],
)
def test_each_reason_and_its_message(change: dict[str, object], reason: str, message: str) -> None:
    result = RowValidator({}, RULES).partition(_batch(**change))
    assert result.valid.num_rows == 1
    assert result.rejected.column(REASON_COLUMN).to_pylist() == [reason]
    assert result.rejected.column(MESSAGE_COLUMN)[0].as_py().startswith(message)
    assert result.rejected.column("age").to_pylist() == [change.get("age", 30)]


def test_the_rejects_of_batches_counted_by_reason() -> None:
    validator = RowValidator({}, RULES)
    rejected = [
        validator.partition(_batch(age=None)).rejected,
        validator.partition(_batch(age=240)).rejected,
        validator.partition(_batch()).rejected,  # nothing rejected
        validator.partition(_batch(home="BOAT")).rejected,
    ]
    assert count_reasons(rejected) == {"null_value": 1, "out_of_range": 1, "unseen_category": 1}
    table = pa.Table.from_batches(rejected[:2] + rejected[:1])
    assert count_reasons([table]) == {"null_value": 2, "out_of_range": 1}
    assert count_reasons([]) == {}


@pytest.mark.parametrize(
    "change",
    [{"income": None}, {"purpose": "boat"}],
    ids=["optional column may be null", "unseen category passed to the model's OOV bucket"],
)
def test_rows_the_contract_allows(change: dict[str, object]) -> None:
    assert RowValidator({}, RULES).partition(_batch(**change)).valid.num_rows == 2


def test_a_model_input_is_required_even_if_the_contract_says_optional() -> None:
    result = RowValidator({"income": pa.float32()}, RULES).partition(_batch(income=None))
    assert result.rejected.column(REASON_COLUMN).to_pylist() == ["null_value"]


def test_the_loans_contract_reads_rules_beside_the_schema() -> None:
    contract = load_contract("loans")
    assert contract.key_columns == ("loan_id",)
    assert contract.columns["employer_id"].pattern == r"^[\w\-\s]+$"
    assert contract.columns["loan_purpose"].unseen == "oov"
    assert contract.columns["state"].unseen == "reject"
    assert contract.columns["applicant_age"].minimum == 18


# -- reconciliation under random data, through the real scoring core and a real model ----


@pytest.fixture(scope="module")
def plain_model_job(
    tmp_path_factory: pytest.TempPathFactory, signing_keys: KeyPair, plain_model: Path
) -> ScoringJob:
    root = tmp_path_factory.mktemp("validate")
    model = resolve_model(str(plain_model), ModelRepository(root / "repo"))
    layout = RunLayout(root / "out", model.name, model.version, "property")
    trust = TrustPolicy.from_key_file(signing_keys.public)
    return ScoringJob(model, layout, ("id",), ("id", "x", "n", "s"), batch_size=7, trust=trust)


row = st.fixed_dictionaries(
    {
        "x": st.one_of(
            st.floats(-10, 10),
            st.sampled_from([None, math.nan, math.inf, POISON_ABOVE, -5 * POISON_ABOVE]),
        ),
        "n": st.one_of(st.integers(-5, 5), st.none()),
        "s": st.one_of(st.text(max_size=4), st.none()),
    }
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(row, max_size=60), part=st.integers(0, 10_000))
def test_random_rows_always_reconcile(
    plain_model_job: ScoringJob, rows: list[dict[str, object]], part: int
) -> None:
    table = pa.Table.from_pylist(
        [{"id": i, **r} for i, r in enumerate(rows)],
        schema=pa.schema(
            [("id", pa.int64()), ("x", pa.float64()), ("n", pa.int64()), ("s", pa.string())]
        ),
    )
    result = score_batches(plain_model_job, table.to_batches(max_chunksize=7), table.schema, part)
    layout = plain_model_job.layout
    assert isinstance(layout, RunLayout)
    scored_path = layout.staged_part(PREDICTIONS, part)
    rejected_path = layout.staged_part(REJECTED, part)
    scored = pq.read_table(scored_path).column("id").to_pylist()
    rejected = pq.read_table(rejected_path) if rejected_path.exists() else None
    rejected_ids = rejected.column("id").to_pylist() if rejected is not None else []
    assert result.rows_in == len(rows) == result.rows_scored + result.rows_rejected
    assert sorted(scored + rejected_ids) == list(range(len(rows))), "no key lost or duplicated"
    poison = {
        i
        for i, r in enumerate(rows)
        if isinstance(r["x"], float)
        and math.isfinite(r["x"])
        and abs(r["x"]) >= POISON_ABOVE
        and r["n"] is not None
        and r["s"] is not None
    }
    if rejected is not None:
        reasons = dict(zip(rejected_ids, rejected.column(REASON_COLUMN).to_pylist(), strict=True))
        assert {i for i, reason in reasons.items() if reason == "model_error"} == poison
        for i in poison:
            message = rejected.column(MESSAGE_COLUMN)[rejected_ids.index(i)].as_py()
            assert re.search("raised InvalidArgumentError: .*x is out of range", message)
    else:
        assert not poison
    for path in (scored_path, rejected_path):
        Path(path).unlink(missing_ok=True)


def test_a_large_batch_rejects_exactly_the_bad_rows_each_with_its_value() -> None:
    """At the scale of the fast paths (200k rows): exactly the out-of-range rows are
    rejected, each message names that row's own value, and valid rows keep their order."""
    n = 200_000
    bad = np.arange(0, n, 1000)
    ages = np.full(n, 30)
    ages[bad] = 101 + (bad // 1000) % 50
    batch = pa.RecordBatch.from_pydict(
        {
            "id": np.arange(n),
            "age": ages,
            "income": np.ones(n),
            "home": pa.array(["OWN"] * n),
            "purpose": pa.array(["car"] * n),
            "code": pa.array(["A"] * n),
        }
    )
    result = RowValidator({}, RULES).partition(batch)
    assert result.rejected.column("id").to_pylist() == bad.tolist()
    assert set(result.rejected.column(REASON_COLUMN).to_pylist()) == {"out_of_range"}
    assert result.rejected.column(MESSAGE_COLUMN).to_pylist() == [
        f"column 'age' = {age}; expected [18, 100]" for age in ages[bad]
    ]
    assert result.valid.column("id").to_pylist() == np.delete(np.arange(n), bad).tolist()


def test_a_null_is_never_out_of_range_whatever_its_slot_holds() -> None:
    """The range check reads values as stored (no conversion): a null's slot holds whatever
    the writer left there (here 999 and -5e9, both out of range), which must not make the
    row out_of_range; a value out of range beside the nulls still is, also in a sliced
    column (an offset into its buffers)."""
    n = 6
    age_values = np.array([30, 999, 40, 240, 50, 999], dtype=np.int64)
    age_valid = np.array([1, 0, 1, 1, 1, 0], dtype=bool)
    income_values = np.array([-5e9, 1.0, 2.0, 3.0, -5e9, 4.0])
    income_valid = np.array([0, 1, 1, 1, 0, 1], dtype=bool)

    def stored(values: np.ndarray, valid: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        bitmap = pa.py_buffer(np.packbits(valid, bitorder="little"))
        return pa.Array.from_buffers(
            arrow_type, n, [bitmap, pa.py_buffer(values)], null_count=int((~valid).sum())
        )

    batch = pa.RecordBatch.from_arrays(
        [
            pa.array(range(n), pa.int64()),
            stored(age_values, age_valid, pa.int64()),
            stored(income_values, income_valid, pa.float64()),
        ],
        names=["id", "age", "income"],
    )
    rules = (ColumnRule("age", "int", required=False, minimum=18, maximum=100), INCOME)
    for rows in (batch, batch.slice(1)):
        result = RowValidator({}, rules).partition(rows)
        assert result.rejected.column("id").to_pylist() == [3]
        assert result.rejected.column(MESSAGE_COLUMN).to_pylist() == [
            "column 'age' = 240; expected [18, 100]"
        ]
        assert result.valid.column("age").null_count == rows.column("age").null_count
    # Rows 4 and 5: every value present is within bounds, every null's slot is not.
    within = RowValidator({}, rules).partition(batch.slice(4))
    assert within.rejected.num_rows == 0 and within.valid.num_rows == 2


def test_large_batches_give_the_per_row_reasons() -> None:
    """Batches big enough for the fast paths (each distinct code matched once, ranges
    checked in numpy) give every row the reason a row-by-row reading of the rules gives."""
    rng = np.random.default_rng(7)
    n = 6000
    codes = np.array(["PL-GOLD 07", "AUTO-STD 12", "a;b", "X-Y 1€", "HOME 3"], dtype=object)
    code: list[object] = list(codes[rng.integers(0, len(codes), n)])
    income: list[object] = [float(v) for v in rng.uniform(-10, 2e7, n)]
    age: list[object] = [int(v) for v in rng.integers(0, 120, n)]
    for i in range(0, n - 2, 97):
        income[i] = [None, math.nan, math.inf, -math.inf][i % 4]
        age[i + 1] = None
        code[i + 2] = None
    rows = [
        {"id": i, "age": a, "income": m, "home": "OWN", "purpose": "car", "code": c}
        for i, (a, m, c) in enumerate(zip(age, income, code, strict=True))
    ]
    schema = pa.schema([("id", pa.int64()), *_batch().schema])
    batch = pa.RecordBatch.from_pylist(rows, schema=schema)

    def expected(row: dict[str, object]) -> str | None:
        a, m, c = row["age"], row["income"], row["code"]
        if a is None or c is None:
            return "null_value"
        if isinstance(m, float) and not math.isfinite(m):
            return "not_finite"
        if not 18 <= int(str(a)) <= 100 or (isinstance(m, float) and not 0 <= m <= 1e7):
            return "out_of_range"
        if not re.fullmatch(r"[A-Za-z0-9_\-\s]+", str(c)):
            return "bad_characters"
        return None

    result = RowValidator({}, RULES).partition(batch)
    got = dict(
        zip(
            result.rejected.column("id").to_pylist(),
            result.rejected.column(REASON_COLUMN).to_pylist(),
            strict=True,
        )
    )
    wanted = {row["id"]: expected(row) for row in rows}
    assert got == {i: reason for i, reason in wanted.items() if reason is not None}
    assert result.valid.column("id").to_pylist() == [i for i, r in wanted.items() if r is None]


# -- the character-class fast path gives the regex's answer ---------------------------------

PATTERNS = (r"^[\w\-\s]+$", r"^[A-Z0-9]*$", r"^[^;]+$", r"^[a-z.]+$", r"^\w+$", r"^[\w]+-\d$")
CHARACTERS = "aZ09_- \t\n\x0b;.é€\x00"


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.text(CHARACTERS, max_size=5)), max_size=40),
    pattern=st.sampled_from(PATTERNS),
    large=st.booleans(),
    start=st.integers(0, 5),
    nulls=st.sampled_from([0, 400]),
)
def test_a_pattern_check_rejects_what_the_regex_rejects(
    values: list[str | None], pattern: str, large: bool, start: int, nulls: int
) -> None:
    """Whatever the values (empty, null, non-ASCII, in a sliced or large_string column)
    and whether or not the pattern is a bare character class, the rows rejected for
    bad_characters are the regex's non-matches. (``nulls`` pads the column so that a few
    suspect rows are checked alone.)"""
    padded = [None] * nulls + values
    column = pa.array(padded, pa.large_string() if large else pa.string()).slice(start)
    batch = pa.RecordBatch.from_arrays([column], names=["code"])
    rule = ColumnRule("code", "string", required=False, pattern=pattern)
    result = RowValidator({}, (rule,)).partition(batch)
    wanted = [
        v
        for v in column.to_pylist()
        if v is not None and not pc.match_substring_regex(pa.array([v]), pattern)[0].as_py()
    ]
    assert result.rejected.column("code").to_pylist() == wanted
    assert set(result.rejected.column(REASON_COLUMN).to_pylist()) <= {"bad_characters"}


def _suspect_rows(column: pa.Array, pattern: str) -> list[int]:
    found = _suspects(column, pattern)
    assert found is not None, "the regex would run on every row"
    return list(found.tolist())


def test_the_regex_runs_only_on_the_suspect_rows() -> None:
    """The fast paths are taken where they may be, and only there."""
    codes = pa.array(["PL-GOLD 07", None, "AUTO_1"] * 1000 + ["a;b", "", "é", "x"])
    assert _suspect_rows(codes, r"^[\w\-\s]+$") == [3000, 3001, 3002]
    assert _suspect_rows(codes, r"^[\w\-\s]*$") == [3000, 3002]  # empty matches '*'
    assert _suspect_rows(codes.slice(2000), r"^[\w\-\s]+$") == [1000, 1001, 1002]
    assert _suspects(codes, r"^[A-Z]+$") is None  # suspects everywhere: the regex, every row
    assert _suspects(codes, r"^[\w\-\s]+-\d$") is None  # not a bare class: the regex
    # Bytes that are not UTF-8 outside a slice do not count; inside, they do.
    raw = pa.array([b"ok", b"\xff", b"fine"], pa.binary()).view(pa.string())
    assert _utf8_ok(raw.slice(2)) and _utf8_ok(raw.slice(0, 1))
    assert not _utf8_ok(raw.slice(1, 1))
    assert _utf8_ok(pa.array(["é€", None]))  # not ASCII, valid: Arrow's check says so


def test_the_checks_benchmark_times_every_check() -> None:
    """bench.checks (each check's CPU per 10M rows) runs on the validator as it is."""
    from bench.checks import READ, TOTAL, one_pass

    seconds = one_pass(lambda: [_batch(), _batch(code="a;b")], RowValidator({}, RULES), None)
    assert set(seconds) == {
        READ,
        TOTAL,
        "invalid_utf8",
        "null_value",
        "not_finite",
        "out_of_range",
        "unseen_category",
        "bad_characters",
        "whole validation (partition)",
    }
