"""batch.core.masks: row masks between numpy and Arrow by packing bits, checked against
pyarrow's own (value by value) conversions on slices, nulls, chunks and odd lengths."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from batch.core.masks import false_rows, to_arrow, to_numpy, valid_rows

_maybe_bools = st.lists(st.one_of(st.none(), st.booleans()), max_size=200)


def _slow_mask(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(array, False).to_numpy(zero_copy_only=False), dtype=bool)


def _slow_valid(column: pa.Array) -> np.ndarray:
    return np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)


@settings(max_examples=200, deadline=None)
@given(values=_maybe_bools, start=st.integers(0, 40), length=st.integers(0, 200))
def test_to_numpy_and_valid_rows_equal_pyarrow_on_any_slice(
    values: list[bool | None], start: int, length: int
) -> None:
    array = pa.array(values, pa.bool_()).slice(start, length)
    mask = to_numpy(array)
    assert mask.dtype == bool and mask.tolist() == _slow_mask(array).tolist()
    assert valid_rows(array).tolist() == _slow_valid(array).tolist()
    assert false_rows(array).tolist() == _slow_mask(pc.invert(array)).tolist()


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.booleans(), max_size=300), start=st.integers(0, 40))
def test_to_arrow_equals_pa_array(values: list[bool], start: int) -> None:
    mask = np.array(values, dtype=bool)[start:]
    converted = to_arrow(mask)
    assert converted.equals(pa.array(mask)) and converted.null_count == 0
    assert to_numpy(converted).tolist() == mask.tolist()
    # A strided view (not contiguous) packs the same.
    assert to_arrow(mask[::2]).equals(pa.array(mask[::2]))


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-5, 5)), max_size=150),
    start=st.integers(0, 20),
)
def test_valid_rows_of_other_types(values: list[int | None], start: int) -> None:
    for array in (
        pa.array(values, pa.int64()),
        pa.array([None if v is None else str(v) for v in values], pa.string()),
        pa.array([None if v is None else str(v) for v in values], pa.string()).dictionary_encode(),
    ):
        sliced = array.slice(start)
        assert valid_rows(sliced).tolist() == _slow_valid(sliced).tolist()


def test_edge_cases() -> None:
    assert to_numpy(pa.array([], pa.bool_())).tolist() == []
    assert to_arrow(np.zeros(0, dtype=bool)).equals(pa.array([], pa.bool_()))
    assert to_numpy(pa.array([None, None], pa.bool_())).tolist() == [False, False]
    assert false_rows(pa.array([None, None], pa.bool_())).tolist() == [False, False]
    assert false_rows(pa.array([], pa.bool_())).tolist() == []
    assert valid_rows(pa.nulls(3)).tolist() == [False, False, False]
    chunked = pa.chunked_array([[True, None], [], [False, True]], pa.bool_())
    assert to_numpy(chunked).tolist() == [True, False, False, True]
    assert to_numpy(pa.chunked_array([], pa.bool_())).tolist() == []
    # A union keeps its nulls in its children, not in a bitmap of its own.
    union = pa.UnionArray.from_sparse(
        pa.array([0, 1, 0], pa.int8()), [pa.array([1, None, None]), pa.array(["a", None, "c"])]
    )
    assert valid_rows(union).tolist() == _slow_valid(union).tolist()
    with pytest.raises(TypeError, match="expected a boolean array"):
        to_numpy(pa.array([1, 2]))
    # A mask from numpy's comparisons filters as pa.array's would.
    column = pa.array(range(10))
    keep = np.arange(10) % 3 == 0
    assert column.filter(to_arrow(keep)).to_pylist() == [0, 3, 6, 9]
