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
# With this set to a file path, the point fires once: in the first process to
# create that file (so a retried task or bundle then succeeds).
FAULT_ONCE_ENV = "BATCHSCORE_FAULT_ONCE"

SCORING = "scoring"  # a split has scored its first batch; parts are half written
PART_WRITTEN = "part-written"  # a part file is complete under its temporary name
COMMIT_MOVED = "commit-moved"  # staging renamed into place; no manifest yet
COMMIT_MANIFEST = "commit-manifest"  # manifest written; no _SUCCESS yet
POINTS = (SCORING, PART_WRITTEN, COMMIT_MOVED, COMMIT_MANIFEST)
# The object-store protocol (batch.output.objstore): no rename, so other steps.
ATTEMPT_WRITTEN = "attempt-written"  # an attempt's parts are complete; its record is not
COMMIT_CLEANED = "commit-cleaned"  # manifest written, losers removed; no _SUCCESS yet
OBJECT_POINTS = (SCORING, ATTEMPT_WRITTEN, COMMIT_MANIFEST, COMMIT_CLEANED)


def fault_point(name: str) -> None:
    if os.environ.get(FAULT_ENV) != name:
        return
    marker = os.environ.get(FAULT_ONCE_ENV)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
