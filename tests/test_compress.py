"""python -m jobs.compress: int8 (TFLite, scored with LiteRT), prune and distill versions of
the trained demo model, registered, signed, scored on Beam and Spark and judged by
jobs.compare like any other version."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from batch.engine.prepare import trust_policy
from batch.model.repository import BLESSINGS, ModelRepository, PromotionRefused
from batch.model.resolved import ResolvedModel
from batch.model.signing import verify_model
from batch.model.tflite import TFLITE_FILE, model_backend
from batch.output.commit import list_committed_runs
from jobs.compare import EXIT_FAILED
from jobs.compare import main as compare_main
from tests.conftest import TrainedModel, score

pytestmark = pytest.mark.slow

# Mean |variant - parent| per row the README documents for the defaults of each method.
TOLERANCE = {"int8": 0.01, "prune": 0.05, "distill": 0.05}
KEY = "loan_id"
OUTPUT = "default_probability"


@pytest.fixture(scope="module")
def repo(trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory) -> ModelRepository:
    """A copy of the session's repository: the variants must not become its @latest."""
    root = tmp_path_factory.mktemp("compress") / "models"
    shutil.copytree(trained_model.repo, root)
    return ModelRepository(root)


@pytest.fixture(scope="module")
def variants(repo: ModelRepository, trained_model: TrainedModel) -> dict[str, ResolvedModel]:
    from training.compress import CompressOptions, CompressRequest, compress

    made = {}
    for method in TOLERANCE:
        request = CompressRequest(trained_model.spec, method, model_repo=repo.root)
        made[method] = compress(request, report=None)
    # On purpose: 97% of every kernel cut and (almost) no fine-tuning: the AUC falls.
    broken = CompressOptions(sparsity=0.97, epochs=1, learning_rate=1e-9)
    made["broken"] = compress(
        CompressRequest(trained_model.spec, "prune", broken, model_repo=repo.root), report=None
    )
    return made


def _predictions(output: Path) -> pa.Table:
    (run,) = list_committed_runs(output)
    parts = sorted((run.run_dir / "predictions").glob("part-*.parquet"))
    return pa.concat_tables(pq.read_table(p) for p in parts)


def _manifest(output: Path) -> dict:
    (run,) = list_committed_runs(output)
    return run.manifest().to_json()


@pytest.fixture(scope="module")
def parent_scores(
    repo: ModelRepository, trained_model: TrainedModel, tmp_path_factory: pytest.TempPathFactory
) -> pa.Table:
    output = tmp_path_factory.mktemp("parent_scores")
    assert score(_day(trained_model), output, *_options(repo), model=trained_model.spec) == 0
    return _predictions(output)


def _day(trained_model: TrainedModel) -> Path:
    return trained_model.data_dir / "dt=2026-01-01"


def _options(repo: ModelRepository, runner: str = "--runner=DirectRunner") -> tuple[str, ...]:
    return (f"--model_repo={repo.root}", runner, "--max_error_rate=1", "--batch_size=2000")


def test_each_variant_is_a_signed_version_whose_lineage_names_parent_and_method(
    variants: dict[str, ResolvedModel], trained_model: TrainedModel
) -> None:
    parent = trained_model.model
    trust = trust_policy(None, allow_unsigned=False)
    for method in ("int8", "prune", "distill"):
        model = variants[method]
        assert model.name == parent.name and int(model.version) > int(parent.version)
        assert verify_model(model, trust).verified
        lineage = model.metadata["lineage"]
        assert lineage["parent"] == {
            "name": parent.name,
            "version": parent.version,
            "content_hash": parent.content_hash,
        }
        assert lineage["compression"]["method"] == method
        assert lineage["training_data"] == parent.metadata["lineage"]["training_data"]
        compression = model.metadata["compression"]
        assert compression["parent_size_bytes"] > 0 and compression["size_bytes"] > 0
        assert "heldout_auc" in compression["metric_change"]
    int8 = variants["int8"]
    assert model_backend(int8.saved_model_dir) == "tflite"
    assert (int8.saved_model_dir / TFLITE_FILE).stat().st_size > 0
    # The transform graph only, plus a small TFLite file: smaller than the parent on disk.
    assert int8.metadata["compression"]["size_bytes"] < parent_size(parent)
    assert variants["prune"].metadata["compression"]["kernel_sparsity"] >= 0.49
    distill = variants["distill"].metadata["compression"]
    assert distill["student_parameters"] < distill["teacher_parameters"]


def parent_size(parent: ResolvedModel) -> int:
    return sum(p.stat().st_size for p in parent.saved_model_dir.rglob("*") if p.is_file())


def test_a_changed_tflite_byte_fails_verification(
    variants: dict[str, ResolvedModel], tmp_path: Path
) -> None:
    from batch.model.signing import ModelVerificationError

    int8 = variants["int8"]
    copy = tmp_path / "saved_model"
    shutil.copytree(int8.saved_model_dir, copy)
    shutil.copy(int8.signature_file, tmp_path / "saved_model.sig")
    content = bytearray((copy / TFLITE_FILE).read_bytes())
    content[len(content) // 2] ^= 1
    (copy / TFLITE_FILE).write_bytes(bytes(content))
    changed = ResolvedModel(int8.name, int8.version, copy, int8.content_hash, registered=False)
    with pytest.raises(ModelVerificationError, match=re.escape("model.tflite")):
        verify_model(changed, trust_policy(None, allow_unsigned=False))


@pytest.mark.parametrize("runner", ["beam", "spark"])
def test_variants_score_every_key_once_within_tolerance_of_the_parent(
    variants: dict[str, ResolvedModel],
    parent_scores: pa.Table,
    repo: ModelRepository,
    trained_model: TrainedModel,
    tmp_path: Path,
    runner: str,
) -> None:
    option = "--runner=DirectRunner" if runner == "beam" else "--runner=PySparkRunner"
    extra = () if runner == "beam" else ("--spark_master=local[2]",)
    rows = pq.read_table(_day(trained_model), columns=[KEY]).num_rows
    parent = parent_scores.sort_by(KEY)
    for method, tolerance in TOLERANCE.items():
        output = tmp_path / method
        model = variants[method].label
        assert score(_day(trained_model), output, *_options(repo, option), *extra, model=model) == 0
        manifest = _manifest(output)
        counts = manifest["counts"]
        assert counts["rows_scored"] + counts["rows_rejected"] == rows
        assert manifest["model"]["backend"] == ("tflite" if method == "int8" else "tensorflow")
        got = _predictions(output).sort_by(KEY)
        assert pc.count_distinct(got.column(KEY)).as_py() == got.num_rows  # every key once
        assert got.column(KEY).equals(parent.column(KEY))  # the same rows scored
        diff = np.abs(
            got.column(OUTPUT).to_numpy() - parent.column(OUTPUT).to_numpy().astype(np.float64)
        )
        assert diff.mean() <= tolerance, (method, diff.mean(), diff.max())


def _compare(repo: ModelRepository, data: Path, candidate: str, baseline: str) -> int:
    return compare_main(
        [
            f"--input={data}",
            f"--model_repo={repo.root}",
            f"--output={repo.root.parent / 'comparisons'}",
            f"--baseline={baseline}",
            f"--candidate={candidate}",
            "--sample=1",
        ]
    )


def test_compare_blesses_int8_and_blocks_a_variant_that_loses_auc(
    variants: dict[str, ResolvedModel], repo: ModelRepository, trained_model: TrainedModel
) -> None:
    parent = trained_model.spec
    repo.promote(parent, "production")
    broken, int8 = variants["broken"], variants["int8"]
    assert broken.metadata["compression"]["metric_change"]["heldout_auc"] < -0.01
    data = _day(trained_model)
    assert _compare(repo, data, broken.label, f"{repo.resolve(parent).name}@production") == (
        EXIT_FAILED
    )
    assert not repo.resolve(broken.label).metadata.get(BLESSINGS)
    with pytest.raises(PromotionRefused, match="no blessing"):
        repo.promote(broken.label, "production")
    assert _compare(repo, data, int8.label, f"{repo.resolve(parent).name}@production") == 0
    assert repo.resolve(int8.label).metadata[BLESSINGS]
    assert repo.promote(int8.label, "production").forced is False


def test_a_tflite_version_cannot_be_compressed_again(
    variants: dict[str, ResolvedModel], repo: ModelRepository, trained_model: TrainedModel
) -> None:
    from batch.core.errors import UsageError
    from training.compress import CompressRequest, compress

    int8 = variants["int8"]
    expected = (
        f"model {int8.label} is a tflite version (it holds no Keras model to compress); "
        f"compress its parent {trained_model.model.label} instead"
    )
    with pytest.raises(UsageError, match=re.escape(expected)):
        compress(CompressRequest(int8.label, "prune", model_repo=repo.root), report=None)


def test_int8_keeps_a_softmax_of_k_classes() -> None:
    """A multiclass model's ``[None, k]`` softmax converts to int8 (full integer and dynamic
    range) and LiteRT gives k probabilities a row, close to the float model's (the
    multiclass path of jobs.compress --method=int8, on a small untrained model: seconds)."""
    import tensorflow as tf
    import tf_keras

    from batch.model.tflite import TFLiteModel
    from training.compress import QUANTIZATIONS, CompressOptions, int8_tflite

    classes, rng = 4, np.random.default_rng(3)
    train = {name: rng.normal(size=2000).astype(np.float32) for name in ("x", "y")}
    tf_keras.utils.set_random_seed(3)
    model = tf_keras.Sequential(
        [
            tf_keras.Input(shape=(2,)),
            tf_keras.layers.Dense(16, activation="relu"),
            tf_keras.layers.Dense(classes, activation="softmax"),
        ]
    )

    def predict(features: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        return {"probabilities": model(tf.stack([features["x"], features["y"]], axis=1))}

    rows = {name: values[:500] for name, values in train.items()}
    expected = predict({name: tf.constant(v) for name, v in rows.items()})["probabilities"]
    for quantization in QUANTIZATIONS:
        options = CompressOptions(quantization=quantization, representative_rows=200)
        content, description = int8_tflite(predict, train, options, model)
        assert description["output_info"] == {
            "probabilities": {"dtype": "float32", "shape": [None, classes]}
        }
        got = TFLiteModel(content, description, f"multiclass {quantization}")(rows)
        probabilities = got["probabilities"]
        assert probabilities.shape == (500, classes)
        np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=0.02)
        assert np.abs(probabilities - expected.numpy()).mean() < 0.01, quantization
        agreement = (probabilities.argmax(axis=1) == expected.numpy().argmax(axis=1)).mean()
        assert agreement > 0.95, (quantization, agreement)


def test_compare_refuses_a_multiclass_pair_in_one_line() -> None:
    """jobs.compare judges one score per row: a multiclass parent and its int8 version (both
    ``[None, k]``) are refused with what they give and how to promote anyway."""
    from batch.core.errors import ModelError
    from batch.model.signature import SignatureInfo, TensorInfo
    from batch.release.compare import choose_score_output

    signature = SignatureInfo(
        inputs={}, outputs={"probabilities": TensorInfo("float32", (None, 7))}
    )
    parent, int8 = (
        ResolvedModel("weather", version, Path("unused"), "0" * 64, registered=True)
        for version in ("1", "2")
    )
    expected = (
        "weather@1 and weather@2 share no one-number-per-row output; they give probabilities "
        "[None, 7] (several numbers a row, e.g. a multiclass model's class probabilities), and "
        "jobs.compare compares one score per row, so it cannot judge or bless them: check the "
        "candidate another way and promote it with python -m jobs.models promote --force "
        "(recorded as forced)"
    )
    with pytest.raises(ModelError, match=re.escape(expected)):
        choose_score_output(parent, signature, int8, signature, None)
