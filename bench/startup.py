"""Each piece of a small job's start-up, one after another in one process (no overlap).

    python -m bench.startup --input=DIR --model=NAME@VERSION --model_repo=REPO

Prints one JSON object: seconds per piece, in the order a job without overlap would
pay them. jobs.score overlaps the imports and the model load with the checks
(batch.model.loading.preload_model, jobs.cli.preload_module); the benchmark shows these pieces beside
the whole job and a bare ``python -c "import tensorflow"`` of the same invocation.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    parser.add_argument("--input", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--model_repo", required=True)
    args = parser.parse_args(argv)
    from batch.core.imports import pause_collection

    pause_collection()  # as jobs.score does, until the model is loaded
    pieces: dict[str, float] = {}
    found: dict[str, Any] = {}

    def timed(name: str, step: Callable[[], Any]) -> None:
        began = time.perf_counter()
        found[name] = step()
        pieces[name] = round(time.perf_counter() - began, 3)

    timed("import batchscore (batch.api, jobs.cli)", lambda: importlib.import_module("jobs.cli"))
    from batch.engine.prepare import resolve_inputs, trust_policy
    from batch.model.loading import import_tensorflow, load_model, plan_model_rows
    from batch.model.repository import ModelRepository, resolve_model
    from batch.model.signing import verify_once

    timed("list the input, read its footers", lambda: resolve_inputs(args.input, "fail"))
    # as a job plans (batch.api): a model loaded to score few rows is not rewritten
    plan_model_rows(sum(f.num_rows for f in found["list the input, read its footers"].files))
    timed(
        "resolve the model",
        lambda: resolve_model(args.model, ModelRepository(args.model_repo)),
    )
    trust = trust_policy(None, False)
    timed("verify the model's signature", lambda: verify_once(found["resolve the model"], trust))
    timed("import TensorFlow", import_tensorflow)
    timed("import Beam (runners.beam)", lambda: importlib.import_module("runners.beam"))
    timed(
        "load the model, prepare its first call",
        lambda: load_model(found["resolve the model"], trust),
    )
    print(json.dumps(pieces))
    return 0


if __name__ == "__main__":
    sys.exit(main())
