"""A model's string work run once per distinct value (batch.model.distinct): real
SavedModels exported the usual ways, fed from Arrow dictionaries, compared output for
output with the same SavedModel called row by row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch.core.dictionaries import dictionary_indices
from batch.engine.inputs import find_input_files, open_parquet
from batch.engine.scorer import BatchScorer, dictionary_feed, string_feed
from batch.model.loading import (
    PER_VALUE_ENV,
    PER_VALUE_MIN_ROWS,
    Feed,
    LoadedModel,
    PerValueCall,
    ServingFunction,
    import_tensorflow,
    per_value_pays,
    plan_model_rows,
)
from tests.conftest import TrainedModel, score_in_a_new_process
from tests.model_zoo import CITIES, build_keras3_lookup_model, build_tf_keras_model

# Odd values a real column holds: empty, padded, mixed case, non-ASCII, long, a control
# character; the dictionaries below also hold values no row uses.
ODD = ["paris", " Paris ", "LYON", "", "é€ü", "x" * 300, "tab\there", "nice", "brest "]


@pytest.fixture(scope="module")
def tf() -> Any:
    import_tensorflow()
    import tensorflow

    return tensorflow


@pytest.fixture(scope="module")
def lookup_module(tf: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tf.Module as a tf.Transform graph writes one: strip and upper-case a city, look
    it up in a vocabulary (OOV: a hash bucket after it), scale a number; beside the
    row-wise score, outputs that read other rows (minus the batch's mean), mix two string
    inputs (a lookup of their join) and broadcast one input against itself."""

    class Lookup(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            keys = tf.constant(["PARIS", "LYON", "NICE"])
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, tf.constant([0, 1, 2], tf.int64)), -1
            )
            pairs = tf.constant(["PARIS|A", "LYON|B"])
            self.pairs = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(pairs, tf.constant([7, 9], tf.int64)), 0
            )

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="city"),
                tf.TensorSpec([None], tf.string, name="grade"),
                tf.TensorSpec([None], tf.float32, name="x"),
            ]
        )
        def serve(self, city: Any, grade: Any, x: Any) -> dict[str, Any]:
            cleaned = tf.strings.upper(tf.strings.strip(city))
            ids = self.table.lookup(cleaned)
            oov = tf.strings.to_hash_bucket_fast(cleaned, 4) + 3
            ids = tf.where(ids < 0, oov, ids)
            with tf.control_dependencies([tf.debugging.assert_less(x, 1e6)]):
                score = tf.cast(ids, tf.float32) * 0.5 + x
            pair = self.pairs.lookup(tf.strings.join([cleaned, grade], separator="|"))
            as_float = tf.cast(ids, tf.float32)
            outer = tf.reduce_sum(as_float + tf.reshape(as_float, [-1, 1]), axis=1)
            return {
                "score": score,
                "centered": score - tf.reduce_mean(score),
                "pair": pair,
                "outer": outer,
                "length": tf.strings.length(city),
            }

    module = Lookup()
    path = tmp_path_factory.mktemp("lookup") / "model"
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def _encoded(values: list[str], indices: np.ndarray) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices, pa.int32()), pa.array(values))


def _feed(column: pa.Array) -> Feed:
    if isinstance(column, pa.DictionaryArray):
        return dictionary_feed(column.dictionary, dictionary_indices(column))
    return string_feed(column)


def _same_outputs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_a_modules_string_work_runs_once_per_distinct_value(tf: Any, lookup_module: Path) -> None:
    by_value = ServingFunction(tf, lookup_module, "lookup")
    by_row = ServingFunction(tf, lookup_module, "lookup", per_value=False)
    # strip, upper, the lookup, its comparison, the hash and its offset, the where, ...
    assert by_value.per_value_ops["city"] >= 6
    assert by_row.per_value_ops == {}
    rng = np.random.default_rng(3)
    for rows in (1, 7, 5000):
        city = _encoded(ODD, rng.integers(0, len(ODD) - 2, rows))  # the last two unused
        grade = _encoded(["A", "B", "C"], rng.integers(0, 3, rows))
        feeds = {
            "city": _feed(city),
            "grade": _feed(grade),
            "x": rng.normal(size=rows).astype(np.float32),
        }
        _same_outputs(by_value(feeds), by_row(feeds))
        # the same rows decoded (fed one value a row): the original graph
        plain = {**feeds, "city": _feed(city.dictionary_decode())}
        _same_outputs(by_value(plain), by_row(feeds))
        # mixed: one input from its dictionary, the other decoded
        mixed = {**feeds, "grade": _feed(grade.dictionary_decode())}
        _same_outputs(by_value(mixed), by_row(feeds))
    assert by_value.per_value_ops["city"] >= 6  # checked on the first batch, still on
    expected = {"PARIS": 0.0, "LYON": 1.0}
    out = by_value(
        {
            "city": _feed(_encoded([" paris", "Lyon "], np.array([1, 0, 0]))),
            "grade": _feed(_encoded(["A", "B"], np.array([1, 0, 1]))),
            "x": np.zeros(3, np.float32),
        }
    )
    assert list(out["score"]) == [expected["LYON"] * 0.5, 0.0, 0.0]
    assert list(out["pair"]) == [9, 7, 0]  # LYON|B, PARIS|A, PARIS|B (unknown: 0)


def _unique_module(tf: Any, path: Path, *, escape: bool) -> Path:
    """A tf.Module that does its string work once per distinct value of the batch, the
    usual TensorFlow way (the demo's product codes do): ``tf.unique``, the work on the
    distinct strings (strip, upper-case, a regex, a hash), gathered back to the rows by
    the unique's indices, then more per row (a vocabulary lookup of the gathered family).
    ``escape``: the distinct values and the indices are also read otherwise (how many
    distinct values the batch holds; the indices themselves), which only the batch's own
    unique gives: the rewrite must then leave the unique per row."""

    class Codes(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            keys = tf.constant(["PL", "CC", "MORT"])
            self.families = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(keys, tf.constant([0, 1, 2], tf.int64)), -1
            )

        @tf.function(
            input_signature=[
                tf.TensorSpec([None], tf.string, name="code"),
                tf.TensorSpec([None], tf.float32, name="x"),
            ]
        )
        def serve(self, code: Any, x: Any) -> dict[str, Any]:
            distinct, row_of = tf.unique(tf.strings.strip(code))
            cleaned = tf.strings.upper(distinct)
            family = tf.strings.regex_replace(cleaned, r"^([^-\s]*).*$", r"\1")
            hashed = tf.gather(tf.strings.to_hash_bucket_fast(cleaned, 10), row_of)
            family_id = self.families.lookup(tf.gather(family, row_of))
            outputs = {
                "family_id": family_id,
                "score": tf.cast(family_id * 10 + hashed, tf.float32) + x,
                "length": tf.gather(tf.strings.length(distinct), row_of),
            }
            if escape:
                outputs["distinct"] = tf.fill(tf.shape(x), tf.size(distinct))
                outputs["row_of"] = row_of
            return outputs

    module = Codes()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def test_a_graphs_own_unique_pass_runs_on_the_dictionarys_values(tf: Any, tmp_path: Path) -> None:
    """``tf.unique`` then a gather back by its indices: the unique is the dictionary's,
    the work between (and the lookup after the gather) runs once per distinct value."""
    model = _unique_module(tf, tmp_path / "codes", escape=False)
    by_value = ServingFunction(tf, model, "codes")
    by_row = ServingFunction(tf, model, "codes", per_value=False)
    # strip, the unique, upper, the regex, the hash, three gathers back, the lookup
    assert by_value.per_value_ops["code"] >= 9
    codes = ["pl-gold 07", " PL-silver", "cc", "Mort-1 x", "", "é-€", "pl-gold 07 ", "zz"]
    rng = np.random.default_rng(11)
    for rows in (1, 6, 4000):
        code = _encoded(codes, rng.integers(0, len(codes) - 2, rows))  # the last two unused
        feeds = {"code": _feed(code), "x": rng.normal(size=rows).astype(np.float32)}
        _same_outputs(by_value(feeds), by_row(feeds))
        plain = {**feeds, "code": _feed(code.dictionary_decode())}
        _same_outputs(by_value(plain), by_row(feeds))
    assert by_value._per_value is not None and by_value._per_value.state == "checked"
    out = by_value(
        {"code": _feed(_encoded(["x", " cc-1"], np.array([1, 1]))), "x": np.zeros(2, np.float32)}
    )
    assert list(out["family_id"]) == [1, 1] and list(out["length"]) == [4, 4]


def test_a_unique_whose_values_are_read_otherwise_stays_per_row(tf: Any, tmp_path: Path) -> None:
    """Where the batch's distinct values (their count) or the unique's indices reach an
    output other than through a gather back, they are the batch's own: the unique and what
    follows it run per row, the strip before it still once per distinct value."""
    model = _unique_module(tf, tmp_path / "codes", escape=True)
    by_value = ServingFunction(tf, model, "codes")
    by_row = ServingFunction(tf, model, "codes", per_value=False)
    # the strip alone (with the identities of the inlined function's input): not the
    # unique, nor the eight ops after it
    assert 1 <= by_value.per_value_ops["code"] <= 3
    codes = ["pl-gold 07", " PL-silver", "cc", "Mort-1 x", "unused", "unused too"]
    rng = np.random.default_rng(12)
    for rows in (1, 5, 3000):
        code = _encoded(codes, rng.integers(0, 4, rows))
        feeds = {"code": _feed(code), "x": rng.normal(size=rows).astype(np.float32)}
        _same_outputs(by_value(feeds), by_row(feeds))
    assert by_value._per_value is not None and by_value._per_value.state == "checked"


def test_an_empty_batch_is_scored_and_checks_nothing(
    tf: Any, lookup_module: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The load's call on no rows prepares the rewritten graph only (the graph as written
    is prepared by a batch that needs it, if one comes)."""
    function = ServingFunction(tf, lookup_module, "lookup")

    def as_written(*values: Any) -> Any:
        raise AssertionError("the graph as written was called")

    monkeypatch.setattr(function, "_run", as_written)
    assert function.prepare_first_call()
    nothing = np.zeros(0, np.int32)
    out = function(
        {
            "city": (b"", nothing, nothing, nothing),
            "grade": (b"", nothing, nothing, nothing),
            "x": np.zeros(0, np.float32),
        }
    )
    assert out["score"].shape == (0,)
    assert function._per_value is not None and function._per_value.state == "unchecked"


def test_keras_string_lookups_run_once_per_distinct_value(tf: Any, tmp_path: Path) -> None:
    """Keras 3's StringLookup + Embedding (``model.export``) and tf-keras's string input of
    ``Input(shape=(1,))`` (``model.save``), both of shape [None, 1]."""
    rng = np.random.default_rng(5)
    keras3 = build_keras3_lookup_model(tmp_path / "keras3")
    by_value = ServingFunction(tf, keras3, "keras3")
    assert by_value.per_value_ops["city"] >= 1
    by_row = ServingFunction(tf, keras3, "keras3", per_value=False)
    cities = [*CITIES, "unknown", ""]
    for rows in (3, 4000):
        feeds = {
            "city": _feed(_encoded(cities, rng.integers(0, len(cities), rows))),
            "x": rng.normal(size=(rows, 1)).astype(np.float32),
        }
        _same_outputs(by_value(feeds), by_row(feeds))

    tf_keras = build_tf_keras_model(tmp_path / "tf_keras")
    by_value = ServingFunction(tf, tf_keras, "tf_keras")
    assert by_value.per_value_ops["s"] >= 1  # the string's length, then its cast
    by_row = ServingFunction(tf, tf_keras, "tf_keras", per_value=False)
    rows = 3000
    feeds = {
        "s": _feed(_encoded(ODD, rng.integers(0, len(ODD), rows))),
        "x": rng.normal(size=(rows, 1)).astype(np.float32),
        "n": rng.integers(0, 9, (rows, 1)),
    }
    _same_outputs(by_value(feeds), by_row(feeds))


def test_the_demo_models_transform_scores_as_it_does_row_by_row(
    tf: Any, trained_model: TrainedModel
) -> None:
    """The tf.Transform graph the demo trains (vocabularies, hash buckets, regex clean-up):
    every batch of its data, read as a job reads it, scores the same by value and by row."""
    saved_model = Path(trained_model.model.saved_model_dir)
    by_value = ServingFunction(tf, saved_model, "demo")
    by_row = ServingFunction(tf, saved_model, "demo", per_value=False)
    strings = [n for n, i in by_value.signature.inputs.items() if i.dtype == "string"]
    assert strings and all(by_value.per_value_ops.get(name, 0) >= 3 for name in strings)
    scorer = BatchScorer(
        LoadedModel(trained_model.model, by_value.signature, by_value, 0.0), (), "t"
    )
    inputs = list(scorer.input_types)
    batches = 0
    for file in find_input_files(str(trained_model.data_dir)):
        for batch in open_parquet(file, scorer.takes_encoded).iter_batches(
            batch_size=1500, columns=inputs
        ):
            valid = pc.is_valid(batch.column(inputs[0]))
            for name in inputs[1:]:
                valid = pc.and_(valid, pc.is_valid(batch.column(name)))
            feeds = scorer.feeds(batch.filter(valid))
            assert any(len(feeds[name]) == 4 for name in strings)  # fed from dictionaries
            _same_outputs(by_value(feeds), by_row(feeds))
            batches += 1
    assert batches >= 4
    assert by_value._per_value is not None and by_value._per_value.state == "checked"


def test_a_batch_the_graph_refuses_raises_and_a_failed_rewrite_turns_off(
    tf: Any, lookup_module: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    function = ServingFunction(tf, lookup_module, "lookup@1")
    rows = 4
    feeds: dict[str, Feed] = {
        "city": _feed(_encoded(ODD, np.arange(rows))),
        "grade": _feed(_encoded(["A", "B"], np.array([0, 1, 0, 1]))),
        "x": np.array([0, 1, 2, 1e7], np.float32),  # the graph's own check refuses 1e7
    }
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"x < 1e6|assert"):
        function(feeds)
    assert function.per_value_ops  # the graph's own refusal is no fault of the rewrite
    feeds["x"] = np.zeros(rows, np.float32)
    expected = ServingFunction(tf, lookup_module, "lookup", per_value=False)(feeds)
    assert function._per_value is not None

    def out_of_memory(*values: Any) -> list[np.ndarray]:
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    monkeypatch.setattr(function._per_value, "_call", out_of_memory)
    with pytest.raises(tf.errors.ResourceExhaustedError):  # the scorer halves the batch
        function(feeds)
    assert function.per_value_ops

    def broken(*values: Any) -> list[np.ndarray]:
        raise tf.errors.InvalidArgumentError(None, None, "indices[3] = 9 is not in [0, 3)")

    monkeypatch.setattr(function._per_value, "_call", broken)
    _same_outputs(function(feeds), expected)  # answered row by row
    assert function.per_value_ops == {}
    assert "lookup@1" in caplog.text and "not in [0, 3)" in caplog.text
    _same_outputs(function(feeds), expected)


def test_a_disagreement_turns_it_off() -> None:
    """Should the graph fed by value ever disagree with itself fed row by row, the call
    says so (None: the caller calls the original graph) from then on."""

    def call(*values: Any) -> list[np.ndarray]:
        rows = values[3]  # a wrong graph: it tells each row by value from each row by row
        by_row = np.array_equal(rows, np.arange(len(rows)))
        return [rows.astype(np.float32) + (1 if by_row else 0)]

    per_value = PerValueCall(call, [("s", 0), ("s", 1), ("s", 2), ("s", 3)], {"s": 2}, "m@1")
    column = _encoded(["a", "b"], np.array([0, 1, 1]))
    feeds: dict[str, Feed] = {"s": _feed(column)}
    assert per_value(feeds) is None
    assert per_value.state == "off"
    assert per_value(feeds) is None
    assert per_value({"s": string_feed(column.dictionary_decode())}) is None


def test_only_a_large_enough_job_moves_the_work() -> None:
    try:
        plan_model_rows(100)
        assert not per_value_pays()
        plan_model_rows(PER_VALUE_MIN_ROWS)
        assert per_value_pays()
        plan_model_rows(None)  # not known (a cluster's worker): large
        assert per_value_pays()
    finally:
        plan_model_rows(None)


@pytest.mark.slow
@pytest.mark.parametrize(
    "runner",
    [
        ("--runner=DirectRunner", "--in_process_rows=0"),
        ("--runner=PySparkRunner", "--spark_master=local[2]"),
    ],
    ids=["beam", "spark"],
)
def test_a_job_scores_the_same_with_and_without_the_rewrite(
    trained_model: TrainedModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    runner: tuple[str, ...],
) -> None:
    """The demo's data scored by ``jobs.score`` in a new process, on Beam (DirectRunner,
    in memory) and on Spark (local[2]: the model loaded in Spark's Python workers, which
    inherit the environment), with the rewrite forced on and off (BATCHSCORE_PER_VALUE):
    the same predictions, row for row; and a job of these few rows, left to choose, does
    not rewrite (the plan's 20,000 rows are below PER_VALUE_MIN_ROWS)."""
    tables = {}
    for mode in ("on", "off", "auto"):
        monkeypatch.setenv(PER_VALUE_ENV, mode)
        out = tmp_path / mode
        code, stderr, _ = score_in_a_new_process(
            trained_model.data_dir,
            out,
            *runner,
            "--max_error_rate=0.01",  # the demo's data holds 100 dirty rows
            "-v",
            model=trained_model,
        )
        assert code == 0, stderr
        if runner[0] == "--runner=DirectRunner":  # Spark's workers log to their own stderr
            assert ("once per distinct value" in stderr) == (mode == "on"), stderr[-2000:]
        (manifest,) = out.glob("**/_MANIFEST.json")
        per_value = json.loads(manifest.read_text())["model"]["serving"]["per_value"]
        if mode == "on":  # every part, in Beam's process or Spark's Python workers
            assert per_value["parts"] >= 4 and per_value["ops"]["employer_id"] >= 3, per_value
        else:
            assert per_value == {"ops": {}, "parts": 0}
        parts = sorted(out.glob("**/predictions/*.parquet"))
        table = pa.concat_tables(pq.read_table(part) for part in parts)
        key = table.schema.names[0]
        tables[mode] = table.drop_columns(["run_id"]).sort_by(key)
    assert tables["on"].num_rows > 19_000
    assert tables["on"].equals(tables["off"])
    assert tables["auto"].equals(tables["off"])
