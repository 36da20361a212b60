"""Training on video datasets on disk: RLVS, Diving48 (V2) and any class-per-folder tree.

`adafocus train --data DIR_OR_ANNOTATIONS` lands here. `--window SECONDS` trains on long (untrimmed) videos
with one label per file, in class folders (Violence/NonViolence folders included): each epoch draws a random window of that length from every
training video, validation and test use the centre window (datasets.video_sets.WindowedVideoClips says how
to lay out your own videos); the model card records the window as `clip_seconds`, so `score --windows auto`
uses it. The kind of dataset is detected from the path, a
split is drawn once and stored in the run folder, the shared trainer runs (progress, per-epoch log,
resume), and at the end the calibration needed for compute budgets is written next to the checkpoint.

Run folder (file names: adafocus.core.run.RunFolder; beside what `adafocus.core.train.train` writes):
    classes.json        class names in label order (scoring uses them as column names)
    split.json          the stratified split (RLVS, class folders, Diving48's train/val cut)
    calibration.pt      all exits' logits on the validation split (refit any budget with `score --budget`)
    exit_policy.json    thresholds for the default budget (midway between the cheapest and dearest exit)
    evaluation.json     accuracy of best.pt on the test split, with every exit and at the default budget
The checkpoints carry a model card (domain "video", input spec, class names, and the calibration split:
the data folder and the val ids) so `adafocus calibrate` and `adafocus score` need nothing else.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from adafocus.core.config import Preset
from adafocus.core.device import resolve_device, worker_processes
from adafocus.core.exits import accuracy_by_exit, exit_accuracy, expected_cost
from adafocus.core.io import atomic_write_json
from adafocus.core.run import (
    CalibrationDataError,
    LoadedRun,
    RunFolder,
    frames_input,
    load_run,
    make_card,
    missing_data_message,
)
from adafocus.core.train import calibrate, collect_logits, train
from adafocus.datasets.video_sets import (
    RLVS,
    ClassFolderVideos,
    Diving48,
    VideoClipDataset,
    VideoSample,
    WindowedVideoClips,
    collate_clips,
    find_rlvs_root,
    make_or_load_split,
)
from torch.utils.data import DataLoader, Dataset

DATA_KINDS = ("rlvs", "diving48", "class-folders")
_DIVING48_NAMES = ("Diving48_V2_train.json", "Diving48_train.json")


@dataclass
class VideoData:
    """One video dataset cut into train (augmented), val and test (un-augmented) sets."""

    kind: str
    root: Path
    class_names: list[str]
    train: Dataset
    val: Dataset
    test: Dataset
    window_s: float | None = None  # long videos: the window each item is cut to (None: whole clips)


# Memory for whole decoded videos per training set (train, val), kept by the data loading worker.
DECODE_CACHE_BYTES = 2 << 30


def _diving48_root(path: Path) -> Path | None:
    """The Diving48 root for an annotation file or a folder holding (annotations/) Diving48 JSON files."""
    if path.is_file():
        if not path.name.startswith("Diving48_") or path.suffix != ".json":
            return None
        folder = path.parent
        return folder.parent if folder.name == "annotations" else folder
    for folder in (path, path / "annotations"):
        if any((folder / name).is_file() for name in _DIVING48_NAMES):
            return path
    return None


def detect_video_data(data: str | Path) -> tuple[str, Path]:
    """(kind, root) of a dataset path: "diving48" for a Diving48 annotation file or its folder, "rlvs"
    for a folder with Violence/NonViolence folders (up to two levels down), else "class-folders"."""
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    root = _diving48_root(path)
    if root is not None:
        return "diving48", root
    if path.is_file():
        raise ValueError(f"--data {data}: expected a dataset folder or a Diving48 annotation file "
                         f"(Diving48_V2_train.json)")
    try:
        return "rlvs", find_rlvs_root(path)
    except FileNotFoundError:
        return "class-folders", path


def _samples_subset(items: list[VideoSample], chosen: list[tuple[str, int]]) -> list[VideoSample]:
    by_path = {item.path: item for item in items}
    return [by_path[path] for path, _ in chosen]


def load_video_data(data: str | Path, *, num_frames: int, size: int, split_file: str | Path,
                    seed: int = 0, window_s: float | None = None) -> VideoData:
    """Open the dataset at `data` (see `detect_video_data`) as train / val / test sets.

    RLVS and class folders get a stratified 70/15/15 split, drawn once and stored in `split_file`.
    Diving48 keeps its official test set; 15% of its train set (stratified) becomes val, also stored.
    `window_s` (long videos with one label per file, in class folders or Violence/NonViolence folders; not
    Diving48): every item is a window of that many seconds (WindowedVideoClips: random in train, centred
    in val and test); the split is drawn over whole files, as without windows.
    """
    kind, root = detect_video_data(data)
    if window_s is not None and kind == "diving48":
        raise ValueError(f"--window is for class folders of long videos with one label per file; {root} is "
                         f"Diving48, whose clips are trimmed by its annotations: train without --window")
    sizes = {"num_frames": num_frames, "size": size}
    if kind == "rlvs":
        sets = {name: RLVS(root, split=name, split_file=split_file, train=name == "train", seed=seed, **sizes)
                for name in ("train", "val", "test")}
        rlvs_root = sets["train"].root
        if window_s is not None:  # long videos in Violence/NonViolence folders: the RLVS split, windowed
            sets = {name: WindowedVideoClips(sets[name].items, RLVS.CLASS_NAMES, train=name == "train",
                                             window_s=window_s, **sizes) for name in sets}
        return VideoData(kind, rlvs_root, list(RLVS.CLASS_NAMES), sets["train"], sets["val"], sets["test"],
                         window_s)
    if kind == "diving48":
        full = Diving48(root, "train", **sizes)
        split = make_or_load_split(full.samples, split_file, val_fraction=0.15, test_fraction=0.0, seed=seed,
                                   root=root)
        subsets = {name: VideoClipDataset(_samples_subset(full.items, split[name]), full.class_names,
                                          train=name == "train", **sizes) for name in ("train", "val")}
        test = Diving48(root, "test", train=False, **sizes)
        return VideoData(kind, root, full.class_names, subsets["train"], subsets["val"], test)
    full = ClassFolderVideos(root, train=True, **sizes)
    if len(full.class_names) < 2:
        raise ValueError(f"{root} has {len(full.class_names)} class folder(s); training needs at least two "
                         f"(one folder of videos per class)")
    split = make_or_load_split(full.samples, split_file, seed=seed, root=root)
    if window_s is not None:
        subsets = {name: WindowedVideoClips(_samples_subset(full.items, split[name]), full.class_names,
                                            train=name == "train", window_s=window_s, **sizes)
                   for name in ("train", "val", "test")}
    else:
        subsets = {name: VideoClipDataset(_samples_subset(full.items, split[name]), full.class_names,
                                          train=name == "train", **sizes) for name in ("train", "val", "test")}
    return VideoData(kind, root, full.class_names, subsets["train"], subsets["val"], subsets["test"], window_s)


def read_class_names(checkpoint: str | Path, num_classes: int) -> list[str]:
    """Class names stored in a run folder (a checkpoint's folder, or the folder itself), or class_0 ..
    class_{C-1} when absent. Prefer `adafocus.core.run.load_run(...).card.class_names`."""
    path = Path(checkpoint)
    names = RunFolder(path if path.is_dir() else path.parent).read_classes(num_classes)
    return names or [f"class_{i}" for i in range(num_classes)]


def _check_classes_unchanged(run: RunFolder, class_names: list[str]) -> None:
    path = run.classes
    if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != class_names:
        raise ValueError(f"{run.path} was trained on classes {json.loads(path.read_text(encoding='utf-8'))}, the data "
                         f"now has {class_names}; use a new --out")


def video_card(preset: Preset, videos: VideoData, split_file: Path):
    """The model card of a video run: frames input, class names, and where its val (calibration) split is."""
    split = json.loads(split_file.read_text(encoding="utf-8"))["splits"] if split_file.is_file() else {}
    calibration = {"source": "video-split", "data": str(Path(videos.root).absolute()), "kind": videos.kind,
                   "subset": "val", "ids": [key for key, _ in split.get("val", [])]}
    if videos.window_s is None:
        return make_card("video", preset.to_dict(), videos.class_names, calibration=calibration)
    # long videos: val is their centre windows; scoring's `--windows auto` reads the clips' duration
    calibration["window_s"] = videos.window_s
    spec = frames_input(preset.to_dict()["model"], clip_seconds=videos.window_s)
    return make_card("video", preset.to_dict(), videos.class_names, spec, calibration=calibration)


def video_calibration_set(run: LoadedRun, data: str | None) -> tuple[Dataset, object, dict]:
    """The un-augmented val split of a video run (the card's data folder, or `data` where it moved)."""

    record = dict(run.card.calibration or {})
    where = data or record.get("data")
    if where is None or not Path(where).exists():
        raise CalibrationDataError(missing_data_message(run, where, f"{len(record.get('ids', []))} val videos")
                                   if where else f"{run.checkpoint}'s card does not record its data folder; "
                                   "pass --data with the folder it was trained on")
    if record and not run.folder.split.is_file():
        raise CalibrationDataError(f"{run.folder.split} is missing: cannot tell which videos were held out")
    # A run with no calibration record (imported from the authors' files) draws its split of `data` now.
    spec = run.card.input
    try:
        videos = load_video_data(where, num_frames=spec["num_candidates"], size=spec["frame_size"],
                                 split_file=run.folder.split, seed=run.preset.train.seed,
                                 window_s=record.get("window_s"))
    except ValueError as error:
        raise CalibrationDataError(f"--data {where} is not the data {run.folder.path} was split on ({error})") from None
    return videos.val, collate_clips, {**record, "data": str(Path(where).absolute()), "own": True}


def default_budget(exit_costs: list[float]) -> float:
    """Midway between the cheapest (glance only) and the dearest (every patch) exit, in GMACs."""
    return 0.5 * (exit_costs[0] + exit_costs[-1])


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str | Path, dataset: Dataset, *, exit_policy=None, device: str = "auto",
                        batch_size: int = 32, workers: int = 0) -> dict:
    """Accuracy of every exit, and at `exit_policy`'s budget, of a checkpoint on an un-augmented dataset."""
    model = load_run(checkpoint, device=device).model
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_clips,
                        **worker_processes(workers, type(dataset)))
    logits, labels = collect_logits(model, loader, resolve_device(device))
    result = {"samples": len(labels), "accuracy_by_exit": accuracy_by_exit(logits, labels).tolist(),
              "exit_costs_gmacs": model.exit_costs()}
    result["accuracy"] = result["accuracy_by_exit"][-1]
    if exit_policy is not None:
        exits = exit_policy.assign(logits)
        result.update(budget_gmacs=exit_policy.budget, budget_accuracy=exit_accuracy(logits, labels, exits),
                      budget_mean_gmacs=expected_cost(exits, model.exit_costs()))
    return result


def train_on_videos(data: str | Path, preset: Preset, out_dir: str | Path, *, device: str = "auto",
                    resume: bool = True, progress: bool = True, log: Callable[[str], None] = print,
                    window_s: float | None = None) -> dict:
    """Train `preset` on the video dataset at `data`; then calibrate on val and evaluate on test.

    The preset's class count is set from the data. `window_s`: long videos with one label per file, cut to
    one window of that many seconds per item (see the module docstring). Returns the trainer's summary plus
    the paths of the calibration files and the test evaluation.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run = RunFolder(out_dir)
    c = preset.model
    videos = load_video_data(data, num_frames=c.num_candidates, size=c.frame_size,
                             split_file=run.split, seed=preset.train.seed, window_s=window_s)
    if c.num_classes != len(videos.class_names):
        log(f"{videos.kind} data at {videos.root} has {len(videos.class_names)} classes: the model gets "
            f"{len(videos.class_names)} outputs (preset said {c.num_classes})")
        c.num_classes = len(videos.class_names)
    _check_classes_unchanged(run, videos.class_names)
    run.write_classes(videos.class_names)
    for epoch_set in (videos.train, videos.val):  # read every epoch: decode each video once
        epoch_set.keep_decoded(DECODE_CACHE_BYTES)
    log(f"{videos.kind} data at {videos.root}: {len(videos.train)} train, {len(videos.val)} val, "
        f"{len(videos.test)} test videos; classes {videos.class_names}"
        + (f"; one {window_s:g} s window per video (random in training, centred for val and test)"
           if window_s is not None else ""))
    summary = train(preset, videos.train, videos.val, out_dir, device=device, resume=resume,
                    collate_fn=collate_clips, progress=progress, log=log,
                    card=video_card(preset, videos, run.split))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone calibrates and evaluates
        return summary

    best = run.best
    model = load_run(best, device=device).model
    budget = default_budget(model.exit_costs())
    loader = DataLoader(videos.val, batch_size=preset.train.batch_size, collate_fn=collate_clips,
                        **worker_processes(preset.train.workers, type(videos.val)))
    policy = calibrate(model, loader, budget, device=device, out_dir=out_dir)
    log(f"calibration logits of {len(videos.val)} val videos -> {run.calibration}; thresholds for "
        f"{budget:.4g} GMACs/video -> {run.exit_policy()}")
    evaluation = evaluate_checkpoint(best, videos.test, exit_policy=policy, device=device,
                                     batch_size=preset.train.batch_size, workers=preset.train.workers)
    atomic_write_json(run.evaluation, evaluation)
    log(f"test accuracy {evaluation['accuracy']:.4f} with every patch, {evaluation['budget_accuracy']:.4f} at "
        f"{evaluation['budget_mean_gmacs']:.4g} GMACs/video -> {run.evaluation}")
    return {**summary, "calibration": str(run.calibration), "exit_policy": str(run.exit_policy()),
            "evaluation": evaluation}
