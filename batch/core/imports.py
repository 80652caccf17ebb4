"""Import a module while some of its optional dependencies stay hidden.

Libraries import optional packages they do not need for what a job does with them:
TensorFlow imports Keras (about 1 s, with pandas and matplotlib); Beam imports Google
Cloud Pub/Sub's client (about 0.5 s). Both are written to load without them, as when the
package is not installed. :func:`import_without` imports such a module while, for the
importing thread only, the named packages cannot be loaded (``ModuleNotFoundError``;
``importlib.util.find_spec`` still says where they are, which TensorFlow asks). Other
threads import them as usual, and once the module has imported so does every thread
(``tf.keras`` then loads Keras on first use).
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from collections.abc import Sequence
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
