"""Named crash points, for proving the commit protocol with real processes.

Tests set ``BATCHSCORE_FAULT_POINT=<name>`` in a child process; when that
process reaches the named point it kills itself with SIGKILL, exactly as an
out-of-memory kill or a lost machine would, with no chance to clean up.
Unset (always, outside those tests) a fault point costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

FAULT_ENV = "BATCHSCORE_FAULT_POINT"

SCORING = "scoring"  # a split has scored its first batch; parts are half written
PART_WRITTEN = "part-written"  # a part file is complete under its temporary name
COMMIT_MOVED = "commit-moved"  # staging renamed into place; no manifest yet
COMMIT_MANIFEST = "commit-manifest"  # manifest written; no _SUCCESS yet
POINTS = (SCORING, PART_WRITTEN, COMMIT_MOVED, COMMIT_MANIFEST)


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
