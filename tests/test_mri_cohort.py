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
    ShapeAtrophy,
    apply_atrophy,
    apply_shape_atrophy,
    session_image_path,
    slices_in_band,
    world_grid,
    write_oasis_cohort,
)
from adafocus.datasets.mri.preprocess import OrientationRAS, mni_template
from adafocus.datasets.mri.volume import Volume, load_volume, sitk_to_volume
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


def _ventricle_and_hippocampus_masks(template):
    """Ground-truth masks on the template grid: its lateral ventricles (dark, near the midline, inside the
    brain) and an ellipsoid over each hippocampus."""
    from scipy import ndimage

    world = world_grid(template)
    array = template.array / template.array.max()
    box = ((np.abs(world[..., 0]) < 30) & (world[..., 1] > -45) & (world[..., 1] < 35)
           & (world[..., 2] > -5) & (world[..., 2] < 35))
    inside = ndimage.binary_erosion(ndimage.binary_fill_holes(array > 0.2), iterations=5)
    ventricles = (array < 0.4) & box & inside
    hippocampi = (((np.abs(world[..., 0]) - 28) / 5) ** 2 + ((world[..., 1] + 20) / 15) ** 2
                  + ((world[..., 2] + 14) / 6) ** 2) <= 1
    return ventricles, hippocampi, box


def test_shape_atrophy_shrinks_the_hippocampi_and_widens_the_ventricles():
    template = sitk_to_volume(mni_template(2.0))
    ventricles, hippocampi, box = _ventricle_and_hippocampus_masks(template)
    atrophy = ShapeAtrophy()

    def warped_volume(mask, severity):  # the mask moved by the same warp as the anatomy: the structure's volume
        return apply_shape_atrophy(Volume(mask.astype(np.float32), template.affine), atrophy,
                                   severity).array.sum() / mask.sum()

    volumes = {s: (warped_volume(hippocampi, s), warped_volume(ventricles, s)) for s in (0.2, 1.0)}
    assert 0.65 < volumes[1.0][0] < 0.85 and 1.6 < volumes[1.0][1] < 2.4  # docstring: ~0.75 and ~2x
    assert volumes[1.0][0] < volumes[0.2][0] < 1.0 < volumes[0.2][1] < volumes[1.0][1]
    anatomy = apply_shape_atrophy(template, atrophy, 1.0).array
    dark_template = ((template.array < 0.4 * template.array.max()) & box).sum()
    assert ((anatomy < 0.4 * template.array.max()) & box).sum() > 1.5 * dark_template  # more CSF around the ventricles
    world = world_grid(template)
    moved = np.abs(anatomy - template.array) > 0.05 * template.array.max()
    low, high = atrophy.band_mm
    assert np.abs(world[moved][:, 0]).max() <= high + 6  # the change stays in its sagittal band
    assert low == 0.0 and 25 < high < 40


def test_written_shape_cohort_patients_have_larger_ventricles(tmp_path):
    config = dataclasses.replace(CohortConfig(n_participants=4, n_repeat_scans=0, spacing_mm=2.0,
                                              atrophy_kind="shape"), **STILL)
    write_oasis_cohort(tmp_path, config)
    truth = read_tsv(tmp_path / TRUTH_NAME)
    severity = {t["participant_id"]: float(t["severity"]) for t in truth}
    assert all((0.6 <= severity[t["participant_id"]] <= 1.0) == (t["group"] == "AD") for t in truth)
    template = sitk_to_volume(mni_template(2.0))
    _, _, box = _ventricle_and_hippocampus_masks(template)
    dark = {}
    for t in truth:
        scan = OrientationRAS()(load_volume(session_image_path(tmp_path, t["participant_id"], "MR1"))).array
        dark[t["participant_id"]] = ((scan < 0.4 * scan.max()) & box).sum()
    patients = [dark[p] for p in dark if severity[p] >= 0.6]
    controls = [dark[p] for p in dark if severity[p] < 0.6]
    assert min(patients) > 1.2 * max(controls), (patients, controls)


def test_cohort_config_refuses_an_unknown_atrophy_kind():
    import pytest

    with pytest.raises(ValueError, match="atrophy_kind"):
        CohortConfig(atrophy_kind="shrink")
