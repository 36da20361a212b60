"""Atomic writers: the destination changes only when writing succeeds, and no temp files are left."""
import json
import os

import pytest
from adafocus.core.io import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_text_bytes_and_json_writers_replace_content(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    atomic_write_json(tmp_path / "o.json", {"a": [1, 2.5, None]})
    assert json.loads((tmp_path / "o.json").read_text(encoding="utf-8")) == {"a": [1, 2.5, None]}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.bin", "o.json", "out.txt"]


def test_content_is_invisible_until_the_block_ends(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with atomic_write(target) as handle:
        handle.write("new")
        handle.flush()
        assert target.read_text(encoding="utf-8") == "old"
    assert target.read_text(encoding="utf-8") == "new"


def test_exception_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target, "wb") as handle:
        handle.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_exception_on_new_file_creates_nothing(tmp_path):
    with pytest.raises(ValueError), atomic_write(tmp_path / "new.json") as handle:
        handle.write("{")
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_permissions_follow_umask_not_tempfile_default(tmp_path):
    previous = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644


def test_bad_mode_and_missing_folder_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "a"):
        pass
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_text(tmp_path / "missing" / "x.txt", "x")
