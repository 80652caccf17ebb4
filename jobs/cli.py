"""What every batchscore command line shares: logging set-up and error reporting."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

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
