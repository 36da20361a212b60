"""The fine-detail video task (datasets.fine_detail): geometry and ground truth of the clips it renders."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from adafocus.datasets.fine_detail import FineDetailConfig, render_clip, write_fine_detail_videos

CONFIG = FineDetailConfig(num_frames=12, visible_frames=4)


def _footage() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.uniform(0.3, 0.6, size=(20, 130, 170, 3)).astype(np.float32)]


def _interior(frame: np.ndarray, box: list[float], border: int) -> np.ndarray:
    x0, y0, x1, y1 = (int(v) for v in box)
    return frame[y0 + border:y1 - border, x0 + border:x1 - border].mean(-1) / 255.0


def test_object_carries_the_class_in_two_pixel_stripes_where_the_truth_says():
    for index in (0, 1, 2, 3):
        frames, label, boxes = render_clip(index, CONFIG, _footage(), seed=0)
        assert frames.shape == (12, 120, 160, 3) and frames.dtype == np.uint8 and label == index % 2
        shown = [t for t, box in enumerate(boxes) if box is not None]
        assert len(shown) == 4 and shown == list(range(shown[0], shown[0] + 4))  # one contiguous run
        interior = _interior(frames[shown[0]], boxes[shown[0]], CONFIG.border)
        row_steps = np.abs(np.diff(interior, axis=0)).mean()
        col_steps = np.abs(np.diff(interior, axis=1)).mean()
        # horizontal stripes change along rows (class 0), vertical along columns (class 1); 2-pixel stripes
        # change every other pixel, so about half of the steps are full-contrast
        along, across = (row_steps, col_steps) if label == 0 else (col_steps, row_steps)
        assert along > 0.2 and across < 0.05
        for box in boxes:  # the object stays inside the centred square (the evaluation view)
            if box is not None:
                assert 20 <= box[0] and box[2] <= 140 and box[2] - box[0] == CONFIG.object_size


def test_class_fades_at_a_quarter_of_the_source_resolution():
    frames, _, boxes = render_clip(1, CONFIG, _footage(), seed=0)
    t = next(t for t, box in enumerate(boxes) if box is not None)
    small = torch.nn.functional.interpolate(torch.from_numpy(frames[t]).permute(2, 0, 1)[None].float() / 255,
                                            size=(30, 40), mode="area")[0].mean(0).numpy()
    x0, y0, x1, y1 = (int(v) // 4 for v in boxes[t])
    interior = small[y0 + 1:y1 - 1, x0 + 1:x1 - 1]
    assert np.abs(np.diff(interior, axis=0)).mean() < 0.05 and np.abs(np.diff(interior, axis=1)).mean() < 0.05


def test_clips_are_deterministic_and_labels_balanced():
    a, label_a, boxes_a = render_clip(5, CONFIG, _footage(), seed=3)
    b, label_b, boxes_b = render_clip(5, CONFIG, _footage(), seed=3)
    assert np.array_equal(a, b) and label_a == label_b and boxes_a == boxes_b
    assert {render_clip(i, CONFIG, _footage(), seed=3)[1] for i in range(4)} == {0, 1}
    with pytest.raises(ValueError, match="visible_frames"):
        FineDetailConfig(num_frames=4, visible_frames=5)



def test_writes_an_rlvs_layout_folder_with_truth_in_source_pixels(tmp_path):
    footage = tmp_path / "footage.mp4"
    from adafocus.datasets.synthetic import encode_video

    encode_video(footage, (np.random.default_rng(0).uniform(60, 160, (6, 130, 170, 3))).astype(np.uint8), 10, 20)
    truth = write_fine_detail_videos(tmp_path / "data", 2, config=CONFIG, footage=[footage])
    records = [json.loads(line) for line in truth.read_text(encoding="utf-8").splitlines()]
    assert [r["path"] for r in records] == ["NonViolence/clip_00000.mp4", "Violence/clip_00001.mp4"]
    from adafocus.datasets.video import probe_video

    meta = probe_video(tmp_path / "data" / records[1]["path"])
    assert meta.size == (120, 160) and meta.num_frames == 12
    assert sum(records[0]["object_frames"]) == 4 and records[0]["width"] == 160
