"""The score output folder, owned here: every writer and reader of these files goes through this module.

    OUT/scores.csv      one row per input: path, status, error, note, label, p_<class>..., exit_step, gmacs, ...
    OUT/details.jsonl   one JSON record per input: what the model looked at (frames/slices, boxes, exits)
    OUT/segments.csv    long videos: flagged segments (consecutive windows over a class threshold)

Crash safety: scores.csv is the record of what is done. Rows are appended in one write per batch, flushed
and fsynced; details lines are written *before* their CSV rows. A run killed at any moment (SIGKILL
included) leaves at most a trailing partial CSV line; the next run drops it (`prepare_csv`), drops details
lines of inputs without a CSV row (`prune_details`), and scores only inputs that have no row yet.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adafocus.core.io import atomic_write_text

SCORES_FILE = "scores.csv"
DETAILS_FILE = "details.jsonl"
SEGMENTS_FILE = "segments.csv"
BASE_COLUMNS = ("path", "status", "error", "note", "label")
TAIL_COLUMNS = ("exit_step", "gmacs", "decode_ms", "model_ms")


def csv_columns(class_names: Sequence[str]) -> list[str]:
    return [*BASE_COLUMNS, *(f"p_{name}" for name in class_names), *TAIL_COLUMNS]


def csv_line(values: Sequence[Any]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


def _drop_partial_tail(path: Path) -> None:
    """Cut a file back to its last complete line (a run killed mid-write may leave half a line)."""
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())


def read_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a scores CSV, ignoring a trailing partial line and rows with a wrong field count."""
    text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    text = text[: text.rfind("\n") + 1]
    records = list(csv.reader(io.StringIO(text)))
    if not records:
        return [], []
    header = records[0]
    return header, [dict(zip(header, r)) for r in records[1:] if len(r) == len(header)]


def prepare_csv(path: Path, columns: list[str]) -> dict[str, str]:
    """Make `path` a CSV with `columns` ready for appending; return {path: status} of the rows it has."""
    if path.is_file() and path.stat().st_size > 0:
        _drop_partial_tail(path)
        header, rows = read_rows(path)
        if header and header != columns:
            raise ValueError(f"{path} has the columns {header}, this model writes {columns}: it was written "
                             f"by another model; use a new --out")
        if header:
            return {row["path"]: row["status"] for row in rows}
    atomic_write_text(path, csv_line(columns))
    return {}


def prune_details(path: Path, done: Iterable[str]) -> None:
    """Keep one complete details line per file that has a CSV row (lines written before a kill but
    without their CSV row would otherwise be duplicated when those files are scored again)."""
    if not path.is_file():
        return
    done, kept, seen = set(done), [], set()
    text = path.read_text(encoding="utf-8")
    lines = _complete_lines(text)
    for line in lines:
        record_path = _record_path(line)
        if record_path in done and record_path not in seen:
            kept.append(line)
            seen.add(record_path)
    if len(kept) != len(lines) or not text.endswith("\n") and text:
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _complete_lines(text: str) -> list[str]:
    """The newline-terminated lines of `text`, without their newlines (a partial last line is dropped)."""
    return text.split("\n")[:-1]


def _record_path(line: str) -> str | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record.get("path") if isinstance(record, dict) else None


def append_synced(path: Path, text: str) -> None:
    # surrogateescape: file names that are not valid UTF-8 are written back as their original bytes
    with open(path, "a", encoding="utf-8", errors="surrogateescape") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class OutputFiles:
    """Where one process appends: the CSV and (optionally) the details JSONL."""

    csv: Path
    details: Path | None

    def append(self, rows: list[list[Any]], details: list[dict[str, Any]]) -> None:
        """Details first, then the CSV rows that mark the files done (one write per file, fsynced)."""
        if self.details is not None and details:
            append_synced(self.details, "".join(json.dumps(d) + "\n" for d in details))
        if rows:
            append_synced(self.csv, "".join(csv_line(row) for row in rows))


def output_paths(out: str | Path, details: str | Path | None = None) -> tuple[Path, Path]:
    """--out DIR -> (DIR/scores.csv, DIR/details.jsonl). The older --out FILE.csv still works for this
    release (details beside it), with a one-line hint on stderr."""
    out = Path(out)
    if out.suffix == ".csv":
        print(f"adafocus score: hint: --out takes a folder now; {out} works for this release, next time pass "
              f"--out {out.parent}", file=sys.stderr)
        return out, Path(details) if details else out.with_name(DETAILS_FILE)
    return out / SCORES_FILE, Path(details) if details else out / DETAILS_FILE


def read_details(path: str | Path) -> dict[str, dict]:
    """details.jsonl -> {input path: record} (the last record per path); partial or unreadable lines are
    skipped (a killed run may leave one)."""
    records: dict[str, dict] = {}
    path = Path(path)
    if not path.is_file():
        return records
    for line in _complete_lines(path.read_text(encoding="utf-8", errors="surrogateescape")):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("path"), str):
            records[record["path"]] = record
    return records


# ----------------------------------------------------------------------------------------------------
# Long videos scored in windows (`score --windows`): extra scores columns, segments.csv, per-window progress
#
# A long file is folded into its outputs only when its last window is scored: details line, then its
# segments.csv rows, then its scores.csv row (the mark that it is done). Until then every scored window is
# appended (fsynced) to OUT/progress/<name>-<hash>.jsonl, whose first line records the window plan; a run
# killed mid-file resumes from the last window in that file. `prune_rows` drops segments rows of files
# without a scores row (written before a kill, they are written again when the file is folded).

WINDOW_COLUMNS = ("windows", "gap_windows", "peak_start_s", "peak_end_s", "segments")
SEGMENT_COLUMNS = ("path", "label", "start_s", "end_s", "peak_score", "peak_start_s", "mean_score",
                   "first_window", "last_window")
PROGRESS_DIR = "progress"


def window_csv_columns(class_names: Sequence[str]) -> list[str]:
    """scores.csv columns of a windowed run: the usual ones (p_<class> = max over windows) + WINDOW_COLUMNS."""
    return [*csv_columns(class_names), *WINDOW_COLUMNS]


def prune_rows(path: Path, done: Iterable[str]) -> None:
    """Keep only the complete rows of CSV `path` whose "path" is in `done` (header kept)."""
    if not path.is_file():
        return
    _drop_partial_tail(path)
    header, rows = read_rows(path)
    done = set(done)
    kept = [row for row in rows if row.get("path") in done]
    if header and len(kept) != len(rows):
        atomic_write_text(path, csv_line(header) + "".join(csv_line([row[c] for c in header]) for row in kept))


def progress_path(folder: Path, video_path: str) -> Path:
    """The per-window progress file of one input: <stem>-<hash of the path>.jsonl in `folder`."""
    import hashlib

    digest = hashlib.sha1(video_path.encode("utf-8", errors="surrogateescape")).hexdigest()[:12]
    return folder / f"{Path(video_path).stem[:40]}-{digest}.jsonl"


def read_progress(path: Path, plan: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """{window index: record} of the windows finished in an earlier run with the same `plan` (its first
    line); a missing file, another plan or an unreadable header gives {} (and the file is started again by
    `start_progress`). A partial last line (a kill mid-write) is ignored; a window recorded twice keeps its
    first record."""
    if not path.is_file():
        return {}
    lines = _complete_lines(path.read_text(encoding="utf-8", errors="surrogateescape"))
    try:
        if not lines or json.loads(lines[0]).get("plan") != json.loads(json.dumps(plan)):
            return {}
    except (json.JSONDecodeError, AttributeError):
        return {}
    done: dict[int, dict[str, Any]] = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("index"), int):
            done.setdefault(record["index"], record)
    return done


def start_progress(path: Path, plan: dict[str, Any], done: dict[int, dict[str, Any]]) -> None:
    """Make `path` the progress file of `plan` holding exactly the windows in `done` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps({"plan": plan}) + "\n"
                      + "".join(json.dumps(done[k]) + "\n" for k in sorted(done)))


def append_windows(path: Path, records: list[dict[str, Any]]) -> None:
    """Append finished windows to a progress file in one fsynced write."""
    if records:
        append_synced(path, "".join(json.dumps(r) + "\n" for r in records))


def append_segments(path: Path, rows: list[list[Any]]) -> None:
    if rows:
        append_synced(path, "".join(csv_line(row) for row in rows))


def read_segments(path: str | Path) -> list[dict[str, str]]:
    """segments.csv -> its rows (dicts); [] when there is none."""
    path = Path(path)
    return read_rows(path)[1] if path.is_file() else []
