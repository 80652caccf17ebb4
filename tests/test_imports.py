"""batch.core.imports: a module imported with optional packages refused to its thread.

Real packages written to a temporary folder on sys.path, TensorFlow without Keras and
Beam without Pub/Sub's client in new processes; Keras exports scored by a job process
without Keras: tests/test_model_shapes.py and tests/test_tf_example.py. Start-up without
the garbage collector: in new processes (the collector is the process's), a real model
load and real jobs.score processes.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from batch.core.imports import import_without
from tests.conftest import PlainModels, new_python, score_args
from tests.plain_model import write_plain_data
from tests.signing_keys import KeyPair

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


def test_the_collector_is_off_until_start_up_ends_then_what_it_made_is_frozen() -> None:
    code = (
        "import gc\n"
        "from batch.core.imports import pause_collection, settle_collection, start_up\n"
        "pause_collection()\n"
        "print(gc.isenabled())\n"
        "with start_up():\n"
        "    print(gc.isenabled())\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
        "frozen = gc.get_freeze_count()\n"
        "pause_collection()\n"
        "with start_up():\n"
        "    print(gc.isenabled())\n"
        "settle_collection()\n"
        "print(gc.get_freeze_count() == frozen)\n"
    )
    # Once settled, pausing does nothing and nothing more is frozen.
    assert _new_python(code) == ["False", "False", "True True", "True", "True"]


def test_a_collector_the_process_turned_off_itself_stays_off() -> None:
    code = (
        "import gc\n"
        "from batch.core.imports import start_up\n"
        "gc.disable()\n"
        "with start_up():\n"
        "    pass\n"
        "print(gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    assert _new_python(code) == ["False True"]


_LOAD = """
import gc, sys
from pathlib import Path
import batch.model.loading as loading
from batch.core.errors import ModelError
from batch.model.repository import ModelRepository, resolve_model
from batch.model.signing import TrustPolicy
importing = []
def watched():
    importing.append(gc.isenabled())
    return original()
original, loading.import_tensorflow = loading.import_tensorflow, watched
model = resolve_model(sys.argv[1], ModelRepository(Path(sys.argv[2])))
try:
    loading.load_model(model, TrustPolicy(None, allow_unsigned=True))
    print("loaded")
except ModelError as exc:
    print("refused")
print(importing, gc.isenabled(), gc.get_freeze_count() > 100_000)
"""


def test_a_workers_first_model_load_imports_tensorflow_without_the_collector(
    plain_models: PlainModels, tmp_path: Path
) -> None:
    """As a Spark or Beam worker process loads its model: TensorFlow's import (inside the
    first load) runs with the collector off; after it, on again, TensorFlow's objects
    frozen. A load that fails settles the process too."""
    model = plain_models(sign=False)
    # import_tensorflow is called twice: by the thread that starts the import at once,
    # and by the load, which waits for it.
    assert _new_python(_LOAD, str(model), str(tmp_path / "repo")) == [
        "loaded",
        "[False, False] True True",
    ]
    broken = tmp_path / "broken" / "model"
    broken.mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    assert _new_python(_LOAD, str(broken), str(tmp_path / "repo")) == [
        "refused",
        "[False, False] True True",
    ]


_LOAD_SIGNED = """
import sys, threading
from pathlib import Path
import batch.model.loading as loading
from batch.model.repository import ModelRepository, resolve_model
from batch.model.signing import TrustPolicy
seen = []
def watched(*args, **kwargs):
    importing = [t.name for t in threading.enumerate() if t.name == "import-tensorflow"]
    seen.append(bool(importing))
    return original(*args, **kwargs)
original, loading.verify_model = loading.verify_model, watched
model = resolve_model(sys.argv[1], ModelRepository(Path(sys.argv[2])))
loaded = loading.load_model(model, TrustPolicy.from_key_file(sys.argv[3]))
print(loaded.verification.verified, seen)
print(sorted(loaded.signature.inputs))
"""


def test_a_workers_first_load_imports_tensorflow_while_it_verifies_the_model(
    plain_models: PlainModels, signing_keys: KeyPair, tmp_path: Path
) -> None:
    """As a Spark or Beam worker process loads its model: TensorFlow's import (seconds)
    runs in a thread of its own from the start of the first load, beside the private
    copy and the signature check (a child process), instead of after them. TensorFlow
    reads the model only once it has verified (a real signed model, the session key)."""
    model = plain_models(sign=True)
    lines = _new_python(_LOAD_SIGNED, str(model), str(tmp_path / "repo"), str(signing_keys.public))
    assert lines == ["True [True]", "['n', 's', 'x']"]


_SCORE_AND_REPORT_COLLECTOR = """
import gc, json, sys
from jobs.score import main
code = main(sys.argv[1:])
print(json.dumps([code, gc.isenabled(), gc.get_freeze_count() > 100_000]))
"""


def test_jobs_score_runs_start_up_without_the_collector_and_turns_it_back_on(
    plain_models: PlainModels, tmp_path: Path
) -> None:
    """Scored in this process: the collector is back on once the model is loaded, with
    TensorFlow's objects frozen. With Beam's workers as processes of their own, the
    driver turns it back on when scoring starts (it may load no model at all); a job
    that fails first, when main returns."""
    data = tmp_path / "data"
    write_plain_data(data, files=1, rows_per_file=100, row_group_rows=100)
    model = plain_models(sign=False)

    def run(name: str, *options: str, source: Path = data) -> list[object]:
        args = score_args(
            source, tmp_path / name, "--allow_unsigned", "--key_columns=id", *options, model=model
        )
        return json.loads(_new_python(_SCORE_AND_REPORT_COLLECTOR, *args)[-1])

    assert run("in-process", "--runner=DirectRunner") == [0, True, True]
    # A job that fails before it loads its model (main called in a process that goes on).
    assert run("failed", "--runner=DirectRunner", source=tmp_path / "nowhere")[:2] == [2, True]
    workers = run(
        "workers",
        "--runner=DirectRunner",
        "--in_process_rows=0",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=1",
    )
    assert workers[:2] == [0, True]


def _new_python(code: str, *args: str) -> list[str]:
    """The lines ``python -c code args`` prints, run in the project folder."""
    return new_python(code, *args).stdout.splitlines()
