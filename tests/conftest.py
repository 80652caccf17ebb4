"""Shared pytest fixtures and the one way tests run a scoring job.

``trained_model`` (session scope) writes a small demo dataset and trains and
registers a model on it once per test session; scoring tests reuse it.
``plain_models`` (session scope) builds the plain SavedModels of tests/plain_model.py,
each kind once per session; ``plain_model`` is the signed default one.
``spark_cluster`` (session scope) runs a real Spark standalone cluster on loopback.
``score`` runs ``jobs.score`` in this process; ``score_args`` gives its arguments for a
subprocess.

The session's models are shared by every test: read them, register them (registration
copies), but copy one before changing it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batch.model.resolved import ResolvedModel
from tests.plain_model import build_plain_model
from tests.signing_keys import signing_keys  # noqa: F401  (session key pair, autouse)
from tests.spark_cluster import SparkCluster, standalone_cluster
from tests.training_rows import demo_rows  # noqa: F401  (one tf.Transform run, shared)

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

    @property
    def spec(self) -> str:
        """``--model`` for this version: ``name@version`` (with ``--model_repo=repo``)."""
        return f"{self.model.name}@{self.model.version}"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory: pytest.TempPathFactory) -> TrainedModel:
    from batch.demo.data import ensure_demo_data
    from training.trainer import train_and_register

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


class PlainModels:
    """Plain SavedModels (tests/plain_model.py) built on first request, then reused.

    ``plain_models(weight=0.75, sign=True, build=0)`` is the path of a directory named
    ``model``; the same arguments give the same directory for the whole session. ``build``
    tells apart builds that are otherwise alike (same weight: same scores, other bytes).
    """

    def __init__(self, root: Path) -> None:
        self._root = root
        self._built: dict[tuple[float, bool, int], Path] = {}

    def __call__(self, weight: float = 0.75, sign: bool = True, build: int = 0) -> Path:
        key = (weight, sign, build)
        if key not in self._built:
            folder = self._root / f"w{weight}-{'signed' if sign else 'unsigned'}-{build}"
            self._built[key] = build_plain_model(folder / "model", sign=sign, weight=weight)
        return self._built[key]


@pytest.fixture(scope="session")
def plain_models(tmp_path_factory: pytest.TempPathFactory) -> PlainModels:
    """Signed ones are signed with the session key: ``signing_keys``, autouse, is set up
    before any other session fixture, and scoring trusts it."""
    return PlainModels(tmp_path_factory.mktemp("plain_models"))


@pytest.fixture(scope="session")
def plain_model(plain_models: PlainModels) -> Path:
    """The plain SavedModel (weight 0.75), signed with the session key; shared, read-only."""
    return plain_models()


def score_args(
    data: Path, output: Path, *options: str, model: Path | str | TrainedModel | None = None
) -> list[str]:
    """``jobs.score`` arguments: ``--input=data --output=output``, the model, then ``options``.

    ``model`` is a SavedModel directory or a ``name@version`` spec (``options`` then name
    ``--model_repo``), or a TrainedModel (its spec and repository); None leaves ``--model``
    to ``options``.
    """
    args = [f"--input={data}", f"--output={output}"]
    if isinstance(model, TrainedModel):
        args += [f"--model={model.spec}", f"--model_repo={model.repo}"]
    elif model is not None:
        args.append(f"--model={model}")
    return [*args, *options]


def score(
    data: Path, output: Path, *options: str, model: Path | str | TrainedModel | None = None
) -> int:
    """Run ``jobs.score`` in this process (arguments as ``score_args``); its exit status."""
    from jobs.score import main

    return main(score_args(data, output, *options, model=model))


_REPORT_MODULES = """
import atexit, os, runpy, sys
modules = sys.argv.pop(1)
def report(*_):
    with open(modules, "w") as out:
        out.write("\\n".join(sorted(sys.modules)))
exit_now = os._exit
os._exit = lambda code: (report(), exit_now(code))
atexit.register(report)
runpy.run_module("jobs.score", run_name="__main__", alter_sys=True)
"""


def new_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -c code args`` run to its end in the project folder (a failure raises),
    its stdout and stderr captured: what a process holds (modules, libraries, file
    descriptors, the collector) is its own."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )


def score_in_a_new_process(
    data: Path, output: Path, *options: str, model: Path | str | TrainedModel | None = None
) -> tuple[int, str, set[str]]:
    """Run ``jobs.score`` (arguments as ``score_args``) as a new process, as its users do:
    its exit status, its stderr and the modules it had imported when it exited."""
    modules = output.parent / f"{output.name}.modules"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _REPORT_MODULES,
            str(modules),
            *score_args(data, output, *options, model=model),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stderr, set(modules.read_text().split())


@pytest.fixture(scope="session")
def spark_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    """A Spark standalone master and two one-core workers on 127.0.0.1 (tests/spark_cluster.py),
    started once per session and stopped by PID at its end."""
    with standalone_cluster(tmp_path_factory.mktemp("spark_cluster")) as cluster:
        yield cluster
