"""The output commit protocol, proven with real processes: SIGKILL at each step, repeated
bundles, concurrent jobs, stale staging cleanup, and verification against the manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.core.faults import FAULT_ENV, FAULT_ONCE_ENV, PART_WRITTEN, POINTS, SCORING
from batch.core.fsutil import read_json
from batch.output.commit import LATEST, MANIFEST, STAGING, SUCCESS, list_committed_runs, verify_run
from jobs.verify import main as verify_main
from tests.conftest import score_args
from tests.plain_model import write_plain_data

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setup(
    tmp_path_factory: pytest.TempPathFactory, plain_model: Path
) -> tuple[Path, Path, pa.Table]:
    root = tmp_path_factory.mktemp("commit")
    model = plain_model
    # 3 files x 3 splits each, so a crash mid-run leaves some parts written.
    write_plain_data(root / "in", files=3, rows_per_file=3000, row_group_rows=1000)
    return root / "in", model, pq.read_table(root / "in").select(["id"])


def _start_job(
    data: Path,
    model: Path,
    out: Path,
    *extra: str,
    fault: str | None = None,
    fault_once: Path | None = None,
) -> subprocess.Popen[str]:
    env = {**os.environ}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    if fault_once:
        env[FAULT_ONCE_ENV] = str(fault_once)
    options = ("--key_columns=id", "--split_rows=1000", "--batch_size=500", *extra)
    command = [sys.executable, "-m", "jobs.score", *score_args(data, out, *options, model=model)]
    return subprocess.Popen(
        command, cwd=PROJECT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    _, err = process.communicate(timeout=300)
    return process.returncode, err


def _keys(run_dir: Path) -> list[int]:
    return sorted(pq.read_table(run_dir / "predictions", columns=["id"]).column("id").to_pylist())


def _scores(run_dir: Path) -> pa.Table:
    return pq.read_table(run_dir / "predictions", columns=["id", "score"]).sort_by("id")


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_sigkill_leaves_no_committed_run_and_a_rerun_recovers(
    point: str, setup: tuple[Path, Path, pa.Table], tmp_path: Path
) -> None:
    data, model, _ = setup
    reference_rc, err = _finish(_start_job(data, model, tmp_path / "reference"))
    assert reference_rc == 0, err
    (reference,) = list_committed_runs(tmp_path / "reference")

    out = tmp_path / "out"
    rc, err = _finish(_start_job(data, model, out, fault=point))
    assert rc == -signal.SIGKILL, err
    assert list_committed_runs(out) == []
    for path in out.rglob("*"):
        inside_staging = STAGING in path.relative_to(out).parts
        if path.is_file() and not inside_staging:
            assert not path.name.endswith(".tmp"), f"temporary file visible: {path}"
            if path.suffix == ".parquet":
                pq.read_metadata(path)  # complete, never half-written
    if point in ("commit-moved", "commit-manifest"):
        (moved,) = [p for p in out.glob("*/*/run=*")]
        assert not (moved / SUCCESS).exists()

    rc, err = _finish(_start_job(data, model, out))
    assert rc == 0, err
    (run,) = list_committed_runs(out)
    assert _scores(run.run_dir).equals(_scores(reference.run_dir))
    assert verify_run(run.run_dir) == []
    version_dir = run.run_dir.parent
    assert [p.name for p in version_dir.glob("run=*")] == [run.run_dir.name], "dead run removed"
    assert not list((version_dir / STAGING).glob("*")), "stale staging removed"


@pytest.mark.slow
def test_repeated_bundles_still_give_every_key_once(
    setup: tuple[Path, Path, pa.Table], tmp_path: Path
) -> None:
    data, model, rows = setup
    rc, err = _finish(_start_job(data, model, tmp_path, "--direct_runner_bundle_repeat=2"))
    assert rc == 0, err
    (run,) = list_committed_runs(tmp_path)
    assert _keys(run.run_dir) == sorted(rows.column("id").to_pylist())
    assert verify_run(run.run_dir) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "spark_input"),
    [(SCORING, "splits"), (PART_WRITTEN, "splits"), (SCORING, "spark")],
)
def test_a_spark_task_killed_once_and_retried_still_gives_every_key_once(
    point: str, spark_input: str, setup: tuple[Path, Path, pa.Table], tmp_path: Path
) -> None:
    data, model, rows = setup
    marker = tmp_path / "fired"
    process = _start_job(
        data,
        model,
        tmp_path / "out",
        "--runner=PySparkRunner",
        "--spark_master=local[2,4]",  # up to 4 attempts per task
        f"--spark_conf=batchscore.input={spark_input}",
        fault=point,
        fault_once=marker,
    )
    rc, err = _finish(process)
    assert rc == 0, err[-3000:]
    assert marker.exists(), "a Python worker was killed mid-task"
    (run,) = list_committed_runs(tmp_path / "out")
    assert _keys(run.run_dir) == sorted(rows.column("id").to_pylist())
    assert verify_run(run.run_dir) == []
    # The killed task's parts ran again with half the batch rows (--batch_size=500),
    # recorded; the markers that told them are gone with the staging folder.
    restarted = run.manifest().to_json()["batching"]["out_of_memory"]["restarted_parts"]
    assert restarted and all(
        entry == {"attempt": 1, "batch_rows": 250} for entry in restarted.values()
    ), restarted
    assert "runs again after 1 execution(s) that died; batches of 250 rows" in err
    assert not (run.run_dir / "_attempts").exists()


@pytest.mark.slow
def test_two_concurrent_jobs_commit_separate_runs(
    setup: tuple[Path, Path, pa.Table], tmp_path: Path
) -> None:
    data, model, rows = setup
    # --force: the second must not find the first already committed (incremental reruns).
    first = _start_job(data, model, tmp_path, "--force")
    second = _start_job(data, model, tmp_path, "--force")
    for process in (first, second):
        rc, err = _finish(process)
        assert rc == 0, err
    runs = list_committed_runs(tmp_path)
    assert len(runs) == 2
    for run in runs:
        assert _keys(run.run_dir) == sorted(rows.column("id").to_pylist())
        assert verify_run(run.run_dir) == []
    latest = read_json(runs[0].run_dir.parent / LATEST)
    assert latest["run_id"] == max(r.run_id for r in runs)


_HOLD_A_RUN = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from batch.output.commit import RunLayout, RunLock
    layout = RunLayout(Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
    with RunLock(layout):
        (layout.staging_dir / "predictions").mkdir(parents=True)
        (layout.staging_dir / "predictions" / "part-00000.parquet").write_bytes(b"half")
        print("ready", flush=True)
        time.sleep(120)
    """
)


@pytest.mark.slow
def test_stale_staging_of_dead_jobs_is_removed_but_a_live_jobs_is_not(
    setup: tuple[Path, Path, pa.Table], tmp_path: Path
) -> None:
    data, model, _ = setup
    rc, err = _finish(_start_job(data, model, tmp_path))
    assert rc == 0, err
    (first,) = list_committed_runs(tmp_path)
    version = (str(tmp_path), first.model_name, first.model_version)

    def hold(run_id: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-c", _HOLD_A_RUN, *version, run_id],
            cwd=PROJECT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        return process

    live, dead = hold("live"), hold("dead")
    try:
        dead.kill()
        dead.wait(timeout=30)
        rc, err = _finish(_start_job(data, model, tmp_path, "--force"))  # not a no-op rerun
        assert rc == 0, err
        staging = first.run_dir.parent / STAGING
        assert (staging / "run=live").is_dir(), "a live job's staging is never touched"
        assert not (staging / "run=dead").exists(), "a dead job's staging is removed"
        assert len(list_committed_runs(tmp_path)) == 2
    finally:
        live.kill()
        live.wait(timeout=30)


class TestVerify:
    def test_a_committed_run_matches_its_manifest(
        self, setup: tuple[Path, Path, pa.Table], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        data, model, _ = setup
        rc, err = _finish(_start_job(data, model, tmp_path))
        assert rc == 0, err
        (run,) = list_committed_runs(tmp_path)
        summary_file = tmp_path / "verify.json"
        assert verify_main([str(run.run_dir), f"--summary_file={summary_file}"]) == 0
        assert "OK, matches its manifest" in capsys.readouterr().out
        summary = json.loads(summary_file.read_text())
        assert (summary["job"], summary["status"]) == ("verify", "ok")
        assert summary["runs"] == [
            {**summary["runs"][0], "run_dir": str(run.run_dir), "status": "ok", "problems": []}
        ]

        part = run.run_dir / "predictions" / "part-00000.parquet"
        part.write_bytes(part.read_bytes() + b"x")
        (run.run_dir / "predictions" / "part-00001.parquet").unlink()
        pq.write_table(pa.table({"id": [1]}), run.run_dir / "predictions" / "part-99999.parquet")
        assert verify_main([str(run.run_dir), f"--summary_file={summary_file}"]) == 1
        out = capsys.readouterr().out
        summary = json.loads(summary_file.read_text())
        assert summary["status"] == "fail"
        assert summary["runs"][0]["problems"] == [line.strip() for line in out.splitlines()[1:]]
        assert "predictions/part-00000.parquet: sha256" in out
        assert "predictions/part-00001.parquet: listed in the manifest but missing" in out
        assert "predictions/part-99999.parquet: present but not in the manifest" in out

    def test_a_deleted_part_hidden_by_an_edited_manifest_is_found(
        self, setup: tuple[Path, Path, pa.Table], tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Deleting a part and editing the manifest's outputs and counts to match still
        leaves the input files it lists: verify reconciles them with rows_in."""
        data, model, _ = setup
        rc, err = _finish(_start_job(data, model, tmp_path))
        assert rc == 0, err
        (run,) = list_committed_runs(tmp_path)
        manifest = json.loads((run.run_dir / MANIFEST).read_text())
        gone = manifest["outputs"]["predictions"].pop()
        (run.run_dir / gone["path"]).unlink()
        manifest["counts"]["rows_scored"] -= gone["rows"]
        manifest["counts"]["rows_in"] -= gone["rows"]
        (run.run_dir / MANIFEST).write_text(json.dumps(manifest))
        assert verify_main([str(run.run_dir)]) == 1
        assert "but the input files the manifest lists hold" in capsys.readouterr().out
