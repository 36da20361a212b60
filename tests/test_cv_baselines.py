"""The reference models `adafocus cv` runs beside the dynamic model (apps/runs/baselines.py): region features,
the logistic-regression fold evaluation, the static 2.5D model's training and cost, and the report's comparison."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _cv_fixtures import tiny_preset, write_preprocessed_cohort
from adafocus.apps.cli import build_parser
from adafocus.apps.runs.baselines import (
    FEATURE_NAMES,
    REGIONS,
    TISSUE_THRESHOLD,
    MNIBox,
    StaticSliceModel,
    box_mask,
    fit_predict_classical,
    region_features,
    static_probabilities,
    train_static,
)
from adafocus.apps.runs.cv import run_cv
from adafocus.apps.runs.mri import usable_rows
from adafocus.core.config import with_input_channels
from adafocus.core.flops import count_gmacs
from adafocus.datasets.mri.dataset import ClipSpec, MRISliceDataset
from adafocus.datasets.splits import read_folds
from adafocus.reports.cv_report import write_cv_report
from adafocus.reports.metrics import binary_metrics
from adafocus.reports.tables import read_tsv

# A 2 mm grid covering the MNI field of view of nilearn's template (voxel (0, 0, 0) at (-98, -134, -72) mm).
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = (-98.0, -134.0, -72.0)
SHAPE = (99, 117, 95)


def balanced_accuracy(labels, probabilities) -> float:
    labels, probabilities = np.asarray(labels), np.asarray(probabilities)
    return binary_metrics(labels, (probabilities >= 0.5).astype(int), probabilities)["balanced_accuracy"]


# ------------------------------------------------------------------------------------------- features
def test_box_mask_holds_the_voxel_centres_inside_the_box():
    box = MNIBox(x=(10.0, 20.0), y=(-4.0, 4.0), z=(0.0, 6.0))
    mask = box_mask(box, AFFINE, SHAPE)
    i, j, k = np.nonzero(mask)
    world = AFFINE[:3, :3] @ np.stack([i, j, k]) + AFFINE[:3, 3:]
    assert mask.sum() == 6 * 5 * 4  # x 10..20 step 2, y -4..4, z 0..6
    assert world[0].min() == 10 and world[0].max() == 20 and world[2].min() == 0 and world[2].max() == 6
    flipped = np.diag([-2.0, 2.0, 2.0, 1.0])  # an x-flipped (LAS) grid of the same field of view
    flipped[:3, 3] = (98.0, -134.0, -72.0)
    assert box_mask(box, flipped, SHAPE).sum() == mask.sum()
    assert box_mask(box.mirrored(), AFFINE, SHAPE).sum() == mask.sum()


def test_region_features_give_the_known_means_and_tissue_volumes():
    volume = np.full(SHAPE, 0.6, dtype=np.float32)
    expected = {}
    for n, (name, box) in enumerate(REGIONS.items()):
        mask = box_mask(box, AFFINE, SHAPE)
        value = 0.4 + 0.1 * n
        volume[mask] = value
        lowest = np.nonzero(mask)[2].min()
        dark = mask & (np.arange(SHAPE[2]) < lowest + 2)  # the region's two lowest voxel layers are CSF
        volume[dark] = 0.1
        n_dark, n_all = int(dark.sum()), int(mask.sum())
        expected[f"{name}_mean"] = (0.1 * n_dark + value * (n_all - n_dark)) / n_all
        expected[f"{name}_tissue_ml"] = (n_all - n_dark) * 8 / 1000  # 2 mm voxels: 8 mm^3
    assert 0.1 < TISSUE_THRESHOLD < 0.4
    features = region_features(volume, AFFINE)
    assert list(features) == list(FEATURE_NAMES)
    assert features == pytest.approx(expected, rel=1e-5)
    assert features["hippocampus_left_mean"] != pytest.approx(features["hippocampus_right_mean"])


def test_region_outside_the_field_of_view_is_a_one_line_error():
    cropped = np.zeros((20, 20, 20), dtype=np.float32)  # a corner of the MNI box only
    with pytest.raises(ValueError, match="hippocampus_left region lies outside .* field of view"):
        region_features(cropped, AFFINE, source="P001 ses-M000")


def test_template_regions_hold_the_tissue_they_are_named_for():
    """On nilearn's MNI template (what the cache is registered to): hippocampal boxes are almost all tissue,
    the ventricle boxes hold the CSF of the lateral ventricles."""
    nib = pytest.importorskip("nibabel")
    from adafocus.datasets.mri.template import mni_template_path

    image = nib.load(str(mni_template_path()))
    array = np.asarray(image.dataobj, dtype=np.float32)
    features = region_features(array / array.max(), image.affine)
    for side in ("left", "right"):
        hippocampus = features[f"hippocampus_{side}_tissue_ml"] / (box_mask(
            REGIONS[f"hippocampus_{side}"], image.affine, array.shape).sum() / 1000)
        ventricle = features[f"lateral_ventricle_{side}_tissue_ml"] / (box_mask(
            REGIONS[f"lateral_ventricle_{side}"], image.affine, array.shape).sum() / 1000)
        assert hippocampus > 0.98 and ventricle < 0.95


# --------------------------------------------------------------------------------- logistic regression
def test_separable_features_give_balanced_accuracy_one():
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 40)
    features = rng.normal(size=(80, 8))
    features[:, 3] = np.where(labels == 1, 1.0, -1.0) + rng.uniform(-0.5, 0.5, size=80)  # separates, margin 1
    probabilities = fit_predict_classical(features[:60], labels[:60], features[60:])
    assert balanced_accuracy(labels[60:], probabilities) == 1.0


def test_labels_unrelated_to_the_features_stay_near_chance():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(1200, 8))
    features[:, 3] += 4.0 * np.array([0, 1] * 600)
    labels = rng.permutation(np.array([0, 1] * 600))  # shuffled: no longer tied to feature 3
    probabilities = fit_predict_classical(features[:600], labels[:600], features[600:])
    assert abs(balanced_accuracy(labels[600:], probabilities) - 0.5) < 0.08


def test_one_class_training_set_is_refused():
    with pytest.raises(ValueError, match="both classes"):
        fit_predict_classical(np.zeros((4, 2)), [1, 1, 1, 1], np.zeros((2, 2)))


# ------------------------------------------------------------------------------------------ static 2.5D
def test_static_model_cost_is_every_slice_through_the_local_encoder_at_patch_size():
    preset = tiny_preset()
    model_config = with_input_channels(preset.model, 3)
    model = StaticSliceModel(model_config)
    per_patch = count_gmacs(model.local_encoder.pooled, torch.zeros(1, 3, model_config.patch_size,
                                                                   model_config.patch_size))
    head = count_gmacs(model.head, torch.zeros(1, model.local_encoder.feature_dim))
    assert model.gmacs() == pytest.approx(model_config.num_candidates * per_patch + head, rel=1e-6)
    logits = model.eval()(torch.rand(2, model_config.num_candidates, 3, model_config.frame_size,
                                     model_config.frame_size))
    assert logits.shape == (2, 2)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_preprocessed_cohort(tmp_path_factory.mktemp("baselines") / "cache", n_participants=12, repeats=2)


def test_static_model_learns_the_cohorts_atrophy(cohort):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    preset = tiny_preset(epochs=20)
    preset.model = with_input_channels(preset.model, 3)
    spec = ClipSpec.for_preset(preset)
    rows = usable_rows(cohort)
    number = {r.participant_id: int(r.participant_id[1:]) for r in rows}
    train = [r for r in rows if number[r.participant_id] < 6]
    validation = [r for r in rows if 6 <= number[r.participant_id] < 8]
    test = [r for r in rows if number[r.participant_id] >= 8]
    model, summary = train_static(preset, MRISliceDataset(train, spec, augment=False),
                                  MRISliceDataset(validation, spec), device="cpu")
    probabilities = static_probabilities(model, MRISliceDataset(test, spec))
    assert balanced_accuracy([r.label for r in test], probabilities) == 1.0
    assert 1 <= summary["selected_epoch"] <= 20


# ------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def cv_run(cohort, tmp_path_factory):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("cv") / "cv"
    run_cv(cohort, out, preset=tiny_preset(epochs=2), folds=3, progress=False, log=lambda m: None)
    return out


def test_cv_report_compares_the_dynamic_model_with_both_baselines_on_the_same_folds(cv_run):
    out = cv_run
    entries = {e["model"]: e for e in json.loads((out / "cv.json").read_text(encoding="utf-8"))["comparison"]}
    assert list(entries) == ["dynamic", "static", "classical"]
    for entry in entries.values():
        folds = entry["balanced_accuracy"]["folds"]
        assert len(folds) == 3 and all(0.0 <= v <= 1.0 for v in folds)
        assert entry["balanced_accuracy"]["mean"] == pytest.approx(np.mean(folds))
    # the cohort's atrophy sits in the hippocampal boxes: the classical reference finds it on every fold
    assert entries["classical"]["balanced_accuracy"]["mean"] >= 0.9
    assert entries["classical"]["gmacs_per_scan"] == 0.0
    dynamic_gmacs = float(next(r for r in read_tsv(out / "metrics.tsv") if r["metric"] == "mean_gmacs")["mean"])
    assert entries["dynamic"]["gmacs_per_scan"] == pytest.approx(dynamic_gmacs, rel=1e-4)
    preset = tiny_preset()
    static_gmacs = StaticSliceModel(with_input_channels(preset.model, 3)).gmacs()
    assert entries["static"]["gmacs_per_scan"] == pytest.approx(static_gmacs)

    for fold in read_folds(out / "splits"):  # same participant splits: each baseline tests exactly the fold's test set
        dynamic = {(p["participant_id"], p["session_id"]) for p in read_tsv(out / f"fold-{fold.index}" / "predictions.tsv")}
        for name in ("static", "classical"):
            tested = read_tsv(out / f"fold-{fold.index}" / "baselines" / f"{name}_predictions.tsv")
            assert {(p["participant_id"], p["session_id"]) for p in tested} == dynamic
            assert {p["participant_id"] for p in tested}.isdisjoint(fold.seen_in_training)
        assert (out / f"fold-{fold.index}" / "baselines" / "static.pt").exists()

    report = (out / "report.md").read_text(encoding="utf-8")
    section = report[report.index("## Dynamic vs static vs classical"):]
    assert "| Static 2.5D" in section and "| Classical" in section and "≈ 0" in section
    assert f"{entries['classical']['balanced_accuracy']['mean']:.3f} ±" in section
    assert "Static 2.5D" in (out / "report.html").read_text(encoding="utf-8")


def test_finished_baselines_are_read_back_not_rerun(cv_run, cohort):
    before = {p: p.stat().st_mtime_ns for p in cv_run.glob("fold-*/baselines/*")}
    run_cv(cohort, cv_run, preset=tiny_preset(epochs=2), folds=3, progress=False, log=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in cv_run.glob("fold-*/baselines/*")} == before


def test_report_without_baselines_says_so(cv_run, tmp_path):
    copy = tmp_path / "cv"
    shutil.copytree(cv_run, copy)
    shutil.rmtree(copy / "fold-1" / "baselines")  # a fold run with --no-baselines
    write_cv_report(copy)
    entries = json.loads((copy / "cv.json").read_text(encoding="utf-8"))["comparison"]
    assert [e["model"] for e in entries] == ["dynamic"]
    assert "reference models not run" in (copy / "report.md").read_text(encoding="utf-8")


def test_cli_cv_has_an_opt_out():
    parser = build_parser()
    assert parser.parse_args(["cv", "--data", "m.tsv", "--out", "o"]).no_baselines is False
    assert parser.parse_args(["cv", "--data", "m.tsv", "--out", "o", "--no-baselines"]).no_baselines is True
