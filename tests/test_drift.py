"""Drift on pure numbers: bins, PSI, mergeable counts, the report and its checks."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from batch.observe.checks import FAIL, OK, STATUS_RANK, WARN, run_checks, run_summary, worst
from batch.observe.drift import (
    CATEGORICAL,
    NULL_LABEL,
    NUMERIC,
    OTHER_LABEL,
    Baseline,
    DriftCounts,
    DriftThresholds,
    FeatureBaseline,
    compute_baseline,
    count_features,
    describe_column,
    drift_report,
    psi,
)


class TestPsi:
    def test_identical_distributions_have_zero_psi(self) -> None:
        assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0

    def test_matches_the_textbook_formula(self) -> None:
        base, cur = [0.5, 0.5], [0.8, 0.2]
        expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
        assert psi(base, cur) == pytest.approx(expected)

    def test_an_empty_bin_counts_finitely(self) -> None:
        value = psi([1.0, 0.0], [0.0, 1.0])
        assert math.isfinite(value) and value > 10


class TestFeatureBaseline:
    def test_numeric_bins_by_quantile_edges_with_a_null_bin(self) -> None:
        column = pa.array([float(i) for i in range(100)] + [None, float("nan")])
        feature = describe_column("x", column, bins=4)
        assert feature.kind == NUMERIC
        assert feature.edges == (24.75, 49.5, 74.25)
        assert feature.bins == 5
        assert feature.labels() == [
            "< 24.75",
            "[24.75, 49.5)",
            "[49.5, 74.25)",
            ">= 74.25",
            NULL_LABEL,
        ]
        counts = feature.count(column)
        assert counts.tolist() == [25, 25, 25, 25, 2]
        assert feature.null_rate == pytest.approx(2 / 102)

    def test_categorical_counts_other_and_null(self) -> None:
        feature = describe_column("c", pa.array(["a", "a", "b", None]))
        assert feature.kind == CATEGORICAL
        assert feature.categories == ("a", "b") and feature.complete
        assert feature.labels() == ["a", "b", OTHER_LABEL, NULL_LABEL]
        assert feature.count(pa.array(["b", "z", None, None, "a"])).tolist() == [1, 1, 1, 2]

    def test_float64_values_on_a_float32_edge_land_in_the_training_bin(self) -> None:
        # Training sees the model's float32; scoring may read float64 0.1, which is
        # less than float32(0.1), the median edge: both must count in the same bin.
        values = [0.0, 0.1, 0.1, 0.1, 0.2, 0.3]
        feature = describe_column("x", pa.array(values, pa.float32()), bins=2)
        assert (
            feature.count(pa.array(values, pa.float64())).tolist()
            == feature.count(pa.array(values, pa.float32())).tolist()
        )

    def test_json_round_trip(self) -> None:
        feature = describe_column("x", pa.array([1, 2, 3, 4, 5, 6]), bins=3)
        assert FeatureBaseline.from_json(feature.to_json()) == feature

    def test_fractions_must_fit_the_bins(self) -> None:
        payload = describe_column("x", pa.array([1.0, 2.0, 3.0]), bins=2).to_json()
        payload["fractions"] = [1.0]
        with pytest.raises(ValueError, match="1 fractions for 3 bins"):
            FeatureBaseline.from_json(payload)


class TestDriftCounts:
    def test_counts_of_batches_add_up_to_the_counts_of_the_whole(self) -> None:
        rng = np.random.default_rng(3)
        table = pa.table(
            {
                "x": rng.normal(size=3000),
                "c": rng.choice(["a", "b", "c"], size=3000),
            }
        )
        baseline = compute_baseline(table, ["x", "c"], source="test")
        whole = count_features(baseline, table.to_batches()[0])
        merged = DriftCounts()
        for batch in table.to_batches(max_chunksize=700):
            merged.add(count_features(baseline, batch))
        restored = DriftCounts.from_json(merged.to_json())
        for name in ("x", "c"):
            assert restored.features[name].tolist() == whole.features[name].tolist()


def _baseline() -> Baseline:
    rng = np.random.default_rng(7)
    table = pa.table(
        {
            "income": rng.lognormal(10, 0.5, size=5000),
            "purpose": rng.choice(["car", "home", "medical"], size=5000),
        }
    )
    return compute_baseline(
        table,
        ["income", "purpose"],
        "test",
        predictions=rng.uniform(size=1000),
        prediction_name="p",
    )


class TestDriftReport:
    def test_same_data_is_ok_shifted_data_is_flagged(self) -> None:
        baseline = _baseline()
        rng = np.random.default_rng(8)
        same = pa.record_batch(
            {
                "income": rng.lognormal(10, 0.5, size=5000),
                "purpose": rng.choice(["car", "home", "medical"], size=5000),
            }
        )
        shifted = pa.record_batch(
            {
                "income": rng.lognormal(10, 0.5, size=5000) * 3,
                "purpose": rng.choice(["car", "crypto"], size=5000),
            }
        )
        thresholds = DriftThresholds(max_psi=0.25, max_unseen_share=0.05, action="fail")
        ok = drift_report(baseline, count_features(baseline, same), thresholds)
        assert ok["status"] == "ok"
        assert all(f["psi"] < 0.05 for f in ok["features"])
        bad = drift_report(baseline, count_features(baseline, shifted), thresholds)
        assert bad["status"] == "fail"
        income, purpose = bad["features"]
        assert income["psi"] > 1 and income["unseen_share"] is None
        assert purpose["unseen_share"] == pytest.approx(0.5, abs=0.03)
        assert purpose["histogram"]["bins"][-2:] == [OTHER_LABEL, NULL_LABEL]
        assert sum(purpose["histogram"]["current"]) == pytest.approx(1.0)
        checks = {c["name"]: c for c in run_checks(5000, 0, 0.001, bad)}
        assert checks["drift_psi:income"]["status"] == "fail"
        assert checks["drift_unseen_share:purpose"]["status"] == "fail"
        assert checks["error_rate"]["status"] == "ok"
        # No predictions were counted: the prediction entry has no rows, PSI 0.
        assert bad["prediction"]["rows"] == 0

    def test_a_model_without_baseline_is_reported_not_failed(self) -> None:
        report = drift_report(None, None, DriftThresholds())
        assert report["status"] == "ok" and report["baseline"] is None
        assert "no drift baseline" in report["note"]


class TestWorst:
    @pytest.mark.parametrize(
        ("statuses", "expected"),
        [
            (["ok", "warn", "ok"], "warn"),
            (["warn", "fail", "ok"], "fail"),
            (["ok"], "ok"),
            (["skipped", None, "ok"], "ok"),  # anything else is not a status
            ([], None),
            (["unknown"], None),
        ],
    )
    def test_the_most_severe_known_status(
        self, statuses: list[object], expected: str | None
    ) -> None:
        assert worst(statuses) == expected

    def test_the_rank_orders_ok_warn_fail(self) -> None:
        assert sorted(STATUS_RANK, key=STATUS_RANK.__getitem__) == [OK, WARN, FAIL]


class TestRunSummary:
    def test_worst_check_wins_and_an_uncommitted_run_fails(self) -> None:
        checks = [
            {"name": "a", "status": "ok"},
            {"name": "b", "status": "warn"},
        ]
        counts = {"rows_read": 1000, "rows_scored": 998, "rows_rejected": 2}
        committed = run_summary(run_id="r", run_dir="/out/run=r", checks=checks, counts=counts)
        assert committed["status"] == "warn" and committed["error_rate"] == 0.002
        refused = run_summary(run_id="r", run_dir=None, checks=checks, reason="over budget")
        assert refused["status"] == "fail" and refused["reason"] == "over budget"
