"""The demo cohort generator: OASIS-1 layout the adapter reads, and atrophy exactly where it says."""
from __future__ import annotations

import csv
import dataclasses

import numpy as np
from adafocus.datasets.mri.adapters import build_oasis_manifest
from adafocus.datasets.mri.cohort import (
    TRUTH_NAME,
    AtrophyRegion,
    CohortConfig,
    apply_atrophy,
    session_image_path,
    slices_in_band,
    world_grid,
    write_oasis_cohort,
)
from adafocus.datasets.mri.preprocess import OrientationRAS, mni_template
from adafocus.datasets.mri.volume import load_volume, sitk_to_volume
from adafocus.reports.tables import read_tsv

STILL = {"rotation_deg": 0.0, "scale": 0.0, "shift_mm": 0.0, "elastic_mm": 0.0, "bias_strength": 0.0, "noise": 0.0}


def test_apply_atrophy_darkens_only_inside_the_region():
    template = sitk_to_volume(mni_template(4.0))
    region = AtrophyRegion()
    atrophied = apply_atrophy(template, region, 0.6)
    changed = atrophied.array < template.array - 1e-3
    world = world_grid(template)[changed]
    low, high = region.band_mm
    margin = 4.0  # the soft edge
    assert changed.sum() > 20
    assert np.all((np.abs(world[:, 0]) >= low - margin) & (np.abs(world[:, 0]) <= high + margin))
    assert np.all(np.abs(world[:, 1] - region.centre_mm[1]) <= region.radii_mm[1] + margin)
    assert (world[:, 0] > 0).any() and (world[:, 0] < 0).any()  # both hemispheres
    core = region.weight(world_grid(template)) == 1.0
    tissue = core & (template.array > 0.2 * template.array.max())
    np.testing.assert_allclose(atrophied.array[tissue], 0.4 * template.array[tissue], rtol=1e-5)


def test_written_cohort_has_oasis_layout_and_atrophy_in_the_band(tmp_path):
    config = dataclasses.replace(CohortConfig(n_participants=4, n_repeat_scans=1, spacing_mm=4.0), **STILL)
    csv_path = write_oasis_cohort(tmp_path, config)
    truth = read_tsv(tmp_path / TRUTH_NAME)
    rows = build_oasis_manifest(tmp_path, csv_path)
    assert [(r.participant_id, r.session_id) for r in rows] == \
        sorted((t["participant_id"], t["session_id"]) for t in truth)
    assert sum(r.session_id == "ses-MR2" for r in rows) == 1 and all(r.status == "pending" for r in rows)
    group = {t["participant_id"]: t["group"] for t in truth}
    assert all(r.diagnosis == group[r.participant_id] for r in rows)  # MR2 inherits the clinical fields
    with csv_path.open() as handle:
        mr2 = [rec for rec in csv.DictReader(handle) if rec["ID"].endswith("_MR2")]
    assert mr2 and mr2[0]["CDR"] == ""

    template = sitk_to_volume(mni_template(4.0))
    patient = next(t["participant_id"] for t in truth if t["group"] == "AD")
    control = next(t["participant_id"] for t in truth if t["group"] == "CN")
    scans = {p: OrientationRAS()(load_volume(session_image_path(tmp_path, p, "MR1"))).array
             for p in (patient, control)}
    difference = scans[control] - scans[patient]  # same anatomy and pose: only the atrophy differs
    darker = difference > 0.05 * scans[control].max()
    x_of_voxel = template.affine[0, 0] * np.nonzero(darker)[0] + template.affine[0, 3]
    low, high = config.atrophy.band_mm
    assert darker.sum() > 20
    assert np.all((np.abs(x_of_voxel) >= low - 4) & (np.abs(x_of_voxel) <= high + 4))


def test_slices_in_band_uses_the_mni_x_coordinate():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[0, 3] = -84.0  # voxel i is at x = 2 i - 84
    inside = slices_in_band(np.array([28, 14, 56, 70, 42]), affine, AtrophyRegion())
    assert inside.tolist() == [True, False, True, False, False]  # x = -28, -56, 28, 56, 0
