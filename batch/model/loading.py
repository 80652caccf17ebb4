"""Loading a SavedModel once per process: verified first, then imported into a session.

TensorFlow is imported lazily, on first load, so that command lines can check
their arguments before paying for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch.core.errors import ModelError
from batch.core.fsutil import file_sha256
from batch.core.imports import import_without, start_up
from batch.model.distinct import per_value_graph
from batch.model.examples import parsed_features
from batch.model.native import (
    hold_stderr,
    load_tensorflow_libraries,
    release_stderr,
    wait_for_tensorflow_libraries,
)
from batch.model.remote import local_model
from batch.model.resolved import ResolvedModel
from batch.model.signature import (
    DEFAULT_CHOICE,
    DEFAULT_SIGNATURE,
    SignatureChoice,
    SignatureInfo,
    TensorInfo,
    ragged_inputs,
)
from batch.model.signing import TrustPolicy, VerificationResult, verify_model
from batch.model.snapshot import private_copy
from batch.model.tflite import TENSORFLOW, TFLiteFunction, backend_description

log = logging.getLogger(__name__)

SERVING_SIGNATURE = DEFAULT_SIGNATURE
PER_VALUE_SCOPE = "batchscore_per_value"

KERAS_NOT_LOADED = "by batchscore while TensorFlow imports; tf.keras loads it on first use"


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ logging to warnings and above."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow() -> Any:
    """Import TensorFlow without its start-up chatter on the terminal.

    TensorFlow 2.21 prints CUDA and oneDNN notices through absl before
    TF_CPP_MIN_LOG_LEVEL is read, straight to file descriptor 2. They are caught
    here; anything else it prints is passed on. Keras is left out of the import
    (batch.core.imports); ``tf.keras`` or ``import keras`` loads it when used.
    """
    with _TF_IMPORT:  # a module in sys.modules may still be importing in another thread
        if _TF_IMPORTED:
            return sys.modules["tensorflow"]
        quiet_tensorflow()
        hold_stderr()
        try:
            # Its native libraries first, loaded without the GIL (batch.model.native):
            # the process's other threads run on meanwhile.
            load_tensorflow_libraries()
            wait_for_tensorflow_libraries()
            # Keras, which TensorFlow imports eagerly (about 1 s of GIL time), is not
            # needed: the session loader below, TF Serving's, revives no Python objects,
            # so Keras 3, tf-keras and TFX exports load and run alike without it.
            tf = import_without("tensorflow", ("keras", "tf_keras"), KERAS_NOT_LOADED)
            tf.config.list_physical_devices()
        finally:
            release_stderr()
        _TF_IMPORTED.append(True)
    return tf


_TF_IMPORT = threading.Lock()
_TF_IMPORTED: list[bool] = []  # [True] once import_tensorflow has imported it


# Model calls a worker process makes at once unless told otherwise (the scoring threads of
# a split, batch.engine.job).
MODEL_CALLS_AT_ONCE = 2
# (calls at once, the cores they share or None for every core this process may use): how
# TensorFlow's thread pools are sized at this process's first model load.
_THREAD_PLAN: list[tuple[int, int | None]] = [(MODEL_CALLS_AT_ONCE, None)]


def plan_model_threads(calls_at_once: int, cpus: int | None = None) -> None:
    """Tell this process how its model calls run: ``calls_at_once`` concurrent calls that
    share ``cpus`` cores (None: every core the process may run on). TensorFlow sizes its
    thread pools once per process, at the first session (:func:`session_config`): plan
    before the first model load; a plan made later changes nothing."""
    _THREAD_PLAN[0] = (max(1, calls_at_once), cpus)


PER_VALUE_MIN_ROWS = 2_000_000
"""The fewest rows a process must be about to score for its model's string work to be
moved onto distinct values (batch.model.distinct): the rewrite takes about 0.3 s at the
load, and saves about 0.15 CPU s per 1M rows of the demo model's dictionary-encoded input
(docs/benchmarks.md, eighteenth look)."""

# The rows this process's model calls are about to score (None: not known).
_ROWS_PLAN: list[int | None] = [None]


def plan_model_rows(rows: int | None) -> None:
    """Tell this process how many rows its model calls will score: a job plans its whole
    input's rows, in the driver and in every worker (None: not known, as for a library
    caller that plans nothing). Below :data:`PER_VALUE_MIN_ROWS` the model's string work
    is not moved onto distinct values; plan before the first load."""
    _ROWS_PLAN[0] = rows


PER_VALUE_ENV = "BATCHSCORE_PER_VALUE"
"""``off``: never move a model's string work onto distinct values; ``on``: always, however
few the rows; unset or ``auto``: by :func:`plan_model_rows`. Read by each process at its
first load (a local worker process inherits it; set it on a cluster's workers)."""


def per_value_pays() -> bool:
    """Whether this process moves its model's string work onto distinct values: by
    :data:`PER_VALUE_ENV`, else by its plan (:func:`plan_model_rows`)."""
    choice = os.environ.get(PER_VALUE_ENV, "auto").strip().lower()
    if choice in ("on", "off"):
        return choice == "on"
    rows = _ROWS_PLAN[0]
    return rows is None or rows >= PER_VALUE_MIN_ROWS


def usable_cpus() -> int:
    """The cores this process may run on (its CPU affinity, as a container or taskset
    limits it), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity on this platform
        return os.cpu_count() or 1


def intra_op_threads() -> int:
    """Threads one op of a model call may use under this process's plan: the cores shared
    out among the calls at once, at least one; 0 (TensorFlow's choice) when
    TF_NUM_INTRAOP_THREADS is set, which TensorFlow then reads."""
    if os.environ.get("TF_NUM_INTRAOP_THREADS"):
        return 0
    calls, cpus = _THREAD_PLAN[0]
    return max(1, (cpus or usable_cpus()) // calls)


def session_config(tf: Any) -> Any:
    """The options of the session a model runs in. TensorFlow's defaults suit one call
    at a time on an idle machine: every op may use every core, and idle pool threads
    spin-wait for the next op. A worker here makes several calls at once beside threads
    that read, check and write, so each op uses its share of the cores
    (:func:`intra_op_threads`) and idle threads sleep; on 2 cores the 10M-row job's wall
    time fell by about 5%, the model-only limit's by about 8% (docs/benchmarks.md)."""
    config = tf.compat.v1.ConfigProto()
    config.intra_op_parallelism_threads = intra_op_threads()
    config.experimental.disable_thread_spinning = True
    return config


StringFeed = tuple[bytes, np.ndarray, np.ndarray]
"""A string input column as :class:`ServingFunction` takes it: bytes, each value's int32
start in them and each value's int32 length (batch.engine.scorer builds it)."""

DistinctFeed = tuple[bytes, np.ndarray, np.ndarray, np.ndarray]
"""A dictionary-encoded string input column: its distinct values as a :data:`StringFeed`,
then each row's int32 index into them (batch.engine.scorer.dictionary_feed)."""

Feed = np.ndarray | StringFeed | DistinctFeed
"""One input column: a numpy array, or a string column as a :data:`StringFeed` or a
:data:`DistinctFeed`."""


def session_callable(session: Any, fetches: list[Any], feed_list: list[Any]) -> Any:
    """``session.make_callable(fetches, feed_list=feed_list)`` without its per-call Python.

    In TensorFlow 2, a callable made with a feed list is ``session.run`` with a feed dict:
    every call extends the graph, resolves, checks and converts each feed and fetch again
    (about 4 ms a call for the demo model's 36 feeds, 0.6 CPU s per 10M rows). Here the
    session takes the graph's nodes and the feeds and fetches are resolved once, when the
    callable is made (nodes added later are not its own); each call checks each value's
    shape against its placeholder's, as ``session.run`` does (a value of another shape is
    refused, not fed to ops that might take it), converts it to the placeholder's dtype
    and runs the step. Errors are TensorFlow's own (``tf.errors.OpError`` subclasses), as
    from a run."""
    session._extend_graph()
    feeds = [t._as_tf_output() for t in feed_list]
    outputs = [t._as_tf_output() for t in fetches]
    dtypes = [t.dtype.as_numpy_dtype for t in feed_list]
    shapes = [None if t.shape.rank is None else tuple(t.shape.as_list()) for t in feed_list]
    names = [t.name for t in feed_list]

    def call(*values: Any) -> list[np.ndarray]:
        feed: dict[Any, np.ndarray] = {}
        for output, value, dtype, shape, name in zip(
            feeds, values, dtypes, shapes, names, strict=True
        ):
            array = np.asarray(value, dtype=dtype)
            if shape is not None and (
                array.ndim != len(shape)
                or any(
                    want is not None and want != got
                    for want, got in zip(shape, array.shape, strict=True)
                )
            ):
                raise ValueError(
                    f"cannot feed a value of shape {array.shape} to {name}, which has shape "
                    f"{list(shape)}"
                )
            feed[output] = array
        return list(session._call_tf_sessionrun(None, feed, outputs, [], None))

    return call


def per_row(feed: StringFeed | DistinctFeed) -> StringFeed:
    """A string column's feed with a start and a length per row."""
    if len(feed) == 3:
        return feed
    values, starts, lengths, rows = feed
    return values, starts[rows], lengths[rows]


class ServingFunction:
    """A SavedModel's serving signature (``choice``: by default ``serving_default`` of the
    MetaGraph tagged ``serve``), run in a session as TensorFlow Serving runs it.

    The SavedModel's MetaGraph is imported into a graph of its own (the loader
    TF Serving uses, about 3x quicker to load than ``tf.saved_model.load``,
    which rebuilds every saved Python object). Each string input is fed as
    Arrow lays it out: bytes as one scalar and each value's start and length in
    them, cut into values by ``tf.strings.substr`` inside the graph (a
    dictionary-encoded column as its distinct values' bytes, each row pointing
    into them: its rows are never decoded; batch.engine.scorer). Handing TensorFlow a
    string column as numpy builds a Python object per value with the GIL held
    (about 50 ns a value, once the largest cost of feeding a batch); the cut
    runs in TensorFlow's kernels without the GIL (about 15 ns a value). A string input of
    shape [None, k] is cut from the flat values of its rows and reshaped in the graph.

    With ``per_value``, the string inputs' row-wise work (strip, case, vocabulary lookups,
    hash buckets: batch.model.distinct) also gets a rewritten copy of the graph, in the
    same session, that runs it once per distinct value of a column fed from its
    dictionary (:class:`PerValueCall`); other batches run the graph as written.

    Calls are thread-safe; the graph is finalized once loaded.
    """

    def __init__(
        self,
        tf: Any,
        saved_model_dir: Path,
        label: str,
        choice: SignatureChoice = DEFAULT_CHOICE,
        per_value: bool = True,
    ) -> None:
        self.label = label
        self._out_of_memory = (tf.errors.ResourceExhaustedError, MemoryError)
        meta_graph = _serving_meta_graph(tf, saved_model_dir, label, choice.tags)
        if choice.name not in meta_graph.signature_def:
            raise ModelError(
                f"model {label} ({saved_model_dir}): it has no signature '{choice.name}'; its "
                f"signatures are {', '.join(_public(meta_graph.signature_def)) or 'none'}. "
                "Choose one with --signature=NAME, or export the model with "
                f"tf.saved_model.save(obj, path, signatures={{'{choice.name}': fn}})"
            )
        signature_def = meta_graph.signature_def[choice.name]
        self.signature = _signature_info(tf, meta_graph, signature_def, label, choice)
        self.graph = tf.Graph()
        with self.graph.as_default():
            placeholders: list[Any] = []
            input_map: dict[str, Any] = {}
            string_inputs: list[str] = []
            cuts: dict[str, str] = {}  # a string input of one value a row -> its cut
            with tf.name_scope("batchscore_feed"):
                for name, info in self.signature.inputs.items():
                    if info.dtype != "string":
                        continue
                    data = tf.compat.v1.placeholder(tf.string, [], name=f"{name}_bytes")
                    starts = tf.compat.v1.placeholder(tf.int32, [None], name=f"{name}_starts")
                    lengths = tf.compat.v1.placeholder(tf.int32, [None], name=f"{name}_lengths")
                    cut = tf.strings.substr(data, starts, lengths)
                    if all(size == 1 for size in info.shape[1:]):
                        cuts[name] = cut.op.name
                    if len(info.shape) > 1:
                        cut = tf.reshape(cut, [-1, *info.shape[1:]])
                    input_map[signature_def.inputs[name].name] = cut
                    placeholders += [data, starts, lengths]
                    string_inputs.append(name)
            self.session = tf.compat.v1.Session(graph=self.graph, config=session_config(tf))
            # The loader logs that TF2 code should call tf.saved_model.load instead; this
            # is the loader TF Serving keeps using, so the notice is noise in job output.
            tf_log = logging.getLogger("tensorflow")
            level = tf_log.level
            tf_log.setLevel(logging.ERROR)
            try:
                tf.compat.v1.saved_model.load(
                    self.session,
                    list(choice.tags),
                    str(saved_model_dir),
                    input_map=input_map,
                )
            finally:
                tf_log.setLevel(level)
            numeric_inputs = [n for n in self.signature.inputs if n not in string_inputs]
            placeholders += [
                self.graph.get_tensor_by_name(signature_def.inputs[n].name) for n in numeric_inputs
            ]
            self._order = [*string_inputs, *numeric_inputs]
            self._strings = set(string_inputs)
            self._output_names = sorted(signature_def.outputs)
            fetches = [
                self.graph.get_tensor_by_name(signature_def.outputs[n].name)
                for n in self._output_names
            ]
            self._run = session_callable(self.session, fetches, placeholders)
            self._per_value: PerValueCall | None = None
            try:
                if per_value:
                    self._per_value = self._per_value_call(tf, cuts, placeholders, fetches)
            except Exception as exc:  # TensorFlow raises many types; the model runs as is
                log.warning(
                    "model %s: its string inputs' work cannot run per distinct value (%s: "
                    "%s); it is called row by row",
                    label,
                    type(exc).__name__,
                    tf_error_summary(str(exc)),
                )
        self.graph.finalize()

    def _per_value_call(
        self, tf: Any, cuts: dict[str, str], placeholders: list[Any], fetches: list[Any]
    ) -> PerValueCall | None:
        """The signature with its string inputs' row-wise work done once per distinct
        value (batch.model.distinct), imported beside the original graph (whose tables and
        variables it shares); None where there is no such work or the graph cannot be
        rewritten."""
        if not cuts or self.signature.example_input is not None:
            return None
        started = time.perf_counter()
        plan = per_value_graph(tf, self.graph.as_graph_def(), cuts, [t.name for t in fetches])
        if plan is None:
            return None
        tf.graph_util.import_graph_def(plan.graph_def, name=PER_VALUE_SCOPE)
        kept = {node.name for node in plan.graph_def.node}
        feed_list: list[Any] = []
        slots: list[tuple[str, int]] = []  # (input, its feed's part; ROWS: the row indices)
        index = 0
        for name in self._order:
            parts = 3 if name in self._strings else 1
            for part, placeholder in enumerate(placeholders[index : index + parts]):
                if placeholder.op.name in kept:  # an input no output needs was pruned
                    copied = f"{PER_VALUE_SCOPE}/{placeholder.op.name}:0"
                    feed_list.append(self.graph.get_tensor_by_name(copied))
                    slots.append((name, part if parts == 3 else WHOLE))
            index += parts
            if name in plan.rows:
                rows = f"{PER_VALUE_SCOPE}/{plan.rows[name]}:0"
                feed_list.append(self.graph.get_tensor_by_name(rows))
                slots.append((name, ROWS))
        call = session_callable(
            self.session,
            [self.graph.get_tensor_by_name(f"{PER_VALUE_SCOPE}/{t}") for t in plan.fetches],
            feed_list,
        )
        log.info(
            "model %s: its string inputs' row-wise ops run once per distinct value (%s; "
            "planned in %.2fs)",
            self.label,
            ", ".join(f"{name}: {count} ops" for name, count in sorted(plan.ops.items())),
            time.perf_counter() - started,
        )
        return PerValueCall(call, slots, plan.ops, self.label)

    @property
    def per_value_ops(self) -> dict[str, int]:
        """String input -> how many of its ops run once per distinct value where it is fed
        from a dictionary (empty: none, or turned off after a failure)."""
        if self._per_value is None or self._per_value.state == "off":
            return {}
        return dict(self._per_value.ops)

    def prepare_first_call(self) -> bool:
        """Call the signature once on no rows, so that TensorFlow prepares the call (the
        graph's optimization passes, the executor and its kernels: about 0.3-0.4 s on one
        core for the demo model, with the GIL released) during the load rather than in
        the first batch's call, where a job waits for it. Where the string inputs' work
        runs per distinct value, that graph is the one prepared (the original is then
        prepared by the first batch fed row by row, if one comes). Whether it ran: a graph
        that refuses an empty batch (a shape check, a fixed batch size) keeps that cost for
        its first call, and a real batch's error is raised by that call."""
        empty: dict[str, Feed] = {}
        row_splits = set(self.signature.ragged.values())
        try:
            for name, info in self.signature.inputs.items():
                if name in self._strings:
                    nothing = np.zeros(0, np.int32)
                    empty[name] = (b"", nothing, nothing, nothing)
                elif name in row_splits:  # a ragged input's row splits: [0], no rows
                    empty[name] = np.zeros(1, dtype=info.dtype)
                else:  # the batch dimension (and any other unknown one) empty
                    shape = tuple(0 if size is None else size for size in info.shape)
                    empty[name] = np.zeros(shape, dtype=info.dtype)
            self(empty)
        except Exception as exc:  # TensorFlow raises many types; the first batch says
            log.debug("model call on no rows refused (%s); prepared by the first batch", exc)
            return False
        return True

    def __call__(self, feeds: dict[str, Feed]) -> dict[str, np.ndarray]:
        """The signature's outputs for one batch of ``feeds`` (one entry per input)."""
        if self._per_value is not None:
            try:
                outputs = self._per_value(feeds)
            except self._out_of_memory:
                raise  # the scorer halves the batch (batch.engine.scorer.MemoryBackoff)
            except Exception as exc:  # TensorFlow raises many types
                # Row by row: a batch the graph as written refuses too raises its own
                # error; one it takes shows the rewrite failed (an index out of a table
                # for a dictionary value no row holds): off for this process.
                by_row = self._by_row(feeds)
                self._per_value.turn_off(f"{type(exc).__name__}: {tf_error_summary(str(exc))}")
                return by_row
            if outputs is not None:
                return dict(zip(self._output_names, outputs, strict=True))
        return self._by_row(feeds)

    def _by_row(self, feeds: dict[str, Feed]) -> dict[str, np.ndarray]:
        """The outputs of the graph as the SavedModel writes it, fed one value a row."""
        values: list[Any] = []
        for name in self._order:
            value = feeds[name]
            if name in self._strings:
                values += list(per_row(value))  # type: ignore[arg-type]
            else:
                values.append(value)
        return dict(zip(self._output_names, self._run(*values), strict=True))


WHOLE = -1
"""A :class:`PerValueCall` slot that takes a numeric input's feed whole."""
ROWS = 3
"""A :class:`PerValueCall` slot that takes a string input's row indices."""


class PerValueCall:
    """A signature's graph with its string inputs' row-wise work moved onto their distinct
    values (batch.model.distinct), called where a batch feeds at least one of ``inputs``
    from its dictionary (:data:`DistinctFeed`); the others are fed one value a row.

    Its first such batch is also run with every row as its own value, through the same
    graph, and the two must agree (the ops it moved work row by row by construction; this
    checks it on the model's real data). If they do not, or a call fails where the graph
    as written succeeds (:meth:`ServingFunction.__call__`), it is turned off for the
    process (logged) and the model is called row by row, as the SavedModel is written."""

    def __init__(
        self, call: Any, slots: list[tuple[str, int]], ops: dict[str, int], label: str
    ) -> None:
        self.label = label
        self._call = call
        self._slots = slots  # (input, part of its feed: 0-2 a string's, ROWS, WHOLE)
        self.ops = dict(ops)  # input -> how many of its ops run once per distinct value
        self.inputs = frozenset(ops)
        self.state = "unchecked"  # then "checked", or "off" after a disagreement
        self._lock = threading.Lock()

    def __call__(self, feeds: dict[str, Feed]) -> list[np.ndarray] | None:
        """The outputs (in the signature's order) for ``feeds``; None where no input of
        ``inputs`` is fed by value or this call is off: the caller then calls the
        original graph."""
        if self.state == "off" or not any(
            isinstance(feeds[name], tuple) and len(feeds[name]) == 4 for name in self.inputs
        ):
            return None
        outputs = self._call(*self._values(feeds, by_value=True))
        if self.state == "unchecked":
            if not any(len(output) for output in outputs):
                return outputs  # no rows: nothing to check (the load's first call)
            with self._lock:
                if self.state == "unchecked":
                    each_row = self._call(*self._values(feeds, by_value=False))
                    if all(map(_same, each_row, outputs)):
                        self.state = "checked"
                    else:
                        self.turn_off("its outputs differ from row by row")
        return outputs if self.state == "checked" else None

    def turn_off(self, reason: str) -> None:
        """Call the graph as written from now on (logged once, with ``reason``)."""
        if self.state != "off":
            self.state = "off"
            log.warning(
                "model %s: its string work run once per distinct value failed (%s); it is "
                "called row by row from now on",
                self.label,
                reason,
            )

    def _values(self, feeds: dict[str, Feed], by_value: bool) -> list[Any]:
        strings: dict[str, DistinctFeed] = {}
        values: list[Any] = []
        for name, part in self._slots:
            feed = feeds[name]
            if part == WHOLE:
                values.append(feed)
                continue
            if name not in strings:
                if by_value and name in self.inputs and len(feed) == 4:
                    strings[name] = feed  # type: ignore[assignment]
                else:
                    data, starts, lengths = per_row(feed)  # type: ignore[arg-type]
                    rows = np.arange(len(starts), dtype=np.int32)
                    strings[name] = (data, starts, lengths, rows)
            values.append(strings[name][part])
        return values


_TF_ERROR_NOISE = ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[")


def tf_error_summary(message: str, limit: int = 300) -> str:
    """The line of a TensorFlow error that says what went wrong, without the trace."""
    for line in message.splitlines():
        text = line.strip()
        if text and not text.startswith(_TF_ERROR_NOISE) and not line.startswith((" ", "\t")):
            return text[:limit]
    return message.strip().splitlines()[0][:limit] if message.strip() else "(no message)"


def _same(expected: np.ndarray, found: np.ndarray) -> bool:
    """Whether two outputs agree: floats to within their last bits (NaN as NaN), the rest
    exactly."""
    if expected.shape != found.shape:
        return False
    if np.issubdtype(expected.dtype, np.floating):
        return bool(np.allclose(expected, found, rtol=1e-6, atol=1e-7, equal_nan=True))
    return bool(np.array_equal(expected, found))


def _public(signatures: Any) -> list[str]:
    """Signature names a user gave (TensorFlow adds ``__saved_model_init_op``)."""
    return sorted(name for name in signatures if not name.startswith("__"))


def _serving_meta_graph(
    tf: Any, saved_model_dir: Path, label: str, tags: tuple[str, ...] = ("serve",)
) -> Any:
    """The MetaGraph tagged ``tags`` (exactly that set) of the SavedModel in
    ``saved_model_dir``."""
    from google.protobuf import message, text_format
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    path = saved_model_dir / "saved_model.pb"
    text = saved_model_dir / "saved_model.pbtxt"
    try:
        if text.is_file() and not path.is_file():
            path = text
            text_format.Parse(text.read_text(), saved_model)
        else:
            saved_model.ParseFromString(path.read_bytes())
    except (OSError, ValueError, message.Error, text_format.ParseError) as exc:
        raise ModelError(
            f"model {label} ({saved_model_dir}): cannot read {path.name} ({exc}); expected a "
            "SavedModel written by tf.saved_model.save"
        ) from exc
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return meta_graph
    found = " or ".join(",".join(sorted(m.meta_info_def.tags)) for m in saved_model.meta_graphs)
    raise ModelError(
        f"model {label} ({saved_model_dir}): no MetaGraph tagged '{','.join(tags)}'; it has "
        f"{found or 'none'}. Choose one with --tag=TAGS (comma-separated), or export it with "
        "tf.saved_model.save, which tags it 'serve'"
    )


def _signature_info(
    tf: Any, meta_graph: Any, signature_def: Any, label: str, choice: SignatureChoice
) -> SignatureInfo:
    def describe(tensor: Any) -> TensorInfo:
        shape: tuple[int | None, ...] = ()
        if not tensor.tensor_shape.unknown_rank:
            shape = tuple(d.size if d.size >= 0 else None for d in tensor.tensor_shape.dim)
        return TensorInfo(tf.dtypes.as_dtype(tensor.dtype).name, shape)

    where = f"model {label}, {choice.describe()}"
    inputs = {name: describe(tensor) for name, tensor in sorted(signature_def.inputs.items())}
    outputs = {name: describe(tensor) for name, tensor in sorted(signature_def.outputs.items())}
    for name, tensor in signature_def.inputs.items():
        if tensor.WhichOneof("encoding") != "name":
            raise ModelError(
                f"{where}: input '{name}' is a composite tensor ({tensor.WhichOneof('encoding')}); "
                "batchscore feeds dense tensors or serialized tf.Examples. Export a signature "
                "that parses tf.Examples (tf.io.parse_example with VarLenFeature or "
                "RaggedFeature for this input)"
            )
    examples = None
    single = next(iter(inputs.values())) if len(inputs) == 1 else None
    if choice.input_format != "columns" and single is not None and single.dtype == "string":
        try:
            examples = parsed_features(tf, meta_graph, signature_def) or None
        except ValueError as exc:
            raise ModelError(
                f"{where}: its one input is a string tensor that the graph parses as "
                f"tf.Examples, but {exc}. Pass --input_format=columns to feed the input "
                "from a column of serialized tf.Examples instead"
            ) from exc
    if choice.input_format == "tf_example" and examples is None:
        raise ModelError(
            f"{where}: --input_format=tf_example, but the signature's inputs "
            f"({', '.join(inputs) or 'none'}) are not one string tensor that the graph parses "
            "with ParseExample; use --input_format=auto"
        )
    try:
        ragged = ragged_inputs(inputs, _ragged_ranks(meta_graph)) if examples is None else {}
        signature = SignatureInfo(inputs, outputs, examples, ragged)
        signature.input_columns()
        signature.output_fields()
    except ValueError as exc:
        raise ModelError(f"{where}: {exc}") from exc
    return signature


def _ragged_ranks(meta_graph: Any) -> list[int]:
    """The ragged rank of every RaggedTensorSpec argument of the SavedModel's functions
    (its object graph records them; a signature only holds their component tensors)."""
    ranks: list[int] = []

    def walk(value: Any) -> None:
        kind = value.WhichOneof("kind")
        if kind == "type_spec_value":
            spec = value.type_spec_value
            if spec.type_spec_class_name == "RaggedTensorSpec":
                state = spec.type_state.tuple_value.values
                ranks.append(int(state[2].int64_value) if len(state) > 2 else 1)
        elif kind in ("list_value", "tuple_value"):
            for item in getattr(value, kind).values:
                walk(item)
        elif kind == "dict_value":
            for item in value.dict_value.fields.values():
                walk(item)
        elif kind == "named_tuple_value":
            for pair in value.named_tuple_value.values:
                walk(pair.value)

    for function in meta_graph.object_graph_def.concrete_functions.values():
        walk(function.canonicalized_input_signature)
    return ranks


@dataclass(frozen=True)
class LoadedModel:
    model: ResolvedModel
    signature: SignatureInfo
    # serving_default in a TF session, or the transform signature then LiteRT.
    function: ServingFunction | TFLiteFunction
    load_seconds: float
    # What was checked before it was loaded.
    verification: VerificationResult | None = None


_LOCK = threading.Lock()
_LOADED: dict[tuple[str, SignatureChoice], LoadedModel] = {}
# (content hash, signature file hash, policy) -> the private copy verified under that
# policy, and the result.
_VERIFIED_COPIES: dict[
    tuple[str, str | None, TrustPolicy], tuple[ResolvedModel, VerificationResult]
] = {}


def _signature_sha256(model: ResolvedModel) -> str | None:
    try:
        return file_sha256(model.signature_file)
    except OSError:
        return None


def preload_model(
    model: ResolvedModel, trust: TrustPolicy, choice: SignatureChoice = DEFAULT_CHOICE
) -> None:
    """Verify and load ``model`` into this process's cache in a background thread, for a
    job whose worker is this process (Beam's in-process DirectRunner): the load overlaps
    the driver's checks and planning. TensorFlow's import (seconds) starts at once in a
    thread of its own, so the private copy's verification overlaps it too; TensorFlow
    reads the model only once that verification has passed. A failure is raised again by
    the job's own :func:`load_model`."""

    def load() -> None:
        with contextlib.suppress(Exception):
            load_model(model, trust, choice)

    start_tensorflow_import()
    threading.Thread(target=load, name="load-model", daemon=True).start()


def start_tensorflow_import() -> None:
    """Start TensorFlow's import in a thread of its own, unless it is imported or a thread
    imports it already: what comes before the model's load (the download, the private
    copy, the verification in a child process) then overlaps it. A failed import is
    raised by the next :func:`import_tensorflow` call, which imports again."""

    def run() -> None:
        with contextlib.suppress(Exception):
            import_tensorflow()

    with _TF_IMPORT_THREAD_LOCK:
        if _TF_IMPORTED or (_TF_IMPORT_THREAD and _TF_IMPORT_THREAD[0].is_alive()):
            return
        thread = threading.Thread(target=run, name="import-tensorflow", daemon=True)
        _TF_IMPORT_THREAD[:] = [thread]
        thread.start()


def wait_for_tensorflow_import() -> None:
    """Wait until the import :func:`start_tensorflow_import` started last has ended (at
    once where none is under way). Another slow import started after it (Beam's) then
    does not take turns with it on the GIL and on the module locks both need."""
    with _TF_IMPORT_THREAD_LOCK:
        thread = _TF_IMPORT_THREAD[0] if _TF_IMPORT_THREAD else None
    if thread is not None and thread is not threading.current_thread():
        thread.join()


_TF_IMPORT_THREAD_LOCK = threading.Lock()
# The thread start_tensorflow_import started last (in a forked child it is not alive).
_TF_IMPORT_THREAD: list[threading.Thread] = []


def load_model(
    model: ResolvedModel,
    trust: TrustPolicy,
    choice: SignatureChoice = DEFAULT_CHOICE,
    *,
    to_call: bool = True,
) -> LoadedModel:
    """The process-wide instance of ``model`` (its signature ``choice``): verified against
    ``trust`` and loaded on first use, shared by all threads.

    Verification comes first, in this process, before TensorFlow reads a byte of
    the model: every worker that loads a model has checked it itself, on a private copy
    of its files (batch.model.snapshot) that is then what TensorFlow loads, so a folder
    changed after the check is never loaded. It runs once per process, content and
    policy; a model that fails raises a
    :class:`batch.model.signing.ModelVerificationError`.

    ``to_call``: the caller will call the model, as a worker does. TensorFlow's import
    then starts at once (:func:`start_tensorflow_import`), so that its seconds overlap the
    download, the private copy and the verification (a child process) instead of
    following them, and the model's first call is prepared once it is loaded
    (:meth:`ServingFunction.prepare_first_call`). Pass False where the caller only reads
    the signature (a driver): nothing is prepared that no call will use, and TensorFlow's
    import follows the verification, since another thread may start a child process
    meanwhile (a runner launching Spark's JVM) and, while TensorFlow imports, file
    descriptor 2 is held (:func:`import_tensorflow`): a child started then would write its
    stderr there. A later load to call the model prepares it then.
    """
    # The first load ends the process's start-up (batch.core.imports.start_up).
    with start_up():
        if to_call:
            start_tensorflow_import()
        return _load_verified(local_model(model), trust, choice, to_call)


def _load_verified(
    model: ResolvedModel, trust: TrustPolicy, choice: SignatureChoice, prepare: bool
) -> LoadedModel:
    with _LOCK:
        # The same bytes with the same signature under the same policy verify the same:
        # a hit returns a copy verified earlier (whatever the folder holds by now).
        check = (model.content_hash, _signature_sha256(model), trust)
        verified = _VERIFIED_COPIES.get(check)
        if verified is None:
            copy = private_copy(model)
            verification = verify_model(copy, trust, shown_as=Path(model.saved_model_dir))
            verified = _VERIFIED_COPIES[check] = (copy, verification)
        copy, verification = verified
        key = (model.content_hash, choice)
        cached = _LOADED.get(key)
        if cached is None:
            per_value = prepare and per_value_pays()  # a driver's load is never called
            cached = _load(copy, verification, choice, Path(model.saved_model_dir), per_value)
            _LOADED[key] = cached
        if prepare and cached.function not in _PREPARED:
            _PREPARED.add(cached.function)
            _prepare_first_call(cached)
        return cached


# The loaded models' functions whose first call was prepared (or refused to be).
_PREPARED: weakref.WeakSet[ServingFunction | TFLiteFunction] = weakref.WeakSet()


def _prepare_first_call(loaded: LoadedModel) -> None:
    began = time.perf_counter()
    if loaded.function.prepare_first_call():
        log.info(
            "model %s: its first call prepared in %.2fs",
            loaded.model.label,
            time.perf_counter() - began,
        )
    else:
        log.info(
            "model %s: its first call is not prepared (its graph refuses an empty batch); "
            "the first batch prepares it",
            loaded.model.label,
        )


def _load(
    model: ResolvedModel,
    verification: VerificationResult,
    choice: SignatureChoice,
    shown_as: Path,
    per_value: bool,
) -> LoadedModel:
    tf = import_tensorflow()
    start = time.perf_counter()
    try:
        function = _serving_function(
            tf, Path(model.saved_model_dir), model.label, choice, per_value
        )
    except ModelError:
        raise
    except Exception as exc:  # TF raises many types for a broken SavedModel.
        raise ModelError(
            f"model {model.label} ({shown_as}): TensorFlow could not load it: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    elapsed = time.perf_counter() - start
    log.info(
        "loaded model %s in %.2fs (%d calls at once, threads per op: %s)",
        model.label,
        elapsed,
        _THREAD_PLAN[0][0],
        intra_op_threads() or "TF_NUM_INTRAOP_THREADS",
    )
    return LoadedModel(model, function.signature, function, elapsed, verification)


def _serving_function(
    tf: Any, saved_model_dir: Path, label: str, choice: SignatureChoice, per_value: bool
) -> ServingFunction | TFLiteFunction:
    """The model's serving function for its backend (batch.model.tflite): a SavedModel's
    signature ``choice``, or, for a TFLite version, its transform signature feeding LiteRT;
    ``per_value``: whether its string work may move onto distinct values."""
    described = backend_description(saved_model_dir)
    if described["backend"] == TENSORFLOW:
        return ServingFunction(tf, saved_model_dir, label, choice, per_value)
    if not choice.is_default:
        raise ModelError(
            f"model {label} ({saved_model_dir}): a {described['backend']} version is scored "
            f"through its own serving function; {choice.describe()} cannot be chosen. Drop "
            "--signature/--tag/--input_format, or score its parent"
        )
    transform_choice = SignatureChoice(name=str(described["transform_signature"]))
    transform = ServingFunction(tf, saved_model_dir, label, transform_choice, per_value)
    return TFLiteFunction(transform, transform.signature, saved_model_dir, described, label)
