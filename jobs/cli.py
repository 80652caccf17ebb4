"""What every batchscore command line shares: logging set-up and error reporting."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from batch.errors import BatchScoreError

EXIT_ERROR = 2


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_main(main: Callable[[], int], prog: str) -> int:
    """Run ``main``; a :class:`BatchScoreError` becomes one line on stderr and exit code 2."""
    try:
        return main()
    except BatchScoreError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; nothing was committed by the interrupted run", file=sys.stderr)
        return 130


def exit_process(code: int) -> NoReturn:
    """End a command-line process without the interpreter's teardown.

    Tearing down TensorFlow and Beam takes over a second after the work is
    done; everything a job writes is closed and renamed into place before its
    main() returns, so there is nothing left for the teardown to do.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
