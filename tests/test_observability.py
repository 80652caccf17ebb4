"""Metrics, drift, checks, summary and Prometheus export of real runs of the trained model."""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batch.core.fsutil import file_sha256, read_json
from batch.model.resolved import signature_path
from batch.model.signing import signed_files
from batch.observe.drift import baseline_path
from batch.observe.metrics import PROGRESS_FOLDER, STATS_FOLDER
from batch.output.commit import CommittedRun, list_committed_runs, verify_run
from tests.conftest import TrainedModel, score

BUDGET = "--max_error_rate=0.01"
JOB = ("--batch_size=2048", "--split_rows=3000", "--progress=off", BUDGET)
# Counted the same whatever engine ran the job (batches depend on the engine's batching).
DETERMINISTIC = ("rows_read", "rows_scored", "rows_rejected", "rejected_by_reason")


def _only_run(output: Path) -> CommittedRun:
    (run,) = list_committed_runs(output)
    return run


@dataclass(frozen=True)
class BeamRun:
    manifest: dict[str, Any]
    run_dir: Path
    summary: dict[str, Any]
    textfile: str
    stderr: str


@pytest.fixture(scope="module")
def beam_run(
    trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BeamRun]:
    folder = tmp_path_factory.mktemp("observed")
    # stderr is a file, not a terminal: progress comes as log lines.
    stderr_file = folder / "stderr.txt"
    with open(stderr_file, "w") as handle, contextlib.redirect_stderr(handle):
        rc = score(
            trained_model.data_dir,
            folder / "out",
            *JOB,
            f"--summary_file={folder / 'summary.json'}",
            f"--metrics_textfile={folder / 'metrics' / 'batchscore.prom'}",
            "--progress=log",
            "--progress_every=0.1",
            model=trained_model,
        )
    assert rc == 0, stderr_file.read_text()
    run = _only_run(folder / "out")
    yield BeamRun(
        manifest=run.manifest().to_json(),
        run_dir=run.run_dir,
        summary=read_json(folder / "summary.json"),
        textfile=(folder / "metrics" / "batchscore.prom").read_text(),
        stderr=stderr_file.read_text(),
    )


class TestMetrics:
    def test_manifest_metrics_equal_the_real_counts(self, beam_run: BeamRun) -> None:
        metrics, counts = beam_run.manifest["metrics"], beam_run.manifest["counts"]
        assert metrics["rows_read"] == counts["rows_in"] == 20_000
        assert metrics["rows_scored"] == counts["rows_scored"]
        assert metrics["rows_rejected"] == counts["rows_rejected"] > 0
        assert metrics["rejected_by_reason"] == counts["rejected_by_reason"]
        # 4 files of 5,000 rows in splits of <= 3,000 rows, batches of <= 2,048 rows.
        assert metrics["batches"] >= 10
        latency = metrics["batch_latency_seconds"]
        assert latency["count"] == metrics["batches"] == sum(latency["counts"])
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"]
        assert metrics["model_load_seconds"] > 0 and metrics["model_loads"] == 1
        assert metrics["predictions_per_second"] > 0 and metrics["wall_seconds"] > 0
        assert metrics["timeline"][-1]["rows"] == 20_000

    def test_the_stats_files_do_not_reach_the_committed_run(self, beam_run: BeamRun) -> None:
        assert not (beam_run.run_dir / STATS_FOLDER).exists()
        assert not (beam_run.run_dir / PROGRESS_FOLDER).exists()
        assert verify_run(beam_run.run_dir) == []

    def test_progress_lines_when_stderr_is_not_a_terminal(self, beam_run: BeamRun) -> None:
        lines = [line for line in beam_run.stderr.splitlines() if line.startswith("progress: ")]
        assert lines, beam_run.stderr
        assert lines[-1].startswith("progress: 20,000/20,000 rows (100.0%)"), lines[-1]

    def test_a_repeated_bundle_is_not_counted_twice(
        self,
        trained_model: TrainedModel,
        beam_run: BeamRun,
        tmp_path: Path,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO, logger="runners.beam")
        rc = score(
            trained_model.data_dir,
            tmp_path,
            *JOB,
            "--direct_runner_bundle_repeat=2",
            "--force",
            model=trained_model,
        )
        assert rc == 0
        run = _only_run(tmp_path)
        metrics = run.manifest().to_json()["metrics"]
        for name in (*DETERMINISTIC, "batches"):
            assert metrics[name] == beam_run.manifest["metrics"][name], name
        # Beam's own counters, same names, are what the runner reports (live values).
        (line,) = [r.getMessage() for r in caplog.records if "beam metrics" in r.getMessage()]
        for name in ("rows_read=", "rows_scored=", "rows_rejected=", "batches=", "splits="):
            assert name in line, line
        # Again without --force: nothing to score, and the summary points at that run.
        summary_file = tmp_path / "again.json"
        rc = score(
            trained_model.data_dir,
            tmp_path,
            *JOB,
            f"--summary_file={summary_file}",
            model=trained_model,
        )
        assert rc == 0
        again = read_json(summary_file)
        assert again["status"] == "ok" and again["run_dir"] == str(run.run_dir)
        assert again["reason"].startswith("up to date")

    def test_textfile_parses_as_prometheus_exposition(
        self, beam_run: BeamRun, trained_model: TrainedModel
    ) -> None:
        families = {f.name: f for f in text_string_to_metric_families(beam_run.textfile)}
        (read,) = families["batchscore_rows_read"].samples
        assert read.name == "batchscore_rows_read_total" and read.value == 20_000
        assert read.labels == {
            "model": "loan_default",
            "model_version": "1",
            "dataset": str(trained_model.data_dir),
            "partition": "",
        }
        reasons = {
            s.labels["reason"]: s.value for s in families["batchscore_rows_rejected"].samples
        }
        assert reasons == beam_run.manifest["metrics"]["rejected_by_reason"]
        assert families["batchscore_run_success"].samples[0].value == 1
        psi = {s.labels["feature"] for s in families["batchscore_drift_psi"].samples}
        assert {"annual_income", "state", "default_probability"} <= psi


class TestDriftAndChecks:
    def test_training_data_shows_no_drift(self, beam_run: BeamRun) -> None:
        drift = beam_run.manifest["drift"]
        assert drift["status"] == "ok"
        assert drift["baseline"]["rows"] == 20_000
        assert len(drift["features"]) == 18
        # The very rows training described: identical bins, float32 or float64 alike.
        assert max(f["psi"] for f in drift["features"]) < 1e-6
        assert drift["prediction"]["name"] == "default_probability"
        # Held-out rows vs all rows of the same data: close, not identical.
        assert drift["prediction"]["psi"] < 0.1
        purpose = next(f for f in drift["features"] if f["name"] == "loan_purpose")
        assert purpose["unseen_share"] == 0.0
        assert {c["status"] for c in beam_run.manifest["checks"]} == {"ok"}

    def test_summary_file_says_ok_with_the_run_dir(self, beam_run: BeamRun) -> None:
        summary = beam_run.summary
        assert summary["status"] == "ok"
        assert summary["run_dir"] == str(beam_run.run_dir)
        assert summary["drift_status"] == "ok"
        assert summary["counts"]["rows_read"] == 20_000
        assert summary == beam_run.manifest["summary"]

    def test_shifted_data_warns_and_with_on_drift_fail_commits_nothing(
        self, trained_model: TrainedModel, tmp_path: Path
    ) -> None:
        shifted = tmp_path / "shifted"
        for path in sorted(trained_model.data_dir.rglob("*.parquet")):
            table = pq.read_table(path)
            income = table.column("annual_income")
            table = table.set_column(
                table.schema.get_field_index("annual_income"),
                "annual_income",
                pc.multiply(income, 3.0),
            )
            table = table.set_column(
                table.schema.get_field_index("loan_purpose"),
                "loan_purpose",
                pc.if_else(pc.is_null(table.column("loan_purpose")), None, "crypto_mining"),
            )
            target = shifted / path.relative_to(trained_model.data_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, target)

        rc = score(
            shifted,
            tmp_path / "warn",
            *JOB,
            f"--summary_file={tmp_path / 'w.json'}",
            model=trained_model,
        )
        assert rc == 0
        drift = _only_run(tmp_path / "warn").manifest().to_json()["drift"]
        assert drift["status"] == "warn"
        by_name = {f["name"]: f for f in drift["features"]}
        assert by_name["annual_income"]["psi"] > 1 and by_name["annual_income"]["status"] == "warn"
        assert by_name["loan_purpose"]["unseen_share"] == 1.0
        assert by_name["state"]["status"] == "ok"
        assert read_json(tmp_path / "w.json")["status"] == "warn"

        with pushgateway() as received:
            rc = score(
                shifted,
                tmp_path / "fail",
                *JOB,
                "--on_drift=fail",
                f"--summary_file={tmp_path / 'f.json'}",
                f"--pushgateway=http://127.0.0.1:{received.port}",
                model=trained_model,
            )
        assert rc == 2
        assert list_committed_runs(tmp_path / "fail") == []
        summary = read_json(tmp_path / "f.json")
        assert summary["status"] == "fail" and summary["run_dir"] is None
        assert "drifted" in summary["reason"] and "annual_income" in summary["reason"]
        assert summary["drift_status"] == "fail"
        (request,) = received.requests
        method, url_path, body = request
        # A failed run updates its status in its group (POST), leaving the last success's
        # numbers; it exports no rows as scored.
        assert method == "POST"
        assert url_path.startswith("/metrics/job/batchscore/dataset@base64/")
        assert url_path.endswith("/model/loan_default")
        families = {f.name: f for f in text_string_to_metric_families(body)}
        assert families["batchscore_run_success"].samples[0].value == 0
        assert "batchscore_rows_read" not in families and "batchscore_rows_scored" not in families
        assert families["batchscore_drift_psi"].samples

    def test_error_budget_failure_writes_a_fail_summary(
        self, trained_model: TrainedModel, tmp_path: Path
    ) -> None:
        rc = score(
            trained_model.data_dir,
            tmp_path / "out",
            *JOB,
            "--max_error_rate=0.0001",
            f"--summary_file={tmp_path / 's.json'}",
            model=trained_model,
        )
        assert rc == 2
        summary = read_json(tmp_path / "s.json")
        assert summary["status"] == "fail" and summary["run_dir"] is None
        assert "max_error_rate" in summary["reason"]
        (budget,) = [c for c in summary["checks"] if c["name"] == "error_rate"]
        assert budget["status"] == "fail" and budget["threshold"] == 0.0001

    def test_a_job_that_fails_before_scoring_still_writes_a_fail_summary(
        self, trained_model: TrainedModel, tmp_path: Path
    ) -> None:
        missing = tmp_path / "no-such-input"
        rc = score(
            missing,
            tmp_path / "out",
            *JOB,
            f"--summary_file={tmp_path / 's.json'}",
            f"--metrics_textfile={tmp_path / 'm.prom'}",
            model=trained_model,
        )
        assert rc == 2
        summary = read_json(tmp_path / "s.json")
        assert summary["status"] == "fail" and summary["run_dir"] is None
        assert str(missing) in summary["reason"] and summary["counts"] is None
        families = {
            f.name: f for f in text_string_to_metric_families((tmp_path / "m.prom").read_text())
        }
        assert families["batchscore_run_success"].samples[0].value == 0

    def test_drift_off_skips_the_comparison(
        self, trained_model: TrainedModel, tmp_path: Path
    ) -> None:
        assert (
            score(trained_model.data_dir, tmp_path, *JOB, "--drift=off", model=trained_model) == 0
        )
        drift = _only_run(tmp_path).manifest().to_json()["drift"]
        assert drift["features"] == [] and drift["baseline"] is None
        assert "--drift=off" in drift["note"]


def test_the_baseline_is_signed_and_recorded_by_sha256(trained_model: TrainedModel) -> None:
    saved_model = trained_model.model.saved_model_dir
    path = baseline_path(saved_model)
    recorded = trained_model.model.metadata["drift_baseline"]
    assert recorded["sha256"] == file_sha256(path)
    assert recorded["path"] == "saved_model/assets.extra/batchscore_baseline.json"
    signed = signed_files(signature_path(saved_model)) or {}
    assert signed.get("assets.extra/batchscore_baseline.json") == file_sha256(path)


def test_a_changed_baseline_fails_verification(
    trained_model: TrainedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "models"
    shutil.copytree(trained_model.repo, repo)
    version_dir = repo / trained_model.model.name / trained_model.model.version
    path = baseline_path(version_dir / "saved_model")
    baseline = read_json(path)
    baseline["features"][0]["fractions"] = list(reversed(baseline["features"][0]["fractions"]))
    path.write_text(json.dumps(baseline))
    rc = score(
        trained_model.data_dir,
        tmp_path / "out",
        f"--model_repo={repo}",
        BUDGET,
        model=trained_model.spec,
    )
    assert rc == 2
    assert "assets.extra/batchscore_baseline.json" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["spark", "splits"])
def test_spark_parity_of_metrics_and_drift(
    trained_model: TrainedModel, beam_run: BeamRun, tmp_path: Path, mode: str
) -> None:
    rc = score(
        trained_model.data_dir,
        tmp_path,
        *JOB,
        "--runner=PySparkRunner",
        "--spark_master=local[2]",
        f"--spark_conf=batchscore.input={mode}",
        model=trained_model,
    )
    assert rc == 0
    manifest = _only_run(tmp_path).manifest().to_json()
    beam = beam_run.manifest
    for name in DETERMINISTIC:
        assert manifest["metrics"][name] == beam["metrics"][name], name
    assert set(manifest["metrics"]) == set(beam["metrics"])
    assert manifest["metrics"]["batches"] > 0
    spark_psi = {f["name"]: f["psi"] for f in manifest["drift"]["features"]}
    beam_psi = {f["name"]: f["psi"] for f in beam["drift"]["features"]}
    assert spark_psi == pytest.approx(beam_psi, abs=1e-6)
    assert manifest["drift"]["prediction"]["psi"] == pytest.approx(
        beam["drift"]["prediction"]["psi"], abs=1e-4
    )


@dataclass
class _Received:
    port: int
    requests: list[tuple[str, str, str]]


@contextlib.contextmanager
def pushgateway() -> Iterator[_Received]:
    """A tiny Pushgateway stand-in on 127.0.0.1 that records each push."""
    received = _Received(0, [])

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            body = self.rfile.read(length).decode()
            received.requests.append((self.command, self.path, body))
            self.send_response(200)
            self.end_headers()

        do_PUT = _record
        do_POST = _record

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 10
    received.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
