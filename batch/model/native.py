"""TensorFlow's shared libraries loaded without the GIL, ahead of its import.

Importing TensorFlow starts by loading its native libraries (``libtensorflow_cc``,
``libtensorflow_framework`` and the Python bindings' common library, about 1 GB of
code): about 0.3 s of relocations and static initialisers, run by Python's extension
loader with the GIL held, so that every other thread of the process stops meanwhile.
:func:`load_tensorflow_libraries` loads them first in a thread of its own through
``dlopen`` called as a C function (``ctypes`` releases the GIL around a foreign call),
with ``RTLD_LOCAL`` as a dependency would be: the import that follows finds them loaded
(TensorFlow's own ``RTLD_GLOBAL`` load of its bindings then makes them global, as it
would have). Meanwhile the other threads run on: the job's checks, its planning, the
model's private copy and verification.

Nothing here imports TensorFlow; where the files are not found (another TensorFlow
build, another platform) nothing is loaded, and the import loads them as usual.

TensorFlow 2.21 prints CUDA and oneDNN notices through absl as its libraries load and
import, before TF_CPP_MIN_LOG_LEVEL is read, straight to file descriptor 2: from the
first load until the import ends, the descriptor is held (:func:`hold_stderr`) and that
chatter dropped; anything else written to it meanwhile is passed on
(:func:`release_stderr`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Inside the installed ``tensorflow`` package, in the order the bindings need them.
TENSORFLOW_LIBRARIES = (
    "libtensorflow_framework.so.2",
    "libtensorflow_cc.so.2",
    "python/lib_pywrap_tensorflow_common.so",
)


def tensorflow_library_paths() -> list[Path]:
    """The installed TensorFlow's native libraries this module loads early: none where
    TensorFlow is not installed, not on Linux, or laid out otherwise."""
    if not sys.platform.startswith("linux"):
        return []
    try:
        spec = importlib.util.find_spec("tensorflow")
    except (ImportError, ValueError):
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    package = Path(next(iter(spec.submodule_search_locations)))
    paths = [package / name for name in TENSORFLOW_LIBRARIES]
    return paths if all(path.is_file() for path in paths) else []


def _dlopen(paths: list[Path]) -> None:
    dlopen = ctypes.CDLL(None).dlopen
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    for path in paths:
        # A failure leaves the library to the import, which then says what is wrong.
        if dlopen(os.fsencode(path), os.RTLD_LAZY | os.RTLD_LOCAL) is None:
            log.debug("%s: not loaded ahead of TensorFlow's import", path)
            return


def load_tensorflow_libraries() -> None:
    """Start loading TensorFlow's native libraries in a background thread, once per
    process (later calls do nothing); :func:`wait_for_tensorflow_libraries` waits. A
    command calls it as soon as it knows that it will import TensorFlow; its chatter is
    caught (:func:`hold_stderr`) until TensorFlow's import ends."""
    with _LOCK:
        if _THREAD or "tensorflow" in sys.modules:
            return
        paths = tensorflow_library_paths()
        if not paths:
            return
        hold_stderr()
        thread = threading.Thread(
            target=_dlopen, args=(paths,), name="load-tensorflow-libraries", daemon=True
        )
        _THREAD.append(thread)
        thread.start()


def wait_for_tensorflow_libraries() -> None:
    """Wait (without the GIL) until the libraries :func:`load_tensorflow_libraries`
    started loading are loaded; at once where none are loading."""
    with _LOCK:
        thread = _THREAD[0] if _THREAD else None
    if thread is not None and thread is not threading.current_thread():
        thread.join()


_LOCK = threading.Lock()
_THREAD: list[threading.Thread] = []


_STARTUP_CHATTER = ("WARNING: All log messages before absl::InitializeLog()", "I0000 ", "E0000 ")
_STDERR_LOCK = threading.Lock()
# (the real stderr, the file standing in for it) while TensorFlow loads and imports.
_HELD_STDERR: list[tuple[int, Any]] = []


def hold_stderr() -> None:
    """Catch what is written to file descriptor 2 from now until :func:`release_stderr`
    (nothing where it is caught already). A child process started meanwhile inherits the
    file: start none that outlives the hold."""
    with _STDERR_LOCK:
        if _HELD_STDERR:
            return
        sys.stderr.flush()
        saved = os.dup(2)
        capture = tempfile.TemporaryFile()  # noqa: SIM115 (closed by release_stderr)
        os.dup2(capture.fileno(), 2)
        _HELD_STDERR.append((saved, capture))


def release_stderr() -> None:
    """Give file descriptor 2 back now if it is held, passing on what was written to it
    meanwhile (TensorFlow's start-up chatter aside), once the libraries that may still be
    loading have loaded. A job that ends while TensorFlow loads or imports in the
    background (an error found by its first checks) calls it before exiting, so that its
    message is not lost."""
    wait_for_tensorflow_libraries()
    with _STDERR_LOCK:
        if not _HELD_STDERR:
            return
        saved, capture = _HELD_STDERR.pop()
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
        capture.close()
    for line in text.splitlines():
        if line and not line.startswith(_STARTUP_CHATTER):
            print(line, file=sys.stderr)
    sys.stderr.flush()
