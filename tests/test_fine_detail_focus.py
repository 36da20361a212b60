"""(slow) Native-resolution focus on a task the presets were not built on: `cpu-video` trained and scored with
the CLI, as a user would, on a fresh fine-detail set (datasets.fine_detail: 2-pixel stripes on an object 15% of
a 160 x 120 frame, on screen for a third of a 48-frame clip, over real footage, with a distractor and a weak noisy
border-colour hint), then checked on the held-out clips against the generator's boxes."""
from __future__ import annotations

import json
import sys

import pytest
from adafocus.apps.cli import main as cli_main
from adafocus.apps.demos.video import check_against_truth
from adafocus.core.run import RunFolder
from adafocus.datasets.fine_detail import write_fine_detail_videos

# Not a seed the preset was sized on (those were 0 and 7): the clips, footage windows and tracks are new.
FRESH_SEED = 23


@pytest.mark.slow
def test_cpu_video_reads_two_pixel_detail_and_boxes_the_object(tmp_path):
    data = tmp_path / "Real Life Violence Dataset"
    truth = write_fine_detail_videos(data, 600, seed=FRESH_SEED)
    run = tmp_path / "run"
    assert cli_main(["train", "--data", str(data), "--preset", "cpu-video", "--out", str(run), "--quiet"]) == 0

    test_clips = {path for path, _ in json.loads(RunFolder(run).split.read_text())["splits"]["test"]}
    assert len(test_clips) == 90
    out = tmp_path / "scored"
    assert cli_main(["score", *(str(data / p) for p in sorted(test_clips)), "--model", str(run), "--out", str(out),
                     "--quiet"]) == 0
    result = check_against_truth(out / "scores.csv", out / "details.jsonl", truth, test_clips)
    print("fine-detail held-out:", json.dumps(result), file=sys.stderr)
    assert result["files"] == 90
    assert result["accuracy"] >= 0.85
    # a box of the same size in the frame's centre holds the object's centre far less often
    assert result["box_hit_rate"] >= 0.7 and result["box_hit_rate"] > result["centre_box_hit_rate"] + 0.3
    # the object is on screen in a third of the frames; the chosen frames show it more often than that
    assert result["object_frame_rate"] > 0.5
