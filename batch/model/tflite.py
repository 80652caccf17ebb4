"""A second model backend: the tf.Transform graph in TensorFlow, the model in LiteRT.

A registered version compressed to TFLite (``python -m jobs.compress --method=int8``) is a
SavedModel that holds only the transform graph (signature ``transform_features``: raw
columns in, transformed features out) plus two files inside it, where its signature covers
them::

    assets.extra/batchscore_backend.json   {"backend": "tflite", "tflite_file": ..., ...}
    assets.extra/model.tflite              the Keras part, converted (and quantized)

:class:`TFLiteFunction` scores it behind the interface the scorer calls
(``function(feeds) -> {output: array}``): the transform signature runs in a TensorFlow
session exactly as for a float model (the same feeds, built from the same Arrow batches),
then its dense outputs feed the LiteRT interpreter. An interpreter is not thread-safe,
so each thread gets its own (``threading.local``); the model's bytes are read once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from batch.core.errors import ModelError
from batch.core.fsutil import read_json
from batch.model.signature import SignatureInfo, TensorInfo

BACKEND_FILE = "assets.extra/batchscore_backend.json"
TFLITE_FILE = "assets.extra/model.tflite"
TENSORFLOW = "tensorflow"
TFLITE = "tflite"
BACKENDS = (TENSORFLOW, TFLITE)


def backend_description(saved_model_dir: Path | str) -> dict[str, Any]:
    """What ``BACKEND_FILE`` of the SavedModel says (``{"backend": "tensorflow"}`` when it
    has none: a plain SavedModel)."""
    path = Path(saved_model_dir) / BACKEND_FILE
    if not path.is_file():
        return {"backend": TENSORFLOW}
    try:
        described = read_json(path)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{path}: cannot be read ({exc}); expected the JSON that jobs.compress writes. "
            "Compress the parent again (python -m jobs.compress)"
        ) from exc
    if described.get("backend") not in BACKENDS:
        raise ModelError(
            f"{path}: backend '{described.get('backend')}'; expected one of "
            f"{', '.join(BACKENDS)}. Compress the parent again with this batchscore"
        )
    return dict(described)


def model_backend(saved_model_dir: Path | str) -> str:
    """``tflite`` or ``tensorflow``: how batchscore runs this SavedModel's model part."""
    return str(backend_description(saved_model_dir)["backend"])


def interpreter_class() -> Any:
    """LiteRT's interpreter (``ai-edge-litert``); TensorFlow's deprecated
    ``tf.lite.Interpreter`` where LiteRT is not installed."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency
        import tensorflow as tf

        return tf.lite.Interpreter
    return Interpreter


class TFLiteModel:
    """A TFLite model's ``serving_default`` on transformed features, one LiteRT interpreter
    per calling thread (an interpreter is not thread-safe; the bytes are shared)."""

    def __init__(self, content: bytes, description: Mapping[str, Any], label: str) -> None:
        self._content = content
        self.inputs: dict[str, str] = dict(description["inputs"])  # tflite input <- feature
        self.outputs: dict[str, str] = dict(description["outputs"])  # output <- tflite output
        self._local = threading.local()
        self._interpreter = interpreter_class()
        try:
            self._runner()  # a broken model fails the load, not the first batch
        except (ValueError, RuntimeError) as exc:
            raise ModelError(
                f"model {label}: LiteRT cannot load its TFLite model ({exc}); compress the "
                "parent again (python -m jobs.compress)"
            ) from exc

    def _runner(self) -> Any:
        runner = getattr(self._local, "runner", None)
        if runner is None:
            interpreter = self._interpreter(model_content=self._content, num_threads=1)
            runner = self._local.runner = interpreter.get_signature_runner()
        return runner

    def __call__(self, transformed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._runner()(
            **{name: transformed[feature] for name, feature in self.inputs.items()}
        )
        return {name: np.asarray(outputs[tflite]) for name, tflite in self.outputs.items()}


class TransformFunction(Protocol):
    """The transform signature in a session (batch.model.loading.ServingFunction)."""

    def __call__(self, feeds: Any) -> Mapping[str, np.ndarray]: ...

    def prepare_first_call(self) -> bool: ...

    @property
    def per_value_ops(self) -> dict[str, int]: ...


class TFLiteFunction:
    """``transform`` (the transform signature in a session: raw feeds -> transformed
    features) then the TFLite model on those features: the function the scorer calls."""

    def __init__(
        self,
        transform: TransformFunction,
        transform_signature: SignatureInfo,
        saved_model_dir: Path,
        description: Mapping[str, Any],
        label: str,
    ) -> None:
        path = saved_model_dir / str(description.get("tflite_file", TFLITE_FILE))
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise ModelError(
                f"model {label}: {path} cannot be read ({exc}); its {BACKEND_FILE} names a "
                "TFLite model. Compress the parent again (python -m jobs.compress)"
            ) from exc
        self._transform = transform
        self._model = TFLiteModel(content, description, label)
        missing = sorted(set(self._model.inputs.values()) - set(transform_signature.outputs))
        if missing:
            raise ModelError(
                f"model {label}: its TFLite model takes {', '.join(missing)}, which its "
                f"transform signature does not output (it outputs "
                f"{', '.join(sorted(transform_signature.outputs))}); compress the parent again"
            )
        self.signature = SignatureInfo(
            inputs=dict(transform_signature.inputs),
            outputs={
                name: TensorInfo(str(info["dtype"]), tuple(info["shape"]))
                for name, info in description["output_info"].items()
            },
        )

    def prepare_first_call(self) -> bool:
        """The transform's first call prepared (LiteRT's interpreter is ready once built)."""
        return self._transform.prepare_first_call()

    def __call__(self, feeds: Any) -> dict[str, np.ndarray]:
        return self._model(self._transform(feeds))

    @property
    def per_value_ops(self) -> dict[str, int]:
        """The transform signature's (batch.model.loading.ServingFunction.per_value_ops)."""
        return self._transform.per_value_ops
