"""batch.release.evaluation and compare's bookkeeping on inputs small enough to check by hand.

tests/test_compare.py runs whole comparisons on real models; these pin each number.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from batch.engine.validate import MODEL_ERROR
from batch.release.compare import _ROW, Comparison, _Tally, blessing
from batch.release.evaluation import (
    Check,
    Thresholds,
    auc,
    labelled_metrics,
    log_loss,
    pairwise_metrics,
    score_psi,
    verdict,
)


def _a(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


class TestAuc:
    @pytest.mark.parametrize(
        ("labels", "scores", "expected"),
        [
            # positives 0.35, 0.8 against negatives 0.1, 0.4: 3 of 4 pairs ordered
            ((0, 0, 1, 1), (0.1, 0.4, 0.35, 0.8), 0.75),
            ((0, 0, 1, 1), (0.1, 0.2, 0.3, 0.4), 1.0),
            ((1, 1, 0, 0), (0.1, 0.2, 0.3, 0.4), 0.0),
            # a tie counts half: (0.2 vs 0.2) = 0.5, (0.9 vs 0.2) = 1
            ((0, 1, 1), (0.2, 0.2, 0.9), 0.75),
            ((0, 1), (0.5, 0.5), 0.5),
        ],
    )
    def test_pairs_ordered(
        self, labels: tuple[int, ...], scores: tuple[float, ...], expected: float
    ) -> None:
        assert auc(np.array(labels), _a(*scores)) == pytest.approx(expected)

    @pytest.mark.parametrize("labels", [(1, 1, 1), (0, 0), ()])
    def test_one_label_class_has_no_auc(self, labels: tuple[int, ...]) -> None:
        assert math.isnan(auc(np.array(labels, dtype=np.int64), _a(*[0.5] * len(labels))))


def test_log_loss_by_hand_and_floored_at_epsilon() -> None:
    # -(ln 0.8 + ln(1 - 0.4)) / 2
    assert log_loss(np.array([1, 0]), _a(0.8, 0.4)) == pytest.approx(0.3669845, abs=1e-6)
    # A confident miss costs -ln(1e-7), not infinity.
    assert log_loss(np.array([1]), _a(0.0)) == pytest.approx(-math.log(1e-7))


def test_score_psi_is_zero_for_the_same_scores_and_nan_without_rows() -> None:
    scores = np.linspace(0, 1, 101)
    assert score_psi(scores, scores) == 0.0
    assert math.isnan(score_psi(scores, _a()))
    assert math.isnan(score_psi(_a(), scores))


def test_pairwise_metrics_by_hand() -> None:
    baseline = _a(0.2, 0.6, 0.7, 0.4)
    candidate = _a(0.3, 0.4, 0.7, 0.45)
    metrics = pairwise_metrics(baseline, candidate, agreement_threshold=0.5)
    # Sides of 0.5: (no, no) (yes, no) (yes, yes) (no, no): 3 of 4 agree.
    assert metrics["agreement"] == 0.75
    assert metrics["mean_abs_diff"] == pytest.approx((0.1 + 0.2 + 0.0 + 0.05) / 4)
    assert metrics["max_abs_diff"] == pytest.approx(0.2)
    assert metrics["baseline_mean"] == pytest.approx(0.475)
    assert metrics["candidate_mean"] == pytest.approx(0.4625)
    assert metrics["psi"] == score_psi(baseline, candidate)
    assert pairwise_metrics(_a(), _a(), 0.5) == {}


def test_labelled_metrics_by_hand() -> None:
    labels = np.array([0, 0, 1, 1])
    metrics = labelled_metrics(labels, _a(0.1, 0.4, 0.35, 0.8), _a(0.1, 0.2, 0.3, 0.4))
    assert metrics["labelled_rows"] == 4 and metrics["positive_rate"] == 0.5
    assert (metrics["baseline_auc"], metrics["candidate_auc"]) == (0.75, 1.0)
    assert metrics["auc_drop"] == pytest.approx(-0.25), "a better candidate drops below zero"
    # -(ln 0.9 + ln 0.6 + ln 0.35 + ln 0.8) / 4
    assert metrics["baseline_log_loss"] == pytest.approx(0.4722880, abs=1e-6)
    empty = labelled_metrics(np.array([]), _a(), _a())
    assert empty["labelled_rows"] == 0
    assert all(math.isnan(empty[k]) for k in ("positive_rate", "auc_drop", "baseline_log_loss"))


AT_THE_LIMITS = {"rows_compared": 100, "agreement": 0.99, "mean_abs_diff": 0.02, "psi": 0.1}


class TestVerdict:
    def test_values_at_the_limits_pass(self) -> None:
        checks = verdict(AT_THE_LIMITS, Thresholds())
        assert [(c.name, c.value, c.limit, c.bound, c.passed) for c in checks] == [
            ("rows_compared", 100.0, 100, "min", True),
            ("agreement", 0.99, 0.99, "min", True),
            ("mean_abs_diff", 0.02, 0.02, "max", True),
            ("psi", 0.1, 0.1, "max", True),
        ]

    @pytest.mark.parametrize(
        ("name", "value"),
        [("rows_compared", 99), ("agreement", 0.9899), ("mean_abs_diff", 0.0201), ("psi", 0.11)],
    )
    def test_one_step_past_a_limit_fails_that_check_only(self, name: str, value: float) -> None:
        checks = verdict({**AT_THE_LIMITS, name: value}, Thresholds())
        assert [c.name for c in checks if not c.passed] == [name]

    def test_the_thresholds_given_are_the_ones_applied(self) -> None:
        strict = Thresholds(min_agreement=1.0, max_psi=0.01, min_rows=1000)
        failed = [c.name for c in verdict(AT_THE_LIMITS, strict) if not c.passed]
        assert failed == ["rows_compared", "agreement", "psi"]

    def test_auc_drop_is_checked_only_with_labels(self) -> None:
        def auc_check(drop: float) -> Check:
            checks = verdict({**AT_THE_LIMITS, "auc_drop": drop}, Thresholds())
            return next(c for c in checks if c.name == "auc_drop")

        assert "auc_drop" not in [c.name for c in verdict(AT_THE_LIMITS, Thresholds())]
        assert auc_check(0.01).passed and auc_check(-0.3).passed
        assert not auc_check(0.011).passed
        skipped = auc_check(math.nan)
        assert skipped.passed and skipped.value is None
        assert skipped.note == "skipped: one label class"

    def test_a_metric_that_could_not_be_measured_fails(self) -> None:
        checks = verdict({"psi": math.nan}, Thresholds())
        by_name = {c.name: c for c in checks}
        assert by_name["rows_compared"] == Check("rows_compared", 0.0, 100, "min", False)
        for name in ("agreement", "mean_abs_diff", "psi"):
            assert by_name[name].value is None and not by_name[name].passed
            assert by_name[name].note == "no rows to measure"

    def test_a_comparison_passes_only_when_every_check_does(self) -> None:
        table = pa.table({"x": [1]})
        passing = verdict(AT_THE_LIMITS, Thresholds())
        assert Comparison({}, table, passing).passed
        assert not Comparison({}, table, [*passing, Check("psi", 0.5, 0.1, "max", False)]).passed


class TestTally:
    """Rows a model raised on leave the comparison; the largest differences are kept."""

    def _tally(self) -> _Tally:
        tally = _Tally(("id",), "score", top_n=2, labelled=True)
        valid = pa.record_batch({"id": [10, 11, 12, 13], "y": [0, 1, 1, 0], _ROW: [0, 1, 2, 3]})
        baseline = pa.table(
            {_ROW: [0, 1, 2, 3], "id": [10, 11, 12, 13], "score": [0.1, 0.5, 0.9, 0.3]}
        )
        # The candidate raised on row 1 (id 11).
        candidate = pa.table({_ROW: [0, 2, 3], "id": [10, 12, 13], "score": [0.1, 0.6, 0.7]})
        tally.add(valid, baseline, candidate, "y")
        return tally

    def test_counts(self) -> None:
        counts = self._tally().counts()
        assert counts["rows_compared"] == 3
        assert counts["rows_rejected"] == 1
        assert counts["rejected_by_reason"] == {MODEL_ERROR: 1}

    def test_metrics_of_the_rows_both_scored(self) -> None:
        metrics = self._tally().metrics(agreement_threshold=0.5)
        # ids 10, 12, 13: baseline 0.1, 0.9, 0.3; candidate 0.1, 0.6, 0.7; labels 0, 1, 0
        assert metrics["rows_compared"] == 3
        assert metrics["agreement"] == pytest.approx(2 / 3)
        assert metrics["mean_abs_diff"] == pytest.approx(0.7 / 3, abs=1e-6)
        assert metrics["baseline_auc"] == 1.0 and metrics["candidate_auc"] == 0.5
        assert metrics["auc_drop"] == 0.5

    def test_the_divergent_rows_are_the_top_n_by_difference(self) -> None:
        divergent = self._tally().divergent()
        assert divergent.column("id").to_pylist() == [13, 12]
        assert divergent.column("abs_diff").to_pylist() == pytest.approx([0.4, 0.3])
        assert divergent.column("label").to_pylist() == [0.0, 1.0]


PASSING_REPORT = {
    "verdict": "pass",
    "baseline": {"name": "plain", "version": "1", "content_hash": "a", "path": "/x"},
    "candidate": {"name": "plain", "version": "2", "content_hash": "b", "alias": "canary"},
    "metrics": {"agreement": 1.0},
    "thresholds": Thresholds().to_json(),
    "input": {"spec": "/data", "fingerprint": "f", "files": ["ignored"]},
    "sample": 0.5,
    "key_columns": ["id"],
}


class TestBlessing:
    def test_a_passing_report_blesses_with_the_models_identity(self, tmp_path: Path) -> None:
        blessed = blessing(PASSING_REPORT, tmp_path, "ci")
        assert blessed["baseline"] == {
            "name": "plain",
            "version": "1",
            "content_hash": "a",
            "alias": None,
            "registered": None,
        }
        assert blessed["candidate"]["alias"] == "canary"
        assert blessed["input"] == {"spec": "/data", "fingerprint": "f"}
        assert blessed["thresholds"] == Thresholds().to_json()
        assert (blessed["comparison"], blessed["blessed_by"]) == (str(tmp_path), "ci")
        assert blessed["blessed_at"].endswith("+00:00")

    def test_a_failing_report_does_not_bless(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError, match="only a passing comparison blesses"):
            blessing({**PASSING_REPORT, "verdict": "fail"}, tmp_path, "ci")
