"""Scan inputs without registration: BIDS, input discovery for `score`, one-line errors for bad scans, and the
coordinate mapping (core.geometry + datasets.mri.scan_record)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from adafocus.apps.scoring.scans import collect_scan_inputs, scan_id
from adafocus.core.geometry import focus_locations, map_box_corners
from adafocus.datasets.mri.adapters import build_manifest
from adafocus.datasets.mri.bids import build_bids_manifest, is_bids
from adafocus.datasets.mri.preprocess import refuse_too_small
from adafocus.datasets.mri.scan_record import ScanSliceRecord, format_boxes_3d
from adafocus.datasets.mri.slices import volume_to_clip
from adafocus.datasets.mri.volume import ScanError, Volume, load_volume, refuse_oversized

sys.path.insert(0, str(Path(__file__).parent))
from _mri_fixtures import blob_volume, write_dicom_series, write_nifti


def _bids(root: Path) -> Path:
    for sub, sessions in (("sub-01", ["ses-M00", "ses-M12"]), ("sub-02", [None]), ("sub-03", ["ses-M00"])):
        for ses in sessions:
            folder = root / sub / (ses or "") / "anat"
            name = f"{sub}_{ses}_T1w.nii.gz" if ses else f"{sub}_T1w.nii.gz"
            write_nifti(folder / name, blob_volume())
    write_nifti(root / "sub-01" / "ses-M00" / "anat" / "sub-01_ses-M00_run-2_T1w.nii.gz", blob_volume())
    (root / "participants.tsv").write_text("participant_id\tgroup\tage\tsex\nsub-01\tAD\t71\tF\nsub-02\tCN\t65\tm\n")
    return root


def test_bids_manifest_reads_sessions_diagnosis_column_and_records_exclusions(tmp_path):
    root = _bids(tmp_path / "bids")
    assert is_bids(root) and not is_bids(tmp_path / "missing")
    rows = build_manifest("bids", root, None, classes=("CN", "AD"), diagnosis_column="group")
    by_key = {(r.participant_id, r.session_id, r.source_path.name): r for r in rows}
    assert by_key[("sub-01", "ses-M00", "sub-01_ses-M00_T1w.nii.gz")].label == 1
    assert by_key[("sub-01", "ses-M12", "sub-01_ses-M12_T1w.nii.gz")].diagnosis == "AD"
    assert by_key[("sub-02", "ses-1", "sub-02_T1w.nii.gz")].label == 0 and by_key[("sub-02", "ses-1", "sub-02_T1w.nii.gz")].sex == "M"
    assert "not in participants.tsv" in by_key[("sub-03", "ses-M00", "sub-03_ses-M00_T1w.nii.gz")].status
    assert by_key[("sub-01", "ses-M00", "sub-01_ses-M00_run-2_T1w.nii.gz")].excluded  # one image per session
    with pytest.raises(ValueError, match="no column 'diagnosis'"):
        build_bids_manifest(root)


def test_score_inputs_from_files_folders_dicom_and_bids(tmp_path):
    write_nifti(tmp_path / "scans" / "a.nii.gz", blob_volume())
    (tmp_path / "scans" / "b.hdr").write_bytes(b"")
    (tmp_path / "scans" / "b.img").write_bytes(b"")
    series = write_dicom_series(tmp_path / "scans" / "dicom", blob_volume().astype(np.int16))
    keys = [s.key for s in collect_scan_inputs([str(tmp_path / "scans"), str(next(series.glob("*.dcm")))])]
    assert keys == [str(tmp_path / "scans" / "a.nii.gz"), str(tmp_path / "scans" / "b.hdr"), str(series)]
    bids = collect_scan_inputs([str(_bids(tmp_path / "bids"))])
    assert {s.participant_id for s in bids} == {"sub-01", "sub-02", "sub-03"}
    assert scan_id("/x/Doe_Jane.nii") != scan_id("/x/other.nii") and "Doe" not in scan_id("/x/Doe_Jane.nii")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no scans found"):
        collect_scan_inputs([str(tmp_path / "empty_dir")])


def test_bad_scans_fail_with_one_line_reasons(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4000, 4000, 4000))
    huge = tmp_path / "huge.nii"
    huge.write_bytes(header.binaryblock + b"\0" * 4)
    with pytest.raises(ScanError, match="claims 4000 x 4000 x 4000 voxels .* more than") as error:
        load_volume(huge)
    assert "\n" not in str(error.value)
    with pytest.raises(ScanError, match="more than the 1.0 GiB"):
        refuse_oversized((1024, 1024, 512), "x.nii", available=2**30)
    refuse_oversized((256, 256, 256), "x.nii", available=2**30)  # 64 MiB fits
    with pytest.raises(ScanError, match="too small to register"):
        refuse_too_small(Volume(np.ones((200, 200, 3), np.float32), np.eye(4)))
    refuse_too_small(Volume(np.ones((50, 60, 50), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])))
    series = write_dicom_series(tmp_path / "dicom", blob_volume().astype(np.int16))
    broken = sorted(series.glob("*.dcm"))[3]
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(ScanError, match=r"file slice_003.dcm \(4 of 10\) is truncated or not DICOM") as error:
        load_volume(series)
    assert "itk" not in str(error.value).lower()


def test_box_corners_through_an_affine_and_the_source_mapping():
    box = [[0.0, 0.0, 0.0], [2.0, 4.0, 6.0]]
    assert map_box_corners(box, np.diag([2.0, 1.0, 0.5, 1.0]).tolist()) == [[0, 0, 0], [4, 4, 3]]
    flip = [[-1, 0, 0, 10], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
    assert map_box_corners(box, flip) == [[8, 0, 0], [10, 4, 6]]

    volume = np.zeros((20, 24, 16), np.float32)
    _, info = volume_to_clip(volume, (2.0, 2.0, 2.0), axis="sagittal", num_slices=4, discard_border=0.0,
                                context=1, size=24)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-20, -24, -16]
    native = np.eye(4)
    native[:3, 3] = [5, 0, 0]
    record = ScanSliceRecord(info, affine.tolist(), native.tolist())
    steps = focus_locations([2, -1], [[0.0, 0.0, 1.0, 1.0], [0.1, 0.1, 0.2, 0.2]], record)
    assert len(steps) == 1 and steps[0]["slice"] == info.slice_indices[2]
    lower, upper = np.array(steps[0]["box_voxels"])
    assert lower[0] == info.slice_indices[2] - 0.5 and upper[1] == pytest.approx(23.5)  # the whole plane
    assert steps[0]["box_mm"][0] == pytest.approx((affine[:3, :3] @ lower + affine[:3, 3]).tolist())
    assert steps[0]["box_native_voxels"][0] == pytest.approx((lower + [5, 0, 0]).tolist())
    assert len(format_boxes_3d(steps, "box_mm").split()) == 6 and json.dumps(steps)
