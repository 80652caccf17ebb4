"""Where the demo keeps its data, models and outputs (one git-ignored folder).

``BATCHSCORE_DEMO_DIR`` overrides the default ``.demo/`` at the project root.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL_NAME = "loan_default"


def demo_dir() -> Path:
    return Path(os.environ.get("BATCHSCORE_DEMO_DIR", PROJECT_ROOT / ".demo"))


def demo_data_dir() -> Path:
    return demo_dir() / "data"


def demo_model_repo() -> Path:
    return demo_dir() / "models"


def demo_output_dir() -> Path:
    return demo_dir() / "output"


# -- model signing keys ----------------------------------------------------------------
# The demo signs the models it registers with its own EC P-256 key pair, made on
# first use. BATCHSCORE_SIGNING_KEY and BATCHSCORE_PUBLIC_KEY name other PEM files
# as the defaults of --key (registration) and --public_key (scoring).

SIGNING_KEY_ENV = "BATCHSCORE_SIGNING_KEY"
PUBLIC_KEY_ENV = "BATCHSCORE_PUBLIC_KEY"


def demo_keys_dir() -> Path:
    return demo_dir() / "keys"


def demo_signing_key() -> Path:
    return demo_keys_dir() / "signing_key.pem"


def demo_public_key() -> Path:
    return demo_keys_dir() / "public_key.pem"


def default_signing_key() -> Path:
    """$BATCHSCORE_SIGNING_KEY, else the demo's private key."""
    configured = os.environ.get(SIGNING_KEY_ENV)
    return Path(configured).expanduser() if configured else demo_signing_key()


def default_public_key() -> Path:
    """$BATCHSCORE_PUBLIC_KEY, else the demo's public key."""
    configured = os.environ.get(PUBLIC_KEY_ENV)
    return Path(configured).expanduser() if configured else demo_public_key()


def ensure_signing_key(path: Path | None = None) -> Path:
    """The private key to sign with: ``path``, else the default; the demo's key pair is
    created (EC P-256) if it is the one asked for and missing. Any other key must exist."""
    key = path if path is not None else default_signing_key()
    if key == demo_signing_key() and not key.is_file():
        ensure_demo_keys()
    return key


def ensure_demo_keys() -> None:
    """Make the demo key pair if it is missing: both files are written in a private
    staging folder that is renamed into place, so concurrent first runs agree on one pair."""
    if demo_signing_key().is_file():
        return
    from batch.core.errors import UsageError
    from batch.model.signing import generate_key_pair

    keys = demo_keys_dir()
    keys.parent.mkdir(parents=True, exist_ok=True)
    staging = keys.with_name(f".keys-{uuid.uuid4().hex}")
    staging.mkdir(mode=0o700)
    try:
        generate_key_pair(staging / demo_signing_key().name, staging / demo_public_key().name)
        os.rename(staging, keys)  # fails if another process made the folder first
    except OSError:
        if not demo_signing_key().is_file():
            raise UsageError(
                f"{keys} exists but holds no {demo_signing_key().name}; remove that folder to "
                "let the demo make a new key pair, or pass --key=PRIVATE_KEY.pem"
            ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
