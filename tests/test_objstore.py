"""Data, models and outputs in object storage, against real S3 and GCS API servers on
127.0.0.1 (moto, fake-gcs-server: tests/object_stores.py): bucket-to-bucket scoring on
Beam and Spark, the object-store commit protocol under SIGKILL and concurrency, and
one-line errors naming the URI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core import storage
from batch.core.faults import ATTEMPT_WRITTEN, FAULT_ENV, FAULT_ONCE_ENV, OBJECT_POINTS
from batch.demo.paths import ensure_signing_key
from batch.engine.inputs import FOOTER_READ_BYTES, inspect_inputs, open_parquet, scan_inputs
from batch.model.remote import CACHE_ENV
from batch.model.repository import ModelRepository
from batch.output.commit import LATEST, SUCCESS, list_committed_runs, verify_run
from batch.output.manifest import MANIFEST, read_manifest
from batch.output.objstore import (
    ATTEMPTS,
    LEASE_ENV,
    ObjectRunLayout,
    advance_latest,
    clean_stale_object_runs,
)
from jobs.score import main as score_main
from tests.conftest import PlainModels
from tests.object_stores import (
    ObjectStores,
    counting_proxy,
    make_bucket,
    moto_server,
    object_stores,
    upload_tree,
)
from tests.plain_model import write_plain_data
from tests.signing_keys import KeyPair

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStores]:
    saved = dict(os.environ)
    folder = tmp_path_factory.mktemp("stores")
    with object_stores(folder) as servers:
        os.environ.update(servers.env())
        os.environ[CACHE_ENV] = str(folder / "cache")
        try:
            yield servers
        finally:
            os.environ.clear()
            os.environ.update(saved)


@pytest.fixture(scope="module")
def local_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("objdata")
    write_plain_data(folder, files=3, rows_per_file=3000, row_group_rows=1000)
    return folder


@pytest.fixture(scope="module")
def buckets(
    stores: ObjectStores,
    local_data: Path,
    plain_model: Path,
    plain_models: PlainModels,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, str]:
    """One bucket per store, each holding the input (``/in``), the signed model
    (``/models/model`` and ``/models/model.sig``) and a model repository (``/repo``) with
    plain@1 registered, signed and promoted to production."""
    repo = ModelRepository(tmp_path_factory.mktemp("objrepo") / "repo")
    key = ensure_signing_key()
    repo.register("plain", plain_models(sign=False), {"key_columns": ["id"]}, signing_key=key)
    repo.promote("plain@1", "production")
    made = {}
    for scheme in ("s3", "gs"):
        uri = f"{scheme}://batchscore-{scheme}-test"
        make_bucket(uri)
        upload_tree(local_data, f"{uri}/in")
        upload_tree(plain_model, f"{uri}/models/model")
        upload_tree(plain_model.with_name("model.sig"), f"{uri}/models/model.sig")
        upload_tree(repo.root, f"{uri}/repo")
        made[scheme] = uri
    return made


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env.pop(FAULT_ENV, None)
    env.pop(FAULT_ONCE_ENV, None)
    env.update(extra)
    return env


def _score(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.score", "--key_columns=id", "--split_rows=1000", *args],
        cwd=PROJECT,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def _rows(run_dir: Path | str) -> pa.Table:
    manifest = read_manifest(run_dir)
    tables = []
    for part in manifest.outputs["predictions"]:
        uri = storage.join(str(run_dir), part.path)
        tables.append(pq.read_table(storage.open_input(uri) if storage.is_uri(uri) else uri))
    table = pa.concat_tables(tables)
    return table.select(["id", "score"]).sort_by("id")


@pytest.fixture(scope="module")
def local_reference(
    local_data: Path, plain_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> pa.Table:
    out = tmp_path_factory.mktemp("objref")
    rc, err = _finish(_score(f"--input={local_data}", f"--model={plain_model}", f"--output={out}"))
    assert rc == 0, err
    (run,) = list_committed_runs(out)
    return _rows(run.run_dir)


def _check_committed(out: str, reference: pa.Table) -> None:
    (run,) = list_committed_runs(out)
    assert isinstance(run.run_dir, str) and run.run_dir.startswith(out)
    assert _rows(run.run_dir).equals(reference)
    assert verify_run(run.run_dir) == []
    names = {o.uri.rsplit("/", 1)[-1] for o in storage.list_files(run.run_dir)}
    assert {MANIFEST, SUCCESS} <= names and "_LEASE" not in names
    assert not storage.list_files(storage.join(run.run_dir, ATTEMPTS))
    pointer = storage.read_json(storage.join(storage.parent(run.run_dir), LATEST))
    assert pointer["run_id"] == run.run_id


@pytest.mark.slow
def test_bucket_to_bucket_on_beam_equals_the_local_run(
    buckets: dict[str, str], local_reference: pa.Table, signing_keys: KeyPair
) -> None:
    """Input, model, public key, output and the Prometheus textfile all in GCS."""
    bucket = buckets["gs"]
    out = f"{bucket}/out-beam"
    upload_tree(signing_keys.public, f"{bucket}/keys/public.pem")
    rc, err = _finish(
        _score(
            f"--input={bucket}/in",
            f"--model={bucket}/models/model",
            f"--output={out}",
            f"--public_key={bucket}/keys/public.pem",
            f"--metrics_textfile={bucket}/metrics/score.prom",
        )
    )
    assert rc == 0, err[-3000:]
    _check_committed(out, local_reference)
    assert b"batchscore_" in storage.read_bytes(f"{bucket}/metrics/score.prom")
    (run,) = list_committed_runs(out)
    # The emulator named by the option instead of STORAGE_EMULATOR_HOST.
    env = {k: v for k, v in os.environ.items() if k != "STORAGE_EMULATOR_HOST"}
    verified = subprocess.run(
        [
            sys.executable,
            "-m",
            "jobs.verify",
            str(run.run_dir),
            f"--gcs_endpoint_url={os.environ['STORAGE_EMULATOR_HOST']}",
        ],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert verified.returncode == 0 and "OK" in verified.stdout, verified.stderr
    # Unchanged input, model and options: the committed run in the bucket is up to date.
    rc, err = _finish(
        _score(f"--input={bucket}/in", f"--model={bucket}/models/model", f"--output={out}")
    )
    assert rc == 0 and len(list_committed_runs(out)) == 1, err[-3000:]


@pytest.mark.slow
def test_bucket_to_bucket_on_spark_with_a_worker_killed_once_equals_the_local_run(
    buckets: dict[str, str], local_reference: pa.Table, tmp_path: Path
) -> None:
    """Tasks read their splits from the bucket with pyarrow; one Python worker is killed
    after its parts are written but before its attempt is recorded, and Spark retries
    the task: the dead attempt's parts are a loser, removed, never committed."""
    bucket = buckets["s3"]
    out = f"{bucket}/out-spark"
    marker = tmp_path / "fired"
    env = _env(**{FAULT_ENV: ATTEMPT_WRITTEN, FAULT_ONCE_ENV: str(marker)})
    rc, err = _finish(
        _score(
            f"--input={bucket}/in",
            f"--model={bucket}/models/model",
            f"--output={out}",
            "--runner=PySparkRunner",
            "--spark_master=local[2,4]",  # up to 4 attempts per task
            env=env,
        )
    )
    assert rc == 0, err[-3000:]
    assert marker.exists(), "a Python worker was killed after writing its parts"
    _check_committed(out, local_reference)


def _dead_runs(version_dir: str) -> set[str]:
    return {
        o.uri.split("/run=", 1)[1].split("/", 1)[0]
        for o in storage.list_files(version_dir)
        if "/run=" in o.uri
    } - {r.run_id for r in list_committed_runs(storage.parent(storage.parent(version_dir)))}


# The lease time of the rerun that cleans up after the killed runs (seconds).
RERUN_LEASE_S = 3


@pytest.mark.slow
def test_sigkill_at_each_step_commits_nothing_and_a_rerun_commits_exactly_one(
    buckets: dict[str, str], local_reference: pa.Table
) -> None:
    bucket = buckets["s3"]
    out = f"{bucket}/crash"
    common = (f"--input={bucket}/in", f"--model={bucket}/models/model", f"--output={out}")
    # Every step of the protocol at once, each in its own job (they share the prefix).
    killed = [_score(*common, env=_env(**{FAULT_ENV: point})) for point in OBJECT_POINTS]
    for process in killed:
        rc, err = _finish(process)
        assert rc == -9, err[-2000:]
    assert list_committed_runs(out) == []
    (version_dir,) = {
        o.uri.split("/run=", 1)[0] for o in storage.list_files(out) if "/run=" in o.uri
    }
    dead = _dead_runs(version_dir)
    assert len(dead) == len(OBJECT_POINTS), dead
    # The killed runs renewed their leases last before they were killed: once the rerun's
    # lease time has passed, its cleanup must see every one of them dead, however quickly
    # it starts (a run killed late, and a rerun started within that time, would still be
    # live: its lease says so, rightly).
    time.sleep(RERUN_LEASE_S + 0.5)
    # A live run's lease is renewed while the rerun cleans up: its objects stay.
    live = storage.join(version_dir, "run=29990101T000000.000000Z-live00")
    storage.write_bytes(storage.join(live, "predictions", "part-00000-live.parquet"), b"x")
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.3):
            storage.write_json(storage.join(live, "_LEASE"), {"pid": 0})

    keeper = threading.Thread(target=renew)
    storage.write_json(storage.join(live, "_LEASE"), {"pid": 0})
    keeper.start()
    try:
        rc, err = _finish(_score(*common, env=_env(**{LEASE_ENV: str(RERUN_LEASE_S)})))
    finally:
        stop.set()
        keeper.join()
    assert rc == 0, err[-3000:]
    (run,) = list_committed_runs(out)
    assert _rows(run.run_dir).equals(local_reference)  # every key once
    assert verify_run(run.run_dir) == []
    assert _dead_runs(version_dir) == {"29990101T000000.000000Z-live00"}, "dead runs removed"
    assert storage.info(storage.join(live, "predictions", "part-00000-live.parquet"))


@pytest.mark.slow
def test_two_concurrent_runs_both_commit_and_the_pointer_names_the_newer(
    buckets: dict[str, str], local_reference: pa.Table
) -> None:
    bucket = buckets["gs"]  # the pointer moves with GCS generation preconditions
    out = f"{bucket}/concurrent"
    # The model by name and alias from a repository in the bucket.
    model = ("--model=plain@production", f"--model_repo={bucket}/repo")
    common = (f"--input={bucket}/in", *model, f"--output={out}")
    jobs = [_score(*common), _score(*common)]
    for process in jobs:
        rc, err = _finish(process)
        assert rc == 0, err[-3000:]
    runs = list_committed_runs(out)
    assert len(runs) == 2
    for run in runs:
        assert _rows(run.run_dir).equals(local_reference)
        assert verify_run(run.run_dir) == []
    pointer = storage.read_json(storage.join(storage.parent(str(runs[0].run_dir)), LATEST))
    assert pointer["run_id"] == max(r.run_id for r in runs)


def test_a_registered_model_changed_in_the_bucket_is_refused(
    buckets: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = buckets["gs"]
    version = f"{bucket}/repo/plain/1"
    (variables,) = [o for o in storage.list_files(version) if "variables.data" in o.uri]
    original = storage.read_bytes(variables.uri)
    storage.write_bytes(variables.uri, original[:-1] + bytes([original[-1] ^ 0xFF]))
    try:
        rc = score_main(
            [
                f"--input={bucket}/in",
                "--model=plain@production",
                f"--model_repo={bucket}/repo",
                f"--output={bucket}/changed-out",
            ]
        )
    finally:
        storage.write_bytes(variables.uri, original)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert version in err[0] and "do not match the content hash" in err[0], err[0]
    assert list_committed_runs(f"{bucket}/changed-out") == []


def test_a_model_changed_in_the_bucket_is_refused(
    buckets: dict[str, str], plain_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bucket = buckets["s3"]
    model = f"{bucket}/models/changed"
    upload_tree(plain_model, model)
    upload_tree(plain_model.with_name("model.sig"), f"{model}.sig")
    (variables,) = [o for o in storage.list_files(model) if "variables.data" in o.uri]
    data = bytearray(storage.read_bytes(variables.uri))
    data[-1] ^= 0xFF
    storage.write_bytes(variables.uri, bytes(data))
    rc = score_main(
        [
            f"--input={bucket}/in",
            f"--model={model}",
            f"--output={bucket}/changed-out",
            "--key_columns=id",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert model in err[0] and "signature" in err[0], err[0]
    assert list_committed_runs(f"{bucket}/changed-out") == []


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--input", "s3://no-such-bucket-here/in", "no *.parquet objects there"),
        ("--input", "gs://batchscore-gs-test/in/missing.parquet", "no *.parquet objects"),
        ("--model", "s3://batchscore-s3-test/models/missing", "no objects under this prefix"),
        ("--public_key", "gs://batchscore-gs-test/keys/missing.pem", "cannot read it"),
    ],
)
def test_missing_buckets_and_objects_fail_in_one_line_naming_the_uri(
    option: str,
    value: str,
    expected: str,
    buckets: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    bucket = buckets["s3"]
    args = {
        "--input": f"{bucket}/in",
        "--model": f"{bucket}/models/model",
        "--output": f"{bucket}/errors-out",
    }
    args[option] = value
    rc = score_main([f"{k}={v}" for k, v in args.items()] + ["--key_columns=id"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert value in err[0] and expected in err[0], err[0]
    assert list(tmp_path.iterdir()) == [], "nothing is made in the working folder"


def test_permission_denied_fails_in_one_line_naming_the_uri(
    stores: ObjectStores,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    local_data: Path,
    plain_model: Path,
) -> None:
    """A server that checks every request (moto with IAM enforced knows no user)."""
    with moto_server(tmp_path, enforce_auth=True) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        for args in (
            ["--input=s3://locked-bucket/in", f"--output={tmp_path / 'out'}"],
            [f"--input={local_data}", "--output=s3://locked-bucket/out"],
        ):
            uri = next(a.split("=", 1)[1] for a in args if "s3://" in a)
            rc = score_main([*args, f"--model={plain_model}", "--key_columns=id"])
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 2 and len(err) == 1, err
            assert uri in err[0] and "permission denied" in err[0], err[0]


# Requests per file when planning: S3 answers a suffix-range GET with the bytes, the size,
# the ETag and the time; GCS needs the object's metadata, then the range.
REQUESTS_PER_FOOTER = {"s3": 1, "gs": 2}


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_planning_reads_each_footer_in_one_request_on_s3_and_two_on_gcs(
    scheme: str, stores: ObjectStores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver's footer reads, counted by a proxy in front of the store: per file one
    request on S3 and two on GCS (twice that for a footer longer than the first read),
    where pyarrow's open and the version's lookup took four; and the facts read are
    those the workers check (size and time as storage.info, version as version_token)."""
    data = tmp_path / "data"
    narrow, wide = data / "narrow", data / "wide"
    narrow.mkdir(parents=True)
    wide.mkdir()
    for i in range(12):
        pq.write_table(pa.table({"id": [i] * 10, "x": [0.5] * 10}), narrow / f"p{i:02d}.parquet")
    for i in range(2):
        columns = {f"c{c:03d}": [float(c)] * 4 for c in range(700)}
        pq.write_table(pa.table(columns), wide / f"w{i}.parquet", row_group_size=2)
    bucket = f"{scheme}://batchscore-footers-{scheme}"
    make_bucket(bucket)
    upload_tree(data, bucket)
    variable = "AWS_ENDPOINT_URL" if scheme == "s3" else "STORAGE_EMULATOR_HOST"
    endpoint = stores.s3_endpoint if scheme == "s3" else stores.gcs_endpoint
    per_file = REQUESTS_PER_FOOTER[scheme]
    with counting_proxy(endpoint, tmp_path) as proxy:
        monkeypatch.setenv(variable, proxy.endpoint)
        for folder, files, reads in (("narrow", 12, 1), ("wide", 2, 2)):
            local = sorted((data / folder).glob("*.parquet"))
            assert (local[0].stat().st_size > FOOTER_READ_BYTES) == (reads == 2)
            uris = scan_inputs(f"{bucket}/{folder}").uris
            proxy.mark()
            found, bad = inspect_inputs(uris)
            requests = proxy.requests()
            assert bad == [] and len(found) == files
            per_object = [r for r in requests if folder in r]
            assert len(per_object) == files * reads * per_file, requests
            # Beside them at most one lookup of the bucket (pyarrow's GCS filesystem, once).
            assert len(requests) - len(per_object) <= 1, requests
            for path, file in zip(local, found, strict=True):
                expected = pq.read_metadata(path)
                assert file.num_rows == expected.num_rows
                assert len(file.row_group_rows) == expected.num_row_groups
                state = storage.info(file.path)
                assert state is not None and (file.size, file.mtime_ns) == (
                    state.size,
                    state.mtime_ns,
                )
                assert file.size == path.stat().st_size
                assert file.version == storage.version_token(file.path) != ""


@pytest.mark.slow
def test_a_dataflow_dry_run_describes_a_job_that_reads_and_writes_gcs(
    buckets: dict[str, str], tmp_path: Path
) -> None:
    """The job Dataflow would run, built offline: its workers read the input and the model
    from GCS and write the run there (no mount); nothing is written to the bucket."""
    from apache_beam.portability.api import beam_runner_api_pb2

    bucket = buckets["gs"]
    out = f"{bucket}/dataflow-out"
    template = tmp_path / "dataflow" / "template.json"
    rc, err = _finish(
        _score(
            f"--input={bucket}/in",
            f"--model={bucket}/models/model",
            f"--output={out}",
            "--runner=DataflowRunner",
            "--project=test-project",
            "--region=us-central1",
            f"--temp_location={bucket}/tmp",
            "--dry_run=True",
            f"--template_location={template}",
        )
    )
    assert rc == 0, err[-3000:]
    assert storage.list_files(out) == [], "a dry run writes nothing to the output"
    pipeline = beam_runner_api_pb2.Pipeline.FromString(
        (template.parent / "staging" / "pipeline.pb").read_bytes()
    )
    (step,) = [
        t
        for t in pipeline.components.transforms.values()
        if t.unique_name == "ScoreSplits/ReadValidateScoreWrite"
    ]
    display = {}
    for item in step.display_data:
        payload = beam_runner_api_pb2.LabelledPayload.FromString(item.payload)
        display[payload.label] = payload.string_value
    assert f"{bucket}/models/model" in display["score"], display
    assert display["write"].split(" under ")[1].startswith(f"{out}/model/"), display
    options = json.loads(template.read_text())["environment"]["sdkPipelineOptions"]["options"]
    assert options["temp_location"].startswith(f"{bucket}/tmp/")


@pytest.mark.slow
def test_a_backfill_over_a_bucket_scores_each_day_once(
    buckets: dict[str, str], tmp_path: Path
) -> None:
    bucket = buckets["gs"]
    for day in ("2026-01-01", "2026-01-02"):
        write_plain_data(tmp_path / f"dt={day}", files=1, rows_per_file=500, row_group_rows=250)
        upload_tree(tmp_path / f"dt={day}", f"{bucket}/days/dt={day}")
    command = [
        sys.executable,
        "-m",
        "jobs.backfill",
        f"--input={bucket}/days",
        "--start=2026-01-01",
        "--end=2026-01-02",
        f"--model={bucket}/models/model",
        f"--output={bucket}/backfill",
        "--key_columns=id",
    ]
    first = subprocess.run(command, cwd=PROJECT, env=_env(), capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    for day in ("2026-01-01", "2026-01-02"):
        (run,) = list_committed_runs(f"{bucket}/backfill/dt={day}")
        assert verify_run(run.run_dir) == []
    # The up-to-date check reads the object metadata (size, generation) and the manifests.
    again = subprocess.run(command, cwd=PROJECT, env=_env(), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "skipped" in again.stdout, again.stdout
    for day in ("2026-01-01", "2026-01-02"):
        assert len(list_committed_runs(f"{bucket}/backfill/dt={day}")) == 1


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_racing_pointer_updates_leave_the_newest_run(
    scheme: str, stores: ObjectStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight committers advance _LATEST at once: the conditional writes (S3 If-Match /
    If-None-Match, GCS generation preconditions) let none of them move it backwards."""
    bucket = f"{scheme}://batchscore-{scheme}-pointer"
    make_bucket(bucket)
    run_ids = [f"20261202T1200{i:02d}.000000Z-00000{i}" for i in range(8)]
    layouts = [ObjectRunLayout(f"{bucket}/out", "m", "1", run_id) for run_id in run_ids]
    threads = [threading.Thread(target=advance_latest, args=(layout,)) for layout in layouts]
    for thread in reversed(threads):
        thread.start()
    for thread in threads:
        thread.join()
    pointer = storage.read_json(f"{bucket}/out/m/1/{LATEST}")
    assert pointer["run_id"] == max(run_ids)
    # A stale committer cannot move it back either.
    assert advance_latest(layouts[0]) is None
    assert storage.read_json(f"{bucket}/out/m/1/{LATEST}")["run_id"] == max(run_ids)


def test_cleanup_removes_dead_runs_and_never_a_live_or_committed_one(
    stores: ObjectStores, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = "s3://batchscore-s3-cleanup"
    make_bucket(bucket)
    version = f"{bucket}/out/m/1"

    def run(run_id: str, *names: str) -> None:
        for name in names:
            storage.write_bytes(f"{version}/run={run_id}/{name}", b"x")

    run("dead", "_LEASE", "predictions/part-00000-a.parquet", "_attempts/part-00000-a.json")
    run("orphan", "predictions/part-00001-b.parquet")  # a straggler's part, no lease
    run("committed", "_LEASE", "predictions/part-00000-c.parquet", MANIFEST, SUCCESS)
    monkeypatch.setenv(LEASE_ENV, "2")
    time.sleep(3)  # the leases above are now older than the lease time
    run("live", "_LEASE", "predictions/part-00000-d.parquet")  # renewed just now
    run("mine", "_LEASE")
    removed = clean_stale_object_runs(version, "mine")
    assert removed == ["dead", "orphan"]
    left = {o.uri.removeprefix(f"{version}/") for o in storage.list_files(version)}
    assert left == {
        "run=committed/predictions/part-00000-c.parquet",
        f"run=committed/{MANIFEST}",
        f"run=committed/{SUCCESS}",
        "run=live/_LEASE",
        "run=live/predictions/part-00000-d.parquet",
        "run=mine/_LEASE",
    }


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_a_category_column_in_a_bucket_is_read_encoded(
    scheme: str, stores: ObjectStores, tmp_path: Path
) -> None:
    """The worker's open in a bucket: a category column stored with dictionary pages comes
    back dictionary-encoded (the file opened once, its footer reused), the others plain,
    and every value equals the plain read."""
    table = pa.table({"cat": ["web", "branch", None] * 40, "free": [f"v{i}" for i in range(120)]})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=50, use_dictionary=["cat"])
    bucket = f"{scheme}://batchscore-encoded-{scheme}"
    make_bucket(bucket)
    upload_tree(tmp_path / "p.parquet", f"{bucket}/p.parquet")
    read = open_parquet(f"{bucket}/p.parquet", {"cat", "free"}).read()
    assert pa.types.is_dictionary(read.schema.field("cat").type)
    assert read.schema.field("free").type == pa.string()
    assert read.column("cat").cast(pa.string()).equals(table.column("cat"))
    assert read.column("free").equals(table.column("free"))


@pytest.mark.parametrize("scheme", ["s3", "gs"])
def test_an_empty_object_in_a_bucket_is_a_bad_file(
    scheme: str,
    buckets: dict[str, str],
    local_data: Path,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    """A 0-byte object has no byte for a suffix range (S3 answers InvalidRange; the tail
    then comes from the object's metadata): its tail is empty, a job over a folder holding
    it fails listing it as a bad file, and with --on_bad_file=skip scores the other file."""
    folder = f"{buckets[scheme]}/with-an-empty-object"
    empty = f"{folder}/empty.parquet"
    storage.write_bytes(empty, b"")
    good = sorted(local_data.glob("*.parquet"))[0]
    upload_tree(good, f"{folder}/good.parquet")
    tail = storage.read_tail(empty, FOOTER_READ_BYTES)
    assert (tail.data, tail.size) == (b"", 0) and tail.version
    args = [
        f"--input={folder}",
        f"--model={buckets[scheme]}/models/model",
        "--key_columns=id",
    ]
    capsys.readouterr()
    assert score_main([*args, f"--output={tmp_path / 'fail'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    # The bad-file list: a heading, then one line for the file, naming it and the cause.
    assert len(err) == 2 and "--on_bad_file=skip" in err[0], err
    assert empty in err[1] and "0 bytes" in err[1], err
    out = tmp_path / "skip"
    assert score_main([*args, f"--output={out}", "--on_bad_file=skip"]) == 0
    (run,) = list_committed_runs(out)
    manifest = json.loads((Path(run.run_dir) / MANIFEST).read_text())
    assert manifest["metrics"]["rows_read"] == pq.ParquetFile(good).metadata.num_rows
    assert empty in json.dumps(manifest["input"])


def test_an_empty_s3_object_answered_invalid_range_reads_from_its_metadata(
    buckets: dict[str, str], stores: ObjectStores, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Amazon S3 answers a suffix-range GET of an empty object with 416 InvalidRange (moto
    with 200: a proxy gives S3's answer): the tail then comes from the object's metadata,
    one HEAD more, and the object reads as empty."""
    empty = f"{buckets['s3']}/invalid-range/empty.parquet"
    storage.write_bytes(empty, b"")
    expected = storage.version_token(empty)
    with counting_proxy(stores.s3_endpoint, tmp_path, s3_empty_ranges=True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        proxy.mark()
        tail = storage.read_tail(empty, FOOTER_READ_BYTES)
        requests = proxy.requests()
    assert (tail.data, tail.size, tail.version) == (b"", 0, expected)
    key = "/invalid-range/empty.parquet"
    assert [r.split(" ")[0] for r in requests] == ["GET", "HEAD"], requests
    assert all(key in r for r in requests), requests
