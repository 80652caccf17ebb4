"""batch.release.routing: the key hash that decides compare samples and canary shares."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batch.core.errors import UsageError
from batch.release.routing import in_share, key_hash, reference_key_hash, share_threshold

PROJECT = Path(__file__).resolve().parent.parent

# Pinned values: a change here changes every user's split, so it must be deliberate
# (a new ROUTING_HASH version), never an accident of a refactoring or a library upgrade.
GOLDEN = {
    (1,): 0x5E41AB087439611E,
    ("loan-00000001",): 0x4E5A0A57368B6ACC,
    ("",): 0x238275BC38FCBE91,
    (None,): 0x63CFC62A2B097592,
    (1, "a"): 0x72F372FDF9DB28CB,
}


def _keys(n: int) -> pa.Table:
    ids = np.arange(n)
    return pa.table(
        {
            "loan_id": pa.array([f"loan-{i:08d}" for i in ids]),
            "n": pa.array(ids, pa.int64()),
            "dt": pa.array([f"2026-01-0{1 + i % 7}" for i in ids]),
        }
    )


def test_pinned_values() -> None:
    for values, expected in GOLDEN.items():
        assert reference_key_hash(values) == expected, values
        table = pa.table({f"k{i}": [v] for i, v in enumerate(values)})
        assert int(key_hash(table, table.schema.names)[0]) == expected, values


def test_vectorized_equals_the_reference_for_every_supported_type() -> None:
    table = pa.table(
        {
            "i": pa.array([1, -5, None, 2**62, 0, 7], pa.int64()),
            "u": pa.array([1, 5, None, 2**31, 0, 7], pa.uint32()),
            "s": pa.array(["x", "", None, "héllo wörld", "loan-000123", "a" * 300]),
            "f": pa.array([0.0, -0.0, float("nan"), None, 1.5, -2.25]),
            "b": pa.array([True, False, None, True, False, True]),
            "y": pa.array([b"\x00", b"", None, b"\xff\xfe", b"abc", b"z"]),
        }
    )
    for names in (["i"], ["u"], ["s"], ["f"], ["b"], ["y"], list(table.schema.names)):
        expected = [
            reference_key_hash([table.column(c)[row].as_py() for c in names])
            for row in range(table.num_rows)
        ]
        assert [int(h) for h in key_hash(table, names)] == expected, names


def test_same_keys_same_assignment_whatever_the_batching_order_and_types() -> None:
    table = _keys(5000)
    whole = in_share(table, ["loan_id", "dt"], 0.3)
    for size in (1, 7, 1000, 4096):
        parts = [
            in_share(batch, ["loan_id", "dt"], 0.3)
            for batch in table.to_batches(max_chunksize=size)
        ]
        assert np.array_equal(np.concatenate(parts), whole), size
    order = np.random.default_rng(5).permutation(table.num_rows)
    shuffled = table.take(pa.array(order))
    assert np.array_equal(in_share(shuffled, ["loan_id", "dt"], 0.3), whole[order])
    # What Spark may hand over instead of the files' types: large strings, narrower ints,
    # dictionary-encoded strings.
    other = pa.table(
        {
            "loan_id": table.column("loan_id").cast(pa.large_string()).dictionary_encode(),
            "dt": table.column("dt").cast(pa.large_string()),
        }
    )
    assert np.array_equal(in_share(other, ["loan_id", "dt"], 0.3), whole)
    narrow = pa.table({"n": table.column("n").cast(pa.int32())})
    assert np.array_equal(in_share(narrow, ["n"], 0.3), in_share(table, ["n"], 0.3))


def test_fraction_is_kept_within_tolerance_and_shares_nest() -> None:
    table = _keys(20_000)
    previous = np.zeros(table.num_rows, dtype=bool)
    for fraction in (0.01, 0.1, 0.5, 0.9):
        mask = in_share(table, ["loan_id"], fraction)
        # Binomial sd at 20k rows is at most 0.0036; 4 sd.
        assert abs(mask.mean() - fraction) < 0.015, (fraction, mask.mean())
        assert not (previous & ~mask).any(), "a larger share contains every smaller one"
        previous = mask
    assert not in_share(table, ["loan_id"], 0.0).any()
    assert in_share(table, ["loan_id"], 1.0).all()


def test_stable_across_processes() -> None:
    """No per-process salt (unlike Python's hash()): a fresh interpreter agrees."""
    code = (
        "import pyarrow as pa; from batch.release.routing import key_hash;"
        "t = pa.table({'k': [f'loan-{i}' for i in range(50)]});"
        "print(','.join(str(int(h)) for h in key_hash(t, ['k'])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "123", "PYTHONPATH": str(PROJECT)},
    ).stdout.strip()
    here = key_hash(pa.table({"k": [f"loan-{i}" for i in range(50)]}), ["k"])
    assert out == ",".join(str(int(h)) for h in here)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: share_threshold(1.5), "must be in [0, 1], found 1.5"),
        (lambda: key_hash(pa.table({"k": [1]}), []), "at least one key column"),
        (lambda: key_hash(pa.table({"k": [1]}), ["nope"]), "key column 'nope' is not in"),
        (
            lambda: key_hash(pa.table({"k": pa.array([[1]])}), ["k"]),
            "key column 'k' has type list<item: int64>",
        ),
    ],
)
def test_bad_routing_requests(call: object, message: str) -> None:
    with pytest.raises(UsageError, match=__import__("re").escape(message)):
        call()  # type: ignore[operator]
