"""`python -m jobs.models`: list, show, register, sign, verify, promote, and aliases.

Real SavedModels, real keys and the real model-signing library; most commands
run in-process through ``main()``, a few as real processes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from batch.core.errors import ModelError, UsageError
from batch.core.fsutil import file_sha256
from batch.model.repository import ModelRepository, PromotionRefused
from batch.model.signing import key_fingerprint
from batch.output.commit import list_committed_runs
from jobs.models import build_parser
from jobs.models import main as models_main
from tests.conftest import PlainModels, TrainedModel, score
from tests.plain_model import write_plain_data
from tests.signing_keys import KeyPair, make_key_pair

PROJECT = Path(__file__).resolve().parent.parent
PROG = "python -m jobs.models"


@pytest.fixture(scope="module")
def saved_model(plain_models: PlainModels) -> Path:
    """An unsigned plain SavedModel to register (registration signs the copy)."""
    return plain_models(sign=False)


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return make_key_pair(tmp_path_factory.mktemp("other_keys"))


@pytest.fixture()
def repo(tmp_path: Path) -> Path:
    return tmp_path / "repo"


def _models(capsys: pytest.CaptureFixture[str], repo: Path, *args: str) -> tuple[int, str, str]:
    rc = models_main([*args, f"--model_repo={repo}"])
    out, err = capsys.readouterr()
    return rc, out, err


def _register(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path, *extra: str
) -> str:
    rc, out, err = _models(
        capsys, repo, "register", str(saved_model), "--name=plain", "--key_columns=id", *extra
    )
    assert rc == 0, err
    return out


def test_register_signs_the_new_version(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path, signing_keys: KeyPair
) -> None:
    out = _register(capsys, repo, saved_model)
    fingerprint = key_fingerprint(signing_keys.public.read_bytes())
    version = repo / "plain" / "1"
    assert out.startswith(f"registered plain@1 at {version}, signed with {signing_keys.private}")
    assert fingerprint[:16] in out
    assert (version / "saved_model.sig").is_file()
    assert not (saved_model.parent / "model.sig").exists(), "the source is left as it was"
    assert sorted(p.name for p in (repo / "plain").iterdir()) == ["1"], "no staging left"
    assert ModelRepository(repo).metadata("plain", 1)["key_columns"] == ["id"]

    rc, out, err = _models(capsys, repo, "verify", "plain@1")
    assert rc == 0, err
    assert out.startswith("model plain@1 ") and f"signed by key {fingerprint[:16]}" in out


def test_list_and_show(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path, signing_keys: KeyPair
) -> None:
    rc, out, _ = _models(capsys, repo, "list")
    assert rc == 0 and "no registered models" in out
    _register(capsys, repo, saved_model)
    _register(capsys, repo, saved_model)
    (repo / "plain" / "2" / "saved_model.sig").unlink()
    assert _models(capsys, repo, "promote", "plain@1", "--to", "production")[0] == 0
    assert _models(capsys, repo, "promote", "plain@1", "--to", "canary")[0] == 0

    rc, out, _ = _models(capsys, repo, "list")
    header, first, second = out.strip().splitlines()
    assert header.split() == ["NAME", "VERSION", "CREATED", "SIGNED", "ALIASES"]
    fingerprint = key_fingerprint(signing_keys.public.read_bytes())
    assert first.split()[:2] == ["plain", "1"] and f"yes (key {fingerprint[:16]})" in first
    assert first.split()[-1] == "canary,production"
    assert second.split()[:2] == ["plain", "2"] and second.split()[-1] == "no"

    rc, out, _ = _models(capsys, repo, "show", "plain@production")
    shown = json.loads(out)
    assert rc == 0 and shown["name"] == "plain" and shown["version"] == 1
    assert shown["repository"]["signed"] is True
    assert shown["repository"]["key_fingerprint"] == fingerprint
    assert shown["repository"]["aliases"] == ["canary", "production"]
    assert shown["repository"]["signature_file"] == str(repo / "plain/1/saved_model.sig")
    assert shown["repository"]["drift_baseline"] is None  # not trained by jobs.train


def test_sign_refuses_to_replace_a_signature_unless_forced(
    capsys: pytest.CaptureFixture[str],
    repo: Path,
    saved_model: Path,
    other_keys: KeyPair,
) -> None:
    _register(capsys, repo, saved_model)
    rc, _, err = _models(capsys, repo, "sign", "plain@1", f"--key={other_keys.private}")
    assert rc == 2 and "is already signed" in err and "--force" in err
    rc, out, err = _models(
        capsys, repo, "sign", "plain@1", f"--key={other_keys.private}", "--force"
    )
    assert rc == 0, err
    assert out.startswith("signed plain@1 ")
    # Now the session key no longer verifies it; the other key does.
    rc, _, err = _models(capsys, repo, "verify", "plain@1")
    assert rc == 2 and "signed by another key" in err and len(err.strip().splitlines()) == 1
    rc, _, err = _models(capsys, repo, "verify", "plain@1", f"--public_key={other_keys.public}")
    assert rc == 0, err


def test_sign_a_plain_directory_writes_the_signature_beside_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, saved_model: Path
) -> None:
    copy = tmp_path / "churn"
    shutil.copytree(saved_model, copy)
    rc, _, err = _models(capsys, tmp_path / "repo", "verify", str(copy))
    assert rc == 2 and "is not signed" in err
    rc, out, err = _models(capsys, tmp_path / "repo", "sign", str(copy))
    assert rc == 0, err
    assert out.startswith("signed churn@sha256-")
    assert (tmp_path / "churn.sig").is_file() and not (copy / "churn.sig").exists()
    assert _models(capsys, tmp_path / "repo", "verify", str(copy))[0] == 0


def test_promote_records_who_when_and_the_previous_version(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path
) -> None:
    _register(capsys, repo, saved_model)
    _register(capsys, repo, saved_model)
    rc, out, _ = _models(capsys, repo, "promote", "plain@1", "--to", "production")
    assert rc == 0 and out.startswith("promoted plain@1 to 'production' by ")
    rc, out, _ = _models(
        capsys, repo, "promote", "plain@2", "--to", "production", "--reason", "better AUC"
    )
    assert rc == 0 and "(was version 1)" in out

    state = json.loads((repo / "plain" / "aliases.json").read_text())
    record = state["aliases"]["production"]
    assert record["version"] == 2 and record["previous_version"] == 1
    assert record["forced"] is False and record["overridden"] == []
    assert record["reason"] == "better AUC"
    assert "@" in record["promoted_by"] and record["promoted_at"].endswith("+00:00")
    assert [h["version"] for h in state["history"]] == [1, 2]
    assert not [p for p in (repo / "plain").iterdir() if p.name.endswith(".tmp")]

    resolved = ModelRepository(repo).resolve("plain@production")
    assert resolved.version == "2" and resolved.alias == "production"


def test_promote_an_unsigned_version_only_when_forced(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path
) -> None:
    _register(capsys, repo, saved_model)
    (repo / "plain" / "1" / "saved_model.sig").unlink()
    rc, _, err = _models(capsys, repo, "promote", "plain@1", "--to", "production")
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "cannot promote plain@1 to 'production': plain@1 is not signed" in err
    assert "--force" in err
    assert not (repo / "plain" / "aliases.json").exists()

    rc, out, _ = _models(capsys, repo, "promote", "plain@1", "--to", "production", "--force")
    assert rc == 0 and "FORCED over: plain@1 is not signed" in out
    record = json.loads((repo / "plain" / "aliases.json").read_text())["aliases"]["production"]
    assert record["forced"] is True and "not signed" in record["overridden"][0]


def test_promotion_gates_are_pluggable(tmp_path: Path, saved_model: Path) -> None:
    """The hook a later condition (e.g. a validation blessing) plugs into."""

    class NeverBlessed:
        name = "blessed"

        def check(self, repo: ModelRepository, model: object, alias: str) -> str | None:
            return f"not blessed for {alias}"

    repo = ModelRepository(tmp_path / "repo")
    repo.register("plain", saved_model, {})
    with pytest.raises(PromotionRefused, match="not blessed for production"):
        repo.promote("plain@1", "production", gates=[NeverBlessed()])
    promotion = repo.promote("plain@1", "production", gates=[NeverBlessed()], force=True)
    assert promotion.forced and promotion.overridden == ("not blessed for production",)
    assert repo.promote("plain@1", "canary", gates=()).overridden == ()


def test_bad_aliases_and_specs_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path
) -> None:
    _register(capsys, repo, saved_model)
    for args, expected in (
        (("promote", "plain@1", "--to", "Prod!"), "alias 'Prod!': expected lower-case"),
        (("promote", "plain@1", "--to", "latest"), "and not 'latest'"),
        (("promote", "plain@9", "--to", "canary"), "has no version or alias '9'"),
        (("show", "plain@staging"), "(versions: 1; aliases: none; or use @latest)"),
        (("show", "nothing@1"), "no registered model named 'nothing'"),
        (("verify", "plain@nope"), "has no version or alias 'nope'"),
    ):
        rc, _, err = _models(capsys, repo, *args)
        assert rc == 2, args
        (line,) = err.strip().splitlines()
        assert line.startswith(f"{PROG} {args[0]}: error: ") and expected in line, line
    assert _models(capsys, repo, "promote", "plain@1", "--to", "production")[0] == 0
    rc, _, err = _models(capsys, repo, "promote", "plain@production", "--to", "canary")
    assert rc == 2 and "name the version to promote" in err


def test_summary_file_of_a_success_and_of_a_failure(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path, tmp_path: Path
) -> None:
    """--summary_file tells a scheduler how a models command ended, failure included."""
    _register(capsys, repo, saved_model)
    summary = tmp_path / "summary.json"
    assert (
        _models(
            capsys, repo, "promote", "plain@1", "--to", "production", f"--summary_file={summary}"
        )[0]
        == 0
    )
    done = json.loads(summary.read_text())
    assert (done["job"], done["status"], done["model"]) == ("models promote", "ok", "plain@1")
    rc, _, err = _models(capsys, repo, "show", "nothing@1", f"--summary_file={summary}")
    assert rc == 2
    failed = json.loads(summary.read_text())
    assert (failed["job"], failed["status"]) == ("models show", "fail")
    assert failed["reason"] in err and "no registered model named 'nothing'" in failed["reason"]


def test_an_alias_to_a_missing_version_is_a_clear_error(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path
) -> None:
    _register(capsys, repo, saved_model)
    _register(capsys, repo, saved_model)
    ModelRepository(repo).promote("plain@2", "production")
    shutil.rmtree(repo / "plain" / "2")
    with pytest.raises(ModelError, match="alias 'production' points to version 2, which is not"):
        ModelRepository(repo).resolve("plain@production")


def test_concurrent_promotions_lose_nothing_and_readers_see_whole_files(
    repo: Path, saved_model: Path
) -> None:
    models = ModelRepository(repo)
    models.register("plain", saved_model, {}, signing_key=None)
    models.register("plain", saved_model, {})
    aliases = [f"a{i}" for i in range(8)]
    stop = threading.Event()
    seen: list[int] = []

    def read() -> None:
        while not stop.is_set():
            path = repo / "plain" / "aliases.json"
            if path.exists():
                seen.append(len(json.loads(path.read_text())["history"]))

    reader = threading.Thread(target=read)
    reader.start()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jobs.models",
                "promote",
                f"plain@{1 + i % 2}",
                "--to",
                alias,
                "--force",
                f"--model_repo={repo}",
            ],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i, alias in enumerate(aliases)
    ]
    results = [p.communicate(timeout=120) for p in processes]
    stop.set()
    reader.join()
    assert all(p.returncode == 0 for p in processes), results
    state = json.loads((repo / "plain" / "aliases.json").read_text())
    assert sorted(state["aliases"]) == aliases
    assert len(state["history"]) == len(aliases)
    assert models.aliases("plain") == {a: 1 + i % 2 for i, a in enumerate(aliases)}
    assert seen == sorted(seen), "every read saw a whole file, never a step back"


def test_scoring_resolves_an_alias_and_records_it(
    capsys: pytest.CaptureFixture[str], repo: Path, saved_model: Path, tmp_path: Path
) -> None:
    _register(capsys, repo, saved_model)
    _register(capsys, repo, saved_model)
    ModelRepository(repo).promote("plain@1", "canary")
    data = tmp_path / "data"
    write_plain_data(data, files=1, rows_per_file=300, row_group_rows=100)
    output = tmp_path / "out"
    rc = score(data, output, "--runner=DirectRunner", f"--model_repo={repo}", model="plain@canary")
    assert rc == 0
    assert (
        "  model        plain@1 (as @canary), signature verified (key " in capsys.readouterr().out
    )
    (run,) = list_committed_runs(output)
    model = run.manifest().to_json()["model"]
    assert (model["name"], model["version"], model["alias"]) == ("plain", "1", "canary")
    assert model["signature"]["verified"] is True


def test_every_subcommand_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("list", "show", "register", "sign", "verify", "promote"):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert f"{PROG} {command}" in out and "--model_repo" in out


def test_the_command_runs_as_a_process(repo: Path, saved_model: Path) -> None:
    ModelRepository(repo).register("plain", saved_model, {})
    result = subprocess.run(
        [sys.executable, "-m", "jobs.models", "list", f"--model_repo={repo}"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split()[-1] == "no", "registered without a key: unsigned"
    result = subprocess.run(
        [sys.executable, "-m", "jobs.models", "register", str(saved_model), f"--model_repo={repo}"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--name" in result.stderr


def test_register_rejects_what_is_not_a_savedmodel(tmp_path: Path) -> None:
    rc = models_main(["register", str(tmp_path), "--name=x", f"--model_repo={tmp_path / 'r'}"])
    assert rc == 2
    with pytest.raises(UsageError):
        ModelRepository(tmp_path / "r").promote("x@1", "BAD")


def test_show_describes_the_drift_baseline_of_a_trained_model(
    capsys: pytest.CaptureFixture[str], trained_model: TrainedModel
) -> None:
    rc, out, _ = _models(capsys, trained_model.repo, "show", trained_model.model.label)
    baseline = json.loads(out)["repository"]["drift_baseline"]
    assert rc == 0
    saved_model = trained_model.model.saved_model_dir
    assert baseline["path"] == str(saved_model / "assets.extra" / "batchscore_baseline.json")
    assert baseline["sha256"] == file_sha256(Path(baseline["path"]))
    assert "annual_income" in baseline["features"] and "loan_id" not in baseline["features"]
    assert baseline["rows"] > 0 and baseline["prediction_bins"] >= 10
