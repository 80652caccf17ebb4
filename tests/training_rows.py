"""One tf.Transform run of small demo data, shared by the training tests that only fit
(tests/test_train_distributed.py, tests/test_tune.py): import ``demo_rows`` into a test
module to use it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.signing_keys import make_key_pair

if TYPE_CHECKING:
    from training.trainer import TrainingRequest, TransformedRows

ROWS = 6_000
EPOCHS = 2


@dataclass(frozen=True)
class DemoRows:
    data: Path  # 6,000 demo rows in two files, no dirty rows
    repo: Path
    key: Path  # a signing key of its own
    request: TrainingRequest  # the demo's, on this data
    rows: TransformedRows


@pytest.fixture(scope="session")
def demo_rows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DemoRows]:
    from batch.demo.data import ensure_demo_data
    from training.trainer import DEMO, transformed_rows

    root = tmp_path_factory.mktemp("demo_rows")
    data = ensure_demo_data(
        root / "data", rows=ROWS, days=1, files_per_day=2, seed=7, dirty_fraction=0, log=None
    )
    key = make_key_pair(root / "keys").private
    request = dataclasses.replace(
        DEMO,
        input=data,
        model_repo=root / "models",
        train_rows=ROWS,
        epochs=EPOCHS,
        signing_key=key,
        worker_timeout_s=240,
    )
    with transformed_rows(request, None) as rows:
        yield DemoRows(data, root / "models", key, request, rows)
