"""Run metrics against a real Prometheus Pushgateway (the Go binary, Debian's
``prometheus-pushgateway`` package: .ci/run installs it), started on 127.0.0.1 for this
module and stopped by PID: groups per model, dataset and day; an up-to-date rerun and a
failed run keep the last success's numbers; and the textfile behaves the same way."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families

from batch.observe.prometheus import RunCollector, run_labels, textfile_path, write_textfile
from tests.conftest import score
from tests.plain_model import write_plain_data

BINARIES = ("prometheus-pushgateway", "pushgateway")
# The model's name when scored from a folder is the folder's name.
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = next((found for name in BINARIES if (found := shutil.which(name))), None)
    if binary is None:
        pytest.fail(
            "no Pushgateway binary (prometheus-pushgateway) on PATH; install Debian's "
            "package: apt-get install prometheus-pushgateway (.ci/run does)"
        )
    port = _free_port()
    log = (tmp_path_factory.mktemp("pushgateway") / "log.txt").open("w")
    process = subprocess.Popen(
        [binary, f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):  # bounded: 10 s
            try:
                urllib.request.urlopen(f"{url}/-/ready", timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            pytest.fail(f"the Pushgateway on {url} did not become ready in 10 s")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _samples(url: str) -> Samples:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=10).read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("batchscore_"):
                found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples: Samples, name: str, **labels: str) -> float | None:
    """The one sample named ``name`` whose labels include ``labels``."""
    hits = [
        value
        for (sample, pairs), value in samples.items()
        if sample == name and labels.items() <= dict(pairs).items()
    ]
    assert len(hits) <= 1, (name, labels, hits)
    return hits[0] if hits else None


def _day(root: Path, day: str, nulls: int = 0) -> Path:
    """One dt= partition of plain data; ``nulls`` rows with x null (rejected)."""
    folder = root / f"dt={day}"
    table = write_plain_data(folder, files=1, rows_per_file=1000, row_group_rows=500)
    if nulls:
        x = table["x"].to_numpy()
        mask = np.zeros(len(x), dtype=bool)
        mask[:nulls] = True
        table = table.set_column(1, "x", pa.array(x, pa.float64(), mask=mask))
        (path,) = folder.glob("*.parquet")
        pq.write_table(table, path)
    return folder


def test_groups_per_day_and_reruns_keep_the_last_success(
    gateway: str, plain_model: Path, tmp_path: Path
) -> None:
    data = tmp_path / "in"
    days = {"2026-03-01": _day(data, "2026-03-01", nulls=5), "2026-03-02": _day(data, "2026-03-02")}
    options = ("--key_columns=id", f"--pushgateway={gateway}", "--max_error_rate=0.01")
    textfiles = tmp_path / "prom/"
    for folder in days.values():
        rc = score(
            folder,
            tmp_path / "out",
            *options,
            f"--metrics_textfile={textfiles}/",
            model=plain_model,
        )
        assert rc == 0
    samples = _samples(gateway)
    for day in days:
        group = {"dataset": str(data), "partition": day}
        assert _value(samples, "batchscore_rows_read_total", **group) == 1000, day
        assert _value(samples, "batchscore_run_success", **group) == 1
        assert _value(samples, "batchscore_up_to_date", **group) == 0
    first = {"dataset": str(data), "partition": "2026-03-01"}
    assert _value(samples, "batchscore_rows_scored_total", **first) == 995
    succeeded = _value(samples, "batchscore_last_success_timestamp_seconds", **first)
    assert succeeded is not None

    # Rerun of day 1, unchanged: up to date; the numbers stay, the status says so.
    assert score(days["2026-03-01"], tmp_path / "out", *options, model=plain_model) == 0
    samples = _samples(gateway)
    assert _value(samples, "batchscore_up_to_date", **first) == 1
    assert _value(samples, "batchscore_rows_scored_total", **first) == 995
    rerun = _value(samples, "batchscore_last_success_timestamp_seconds", **first)
    assert rerun is not None and rerun >= succeeded

    # Forced rescore over a stricter error budget: refused. No rows exported as scored;
    # the last success's numbers and time stay for alerting.
    rc = score(
        days["2026-03-01"],
        tmp_path / "out",
        *options,
        "--force",
        "--max_error_rate=0.001",
        model=plain_model,
    )
    assert rc == 2
    samples = _samples(gateway)
    assert _value(samples, "batchscore_run_success", **first) == 0
    assert _value(samples, "batchscore_run_status", status="fail", **first) == 1
    assert _value(samples, "batchscore_rows_scored_total", **first) == 995
    assert _value(samples, "batchscore_last_success_timestamp_seconds", **first) == rerun
    assert _value(samples, "batchscore_error_rate", **first) == pytest.approx(0.005)
    # The other day's group is untouched.
    other = {"dataset": str(data), "partition": "2026-03-02"}
    assert _value(samples, "batchscore_run_success", **other) == 1

    # One textfile per model, dataset and day.
    files = sorted(p.name for p in Path(textfiles).glob("*.prom"))
    assert len(files) == 2 and all(f.startswith("batchscore-") for f in files), files


def test_the_textfile_of_an_up_to_date_or_failed_run_keeps_the_last_numbers(
    tmp_path: Path,
) -> None:
    labels = run_labels("loans", "3", "/data/loans/dt=2026-03-01/")
    assert labels == {
        "model": "loans",
        "model_version": "3",
        "dataset": "/data/loans",
        "partition": "2026-03-01",
    }
    path = textfile_path(f"{tmp_path}/", labels)
    assert path == str(tmp_path / "batchscore-loans-data_loans-2026-03-01.prom")
    summary = {"status": "ok", "run_dir": "/x", "error_rate": 0.0, "checks": []}
    metrics = {"rows_read": 10, "rows_scored": 10, "rows_rejected": 0, "batches": 1}
    write_textfile(path, RunCollector(labels, summary, metrics, None, "committed", 100.0))
    write_textfile(path, RunCollector(labels, {}, None, None, "up_to_date", 200.0))
    failed: dict[str, object] = {"status": "fail", "run_dir": None, "error_rate": 0.5, "checks": []}
    write_textfile(path, RunCollector(labels, failed, {"rows_scored": 3}, None, "failed", 300.0))
    text = Path(path).read_text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {name: f.samples[0].value for name, f in families.items() if f.samples}
    assert value["batchscore_rows_scored"] == 10, "a failed run exports no rows as scored"
    assert value["batchscore_up_to_date"] == 1
    assert value["batchscore_run_success"] == 0
    assert value["batchscore_last_success_timestamp_seconds"] == 200
    assert value["batchscore_last_run_timestamp_seconds"] == 300
    assert value["batchscore_error_rate"] == 0.5
    # The exact exposition of one sample (prometheus_client sorts the labels).
    assert (
        'batchscore_run_success{dataset="/data/loans",model="loans",model_version="3",'
        'partition="2026-03-01"} 0.0\n'
    ) in text
