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


def test_cv_folds_fit_the_threshold_on_validation_and_flag_test_scans_with_it(tmp_path):
    import json
    import sys
    from pathlib import Path

    import torch
    from adafocus.apps.runs.cv import REVIEW_MAX_ERROR, run_cv
    from adafocus.reports.tables import read_tsv

    sys.path.insert(0, str(Path(__file__).parent))
    from _cv_fixtures import tiny_preset, write_preprocessed_cohort

    torch.manual_seed(0)
    manifest = write_preprocessed_cohort(tmp_path / "cache", n_participants=8, repeats=1)
    run_cv(manifest, tmp_path / "cv", preset=tiny_preset(epochs=1), folds=2, progress=False, log=lambda m: None)
    for fold in range(2):
        saved = json.loads((tmp_path / "cv" / f"fold-{fold}" / "review_threshold.json").read_text(encoding="utf-8"))
        assert saved["target"] == {"max_error_unflagged": REVIEW_MAX_ERROR}
        validation = saved["validation"]
        assert validation["items"] > 0
        assert validation["flagged"] == validation["items"] or validation["error_unflagged"] <= REVIEW_MAX_ERROR
        threshold = math.inf if saved["threshold"] is None else saved["threshold"]
        for row in read_tsv(tmp_path / "cv" / f"fold-{fold}" / "predictions.tsv"):
            if abs(float(row["uncertainty"]) - threshold) > 1e-5:  # the table rounds to 6 decimals
                assert int(row["needs_review"]) == (float(row["uncertainty"]) > threshold)
    assert "## Triage" in (tmp_path / "cv" / "report.md").read_text(encoding="utf-8")
