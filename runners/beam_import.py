"""Beam, imported without Google Cloud Pub/Sub's client library.

``apache_beam.io`` imports its Pub/Sub connector, which imports the client library
whenever it is installed, as it is with Beam's ``[gcp]`` extra: about 0.5 s with the GIL
held, half of Beam's import, which a small job waits for beside TensorFlow's. A batch
job never reads or writes Pub/Sub, and Beam's connector is written to load without the
library (its streaming reads and writes then refuse to run). So while this module
imports ``apache_beam``, the library is not loaded (batch.core.imports); after that it
imports normally. ``runners.beam`` imports this module first.
"""

from __future__ import annotations

from batch.core.imports import import_without

PUB_SUB_CLIENT = ("google.cloud.pubsub", "google.cloud.pubsub_v1", "google.pubsub_v1")


def import_beam() -> None:
    """Import ``apache_beam`` without the Pub/Sub client, unless either is loaded already."""
    import_without("apache_beam", PUB_SUB_CLIENT, "by batchscore with Beam: batch jobs only")


import_beam()
