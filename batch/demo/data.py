"""The demo dataset: synthetic loan applications and whether each loan defaulted
(written by ``python -m jobs.make_demo``, and on first use by the demo's jobs).

The data follows ``schemas/loans/schema.pbtxt``: a unique key ``loan_id``, 18 raw
features (int64, float64 and string columns) and the label ``defaulted`` (0/1),
drawn from a logistic function of the features plus noise, so a model can learn
it (about 12% positives). Files are hive-partitioned by day::

    DIR/dt=2026-01-01/part-00000.parquet
    DIR/dt=2026-01-01/part-00001.parquet
    DIR/dt=2026-01-02/part-00000.parquet  ...
    DIR/_DEMO.json                        the arguments, written last

Exactly ``floor(rows * dirty_fraction)`` rows are dirty, with one defect each: a
null in a feature column, an out-of-range number (age -3 or 240, credit score
9999, negative income, ...) or a string with characters outside
``^[\\w\\-\\s]+$`` (``RENT;DROP``, ``web<script>``, ``PL-GOLD 07€``, ...).

Deterministic (the same arguments give byte-identical files) and idempotent (a
folder that already holds the data for the same arguments is left alone unless
``--force``). Files are written into a temporary sibling folder that is renamed
into place, so a killed run leaves no half-written dataset behind.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from batch.contract.contract import feature_columns
from batch.core.errors import UsageError
from batch.core.fsutil import read_json, write_json_atomic
from batch.demo.paths import demo_data_dir, demo_default

SCHEMA_NAME = "loans"
MARKER_FILE = "_DEMO.json"
# Bump when the generator changes what it writes, so old demo folders are rewritten.
GENERATOR_VERSION = 1
START_DATE = dt.date(2026, 1, 1)
ROW_GROUP_SIZE = 64 * 1024
STALE_TEMP_SECONDS = 3600

DEFAULT_ROWS = 1_000_000
DEFAULT_DAYS = 7
DEFAULT_FILES_PER_DAY = 2
DEFAULT_SEED = 7
DEFAULT_DIRTY_FRACTION = 0.0005

HOME_OWNERSHIP = ["RENT", "OWN", "MORTGAGE", "OTHER"]
HOME_OWNERSHIP_P = [0.40, 0.12, 0.43, 0.05]
HOME_OWNERSHIP_EFFECT = [0.20, -0.15, 0.0, 0.10]
LOAN_PURPOSES = [
    "debt_consolidation",
    "credit_card",
    "home_improvement",
    "major_purchase",
    "medical",
    "car",
    "small_business",
    "moving",
    "vacation",
    "education",
    "other",
]
LOAN_PURPOSE_P = [0.34, 0.18, 0.09, 0.06, 0.04, 0.08, 0.05, 0.03, 0.03, 0.04, 0.06]
LOAN_PURPOSE_EFFECT = [0.10, 0.0, -0.10, -0.05, 0.30, -0.20, 0.50, 0.15, 0.10, 0.05, 0.05]
# Product family of each loan purpose (index into PRODUCT_FAMILIES).
PRODUCT_FAMILIES = ["PL", "AUTO", "HOME", "CARD", "EDU", "BIZ"]
PURPOSE_FAMILY = [0, 3, 2, 0, 0, 1, 5, 0, 0, 4, 0]
PRODUCT_TIERS = ["GOLD", "PLUS", "STD", "BASIC"]
PRODUCT_TIER_EFFECT = [-0.25, -0.10, 0.0, 0.20]
PRODUCT_NUMBERS = 24
CHANNELS = ["web", "branch", "partner", "phone"]
CHANNEL_P = [0.50, 0.20, 0.20, 0.10]
CHANNEL_EFFECT = [0.0, -0.20, 0.30, 0.10]
STATES = [
    "AL",
    "AK",
    "AZ",
    "AR",
    "CA",
    "CO",
    "CT",
    "DE",
    "FL",
    "GA",
    "HI",
    "ID",
    "IL",
    "IN",
    "IA",
    "KS",
    "KY",
    "LA",
    "ME",
    "MD",
    "MA",
    "MI",
    "MN",
    "MS",
    "MO",
    "MT",
    "NE",
    "NV",
    "NH",
    "NJ",
    "NM",
    "NY",
    "NC",
    "ND",
    "OH",
    "OK",
    "OR",
    "PA",
    "RI",
    "SC",
    "SD",
    "TN",
    "TX",
    "UT",
    "VT",
    "VA",
    "WA",
    "WV",
    "WI",
    "WY",
]
NUM_EMPLOYERS = 50_000
LOAN_TERMS = [12, 24, 36, 60]
LOAN_TERM_P = [0.10, 0.20, 0.45, 0.25]
NO_DELINQUENCY_MONTHS = 240.0
INTERCEPT = -3.35

# One defect per dirty row: (column, values to pick from; None means null).
DEFECTS: list[tuple[str, list[Any]]] = [
    ("applicant_age", [None]),
    ("annual_income", [None]),
    ("credit_score", [None]),
    ("interest_rate", [None]),
    ("debt_to_income", [None]),
    ("months_since_last_delinq", [None]),
    ("home_ownership", [None]),
    ("state", [None]),
    ("employer_id", [None]),
    ("product_code", [None]),
    ("applicant_age", [-3, 240]),
    ("credit_score", [9999, 0]),
    ("annual_income", [-52000.0, -1.0]),
    ("loan_term_months", [0, 600]),
    ("debt_to_income", [-1.0, 99.0]),
    ("interest_rate", [-2.5, 180.0]),
    ("num_open_accounts", [-1, 1000]),
    ("revolving_utilization", [7.5, -0.2]),
    ("home_ownership", ["RENT;DROP", "OWN'--"]),
    ("channel", ["web<script>", "partner%00"]),
    ("loan_purpose", ["car/../../etc", "medical;"]),
    ("state", ['CA"', "N@"]),
    ("employer_id", ["EMP00471|1", "EMP0047€"]),
    ("product_code", ["PL-GOLD 07€", "AUTO-STD 12;rm -rf"]),
]


@dataclass(frozen=True)
class DemoArgs:
    """What determines the bytes of the demo dataset (recorded in ``_DEMO.json``)."""

    rows: int = DEFAULT_ROWS
    days: int = DEFAULT_DAYS
    files_per_day: int = DEFAULT_FILES_PER_DAY
    seed: int = DEFAULT_SEED
    dirty_fraction: float = DEFAULT_DIRTY_FRACTION
    generator_version: int = GENERATOR_VERSION

    def validate(self) -> None:
        files = self.days * self.files_per_day
        if self.days < 1 or self.files_per_day < 1:
            raise UsageError(
                f"--days={self.days} --files_per_day={self.files_per_day}: expected both >= 1"
            )
        if self.rows < files:
            raise UsageError(
                f"--rows={self.rows}: expected at least days * files_per_day = {files} rows "
                "(one per file); raise --rows or lower --days/--files_per_day"
            )
        if not 0.0 <= self.dirty_fraction <= 1.0:
            raise UsageError(
                f"--dirty_fraction={self.dirty_fraction}: expected a share between 0 and 1"
            )
        if self.seed < 0:
            raise UsageError(f"--seed={self.seed}: expected a non-negative integer")


# -- generation ----------------------------------------------------------------------


def dirty_count(rows: int, dirty_fraction: float, start_row: int = 0) -> int:
    """Dirty rows among global rows ``[start_row, start_row + rows)``.

    Chunks add up exactly: ``floor(total * dirty_fraction)`` over the whole dataset.
    """
    return _dirty_upto(start_row + rows, dirty_fraction) - _dirty_upto(start_row, dirty_fraction)


def _dirty_upto(n: int, fraction: float) -> int:
    return math.floor(n * fraction + 1e-9)


def generate(
    rows: int, seed: int = DEFAULT_SEED, dirty_fraction: float = 0.0, start_row: int = 0
) -> pa.Table:
    """Rows ``[start_row, start_row + rows)`` of the demo dataset, as one table.

    Depends only on the arguments; generating a dataset in chunks gives the same
    rows as generating it at once only for the keys (each chunk has its own
    random stream seeded by ``(seed, start_row)``).
    """
    if rows < 0 or start_row < 0:
        raise UsageError(f"generate(rows={rows}, start_row={start_row}): expected both >= 0")
    rng = np.random.default_rng([seed, start_row, GENERATOR_VERSION])
    n = rows
    g = np.arange(start_row, start_row + n, dtype=np.int64)

    age = np.clip(np.rint(rng.normal(42.0, 12.0, n)), 18, 85).astype(np.int64)
    log_income = np.log(60_000.0) + 0.012 * (age - 42) + rng.normal(0.0, 0.55, n)
    income = np.round(np.clip(np.exp(log_income), 8_000.0, 2_000_000.0), 2)
    term = np.asarray(LOAN_TERMS, dtype=np.int64)[_choice(rng, LOAN_TERM_P, n)]
    loan_amount = np.round(
        np.clip(
            np.exp(
                np.log(14_000.0) + 0.35 * (log_income - np.log(60_000.0)) + rng.normal(0.0, 0.65, n)
            ),
            1_000.0,
            250_000.0,
        ),
        -2,
    )
    credit = np.clip(np.rint(rng.normal(690.0, 60.0, n)), 300, 850).astype(np.int64)
    z_credit = (credit - 690.0) / 60.0
    rate = np.round(
        np.clip(
            5.0 + (850.0 - credit) / 550.0 * 20.0 + 0.02 * term + rng.normal(0, 1.5, n), 3.0, 35.0
        ),
        2,
    )
    open_accounts = np.clip(rng.poisson(8.0, n), 0, 60).astype(np.int64)
    delinq = np.clip(rng.poisson(np.clip(0.3 - 0.35 * z_credit, 0.02, None)), 0, 20)
    delinq = delinq.astype(np.int64)
    loan_to_income = loan_amount / income
    dti = np.round(np.clip(rng.normal(0.28 + 0.25 * loan_to_income, 0.12), 0.0, 1.5), 3)
    employment = np.round(np.clip(rng.exponential(6.0, n), 0.0, np.maximum(age - 16, 0)), 1)
    utilization = np.round(np.clip(rng.beta(2.0, 3.0, n) * 1.2 - 0.1 * z_credit, 0.0, 1.5), 3)
    months_delinq = np.where(
        delinq > 0, np.rint(rng.uniform(1.0, 120.0, n)), NO_DELINQUENCY_MONTHS
    ).astype(np.float64)
    home = _choice(rng, HOME_OWNERSHIP_P, n)
    purpose = _choice(rng, LOAN_PURPOSE_P, n)
    state = _choice(rng, _state_weights(), n)
    channel = _choice(rng, CHANNEL_P, n)
    employer = _employer_numbers(rng, n)
    family = np.asarray(PURPOSE_FAMILY, dtype=np.int64)[purpose]
    tier = np.clip(
        np.rint(1.6 - 0.9 * z_credit + rng.normal(0.0, 0.7, n)), 0, len(PRODUCT_TIERS) - 1
    ).astype(np.int64)
    product_number = rng.integers(0, PRODUCT_NUMBERS, n)
    product = (family * len(PRODUCT_TIERS) + tier) * PRODUCT_NUMBERS + product_number

    logit = (
        INTERCEPT
        - 0.85 * z_credit
        + 1.6 * (dti - 0.33)
        + 1.1 * (utilization - 0.45)
        + 0.30 * delinq
        + 0.06 * (rate - 12.0)
        - 0.45 * (log_income - np.log(60_000.0))
        + 0.9 * (loan_to_income - 0.25)
        + 0.30 * (term == 60)
        - 0.012 * (age - 42)
        + 0.0004 * (age - 42) ** 2
        - 0.02 * employment
        + 0.004 * (NO_DELINQUENCY_MONTHS - months_delinq) * (delinq > 0)
        + np.asarray(HOME_OWNERSHIP_EFFECT)[home]
        + np.asarray(LOAN_PURPOSE_EFFECT)[purpose]
        + np.asarray(CHANNEL_EFFECT)[channel]
        + _state_effects()[state]
        + 0.9 * _employer_effect(employer)
        + np.asarray(PRODUCT_TIER_EFFECT)[tier]
        + rng.normal(0.0, 0.3, n)
    )
    defaulted = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    columns: dict[str, pa.Array] = {
        "loan_id": _fixed_width_codes("L", g + 1, 10),
        "applicant_age": pa.array(age, pa.int64()),
        "annual_income": pa.array(income, pa.float64()),
        "loan_amount": pa.array(loan_amount, pa.float64()),
        "loan_term_months": pa.array(term, pa.int64()),
        "interest_rate": pa.array(rate, pa.float64()),
        "credit_score": pa.array(credit, pa.int64()),
        "num_open_accounts": pa.array(open_accounts, pa.int64()),
        "num_delinquencies": pa.array(delinq, pa.int64()),
        "debt_to_income": pa.array(dti, pa.float64()),
        "employment_years": pa.array(employment, pa.float64()),
        "revolving_utilization": pa.array(utilization, pa.float64()),
        "months_since_last_delinq": pa.array(months_delinq, pa.float64()),
        "home_ownership": _take(HOME_OWNERSHIP, home),
        "loan_purpose": _take(LOAN_PURPOSES, purpose),
        "state": _take(STATES, state),
        "channel": _take(CHANNELS, channel),
        "employer_id": _fixed_width_codes("EMP", employer + 1, 6),
        "product_code": _take(_product_codes(), product),
        "defaulted": pa.array(defaulted, pa.int64()),
    }
    _apply_defects(rng, columns, dirty_count(n, dirty_fraction, start_row))
    return pa.table(columns, schema=arrow_schema())


def arrow_schema() -> pa.Schema:
    """The Parquet schema of the demo files: the contract's columns, floats as float64."""
    arrow_types = {"int": pa.int64(), "float": pa.float64(), "string": pa.string()}
    return pa.schema(
        [pa.field(name, arrow_types[kind]) for name, kind in feature_columns(SCHEMA_NAME).items()]
    )


def _choice(rng: np.random.Generator, p: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    cdf = np.cumsum(np.asarray(p, dtype=np.float64))
    return np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n), side="right"), len(p) - 1)


def _state_weights() -> np.ndarray:
    # Fixed, population-like skew: a few big states, a long tail.
    order = (np.arange(len(STATES)) * 17) % len(STATES)
    return np.asarray(1.0 / (order + 1.0) ** 0.8)


def _state_effects() -> np.ndarray:
    return np.asarray(((np.arange(len(STATES)) * 37) % 11 - 5) * 0.03)


def _employer_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """Zipf-like draw over NUM_EMPLOYERS employers, permuted so ids are not ranks."""
    ranks = np.arange(NUM_EMPLOYERS, dtype=np.float64)
    cdf = np.cumsum(1.0 / (ranks + 10.0) ** 1.1)
    rank = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n)), NUM_EMPLOYERS - 1)
    # 7919 is coprime to 50000, so this is a permutation of the employer numbers.
    return np.asarray((rank * 7919 + 4711) % NUM_EMPLOYERS, dtype=np.int64)


def _employer_effect(employer: np.ndarray) -> np.ndarray:
    return np.asarray(((employer * 2_654_435_761) % 1009) / 1009.0 - 0.5)


def _product_codes() -> list[str]:
    return [
        f"{family}-{tier} {number + 1:02d}"
        for family in PRODUCT_FAMILIES
        for tier in PRODUCT_TIERS
        for number in range(PRODUCT_NUMBERS)
    ]


def _take(values: list[str], indices: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(indices, pa.int64()))


def _fixed_width_codes(prefix: str, numbers: np.ndarray, digits: int) -> pa.Array:
    """``prefix`` + zero-padded ``numbers`` as a string array, built without Python loops."""
    if len(numbers) and int(numbers.max()) >= 10**digits:
        raise UsageError(
            f"--rows: expected fewer than {10**digits:,} rows so that ids like "
            f"{prefix}{'0' * digits} stay {digits} digits wide; lower --rows"
        )
    n = len(numbers)
    width = len(prefix) + digits
    chars = np.empty((n, width), dtype=np.uint8)
    chars[:, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    powers = 10 ** np.arange(digits - 1, -1, -1, dtype=np.int64)
    chars[:, len(prefix) :] = (numbers[:, None] // powers[None, :]) % 10 + ord("0")
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int32)
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chars.tobytes())
    )


def _apply_defects(rng: np.random.Generator, columns: dict[str, pa.Array], count: int) -> None:
    """Give ``count`` distinct random rows one defect each (null, out of range, bad chars)."""
    if count == 0:
        return
    n = len(columns["loan_id"])
    rows = rng.choice(n, size=count, replace=False)
    kinds = rng.integers(0, len(DEFECTS), size=count)
    for kind, (column, values) in enumerate(DEFECTS):
        hit = np.sort(rows[kinds == kind])
        if len(hit) == 0:
            continue
        picks = rng.integers(0, len(values), size=len(hit))
        original = columns[column]
        replacements = pa.array([values[i] for i in picks], original.type)
        mask = np.zeros(n, dtype=bool)
        mask[hit] = True
        columns[column] = pc.replace_with_mask(original, pa.array(mask), replacements)


# -- writing -------------------------------------------------------------------------


def partition_files(args: DemoArgs) -> list[tuple[str, int, int]]:
    """``(relative path, start_row, rows)`` of every file, in order."""
    files = args.days * args.files_per_day
    bounds = [args.rows * k // files for k in range(files + 1)]
    out = []
    for k in range(files):
        day = START_DATE + dt.timedelta(days=k // args.files_per_day)
        rel = f"dt={day.isoformat()}/part-{k % args.files_per_day:05d}.parquet"
        out.append((rel, bounds[k], bounds[k + 1] - bounds[k]))
    return out


def is_complete(output: Path, args: DemoArgs) -> bool:
    """Whether ``output`` already holds the demo data written with ``args``."""
    marker = output / MARKER_FILE
    if not marker.is_file():
        return False
    try:
        recorded = read_json(marker)
    except (OSError, ValueError):
        return False
    if recorded.get("args") != asdict(args):
        return False
    return all((output / rel).is_file() for rel, _, _ in partition_files(args))


def ensure_demo_data(
    output: Path | str | None = None,
    *,
    rows: int = DEFAULT_ROWS,
    days: int = DEFAULT_DAYS,
    files_per_day: int = DEFAULT_FILES_PER_DAY,
    seed: int = DEFAULT_SEED,
    dirty_fraction: float = DEFAULT_DIRTY_FRACTION,
    force: bool = False,
    log: Callable[[str], None] | None = print,
) -> Path:
    """Make sure ``output`` (default: the demo data folder) holds the demo data; return it.

    Writes it when missing, written with other arguments, or when ``force``.
    """
    target = Path(output) if output is not None else demo_data_dir()
    args = DemoArgs(rows, days, files_per_day, seed, dirty_fraction)
    args.validate()
    if not force and is_complete(target, args):
        if log:
            log(
                f"make_demo: {target} already holds the demo data for these arguments "
                f"({rows:,} rows); left as is (use --force to rewrite)"
            )
        return target
    foreign = target.exists() and not (target / MARKER_FILE).is_file()
    if foreign and not force and (not target.is_dir() or any(target.iterdir())):
        raise UsageError(
            f"--output={target}: expected a missing or empty folder, or one written by "
            f"jobs.make_demo (with {MARKER_FILE}); found other content. Choose another "
            "--output or pass --force to replace it"
        )
    started = time.perf_counter()
    try:
        dirty = _write(target, args)
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        raise UsageError(
            f"--output={target}: cannot write the demo data there ({exc.strerror or exc}"
            f"{where}); nothing was left half-written. Choose a folder you can write"
        ) from exc
    if log:
        files = args.days * args.files_per_day
        log(
            f"make_demo: wrote {rows:,} rows ({dirty:,} dirty) in {files} files over "
            f"{days} days to {target} in {time.perf_counter() - started:.1f}s"
        )
    return target


def _write(target: Path, args: DemoArgs) -> int:
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    token = uuid.uuid4().hex
    tmp = target.parent / f".{target.name}.tmp-{token}"
    old = target.parent / f".{target.name}.old-{token}"
    try:
        tmp.mkdir()
        schema = arrow_schema()
        dirty = 0
        files = []
        for rel, start, count in partition_files(args):
            table = generate(count, args.seed, args.dirty_fraction, start_row=start)
            dirty += dirty_count(count, args.dirty_fraction, start)
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(
                table.cast(schema),
                path,
                row_group_size=ROW_GROUP_SIZE,
                compression="snappy",
                write_statistics=True,
            )
            files.append({"path": rel, "rows": count})
        marker = {
            "args": asdict(args),
            "schema": SCHEMA_NAME,
            "rows": args.rows,
            "dirty_rows": dirty,
            "files": files,
        }
        write_json_atomic(tmp / MARKER_FILE, marker)
        if target.exists():
            os.rename(target, old)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    return dirty


def _remove_stale_temps(target: Path) -> None:
    """Remove temp folders that killed runs left beside ``target`` (older than an hour)."""
    now = time.time()
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for path in target.parent.glob(pattern):
            try:
                if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def input_or_demo(spec: str | None) -> str:
    """``spec``, or the demo data (written on first use) when it was not given."""
    if spec is not None:
        return spec
    demo_default("--input", demo_data_dir)
    return str(ensure_demo_data(log=None))
