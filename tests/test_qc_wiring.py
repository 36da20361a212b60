"""Scans whose registration failed QC stay out of train, cv and score unless asked for, and the log, the CV
report and the score row say which and why."""
from __future__ import annotations

import dataclasses

from adafocus.apps.runs.mri import usable_rows
from adafocus.apps.scoring.scans import qc_checked
from adafocus.datasets.mri.manifest import STATUS_OK, ManifestRow, write_manifest
from adafocus.datasets.mri.qc import QCResult, QCScores, write_qc_json
from adafocus.reports.cv_report import left_out_line

SCORES = QCScores(ncc=0.41, nmi=1.01, coverage=0.6, rotation_deg=90.0, scale_min=1.0, scale_max=1.0, shear=0.0,
                  probe_gain=0.3, probe_best="RSA", probe_ncc=0.8)


def _rows(tmp_path):
    rows = []
    for i, flag in enumerate(["pass", "fail", "warn", ""]):
        path = tmp_path / f"sub-{i}.nii.gz"
        path.write_bytes(b"x")
        rows.append(ManifestRow(participant_id=f"sub-{i}", session_id="ses-1", label=i % 2, diagnosis="CN",
                                age=None, sex="", source_path=None, preprocessed_path=path, status=STATUS_OK,
                                qc_flag=flag, qc_reason="registration failed: NCC 0.41" if flag == "fail" else ""))
    return rows


def test_qc_failed_rows_are_left_out_and_logged_unless_included(tmp_path):
    manifest = write_manifest(_rows(tmp_path), tmp_path / "manifest.tsv")
    said: list[str] = []
    kept = usable_rows(manifest, log=said.append)
    assert [r.participant_id for r in kept] == ["sub-0", "sub-2", "sub-3"]
    assert len(said) == 1 and "1 scan left out: 1 QC failed" in said[0] and "--include-qc-failed" in said[0]
    assert len(usable_rows(manifest, include_qc_failed=True)) == 4


def test_a_scan_whose_registration_failed_is_a_row_with_the_reason(tmp_path):
    volume = tmp_path / "t1.nii.gz"
    volume.write_bytes(b"x")
    assert qc_checked((volume, "")) == (volume, "")  # no QC recorded: scored
    write_qc_json(volume, QCResult(SCORES, "fail", "registration failed: NCC 0.41 with the template"))
    path, reason = qc_checked((volume, ""))
    assert path is None and reason.startswith("QC failed: registration failed: NCC 0.41")
    write_qc_json(volume, QCResult(dataclasses.replace(SCORES, ncc=0.95), "pass", "registration looks right"))
    assert qc_checked((volume, "")) == (volume, "")


def test_the_cv_report_lists_what_was_left_out():
    assert left_out_line([]) == "- every manifest row was used"
    line = left_out_line([{"participant_id": "sub-1", "session_id": "ses-1", "reason": "QC failed: NCC 0.41"}])
    assert line == "- 1 manifest row left out: sub-1 ses-1: QC failed: NCC 0.41"
