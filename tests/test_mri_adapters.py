"""ADNI / OASIS-1 / PPMI adapters and the manifest file, on tiny fixture trees in the official layouts."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from _mri_fixtures import (
    LONI_COLUMNS,
    OASIS_COLUMNS,
    PATIENT_NAME,
    blob_volume,
    loni_image_folder,
    loni_record,
    write_csv,
    write_dicom_series,
    write_nifti,
    write_oasis,
)
from adafocus.datasets.mri.adapters import (
    build_adni_manifest,
    build_manifest,
    build_oasis_manifest,
    build_ppmi_manifest,
    session_from_date,
    session_from_visit,
)
from adafocus.datasets.mri.manifest import (
    EXCLUDED_LABEL,
    MANIFEST_COLUMNS,
    ManifestRow,
    carry_over_finished,
    read_manifest,
    write_manifest,
)


def _by_key(rows: list[ManifestRow]) -> dict[tuple[str, str], ManifestRow]:
    return {(r.participant_id, r.session_id): r for r in rows if not r.status.startswith("error: duplicate")}


# --------------------------------------------------------------------------------------------------- ADNI
@pytest.fixture()
def adni_tree(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "ADNI"
    nii = "ADNI_{s}_MR_MPRAGE_br_raw_{d}_S1_{i}.nii"
    specs = [  # subject, description, date, image id, data written as
        ("941_S_1194", "MPRAGE", "2007-09-19", "I97327", "nifti"),
        ("941_S_1194", "MPRAGE_Repeat", "2007-09-19", "I97328", "nifti"),
        ("941_S_1194", "MPRAGE", "2008-09-22", "I120000", "nifti"),
        ("002_S_0619", "MPRAGE", "2006-06-01", "I11111", "dicom"),
        ("005_S_0221", "MPRAGE", "2006-02-10", "I22222", "nifti"),
        ("005_S_0222", "MPRAGE", "2006-02-11", "I33333", "nifti"),
    ]
    for k, (subject, description, date, image_id, kind) in enumerate(specs):
        folder = loni_image_folder(raw, subject, description, date, image_id)
        if kind == "dicom":
            write_dicom_series(folder, blob_volume(seed=k), file_stem=f"ADNI_{subject}_MR_MPRAGE_{image_id}")
        else:
            write_nifti(
                folder / nii.format(s=subject, d=date.replace("-", ""), i=image_id), blob_volume(seed=k)
            )
    csv_path = write_csv(
        tmp_path / "ADNI1_collection.csv",
        LONI_COLUMNS,
        [
            loni_record("I97327", "941_S_1194", "CN", "sc", "9/19/2007", sex="M", age=75),
            loni_record("I97328", "941_S_1194", "CN", "sc", "9/19/2007", sex="M", age=75),
            loni_record("I120000", "941_S_1194", "CN", "m12", "9/22/2008", sex="M", age=76),
            loni_record(
                "11111", "002_S_0619", "AD", "bl", "6/01/2006", sex="Female", age=""
            ),  # id without "I"
            loni_record("I22222", "005_S_0221", "MCI", "bl", "2/10/2006"),
            loni_record("I99999", "123_S_4567", "AD", "bl", "1/01/2010"),  # no image on disk
        ],
    )
    return raw, csv_path


def test_adni_manifest_labels_sessions_and_exclusions(adni_tree, caplog):
    raw, csv_path = adni_tree
    with caplog.at_level(logging.INFO, logger="adafocus.datasets.mri"):
        rows = build_adni_manifest(raw, csv_path)
    assert len(rows) == 6  # every image found on disk is a row, none dropped
    assert rows == sorted(rows, key=lambda r: (r.participant_id, r.session_id, str(r.source_path)))
    rows_by_key = _by_key(rows)
    cn_sc = rows_by_key[("941_S_1194", "ses-SC")]
    assert (cn_sc.label, cn_sc.diagnosis, cn_sc.sex, cn_sc.age, cn_sc.status) == (
        0,
        "CN",
        "M",
        75.0,
        "pending",
    )
    assert cn_sc.source_path.name.endswith("_I97327.nii")
    assert rows_by_key[("941_S_1194", "ses-M12")].label == 0
    ad = rows_by_key[("002_S_0619", "ses-BL")]
    assert (ad.label, ad.diagnosis, ad.sex, ad.age) == (1, "AD", "F", None)
    assert ad.source_path.is_dir() and ad.source_path.name == "I11111"  # DICOM series -> its folder
    duplicate = [r for r in rows if r.status.startswith("error: duplicate")]
    assert len(duplicate) == 1 and duplicate[0].label == EXCLUDED_LABEL
    assert "I97328" in str(duplicate[0].source_path) and "I97327" in duplicate[0].status
    mci = rows_by_key[("005_S_0221", "ses-BL")]
    assert mci.label == EXCLUDED_LABEL and "'MCI' not in classes" in mci.status and mci.diagnosis == "MCI"
    orphan = next(r for r in rows if r.participant_id == "005_S_0222")
    assert (
        orphan.excluded and "no row for image I33333" in orphan.status and orphan.session_id == "ses-20060211"
    )
    assert "1 metadata rows have no image" in caplog.text
    assert PATIENT_NAME.split("^")[0] not in caplog.text


def test_adni_classes_option_changes_labels(adni_tree):
    raw, csv_path = adni_tree
    rows = _by_key(build_adni_manifest(raw, csv_path, classes=("CN", "MCI", "AD")))
    assert rows[("005_S_0221", "ses-BL")].label == 1
    assert rows[("002_S_0619", "ses-BL")].label == 2
    assert rows[("941_S_1194", "ses-SC")].label == 0
    with pytest.raises(ValueError, match="at least two distinct"):
        build_adni_manifest(raw, csv_path, classes=("AD",))


def test_loni_csv_missing_columns_is_a_clear_error(adni_tree, tmp_path):
    raw, _ = adni_tree
    bad = write_csv(tmp_path / "bad.csv", ["Image ID", "Subject"], [{"Image ID": "I1", "Subject": "x"}])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['Image Data ID', 'Group'\]"):
        build_adni_manifest(raw, bad)
    with pytest.raises(ValueError, match="unknown dataset"):
        build_manifest("aibl", raw, bad)


def test_session_naming_rules():
    assert session_from_visit("m06") == "ses-M06"
    assert session_from_visit("V04") == "ses-V04"
    assert session_from_visit(" ") is None
    assert session_from_date("9/19/2007") == "ses-20070919"
    assert session_from_date("2007-09-19_10_36_57.0") == "ses-20070919"
    assert session_from_date("yesterday") is None


# -------------------------------------------------------------------------------------------------- OASIS
@pytest.fixture()
def oasis_tree(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "oasis"
    s1 = raw / "disc1" / "OAS1_0001_MR1"
    write_oasis(s1 / "PROCESSED/MPRAGE/SUBJ_111/OAS1_0001_MR1_mpr_n4_anon_sbj_111.hdr", blob_volume(seed=1))
    write_oasis(s1 / "RAW/OAS1_0001_MR1_mpr-1_anon.hdr", blob_volume(seed=2), (1.25, 1.0, 1.0))
    write_oasis(raw / "disc1/OAS1_0002_MR1/RAW/OAS1_0002_MR1_mpr-1_anon.hdr", blob_volume(seed=3), (1.25, 1, 1))
    write_oasis(raw / "disc1/OAS1_0002_MR2/RAW/OAS1_0002_MR2_mpr-1_anon.hdr", blob_volume(seed=4), (1.25, 1, 1))
    write_oasis(raw / "disc2/OAS1_0003_MR1/RAW/OAS1_0003_MR1_mpr-1_anon.hdr", blob_volume(seed=5), (1.25, 1, 1))
    (raw / "disc2/OAS1_0004_MR1/RAW").mkdir(parents=True)  # session folder without an image
    csv_path = write_csv(
        tmp_path / "oasis_cross-sectional.csv",
        OASIS_COLUMNS,
        [
            {"ID": "OAS1_0001_MR1", "M/F": "F", "Hand": "R", "Age": 74, "MMSE": 29, "CDR": 0},
            {"ID": "OAS1_0002_MR1", "M/F": "M", "Hand": "R", "Age": 81, "MMSE": 24, "CDR": 0.5},
            {"ID": "OAS1_0003_MR1", "M/F": "F", "Hand": "R", "Age": 21},  # young: no CDR
            {"ID": "OAS1_0004_MR1", "M/F": "F", "Hand": "R", "Age": 88, "CDR": 1},
            {"ID": "OAS1_0005_MR1", "M/F": "F", "Hand": "R", "Age": 60, "CDR": 0},  # no folder on disk
            {"ID": "OAS1_0002_MR2", "Delay": 30},  # reliability re-scan: clinical fields blank
        ],
    )
    return raw, csv_path


def test_oasis_manifest_image_rule_repeat_scan_and_cdr(oasis_tree):
    raw, csv_path = oasis_tree
    rows = _by_key(build_oasis_manifest(raw, csv_path))
    assert set(rows) == {
        ("OAS1_0001", "ses-MR1"),
        ("OAS1_0002", "ses-MR1"),
        ("OAS1_0002", "ses-MR2"),
        ("OAS1_0003", "ses-MR1"),
        ("OAS1_0004", "ses-MR1"),
    }
    first = rows[("OAS1_0001", "ses-MR1")]
    assert (first.label, first.diagnosis, first.sex, first.age) == (0, "CN", "F", 74.0)
    assert first.source_path.parent.name == "SUBJ_111"  # processed image preferred over RAW
    ad = rows[("OAS1_0002", "ses-MR1")]
    assert (ad.label, ad.diagnosis) == (1, "AD") and ad.source_path.parent.name == "RAW"
    repeat = rows[("OAS1_0002", "ses-MR2")]
    assert (repeat.label, repeat.diagnosis, repeat.sex, repeat.age) == (1, "AD", "M", 81.0)
    assert repeat.source_path.name == "OAS1_0002_MR2_mpr-1_anon.hdr"
    young = rows[("OAS1_0003", "ses-MR1")]
    assert young.excluded and young.status == "error: missing CDR"
    empty = rows[("OAS1_0004", "ses-MR1")]
    assert empty.excluded and "no SUBJ_111 or RAW" in empty.status and empty.source_path is None


def test_oasis_cdr_threshold_and_class_validation(oasis_tree):
    raw, csv_path = oasis_tree
    rows = _by_key(build_oasis_manifest(raw, csv_path, cdr_threshold=1.0))
    assert rows[("OAS1_0002", "ses-MR1")].diagnosis == "CN" and rows[("OAS1_0002", "ses-MR1")].label == 0
    with pytest.raises(ValueError, match="derived from CDR"):
        build_oasis_manifest(raw, csv_path, classes=("CN", "MCI"))


# --------------------------------------------------------------------------------------------------- PPMI
@pytest.fixture()
def ppmi_tree(tmp_path: Path) -> tuple[Path, Path]:
    raw = tmp_path / "PPMI"
    write_nifti(
        loni_image_folder(raw, "3001", "MPRAGE_GRAPPA", "2011-01-05", "I300001") / "PPMI_3001_MR_I300001.nii",
        blob_volume(seed=1),
    )
    write_dicom_series(
        loni_image_folder(raw, "3002", "SAG_3D_MPRAGE", "2011-02-07", "I300002"), blob_volume(seed=2)
    )
    write_nifti(
        loni_image_folder(raw, "3003", "MPRAGE_GRAPPA", "2012-03-09", "I300003") / "PPMI_3003_MR_I300003.nii",
        blob_volume(seed=3),
    )
    csv_path = write_csv(
        tmp_path / "PPMI_collection.csv",
        LONI_COLUMNS,
        [
            loni_record("I300001", "3001", "PD", "BL", "1/05/2011", sex="M", age=64),
            loni_record("I300002", "3002", "Control", "SC", "2/07/2011", sex="F", age=59),
            loni_record("I300003", "3003", "Prodromal", "V04", "3/09/2012", sex="M", age=70),
        ],
    )
    return raw, csv_path


def test_ppmi_manifest_default_and_custom_classes(ppmi_tree):
    raw, csv_path = ppmi_tree
    rows = _by_key(build_ppmi_manifest(raw, csv_path))
    assert (rows[("3001", "ses-BL")].label, rows[("3001", "ses-BL")].diagnosis) == (1, "PD")
    control = rows[("3002", "ses-SC")]
    assert control.label == 0 and control.source_path.is_dir() and control.sex == "F"
    assert rows[("3003", "ses-V04")].excluded
    custom = _by_key(build_manifest("ppmi", raw, csv_path, classes=("Control", "Prodromal")))
    assert custom[("3003", "ses-V04")].label == 1
    assert custom[("3001", "ses-BL")].excluded and "'PD' not in classes" in custom[("3001", "ses-BL")].status


# ----------------------------------------------------------------------------------------------- manifest
def test_manifest_round_trip_is_typed_atomic_and_relative(tmp_path):
    cache = tmp_path / "cache"
    outside = tmp_path / "raw" / "scan.nii.gz"
    rows = [
        ManifestRow(
            "941_S_1194", "ses-M12", 1, "AD", 76.5, "M", outside, cache / "sub-941S1194" / "x.nii.gz", "ok"
        ),
        ManifestRow("OAS1_0003", "ses-MR1", EXCLUDED_LABEL, "", None, "", None, None, "error: missing CDR"),
    ]
    path = write_manifest(rows, cache / "manifest.tsv")
    assert read_manifest(path) == rows
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0].split("\t") == list(MANIFEST_COLUMNS)
    assert "\tsub-941S1194/x.nii.gz\t" in lines[1]  # inside the cache -> relative, so the cache can move
    assert str(outside) in lines[1]
    assert [p.name for p in cache.iterdir()] == ["manifest.tsv"]  # no temp file left behind
    (tmp_path / "bad.tsv").write_text("participant_id\tlabel\nx\t1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="missing columns"):
        read_manifest(tmp_path / "bad.tsv")


def test_carry_over_keeps_only_finished_scans(tmp_path):
    src = tmp_path / "a.nii"
    fresh = [
        ManifestRow("p1", "ses-BL", 0, "CN", 70.0, "F", src),
        ManifestRow("p2", "ses-BL", 1, "AD", 71.0, "M", src),
    ]
    previous = [
        fresh[0].with_status("ok", tmp_path / "out1.nii.gz"),
        fresh[1].with_status("error: load: broken"),
    ]
    carried = carry_over_finished(fresh, previous)
    assert carried[0].status == "ok" and carried[0].preprocessed_path == tmp_path / "out1.nii.gz"
    assert carried[1].status == "pending" and carried[1].preprocessed_path is None


# ------------------------------------------------------------------------------------- no silent drops
def test_bids_sessions_without_t1w_and_listed_participants_without_folders_get_rows(tmp_path):
    root = tmp_path / "bids"
    write_nifti(root / "sub-01/ses-M000/anat/sub-01_ses-M000_T1w.nii.gz", blob_volume())
    write_nifti(root / "sub-01/ses-M000/anat/sub-01_ses-M000_run-2_T1w.nii.gz", blob_volume(seed=1))
    write_nifti(root / "sub-01/ses-M012/anat/sub-01_ses-M012_FLAIR.nii.gz", blob_volume())  # no T1w
    (root / "sub-01/ses-M024").mkdir(parents=True)  # no anat/ at all
    (root / "participants.tsv").write_text("participant_id\tdiagnosis\tage\nsub-01\tAD\t71\nsub-09\tCN\t60\n")
    rows = {(r.participant_id, r.session_id, r.source_path.name if r.source_path else ""): r
            for r in build_manifest("bids", root, None)}
    assert set(rows) == {("sub-01", "ses-M000", "sub-01_ses-M000_T1w.nii.gz"),
                         ("sub-01", "ses-M000", "sub-01_ses-M000_run-2_T1w.nii.gz"),
                         ("sub-01", "ses-M012", ""), ("sub-01", "ses-M024", ""), ("sub-09", "", "")}
    assert rows[("sub-01", "ses-M000", "sub-01_ses-M000_T1w.nii.gz")].status == "pending"
    duplicate = rows[("sub-01", "ses-M000", "sub-01_ses-M000_run-2_T1w.nii.gz")]
    assert duplicate.excluded and duplicate.status.endswith("was kept: sub-01_ses-M000_T1w.nii.gz")
    no_t1w = rows[("sub-01", "ses-M012", "")]
    assert no_t1w.excluded and no_t1w.status == "error: no T1w image in sub-01/ses-M012/anat/ (expected *_T1w.nii[.gz])"
    assert no_t1w.diagnosis == "AD" and no_t1w.age == 71.0
    assert "no anat/ folder in sub-01/ses-M024/" in rows[("sub-01", "ses-M024", "")].status
    assert "listed in participants.tsv but there is no sub-09/ folder" in rows[("sub-09", "", "")].status


def test_loni_image_folder_without_an_image_gets_a_row(adni_tree):
    raw, csv_path = adni_tree
    loni_image_folder(raw, "005_S_0221", "MPRAGE", "2006-02-10", "I44444").mkdir(parents=True)
    rows = build_adni_manifest(raw, csv_path)
    empty = [r for r in rows if r.source_path is not None and r.source_path.name == "I44444"]
    assert len(empty) == 1 and empty[0].excluded and "holds no NIfTI file or DICOM series" in empty[0].status
