"""The "needs review" threshold: fitted on validation items for a stated target, and the error split it gives."""
from __future__ import annotations

import math

import numpy as np
import pytest
from adafocus.reports.cv_report import triage_lines
from adafocus.reports.metrics import fit_review_threshold, normalised_entropy, triage_summary


def test_flag_share_flags_the_least_certain_share():
    uncertainty = np.array([0.1, 0.9, 0.5, 0.3, 0.7])
    threshold = fit_review_threshold(uncertainty, flag_share=0.4)
    assert threshold == 0.7
    assert list(uncertainty >= threshold) == [False, True, False, False, True]
    assert fit_review_threshold(uncertainty, flag_share=0.0) == math.inf
    assert fit_review_threshold(uncertainty, flag_share=1.0) == 0.1


def test_max_error_flags_the_fewest_items_that_meet_the_target():
    uncertainty = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.05])
    errors = np.array([1, 0, 1, 0, 0, 1])
    # flagging the 3 least certain leaves one error in three (0.33); flagging 5 leaves 1/1; all: 0/0
    assert fit_review_threshold(uncertainty, errors, max_error=0.34) == 0.7
    assert fit_review_threshold(uncertainty, errors, max_error=0.0) == 0.05  # only flagging everything
    assert fit_review_threshold(uncertainty, errors, max_error=0.45) == 0.9  # 2 errors in 5 remain
    assert fit_review_threshold(uncertainty, errors, max_error=0.5) == math.inf  # 3 in 6 already meet it
    assert fit_review_threshold(uncertainty, np.zeros(6), max_error=0.05) == math.inf  # nothing to flag


def test_threshold_needs_exactly_one_valid_target():
    with pytest.raises(ValueError, match="exactly one"):
        fit_review_threshold(np.array([0.1]), np.array([0]), flag_share=0.1, max_error=0.1)
    with pytest.raises(ValueError, match="flag_share"):
        fit_review_threshold(np.array([0.1]), flag_share=1.5)
    with pytest.raises(ValueError, match="non-empty"):
        fit_review_threshold(np.array([]), flag_share=0.5)


def test_triage_summary_separates_errors_and_entropy_is_normalised():
    summary = triage_summary(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 0, 0, 0]), 0.5)
    assert summary == {"flagged": 2, "items": 4, "flagged_share": 0.5, "error_flagged": 0.5, "error_unflagged": 0.0}
    assert math.isnan(triage_summary(np.array([0.1]), np.array([0]), 0.5)["error_flagged"])
    entropy = normalised_entropy(np.array([[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]]))
    assert entropy[0] == pytest.approx(1.0) and entropy[1] == pytest.approx(0.0, abs=1e-9) and 0 < entropy[2] < 1


def test_cv_report_triage_section_counts_baseline_sessions():
    rows = [{"baseline": "1", "needs_review": "1", "prediction": "1", "label": "0"},
            {"baseline": "1", "needs_review": "0", "prediction": "0", "label": "0"},
            {"baseline": "1", "needs_review": "0", "prediction": "1", "label": "1"},
            {"baseline": "0", "needs_review": "1", "prediction": "0", "label": "0"}]
    text = "\n".join(triage_lines(rows))
    assert "| flagged \"needs review\" | 1 of 3 (0.333) | 1.000 |" in text
    assert "| not flagged | 2 | 0.000 |" in text
    assert triage_lines([{"baseline": "1", "prediction": "1", "label": "0"}]) == []
