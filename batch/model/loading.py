"""Loading a SavedModel once per process: verified first, then imported into a session.

TensorFlow is imported lazily, on first load, so that command lines can check
their arguments before paying for it.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from batch.core.errors import ModelError
from batch.model.resolved import ResolvedModel
from batch.model.signature import SignatureInfo, TensorInfo
from batch.model.signing import TrustPolicy, VerificationResult, verify_once

log = logging.getLogger(__name__)

SERVING_SIGNATURE = "serving_default"

_STARTUP_CHATTER = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "E0000 ")


def quiet_tensorflow() -> None:
    """Keep TensorFlow's C++ logging to warnings and above."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def import_tensorflow() -> Any:
    """Import TensorFlow without its start-up chatter on the terminal.

    TensorFlow 2.21 prints CUDA and oneDNN notices through absl before
    TF_CPP_MIN_LOG_LEVEL is read, straight to file descriptor 2. They are caught
    here; anything else it prints is passed on.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    quiet_tensorflow()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        for line in capture.read().decode(errors="replace").splitlines():
            if line and not line.startswith(_STARTUP_CHATTER):
                print(line, file=sys.stderr)
    return tf


Feed = np.ndarray | tuple[bytes, np.ndarray]
"""One input column: a numpy array, or a string column as (its bytes, int32 offsets)."""


class ServingFunction:
    """A SavedModel's serving signature, run in a session as TensorFlow Serving runs it.

    The SavedModel's MetaGraph is imported into a graph of its own (the loader
    TF Serving uses, about 3x quicker to load than ``tf.saved_model.load``,
    which rebuilds every saved Python object). Each string input is fed as
    Arrow lays it out: the column's bytes as one scalar and its offsets, cut
    into values by ``tf.strings.substr`` inside the graph. Handing TensorFlow a
    string column as numpy builds a Python object per value with the GIL held
    (about 50 ns a value, once the largest cost of feeding a batch); the cut
    runs in TensorFlow's kernels without the GIL (about 15 ns a value).

    Calls are thread-safe; the graph is finalized once loaded.
    """

    def __init__(self, tf: Any, saved_model_dir: Path, label: str) -> None:
        meta_graph = _serving_meta_graph(tf, saved_model_dir, label)
        if SERVING_SIGNATURE not in meta_graph.signature_def:
            raise ModelError(
                f"model {label} ({saved_model_dir}): expected a '{SERVING_SIGNATURE}' "
                f"signature, found {_public(meta_graph.signature_def) or 'none'}. Export the "
                "model with tf.saved_model.save(obj, path, signatures={'serving_default': fn})"
            )
        signature_def = meta_graph.signature_def[SERVING_SIGNATURE]
        self.signature = _signature_info(tf, signature_def, label)
        self.graph = tf.Graph()
        with self.graph.as_default():
            placeholders: list[Any] = []
            input_map: dict[str, Any] = {}
            string_inputs: list[str] = []
            with tf.name_scope("batchscore_feed"):
                for name, info in self.signature.inputs.items():
                    if info.dtype != "string":
                        continue
                    data = tf.compat.v1.placeholder(tf.string, [], name=f"{name}_bytes")
                    offsets = tf.compat.v1.placeholder(tf.int32, [None], name=f"{name}_offsets")
                    cut = tf.strings.substr(data, offsets[:-1], offsets[1:] - offsets[:-1])
                    input_map[signature_def.inputs[name].name] = cut
                    placeholders += [data, offsets]
                    string_inputs.append(name)
            self.session = tf.compat.v1.Session(graph=self.graph)
            # The loader logs that TF2 code should call tf.saved_model.load instead; this
            # is the loader TF Serving keeps using, so the notice is noise in job output.
            tf_log = logging.getLogger("tensorflow")
            level = tf_log.level
            tf_log.setLevel(logging.ERROR)
            try:
                tf.compat.v1.saved_model.load(
                    self.session,
                    [tf.saved_model.SERVING],
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
            self._run = self.session.make_callable(fetches, feed_list=placeholders)
        self.graph.finalize()

    def __call__(self, feeds: dict[str, Feed]) -> dict[str, np.ndarray]:
        """The signature's outputs for one batch of ``feeds`` (one entry per input)."""
        values: list[Any] = []
        for name in self._order:
            value = feeds[name]
            if name in self._strings:
                values += list(value)
            else:
                values.append(value)
        return dict(zip(self._output_names, self._run(*values), strict=True))


def _public(signatures: Any) -> list[str]:
    """Signature names a user gave (TensorFlow adds ``__saved_model_init_op``)."""
    return sorted(name for name in signatures if not name.startswith("__"))


def _serving_meta_graph(tf: Any, saved_model_dir: Path, label: str) -> Any:
    """The MetaGraph tagged ``serve`` of the SavedModel in ``saved_model_dir``."""
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
        if tf.saved_model.SERVING in meta_graph.meta_info_def.tags:
            return meta_graph
    found = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ModelError(
        f"model {label} ({saved_model_dir}): no MetaGraph tagged '{tf.saved_model.SERVING}' "
        f"(found {found}); export it with tf.saved_model.save, which tags it so"
    )


def _signature_info(tf: Any, signature_def: Any, label: str) -> SignatureInfo:
    def describe(tensor: Any) -> TensorInfo:
        shape: tuple[int | None, ...] = ()
        if not tensor.tensor_shape.unknown_rank:
            shape = tuple(d.size if d.size >= 0 else None for d in tensor.tensor_shape.dim)
        return TensorInfo(tf.dtypes.as_dtype(tensor.dtype).name, shape)

    inputs = {}
    for name, tensor in sorted(signature_def.inputs.items()):
        info = describe(tensor)
        if len(info.shape) != 1:
            raise ModelError(
                f"model {label}: input '{name}' has shape {list(info.shape)}; batchscore feeds "
                "one 1-D tensor per column, so every serving_default input must have shape [None]"
            )
        inputs[name] = info
    outputs = {name: describe(tensor) for name, tensor in sorted(signature_def.outputs.items())}
    signature = SignatureInfo(inputs, outputs)
    try:
        signature.output_fields()
    except ValueError as exc:
        raise ModelError(f"model {label}: {exc}") from exc
    return signature


@dataclass(frozen=True)
class LoadedModel:
    model: ResolvedModel
    signature: SignatureInfo
    function: ServingFunction
    load_seconds: float
    # What was checked before it was loaded.
    verification: VerificationResult | None = None


_LOCK = threading.Lock()
_LOADED: dict[str, LoadedModel] = {}


def load_model(model: ResolvedModel, trust: TrustPolicy) -> LoadedModel:
    """The process-wide instance of ``model``: verified against ``trust`` and loaded on
    first use, shared by all threads.

    Verification comes first, in this process, before TensorFlow reads a byte of
    the model: every worker that loads a model has checked it itself. It runs
    once per process, model and policy (:func:`batch.model.signing.verify_once`); a
    model that fails raises a :class:`batch.model.signing.ModelVerificationError`.
    """
    with _LOCK:
        verification = verify_once(model, trust)
        cached = _LOADED.get(model.content_hash)
        if cached is None:
            cached = _load(model, verification)
            _LOADED[model.content_hash] = cached
        return cached


def _load(model: ResolvedModel, verification: VerificationResult) -> LoadedModel:
    tf = import_tensorflow()
    start = time.perf_counter()
    try:
        function = ServingFunction(tf, Path(model.saved_model_dir), model.label)
    except ModelError:
        raise
    except Exception as exc:  # TF raises many types for a broken SavedModel.
        raise ModelError(
            f"model {model.label} ({model.saved_model_dir}): TensorFlow could not load it: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
    elapsed = time.perf_counter() - start
    log.info("loaded model %s in %.2fs", model.label, elapsed)
    return LoadedModel(model, function.signature, function, elapsed, verification)
