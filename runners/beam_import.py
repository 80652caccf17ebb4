"""Beam, imported without Google Cloud Pub/Sub's client library nor MongoDB's.

``apache_beam.io`` imports its Pub/Sub connector, which imports the client library
whenever it is installed, as it is with Beam's ``[gcp]`` extra: about 0.5 s with the GIL
held, half of Beam's import, which a small job waits for beside TensorFlow's. Its MongoDB
connector likewise imports ``pymongo`` (a dependency of Beam's): about 40 ms more, while
a job's model loads beside it. A batch job never reads or writes Pub/Sub or MongoDB, and
both connectors are written to load without their library (their reads and writes then
refuse to run). So while this module imports ``apache_beam``, the libraries are not
loaded (batch.core.imports); after that they import normally. ``runners.beam`` imports
this module first.
"""

from __future__ import annotations

from batch.core.imports import import_without

PUB_SUB_CLIENT = ("google.cloud.pubsub", "google.cloud.pubsub_v1", "google.pubsub_v1")
MONGODB_CLIENT = ("pymongo", "bson", "gridfs")


def import_beam() -> None:
    """Import ``apache_beam`` without the Pub/Sub and MongoDB clients, unless Beam or one
    of them is loaded already."""
    import_without(
        "apache_beam", PUB_SUB_CLIENT + MONGODB_CLIENT, "by batchscore with Beam: batch jobs only"
    )


import_beam()
