"""batch.model.native: TensorFlow's shared libraries loaded ahead of its import, without
the GIL and without their start-up chatter; jobs.score starts it as soon as it knows that
this process will score. Real libraries, real imports and real jobs, in new processes
(what is loaded, and the file descriptor held, are the process's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batch.model.native import tensorflow_library_paths
from tests.conftest import PlainModels, new_python, score_args
from tests.plain_model import write_plain_data

_LOAD_THEN_IMPORT = """
import os, sys, threading, time
from batch.model import native

def rate(alive):
    n, began = 0, time.perf_counter()
    while alive():
        n += 1
    return n / (time.perf_counter() - began)

native.load_tensorflow_libraries()
loading = native._THREAD[0]
during = rate(loading.is_alive)  # the main thread's Python while the libraries load
idle = threading.Thread(target=time.sleep, args=(0.3,))
idle.start()
free = rate(idle.is_alive)  # the same loop beside a thread that holds no GIL
maps = open("/proc/self/maps").read()
os.write(2, b"a message of the job's own\\n")  # written while the descriptor is held
from batch.model.loading import import_tensorflow
tf = import_tensorflow()
print(json.dumps([
    "libtensorflow_cc.so.2" in maps, "tensorflow" in sys.modules, during / free,
    float(tf.constant(2.0) * 3),
]))
""".replace("import os,", "import json, os,")


@pytest.mark.skipif(not tensorflow_library_paths(), reason="TensorFlow's libraries not here")
def test_tensorflows_libraries_load_without_the_gil_then_the_import_finds_them() -> None:
    """The libraries load in a thread while the main thread runs Python at (nearly) its
    full pace: with the GIL held, as Python's extension loader holds it, it would stop for
    the whole load (about 4% of its pace, measured). Their chatter (absl's notice, the
    CUDA stub's) is dropped; what the process itself writes meanwhile is passed on."""
    done = new_python(_LOAD_THEN_IMPORT)
    loaded, imported, pace, six = json.loads(done.stdout.splitlines()[-1])
    assert loaded and imported and six == 6.0
    assert pace > 0.25, pace
    assert "a message of the job's own" in done.stderr
    assert "InitializeLog" not in done.stderr and "cudart_stub" not in done.stderr, done.stderr


_SCORE_AND_REPORT_LOAD = """
import json, sys
import jobs.score
from batch.model import native
calls = []
def load():
    calls.append("tensorflow" in sys.modules)
    native.load_tensorflow_libraries()
jobs.score.load_tensorflow_libraries = load
code = jobs.score.main(sys.argv[1:])
print(json.dumps([code, calls]))
"""


def test_jobs_score_loads_the_libraries_first_where_this_process_scores(
    plain_models: PlainModels, tmp_path: Path
) -> None:
    """A job scored in this process starts loading TensorFlow's libraries before its
    checks (TensorFlow not yet imported); one whose workers are other processes, or a dry
    run, loads nothing here."""
    data = tmp_path / "data"
    write_plain_data(data, files=1, rows_per_file=100, row_group_rows=100)
    model = plain_models(sign=False)

    def run(name: str, *options: str) -> tuple[list[object], str]:
        args = score_args(
            data, tmp_path / name, "--allow_unsigned", "--key_columns=id", *options, model=model
        )
        done = new_python(_SCORE_AND_REPORT_LOAD, *args)
        return json.loads(done.stdout.splitlines()[-1]), done.stderr

    (code, calls), stderr = run("in-process", "--runner=DirectRunner")
    assert code == 0 and calls == [False]
    assert "InitializeLog" not in stderr and "cudart_stub" not in stderr, stderr
    (code, calls), _ = run(
        "workers",
        "--runner=DirectRunner",
        "--in_process_rows=0",
        "--direct_running_mode=multi_processing",
        "--direct_num_workers=1",
    )
    assert code == 0 and calls == []
