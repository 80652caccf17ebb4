"""Failures a careless user or an attacker causes: each ends as one line on stderr,
exit code 2 and a summary file that says fail, never a traceback (issue 22)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core.fsutil import directory_sha256
from batch.engine.prepare import trust_policy
from batch.model.loading import load_model
from batch.model.repository import ModelRepository, resolve_model
from batch.model.resolved import ResolvedModel, signature_path
from batch.model.signing import verify_once
from batch.model.snapshot import ModelChangedError, snapshot_root
from batch.output.commit import list_committed_runs
from jobs.verify import main as verify_main
from tests.conftest import PlainModels, score
from tests.plain_model import plain_model_expected, write_plain_data
from tests.signing_keys import KeyPair, make_key_pair

PROJECT = Path(__file__).resolve().parent.parent


def _one_line_failure(
    capsys: pytest.CaptureFixture[str], code: int, summary_file: Path, expected: str
) -> str:
    _, err = capsys.readouterr()
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err, err
    assert lines and expected in lines[-1], err
    summary = json.loads(summary_file.read_text())
    assert summary["status"] == "fail", summary
    return lines[-1]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (("--key_columns=",), "--key_columns='': expected one or more column names"),
        (("--key_columns=,,",), "--key_columns=',,': expected one or more column names"),
        ((f"--batch_size={2**63}", "--key_columns=id"), "--batch_size"),
        (("--runner=Nonsense", "--key_columns=id"), "Nonsense"),
    ],
)
def test_bad_options_are_one_line_with_a_summary(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    plain_model: Path,
    options: tuple[str, ...],
    expected: str,
) -> None:
    data = tmp_path / "in"
    write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
    summary_file = tmp_path / "summary.json"
    try:
        code = score(
            data, tmp_path / "out", *options, f"--summary_file={summary_file}", model=plain_model
        )
    except SystemExit as exc:  # a usage error found by the argument parser
        code = int(exc.code or 0)
    _one_line_failure(capsys, code, summary_file, expected)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("_SUCCESS"))


def test_a_key_named_twice_is_one_column(tmp_path: Path, plain_model: Path) -> None:
    import pyarrow.parquet as pq

    data = tmp_path / "in"
    write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
    assert score(data, tmp_path / "out", "--key_columns=id,id, id", model=plain_model) == 0
    (part,) = (tmp_path / "out").rglob("predictions/*.parquet")
    names = pq.read_schema(part).names
    assert names.count("id") == 1, names


class TestAfterTheCommitPoint:
    """Once _SUCCESS is written nothing turns the run into a failure (point 6)."""

    def _score_twice(
        self, tmp_path: Path, plain_model: Path, damage: Callable[[Path], object]
    ) -> tuple[int, Path, dict[str, Any]]:
        data = tmp_path / "in"
        write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
        out = tmp_path / "out"
        assert score(data, out, "--key_columns=id", model=plain_model) == 0
        (latest,) = out.glob("*/*/_LATEST")
        damage(latest)
        summary_file = tmp_path / "summary.json"
        code = score(
            data,
            out,
            "--key_columns=id",
            "--force",
            f"--summary_file={summary_file}",
            model=plain_model,
        )
        return code, latest, json.loads(summary_file.read_text())

    def test_a_garbage_pointer_is_rebuilt(self, tmp_path: Path, plain_model: Path) -> None:
        code, latest, summary = self._score_twice(
            tmp_path, plain_model, lambda p: p.write_text("{garbage")
        )
        assert code == 0 and summary["status"] == "ok", summary
        assert json.loads(latest.read_text())["run_id"] == summary["run_id"]

    def test_a_pointer_that_cannot_be_written_is_a_warning(
        self, capsys: pytest.CaptureFixture[str], tmp_path: Path, plain_model: Path
    ) -> None:
        def make_folder(pointer: Path) -> None:
            pointer.unlink()
            (pointer / "x").mkdir(parents=True)

        code, latest, summary = self._score_twice(tmp_path, plain_model, make_folder)
        out, _ = capsys.readouterr()
        assert code == 0, out
        assert summary["status"] == "warn"
        (warning,) = summary["warnings"]
        assert "is committed, but" in warning and str(latest) in warning
        run_dir = Path(summary["run_dir"])
        assert (run_dir / "_SUCCESS").is_file()
        assert json.loads((run_dir / "_WARNINGS.json").read_text())["warnings"] == [warning]
        assert "WARN: run" in out
        assert verify_main([str(run_dir)]) == 0

    def test_a_lock_that_cannot_be_opened_is_a_warning(
        self, tmp_path: Path, plain_model: Path
    ) -> None:
        def break_lock(pointer: Path) -> None:
            lock = pointer.with_name("_LATEST.lock")
            lock.unlink(missing_ok=True)
            lock.symlink_to(tmp_path / "no-such-folder" / "lock")

        code, _, summary = self._score_twice(tmp_path, plain_model, break_lock)
        assert code == 0 and summary["status"] == "warn", summary
        assert "_LATEST.lock" in summary["warnings"][0] or "_LATEST" in summary["warnings"][0]


def _score_process(
    data: Path, out: Path, model: Path, *extra: str, limit_file_bytes: int | None = None
) -> tuple[int, str, dict[str, Any]]:
    """jobs.score in a process of its own; its exit code, stderr and summary file."""

    def limit() -> None:
        if limit_file_bytes is not None:  # writes past it fail with EFBIG, as on a full disk
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_bytes, limit_file_bytes))

    summary_file = out.with_name(out.name + ".summary.json")
    done = subprocess.run(
        [
            sys.executable, "-m", "jobs.score", f"--input={data}", f"--output={out}",
            f"--model={model}", "--key_columns=id", f"--summary_file={summary_file}", *extra,
        ],
        capture_output=True, text=True, preexec_fn=limit, cwd=PROJECT, timeout=600,
    )  # fmt: skip
    return done.returncode, done.stderr, json.loads(summary_file.read_text())


class TestOutputThatCannotBeWritten:
    def test_a_full_disk_is_one_line(self, tmp_path: Path, plain_model: Path) -> None:
        data = tmp_path / "in"
        write_plain_data(data, files=2, rows_per_file=20_000, row_group_rows=5_000)
        code, err, summary = _score_process(
            data, tmp_path / "out", plain_model, limit_file_bytes=200_000
        )
        assert code == 2 and "Traceback" not in err, err
        assert "cannot write this output part" in err and "File too large" in err
        assert summary["status"] == "fail" and "cannot write this output part" in summary["reason"]
        assert not list((tmp_path / "out").rglob("_SUCCESS"))

    def test_a_version_folder_that_is_not_a_folder(self, tmp_path: Path, plain_model: Path) -> None:
        data = tmp_path / "in"
        write_plain_data(data, files=1, rows_per_file=100, row_group_rows=100)
        out = tmp_path / "out"
        assert score(data, out, "--key_columns=id", model=plain_model) == 0
        (version_dir,) = out.glob("*/*")
        shutil.rmtree(version_dir)
        version_dir.write_text("in the way")
        code, err, summary = _score_process(data, out, plain_model, "--force")
        assert code == 2 and "Traceback" not in err, err
        assert f"{version_dir}: cannot stage a run there" in err
        assert summary["status"] == "fail"


def test_a_run_lock_that_cannot_be_checked_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another user's lock (mode 0600) cannot be opened: its run is neither removed nor
    allowed to fail the cleaning (unit test: root opens every file, so os.open is made to
    refuse as it would for another user)."""
    from batch.output import commit

    staged = tmp_path / "_staging" / "run=theirs"
    staged.mkdir(parents=True)
    lock = tmp_path / "_staging" / "run=theirs.lock"
    lock.write_text("123@elsewhere\n")
    real_open = os.open

    def refuse(path: Any, flags: int, *args: Any) -> int:
        if Path(path) == lock:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(commit.os, "open", refuse)
    assert commit.clean_stale_runs(tmp_path) == []
    assert staged.is_dir() and lock.is_file()


def test_signing_a_model_that_holds_a_symlink_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, plain_models: PlainModels
) -> None:
    from jobs.models import main as models_main

    model = tmp_path / "model"
    shutil.copytree(plain_models(sign=False), model)
    (tmp_path / "secret").write_text("outside the model")
    (model / "assets.extra.link").symlink_to(tmp_path / "secret")
    keys = make_key_pair(tmp_path)
    for extra in ((), ("--force",)):
        code = models_main(["sign", str(model), f"--key={keys.private}", *extra])
        _, err = capsys.readouterr()
        assert code == 2 and "Traceback" not in err, err
        assert "assets.extra.link" in err and "is a symlink" in err
        assert not (tmp_path / "model.sig").exists()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed again when the block ends


@pytest.mark.parametrize(
    ("master", "expected"),
    [
        ("bogus", "--spark_master=bogus: expected local, local[N]"),
        ("yarn", "--spark_master=yarn: Spark finds the YARN cluster through HADOOP_CONF_DIR"),
        (
            "spark://127.0.0.1:{port}",
            "no Spark master answers (127.0.0.1:{port}: Connection refused",
        ),
    ],
)
def test_a_spark_master_that_cannot_work_is_refused_at_once(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    plain_model: Path,
    monkeypatch: pytest.MonkeyPatch,
    master: str,
    expected: str,
) -> None:
    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    monkeypatch.delenv("YARN_CONF_DIR", raising=False)
    port = _closed_port()
    data = tmp_path / "in"
    write_plain_data(data, files=1, rows_per_file=50, row_group_rows=50)
    summary_file = tmp_path / "summary.json"
    started = time.monotonic()
    code = score(
        data,
        tmp_path / "out",
        "--key_columns=id",
        "--runner=PySparkRunner",
        f"--spark_master={master.format(port=port)}",
        f"--summary_file={summary_file}",
        model=plain_model,
    )
    assert time.monotonic() - started < 30
    _one_line_failure(capsys, code, summary_file, expected.format(port=port))


class TestTheVerifiedBytesAreTheLoadedBytes:
    """Point 2: a model folder swapped after the driver's check is never loaded."""

    def _model(self, tmp_path: Path, plain_models: PlainModels, build: int) -> ResolvedModel:
        folder = tmp_path / "models" / "m"
        folder.parent.mkdir(parents=True, exist_ok=True)
        source = plain_models(weight=0.75, build=build)
        shutil.copytree(source, folder)
        shutil.copyfile(signature_path(source), signature_path(folder))
        return resolve_model(str(folder), ModelRepository(tmp_path / "repo"))

    def test_an_unchanged_model_loads_from_a_private_copy(
        self, tmp_path: Path, plain_models: PlainModels
    ) -> None:
        model = self._model(tmp_path, plain_models, build=901)
        loaded = load_model(model, trust_policy(None, False))
        copy = Path(loaded.model.saved_model_dir)
        assert copy != model.saved_model_dir
        assert copy.is_relative_to(snapshot_root())
        assert directory_sha256(copy) == model.content_hash

    @pytest.mark.parametrize("swap", ["another_signed_model", "a_changed_byte"])
    def test_a_model_swapped_after_the_check_is_refused(
        self, tmp_path: Path, plain_models: PlainModels, swap: str
    ) -> None:
        model = self._model(tmp_path, plain_models, build=902 if swap == "a_changed_byte" else 903)
        trust = trust_policy(None, False)
        verify_once(model, trust)  # the driver's check passes
        folder = Path(model.saved_model_dir)
        if swap == "another_signed_model":  # signed with the same trusted key
            other = plain_models(weight=0.5, build=904)
            shutil.rmtree(folder)
            shutil.copytree(other, folder)
            shutil.copyfile(signature_path(other), signature_path(folder))
        else:
            variables = next(folder.glob("variables/variables.data-*"))
            data = bytearray(variables.read_bytes())
            data[-1] ^= 0xFF
            variables.write_bytes(bytes(data))
        with pytest.raises(ModelChangedError, match="its files changed after the job resolved it"):
            load_model(model, trust)
        assert not [p for p in snapshot_root().glob(f"{os.getpid()}-{model.content_hash[:16]}-*")]


def test_an_edited_metadata_json_does_not_change_how_a_version_is_scored(
    tmp_path: Path, plain_model: Path, signing_keys: KeyPair
) -> None:
    """Point 3: the keys, contract and signature info a version is scored with are signed
    with it; editing the unsigned metadata.json (contract: null) changes nothing."""
    repo = ModelRepository(tmp_path / "repo")
    registered = repo.register(
        "m",
        plain_model,
        {"key_columns": ["id"], "contract": "loans", "note": "free text"},
        signing_key=signing_keys.private,
    )
    meta_file = registered.saved_model_dir.parent / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta.update(contract=None, key_columns=["x"], note="edited")
    meta_file.write_text(json.dumps(meta))
    resolved = repo.resolve("m@1")
    assert resolved.metadata["contract"] == "loans"
    assert resolved.metadata["key_columns"] == ["id"]
    assert resolved.metadata["note"] == "edited"  # what does not change scoring stays free
    verify_once(resolved, trust_policy(None, False))  # and the version still verifies


def test_unsigned_scoring_fields_of_a_signed_version_are_ignored(
    tmp_path: Path, plain_model: Path
) -> None:
    """A signed version registered before these fields were signed: they are dropped."""
    from batch.model.repository import _signed_view

    assert signature_path(plain_model).is_file()
    meta = {"key_columns": ["id"], "contract": None, "signature": {"x": 1}, "note": "n"}
    assert _signed_view(meta, plain_model, "m@1") == {"note": "n"}
    unsigned = tmp_path / "unsigned"
    unsigned.mkdir()
    assert _signed_view(meta, unsigned, "m@1") == meta


@pytest.mark.parametrize(
    "runner",
    [
        ("--runner=DirectRunner",),  # in this process (batch.engine.local)
        ("--runner=DirectRunner", "--in_process_rows=0"),  # on Beam
        ("--runner=PySparkRunner", "--spark_master=local[2]"),
    ],
)
def test_a_damaged_data_page_under_skip_skips_the_whole_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, plain_model: Path, runner: tuple[str, ...]
) -> None:
    """Point 8: found only while reading (the footer is fine), the file is skipped whole,
    also the splits of it that were read before the damage was found."""
    data = tmp_path / "in"
    write_plain_data(data, files=3, rows_per_file=400, row_group_rows=100)
    victim = data / "part-001.parquet"
    damaged = bytearray(victim.read_bytes())
    damaged[4:40] = b"\xff" * 36  # the first data page of row group 0
    victim.write_bytes(bytes(damaged))
    out = tmp_path / "out"
    code = score(
        data,
        out,
        "--key_columns=id",
        "--on_bad_file=skip",
        "--split_rows=100",  # four splits of the victim; only the first fails
        *runner,
        model=plain_model,
    )
    assert code == 0, capsys.readouterr().err
    (run,) = list_committed_runs(out)
    manifest = run.manifest()
    assert manifest.counts.rows_in == manifest.counts.rows_scored == 800
    (skipped,) = manifest.input["skipped_files"]
    assert skipped["path"] == str(victim) and "damaged inside" in skipped["reason"]
    assert str(victim) not in {f["path"] for f in manifest.input["files"]}
    ids = pq.read_table(run.run_dir / "predictions", columns=["id"]).column("id").to_pylist()
    assert sorted(ids) == [*range(0, 400), *range(800, 1200)]
    assert verify_main([str(run.run_dir)]) == 0


def test_dictionary_encoded_strings_are_accepted(tmp_path: Path, plain_model: Path) -> None:
    """A pandas ``category`` column (dictionary<string> in Parquet) feeds a string input
    and scores as the same strings would."""
    data = tmp_path / "in"
    table = write_plain_data(data, files=1, rows_per_file=300, row_group_rows=100)
    frame = table.to_pandas()
    frame["s"] = frame["s"].astype("category")
    (data / "part-000.parquet").unlink()
    frame.to_parquet(data / "part-000.parquet", index=False)
    assert pa.types.is_dictionary(pq.read_schema(data / "part-000.parquet").field("s").type)
    out = tmp_path / "out"
    assert score(data, out, "--key_columns=id", model=plain_model) == 0
    (run,) = list_committed_runs(out)
    scored = pq.read_table(run.run_dir / "predictions").sort_by("id")
    expected = plain_model_expected(table.sort_by("id"))
    assert scored.num_rows == 300
    assert np.allclose(scored.column("score").to_numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("change", ["deleted", "garbage", "same_size"])
def test_an_input_file_changed_after_listing_fails_naming_it(
    tmp_path: Path, plain_model: Path, change: str
) -> None:
    """Point 7: a file deleted or overwritten between the listing and its read fails the
    run in one line naming the file; nothing is committed."""
    from batch.api import ScoreRequest
    from batch.api import score as api_score
    from batch.core.errors import InputDataError
    from runners import make_runner

    data = tmp_path / "in"
    write_plain_data(data, files=2, rows_per_file=50, row_group_rows=50)
    victim = data / "part-001.parquet"

    def runner_after_the_change() -> Any:
        size = victim.stat().st_size
        if change == "deleted":
            victim.unlink()
        else:
            victim.write_bytes((b"x" if change == "garbage" else b"y" * size)[: size // 2 or 1])
            if change == "same_size":
                victim.write_bytes(b"y" * size)
        return make_runner("DirectRunner", [])

    with pytest.raises(InputDataError, match=str(victim)) as raised:
        api_score(
            ScoreRequest(
                input=str(data),
                output=tmp_path / "out",
                runner=runner_after_the_change,
                model=str(plain_model),
                key_columns="id",
            )
        )
    assert "\n" not in str(raised.value)
    assert not list_committed_runs(tmp_path / "out")
