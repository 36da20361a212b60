"""Review app on long videos scored in windows (`adafocus score --windows`): the queue sorted by peak score,
the shaping of a file's windows and segments for its timeline (pure logic), and the video page through
AppTest (timeline chart, segment buttons that move the player and show the segment's peak window)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from _review_fixtures import LONG_VIDEOS, SHORT_CLIP, long_window_records, write_long_video_outputs
from adafocus.apps.review import app as review_app
from adafocus.apps.review import audit as ra
from adafocus.apps.review import logic as rl
from adafocus.apps.review import render as rr
from adafocus.apps.scoring.outputs import read_details
from adafocus.apps.scoring.windows import flag_segments
from streamlit.testing.v1 import AppTest

APP = str(Path(review_app.__file__))
REVIEWER = "Dr Test"


@pytest.fixture(scope="module")
def long_outputs(tmp_path_factory) -> Path:
    return write_long_video_outputs(tmp_path_factory.mktemp("long-review"))


@pytest.fixture
def long_env(long_outputs, monkeypatch):
    (long_outputs / ra.AUDIT_FILE).unlink(missing_ok=True)
    monkeypatch.setenv(review_app.ENV_VIDEOS, str(long_outputs))
    for name in (review_app.ENV_SCANS, review_app.ENV_MODEL):
        monkeypatch.delenv(name, raising=False)
    return long_outputs


def _details(folder: Path, name: str) -> dict:
    return read_details(folder / "windowed" / "details.jsonl")[name]


# ---------------------------------------------------------------------------------------------- queue
def test_queue_sorts_windowed_files_by_peak_score_beside_short_clips(long_outputs):
    queue = rl.flag_and_sort(rl.video_queue(long_outputs), 0.8)
    assert list(queue["name"]) == ["long_a.mp4", "clip.mp4", "long_b.mp4"]  # peaks 0.92, 0.6 (a clip's risk), 0.35
    rows = {r["name"]: r for r in queue.to_dict("records")}
    long_a = rows["long_a.mp4"]
    assert long_a["windowed"] and long_a["risk"] == pytest.approx(0.92) == long_a["peak_score"]
    assert (long_a["peak_start_s"], long_a["peak_end_s"], long_a["windows"], long_a["segments"]) == (12.0, 16.0, 14, 2)
    assert long_a["prediction"] == "Violence" and long_a["confidence"] == pytest.approx(0.92)
    calm = rows["long_b.mp4"]  # labelled NonViolence: scores.csv's peak window is its calmest, not shown as a peak
    assert calm["prediction"] == "NonViolence" and calm["risk"] == pytest.approx(0.35)
    assert not rl.given_number(calm["peak_start_s"])
    clip = rows["clip.mp4"]  # a short clip keeps today's risk (1 - p of the first class) and is not windowed
    assert not clip["windowed"] and clip["risk"] == pytest.approx(1 - SHORT_CLIP[1])
    assert rl.queue_item_label(long_a) == "long_a.mp4 · Violence · peak 0.92 at 12–16 s"
    assert rl.queue_item_label(clip | {"needs_review": True, "decision": "confirm"}) == (
        "⚑ clip.mp4 · Violence · risk 0.60 · confirm")


def test_peak_score_is_the_highest_window_score_of_any_class_but_the_first():
    assert rl.peak_score([0.99, 0.7]) == 0.7
    assert rl.peak_score([0.9, 0.2, 0.4]) == 0.4
    assert rl.peak_score([0.3]) == 0.3


# ------------------------------------------------------------------------------------------ pure shaping
def test_file_segments_come_from_segments_csv_for_that_file_only(long_outputs):
    segments = rl.read_file_segments(long_outputs / "windowed", "long_a.mp4")
    assert [(s["label"], s["start_s"], s["end_s"], s["first_window"], s["last_window"]) for s in segments] == [
        ("Violence", 10.0, 18.0, 5, 7), ("Violence", 22.0, 26.0, 11, 11)]
    assert segments[0]["peak_score"] == pytest.approx(0.92) and segments[0]["peak_start_s"] == 12.0
    assert segments[0]["mean_score"] == pytest.approx((0.6 + 0.92 + 0.7) / 3)
    assert rl.read_file_segments(long_outputs / "windowed", "long_b.mp4") == []
    assert rl.read_file_segments(long_outputs / "clips", "clip.mp4") == []  # no segments.csv there
    rows = [{"path": "x.mp4", "label": "V", "start_s": "4", "end_s": "8", "peak_score": "0.9", "peak_start_s": "4",
             "mean_score": "0.8", "first_window": "2", "last_window": "2"},
            {"path": "x.mp4", "label": "V", "start_s": "0", "end_s": "4", "peak_score": "0.7", "peak_start_s": "0",
             "mean_score": "0.7", "first_window": "0", "last_window": "0"},
            {"path": "x.mp4", "label": "V", "start_s": "oops"}]
    assert [s["start_s"] for s in rl.file_segments(rows, "x.mp4")] == [0.0, 4.0]  # time order; bad row skipped


def test_window_rows_gaps_and_duration_of_a_long_file(long_outputs):
    record = _details(long_outputs, "long_b.mp4")
    assert rl.is_windowed(record) and not rl.is_windowed({"selected": []})
    assert rl.timeline_classes(record) == ["Violence"]
    rows = rl.window_score_rows(record)
    seconds, scores, gaps = LONG_VIDEOS["long_b.mp4"]
    assert [r["window"] for r in rows] == [k for k in range(len(scores)) if k not in gaps]  # gaps have no score
    assert [r["score"] for r in rows] == [s for k, s in enumerate(scores) if k not in gaps]
    assert rows[0] | {} == {"window": 0, "start_s": 0.0, "end_s": 4.0, "mid_s": 2.0, "class": "Violence",
                            "score": 0.2, "exit": 2, "gmacs": 0.05}
    assert len(rl.window_score_rows(record, ["NonViolence", "Violence"])) == 2 * len(rows)
    assert rl.gap_bands(record) == [{"start_s": 6.0, "end_s": 12.0, "reason": record["gaps"][0]["reason"]}]
    assert rl.file_duration_s(record) == seconds
    assert rl.timeline_classes({"probs": {"a": 0.1, "b": 0.2, "c": 0.7}}) == ["b", "c"]


def test_a_segment_opens_its_peak_window_and_a_file_its_peak():
    records = long_window_records([0.1, 0.6, 0.9, 0.7, 0.1])
    record = {"windows": records, "flagged": ["Violence"]}
    (segment,) = [s.__dict__ for s in flag_segments(records, "Violence", 0.5)]
    assert rl.segment_window(record, segment) == 2
    # the peak's start not among the windows (another stride): the best-scoring window of the segment
    assert rl.segment_window(record, segment | {"peak_start_s": 99.0}) == 2
    assert rl.segment_window({"windows": []}, segment) is None
    assert rl.default_window(record) == 2 and rl.default_window({"windows": []}) is None
    calm = {"windows": long_window_records([0.1, 0.3, 0.2]), "flagged": ["Violence"]}
    assert rl.default_window(calm) == 1  # a calm file opens where it came closest to being flagged
    assert rl.focus_of(record) == records[2]["selected"] and rl.focus_of(record, 4) == records[4]["selected"]
    assert rl.focus_of({"selected": [{"frame": 3}]}) == [{"frame": 3}]  # a clip: its own frames
    assert rl.window_of(record, 7) is None
    assert all(records[2]["start_s"] <= s["time_s"] < records[2]["end_s"] for s in rl.focus_of(record))


def test_player_start_and_timeline_clicks():
    assert rl.player_start(12.0) == 12 and rl.player_start(12.9) == 12 and rl.player_start(-1) == 0
    assert rl.player_start(0.6 * 3 / 0.18) == 10  # float noise just under a whole second still lands on it
    segments = [{"start_s": 10.0, "peak_window": 6}, {"start_s": 22.0, "peak_window": 11}]
    assert rl.timeline_pick(None, segments) == (None, {"segment": [], "window": []})
    band = {"segment": [{"start_s": 10.0}], "window": []}
    picked, state = rl.timeline_pick(band, segments)
    assert picked == {"start_s": 10.0, "window": 6}  # the segment's start, and its peak window
    assert rl.timeline_pick(band, segments, state)[0] is None  # a selection the chart kept: already acted on
    point = type("Selection", (), {"segment": [{"start_s": 10.0}], "window": [{"window": 3, "start_s": 6.0}]})()
    assert rl.timeline_pick(point, segments, state)[0] == {"start_s": 6.0, "window": 3}  # only the point is new
    both = {"segment": [{"start_s": 22.0}], "window": [{"window": 12, "start_s": 24.0}]}
    assert rl.timeline_pick(both, segments, state)[0] == {"start_s": 22.0, "window": 11}  # a band wins
    assert rl.timeline_pick({"segment": [{"start_s": 5.0}]}, segments)[0] == {"start_s": 5.0, "window": None}


def test_long_timeline_chart_layers_and_selections(long_outputs):
    record = _details(long_outputs, "long_a.mp4")
    segments = rl.read_file_segments(long_outputs / "windowed", "long_a.mp4")
    chart = rr.long_timeline_chart(rl.window_score_rows(record), segments, [], 0.5, rl.file_duration_s(record))
    spec = chart.to_dict()
    marks = [layer["mark"]["type"] for layer in spec["layer"]]
    assert marks == ["rect", "rule", "line", "point"]
    assert {p["name"] for p in spec.get("params", [])} | {p["name"] for layer in spec["layer"]
                                                          for p in layer.get("params", [])} >= {"segment", "window"}
    bands = next(d for d in spec["datasets"].values() if d and "mean_score" in d[0])
    assert [(b["start_s"], b["end_s"]) for b in bands] == [(10.0, 18.0), (22.0, 26.0)]


# ---------------------------------------------------------------------------------------------- app
def _run(view: str = "Videos") -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.session_state["reviewer"] = REVIEWER
    at.run()
    at.radio(key="view").set_value(view).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _picker(at: AppTest):
    return next(s for s in at.selectbox if s.label == "Open video")


def _window_caption(at: AppTest) -> str:
    return next(m.value for m in at.markdown if m.value.startswith("**Window ") and ":" in m.value.split("**")[1])


def test_app_long_video_timeline_segments_play_from_their_start(long_env):
    at = _run()
    assert _picker(at).value == "long_a.mp4"  # the highest peak first
    assert _picker(at).options[:3] == ["long_a.mp4 · Violence · peak 0.92 at 12–16 s",
                                       "⚑ clip.mp4 · Violence · risk 0.60", "⚑ long_b.mp4 · NonViolence · peak 0.35"]
    assert [m.label for m in at.metric][:3] == ["Prediction", "Peak score", "Peak at"]
    assert at.metric[2].value == "12–16 s"
    assert len(at.get("vega_lite_chart")) == 1  # the window-score timeline
    segments = [b for b in at.button if b.label.startswith("▶ Violence")]
    assert [b.label for b in segments] == ["▶ Violence 10–18 s · peak 0.92 · mean 0.74",
                                           "▶ Violence 22–26 s · peak 0.55 · mean 0.55"]
    assert at.get("video")[0].proto.start_time == 0
    assert _window_caption(at).startswith("**Window 6: 12–16 s**")  # the file opens on its peak window
    assert len(at.image) == 2  # that window's two chosen frames, with their boxes
    segments[1].click().run()
    assert not at.exception
    assert at.get("video")[0].proto.start_time == 22  # the player moved to the segment's start
    assert _window_caption(at).startswith("**Window 11: 22–26 s**")  # and shows the segment's peak window
    assert [b.label for b in at.button if b.label.startswith("▶ 2")] == ["▶ 23.00 s", "▶ 24.00 s"]
    next(b for b in at.button if b.label == "▶ 24.00 s").click().run()
    assert at.get("video")[0].proto.start_time == 24  # a chosen frame's button still jumps to that frame


def test_app_long_video_with_gaps_and_no_segments_and_a_short_clip(long_env):
    at = _run()
    _picker(at).set_value("long_b.mp4").run()
    assert not at.exception
    text = "\n".join(str(c.value) for c in at.caption)
    assert "Not scored 6–12 s: corrupt data" in text and "No segment reached the threshold" in text
    assert not [b for b in at.button if b.label.startswith("▶ Violence")]
    _picker(at).set_value("clip.mp4").run()  # a short clip: the glance timeline, as before
    assert not at.exception
    assert any("Where the model looked in the whole video" in m.value for m in at.markdown)
    assert [b.label for b in at.button if b.label.startswith("▶")] == ["▶ 0.48 s"]


def test_app_page_mode_shows_a_long_files_peak_window_thumbnail(long_env):
    at = _run()
    at.radio(key="video_mode").set_value("A page at once").run()
    assert not at.exception
    assert len(at.image) == 3  # long_a's and long_b's peak windows, the clip's first frame
