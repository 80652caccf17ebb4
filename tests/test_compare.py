"""`python -m jobs.compare` and blessing-gated promotion, on real signed SavedModels.

Constructed pairs: plain models (tests/plain_model.py) with the same weight agree on
every row; with another weight they disagree.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch.demo.paths import ensure_signing_key
from batch.model.repository import BLESSINGS, ModelRepository, PromotionRefused
from batch.release.routing import in_share
from jobs.compare import EXIT_FAILED
from jobs.compare import main as compare_main
from jobs.models import main as models_main
from tests.conftest import PlainModels
from tests.model_zoo import build_ragged_signature_model
from tests.plain_model import plain_model_expected, write_plain_data

WEIGHTS = {"1": 0.75, "2": 0.75, "3": 2.0, "4": -0.75}


@pytest.fixture(scope="module")
def exports(plain_models: PlainModels) -> dict[str, Path]:
    # One build per version: @1 and @2 have the same weight but are saved apart.
    return {
        version: plain_models(weight=weight, sign=False, build=int(version))
        for version, weight in WEIGHTS.items()
    }


@pytest.fixture()
def repo(tmp_path: Path, exports: dict[str, Path]) -> ModelRepository:
    """plain@1 and @2 agree (same weight, different bytes); @3 and @4 disagree with them."""
    models = ModelRepository(tmp_path / "repo")
    for version in sorted(WEIGHTS):
        models.register(
            "plain", exports[version], {"key_columns": ["id"]}, signing_key=ensure_signing_key()
        )
    return models


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pa.Table]:
    """Plain data plus a label drawn from the weight-0.75 model, and a contract naming it."""
    root = tmp_path_factory.mktemp("data")
    folder = root / "data"
    table = write_plain_data(folder, files=2, rows_per_file=5000, row_group_rows=1000)
    rng = np.random.default_rng(11)
    labels = (rng.random(table.num_rows) < plain_model_expected(table)).astype(np.int64)
    for index, path in enumerate(sorted(folder.glob("*.parquet"))):
        part = pq.read_table(path)
        start = index * 5000
        pq.write_table(part.append_column("y", pa.array(labels[start : start + 5000])), path)
    contract = root / "contract"
    contract.mkdir()
    contract.joinpath("schema.pbtxt").write_text(
        'feature { name: "id" type: INT presence { min_fraction: 1.0 } }\n'
        'feature { name: "x" type: FLOAT presence { min_fraction: 1.0 } }\n'
        'feature { name: "y" type: INT int_domain { min: 0 max: 1 } }\n'
    )
    contract.joinpath("rules.toml").write_text('key_columns = ["id"]\nlabel = "y"\n')
    return folder, table


def _compare(
    capsys: pytest.CaptureFixture[str], repo: ModelRepository, data: Path, *args: str
) -> tuple[int, str, str]:
    rc = compare_main(
        [
            f"--input={data}",
            f"--model_repo={repo.root}",
            f"--output={repo.root.parent / 'comparisons'}",
            *args,
        ]
    )
    out, err = capsys.readouterr()
    return rc, out, err


def _folder(out: str) -> Path:
    found = re.search(r"output\s+(\S+)", out)
    assert found, out
    return Path(found.group(1))


def _report(out: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((_folder(out) / "comparison.json").read_text())
    return report


def test_models_that_agree_pass_and_the_candidate_is_blessed(
    capsys: pytest.CaptureFixture[str], repo: ModelRepository, data: tuple[Path, pa.Table]
) -> None:
    folder, table = data
    rc, out, err = _compare(capsys, repo, folder, "--baseline=plain@1", "--candidate=plain@2")
    assert rc == 0, err
    assert out.startswith("comparison PASS: candidate plain@2 vs baseline plain@1"), out
    report = _report(out)
    assert report["verdict"] == "pass"
    metrics = report["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["agreement"] == 1.0 and metrics["max_abs_diff"] == 0.0
    assert metrics["psi"] == pytest.approx(0.0, abs=1e-9)
    # The sample is exactly the share of keys the routing hash puts below 10%.
    expected_rows = int(in_share(table, ["id"], 0.1).sum())
    counts = report["counts"]
    assert isinstance(counts, dict)
    assert counts["rows_read"] == table.num_rows
    assert counts["rows_sampled"] == counts["rows_compared"] == expected_rows

    meta = repo.metadata("plain", 2)
    (blessing,) = meta[BLESSINGS]
    assert blessing["baseline"]["version"] == "1" and blessing["candidate"]["version"] == "2"
    assert blessing["baseline"]["content_hash"] == repo.resolve("plain@1").content_hash
    assert blessing["metrics"]["agreement"] == 1.0 and blessing["thresholds"]["max_psi"] == 0.1
    assert blessing["input"]["fingerprint"] and "@" in blessing["blessed_by"]
    # metadata.json is outside the signed folder: the signature still verifies.
    assert models_main(["verify", "plain@2", f"--model_repo={repo.root}"]) == 0


def test_models_that_disagree_fail_with_their_exit_code_and_no_blessing(
    capsys: pytest.CaptureFixture[str], repo: ModelRepository, data: tuple[Path, pa.Table]
) -> None:
    folder, _ = data
    summary_file = repo.root.parent / "compare.json"
    rc, out, _ = _compare(
        capsys,
        repo,
        folder,
        "--baseline=plain@1",
        "--candidate=plain@3",
        f"--summary_file={summary_file}",
    )
    assert rc == EXIT_FAILED == 3
    assert out.startswith("comparison FAIL"), out
    summary = json.loads(summary_file.read_text())
    assert (summary["job"], summary["status"], summary["verdict"]) == ("compare", "fail", "fail")
    assert summary["folder"] == str(_folder(out))
    assert summary["blessed"] == "not blessed (the candidate failed)"
    assert re.search(r"mean_abs_diff\s+\S+\s+<= 0.02\s+FAIL", out), out
    assert "not blessed (the candidate failed)" in out
    report = _report(out)
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert {"agreement", "mean_abs_diff", "psi"} <= failed
    assert BLESSINGS not in repo.metadata("plain", 3)
    divergent = pq.read_table(_folder(out) / "divergent_rows.parquet")
    assert divergent.num_rows == 100
    assert divergent.column_names[:4] == ["id", "baseline_score", "candidate_score", "abs_diff"]
    diffs = divergent.column("abs_diff").to_numpy()
    assert (np.diff(diffs) <= 0).all() and diffs[0] > 0.1

    # Loosened thresholds pass the same pair.
    rc, out, _ = _compare(
        capsys,
        repo,
        folder,
        "--baseline=plain@1",
        "--candidate=plain@3",
        "--min_agreement=0",
        "--max_mean_abs_diff=1",
        "--max_psi=100",
        "--no_bless",
    )
    assert rc == 0 and "not blessed (--no_bless)" in out
    assert BLESSINGS not in repo.metadata("plain", 3)


def test_labels_add_auc_and_log_loss_and_an_auc_check(
    capsys: pytest.CaptureFixture[str],
    repo: ModelRepository,
    data: tuple[Path, pa.Table],
) -> None:
    folder, _ = data
    contract = folder.parent / "contract"
    common = (f"--contract={contract}", "--sample=0.5", "--baseline=plain@1")
    rc, out, err = _compare(capsys, repo, folder, *common, "--candidate=plain@2", "--no_bless")
    assert rc == 0, err
    metrics = _report(out)["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["baseline_auc"] == metrics["candidate_auc"] > 0.6
    assert metrics["auc_drop"] == 0.0 and metrics["labelled_rows"] > 4000
    assert "labels" in out and "AUC" in out
    # A model with the opposite sign of x ranks worse: the AUC check fails it, alone.
    rc, out, _ = _compare(
        capsys,
        repo,
        folder,
        *common,
        "--candidate=plain@4",
        "--min_agreement=0",
        "--max_mean_abs_diff=1",
        "--max_psi=100",
    )
    assert rc == EXIT_FAILED, out
    report = _report(out)
    (failed,) = [c for c in report["checks"] if not c["passed"]]
    assert failed["name"] == "auc_drop" and failed["value"] > 0.1


def test_nulls_in_inputs_both_models_may_leave_absent_are_compared_not_rejected(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    repo = ModelRepository(tmp_path / "repo")
    for build in ("a", "b"):
        exported = build_ragged_signature_model(tmp_path / build)
        repo.register("ragged", exported, {"key_columns": ["id"]}, signing_key=ensure_signing_key())
    rows = 2000
    words = pa.array([[1.0, 2.0], None, [], [None, 4.0]] * (rows // 4), pa.list_(pa.float64()))
    table = pa.table({"id": np.arange(rows), "words": words, "bias": np.zeros(rows)})
    (tmp_path / "data").mkdir()
    pq.write_table(table, tmp_path / "data" / "part-0.parquet")
    rc, out, err = _compare(
        capsys, repo, tmp_path / "data", "--baseline=ragged@1", "--candidate=ragged@2", "--sample=1"
    )
    assert rc == 0, err
    counts = _report(out)["counts"]
    assert counts["rows_sampled"] == counts["rows_compared"] == rows
    assert counts["rows_rejected"] == 0


def test_bad_arguments_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], repo: ModelRepository, data: tuple[Path, pa.Table]
) -> None:
    folder, _ = data
    rc, _, err = _compare(capsys, repo, folder, "--baseline=plain@1", "--candidate=plain@canary")
    assert rc == 2 and "has no version or alias 'canary'" in err
    assert len(err.strip().splitlines()) == 1
    rc, _, err = _compare(
        capsys, repo, folder, "--baseline=plain@1", "--candidate=plain@2", "--score_output=pair"
    )
    assert rc == 2 and "--score_output=pair: expected an output that both" in err
    with pytest.raises(SystemExit) as exit_info:
        _compare(capsys, repo, folder, "--baseline=plain@1", "--candidate=plain@2", "--sample=0")
    assert exit_info.value.code == 2
    assert "expected a share in (0, 1], found 0.0" in capsys.readouterr().err


class TestPromotionNeedsABlessing:
    def test_without_a_blessing_production_refuses_and_force_is_recorded(
        self, capsys: pytest.CaptureFixture[str], repo: ModelRepository
    ) -> None:
        # Nothing at production yet: nothing to compare against, so no blessing is needed.
        assert (
            models_main(["promote", "plain@1", "--to", "production", f"--model_repo={repo.root}"])
            == 0
        )
        with pytest.raises(
            PromotionRefused,
            match=re.escape(
                "'production' is plain@1 and plain@3 has no blessing against it (it has no blessing)"
            ),
        ):
            repo.promote("plain@3", "production")
        # Other aliases are not gated.
        assert repo.promote("plain@3", "canary").forced is False
        rc = models_main(["promote", "plain@3", "--to", "production", f"--model_repo={repo.root}"])
        _, err = capsys.readouterr()
        assert (
            rc == 2
            and "python -m jobs.compare --input=DATA --baseline=plain@production --candidate=plain@3"
            in err
        )
        rc = models_main(
            [
                "promote",
                "plain@3",
                "--to",
                "production",
                "--force",
                "--reason=hotfix",
                f"--model_repo={repo.root}",
            ]
        )
        out, _ = capsys.readouterr()
        assert rc == 0 and "FORCED over: 'production' is plain@1" in out
        record = repo.alias_state("plain")["history"][-1]
        assert record["forced"] is True and record["version"] == 3
        assert "no blessing" in record["overridden"][0] and record["reason"] == "hotfix"
        assert "@" in record["promoted_by"] and record["promoted_at"]

    def test_a_blessing_against_the_current_version_lets_it_through_and_goes_stale(
        self,
        capsys: pytest.CaptureFixture[str],
        repo: ModelRepository,
        data: tuple[Path, pa.Table],
    ) -> None:
        folder, _ = data
        repo.promote("plain@1", "production")
        repo.promote("plain@2", "canary")
        rc, out, err = _compare(
            capsys, repo, folder, "--baseline=plain@production", "--candidate=plain@canary"
        )
        assert rc == 0, err
        assert "candidate plain@2 (@canary) vs baseline plain@1 (@production)" in out
        promotion = repo.promote("plain@2", "production")
        assert promotion.forced is False and promotion.overridden == ()
        # Production moved on (forced to 3): plain@2's blessing against plain@1 is stale.
        repo.promote("plain@3", "production", force=True)
        with pytest.raises(
            PromotionRefused, match=re.escape("(it is blessed only against plain@1)")
        ):
            repo.promote("plain@2", "production")
        # Back at plain@1, the blessing against it counts again.
        repo.promote("plain@1", "production", force=True)
        assert repo.promote("plain@2", "production").overridden == ()


def test_help_explains_the_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        compare_main(["--help"])
    assert exit_info.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Exit status: 0 pass (candidate blessed), 3 fail" in out
    for option in ("--baseline", "--candidate", "--sample", "--max_psi", "--max_auc_drop"):
        assert option in out


def test_the_metrics_on_known_distributions() -> None:
    from batch.release.evaluation import Thresholds, auc, labelled_metrics, score_psi, verdict

    rng = np.random.default_rng(0)
    base = rng.random(20_000)
    assert score_psi(base, base) == 0.0
    assert score_psi(base, rng.random(20_000)) < 0.01  # same distribution, other draw
    assert score_psi(base, base**3) > 0.25  # a large shift
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    one_class = labelled_metrics(np.ones(5), base[:5], base[:5])
    checks = verdict({"rows_compared": 5, **one_class}, Thresholds(min_rows=1))
    (auc_check,) = [c for c in checks if c.name == "auc_drop"]
    assert auc_check.passed and auc_check.note == "skipped: one label class"
    assert not next(c for c in checks if c.name == "agreement").passed  # no pairwise metrics


def test_score_psi_is_the_drift_psi_of_the_expected_scores_quantile_bins() -> None:
    from batch.observe.drift import psi
    from batch.release.evaluation import score_psi

    expected = np.arange(100, dtype=np.float64)  # quartile edges 24.75, 49.5, 74.25
    actual = np.array([10.0] * 50 + [60.0] * 50)  # half in the first bin, half in the third
    assert score_psi(expected, actual, bins=4) == pytest.approx(
        psi([0.25, 0.25, 0.25, 0.25], [0.5, 0.0, 0.5, 0.0])
    )
    assert math.isnan(score_psi(expected, np.array([])))
