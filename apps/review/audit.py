"""The review app's audit log: an append-only SQLite table of decisions beside the outputs.

Every row says who decided (the reviewer's name), when (UTC), what (confirm / dismiss / note, with the
note), which decision it replaced (the item's previous decision, read in the same transaction), and which
model run produced the prediction. Rows are never updated or deleted: SQLite triggers refuse both, so a
later decision is a new row and the current decision of an item is its latest row.

Files written by the earlier decision store (a `decisions` table without reviewer) are kept: their rows
are copied once into the audit table with the reviewer "(not recorded)".
"""
from __future__ import annotations

import csv
import io
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

DECISIONS = ("confirm", "dismiss", "note")
AUDIT_FILE = "review_decisions.sqlite"
AUDIT_COLUMNS = ("id", "created_at", "reviewer", "kind", "item_id", "decision", "note", "previous_decision",
                 "model_run")
UNRECORDED_REVIEWER = "(not recorded)"

_APPEND_ONLY = "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END"
_SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS audit_log (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, "
     "reviewer TEXT NOT NULL, kind TEXT NOT NULL, item_id TEXT NOT NULL, decision TEXT NOT NULL, "
     "note TEXT NOT NULL, previous_decision TEXT NOT NULL, model_run TEXT NOT NULL)"),
    "CREATE INDEX IF NOT EXISTS audit_item ON audit_log (kind, item_id, id)",
    f"CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_log {_APPEND_ONLY}",
    f"CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_log {_APPEND_ONLY}",
)


class AuditLog:
    """Append-only review decisions in an SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            fresh = db.execute("SELECT name FROM sqlite_master WHERE name = 'audit_log'").fetchone() is None
            for statement in _SCHEMA:
                db.execute(statement)
            if fresh:
                _copy_legacy_rows(db)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10)

    def record(self, kind: str, item_id: str, decision: str, *, reviewer: str, note: str = "",
               model_run: str = "", now: datetime | None = None) -> dict:
        """Append one decision; returns the stored row as a dict (previous_decision filled in)."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {DECISIONS}, got {decision!r}")
        if decision == "note" and not note.strip():
            raise ValueError("a note decision needs some text")
        if not reviewer.strip():
            raise ValueError("enter your name before deciding: every decision records its reviewer")
        stamp = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).isoformat(timespec="seconds")
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")  # the previous decision and the new row in one transaction
            previous = db.execute("SELECT decision FROM audit_log WHERE kind = ? AND item_id = ? "
                                  "ORDER BY id DESC LIMIT 1", (kind, item_id)).fetchone()
            values = (stamp, reviewer.strip(), kind, item_id, decision, note.strip(),
                      previous[0] if previous else "", model_run)
            cursor = db.execute("INSERT INTO audit_log (created_at, reviewer, kind, item_id, decision, note, "
                                "previous_decision, model_run) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)
            return dict(zip(AUDIT_COLUMNS, (cursor.lastrowid, *values)))

    def history(self, kind: str | None = None, item_id: str | None = None) -> list[dict]:
        """Rows oldest first, optionally of one kind and one item."""
        where, params = [], []
        for column, value in (("kind", kind), ("item_id", item_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        query = f"SELECT {', '.join(AUDIT_COLUMNS)} FROM audit_log"
        if where:
            query += " WHERE " + " AND ".join(where)
        with self._connect() as db:
            rows = db.execute(query + " ORDER BY id", params).fetchall()
        return [dict(zip(AUDIT_COLUMNS, row)) for row in rows]

    def latest(self, kind: str) -> dict[str, dict]:
        """item_id -> its current decision (the latest row)."""
        return {row["item_id"]: row for row in self.history(kind)}

    def export_csv(self, kind: str | None = None) -> str:
        """The audit log as CSV text, one row per decision, columns AUDIT_COLUMNS."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(AUDIT_COLUMNS))
        writer.writeheader()
        writer.writerows(self.history(kind))
        return buffer.getvalue()


def _copy_legacy_rows(db: sqlite3.Connection) -> None:
    if db.execute("SELECT name FROM sqlite_master WHERE name = 'decisions'").fetchone() is None:
        return
    rows = db.execute("SELECT kind, item_id, decision, note, created_at FROM decisions ORDER BY id").fetchall()
    previous: dict[tuple[str, str], str] = {}
    for kind, item_id, decision, note, created_at in rows:
        db.execute("INSERT INTO audit_log (created_at, reviewer, kind, item_id, decision, note, previous_decision, "
                   "model_run) VALUES (?, ?, ?, ?, ?, ?, ?, '')",
                   (created_at, UNRECORDED_REVIEWER, kind, item_id, decision, note,
                    previous.get((kind, item_id), "")))
        previous[(kind, item_id)] = decision
