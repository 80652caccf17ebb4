"""Signed models: real key pairs, real SavedModels, the real OpenSSF model-signing library.

Tampering (a changed byte of a variables file, an added file, a removed file, a
signature by another key) and an unsigned model are refused by
``python -m jobs.score`` (exit 2, one line, before TensorFlow loads anything)
and by ``python -m jobs.models verify``; ``--allow_unsigned`` scores an unsigned
model and the manifest records it; every worker's load path verifies by itself.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pytest

from batch.demo import paths as demo_paths
from batch.engine.job import ScoringJob, score_batches
from batch.model import signing
from batch.model.loading import load_model
from batch.model.repository import ModelRepository, resolve_model
from batch.model.resolved import ResolvedModel, signature_path
from batch.model.signing import (
    BadSignatureError,
    NoPublicKeyError,
    SignatureMismatchError,
    SigningKeyError,
    TrustPolicy,
    UnsignedModelError,
    WrongKeyError,
    key_fingerprint,
    sign_model,
    verify_model,
)
from batch.output.commit import MANIFEST, RunLayout, list_committed_runs
from jobs.score import main as score_main
from tests.conftest import PlainModels, TrainedModel
from tests.plain_model import write_plain_data
from tests.signing_keys import KeyPair, make_key_pair

PROJECT = Path(__file__).resolve().parent.parent
VARIABLES_DATA = "variables/variables.data-00000-of-00001"


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("other_keys"))


@pytest.fixture(scope="module")
def template(plain_model: Path) -> Path:
    """A plain SavedModel signed with the session key (its signature: model.sig beside it)."""
    return plain_model


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    write_plain_data(folder, files=1, rows_per_file=400, row_group_rows=100)
    return folder


@pytest.fixture()
def model(template: Path, tmp_path: Path) -> Path:
    """A private copy of the signed template, free to tamper with."""
    copy = tmp_path / "model"
    shutil.copytree(template, copy)
    shutil.copy2(signature_path(template), signature_path(copy))
    return copy


def _resolved(path: Path) -> ResolvedModel:
    return resolve_model(str(path), ModelRepository(path.parent / "repo"))


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=PROJECT, capture_output=True, text=True, timeout=300
    )


def _one_line_error(result: subprocess.CompletedProcess[str], prog: str) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{prog}: error: model "), lines[0]
    assert "Traceback" not in result.stderr and "tensorflow" not in result.stderr.lower()
    return lines[0]


# -- the tampering that must be refused ------------------------------------------------


def _change_a_byte(model: Path, keys: KeyPair, other: KeyPair) -> None:
    data = bytearray((model / VARIABLES_DATA).read_bytes())
    data[len(data) // 2] ^= 0x01
    (model / VARIABLES_DATA).write_bytes(bytes(data))


def _add_a_file(model: Path, keys: KeyPair, other: KeyPair) -> None:
    (model / "assets" / "extra.txt").write_text("not signed")


def _remove_a_file(model: Path, keys: KeyPair, other: KeyPair) -> None:
    (model / "fingerprint.pb").unlink()


def _sign_with_another_key(model: Path, keys: KeyPair, other: KeyPair) -> None:
    sign_model(model, other.private)


TAMPERING: dict[str, tuple[Callable[[Path, KeyPair, KeyPair], None], str]] = {
    "changed byte": (_change_a_byte, f"(changed: {VARIABLES_DATA};"),
    "added file": (_add_a_file, "(added: assets/extra.txt;"),
    "removed file": (_remove_a_file, "(missing: fingerprint.pb;"),
    "another key": (_sign_with_another_key, ": signed by another key: "),
}


@pytest.mark.parametrize("case", TAMPERING)
def test_tampering_is_refused_by_score_and_by_verify(
    case: str,
    model: Path,
    data: Path,
    signing_keys: KeyPair,
    other_keys: KeyPair,
    tmp_path: Path,
) -> None:
    tamper, expected = TAMPERING[case]
    assert verify_model(_resolved(model), TrustPolicy.from_key_file(signing_keys.public)).verified
    tamper(model, signing_keys, other_keys)
    output = tmp_path / "out"

    score = _run(
        "jobs.score",
        f"--input={data}",
        f"--model={model}",
        f"--output={output}",
        "--key_columns=id",
        f"--public_key={signing_keys.public}",
    )
    line = _one_line_error(score, "python -m jobs.score")
    assert expected in line and str(model) in line
    assert "python -m jobs.models sign" in line and "--force" in line
    assert list_committed_runs(output) == []

    verify = _run("jobs.models", "verify", str(model), f"--public_key={signing_keys.public}")
    assert expected in _one_line_error(verify, "python -m jobs.models verify")


@pytest.mark.parametrize("case", TAMPERING)
def test_every_load_path_refuses_tampering_itself(
    case: str, model: Path, signing_keys: KeyPair, other_keys: KeyPair, tmp_path: Path
) -> None:
    """What each worker process runs (load_model, inside score_batches): verification
    happens there too, not only in the driver, with the policy that travels in the job."""
    TAMPERING[case][0](model, signing_keys, other_keys)
    resolved = _resolved(model)
    trust = TrustPolicy.from_key_file(signing_keys.public)
    error = WrongKeyError if case == "another key" else SignatureMismatchError
    with pytest.raises(error):
        load_model(resolved, trust)
    job = pickle.loads(
        pickle.dumps(
            ScoringJob(resolved, RunLayout(tmp_path, "m", "1", "r"), ("id",), ("id",), trust=trust)
        )
    )
    assert job.trust == trust and job.trust.public_key == signing_keys.public.read_bytes()
    batch = pa.record_batch({"id": pa.array([1], pa.int64())})
    with pytest.raises(error):
        score_batches(job, [batch], batch.schema, 0)


def test_allow_unsigned_does_not_override_a_failed_signature(
    model: Path, data: Path, signing_keys: KeyPair, tmp_path: Path
) -> None:
    _change_a_byte(model, signing_keys, signing_keys)
    policy = TrustPolicy.from_key_file(signing_keys.public, allow_unsigned=True)
    with pytest.raises(SignatureMismatchError, match="does not override a failed signature"):
        verify_model(_resolved(model), policy)


# -- unsigned models ---------------------------------------------------------------------


def test_an_unsigned_model_is_refused(
    data: Path, tmp_path: Path, plain_models: PlainModels
) -> None:
    unsigned = plain_models(sign=False)
    result = _run(
        "jobs.score",
        f"--input={data}",
        f"--model={unsigned}",
        f"--output={tmp_path / 'out'}",
        "--key_columns=id",
    )
    line = _one_line_error(result, "python -m jobs.score")
    assert "is not signed: expected a signature file" in line
    assert f"{unsigned}.sig" in line and "--allow_unsigned" in line
    assert f"python -m jobs.models sign {unsigned} --key=" in line
    with pytest.raises(UnsignedModelError):
        load_model(_resolved(unsigned), TrustPolicy())


def test_allow_unsigned_scores_warns_and_is_recorded(
    data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, plain_models: PlainModels
) -> None:
    unsigned = plain_models(sign=False)
    output = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        rc = score_main(
            [
                "--runner=DirectRunner",
                f"--input={data}",
                f"--model={unsigned}",
                f"--output={output}",
                "--key_columns=id",
                "--allow_unsigned",
            ]
        )
    assert rc == 0
    warnings = [r for r in caplog.records if "UNVERIFIED MODEL" in r.getMessage()]
    assert warnings and warnings[0].levelno == logging.WARNING
    assert str(unsigned) in warnings[0].getMessage()
    (run,) = list_committed_runs(output)
    signature = json.loads((run.run_dir / MANIFEST).read_text())["model"]["signature"]
    assert signature == {
        "verified": False,
        "signature_file": None,
        "key_fingerprint": None,
        "allow_unsigned": True,
    }


def test_a_verified_run_records_the_key(
    model: Path, data: Path, signing_keys: KeyPair, tmp_path: Path
) -> None:
    output = tmp_path / "out"
    args = [f"--input={data}", f"--model={model}", f"--output={output}", "--key_columns=id"]
    # The default --public_key ($BATCHSCORE_PUBLIC_KEY here, the demo key otherwise).
    assert score_main(["--runner=DirectRunner", *args]) == 0
    (run,) = list_committed_runs(output)
    signature = run.manifest().to_json()["model"]["signature"]
    assert signature == {
        "verified": True,
        "signature_file": str(signature_path(model)),
        "key_fingerprint": key_fingerprint(signing_keys.public.read_bytes()),
        "allow_unsigned": False,
    }


# -- keys and signature files ------------------------------------------------------------


def test_signature_files_sit_beside_the_signed_directory(tmp_path: Path) -> None:
    assert signature_path(tmp_path / "models" / "churn") == tmp_path / "models" / "churn.sig"
    assert signature_path(tmp_path / "churn/") == tmp_path / "churn.sig"
    version = tmp_path / "repo" / "churn" / "3"
    assert signature_path(version / "saved_model") == version / "saved_model.sig"


def test_a_signed_model_needs_a_public_key(
    model: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "no_such_key.pem"
    monkeypatch.setenv(demo_paths.PUBLIC_KEY_ENV, str(missing))
    with pytest.raises(NoPublicKeyError, match="no public key is configured"):
        verify_model(_resolved(model), TrustPolicy(None, key_source=f"{missing} does not exist"))
    rc = score_main(
        [f"--input={data}", f"--model={model}", f"--output={tmp_path}", "--key_columns=id"]
    )
    assert rc == 2


def test_key_files_are_checked(signing_keys: KeyPair, tmp_path: Path) -> None:
    with pytest.raises(SigningKeyError, match="found a PRIVATE key"):
        TrustPolicy.from_key_file(signing_keys.private)
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(SigningKeyError, match="not a PEM public key"):
        TrustPolicy.from_key_file(tmp_path / "junk.pem")
    with pytest.raises(SigningKeyError, match="cannot read it"):
        sign_model(tmp_path, tmp_path / "missing.pem")


def test_a_damaged_signature_file_is_refused(model: Path, signing_keys: KeyPair) -> None:
    signature_path(model).write_text('{"mediaType": "truncated')
    with pytest.raises(BadSignatureError, match="does not verify"):
        verify_model(_resolved(model), TrustPolicy.from_key_file(signing_keys.public))


@pytest.mark.parametrize("case", TAMPERING)
def test_the_check_runs_in_a_child_and_here_alike(
    case: str,
    model: Path,
    signing_keys: KeyPair,
    other_keys: KeyPair,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The library's check runs in a child Python (its import would hold the GIL for
    about a second); where no child can run it (here: its Python is missing), this
    process checks the files itself and refuses them the same way."""
    trust = TrustPolicy.from_key_file(signing_keys.public)
    assert verify_model(_resolved(model), trust).verified
    TAMPERING[case][0](model, signing_keys, other_keys)
    error = WrongKeyError if case == "another key" else SignatureMismatchError
    with pytest.raises(error) as in_child:
        verify_model(_resolved(model), trust)
    monkeypatch.setattr(sys, "executable", str(model / "no-such-python"))
    signing._CHECKING_CHILD.close()  # the next check would start a child: it cannot
    with pytest.raises(error) as here:
        verify_model(_resolved(model), trust)
    assert str(here.value) == str(in_child.value)


def test_the_library_is_not_imported_by_the_verifying_process(
    model: Path, signing_keys: KeyPair
) -> None:
    code = (
        "import sys; from pathlib import Path; "
        "from batch.model.repository import ModelRepository, resolve_model; "
        "from batch.model.signing import TrustPolicy, verify_model; "
        f"trust = TrustPolicy.from_key_file({str(signing_keys.public)!r}); "
        f"m = resolve_model({str(model)!r}, ModelRepository(Path({str(model.parent / 'repo')!r}))); "
        "print(verify_model(m, trust).verified, "
        "'model_signing' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["True", "False"]


def test_the_demo_makes_its_own_key_pair_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BATCHSCORE_DEMO_DIR", str(tmp_path))
    monkeypatch.delenv(demo_paths.SIGNING_KEY_ENV)
    monkeypatch.delenv(demo_paths.PUBLIC_KEY_ENV)
    key = demo_paths.ensure_signing_key()
    assert key == tmp_path / "keys" / "signing_key.pem"
    assert key.stat().st_mode & 0o077 == 0, "the private key is its owner's alone"
    public_key = demo_paths.default_public_key()
    assert public_key == demo_paths.demo_public_key()
    public = public_key.read_bytes()
    assert demo_paths.ensure_signing_key() == key
    assert public_key.read_bytes() == public, "made once, then reused"
    TrustPolicy.from_key_file(public_key)


def test_the_trained_model_is_signed_at_registration(trained_model: TrainedModel) -> None:
    model = trained_model.model
    assert model.signature_file == model.saved_model_dir.parent / "saved_model.sig"
    result = verify_model(model, TrustPolicy.from_key_file(demo_paths.default_public_key()))
    assert result.verified and result.key_fingerprint
