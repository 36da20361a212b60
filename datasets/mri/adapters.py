"""Dataset adapters: ADNI / OASIS-1 / PPMI download folders + metadata CSV -> one scan manifest.

Every adapter returns `list[ManifestRow]` sorted by (participant_id, session_id). Scans that are not part of
the experiment stay in the list with `label = EXCLUDED_LABEL` and `status = "error: <reason>"` (diagnosis
outside the chosen classes, no metadata row, missing CDR, duplicate scan of a session naming the scan kept,
an image-id folder or OASIS session folder without an image); all others are "pending". Unreadable scans
and failed registrations are recorded later, by preprocessing (status) and QC (qc_flag, qc_reason).
Metadata CSV rows without any image on disk are counted in the log, not listed (a partial download of
OASIS discs or LONI collections is normal).

What the scanners' files hold, per archive (read by volume.py / analyze.py):
- ADNI (LONI IDA): DICOM series (MPRAGE / IR-SPGR, usually sagittal; geometry from ImageOrientationPatient
  and ImagePositionPatient; gantry-tilted or mosaic series are refused with a reason) or NIfTI files made
  by LONI's pipelines (sform/qform: the sform is used and a disagreement recorded).
- PPMI (LONI IDA): the same two forms (DICOM 3D T1 series, or NIfTI).
- OASIS-1: Analyze 7.5, sagittal orient 2, big-endian int16, voxel order A, S, L (analyze.py); RAW scans
  256 x 256 x 128 at 1 x 1 x 1.25 mm, SUBJ_111 256 x 256 x 160 at 1 mm. nibabel's own Analyze reader
  would lay these on their side.
- BIDS (bids.py): NIfTI with sform/qform, as for ADNI. Only counts and the datasets' own participant codes are logged, never DICOM header fields.

Layouts and columns
- ADNI and PPMI (LONI IDA downloads): `<subject>/<description>/<acquisition date>/<image id>/` holding one
  NIfTI file or a DICOM series, plus the collection CSV with columns "Image Data ID", "Subject", "Group",
  "Sex", "Age", "Visit", "Acq Date" (others ignored). Scans are matched to CSV rows by image id ("I97327").
  participant_id = the CSV "Subject" (ADNI PTID such as 941_S_1194; PPMI patient number);
  session_id = "ses-" + the visit code upper-cased without punctuation (ADNI "m06" -> "ses-M06", PPMI
  "V04" -> "ses-V04"), else the acquisition date ("ses-20070919").
- OASIS-1: `OAS1_xxxx_MRy/` session folders and `oasis_cross-sectional.csv` ("ID", "M/F", "Age", "CDR", ...).
  Image rule: the averaged, motion-corrected native-space image
  `PROCESSED/MPRAGE/SUBJ_111/*_sbj_111.hdr` (what Clinica's oasis-to-bids converter uses), falling back to
  the first raw acquisition `RAW/*_mpr-1_anon.hdr`. participant_id = "OAS1_xxxx" (so a repeat scan MR2 is
  the same participant), session_id = "ses-MRy". Diagnosis: "AD" when CDR >= `cdr_threshold`, else "CN".
  The CSV leaves clinical fields blank on the reliability re-scan rows (MR2, taken within 90 days), so blank
  CDR / age / sex are taken from the same participant's other session row; still missing -> excluded.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

from adafocus.datasets.mri.manifest import EXCLUDED_LABEL, ManifestRow, error_status, parse_number
from adafocus.datasets.mri.volume import DICOM_SUFFIX, NIFTI_SUFFIXES

log = logging.getLogger(__name__)

DATASETS = ("adni", "oasis", "ppmi", "bids")
DEFAULT_CLASSES = {"adni": ("CN", "AD"), "oasis": ("CN", "AD"), "ppmi": ("Control", "PD"), "bids": ("CN", "AD")}
OASIS_DIAGNOSES = ("CN", "AD")

_IMAGE_ID_DIR = re.compile(r"^I\d+$")
_IMAGE_ID_IN_NAME = re.compile(r"_(I\d+)\.(?:nii(?:\.gz)?|dcm)$", re.IGNORECASE)
_DATE_DIR = re.compile(r"^(\d{4})-(\d{2})-(\d{2})")
_ADNI_SUBJECT = re.compile(r"^\d{3}_S_\d{4}$")
_PPMI_SUBJECT = re.compile(r"^\d{4,6}$")
_OASIS_SESSION = re.compile(r"^(OAS1_\d{4})_(MR\d+)$")
_LONI_COLUMNS = ("Image Data ID", "Subject", "Group")
_OASIS_COLUMNS = ("ID", "CDR")


@dataclass(frozen=True)
class _LoniScan:
    """One image found in a LONI IDA download: a NIfTI file or a DICOM series folder."""

    path: Path
    image_id: str | None
    subject_dir: str | None
    date_dir: str | None
    empty: bool = False  # an image-id folder holding no NIfTI file and no DICOM series


def validate_classes(classes: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """Classes in label order (index = label); at least two, no repeats."""
    classes = tuple(str(c) for c in classes)
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ValueError(f"classes must name at least two distinct groups in label order, got {classes}")
    return classes


def read_metadata_csv(path: str | Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Read a metadata CSV (BOM tolerated, cells stripped); raise ValueError naming missing columns."""
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or ()]
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path.name} lacks the column(s) {missing}; found {columns}")
        return [{(k or "").strip(): (v or "").strip() for k, v in rec.items()} for rec in reader]


def normalise_sex(text: str) -> str:
    """'M'/'Male' -> 'M', 'F'/'Female' -> 'F', anything else -> ''."""
    first = text.strip()[:1].upper()
    return first if first in ("M", "F") else ""


def normalise_image_id(text: str) -> str:
    """'97327' or 'I97327' -> 'I97327'."""
    text = text.strip()
    return f"I{text}" if text.isdigit() else text


def session_from_visit(visit: str) -> str | None:
    """'m06' -> 'ses-M06', 'V04' -> 'ses-V04', '' -> None."""
    code = re.sub(r"[^0-9A-Za-z]", "", visit).upper()
    return f"ses-{code}" if code else None


def session_from_date(text: str) -> str | None:
    """'9/19/2007', '2007-09-19' or a LONI date folder '2007-09-19_10_36_57.0' -> 'ses-20070919'."""
    match = _DATE_DIR.match(text)
    if match:
        return "ses-" + "".join(match.groups())
    for fmt in ("%m/%d/%Y", "%m/%d/%y"):
        try:
            return "ses-" + datetime.strptime(text.strip(), fmt).strftime("%Y%m%d")
        except ValueError:
            continue
    return None


def _label_and_status(diagnosis: str, classes: tuple[str, ...]) -> tuple[int, str]:
    if not diagnosis:
        return EXCLUDED_LABEL, error_status("missing diagnosis in metadata")
    if diagnosis not in classes:
        return EXCLUDED_LABEL, error_status(f"diagnosis {diagnosis!r} not in classes {list(classes)}")
    return classes.index(diagnosis), "pending"


def _mark_duplicate_sessions(rows: list[ManifestRow]) -> list[ManifestRow]:
    """Keep the first usable scan per (participant, session) in source-path order; exclude the others."""
    kept: dict[tuple[str, str], ManifestRow] = {}
    marked = []
    for row in sorted(rows, key=lambda r: (r.participant_id, r.session_id, str(r.source_path))):
        key = (row.participant_id, row.session_id)
        if row.excluded:
            marked.append(row)
        elif key in kept:
            reason = f"duplicate scan for this participant/session; kept {kept[key].source_path.name}"
            marked.append(replace(row, label=EXCLUDED_LABEL, status=error_status(reason)))
        else:
            kept[key] = row
            marked.append(row)
    return marked


def _log_summary(dataset: str, rows: list[ManifestRow], unmatched_metadata: int) -> None:
    reasons = Counter(r.status for r in rows if r.excluded)
    log.info(
        "%s: %d scans found, %d usable, %d excluded; %d metadata rows have no image on disk",
        dataset,
        len(rows),
        len(rows) - sum(reasons.values()),
        sum(reasons.values()),
        unmatched_metadata,
    )
    for reason, n in reasons.most_common():
        log.info("%s: %d x %s", dataset, n, reason)


# ----------------------------------------------------------------------------------------------- LONI IDA
def _find_loni_scans(raw_dir: Path, subject_pattern: re.Pattern) -> list[_LoniScan]:
    scans = []
    for dirpath, dirnames, filenames in os.walk(raw_dir):
        dirnames.sort()
        folder = Path(dirpath)
        parts = folder.relative_to(raw_dir).parts
        subject = next((p for p in parts if subject_pattern.match(p)), None)
        date = next((p for p in parts if _DATE_DIR.match(p)), None)
        folder_id = next((p for p in reversed(parts) if _IMAGE_ID_DIR.match(p)), None)
        names = sorted(filenames)
        nifti = [n for n in names if n.lower().endswith(NIFTI_SUFFIXES)]
        dicom = [n for n in names if n.lower().endswith(DICOM_SUFFIX)]
        for name in nifti:
            match = _IMAGE_ID_IN_NAME.search(name)
            scans.append(
                _LoniScan(folder / name, folder_id or (match.group(1) if match else None), subject, date)
            )
        if dicom:
            match = _IMAGE_ID_IN_NAME.search(dicom[0])
            scans.append(_LoniScan(folder, folder_id or (match.group(1) if match else None), subject, date))
        if not nifti and not dicom and not dirnames and _IMAGE_ID_DIR.match(folder.name):
            scans.append(_LoniScan(folder, folder.name, subject, date, empty=True))
    return scans


def _loni_row(scan: _LoniScan, meta: dict[str, str] | None, classes: tuple[str, ...]) -> ManifestRow:
    date_session = session_from_date(scan.date_dir or "")
    if meta is None:
        reason = (
            f"image folder {scan.image_id} holds no NIfTI file or DICOM series, and has no metadata CSV row"
            if scan.empty else
            f"no row for image {scan.image_id} in the metadata CSV"
            if scan.image_id
            else "no image id (I<digits>) in the folder or file name to match the metadata CSV"
        )
        return ManifestRow(
            participant_id=scan.subject_dir or "",
            session_id=date_session or "",
            label=EXCLUDED_LABEL,
            diagnosis="",
            age=None,
            sex="",
            source_path=scan.path,
            status=error_status(reason),
        )
    session = (
        session_from_visit(meta.get("Visit", ""))
        or session_from_date(meta.get("Acq Date", ""))
        or date_session
    )
    participant = meta["Subject"] or scan.subject_dir or ""
    diagnosis = meta["Group"]
    label, status = _label_and_status(diagnosis, classes)
    if session is None:
        label, status = EXCLUDED_LABEL, error_status("no visit or acquisition date to name the session")
    if not participant:
        label, status = EXCLUDED_LABEL, error_status("no Subject in the metadata CSV row or folder path")
    if scan.empty:
        label, status = EXCLUDED_LABEL, error_status(f"image folder {scan.image_id} holds no NIfTI file or DICOM "
                                                     f"series (incomplete download?)")
    return ManifestRow(
        participant_id=participant,
        session_id=session or "",
        label=label,
        diagnosis=diagnosis,
        age=parse_number(meta.get("Age")),
        sex=normalise_sex(meta.get("Sex", "")),
        source_path=scan.path,
        status=status,
    )


def _build_loni_manifest(
    dataset: str,
    raw_dir: str | Path,
    metadata_csv: str | Path,
    classes: tuple[str, ...],
    subject_pattern: re.Pattern,
) -> list[ManifestRow]:
    raw_dir = Path(raw_dir).absolute()
    if not raw_dir.is_dir():
        raise ValueError(f"{dataset} raw folder not found: {raw_dir}")
    classes = validate_classes(classes)
    records = read_metadata_csv(metadata_csv, _LONI_COLUMNS)
    by_image = {normalise_image_id(rec["Image Data ID"]): rec for rec in records}
    scans = _find_loni_scans(raw_dir, subject_pattern)
    rows = _mark_duplicate_sessions([_loni_row(s, by_image.get(s.image_id or ""), classes) for s in scans])
    _log_summary(dataset, rows, len(set(by_image) - {s.image_id for s in scans}))
    return rows


def build_adni_manifest(
    raw_dir: str | Path, metadata_csv: str | Path, *, classes: tuple[str, ...] = DEFAULT_CLASSES["adni"]
) -> list[ManifestRow]:
    """Manifest for an ADNI LONI download (see module docstring). `classes`: Group values in label order,
    default ("CN", "AD") -> CN = 0, AD = 1; e.g. ("CN", "MCI", "AD") for three classes."""
    return _build_loni_manifest("adni", raw_dir, metadata_csv, classes, _ADNI_SUBJECT)


def build_ppmi_manifest(
    raw_dir: str | Path, metadata_csv: str | Path, *, classes: tuple[str, ...] = DEFAULT_CLASSES["ppmi"]
) -> list[ManifestRow]:
    """Manifest for a PPMI LONI download. `classes`: Group values (PD, Control, Prodromal, SWEDD, ...) in
    label order, default ("Control", "PD") -> Control = 0, PD = 1."""
    return _build_loni_manifest("ppmi", raw_dir, metadata_csv, classes, _PPMI_SUBJECT)


# ------------------------------------------------------------------------------------------------ OASIS-1
def choose_oasis_image(session_dir: Path) -> Path | None:
    """The SUBJ_111 averaged image if present, else the raw mpr-1 acquisition, else None (.hdr of a pair)."""
    for pattern in ("PROCESSED/MPRAGE/SUBJ_111/*_sbj_111.hdr", "RAW/*_mpr-1_anon.hdr"):
        found = sorted(session_dir.glob(pattern))
        if found:
            return found[0]
    return None


def _find_oasis_sessions(raw_dir: Path) -> dict[str, Path]:
    sessions = {}
    for dirpath, dirnames, _ in os.walk(raw_dir):
        for name in sorted(dirnames):
            if _OASIS_SESSION.match(name):
                sessions.setdefault(name, Path(dirpath) / name)
        dirnames[:] = sorted(d for d in dirnames if not _OASIS_SESSION.match(d))
    return sessions


def oasis_diagnosis(cdr: float, cdr_threshold: float) -> str:
    """'AD' when CDR >= cdr_threshold (default 0.5: very mild dementia and above), else 'CN'."""
    return "AD" if cdr >= cdr_threshold else "CN"


def _participant_fallback(records: dict[str, dict[str, str]], participant: str, column: str) -> str:
    """First non-empty `column` among the participant's session rows, in session order."""
    for session_name in sorted(k for k in records if k.startswith(participant + "_")):
        value = records[session_name].get(column, "")
        if value:
            return value
    return ""


def _oasis_row(
    session_name: str,
    session_dir: Path,
    records: dict[str, dict[str, str]],
    classes: tuple[str, ...],
    cdr_threshold: float,
) -> ManifestRow:
    participant, mr = _OASIS_SESSION.match(session_name).groups()
    image = choose_oasis_image(session_dir)
    own = records.get(session_name)
    cell = {
        c: (own.get(c, "") if own else "") or _participant_fallback(records, participant, c)
        for c in ("CDR", "Age", "M/F")
    }
    cdr = parse_number(cell["CDR"])
    diagnosis = "" if cdr is None else oasis_diagnosis(cdr, cdr_threshold)
    label, status = _label_and_status(diagnosis, classes)
    if own is None:
        label, status = EXCLUDED_LABEL, error_status(f"no row for {session_name} in the metadata CSV")
    elif cdr is None:
        label, status = EXCLUDED_LABEL, error_status("missing CDR")
    if image is None:
        label, status = (
            EXCLUDED_LABEL,
            error_status("no SUBJ_111 or RAW mpr-1 Analyze image in the session folder"),
        )
    return ManifestRow(
        participant_id=participant,
        session_id=f"ses-{mr}",
        label=label,
        diagnosis=diagnosis,
        age=parse_number(cell["Age"]),
        sex=normalise_sex(cell["M/F"]),
        source_path=image,
        status=status,
    )


def build_oasis_manifest(
    raw_dir: str | Path,
    metadata_csv: str | Path,
    *,
    classes: tuple[str, ...] = DEFAULT_CLASSES["oasis"],
    cdr_threshold: float = 0.5,
) -> list[ManifestRow]:
    """Manifest for OASIS-1 (discs unpacked anywhere under `raw_dir`) and `oasis_cross-sectional.csv`.

    `classes` is a subset of ("CN", "AD") in label order; the diagnosis comes from CDR and `cdr_threshold`.
    """
    raw_dir = Path(raw_dir).absolute()
    if not raw_dir.is_dir():
        raise ValueError(f"oasis raw folder not found: {raw_dir}")
    classes = validate_classes(classes)
    unknown = set(classes) - set(OASIS_DIAGNOSES)
    if unknown:
        raise ValueError(
            f"OASIS diagnoses are derived from CDR as {OASIS_DIAGNOSES}; unknown classes {sorted(unknown)}"
        )
    records = {rec["ID"]: rec for rec in read_metadata_csv(metadata_csv, _OASIS_COLUMNS)}
    sessions = _find_oasis_sessions(raw_dir)
    rows = _mark_duplicate_sessions(
        [_oasis_row(name, folder, records, classes, cdr_threshold) for name, folder in sessions.items()]
    )
    _log_summary("oasis", rows, len(set(records) - set(sessions)))
    return rows


def build_manifest(
    dataset: str, raw_dir: str | Path, metadata_csv: str | Path | None, *, classes: tuple[str, ...] | None = None,
    diagnosis_column: str = "diagnosis",
) -> list[ManifestRow]:
    """Dispatch to the adapter named `dataset` ("adni", "oasis", "ppmi" or "bids"); classes=None -> its
    default. BIDS reads participants.tsv (metadata_csv is not used) and `diagnosis_column` from it."""
    if dataset == "bids":
        from adafocus.datasets.mri.bids import build_bids_manifest

        return build_bids_manifest(raw_dir, diagnosis_column=diagnosis_column,
                                   classes=tuple(classes or DEFAULT_CLASSES[dataset]))
    if metadata_csv is None:
        raise ValueError(f"{dataset} needs its metadata CSV (--metadata)")
    builders = {"adni": build_adni_manifest, "oasis": build_oasis_manifest, "ppmi": build_ppmi_manifest}
    if dataset not in builders:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {DATASETS}")
    return builders[dataset](raw_dir, metadata_csv, classes=tuple(classes or DEFAULT_CLASSES[dataset]))
