"""What every batchscore command line shares: logging set-up and error reporting."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import NoReturn

from batch.core.errors import BatchScoreError

EXIT_ERROR = 2


# Argument types shared by the command lines: the message says what was expected and found.
def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, found {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found '{text}'") from None
    if not value >= 0.0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number >= 0, found {value}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("expected a number > 0, found 0")
    return value


def fraction(text: str) -> float:
    """A share in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], found '{text}'") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], found {value}")
    return value


def open_fraction(text: str) -> float:
    """A share strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), found '{text}'") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a share strictly between 0 and 1 (e.g. 0.1), found {value}"
        )
    return value


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
