"""Where the demo keeps its data, models and outputs (one git-ignored folder).

``BATCHSCORE_DEMO_DIR`` overrides the default ``.demo/`` at the project root.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEMO_MODEL_NAME = "loan_default"


def demo_dir() -> Path:
    return Path(os.environ.get("BATCHSCORE_DEMO_DIR", PROJECT_ROOT / ".demo"))


def demo_data_dir() -> Path:
    return demo_dir() / "data"


def demo_model_repo() -> Path:
    return demo_dir() / "models"


def demo_output_dir() -> Path:
    return demo_dir() / "output"
