"""`adafocus train --window SECONDS`: long videos with one label per file (class folders, or Violence/NonViolence
folders) trained on one window per item (random each epoch, centred for val/test), the window recorded in
the model card for `score --windows auto`; Diving48 and the non-video data kinds refuse the flag."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from adafocus.apps.cli import main as cli_main
from adafocus.apps.runs.video import load_video_data, train_on_videos, video_calibration_set
from adafocus.apps.scoring.long_videos import score_long_videos
from adafocus.apps.scoring.outputs import read_details
from adafocus.core.run import load_run
from adafocus.datasets.video_sets import VideoSample, WindowedVideoClips, window_span

sys.path.insert(0, str(Path(__file__).parent))
from _policy_fixtures import tiny_video_preset
from _video_fixtures import counter_of, write_counter_video

FPS = 10


def test_window_span_is_random_in_training_centred_otherwise_and_whole_for_short_videos():
    assert window_span(100, 10.0, 2.0) == (40, 60)  # the centre window of 20 frames
    assert window_span(101, 10.0, 2.0) == (40, 60)
    assert window_span(15, 10.0, 2.0) == (0, 15) == window_span(15, 10.0, 2.0, rng=np.random.default_rng(0))
    assert window_span(20, 10.0, 2.0, rng=np.random.default_rng(0)) == (0, 20)  # exactly one window
    rng = np.random.default_rng(0)
    spans = [window_span(100, 10.0, 2.0, rng=rng) for _ in range(200)]
    assert all(end - start == 20 and 0 <= start and end <= 100 for start, end in spans)
    starts = {start for start, _ in spans}
    assert min(starts) <= 5 and max(starts) >= 75 and len(starts) > 40  # spread over the whole video
    assert window_span(90, 29.97, 1.0) == (30, 60)  # round(window_s * fps) frames, as score --windows cuts
    for bad in ((0, 10.0, 2.0), (10, 0.0, 2.0), (10, 10.0, 0.0)):
        with pytest.raises(ValueError):
            window_span(*bad)


def _long_videos(folder: Path, frames: dict[str, int]) -> list[VideoSample]:
    folder.mkdir(parents=True, exist_ok=True)
    return [VideoSample(str(write_counter_video(folder / name, count, fps=FPS, height=32, width=32)), 0)
            for name, count in frames.items()]


def test_windowed_clips_sample_one_window_per_draw(tmp_path):
    long_video, short_video = _long_videos(tmp_path, {"long.mp4": 80, "short.mp4": 12})
    train = WindowedVideoClips([long_video, short_video], ["a"], num_frames=4, size=32, train=True, window_s=2.0)
    starts = set()
    for _ in range(12):
        item = train[0]
        frames = item["info"]["frame_indices"]
        assert max(frames) - min(frames) < 20  # inside one 2 s window (20 frames)
        # the pixels are those frames (flat grey counter frames: the crop does not change their value)
        assert counter_of((item["clip"].permute(0, 2, 3, 1).numpy() * 255).round()) == frames
        starts.add(min(frames) // 5)
    assert len(starts) >= 3  # a new window each time the item is drawn
    val = WindowedVideoClips([long_video, short_video], ["a"], num_frames=4, size=32, train=False, window_s=2.0)
    assert val.window(0) == (30, 50)
    assert val[0]["info"]["frame_indices"] == [32, 37, 42, 47] == val[0]["info"]["frame_indices"]  # segment centres
    assert val.window(1) == (0, 12) and max(val[1]["info"]["frame_indices"]) < 12  # shorter than a window: whole
    with pytest.raises(ValueError):
        WindowedVideoClips([long_video], ["a"], num_frames=4, size=32, train=True, window_s=0)


def _class_tree(root: Path, per_class: int = 6) -> Path:
    for label, name in enumerate(("calm", "event")):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            write_counter_video(root / name / f"{name}_{i}.mp4", 60 + 3 * i, fps=FPS, height=32, width=32)
    return root


def test_load_video_data_windows_class_folders_only(tmp_path):
    root = _class_tree(tmp_path / "data")
    data = load_video_data(root, num_frames=4, size=32, split_file=tmp_path / "split.json", window_s=2.0)
    assert data.window_s == 2.0
    for subset in (data.train, data.val, data.test):
        assert isinstance(subset, WindowedVideoClips) and subset.window_s == 2.0
    assert data.train.train and not data.val.train
    plain = load_video_data(root, num_frames=4, size=32, split_file=tmp_path / "split.json")
    assert not isinstance(plain.train, WindowedVideoClips) and plain.window_s is None
    assert plain.train.samples == data.train.samples  # the same split of whole files
    rlvs = tmp_path / "rlvs"  # long videos in Violence/NonViolence folders: RLVS's layout and split, windowed
    for name in ("Violence", "NonViolence"):
        _long_videos(rlvs / name, {f"{name}_{i}.mp4": 40 for i in range(4)})
    windowed = load_video_data(rlvs, num_frames=4, size=32, split_file=tmp_path / "s2.json", window_s=2.0)
    whole = load_video_data(rlvs, num_frames=4, size=32, split_file=tmp_path / "s2.json")
    assert isinstance(windowed.train, WindowedVideoClips) and not isinstance(whole.train, WindowedVideoClips)
    assert windowed.train.samples == whole.train.samples and windowed.class_names == ["NonViolence", "Violence"]
    diving = tmp_path / "d48"
    diving.mkdir()
    (diving / "Diving48_V2_train.json").write_text("[]", encoding="utf-8")
    with pytest.raises(ValueError, match="trimmed by its annotations"):
        load_video_data(diving, num_frames=4, size=32, split_file=tmp_path / "s3.json", window_s=2.0)


def test_train_on_long_videos_records_the_window_for_scoring(tmp_path):
    torch.manual_seed(0)
    root = _class_tree(tmp_path / "data")
    run = tmp_path / "run"
    messages: list[str] = []
    train_on_videos(root, tiny_video_preset(batch_size=4), run, device="cpu", progress=False, log=messages.append,
                    window_s=2.0)
    assert any("one 2 s window per video" in m for m in messages)
    loaded = load_run(run, device="cpu")
    assert loaded.card.input["clip_seconds"] == 2.0 and loaded.card.calibration["window_s"] == 2.0
    calibration_set, _, _ = video_calibration_set(loaded, None)  # calibrate re-reads val as centre windows
    assert isinstance(calibration_set, WindowedVideoClips) and not calibration_set.train
    frames = calibration_set[0]["info"]["frame_indices"]
    assert max(frames) - min(frames) < 20
    # `score --windows auto` scores long files in windows of the length the model was trained on
    video = root / "event" / "event_5.mp4"
    score_long_videos([str(video)], run, tmp_path / "out" / "scores.csv", details=tmp_path / "out" / "details.jsonl",
                      windows="auto", device="cpu", engine="torch", progress=False, log=lambda _: None)
    record = read_details(tmp_path / "out" / "details.jsonl")[str(video)]
    assert record["window_s"] == 2.0 and record["stride_s"] == 1.0
    assert [(w["start_s"], w["end_s"]) for w in record["windows"]][:2] == [(0.0, 2.0), (1.0, 3.0)]


def test_train_cli_window_flag(tmp_path, capsys):
    assert cli_main(["train", "--data", "synthetic", "--window", "4", "--out", str(tmp_path / "run")]) == 2
    assert "--window is for long videos in class folders" in capsys.readouterr().err
    diving = tmp_path / "d48"
    diving.mkdir()
    (diving / "Diving48_V2_train.json").write_text("[]", encoding="utf-8")
    assert cli_main(["train", "--data", str(diving), "--window", "4", "--preset", "cpu-video",
                     "--out", str(tmp_path / "run2")]) == 2
    assert "trimmed by its annotations" in capsys.readouterr().err
