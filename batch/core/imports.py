"""Import a module while some of its optional dependencies stay hidden.

Libraries import optional packages they do not need for what a job does with them:
TensorFlow imports Keras (about 1 s, with pandas and matplotlib); Beam imports Google
Cloud Pub/Sub's client (about 0.5 s). Both are written to load without them, as when the
package is not installed. :func:`import_without` imports such a module while, for the
importing thread only, the named packages cannot be loaded (``ModuleNotFoundError``;
``importlib.util.find_spec`` still says where they are, which TensorFlow asks). Other
threads import them as usual, and once the module has imported so does every thread
(``tf.keras`` then loads Keras on first use).

A process's start-up (TensorFlow's import, the model's load) also runs without Python's
cyclic garbage collector: :func:`pause_collection` / :func:`start_up`, then
:func:`settle_collection`.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.abc
import sys
import threading
from collections.abc import Iterator, Sequence
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType
from typing import Any


class _Refused(importlib.abc.Loader):
    def __init__(self, reason: str) -> None:
        self.reason = reason

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        raise ModuleNotFoundError(f"{spec.name} is not loaded ({self.reason})", name=spec.name)

    def exec_module(self, module: ModuleType) -> None:  # never reached
        raise ModuleNotFoundError(self.reason)


class _Hidden(importlib.abc.MetaPathFinder):
    """Finds the hidden packages where they are (``importlib.util.find_spec`` still
    answers, as TensorFlow asks it where Keras lives) but refuses to load them."""

    def __init__(self, packages: Sequence[str], reason: str) -> None:
        self.packages = tuple(packages)
        self.prefixes = tuple(f"{p}." for p in packages)
        self.loader = _Refused(reason)
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> ModuleSpec | None:
        if threading.get_ident() != self.thread or not (
            name in self.packages or name.startswith(self.prefixes)
        ):
            return None
        spec = PathFinder.find_spec(name, path, target)
        if spec is not None:
            spec.loader = self.loader
        return spec


def import_without(module: str, hidden: Sequence[str], reason: str) -> ModuleType:
    """Import ``module`` with the packages ``hidden`` (and their submodules, where they
    are on ``sys.path``) refused to this thread while it imports; ``reason`` is said in
    the refusal. Nothing is hidden where ``module`` or one of them is loaded already."""
    if module in sys.modules or any(name in sys.modules for name in hidden):
        return importlib.import_module(module)
    finder = _Hidden(hidden, reason)
    sys.meta_path.insert(0, finder)
    try:
        return importlib.import_module(module)
    finally:
        sys.meta_path.remove(finder)


# Python's cyclic garbage collector during a process's start-up. Importing TensorFlow
# makes hundreds of thousands of long-lived objects, and every full collection the
# collector starts meanwhile walks all of them: about 1.5 s of a 7 s import on a 2-core
# machine, for a few thousand objects freed. Then, while batches are scored, every full
# collection walked them again. So the collector is off until the process has started
# (its first model loaded), and what start-up made is then frozen (``gc.freeze``: kept
# out of every later collection) before it is back on.
_COLLECTION_LOCK = threading.Lock()
_SETTLED: list[bool] = []  # [True] once settle_collection has run in this process
_PAUSED: list[bool] = []  # [True] while this module keeps an enabled collector off


def pause_collection() -> None:
    """Turn the cyclic garbage collector off until :func:`settle_collection`; a command
    calls it first thing, before its imports. Nothing once the process has settled, or
    where the collector was off already (the caller's own choice, left alone)."""
    with _COLLECTION_LOCK:
        if not _SETTLED and not _PAUSED and gc.isenabled():
            gc.disable()
            _PAUSED.append(True)


def settle_collection() -> None:
    """The process has started: freeze what start-up made and turn the collector back on
    if :func:`pause_collection` turned it off. Once per process; later calls do nothing."""
    with _COLLECTION_LOCK:
        if _SETTLED:
            return
        gc.freeze()
        if _PAUSED:
            gc.enable()
            _PAUSED.clear()
        _SETTLED.append(True)


@contextlib.contextmanager
def start_up() -> Iterator[None]:
    """A stretch of start-up (a worker's first model load, TensorFlow's import within
    it): the collector paused while it runs, the process settled when it ends, however
    it ends. Once the process has settled, a plain block (both calls do nothing)."""
    pause_collection()
    try:
        yield
    finally:
        settle_collection()
