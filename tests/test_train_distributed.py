"""Training across worker processes (MultiWorkerMirroredStrategy), mixed precision and data
snapshots (issue 18 points 1, 3, 4): real tf.Transform, real fits, real signed versions.

One tf.Transform run (module fixture) feeds every fit here: the one-process and the
two-worker model see exactly the same transformed rows."""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from batch.core.faults import FAULT_ENV
from batch.core.fsutil import file_sha256, write_json_atomic
from batch.model.repository import ModelRepository
from batch.model.resolved import ResolvedModel
from tests.training_rows import ROWS, DemoRows  # the demo_rows fixture: tests/conftest.py

pytestmark = pytest.mark.slow


def _fit(demo_rows: DemoRows, **changes: Any) -> ResolvedModel:
    from training.trainer import fit_and_register

    request = dataclasses.replace(demo_rows.request, **changes)
    return fit_and_register(demo_rows.rows, request, None, demo_rows.key)


class TestWorkers:
    def test_two_workers_match_one_process(self, demo_rows: DemoRows) -> None:
        one = _fit(demo_rows)
        two = _fit(demo_rows, workers=2)
        auc_one = one.metadata["metrics"]["heldout_auc"]
        auc_two = two.metadata["metrics"]["heldout_auc"]
        assert auc_one > 0.75 and auc_two > 0.75
        assert abs(auc_two - auc_one) < 0.03, (auc_one, auc_two)
        training = two.metadata["training"]
        assert training["workers"] == 2
        assert training["strategy"] == "MultiWorkerMirroredStrategy"
        assert training["fit_examples_per_s"] > 0
        assert one.metadata["training"]["workers"] == 1
        assert one.metadata["training"]["strategy"] is None
        assert two.metadata["lineage"]["training_data"] == demo_rows.rows.prepared.training_data
        # The registered version scores and verifies like any other.
        ModelRepository(demo_rows.repo).resolve(two.label)

    def test_a_dead_worker_fails_the_job_with_one_line(
        self, demo_rows: DemoRows, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        from training.fitting import TrainingError

        before = ModelRepository(demo_rows.repo).versions("loan_default")
        monkeypatch.setenv(FAULT_ENV, "training-worker-1")  # SIGKILL after its first epoch
        started = time.monotonic()
        with pytest.raises(TrainingError) as caught:
            _fit(demo_rows, workers=2)
        message = str(caught.value)
        assert "\n" not in message
        assert re.search(
            r"training worker 1 of 2 \(pid \d+, 127\.0\.0\.1:\d+\) was killed by SIGKILL", message
        ), message
        assert "nothing was registered" in message and "--workers=1" in message
        assert time.monotonic() - started < 200  # the surviving chief was stopped, no hang
        assert ModelRepository(demo_rows.repo).versions("loan_default") == before

    def test_workers_past_the_timeout_are_stopped(self, demo_rows: DemoRows) -> None:
        from training.fitting import TrainingError

        started = time.monotonic()
        with pytest.raises(TrainingError, match=r"did not finish within --worker_timeout=3s"):
            _fit(demo_rows, workers=2, worker_timeout_s=3)
        assert time.monotonic() - started < 30


def test_mixed_precision_keeps_a_float32_signature(demo_rows: DemoRows) -> None:
    import tensorflow as tf

    model = _fit(demo_rows, mixed_precision=True)
    precision = model.metadata["training"]["precision"]
    assert precision["policy"] == "mixed_bfloat16"
    change = precision["change_vs_float32"]["heldout_auc"]
    assert abs(change) < 0.03
    assert precision["float32_metrics"]["heldout_auc"] > 0.75
    assert "float32_reference" in model.metadata["training"]["timings_s"]
    signature = model.metadata["signature"]
    assert {info["dtype"] for info in signature["outputs"].values()} == {"float32"}
    loaded = tf.saved_model.load(str(model.saved_model_dir)).signatures["serving_default"]
    _args, inputs = loaded.structured_input_signature
    assert {inputs["annual_income"].dtype, inputs["loan_amount"].dtype} == {tf.float32}
    assert all(out.dtype == tf.float32 for out in loaded.structured_outputs.values())


class TestInputManifest:
    def test_lineage_pins_every_file_and_a_retrain_reads_exactly_them(
        self, demo_rows: DemoRows, tmp_path: Path
    ) -> None:
        import pyarrow.parquet as pq

        from jobs import train
        from training.trainer import prepare

        pinned = demo_rows.rows.prepared.training_data  # what every version above carries
        files = sorted(demo_rows.data.rglob("*.parquet"))
        assert [entry["path"] for entry in pinned["files"]] == [
            p.relative_to(demo_rows.data).as_posix() for p in files
        ]
        for entry, path in zip(pinned["files"], files, strict=True):
            assert entry["bytes"] == path.stat().st_size
            assert entry["sha256"] == file_sha256(path)
        manifest = tmp_path / "metadata.json"
        write_json_atomic(manifest, {"lineage": {"training_data": pinned}})

        # The data moved and new data arrived: the snapshot reads the pinned files only.
        data = tmp_path / "data"
        shutil.copytree(demo_rows.data, data)
        extra = data / "dt=2099-01-01" / "part-00000.parquet"
        extra.parent.mkdir()
        shutil.copy(files[0], extra)
        args = [
            f"--input={data}",
            f"--input_manifest={manifest}",
            f"--model_repo={tmp_path / 'models'}",
            f"--key={demo_rows.key}",
            f"--train_rows={ROWS}",
        ]
        request = train.training_request(train.build_parser().parse_args(args), [])
        prepared = prepare(request)  # what the job reads: the rows come from these files
        assert prepared.files == [data / entry["path"] for entry in pinned["files"]]
        assert prepared.training_data["fingerprint"] == pinned["fingerprint"]
        assert prepared.training_data["files"] == pinned["files"]
        assert prepared.training_data["path"] == str(data.resolve())

        # A pinned file changes: refused before anything is read or trained.
        table = pq.read_table(data / pinned["files"][1]["path"])
        pq.write_table(table.slice(0, table.num_rows - 1), data / pinned["files"][1]["path"])
        assert train.main(args) == 2
        assert not (tmp_path / "models").exists()

    def test_changed_file_error_names_it_and_the_fix(
        self, demo_rows: DemoRows, tmp_path: Path
    ) -> None:
        from batch.core.errors import InputDataError
        from training import dataset

        data = tmp_path / "data"
        shutil.copytree(demo_rows.data, data)
        files = sorted(data.rglob("*.parquet"))
        manifest = tmp_path / "snapshot.json"
        write_json_atomic(manifest, dataset.snapshot(data, files))
        snapshot = dataset.read_snapshot(manifest)
        assert dataset.snapshot_files(manifest, snapshot, None) == files
        files[0].write_bytes(files[0].read_bytes()[:-10] + b"0123456789")
        with pytest.raises(InputDataError) as caught:
            dataset.snapshot_files(manifest, snapshot, None)
        message = str(caught.value)
        assert message.startswith(f"{files[0]}: changed since the snapshot")
        assert "expected" in message and "found" in message
        assert "without --input_manifest" in message

        write_json_atomic(manifest, dataset.snapshot(data, files))
        files[1].unlink()
        with pytest.raises(InputDataError, match=re.escape(f"{files[1]}: listed in")):
            dataset.snapshot_files(manifest, dataset.read_snapshot(manifest), None)
