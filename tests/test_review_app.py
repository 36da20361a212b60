"""Review app: pure logic (path safety, decision store, uploads, queues) and the pages through AppTest."""
from __future__ import annotations

import csv
import gzip
import io
import sqlite3
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _review_fixtures import SCANS, VIDEOS, write_all
from adafocus.apps import review_app
from adafocus.apps import review_logic as rl
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
        (outputs[name] / rl.DECISIONS_FILE).unlink(missing_ok=True)
    monkeypatch.setenv(review_app.ENV_SCANS, str(outputs["scans"]))
    monkeypatch.setenv(review_app.ENV_VIDEOS, str(outputs["videos"]))
    monkeypatch.setenv(review_app.ENV_MODEL, str(outputs["model"]))
    monkeypatch.setenv(review_app.ENV_MAX_UPLOAD, "5")
    return outputs


def run_app(view: str = "Scans") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60).run()
    if view != "Scans":
        at.radio(key="view").set_value(view).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


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


# -------------------------------------------------------------------------------------- decision store
def test_decision_store_keeps_history_newest_wins_and_exports(tmp_path):
    store = rl.DecisionStore(tmp_path / "d.sqlite")
    t0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    store.record("scan", "P1/ses-M000", "confirm", now=t0)
    store.record("scan", "P1/ses-M000", "note", " check hippocampus ", now=t0 + timedelta(minutes=5))
    store.record("video", "v.mp4", "dismiss")
    latest = rl.DecisionStore(tmp_path / "d.sqlite").latest("scan")  # reopened: persisted
    assert latest["P1/ses-M000"]["decision"] == "note"
    assert latest["P1/ses-M000"]["note"] == "check hippocampus"
    assert latest["P1/ses-M000"]["created_at"] == "2026-01-02T01:09:05+00:00"  # stored in UTC
    assert list(store.latest("video")) == ["v.mp4"]
    assert [d["decision"] for d in store.history("scan")] == ["confirm", "note"]
    rows = list(csv.DictReader(io.StringIO(store.export_csv())))
    assert [(r["kind"], r["decision"]) for r in rows] == [("scan", "confirm"), ("scan", "note"), ("video", "dismiss")]
    with pytest.raises(ValueError, match="decision must be"):
        store.record("scan", "x", "delete")
    with pytest.raises(ValueError, match="needs some text"):
        store.record("scan", "x", "note", "   ")
    with sqlite3.connect(tmp_path / "d.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0] == 3


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


# ---------------------------------------------------------------------------------------------- AppTest
def test_app_queue_is_sorted_and_filters_apply(app_env):
    at = run_app()
    options = at.selectbox(key="scan_open").options
    assert [o.removeprefix("⚑ ").split()[0] for o in options] == [p for p, _, _ in sorted(SCANS, key=lambda s: -s[1])]
    at.checkbox(key="scan_flagged").check().run()
    flagged = at.selectbox(key="scan_open").options
    assert flagged and all(o.startswith("⚑") for o in flagged) and len(flagged) < len(options)
    at.slider(key="scan_min_risk").set_value(0.5).run()
    assert [o.split()[1] for o in at.selectbox(key="scan_open").options] == ["P000"]


def test_app_scan_view_shows_strip_planes_raw_and_no_header_identifiers(app_env):
    at = run_app()
    assert [m.value for m in at.metric][:3] == ["class 1", "0.97", "2"]
    # strip + 3 planes + slider marks + raw/preprocessed pair
    assert len(at.image) == 7
    text = all_text(at)
    assert "Selected slices" in text and "Raw scan beside" in text
    assert "DOE" not in text


def test_app_saves_a_decision_and_the_queue_shows_it(app_env):
    at = run_app()
    item = "P000/ses-M000"  # a flagged one
    at.selectbox(key="scan_open").set_value(item).run()
    assert at.metric[1].value == "0.62"
    at.radio(key="scan_decision").set_value("dismiss").run()
    at.text_area(key="scan_note").input("motion artefact").run()
    at.button(key="scan_save").click().run()
    assert not at.exception
    assert at.success[0].value.startswith("Saved decision: dismiss at ")
    assert "1 reviewed" in " ".join(c.value for c in at.caption)
    saved = rl.DecisionStore(app_env["scans"] / rl.DECISIONS_FILE).latest("scan")
    assert saved[item]["note"] == "motion artefact"
    at.selectbox(key="scan_state").set_value("not reviewed").run()
    assert not any(o.endswith("dismiss") for o in at.selectbox(key="scan_open").options)
    assert len(at.selectbox(key="scan_open").options) == len(SCANS) - 1
    at.radio(key="view").set_value("Decisions").run()
    assert at.download_button(key="scan_export") is not None


def test_app_video_view_lists_frames_and_jumps(app_env):
    at = run_app("Videos")
    assert at.selectbox(key="video_open").value == "brawl.mp4"
    assert [b.label for b in at.button if b.label.startswith("▶")] == ["▶ 0.40 s"]
    assert at.get("video")[0].proto.start_time == 0
    at.selectbox(key="video_open").set_value("fight.mp4").run()
    assert [b.label for b in at.button if b.label.startswith("▶")] == ["▶ 0.40 s", "▶ 1.60 s"]
    assert len(at.image) == 2  # one framed cell per selected frame
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


def test_app_budget_switch_changes_the_exit_used_for_scoring(app_env):
    at = run_app("Score a scan")
    at.selectbox(key="score_pick").set_value("cache/sub-P000/t1_pre.nii.gz").run()
    at.checkbox(key="score_preprocess").uncheck().run()
    at.button(key="score_run").click().run()
    assert "exit 2" in at.success[0].value  # no budget: every exit
    at.radio(key="view").set_value("Budget").run()
    low = at.slider(key="budget_slider").min
    at.slider(key="budget_slider").set_value(low).run()
    at.button(key="budget_apply").click().run()
    assert not at.exception
    assert at.success[0].value.startswith(f"Active budget: {low:.5g} GMACs")
    assert f"{low:.4g} GMACs" in at.sidebar.caption[0].value
    at.radio(key="view").set_value("Score a scan").run()  # widgets of a page not shown are reset
    at.selectbox(key="score_pick").set_value("cache/sub-P000/t1_pre.nii.gz").run()
    at.checkbox(key="score_preprocess").uncheck().run()
    at.button(key="score_run").click().run()
    assert "exit 0" in at.success[0].value  # the cheapest budget stops after the glance


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
