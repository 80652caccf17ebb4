"""batch.core.imports: a module imported with optional packages refused to its thread.

Real packages written to a temporary folder on sys.path, TensorFlow without Keras and
Beam without Pub/Sub's client in new processes; Keras exports scored by a job process
without Keras: tests/test_model_shapes.py and tests/test_tf_example.py.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.core.imports import import_without

NAMES = ("host_lib", "optional_lib", "optional_lib.extra")


@pytest.fixture
def packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """host_lib tries ``optional_lib.extra`` (as TensorFlow tries Keras), asks where
    ``optional_lib`` is, then has another thread import it."""
    (tmp_path / "optional_lib").mkdir()
    (tmp_path / "optional_lib" / "__init__.py").write_text("")
    (tmp_path / "optional_lib" / "extra.py").write_text("VALUE = 42\n")
    (tmp_path / "host_lib.py").write_text(
        "import importlib.util, threading\n"
        "try:\n"
        "    import optional_lib.extra\n"
        "    loaded = True\n"
        "except ImportError as exc:\n"
        "    loaded, refusal = False, str(exc)\n"
        "where = importlib.util.find_spec('optional_lib').origin\n"
        "in_a_thread = []\n"
        "def load():\n"
        "    import optional_lib.extra\n"
        "    in_a_thread.append(optional_lib.extra.VALUE)\n"
        "thread = threading.Thread(target=load)\n"
        "thread.start()\n"
        "thread.join()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in NAMES:
        sys.modules.pop(name, None)


def test_the_hidden_package_is_refused_to_the_importing_thread_only(packages: Path) -> None:
    host = import_without("host_lib", ("optional_lib",), "a test")
    assert host.loaded is False
    assert host.refusal == "optional_lib is not loaded (a test)"
    assert host.where == str(packages / "optional_lib" / "__init__.py")
    assert host.in_a_thread == [42], "another thread imports it as usual"


def test_after_the_import_the_package_loads_in_the_same_thread(packages: Path) -> None:
    import_without("host_lib", ("optional_lib",), "a test")
    sys.modules.pop("optional_lib", None)
    sys.modules.pop("optional_lib.extra", None)
    import optional_lib.extra

    assert optional_lib.extra.VALUE == 42


def test_nothing_is_hidden_when_the_package_is_loaded_already(packages: Path) -> None:
    import optional_lib  # noqa: F401

    assert import_without("host_lib", ("optional_lib",), "a test").loaded is True


def test_tensorflow_imports_without_keras_which_loads_on_first_use() -> None:
    """What import_tensorflow does in a new process: no Keras (nor its pandas and
    matplotlib) while TensorFlow imports; ``tf.keras`` works after (Keras 3, or tf-keras
    where TF_USE_LEGACY_KERAS is set)."""
    code = (
        "import sys\n"
        "from batch.model.loading import import_tensorflow\n"
        "tf = import_tensorflow()\n"
        "print(sorted({'keras', 'tf_keras', 'matplotlib'} & set(sys.modules)))\n"
        "print(float(tf.constant(2.0) * 3))\n"
        "print(tf.keras.layers.Dense(1).units, bool({'keras', 'tf_keras'} & set(sys.modules)))\n"
    )
    assert _new_python(code) == ["[]", "6.0", "1 True"]


def test_beam_loads_without_the_pub_sub_client_which_still_imports_after() -> None:
    """runners.beam imports Beam without Google Cloud Pub/Sub's client (half of Beam's
    import, for streaming a batch job never does); the library itself still imports."""
    code = (
        "import sys; import runners.beam; "
        "print('google.cloud.pubsub' in sys.modules, 'apache_beam.io.gcp.gcsio' in sys.modules); "
        "from google.cloud import pubsub; print(pubsub.PublisherClient.__name__)"
    )
    assert _new_python(code) == ["False True", "PublisherClient"]


def _new_python(code: str) -> list[str]:
    """The lines ``python -c code`` prints, run in the project folder."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.splitlines()
