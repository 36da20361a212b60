"""The scan manifest: one TSV row per (participant, session) scan, shared by every MRI dataset adapter.

Columns (in this order): participant_id, session_id, label, diagnosis, age, sex, source_path,
preprocessed_path, status.

- `label` is the class index inside the chosen classes, or `EXCLUDED_LABEL` (-1) when the scan is not
  part of the experiment (diagnosis outside the chosen classes, missing metadata, duplicate scan). Such
  rows stay in the manifest with `status = "error: <reason>"` so nothing disappears silently; they are
  never preprocessed.
- `status` is "pending", "ok" or "error: <reason>".
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

    @property
    def excluded(self) -> bool:
        """True when the scan is not part of the chosen classes (never preprocessed)."""
        return self.label == EXCLUDED_LABEL

    @property
    def is_error(self) -> bool:
        return self.status.startswith(_ERROR_PREFIX)

    def with_status(self, status: str, preprocessed_path: Path | None = None) -> ManifestRow:
        return replace(self, status=status, preprocessed_path=preprocessed_path)


MANIFEST_COLUMNS = tuple(f.name for f in fields(ManifestRow))


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
        missing = set(MANIFEST_COLUMNS) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f"{path} is not a scan manifest: missing columns {sorted(missing)}")
        return [
            ManifestRow(
                participant_id=rec["participant_id"],
                session_id=rec["session_id"],
                label=int(rec["label"]),
                diagnosis=rec["diagnosis"],
                age=parse_number(rec["age"]),
                sex=rec["sex"],
                source_path=_text_to_path(rec["source_path"], path.parent),
                preprocessed_path=_text_to_path(rec["preprocessed_path"], path.parent),
                status=rec["status"],
            )
            for rec in reader
        ]


def carry_over_finished(rows: list[ManifestRow], previous: list[ManifestRow]) -> list[ManifestRow]:
    """Copy "ok" results of a previous run onto fresh rows with the same participant, session and source.

    Used when the adapter is re-run on the same raw folder: finished scans keep their status and cache path,
    everything else (pending, failed) starts again.
    """
    done = {(r.participant_id, r.session_id, r.source_path): r for r in previous if r.status == STATUS_OK}
    carried = []
    for row in rows:
        old = done.get((row.participant_id, row.session_id, row.source_path))
        keep = old is not None and not row.excluded
        carried.append(row.with_status(old.status, old.preprocessed_path) if keep else row)
    return carried
