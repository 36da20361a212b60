"""BIDS datasets (what Clinica / ClinicaDL users already have) -> scan manifest rows.

Layout read: `<root>/sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>]_*T1w.nii[.gz]` plus
`<root>/participants.tsv` (tab-separated, a `participant_id` column "sub-<label>" and a diagnosis column
chosen by the caller, e.g. "diagnosis" or "group"). Sessions without a `ses-` folder get session "ses-1".
When a session holds several T1w images (runs, acquisitions), the first in name order is kept and the
others are recorded as excluded duplicates naming the image kept. Participants missing from
participants.tsv, or with a diagnosis outside the chosen classes, are excluded with the reason in `status`
(see manifest.py).

Nothing the layout or participants.tsv names is dropped silently: a session folder (or a subject folder
without sessions) whose anat/ holds no T1w image, and a participant listed in participants.tsv with no
sub-<label>/ folder, each become an excluded row (source_path empty) whose status says why.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from adafocus.datasets.mri.manifest import EXCLUDED_LABEL, ManifestRow, error_status, parse_number

PARTICIPANTS_FILE = "participants.tsv"
DEFAULT_DIAGNOSIS_COLUMN = "diagnosis"
T1W_PATTERNS = ("*_T1w.nii.gz", "*_T1w.nii")


@dataclass(frozen=True)
class BidsScan:
    participant_id: str
    session_id: str
    path: Path


def is_bids(folder: str | Path) -> bool:
    """A folder with participants.tsv or sub-*/ folders holding anat/ T1w images."""
    folder = Path(folder)
    return folder.is_dir() and ((folder / PARTICIPANTS_FILE).is_file() or bool(find_bids_scans(folder)))


def bids_sessions(root: str | Path) -> list[tuple[str, str, Path]]:
    """(participant_id, session_id, session folder) of every sub-*/[ses-*] folder, sorted."""
    found = []
    for subject in sorted(p for p in Path(root).glob("sub-*") if p.is_dir()):
        sessions = sorted(p for p in subject.glob("ses-*") if p.is_dir())
        found += [(subject.name, s.name, s) for s in sessions] or [(subject.name, "ses-1", subject)]
    return found


def find_bids_scans(root: str | Path) -> list[BidsScan]:
    """Every T1w image of a BIDS tree, sorted by (participant, session, file name)."""
    scans = []
    for subject in sorted(p for p in Path(root).glob("sub-*") if p.is_dir()):
        sessions = sorted(p for p in subject.glob("ses-*") if p.is_dir()) or [subject]
        for session in sessions:
            session_id = session.name if session is not subject else "ses-1"
            for pattern in T1W_PATTERNS:
                scans += [BidsScan(subject.name, session_id, p) for p in sorted((session / "anat").glob(pattern))]
    return sorted(scans, key=lambda s: (s.participant_id, s.session_id, s.path.name))


def read_participants(root: str | Path) -> dict[str, dict[str, str]]:
    """participants.tsv as {participant_id: row}; {} when the file is absent."""
    path = Path(root) / PARTICIPANTS_FILE
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        if "participant_id" not in (reader.fieldnames or []):
            raise ValueError(f"{path} has no participant_id column")
        return {row["participant_id"]: row for row in reader}


def _row(scan: BidsScan, meta: dict[str, str] | None, column: str, classes: tuple[str, ...] | None) -> ManifestRow:
    diagnosis = (meta or {}).get(column, "").strip()
    if classes is None:
        label, status = 0, "pending"  # scoring: no labels needed
    elif meta is None:
        label, status = EXCLUDED_LABEL, error_status(f"{scan.participant_id} is not in {PARTICIPANTS_FILE}")
    elif diagnosis not in classes:
        label, status = EXCLUDED_LABEL, error_status(f"diagnosis {diagnosis!r} not in classes {list(classes)}")
    else:
        label, status = classes.index(diagnosis), "pending"
    sex = (meta or {}).get("sex", "").strip().upper()[:1]
    return ManifestRow(scan.participant_id, scan.session_id, label, diagnosis, parse_number((meta or {}).get("age")),
                       sex if sex in ("M", "F") else "", scan.path, status=status)


def build_bids_manifest(root: str | Path, *, diagnosis_column: str = DEFAULT_DIAGNOSIS_COLUMN,
                        classes: tuple[str, ...] | None = ("CN", "AD")) -> list[ManifestRow]:
    """Manifest rows of a BIDS dataset (module docstring); classes=None labels nothing (for scoring)."""
    root = Path(root)
    scans = find_bids_scans(root)
    if not scans:
        raise ValueError(f"{root} holds no BIDS T1w images (sub-*/[ses-*/]anat/*_T1w.nii[.gz])")
    participants = read_participants(root)
    if classes is not None and participants and diagnosis_column not in next(iter(participants.values())):
        columns = ", ".join(next(iter(participants.values())))
        raise ValueError(f"{root / PARTICIPANTS_FILE} has no column {diagnosis_column!r} (columns: {columns}); "
                         f"choose one with --diagnosis-column")
    rows, kept = [], {}
    for scan in scans:
        row = _row(scan, participants.get(scan.participant_id), diagnosis_column, classes)
        key = (scan.participant_id, scan.session_id)
        if key in kept and not row.excluded:
            row = replace(row, label=EXCLUDED_LABEL,
                          status=error_status(f"another T1w image of this session was kept: {kept[key]}"))
        kept.setdefault(key, scan.path.name)
        rows.append(row)
    rows += missing_rows(root, {(s.participant_id, s.session_id) for s in scans}, participants, diagnosis_column)
    return sorted(rows, key=lambda r: (r.participant_id, r.session_id, str(r.source_path or "")))


def missing_rows(root: Path, found: set[tuple[str, str]], participants: dict[str, dict[str, str]],
                 column: str) -> list[ManifestRow]:
    """Excluded rows for sessions whose anat/ holds no T1w image and for participants.tsv entries without a
    sub-<label>/ folder (session_id "" for those)."""
    rows = []
    for participant, session, folder in bids_sessions(root):
        if (participant, session) in found:
            continue
        anat = folder / "anat"
        where = anat.relative_to(root).as_posix()
        reason = (f"no T1w image in {where}/ (expected *_T1w.nii[.gz])" if anat.is_dir()
                  else f"no anat/ folder in {folder.relative_to(root).as_posix()}/, so no T1w image")
        rows.append(_missing(participant, session, participants.get(participant), column, reason))
    folders = {p.name for p in root.glob("sub-*") if p.is_dir()}
    for participant, meta in participants.items():
        if participant not in folders:
            rows.append(_missing(participant, "", meta, column,
                                 f"listed in {PARTICIPANTS_FILE} but there is no {participant}/ folder"))
    return rows


def _missing(participant: str, session: str, meta: dict[str, str] | None, column: str, reason: str) -> ManifestRow:
    sex = (meta or {}).get("sex", "").strip().upper()[:1]
    return ManifestRow(participant, session, EXCLUDED_LABEL, (meta or {}).get(column, "").strip(),
                       parse_number((meta or {}).get("age")), sex if sex in ("M", "F") else "", None,
                       status=error_status(reason))
