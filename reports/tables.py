"""Plain TSV tables (header + rows of dicts): the format of every per-fold and summary file."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path


def tsv_text(columns: Sequence[str], rows: Sequence[dict]) -> str:
    """Rows of dicts -> TSV text with `columns` as header (cells written with str())."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), delimiter="\t", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def read_tsv(path: str | Path) -> list[dict[str, str]]:
    """A TSV with a header -> list of {column: cell text}."""
    with Path(path).open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))
