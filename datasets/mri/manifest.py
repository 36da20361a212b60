"""The scan manifest: one TSV row per (participant, session) scan, shared by every MRI dataset adapter.

Columns (in this order): participant_id, session_id, label, diagnosis, age, sex, source_path,
preprocessed_path, status, then the registration QC of preprocessed rows (qc.py): qc_ncc, qc_nmi,
qc_coverage, qc_rotation_deg, qc_scale_min, qc_scale_max, qc_shear, qc_probe_gain, qc_probe_best,
qc_probe_ncc, qc_flag
("pass" / "warn" / "fail", "" when not checked) and qc_reason. Manifests written before the QC columns
existed read with those fields empty.

- `label` is the class index inside the chosen classes, or `EXCLUDED_LABEL` (-1) when the scan is not
  part of the experiment (diagnosis outside the chosen classes, missing metadata, duplicate scan). Such
  rows stay in the manifest with `status = "error: <reason>"` so nothing disappears silently; they are
  never preprocessed.
- `status` is "pending", "ok" or "error: <reason>". A scan that preprocessed but failed QC keeps status
  "ok" with qc_flag "fail": `rows_for_use` leaves it out of training and scoring unless asked, and says why.
- Paths inside the manifest's own folder are written relative to it (a cache can be moved as a whole);
  `read_manifest` returns them as absolute `Path`s.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from dataclasses import dataclass, fields, replace
from pathlib import Path

MANIFEST_NAME = "manifest.tsv"
EXCLUDED_LABEL = -1
STATUS_PENDING = "pending"
STATUS_OK = "ok"
QC_PASS, QC_WARN, QC_FAIL = "pass", "warn", "fail"
_ERROR_PREFIX = "error: "


def error_status(reason: str) -> str:
    """Status string for a failed/excluded row; newlines and tabs are flattened to keep the TSV valid."""
    return _ERROR_PREFIX + " ".join(reason.split())


@dataclass(frozen=True)
class ManifestRow:
    """One scan. `age` is in years (None when unknown); `sex` is "M", "F" or "" when unknown."""

    participant_id: str
    session_id: str
    label: int
    diagnosis: str
    age: float | None
    sex: str
    source_path: Path | None
    preprocessed_path: Path | None = None
    status: str = STATUS_PENDING
    qc_ncc: float | None = None
    qc_nmi: float | None = None
    qc_coverage: float | None = None
    qc_rotation_deg: float | None = None
    qc_scale_min: float | None = None
    qc_scale_max: float | None = None
    qc_shear: float | None = None
    qc_probe_gain: float | None = None
    qc_probe_best: str = ""
    qc_probe_ncc: float | None = None
    qc_flag: str = ""
    qc_reason: str = ""

    @property
    def excluded(self) -> bool:
        """True when the scan is not part of the chosen classes (never preprocessed)."""
        return self.label == EXCLUDED_LABEL

    @property
    def is_error(self) -> bool:
        return self.status.startswith(_ERROR_PREFIX)

    @property
    def qc_failed(self) -> bool:
        return self.qc_flag == QC_FAIL

    def with_status(self, status: str, preprocessed_path: Path | None = None) -> ManifestRow:
        return replace(self, status=status, preprocessed_path=preprocessed_path)

    def with_qc(self, qc: dict | None) -> ManifestRow:
        """The row with its qc_* fields set from {"scores": {...}, "flag", "reason"} (qc.QCResult.to_dict);
        None clears them."""
        if qc is None:
            return replace(self, **{name: QC_DEFAULTS[name] for name in QC_COLUMNS})
        scores = {f"qc_{k}": v for k, v in qc["scores"].items() if f"qc_{k}" in QC_COLUMNS}
        return replace(self, **scores, qc_flag=qc["flag"], qc_reason=" ".join(str(qc["reason"]).split()))


MANIFEST_COLUMNS = tuple(f.name for f in fields(ManifestRow))
QC_COLUMNS = tuple(c for c in MANIFEST_COLUMNS if c.startswith("qc_"))
QC_DEFAULTS = {f.name: f.default for f in fields(ManifestRow) if f.name.startswith("qc_")}
_QC_TEXT_COLUMNS = ("qc_probe_best", "qc_flag", "qc_reason")


def _path_to_text(path: Path, base: Path) -> str:
    path = path.absolute()
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return path.as_posix()


def _text_to_path(text: str, base: Path) -> Path | None:
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() else base / path


def _cell_text(value: object, base: Path) -> str:
    if value is None:
        return ""
    if isinstance(value, Path):
        return _path_to_text(value, base)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def parse_number(text: str | None) -> float | None:
    """Parse a numeric cell (age, CDR); empty / non-numeric / NaN -> None."""
    try:
        age = float(str(text).strip())
    except (TypeError, ValueError):
        return None
    return None if math.isnan(age) else age


def write_manifest(rows: list[ManifestRow], path: str | Path) -> Path:
    """Write `rows` as a TSV atomically (temp file in the same folder, then os.replace). Returns the path."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=base)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
            writer.writerow(MANIFEST_COLUMNS)
            for row in rows:
                writer.writerow([_cell_text(getattr(row, column), base) for column in MANIFEST_COLUMNS])
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def read_manifest(path: str | Path) -> list[ManifestRow]:
    """Read a manifest TSV written by `write_manifest` into typed rows (paths absolute)."""
    path = Path(path).absolute()
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter="\t")
        missing = set(MANIFEST_COLUMNS) - set(QC_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a scan manifest: missing columns {sorted(missing)}")
        return [_row_from_record(rec, path.parent) for rec in reader]


def _row_from_record(rec: dict[str, str], base: Path) -> ManifestRow:
    qc = {c: (rec.get(c) or "") if c in _QC_TEXT_COLUMNS else parse_number(rec.get(c)) for c in QC_COLUMNS}
    return ManifestRow(
        participant_id=rec["participant_id"],
        session_id=rec["session_id"],
        label=int(rec["label"]),
        diagnosis=rec["diagnosis"],
        age=parse_number(rec["age"]),
        sex=rec["sex"],
        source_path=_text_to_path(rec["source_path"], base),
        preprocessed_path=_text_to_path(rec["preprocessed_path"], base),
        status=rec["status"],
        **qc,
    )


def carry_over_finished(rows: list[ManifestRow], previous: list[ManifestRow]) -> list[ManifestRow]:
    """Copy "ok" results of a previous run (status, cache path, QC) onto fresh rows with the same
    participant, session and source.

    Used when the adapter is re-run on the same raw folder: finished scans keep their status and cache path,
    everything else (pending, failed) starts again.
    """
    done = {(r.participant_id, r.session_id, r.source_path): r for r in previous if r.status == STATUS_OK}
    carried = []
    for row in rows:
        old = done.get((row.participant_id, row.session_id, row.source_path))
        keep = old is not None and not row.excluded
        carried.append(replace(row.with_status(old.status, old.preprocessed_path),
                               **{c: getattr(old, c) for c in QC_COLUMNS}) if keep else row)
    return carried


def is_preprocessed(row: ManifestRow) -> bool:
    """Labelled, preprocessed without error, file present (QC not considered)."""
    return (not row.excluded and row.status == STATUS_OK and row.preprocessed_path is not None
            and row.preprocessed_path.exists())


def why_unusable(row: ManifestRow, include_qc_failed: bool = False) -> str | None:
    """Why a row cannot be used for training or scoring, in words; None when it can."""
    if row.is_error:
        return row.status.removeprefix(_ERROR_PREFIX)
    if row.excluded:
        return "excluded from the experiment" + (f" ({row.status})" if row.status else "")
    if row.status != STATUS_OK or row.preprocessed_path is None:
        return "not preprocessed yet (run `adafocus preprocess`)"
    if not row.preprocessed_path.exists():
        return f"the preprocessed file is missing: {row.preprocessed_path}"
    if row.qc_failed and not include_qc_failed:
        return f"QC failed: {row.qc_reason or 'no reason recorded'}"
    return None


def rows_for_use(rows: list[ManifestRow], *, include_qc_failed: bool = False
                 ) -> tuple[list[ManifestRow], list[tuple[ManifestRow, str]]]:
    """(kept, left_out) for train / cv / score: kept = preprocessed rows that passed or only warned in QC
    (rows never checked are kept too), in manifest order; left_out = every other row with the reason in
    words (errors, exclusions, unprocessed, missing files, and QC failures unless `include_qc_failed`)."""
    kept, left_out = [], []
    for row in rows:
        reason = why_unusable(row, include_qc_failed)
        if reason is None:
            kept.append(row)
        else:
            left_out.append((row, reason))
    return kept, left_out


def manifest_rows_for_use(manifest: str | Path, *, include_qc_failed: bool = False
                          ) -> tuple[list[ManifestRow], list[tuple[ManifestRow, str]]]:
    """`rows_for_use` of a manifest file; ValueError (naming why the rows were left out) when none is usable."""
    kept, left_out = rows_for_use(read_manifest(manifest), include_qc_failed=include_qc_failed)
    if not kept:
        raise ValueError(f"{manifest} has no usable scans ({summarise_left_out(left_out) or 'it is empty'}); "
                         f"run `adafocus preprocess` first, or include QC-failed scans if you mean to")
    return kept, left_out


def summarise_left_out(left_out: list[tuple[ManifestRow, str]]) -> str:
    """One line for a log: "5 scans left out: 3 QC failed, 1 unreadable, 1 excluded ..." ("" when none)."""
    if not left_out:
        return ""
    kinds: dict[str, int] = {}
    for _, reason in left_out:
        kind = ("QC failed" if reason.startswith("QC failed") else "not preprocessed yet" if reason.startswith("not pre")
                else "preprocessed file missing" if reason.startswith("the preprocessed file") else
                "preprocessing error" if any(reason.startswith(s) for s in ("load:", "register:", "n4:", "orientation:",
                                                                             "crop:", "normalise:", "save:", "qc"))
                else "excluded")
        kinds[kind] = kinds.get(kind, 0) + 1
    parts = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items(), key=lambda item: -item[1]))
    return f"{len(left_out)} scan{'s' if len(left_out) != 1 else ''} left out: {parts}"
