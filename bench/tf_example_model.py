"""The demo model with a second signature that takes serialized tf.Examples.

    python -m bench.tf_example_model --model=SAVED_MODEL_DIR --output=DIR

``serving_default`` is the model's own (one column per raw feature); ``tf_example``
parses serialized tf.Examples with a FixedLenFeature per raw feature (as TFX's
``serve_tf_examples_fn`` does) and calls it. Both signatures run the same graph, so
scoring one SavedModel through each measures what the tf.Example path costs
(``python -m bench.run --paths=example_columns,example_tf``). Signed with the demo key.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXAMPLE_SIGNATURE = "tf_example"


def build(saved_model_dir: Path, output: Path) -> Path:
    from batch.demo.paths import ensure_signing_key
    from batch.model.loading import import_tensorflow
    from batch.model.signing import sign_model

    tf = import_tensorflow()
    loaded = tf.saved_model.load(str(saved_model_dir))
    serve = loaded.signatures["serving_default"]
    spec = {
        name: tf.io.FixedLenFeature([], tensor.dtype)
        for name, tensor in serve.structured_input_signature[1].items()
    }

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def from_examples(serialized: Any) -> dict[str, Any]:
        return serve(**tf.io.parse_example(serialized, spec))

    if output.exists():
        shutil.rmtree(output)
    tf.saved_model.save(
        loaded, str(output), signatures={"serving_default": serve, EXAMPLE_SIGNATURE: from_examples}
    )
    extra = saved_model_dir / "assets.extra"  # the drift baseline: both paths count it
    if extra.is_dir():
        shutil.copytree(extra, output / "assets.extra")
    sign_model(output, ensure_signing_key())
    return output


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tf_example_model", description=__doc__)
    parser.add_argument("--model", type=Path, required=True, help="The SavedModel to wrap.")
    parser.add_argument("--output", type=Path, required=True, help="Where the new one goes.")
    args = parser.parse_args(argv)
    print(build(args.model, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
