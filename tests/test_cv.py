"""Cross-validation end to end on a tiny preprocessed cohort: folds, leakage guard, resumability, report."""
from __future__ import annotations

import json

import pytest
import torch
from _cv_fixtures import tiny_preset, write_preprocessed_cohort
from adafocus.apps.runs.cv import predict_checkpoint, run_cv
from adafocus.apps.runs.mri import usable_rows
from adafocus.core.model import UniAdaFocus
from adafocus.datasets.mri.dataset import ClipSpec
from adafocus.datasets.splits import DataLeakageError, read_folds, read_training_participants
from adafocus.reports.tables import read_tsv


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cv")
    manifest = write_preprocessed_cohort(root / "cache", n_participants=12, repeats=2)
    out = root / "cv"
    preset = tiny_preset(epochs=2)
    costs = UniAdaFocus(preset.model).exit_costs()
    budget = round(float(costs[0] + costs[-1]) / 2, 4)  # between the glance-only and the last exit's cost
    first = run_cv(manifest, out, preset=preset, folds=3, fold=1, budget=budget, progress=False, log=lambda m: None)
    result = run_cv(manifest, out, preset=tiny_preset(epochs=2), folds=3, budget=budget, progress=False,
                    log=lambda m: None)
    return {"manifest": manifest, "out": out, "first": first, "result": result, "budget": budget}


def test_every_participant_is_tested_once_by_a_model_that_never_saw_it(cv_run):
    out = cv_run["out"]
    rows = usable_rows(cv_run["manifest"])
    assert "PBAD" not in {r.participant_id for r in rows}  # failed preprocessing is left out
    folds = read_folds(out / "splits")
    tested = []
    for fold in folds:
        predictions = read_tsv(out / f"fold-{fold.index}" / "predictions.tsv")
        seen = read_training_participants(out / f"fold-{fold.index}")
        assert seen == set(fold.train) | set(fold.validation)
        assert not seen & {p["participant_id"] for p in predictions}
        assert {(p["participant_id"], p["session_id"]) for p in predictions} == \
            {(r.participant_id, r.session_id) for r in rows if r.participant_id in fold.test}
        tested += [p["participant_id"] for p in predictions if p["baseline"] == "1"]
        for p in predictions:
            assert 0.0 <= float(p["probability"]) <= 1.0
            slices = [s for s in p["slices"].split(";") if s]
            assert len(slices) == int(p["exit"])  # one selected slice per focus step taken
    assert sorted(tested) == sorted({r.participant_id for r in rows})


def test_budget_thresholds_and_fold_files(cv_run):
    out = cv_run["out"]
    for i in range(3):
        policy = json.loads((out / f"fold-{i}" / "exit_policy.json").read_text(encoding="utf-8"))
        assert policy["budget"] == pytest.approx(cv_run["budget"])
        metrics = {r["metric"]: float(r["value"]) for r in read_tsv(out / f"fold-{i}" / "metrics.tsv")}
        assert set(metrics) >= {"accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc"}
        assert (out / f"fold-{i}" / "best.pt").exists() and read_tsv(out / f"fold-{i}" / "budget_curve.tsv")
    assert cv_run["first"]["report"] is None and list(cv_run["first"]["folds"]) == [1]


def test_report_assembled_with_numbers_from_the_folds(cv_run):
    out = cv_run["out"]
    summary = {r["metric"]: r for r in read_tsv(out / "metrics.tsv")}
    per_fold = [cv_run["result"]["folds"][i]["balanced_accuracy"] for i in range(3)]
    assert float(summary["balanced_accuracy"]["mean"]) == pytest.approx(sum(per_fold) / 3, abs=1e-4)
    assert (out / "report.html").exists() and (out / "selected_slices.png").stat().st_size > 1000
    assert f"{sum(per_fold) / 3:.3f}" in (out / "report.md").read_text(encoding="utf-8")


def test_finished_folds_are_not_retrained(cv_run):
    out = cv_run["out"]
    before = {i: (out / f"fold-{i}" / "best.pt").stat().st_mtime_ns for i in range(3)}
    again = run_cv(cv_run["manifest"], out, preset=tiny_preset(epochs=2), folds=3, budget=cv_run["budget"],
                   progress=False, log=lambda m: None)
    assert {i: (out / f"fold-{i}" / "best.pt").stat().st_mtime_ns for i in range(3)} == before
    assert again["folds"] == cv_run["result"]["folds"]


def test_other_settings_in_the_same_folder_are_refused(cv_run):
    with pytest.raises(ValueError, match="other settings"):
        run_cv(cv_run["manifest"], cv_run["out"], preset=tiny_preset(epochs=3), folds=3, budget=cv_run["budget"],
               progress=False, log=lambda m: None)


def test_scoring_training_participants_is_refused_unless_overridden(cv_run):
    out = cv_run["out"]
    fold = read_folds(out / "splits")[0]
    rows = usable_rows(cv_run["manifest"])
    spec = ClipSpec(**json.loads((out / "cv.json").read_text(encoding="utf-8"))["clip"])
    checkpoint = out / "fold-0" / "best.pt"
    trained_on = [r for r in rows if r.participant_id == fold.train[0]]
    with pytest.raises(DataLeakageError, match=fold.train[0]):
        predict_checkpoint(checkpoint, trained_on, spec, device="cpu")
    scored = predict_checkpoint(checkpoint, trained_on, spec, allow_leakage=True, device="cpu")
    assert [p["participant_id"] for p in scored] == [fold.train[0]] * len(trained_on)
    held_out = [r for r in rows if r.participant_id in fold.test]
    assert len(predict_checkpoint(checkpoint, held_out, spec, device="cpu")) == len(held_out)
