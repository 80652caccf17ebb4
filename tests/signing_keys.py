"""Model-signing key pairs for tests.

``signing_keys`` (session scope, autouse through tests/conftest.py) makes one
EC P-256 key pair and installs it as the default signing and public key
(``BATCHSCORE_SIGNING_KEY``, ``BATCHSCORE_PUBLIC_KEY``) for the whole session,
subprocesses included: every model the tests register or build is signed with
it and every scoring run verifies with it, and the developer's own demo keys
are never touched.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batch.demo.paths import PUBLIC_KEY_ENV, SIGNING_KEY_ENV
from batch.model.signing import generate_key_pair


@dataclass(frozen=True)
class KeyPair:
    private: Path
    public: Path


def make_key_pair(folder: Path) -> KeyPair:
    keys = KeyPair(folder / "signing_key.pem", folder / "public_key.pem")
    generate_key_pair(keys.private, keys.public)
    return keys


@pytest.fixture(scope="session", autouse=True)
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyPair]:
    keys = make_key_pair(tmp_path_factory.mktemp("signing_keys"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(SIGNING_KEY_ENV, str(keys.private))
        patch.setenv(PUBLIC_KEY_ENV, str(keys.public))
        yield keys
