"""Flex Template entry point: ``python -m jobs.score`` with the template's parameters."""

from jobs.cli import exit_process
from jobs.score import main

if __name__ == "__main__":
    exit_process(main())
