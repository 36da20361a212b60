"""Registration QC: scores, flags and reasons; good scans (OASIS RAW / SUBJ_111 as OASIS-1 writes them, NIfTI,
the demo cohort) pass and deliberately broken ones fail; a marker on the subject's left temple ends at MNI x < 0;
the manifest carries the QC and `rows_for_use` leaves failed scans out with reasons; the QC report."""
from __future__ import annotations

import csv
import math

import nibabel as nib
import numpy as np
import pytest
from _mri_fixtures import one_itk_thread
from adafocus.datasets.mri import phantoms
from adafocus.datasets.mri.adapters import build_oasis_manifest
from adafocus.datasets.mri.cohort import CohortConfig, write_oasis_cohort
from adafocus.datasets.mri.manifest import (
    MANIFEST_COLUMNS,
    QC_COLUMNS,
    ManifestRow,
    carry_over_finished,
    manifest_rows_for_use,
    read_manifest,
    rows_for_use,
    summarise_left_out,
    write_manifest,
)
from adafocus.datasets.mri.preprocess import T1LinearConfig, preprocess_manifest, preprocess_scan
from adafocus.datasets.mri.qc import (
    NCC_FAIL,
    NCC_PASS,
    QCScores,
    axis_codes,
    decompose_linear,
    describe_rotation,
    ncc,
    nmi,
    proper_rotations,
    qc_verdict,
    read_qc_json,
)
from adafocus.datasets.mri.template import mni_brain_mask, template_array
from adafocus.reports.qc_report import brain_mask_on, write_qc_report
from scipy import ndimage

FAST = T1LinearConfig(spacing_mm=4.0, registration_spacing_mm=4.0, n4_shrink_factor=2)
GOOD = QCScores(ncc=0.97, nmi=1.3, coverage=1.0, rotation_deg=5.0, scale_min=0.97, scale_max=1.03, shear=0.01,
                probe_gain=-0.3, probe_best="RAS", probe_ncc=0.88)


# ------------------------------------------------------------------------------------------- pure pieces
def test_decompose_linear_recovers_rotation_scales_and_shear():
    angle = math.radians(30)
    rotation = np.array([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)], [0, math.sin(angle), math.cos(angle)]])
    upper = np.array([[1.1, 0.05, 0.0], [0, 0.9, 0.0], [0, 0, 1.0]])
    parts = decompose_linear(rotation @ upper)
    assert parts["rotation_deg"] == pytest.approx(30.0)
    assert parts["scales"] == pytest.approx([1.1, 0.9, 1.0])
    assert parts["shear"] == pytest.approx(0.05 / 1.1) and not parts["mirrored"]
    assert decompose_linear(np.diag([-1.0, 1.0, 1.0]))["mirrored"]


def test_ncc_and_nmi_tell_a_match_from_noise():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(20, 20, 20))
    mask = np.ones(a.shape, dtype=bool)
    assert ncc(a, 2 * a + 3, mask) == pytest.approx(1.0) and abs(ncc(a, rng.normal(size=a.shape), mask)) < 0.05
    assert nmi(a, a, mask) > 1.9 and nmi(a, rng.normal(size=a.shape), mask) < 1.05


def test_the_24_orientations_and_their_words():
    rotations = proper_rotations()
    assert len(rotations) == 24 and axis_codes(rotations[0]) == "RAS"
    assert len({axis_codes(r) for r in rotations}) == 24
    assert describe_rotation("RAS") == "as the header says"
    assert "lying on its side" in describe_rotation("IAR")
    assert "facing backwards" in describe_rotation("LPS")
    assert "permuted" in describe_rotation("ILA")


def test_verdict_names_every_rule_that_fired():
    assert qc_verdict(GOOD) == ("pass", "")
    flag, reason = qc_verdict(GOOD, ["the NIfTI qform and sform disagree by up to 3.0 mm"])
    assert flag == "warn" and "qform and sform disagree" in reason
    low = GOOD.__class__(**{**GOOD.__dict__, "ncc": (NCC_FAIL + NCC_PASS) / 2})
    assert qc_verdict(low)[0] == "warn"
    broken = GOOD.__class__(**{**GOOD.__dict__, "ncc": 0.42, "probe_gain": 0.4, "probe_best": "IAR",
                               "coverage": 0.5})
    flag, reason = qc_verdict(broken)
    assert flag == "fail" and reason.startswith(f"registration failed: NCC 0.42 with the template (pass >= {NCC_PASS:.2f})")
    assert "lying on its side" in reason and "part of the head is cut off" in reason


# ---------------------------------------------------------------------------------------- manifest + QC
def test_old_manifests_without_qc_columns_still_read(tmp_path):
    path = tmp_path / "manifest.tsv"
    old_columns = [c for c in MANIFEST_COLUMNS if c not in QC_COLUMNS]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(old_columns)
        writer.writerow(["p1", "ses-1", "0", "CN", "70", "F", "", "", "pending"])
    row = read_manifest(path)[0]
    assert row.qc_flag == "" and row.qc_ncc is None and row.status == "pending"


def test_rows_for_use_leaves_failed_qc_out_with_reasons(tmp_path):
    done = tmp_path / "done.nii.gz"
    done.write_bytes(b"x")
    ok = ManifestRow("p1", "ses-1", 0, "CN", 70.0, "F", None, done, "ok")
    passed = ok.with_qc({"scores": GOOD.__dict__, "flag": "pass", "reason": ""})
    failed = ManifestRow("p2", "ses-1", 1, "AD", 70.0, "F", None, done, "ok").with_qc(
        {"scores": GOOD.__dict__, "flag": "fail", "reason": "registration failed: NCC 0.62"})
    error = ManifestRow("p3", "ses-1", 0, "CN", 70.0, "F", None, status="error: load: unreadable file: x")
    excluded = ManifestRow("p4", "", -1, "", None, "", None, status="error: no T1w image in sub-p4/ses-1/anat/")
    kept, left_out = rows_for_use([passed, failed, error, excluded])
    assert kept == [passed]
    assert [(r.participant_id, reason) for r, reason in left_out] == [
        ("p2", "QC failed: registration failed: NCC 0.62"), ("p3", "load: unreadable file: x"),
        ("p4", "no T1w image in sub-p4/ses-1/anat/")]
    assert rows_for_use([passed, failed], include_qc_failed=True)[0] == [passed, failed]
    assert summarise_left_out(left_out) == "3 scans left out: 1 QC failed, 1 preprocessing error, 1 excluded"
    write_manifest([passed, failed], tmp_path / "m.tsv")
    assert read_manifest(tmp_path / "m.tsv") == [passed, failed]  # QC columns round-trip exactly
    assert manifest_rows_for_use(tmp_path / "m.tsv")[0] == [passed]
    write_manifest([failed], tmp_path / "bad.tsv")
    with pytest.raises(ValueError, match="no usable scans .1 scan left out: 1 QC failed"):
        manifest_rows_for_use(tmp_path / "bad.tsv")
    fresh = [ManifestRow("p2", "ses-1", 1, "AD", 70.0, "F", None)]
    assert carry_over_finished(fresh, [failed])[0].qc_flag == "fail"


# ------------------------------------------------------------------------- good and broken, end to end
@pytest.fixture(scope="module")
def qc_cache(tmp_path_factory):
    """Good scans (OASIS RAW, SUBJ_111, NIfTI; 2 demo-cohort scans) and the broken kinds, preprocessed once."""
    root = tmp_path_factory.mktemp("qc")
    rng = np.random.default_rng(11)
    rows = []
    for layout in phantoms.GOOD_LAYOUTS:
        path = phantoms.write_good_scan(root / "raw" / layout, layout, rng)
        rows.append(ManifestRow(f"good-{layout}", "ses-M000", 0, "CN", 70.0, "F", path))
    for kind in phantoms.BROKEN_KINDS:
        path = phantoms.write_broken_scan(root / "raw" / kind, kind, rng)
        rows.append(ManifestRow(f"broken-{kind}", "ses-M000", 1, "AD", 70.0, "F", path))
    csv_path = write_oasis_cohort(root / "cohort", CohortConfig(n_participants=2, n_repeat_scans=0, spacing_mm=4.0))
    rows += build_oasis_manifest(root / "cohort", csv_path)
    with one_itk_thread():
        done = preprocess_manifest(rows, root / "cache", workers=1, progress=False, config=FAST)
    return root, {r.participant_id: r for r in done}


def test_good_scans_pass_and_broken_scans_fail(qc_cache):
    _, rows = qc_cache
    assert all(r.status == "ok" for r in rows.values()), {p: r.status for p, r in rows.items()}
    good = {p: r for p, r in rows.items() if not p.startswith("broken-")}
    broken = {p: r for p, r in rows.items() if p.startswith("broken-")}
    assert len(good) == 5 and len(broken) == len(phantoms.BROKEN_KINDS)
    phantom = {p for p in good if p.startswith("good-")}
    assert {p: good[p].qc_flag for p in phantom} == {p: "pass" for p in phantom}
    assert all(r.qc_flag in ("pass", "warn") for r in good.values())  # the demo cohort: no false fail
    assert {p: r.qc_flag for p, r in broken.items()} == {p: "fail" for p in broken}
    assert all(r.qc_reason.startswith("registration failed: ") for r in broken.values())
    assert "lying on its side" in broken["broken-on-its-side"].qc_reason
    assert "permuted" in broken["broken-wrong-orientation"].qc_reason
    assert "cut off" in broken["broken-half-head"].qc_reason
    kept, left_out = rows_for_use(list(rows.values()))
    assert {r.participant_id for r in kept} == set(good)
    assert {r.participant_id for r, _ in left_out} == set(broken)


def _marker_centre_mm(path) -> np.ndarray:
    """MNI mm centre of the bright voxels outside the (dilated) template brain: the left-temple capsule."""
    image = nib.load(str(path))
    volume = np.asarray(image.dataobj, dtype=np.float32)
    brain = brain_mask_on(np.asarray(image.affine), volume.shape)
    bright = (volume > 0.5) & ~ndimage.binary_dilation(brain, iterations=2)
    assert bright.sum() >= 2, "marker not found"
    return image.affine[:3, :3] @ np.argwhere(bright).mean(0) + image.affine[:3, 3]


@pytest.mark.parametrize("layout", ["oasis-raw", "oasis-subj111", "nifti"])
def test_left_temple_marker_lands_at_negative_mni_x(qc_cache, layout):
    _, rows = qc_cache
    row = rows[f"good-{layout}"]
    assert row.qc_ncc >= 0.90
    centre = _marker_centre_mm(row.preprocessed_path)
    assert centre[0] < -50, centre  # subject's left = MNI x < 0 (the capsule sits at x = -76)
    assert np.linalg.norm(centre - np.array(phantoms.LEFT_TEMPLE_MM)) < 15, centre


def test_qc_report_has_every_row_an_image_per_scan_and_the_outline(qc_cache, tmp_path):
    root, rows = qc_cache
    paths = write_qc_report(root / "cache", tmp_path / "report")
    with paths["tsv"].open() as handle:
        table = list(csv.DictReader(handle, delimiter="\t"))
    assert {r["participant_id"] for r in table} == set(rows)
    assert {r["qc_flag"] for r in table if r["participant_id"].startswith("broken-")} == {"fail"}
    assert len(paths["images"]) == len(rows) and all(p.stat().st_size > 5000 for p in paths["images"])
    page = paths["html"].read_text()
    assert page.count("<img ") == len(rows) and "lying on its side" in page and "red: template brain outline" in page
    tsv = paths["tsv"].read_text()
    assert all(t not in text for t in (str(root), "_anon", ".hdr", "T1w.nii") for text in (page, tsv))  # no paths
    assert not list((tmp_path / "report").rglob(".*"))  # atomic writes leave no temp files


def test_template_mask_matches_nilearns_rule():
    template = template_array(4.0)
    mask = mni_brain_mask(4.0)
    assert mask.shape == template.shape and np.array_equal(mask, template > 0.2 * template.max())
    assert 0.1 < mask.mean() < 0.4


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["oasis-raw", "oasis-subj111"])
def test_true_oasis_dimensions_preprocess_with_the_marker_on_the_left(tmp_path, layout):
    """OASIS-1 RAW (256 x 256 x 128 at 1 x 1 x 1.25 mm) and SUBJ_111 (256 x 256 x 160 at 1 mm), full size."""
    path = phantoms.write_good_scan(tmp_path / "raw", layout, np.random.default_rng(3), scale=1)
    assert nib.load(str(path)).shape[:3] == {"oasis-raw": (256, 256, 128), "oasis-subj111": (256, 256, 160)}[layout]
    out = tmp_path / "pre.nii.gz"
    with one_itk_thread():
        status = preprocess_scan(path, out, tmp_path / "pre.png", T1LinearConfig(spacing_mm=2.0,
                                                                                 registration_spacing_mm=4.0))
    assert status == "ok"
    result = read_qc_json(out)
    assert result.flag == "pass" and result.scores.ncc >= 0.90
    assert _marker_centre_mm(out)[0] < -50


def test_qc_report_keeps_file_names_out_of_error_reasons(tmp_path):
    source = tmp_path / "raw" / "Doe_Jane" / "Doe_Jane_T1.nii.gz"
    row = ManifestRow("sub-07", "ses-1", 0, "CN", None, "", source,
                      status="error: load: unreadable file: Doe_Jane_T1.nii.gz: EOFError: truncated")
    write_manifest([row], tmp_path / "cache" / "manifest.tsv")
    paths = write_qc_report(tmp_path / "cache", tmp_path / "report")
    for path in (paths["tsv"], paths["html"]):
        text = path.read_text()
        assert "Doe" not in text and "<scan file>" in text.replace("&lt;scan file&gt;", "<scan file>")
        assert "sub-07" in text and "unreadable file" in text
    assert paths["images"] == []
