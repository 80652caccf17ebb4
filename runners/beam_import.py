"""Beam, imported without Google Cloud Pub/Sub's client library.

``apache_beam.io`` imports its Pub/Sub connector, which imports the client library
whenever it is installed, as it is with Beam's ``[gcp]`` extra: about 0.5 s with the GIL
held, half of Beam's import, which a small job waits for beside TensorFlow's. A batch
job never reads or writes Pub/Sub, and Beam's connector is written to load without the
library (its streaming reads and writes then refuse to run). So while this module
imports ``apache_beam``, the library is not found; after that it imports normally.
``runners.beam`` imports this module first.
"""

from __future__ import annotations

import importlib.abc
import sys
from typing import Any

BLOCKED = ("google.cloud.pubsub", "google.cloud.pubsub_v1", "google.pubsub_v1")


class _WithoutPubSubClient(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name in BLOCKED or name.startswith(tuple(b + "." for b in BLOCKED)):
            raise ImportError(f"{name} is not loaded with Beam (batchscore: streaming only)")
        return None


def import_beam() -> None:
    """Import ``apache_beam`` without the Pub/Sub client, unless either is loaded already."""
    if "apache_beam" in sys.modules or "google.cloud.pubsub" in sys.modules:
        return
    finder = _WithoutPubSubClient()
    sys.meta_path.insert(0, finder)
    try:
        import apache_beam  # noqa: F401
    finally:
        sys.meta_path.remove(finder)


import_beam()
