"""Feeding Arrow columns to TensorFlow: string columns as buffers, the demo's product codes."""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pytest

from batch.scorer import import_tensorflow, string_tensor

VALUES = ["PL-GOLD 07", "", "é€ü", "a" * 300, "x", "", "AUTO-STD 12;rm -rf", "tab\there"]


def _round_trip(column: pa.Array) -> list[bytes]:
    tensor = string_tensor(column)
    assert tensor.shape == (len(column),)
    return list(tensor.numpy())


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, len(VALUES)), (2, 3), (1, 1), (5, 0), (len(VALUES) - 1, 1), (0, 0)],
)
def test_string_columns_reach_tensorflow_value_for_value(start: int, length: int) -> None:
    column = pa.array(VALUES, pa.string()).slice(start, length)
    expected = [v.encode() for v in VALUES[start : start + length]]
    assert _round_trip(column) == expected


def test_all_empty_strings_and_a_large_batch() -> None:
    assert _round_trip(pa.array(["", "", ""], pa.string())) == [b"", b"", b""]
    many = [f"employer-{i % 977}" for i in range(70_000)]
    assert _round_trip(pa.array(many, pa.string()).slice(1234)) == [v.encode() for v in many[1234:]]


def test_product_code_parts_match_the_per_row_regular_expressions() -> None:
    """Parsing once per distinct code gives what the two regexes give on every row."""
    from transforms.loans import PRODUCT_HASH_BUCKETS, product_code_parts

    tf = import_tensorflow()
    codes = [
        "PL-GOLD 07",
        " pl-gold 07 ",
        "PL GOLD",
        "PL",
        "-GOLD",
        "PL-",
        "A-B-C D",
        "A\tB-C",
        "",
        "AUTO-STD 12;rm -rf",
        "PL-GOLD 07€",
        "PL-GOLD 07",
    ] * 3
    family, tier, hashed = product_code_parts(tf.constant(codes))
    for index, raw in enumerate(codes):
        code = raw.strip().upper()
        assert family.numpy()[index].decode() == re.sub(r"^([^-\s]*).*$", r"\1", code)
        assert tier.numpy()[index].decode() == re.sub(r"^[^-]*-?([^\s]*).*$", r"\1", code)
    expected_hash = tf.strings.to_hash_bucket_fast(
        tf.strings.upper(tf.strings.strip(tf.constant(codes))), PRODUCT_HASH_BUCKETS
    )
    assert np.array_equal(hashed.numpy(), expected_hash.numpy())
