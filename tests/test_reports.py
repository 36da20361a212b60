"""Metrics against scikit-learn, bootstrap CIs, and the assembled CV report."""
from __future__ import annotations

import json

import numpy as np
import pytest
from adafocus.apps.cli import main
from adafocus.reports.cv_report import _html, chance_verdict, cv_summary_line, slice_variety, write_cv_report
from adafocus.reports.metrics import binary_metrics, bootstrap_ci, confusion_counts
from adafocus.reports.tables import read_tsv, tsv_text
from sklearn.metrics import accuracy_score, balanced_accuracy_score, recall_score, roc_auc_score


def known_predictions(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    probabilities = np.clip(0.5 * labels + rng.normal(0.25, 0.25, n), 0, 1)
    return labels, (probabilities >= 0.5).astype(int), probabilities


def test_binary_metrics_match_scikit_learn():
    labels, predictions, probabilities = known_predictions()
    m = binary_metrics(labels, predictions, probabilities)
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predictions))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predictions))
    assert m["sensitivity"] == pytest.approx(recall_score(labels, predictions, pos_label=1))
    assert m["specificity"] == pytest.approx(recall_score(labels, predictions, pos_label=0))
    assert m["auc"] == pytest.approx(roc_auc_score(labels, probabilities))
    assert confusion_counts(labels, predictions).sum() == len(labels)
    assert confusion_counts(labels, predictions)[1, 1] == int(((labels == 1) & (predictions == 1)).sum())


def test_undefined_metrics_are_nan_not_errors():
    m = binary_metrics(np.zeros(4, int), np.array([0, 1, 0, 0]), np.array([0.1, 0.7, 0.2, 0.3]))
    assert np.isnan(m["auc"]) and np.isnan(m["sensitivity"])
    assert m["specificity"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        binary_metrics(np.array([0, 2]), np.array([0, 1]), np.array([0.1, 0.9]))


def test_bootstrap_ci_contains_the_point_estimate():
    labels, predictions, probabilities = known_predictions(80, seed=1)
    point = binary_metrics(labels, predictions, probabilities)
    intervals = bootstrap_ci(labels, predictions, probabilities, n_resamples=500, seed=0)
    for name, (low, high) in intervals.items():
        assert low <= point[name] <= high, name
        assert high - low > 0.01, name  # a real interval, not a degenerate one
    groups = np.repeat(np.arange(40), 2)  # pairs resampled together: intervals still bracket the estimate
    grouped = bootstrap_ci(labels, predictions, probabilities, groups=groups, n_resamples=300, seed=0)
    assert grouped["accuracy"][0] <= point["accuracy"] <= grouped["accuracy"][1]


def fake_cv_dir(tmp_path, n_folds: int = 3):
    """A finished CV folder as apps.cv writes it (no slices selected, so no volumes are needed)."""
    labels, predictions, probabilities = known_predictions(30, seed=2)
    json.dump({"manifest": str(tmp_path / "manifest.tsv"), "preset_name": "cpu-mri", "preset": {},
               "clip": {"axis": "sagittal", "num_slices": 16, "discard_border": 0.15, "context": 1, "size": 64},
               "folds": n_folds, "seed": 0, "validation_fraction": 0.2, "budget_gmacs": None,
               "exit_criterion": "entropy"}, (tmp_path / "cv.json").open("w"))
    for i in range(n_folds):
        fold = tmp_path / f"fold-{i}"
        fold.mkdir()
        rows = [{"participant_id": f"P{k:02d}", "session_id": "ses-M000", "baseline": 1, "label": int(labels[k]),
                 "prediction": int(predictions[k]), "probability": f"{probabilities[k]:.6f}", "exit": 2,
                 "gmacs": "0.05", "slices": "", "boxes": ""} for k in range(i, 30, n_folds)]
        (fold / "predictions.tsv").write_text(tsv_text(list(rows[0]), rows))
        m = binary_metrics(labels[i::n_folds], predictions[i::n_folds], probabilities[i::n_folds])
        m.update(participants=len(rows), mean_gmacs=0.05)
        (fold / "metrics.tsv").write_text(tsv_text(["metric", "value"],
                                                   [{"metric": k, "value": v} for k, v in m.items()]))
        (fold / "budget_curve.tsv").write_text("q\tmean_gmacs\taccuracy\n1\t0.02\t0.6\n10\t0.05\t0.7\n", encoding="utf-8")
    return labels, predictions, probabilities


def test_cv_report_files_contain_the_numbers(tmp_path):
    labels, predictions, _probabilities = fake_cv_dir(tmp_path)
    report = write_cv_report(tmp_path)
    summary = {r["metric"]: r for r in read_tsv(tmp_path / "metrics.tsv")}
    pooled_ba = balanced_accuracy_score(labels, predictions)
    assert float(summary["balanced_accuracy"]["pooled"]) == pytest.approx(pooled_ba, abs=1e-5)
    per_fold = [balanced_accuracy_score(labels[i::3], predictions[i::3]) for i in range(3)]
    assert float(summary["balanced_accuracy"]["mean"]) == pytest.approx(np.mean(per_fold), abs=1e-5)
    assert float(summary["balanced_accuracy"]["sd"]) == pytest.approx(np.std(per_fold, ddof=1), abs=1e-5)
    assert float(summary["auc"]["ci_low"]) <= float(summary["auc"]["pooled"]) <= float(summary["auc"]["ci_high"])
    text = report.read_text(encoding="utf-8")
    assert f"{np.mean(per_fold):.3f} ± {np.std(per_fold, ddof=1):.3f}" in text
    assert f"{pooled_ba:.3f} [" in text
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"{pooled_ba:.3f}" in html and html.count("<img") == 4
    for png in ("roc.png", "confusion.png", "accuracy_vs_gmacs.png", "selected_slices.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_report_refuses_unfinished_folds_and_cli_report_only(tmp_path, capsys):
    fake_cv_dir(tmp_path)
    (tmp_path / "fold-1" / "metrics.tsv").unlink()
    assert main(["cv", "--out", str(tmp_path), "--report-only"]) == 2
    assert "fold(s) 1" in capsys.readouterr().err
    assert main(["cv", "--out", str(tmp_path)]) == 2  # no manifest, no --report-only
    capsys.readouterr()
    assert main(["cv", str(tmp_path / "manifest.tsv"), "--out", str(tmp_path / "new")]) == 2
    assert "no manifest at" in capsys.readouterr().err and not (tmp_path / "new").exists()


@pytest.mark.parametrize("low, high, verdict", [(0.62, 0.9, "Above chance"), (0.3, 0.7, "Not distinguishable"),
                                                (0.1, 0.45, "Below chance"), (float("nan"), float("nan"), "not assessed")])
def test_chance_verdict_reads_the_pooled_interval(low, high, verdict):
    line = chance_verdict({"ci_low": low, "ci_high": high})
    assert verdict in line
    assert ("[0.300, 0.700]" in line) == (low == 0.3)


def test_slice_variety_counts_distinct_slice_sets_of_baseline_scans():
    rows = [{"baseline": "1", "slices": "3;7;9"}, {"baseline": "1", "slices": "3;7;9"},
            {"baseline": "1", "slices": "2;7;9"}, {"baseline": "0", "slices": "1;2;3"}]
    assert slice_variety(rows) == (2, 3)
    assert slice_variety(rows[:2]) == (1, 2)


def test_report_states_the_chance_verdict_and_renders_paragraphs_in_html(tmp_path):
    fake_cv_dir(tmp_path)
    write_cv_report(tmp_path)
    row = next(r for r in read_tsv(tmp_path / "metrics.tsv") if r["metric"] == "balanced_accuracy")
    expected = chance_verdict({"ci_low": float(row["ci_low"]), "ci_high": float(row["ci_high"])})
    assert expected in (tmp_path / "report.md").read_text(encoding="utf-8")
    assert expected.replace("**", "") in cv_summary_line(tmp_path)
    assert "slice sets chosen for the test scans" in (tmp_path / "report.md").read_text(encoding="utf-8")
    page = _html("# T\n\nA **bold** <claim> with `code`.\n\n- item **x**\n")
    assert "<p>A <strong>bold</strong> &lt;claim&gt; with code.</p>" in page and "<li>item <strong>x</strong></li>" in page
