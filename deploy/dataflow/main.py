"""Flex Template entry point: ``python -m jobs.score`` with the template's parameters.

Dataflow's launcher passes every parameter as ``--name=value``: jobs.score's flags
(``force``, ``allow_unsigned``, ...) take ``true`` or ``false`` here, and the runner is
Dataflow (runners.dataflow.flex_template_argv). metadata.json beside this file declares
the parameters, every option of jobs.score but --runner and the Spark ones; it is
generated from jobs.score's parser (jobs.score.write_flex_template_metadata).
"""

import sys

from jobs.cli import exit_process
from jobs.score import build_parser, main
from runners.dataflow import flex_template_argv

if __name__ == "__main__":
    exit_process(main(flex_template_argv(build_parser(), sys.argv[1:])))
