"""A second example dataset, different in kind from the loans: food deliveries and how many
minutes each took (a regression), contract ``schemas/deliveries``, transform
``transforms/deliveries.py``.

Beside the loans it has an integer key (``order_id``), optional features with missing
values (``weather``, a string with a vocabulary, about 8% missing; ``courier_rating`` about
15%; ``traffic_index`` about 10%), a float label (``delivery_minutes``), and a numeric
feature that the transform bucketizes (``distance_km``). A small share of rows break the
contract (a negative distance), as real data does.

Deterministic: the same arguments give the same bytes. ``missing_fraction=0`` writes
every optional value (what scoring through the raw-column signature needs while the
engine rejects nulls in model inputs).
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from batch.core.errors import UsageError

SCHEMA_NAME = "deliveries"
DEFAULT_ROWS = 20_000
DEFAULT_FILES = 2
DEFAULT_SEED = 11
DEFAULT_MISSING_FRACTION = 1.0  # scale of the per-column missing shares below
DEFAULT_DIRTY_FRACTION = 0.002
KEY_START = 5_000_000

CITIES = (
    "Amsterdam", "Berlin", "Barcelona", "Dublin", "Lisbon", "Lyon",
    "Milan", "Munich", "Oslo", "Paris", "Prague", "Vienna",
)  # fmt: skip
CITY_EFFECT = np.array([2.0, 0.0, 3.5, 1.0, 4.0, -1.0, 2.5, -1.5, -2.0, 5.0, 0.5, -0.5])
WEATHER = ("sunny", "cloudy", "rain", "snow", "fog")
WEATHER_P = (0.45, 0.3, 0.15, 0.04, 0.06)
WEATHER_EFFECT = np.array([0.0, 1.0, 6.0, 12.0, 4.0])
MISSING_SHARE = {"weather": 0.08, "courier_rating": 0.15, "traffic_index": 0.10}


def arrow_schema() -> pa.Schema:
    return pa.schema(
        [
            ("order_id", pa.int64()),
            ("distance_km", pa.float64()),
            ("items", pa.int64()),
            ("hour", pa.int64()),
            ("prep_minutes", pa.float64()),
            ("city", pa.string()),
            ("weather", pa.string()),
            ("courier_rating", pa.float64()),
            ("traffic_index", pa.float64()),
            ("delivery_minutes", pa.float64()),
        ]
    )


def generate(
    rows: int,
    seed: int = DEFAULT_SEED,
    start_row: int = 0,
    missing_fraction: float = DEFAULT_MISSING_FRACTION,
    dirty_fraction: float = DEFAULT_DIRTY_FRACTION,
) -> pa.Table:
    """Rows ``[start_row, start_row + rows)`` of the dataset, as one table."""
    if rows < 0 or start_row < 0:
        raise UsageError(f"generate(rows={rows}, start_row={start_row}): expected both >= 0")
    rng = np.random.default_rng([seed, start_row])
    n = rows
    distance = np.round(np.clip(rng.lognormal(np.log(3.0), 0.6, n), 0.2, 40.0), 3)
    items = np.clip(rng.poisson(3.0, n) + 1, 1, 40).astype(np.int64)
    hour = rng.choice(24, n, p=_hour_weights()).astype(np.int64)
    prep = np.round(np.clip(rng.gamma(4.0, 3.5, n), 2.0, 80.0), 1)
    city = rng.integers(0, len(CITIES), n)
    weather = rng.choice(len(WEATHER), n, p=WEATHER_P)
    rating = np.round(np.clip(rng.normal(4.3, 0.45, n), 1.0, 5.0), 2)
    traffic = np.round(np.clip(rng.gamma(2.0, 1.5, n), 0.0, 10.0), 2)
    rush = np.isin(hour, (11, 12, 13, 18, 19, 20))
    minutes = (
        8.0
        + 0.8 * prep
        + 3.2 * distance * (1.0 + 0.05 * traffic)
        + 0.6 * items
        + WEATHER_EFFECT[weather]
        + CITY_EFFECT[city]
        + 5.0 * rush
        - 2.0 * (rating - 4.3)
        + rng.normal(0.0, 4.0, n)
    )
    columns: dict[str, pa.Array] = {
        "order_id": pa.array(np.arange(KEY_START + start_row, KEY_START + start_row + n)),
        "distance_km": pa.array(distance),
        "items": pa.array(items),
        "hour": pa.array(hour),
        "prep_minutes": pa.array(prep),
        "city": pa.array([CITIES[i] for i in city], pa.string()),
        "weather": pa.array([WEATHER[i] for i in weather], pa.string()),
        "courier_rating": pa.array(rating),
        "traffic_index": pa.array(traffic),
        "delivery_minutes": pa.array(np.round(np.maximum(minutes, 5.0), 2)),
    }
    for name, share in MISSING_SHARE.items():
        hidden = rng.random(n) < share * missing_fraction
        columns[name] = pa.array(columns[name].to_pylist(), columns[name].type, mask=hidden)
    dirty = rng.random(n) < dirty_fraction
    if dirty.any():
        columns["distance_km"] = pa.array(np.where(dirty, -1.0, distance))
    return pa.table(columns).cast(arrow_schema())


def _hour_weights() -> np.ndarray:
    hours = np.arange(24)
    weights = 0.2 + np.exp(-((hours - 12.5) ** 2) / 4.0) + 1.4 * np.exp(-((hours - 19) ** 2) / 5.0)
    return np.asarray(weights / weights.sum())


def write_deliveries(
    output: Path,
    rows: int = DEFAULT_ROWS,
    files: int = DEFAULT_FILES,
    seed: int = DEFAULT_SEED,
    missing_fraction: float = DEFAULT_MISSING_FRACTION,
    dirty_fraction: float = DEFAULT_DIRTY_FRACTION,
) -> Path:
    """Write ``rows`` rows as ``files`` Parquet files ``part-NNNNN.parquet`` into ``output``
    (replaced as a whole, renamed into place); return it."""
    if rows < files or files < 1:
        raise UsageError(f"--rows={rows} --files={files}: expected 1 <= files <= rows")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex}"
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        per_file = math.ceil(rows / files)
        for index, start in enumerate(range(0, rows, per_file)):
            count = min(per_file, rows - start)
            table = generate(count, seed, start, missing_fraction, dirty_fraction)
            pq.write_table(table, tmp / f"part-{index:05d}.parquet", row_group_size=65536)
        if output.exists():
            os.rename(output, old)
        os.rename(tmp, output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return output
