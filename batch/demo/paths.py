"""Where the demo keeps its data, models and outputs (one git-ignored folder).

``BATCHSCORE_DEMO_DIR`` overrides the default ``.demo/`` at the project root.

The demo's folders and keys are defaults only where they make sense: batchscore run from
its source checkout (``make demo``), or wherever ``BATCHSCORE_DEMO_DIR`` is set. Code
imported from a zip (spark-submit --py-files), an installed wheel (a Dataflow image) and a
spark-submit driver get no demo defaults (:func:`demo_default`): every folder must be named.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from batch.core.errors import UsageError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEMO_MODEL_NAME = "loan_default"
DEMO_DIR_ENV = "BATCHSCORE_DEMO_DIR"


def demo_dir() -> Path:
    return Path(os.environ.get(DEMO_DIR_ENV, PROJECT_ROOT / ".demo"))


def demo_unavailable() -> str | None:
    """Why the demo's folders must not serve as defaults in this process, or None when
    they may (a source checkout, or $BATCHSCORE_DEMO_DIR set)."""
    if os.environ.get(DEMO_DIR_ENV):
        return None
    if "PYSPARK_GATEWAY_PORT" in os.environ:  # spark-submit hands its driver this port
        return "it runs under spark-submit"
    if not Path(__file__).is_file():
        return f"its code is imported from an archive ({_archive_of(Path(__file__))})"
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        return f"it is installed ({PROJECT_ROOT}), not run from its source checkout"
    return None


def _archive_of(path: Path) -> Path:
    for parent in path.parents:
        if parent.is_file():
            return parent
    return path


def demo_default(option: str, default: Callable[[], Path]) -> Path:
    """``default()`` (a demo folder) as the value of ``option`` that was not given; a
    :class:`UsageError` naming ``option`` where the demo's defaults do not apply."""
    reason = demo_unavailable()
    if reason is None:
        return default()
    raise UsageError(
        f"{option} is required: the demo's folders are defaults only when batchscore runs "
        f"from its source checkout, and {reason}. Pass {option} (or set {DEMO_DIR_ENV} to "
        "use the demo's folders)"
    )


def demo_data_dir() -> Path:
    return demo_dir() / "data"


def demo_model_repo() -> Path:
    return demo_dir() / "models"


def demo_output_dir() -> Path:
    return demo_dir() / "output"


def model_repo_or_demo(model_repo: str | Path | None, model: object) -> str | Path:
    """``--model_repo`` as given, else the demo's repository: required (:func:`demo_default`)
    when ``model`` is a registered name, unread (so any folder) when it is a path or URI."""
    if model_repo is not None:
        return model_repo
    from batch.model.repository import is_registered_name

    if isinstance(model, str) and is_registered_name(model):
        return demo_default("--model_repo", demo_model_repo)
    return demo_model_repo()


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


def default_public_key() -> Path | None:
    """$BATCHSCORE_PUBLIC_KEY, else the demo's public key where the demo's defaults apply
    (:func:`demo_unavailable`), else None."""
    configured = os.environ.get(PUBLIC_KEY_ENV)
    if configured:
        return Path(configured).expanduser()
    return demo_public_key() if demo_unavailable() is None else None


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
