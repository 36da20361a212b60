"""Reading each archive's files as they ship: Analyze orient codes (FreeSurfer's analyzeRead), OASIS-1 byte order
and voxel order, SPM .mat precedence, originator; NIfTI qform/sform disagreement; DICOM gantry tilt and mosaic."""
from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from _mri_fixtures import blob_volume, write_analyze, write_dicom_series, write_nifti, write_oasis
from adafocus.datasets.mri.analyze import (
    OASIS_RAW_SHAPE,
    OASIS_RAW_VOXEL_MM,
    ORIENT_AXES,
    orient_affine,
    read_analyze,
)
from adafocus.datasets.mri.analyze import (
    write_analyze as write_analyze_pair,
)
from adafocus.datasets.mri.preprocess import OrientationRAS
from adafocus.datasets.mri.volume import ScanError, dicom_series_problem, load_volume

# FreeSurfer analyzeRead (utils/mriio.cpp): the RAS direction of voxel axes i, j, k for each hist.orient code
FREESURFER_TABLE = {0: ((-1, 0, 0), (0, 1, 0), (0, 0, 1)), 1: ((-1, 0, 0), (0, 0, 1), (0, 1, 0)),
                    2: ((0, 1, 0), (0, 0, 1), (-1, 0, 0)), 3: ((-1, 0, 0), (0, -1, 0), (0, 0, 1)),
                    4: ((-1, 0, 0), (0, 0, -1), (0, 1, 0)), 5: ((0, 1, 0), (0, 0, -1), (-1, 0, 0))}


def asymmetric_ras(shape=(10, 12, 14)) -> np.ndarray:
    """A RAS volume whose every axis direction is recognisable: a ramp in x, y and z plus a bright corner at
    the subject's left-posterior-inferior (low x, low y, low z)."""
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    volume = 100 + 3 * grid[0] + 5 * grid[1] + 7 * grid[2]
    volume[:2, :2, :2] = 2000
    return volume.astype(np.int16)


@pytest.mark.parametrize("code", sorted(FREESURFER_TABLE))
def test_orient_codes_follow_freesurfers_table(code, tmp_path):
    shape, voxel = (6, 7, 8), (1.5, 2.0, 2.5)
    hdr = write_analyze_pair(tmp_path / "a.hdr", blob_volume(shape), voxel, orient=code, endianness="<")
    scan = read_analyze(hdr)
    directions = scan.affine[:3, :3] / np.asarray(voxel)
    np.testing.assert_allclose(directions.T, np.array(FREESURFER_TABLE[code], dtype=float))
    centre = scan.affine @ np.r_[np.asarray(shape) / 2.0, 1.0]
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # no originator: world 0 at the FOV centre
    assert ORIENT_AXES[code] == "".join(nib.aff2axcodes(scan.affine)) and scan.geometry.startswith(f"orient {code}")


def test_oasis_subj111_affine_is_clinicas_hard_coded_one():
    clinica = np.array([[0, 0, -1, 80], [1, 0, 0, -128], [0, 1, 0, -128], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_array_equal(orient_affine(2, (256, 256, 160), (1.0, 1.0, 1.0)), clinica)


def test_oasis_file_is_big_endian_sagittal_and_reads_back_to_the_same_anatomy(tmp_path):
    ras = asymmetric_ras()
    hdr = write_oasis(tmp_path / "OAS1_0001_MR1_mpr-1_anon.hdr", ras, (1.25, 1.0, 1.0))
    raw = hdr.read_bytes()
    assert raw[:4] == (348).to_bytes(4, "big")  # sizeof_hdr, big-endian
    assert raw[252] == 2  # hist.orient: sagittal unflipped
    img = (tmp_path / "OAS1_0001_MR1_mpr-1_anon.img").read_bytes()
    voxels = np.frombuffer(img, dtype=">i2").reshape((12, 14, 10), order="F")  # stored A, S, L
    assert voxels[0, 0, -1] == 2000 and voxels[-1, -1, 0] != 2000  # posterior-inferior corner, on the left
    volume = load_volume(hdr)
    assert volume.shape == (12, 14, 10) and volume.spacing == (1.0, 1.0, 1.25)
    assert nib.aff2axcodes(volume.affine) == ("A", "S", "L") and volume.native["warnings"] == []
    ras_again = OrientationRAS()(volume)
    np.testing.assert_array_equal(ras_again.array, ras)
    left = ras_again.affine @ np.array([0, 0, 0, 1.0])
    assert left[0] < 0 and left[1] < 0 and left[2] < 0  # the bright corner is left, posterior, inferior


def test_nibabel_alone_would_lay_an_oasis_scan_on_its_side(tmp_path):
    hdr = write_oasis(tmp_path / "a.hdr", asymmetric_ras(), (1.0, 1.0, 1.0))
    assert nib.aff2axcodes(nib.load(str(hdr)).affine) == ("L", "A", "S")  # orient ignored
    assert nib.aff2axcodes(load_volume(hdr).affine) == ("A", "S", "L")


def test_true_oasis_raw_dimensions_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    ras_shape = (OASIS_RAW_SHAPE[2], OASIS_RAW_SHAPE[0], OASIS_RAW_SHAPE[1])  # 128 x 256 x 256 (x, y, z)
    ras = rng.integers(0, 1000, size=ras_shape).astype(np.int16)
    hdr = write_oasis(tmp_path / "OAS1_0001_MR1_mpr-1_anon.hdr", ras, (1.25, 1.0, 1.0))
    assert (tmp_path / "OAS1_0001_MR1_mpr-1_anon.img").stat().st_size == 2 * 256 * 256 * 128
    volume = load_volume(hdr)
    assert volume.shape == OASIS_RAW_SHAPE and volume.spacing == OASIS_RAW_VOXEL_MM
    np.testing.assert_array_equal(OrientationRAS()(volume).array, ras)


def test_spm_mat_file_takes_precedence_and_originator_sets_the_origin(tmp_path):
    mat = np.array([[-2.0, 0, 0, 50], [0, 2.0, 0, -60], [0, 0, 3.0, -40], [0, 0, 0, 1]])  # 1-based voxels
    hdr = write_analyze_pair(tmp_path / "m.hdr", blob_volume(), (9.0, 9.0, 9.0), orient=2, mat=mat)
    scan = read_analyze(hdr)
    np.testing.assert_allclose(scan.affine @ [0, 0, 0, 1], mat @ [1, 1, 1, 1])  # 0-based voxel 0 = 1-based 1
    assert "m.mat" in scan.geometry
    hdr = write_analyze_pair(tmp_path / "o.hdr", blob_volume(), (1.0, 1.0, 1.0), orient=2, originator=(4, 5, 6))
    np.testing.assert_allclose(read_analyze(hdr).affine @ [3, 4, 5, 1], [0, 0, 0, 1])


def test_unknown_and_invalid_orient_codes(tmp_path, caplog):
    hdr = write_analyze_pair(tmp_path / "u.hdr", blob_volume(), (1.0, 1.0, 1.0), orient=255)
    with caplog.at_level(logging.WARNING):
        volume = load_volume(hdr)
    assert nib.aff2axcodes(volume.affine) == ("L", "P", "S") and "unknown" in volume.native["warnings"][0]
    bad = write_analyze_pair(tmp_path / "b.hdr", blob_volume(), (1.0, 1.0, 1.0), orient=7)
    with pytest.raises(ScanError, match="orient = 7"):
        load_volume(bad)
    (tmp_path / "u.img").unlink()
    with pytest.raises(ScanError, match="u.img of this Analyze pair is missing"):
        load_volume(hdr)


def test_little_endian_nibabel_analyze_still_reads(tmp_path):
    data = blob_volume((6, 7, 5))
    volume = load_volume(write_analyze(tmp_path / "n.hdr", data, (1.0, 1.5, 2.0)))
    np.testing.assert_array_equal(volume.array, data)
    assert nib.aff2axcodes(volume.affine) == ("L", "A", "S")


def test_nifti_qform_sform_disagreement_is_recorded_and_sform_used(tmp_path):
    data = blob_volume()
    image = nib.Nifti1Image(data, np.eye(4))
    sform = np.diag([1.0, 1.0, 1.0, 1.0])
    sform[:3, 3] = (-5.0, 0.0, 0.0)
    image.set_sform(sform, code="scanner")
    image.set_qform(np.eye(4), code="scanner")
    nib.save(image, str(tmp_path / "both.nii.gz"))
    volume = load_volume(tmp_path / "both.nii.gz")
    np.testing.assert_allclose(volume.affine, sform)
    assert "qform and sform disagree by up to 5.0 mm" in volume.native["warnings"][0]
    image.set_qform(sform, code="scanner")
    nib.save(image, str(tmp_path / "agree.nii.gz"))
    assert load_volume(tmp_path / "agree.nii.gz").native["warnings"] == []
    image.set_sform(None, code=0)
    image.set_qform(None, code=0)
    nib.save(image, str(tmp_path / "none.nii.gz"))
    assert "neither a qform nor an sform" in load_volume(tmp_path / "none.nii.gz").native["warnings"][0]
    assert load_volume(write_nifti(tmp_path / "plain.nii.gz", data)).native["warnings"] == []


def _headers(n: int, tilt_mm: float = 0.0, image_type: str = "ORIGINAL\\PRIMARY\\M\\ND") -> list[dict[str, str]]:
    return [{"0008|0008": image_type, "0020|0037": "1\\0\\0\\0\\1\\0",
             "0020|0032": f"0\\{k * tilt_mm:.3f}\\{2.0 * k:.3f}"} for k in range(n)]


def test_dicom_geometry_problems_are_named():
    assert dicom_series_problem(_headers(5)) is None
    assert "gantry tilt of 26.6 degrees" in dicom_series_problem(_headers(5, tilt_mm=1.0))
    assert "mosaic" in dicom_series_problem(_headers(1, image_type="ORIGINAL\\PRIMARY\\M\\ND\\MOSAIC")).lower()
    mixed = _headers(3)
    mixed[1]["0020|0037"] = "0\\1\\0\\0\\0\\-1"
    assert "different orientations" in dicom_series_problem(mixed)


def test_a_gantry_tilted_dicom_series_becomes_a_reason(tmp_path):
    folder = write_dicom_series(tmp_path / "tilted", blob_volume((8, 8, 6)), spacing=(1.0, 1.0, 2.0))
    for k, name in enumerate(sorted(folder.glob("*.dcm"))):  # shift each slice 1 mm along y: 26.6 degrees
        image = sitk.ReadImage(str(name))
        for key in image.GetMetaDataKeys():
            image.SetMetaData(key, image.GetMetaData(key))
        image.SetMetaData("0020|0032", f"0\\{float(k):.4f}\\{2.0 * k:.4f}")
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(str(name))
        writer.Execute(image)
    with pytest.raises(ScanError, match="gantry tilt of 26.6 degrees"):
        load_volume(folder)
