"""Shared pytest fixtures.

``trained_model`` (session scope) writes a small demo dataset and trains and
registers a model on it once per test session; scoring tests reuse it.
``spark_cluster`` (session scope) runs a real Spark standalone cluster on loopback.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batch.model.resolved import ResolvedModel
from tests.signing_keys import signing_keys  # noqa: F401  (session key pair, autouse)
from tests.spark_cluster import SparkCluster, standalone_cluster

TRAINED_ROWS = 20_000
TRAINED_DAYS = 2
TRAINED_FILES_PER_DAY = 2
TRAINED_SEED = 7
# Ten times the demo default, so the data holds ~100 dirty rows to dead-letter.
TRAINED_DIRTY_FRACTION = 0.005


@dataclass(frozen=True)
class TrainedModel:
    """A registered model and the data it was trained on.

    data_dir:  hive-partitioned demo Parquet (dt=2026-01-01, dt=2026-01-02; 2 files each;
               20,000 rows of which 100 are dirty)
    repo:      the model repository root (``ModelRepository(repo)``)
    model:     the registered version (``loan_default@1``)
    """

    data_dir: Path
    repo: Path
    model: ResolvedModel

    @property
    def transform_output_dir(self) -> Path:
        return self.model.saved_model_dir.parent / "transform_output"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    from jobs.make_demo import ensure_demo_data
    from jobs.train import train_and_register

    root = tmp_path_factory.mktemp("trained_model")
    data_dir = ensure_demo_data(
        root / "data",
        rows=TRAINED_ROWS,
        days=TRAINED_DAYS,
        files_per_day=TRAINED_FILES_PER_DAY,
        seed=TRAINED_SEED,
        dirty_fraction=TRAINED_DIRTY_FRACTION,
        log=None,
    )
    repo = root / "models"
    model = train_and_register(
        data_dir, repo, train_rows=TRAINED_ROWS, epochs=1, seed=TRAINED_SEED, report=None
    )
    return TrainedModel(data_dir=data_dir, repo=repo, model=model)


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A Spark standalone master and two one-core workers on 127.0.0.1 (tests/spark_cluster.py),
    started once per session and stopped by PID at its end."""
    with standalone_cluster(tmp_path_factory.mktemp("spark_cluster")) as cluster:
        yield cluster
