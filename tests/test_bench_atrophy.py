"""bench atrophy: the patients' chosen slices inside the shape atrophy's band, counted from a CV folder."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from _cv_fixtures import write_preprocessed_cohort
from adafocus.apps.bench.atrophy import FOLDS, shape_cohort
from adafocus.apps.runs.cv import band_statistics
from adafocus.datasets.mri.cohort import slices_in_band
from adafocus.datasets.mri.dataset import ClipSpec
from adafocus.datasets.mri.slices import select_slice_indices
from adafocus.reports.cv_report import CV_JSON, PREDICTIONS_FILE, fold_dir


def test_band_statistics_counts_the_patients_slices_in_the_shape_band(tmp_path):
    manifest = write_preprocessed_cohort(tmp_path / "cohort", n_participants=2, repeats=0)
    cohort = shape_cohort(28, 4)
    spec = ClipSpec()
    cv_dir = tmp_path / "cv"
    cv_dir.mkdir()
    (cv_dir / CV_JSON).write_text(json.dumps({"clip": spec.to_dict()}), encoding="utf-8")
    affine = nib.load(str(tmp_path / "cohort" / "sub-P000" / "ses-M000" / "t1.nii.gz")).affine
    shape = nib.load(str(tmp_path / "cohort" / "sub-P000" / "ses-M000" / "t1.nii.gz")).shape
    candidates = select_slice_indices(shape[0], spec.num_slices, spec.discard_border)
    inside = np.asarray(candidates)[slices_in_band(np.asarray(candidates), affine, cohort.band_region)]
    outside = np.asarray(candidates)[~slices_in_band(np.asarray(candidates), affine, cohort.band_region)]
    assert len(inside) and len(outside)
    header = "participant_id\tlabel\tslices\n"
    for i in range(FOLDS):  # per fold: a patient with 3 of 4 slices in the band, a control with none
        patient = ";".join(str(s) for s in [*inside[:3], outside[0]])
        fold_dir(cv_dir, i).mkdir(parents=True)
        (fold_dir(cv_dir, i) / PREDICTIONS_FILE).write_text(
            header + f"P{i}a\t1\t{patient}\nP{i}b\t0\t{';'.join(str(s) for s in outside[:4])}\n", encoding="utf-8")
    stats = band_statistics(cv_dir, manifest, cohort, FOLDS)
    assert stats["selected_in_band_patients"] == 0.75
    assert stats["selected_in_band_all"] == 0.375
    assert stats["candidates_in_band"] == len(inside) / len(candidates)
    low, high = cohort.band_region.band_mm
    assert low == 0.0 and 25 < high < 40
