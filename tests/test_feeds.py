"""Feeding Arrow columns to TensorFlow: string columns as buffers, the demo's product codes."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from batch.core.dictionaries import dictionary_indices
from batch.core.errors import ModelError
from batch.engine.scorer import dictionary_feed, string_feed
from batch.model.loading import ServingFunction, import_tensorflow

VALUES = ["PL-GOLD 07", "", "é€ü", "a" * 300, "x", "", "AUTO-STD 12;rm -rf", "tab\there"]


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory) -> ServingFunction:
    """A real SavedModel whose serving signature returns its string input unchanged."""
    import_tensorflow()
    import tensorflow as tf

    class Echo(tf.Module):
        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="s"),
                tf.TensorSpec([None], tf.float32, name="x"),
            ]
        )
        def serve(self, s: Any, x: Any) -> dict[str, Any]:
            return {"echo": tf.identity(s), "x": x * 2.0}

    module = Echo()
    path = tmp_path_factory.mktemp("echo") / "model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return ServingFunction(tf, path, "echo")


def _round_trip(echo: ServingFunction, column: pa.Array) -> list[bytes]:
    x = np.arange(len(column), dtype=np.float32)
    out = echo({"s": string_feed(column), "x": x})
    assert np.array_equal(out["x"], x * 2)
    return list(out["echo"])


def test_the_signature_is_described_from_the_saved_model(echo: ServingFunction) -> None:
    assert {n: (i.dtype, i.shape) for n, i in echo.signature.inputs.items()} == {
        "s": ("string", (None,)),
        "x": ("float32", (None,)),
    }
    assert echo.signature.outputs["echo"].dtype == "string"


@pytest.mark.parametrize(
    ("start", "length"),
    [(0, len(VALUES)), (2, 3), (1, 1), (5, 0), (len(VALUES) - 1, 1), (0, 0)],
)
def test_string_columns_reach_tensorflow_value_for_value(
    echo: ServingFunction, start: int, length: int
) -> None:
    column = pa.array(VALUES, pa.string()).slice(start, length)
    expected = [v.encode() for v in VALUES[start : start + length]]
    assert _round_trip(echo, column) == expected


def test_all_empty_strings_and_a_large_batch(echo: ServingFunction) -> None:
    assert _round_trip(echo, pa.array(["", "", ""], pa.string())) == [b"", b"", b""]
    many = [f"employer-{i % 977}" for i in range(70_000)]
    assert _round_trip(echo, pa.array(many, pa.string()).slice(1234)) == [
        v.encode() for v in many[1234:]
    ]


@pytest.mark.parametrize("start", [0, 3])
@pytest.mark.parametrize("binary", [False, True])
def test_a_dictionary_column_reaches_tensorflow_as_its_decoded_values(
    echo: ServingFunction, start: int, binary: bool
) -> None:
    """Fed from its dictionary (values the rows never use, empty and multi-byte values, a
    sliced column and dictionary): each row gets its own value."""
    rows = [VALUES[i % 5 + 2] for i in range(40)]
    dictionary = pa.array(["unused", *VALUES], pa.binary() if binary else pa.string())
    indices = pa.array([VALUES.index(v) + 1 for v in rows], pa.int32())
    column = pa.DictionaryArray.from_arrays(indices, dictionary.slice(0)).slice(start)
    assert pa.types.is_dictionary(column.type) and column.offset == start
    x = np.arange(len(column), dtype=np.float32)
    out = echo({"s": dictionary_feed(column.dictionary, dictionary_indices(column)), "x": x})
    assert list(out["echo"]) == [v.encode() for v in rows[start:]]


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
    # Called eagerly it leaves nothing in the global graph for a later tf.Transform
    # analysis in this process to trip over (its schema override is for tracing only).
    from tensorflow_transform import schema_inference

    collection = tf.compat.v1.get_default_graph().get_collection(
        schema_inference._TF_METADATA_TENSOR_COLLECTION
    )
    assert collection == []


def _save(path: Any, spec_shape: list[int | None], signature: str) -> Any:
    import_tensorflow()
    import tensorflow as tf

    class Model(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec(spec_shape, tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x + 1.0}

    module = Model()
    tf.saved_model.save(module, str(path), signatures={signature: module.serve})
    return tf


def test_a_model_without_serving_default_is_refused_naming_what_it_has(tmp_path: Any) -> None:
    tf = _save(tmp_path / "m", [None], "predict")
    with pytest.raises(
        ModelError, match=r"it has no signature 'serving_default'; its signatures are predict\."
    ):
        ServingFunction(tf, tmp_path / "m", "m@1")


def test_an_input_of_rank_three_is_refused_naming_its_shape(tmp_path: Any) -> None:
    tf = _save(tmp_path / "m", [None, 3, 2], "serving_default")
    with pytest.raises(
        ModelError,
        match=r"input 'x' has shape \[None, 3, 2\]; batchscore feeds an input of shape \[None\] "
        r"or \[None, 1\] from a plain column and \[None, k\] from a fixed-size list column",
    ):
        ServingFunction(tf, tmp_path / "m", "m@1")


def test_a_damaged_saved_model_names_the_file(tmp_path: Any) -> None:
    tf = _save(tmp_path / "m", [None], "serving_default")
    pb = tmp_path / "m" / "saved_model.pb"
    pb.write_bytes(pb.read_bytes()[:100])
    with pytest.raises(ModelError, match=r"m@1 .*cannot read saved_model.pb"):
        ServingFunction(tf, tmp_path / "m", "m@1")
    pb.unlink()
    with pytest.raises(ModelError, match=r"cannot read saved_model.pb"):
        ServingFunction(tf, tmp_path / "m", "m@1")


def test_numbers_are_fed_as_they_are(tmp_path: Any) -> None:
    tf = _save(tmp_path / "m", [None], "serving_default")
    function = ServingFunction(tf, tmp_path / "m", "m@1")
    x = np.array([0.5, -2.0, 1e30], dtype=np.float32)
    assert np.array_equal(function({"x": x})["y"], x + 1.0)
