"""`adafocus bench focus`: does the policy look at the right place? A claim about learning, as a rate over seeds.

For each training seed the task's recipe is trained and measured on held-out data, then checked; the result
is "k of N seeds meet every check", with every check, its threshold and every seed's numbers in
``docs/results/focus_<task>.json`` (``reports.results.save_result``: commit, CPU flags, threads, date).

Tasks (a ``FocusTask`` each: how to make the data, how to train a seed, what is held out, which checks):

- ``synthetic``: ``cpu-synthetic`` on the synthetic focus task (``datasets.synthetic``; apps.runs.synthetic);
- ``fine-detail``: ``cpu-video`` trained as ``adafocus train`` does (``apps.runs.video.train_on_videos``) on the
  fine-detail clips over real footage (``datasets.fine_detail``, generator seed FINE_DETAIL_DATA_SEED), measured
  on the run's own held-out test split against the generator's boxes;
- ``mri-lesion``: ``cpu-mri`` with the lesion recipe of ``apps.bench.mri_focus`` on the synthetic lesion task;
- ``fine-detail-blind`` / ``fine-detail-blind-local``: the fine-detail clips with no class hint
  (``FineDetailConfig(hint=0)``) and ``cpu-video`` glancing at 32 px, where the glance cannot read the stripes
  (at 64 px it reads them through aliasing, docs/notes/glance-hint.md): the paper's box proxy, and the local cell
  proxy (``spatial_proxy="local_cells"``) that learns where from what the local encoder reads.

Per seed, with the same trained weights and the same number of P x P patches (equal GMACs, itself a check):
accuracy of the learned policies, of random and centred patches on the learned frames, of learned patches on
uniform frames, and of the glance-only exit; the share of boxes on object frames that hold the object's
centre (``box_hit``); the share of chosen frames / slices that show it (``frame_hit``) against the share of
all candidates that do (``frame_chance``); for the MRI task, whether the selection follows the lesion from
subject to subject (``apps.bench.mri_focus.lesion_following``: correlations r). What varies between seeds is
the training seed (initialisation, sampling, augmentation and, for videos, the run's stratified split); the
data are made once per task. A seed's measurements are kept in ``WORK/seed-<s>/measured.json``, so an
interrupted bench resumes; the checks are evaluated afresh from them.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from adafocus.apps.bench.mri_focus import (
    FIXED_PLACE_MARGIN,
    FOLLOW_MIN,
    SELECTION_BASELINES,
    SPLITS,
    TRAINING_THREADS,
    focus_preset,
    lesion_following,
    lesion_task_splits,
    slice_chance,
    train_lesion_focus,
)
from adafocus.apps.runs.synthetic import (
    BASELINE_POLICIES,
    compare_policies,
    synthetic_splits,
    train_synthetic,
    with_policies,
)
from adafocus.apps.runs.video import load_video_data, train_on_videos
from adafocus.core.config import get_preset
from adafocus.core.exits import accuracy_by_exit
from adafocus.core.io import atomic_write_json
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import RunFolder, load_run
from adafocus.core.train import collect_logits
from adafocus.datasets.fine_detail import FineDetailConfig, write_fine_detail_videos
from adafocus.datasets.synthetic import collate
from adafocus.datasets.synthetic_mri import LesionTaskConfig
from torch.utils.data import DataLoader, Dataset

TASKS = ("synthetic", "fine-detail", "mri-lesion", "fine-detail-blind", "fine-detail-blind-local")
FINE_DETAIL_DATA_SEED = 23  # not a seed cpu-video was sized on (those were 0 and 7)
FINE_DETAIL_VIDEOS = 600    # 420 train / 90 val / 90 test
EQUAL_COST_TOLERANCE = 1e-6


# ------------------------------------------------------------------------------------------------ checks
@dataclass(frozen=True)
class Check:
    """One claim about a seed: ``value(measured) <op> threshold``; a NaN value fails."""

    name: str
    claim: str
    op: str
    threshold: float
    value: Callable[[dict], float]

    def describe(self) -> dict[str, Any]:
        return {"check": self.name, "claim": self.claim, "op": self.op, "threshold": self.threshold}


OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}


def meets(value: float, op: str, threshold: float) -> bool:
    """``value op threshold``; NaN (nothing measured) never meets a check."""
    return not math.isnan(value) and OPERATORS[op](value, threshold)


def run_checks(checks: Sequence[Check], measured: dict) -> dict[str, dict[str, Any]]:
    """Check name -> {"value", "passed"} for one seed's measurements."""
    results = {}
    for check in checks:
        value = float(check.value(measured))
        results[check.name] = {"value": value, "passed": meets(value, check.op, check.threshold)}
    return results


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval (95% by default) of a rate of k successes in n trials."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return (0.0 if k == 0 else centre - half), (1.0 if k == n else centre + half)


def success_rate(seed_checks: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """Seed -> its ``run_checks`` -> the rate of seeds that meet every check, how many seeds meet each check,
    and what each failing seed missed."""
    if not seed_checks:
        raise ValueError("no seeds measured")
    n = len(seed_checks)
    passed = [seed for seed, checks in seed_checks.items() if all(c["passed"] for c in checks.values())]
    names = list(next(iter(seed_checks.values())))
    low, high = wilson_interval(len(passed), n)
    return {"seeds_meeting_every_check": len(passed), "seeds": n, "rate": len(passed) / n,
            "rate_95ci": [low, high], "statement": f"{len(passed)} of {n} seeds meet every check",
            "seeds_meeting_each_check": {name: sum(checks[name]["passed"] for checks in seed_checks.values())
                                         for name in names},
            "missed": {seed: [name for name, c in checks.items() if not c["passed"]]
                       for seed, checks in seed_checks.items() if seed not in passed}}


def _beats(policy: str) -> Callable[[dict], float]:
    return lambda m: m["accuracy"]["learned"] - m["accuracy"][policy]


def _cost_gap(m: dict) -> float:
    """Largest relative difference between a baseline's mean GMACs per sample and the learned policy's."""
    learned = m["gmacs"]["learned"]
    return max(abs(g - learned) / learned for g in m["gmacs"].values())


EQUAL_COST = Check("equal_cost", "baselines' mean GMACs per sample differ from the learned policy's by at most "
                   "(relative)", "<=", EQUAL_COST_TOLERANCE, _cost_gap)
BEATS_RANDOM_AND_CENTRE_PATCHES = (
    Check("beats_random_patches", "accuracy: learned - random patches on the learned frames", ">=", 0.15,
          _beats("random_patches")),
    Check("beats_centre_patches", "accuracy: learned - centred patches on the learned frames", ">=", 0.15,
          _beats("centre_patches")),
)


def boxes_on_object(threshold: float) -> Check:
    return Check("boxes_on_object", "share of boxes on object frames holding the object's centre", ">=", threshold,
                 lambda m: m["box_hit"]["learned"])


SYNTHETIC_CHECKS = (
    EQUAL_COST,
    *BEATS_RANDOM_AND_CENTRE_PATCHES,
    boxes_on_object(0.80),
    Check("frames_on_object", "share of chosen frames showing the object / the same with uniform frames", ">=",
          2.0, lambda m: m["frame_hit"]["learned"] / m["frame_hit"]["uniform_frames"]),
)
FINE_DETAIL_CHECKS = (
    EQUAL_COST,
    Check("accuracy", "held-out accuracy of the learned policies (every patch)", ">=", 0.85,
          lambda m: m["accuracy"]["learned"]),
    boxes_on_object(0.70),
    Check("boxes_beat_centre", "that share: learned boxes - centred boxes of the same size", ">", 0.30,
          lambda m: m["box_hit"]["learned"] - m["box_hit"]["centre_patches"]),
    Check("frames_on_object", "share of chosen frames showing the object (a third of the candidates do)", ">",
          0.50, lambda m: m["frame_hit"]["learned"]),
)
BLIND_GLANCE_SIZE = 32
FINE_DETAIL_BLIND_CHECKS = (
    EQUAL_COST,
    Check("glance_blind", "(the task) accuracy of the glance-only exit", "<=", 0.65,
          lambda m: m["accuracy"]["glance_exit"]),
    *BEATS_RANDOM_AND_CENTRE_PATCHES,
    boxes_on_object(0.70),
)
MRI_CHECKS = (
    EQUAL_COST,
    Check("beats_random_selection", "accuracy: learned - random slices and boxes", ">=", 0.15,
          _beats("random_selection")),
    Check("beats_centre_selection", "accuracy: learned - central slices and centred boxes", ">=", 0.15,
          _beats("centre_selection")),
    Check("slices_on_lesion", "share of chosen slices cutting the lesion / share of all candidates that do", ">=",
          2.0, lambda m: m["frame_hit"]["learned"] / m["frame_chance"]),
    Check("boxes_on_lesion", "share of boxes on lesion slices holding the lesion's centre", ">=", 0.80,
          lambda m: m["box_hit"]["learned"]),
    Check("slices_follow", "r: mean chosen slice vs the lesion's x, across subjects", ">=", FOLLOW_MIN,
          lambda m: m["following"]["learned"]["slice_x"]),
    Check("boxes_beat_fixed_place", "box hit - the best any one fixed place reaches with boxes of the same sizes",
          ">=", FIXED_PLACE_MARGIN,
          lambda m: m["following"]["learned"]["box_hit"] - m["following"]["learned"]["best_fixed_box_hit"]),
    Check("follows_on_both_axes", "r, smallest of slice x, box column, box row vs the lesion's", ">=", FOLLOW_MIN,
          lambda m: m["following"]["learned"]["follow"]),
    Check("centre_selection_does_not_follow", "(the measure) r of central slices and centred boxes", "<",
          FOLLOW_MIN, lambda m: m["following"]["centre_selection"]["follow"]),
    Check("centre_selection_within_fixed_place", "(the measure) centred boxes' hit - the fixed-place ceiling", "<=",
          1e-9, lambda m: m["following"]["centre_selection"]["box_hit"]
          - m["following"]["centre_selection"]["best_fixed_box_hit"]),
)


# ----------------------------------------------------------------------------------------------- measuring
def frame_chance(dataset: Dataset) -> float:
    """Share of all candidate frames that show the object: the frame hit rate of frames chosen at random."""
    shown = torch.cat([torch.as_tensor(dataset[i]["object_frames"]).flatten() for i in range(len(dataset))])
    return float(shown.float().mean())


def measure_policies(model: UniAdaFocus, held_out: Dataset, baselines: dict[str, dict]) -> dict[str, Any]:
    """The learned policies and the baselines (``with_policies`` arguments) with the same weights and patch
    count on ``held_out`` (items with ``object_frames`` / ``object_boxes``, batched by datasets.synthetic.collate),
    and the accuracy of every exit (``glance_exit``: exit 0, from the glance alone)."""
    policies = compare_policies(model, held_out, baselines)
    loader = DataLoader(held_out, batch_size=100, collate_fn=collate)
    by_exit = accuracy_by_exit(*collect_logits(model, loader, torch.device("cpu"))).tolist()
    return {"accuracy": {**{name: m["accuracy"] for name, m in policies.items()}, "glance_exit": by_exit[0]},
            "accuracy_by_exit": by_exit,
            "gmacs": {name: m["mean_gmacs"] for name, m in policies.items()},
            "box_hit": {name: m["centre_in_box"] for name, m in policies.items()},
            "frame_hit": {name: m["object_frame_rate"] for name, m in policies.items()},
            "samples": policies["learned"]["samples"]}


def truth_in_clip(record: dict, info: dict, frame_size: int) -> dict[str, torch.Tensor]:
    """A fine-detail ground-truth record (boxes in source pixels per source frame) seen through one clip
    (``ClipInfo.to_dict()``: which source frames, which source rectangle, mirrored or not): object_frames
    bool [T] and object_boxes [T, 4] in the clip's frame pixels (zeros where the object is not shown)."""
    frames = info["frame_indices"]
    shown = torch.zeros(len(frames), dtype=torch.bool)
    boxes = torch.zeros(len(frames), 4)
    vx0, vy0, vx1, vy1 = info["view_box"]
    sx, sy = frame_size / (vx1 - vx0), frame_size / (vy1 - vy0)
    for t, frame in enumerate(frames):
        box = record["boxes"][frame]
        if box is None:
            continue
        x0, y0, x1, y1 = (box[0] - vx0) * sx, (box[1] - vy0) * sy, (box[2] - vx0) * sx, (box[3] - vy0) * sy
        if info.get("flipped"):
            x0, x1 = frame_size - x1, frame_size - x0
        shown[t], boxes[t] = True, torch.tensor([x0, y0, x1, y1])
    return {"object_frames": shown, "object_boxes": boxes}


class ClipsWithTruth(Dataset):
    """Un-augmented video clips with the generator's truth in frame pixels (``truth_in_clip``), as the
    synthetic task's items are; each clip is decoded once and kept (the measures read the set several times)."""

    def __init__(self, clips: Dataset, truth_file: Path, frame_size: int):
        root = truth_file.parent
        self.clips, self.frame_size = clips, frame_size
        self.truth = {str((root / r["path"]).resolve()): r
                      for r in map(json.loads, truth_file.read_text(encoding="utf-8").splitlines())}
        self._items: dict[int, dict] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        if index not in self._items:
            item = self.clips[index]
            record = self.truth[str(Path(item["info"]["path"]).resolve())]
            self._items[index] = {"clip": item["clip"], "label": item["label"],
                                  **truth_in_clip(record, item["info"], self.frame_size)}
        return self._items[index]


# ----------------------------------------------------------------------------------------------- the tasks
@dataclass(frozen=True)
class FocusTask:
    """How one task is benchmarked. ``prepare(work, quick, log)`` makes the data every seed shares;
    ``train(data, seed, run_dir, device, log)`` trains one seed and returns (model, held-out set);
    ``measure(model, held_out)`` returns the seed's measurements; ``checks`` are the claims;
    ``training_threads``: the torch threads ``train`` sets for itself (None: the process's)."""

    name: str
    title: str
    prepare: Callable[[Path, bool, Callable], Any]
    train: Callable[[Any, int, Path, str, Callable], tuple[UniAdaFocus, Dataset]]
    measure: Callable[[UniAdaFocus, Dataset], dict]
    checks: tuple[Check, ...]
    held_out: str
    training_threads: int | None = None


QUICK_TRAINING = {"epochs": 1, "batch_size": 8}
QUICK_SYNTHETIC = {"train_samples": 64, "val_samples": 32, "calibration_samples": 32, "test_samples": 40}


def _synthetic_prepare(work: Path, quick: bool, log: Callable) -> dict:
    preset = get_preset("cpu-synthetic")
    if quick:
        preset.data = dataclasses.replace(preset.data, **QUICK_SYNTHETIC)
        preset.train = dataclasses.replace(preset.train, **QUICK_TRAINING)
    return {"preset": preset, "test": synthetic_splits(preset)["test"]}


def _synthetic_train(data: dict, seed: int, run_dir: Path, device: str, log: Callable
                     ) -> tuple[UniAdaFocus, Dataset]:
    preset = dataclasses.replace(data["preset"], train=dataclasses.replace(data["preset"].train, seed=seed))
    train_synthetic(preset, run_dir, device=device, progress=False, log=log)
    return load_run(RunFolder(run_dir).best, device="cpu").model, data["test"]


def _frames_measure(model: UniAdaFocus, held_out: Dataset) -> dict:
    return {**measure_policies(model, held_out, BASELINE_POLICIES), "frame_chance": frame_chance(held_out)}


def _fine_detail_prepare(work: Path, quick: bool, log: Callable) -> dict:
    count = 24 if quick else FINE_DETAIL_VIDEOS
    root = work / "data" / "Real Life Violence Dataset"
    truth = root / "ground_truth.jsonl"
    if not (truth.is_file() and sum(1 for _ in truth.open(encoding="utf-8")) == count):
        log(f"writing {count} fine-detail clips (generator seed {FINE_DETAIL_DATA_SEED}) -> {root}")
        truth = write_fine_detail_videos(root, count, seed=FINE_DETAIL_DATA_SEED)
    return {"root": root, "truth": truth, "overrides": QUICK_TRAINING if quick else {}}


def _fine_detail_train(data: dict, seed: int, run_dir: Path, device: str, log: Callable
                       ) -> tuple[UniAdaFocus, Dataset]:
    preset = get_preset("cpu-video", **data.get("model", {}))
    preset.train = dataclasses.replace(preset.train, **data["overrides"], seed=seed)
    train_on_videos(data["root"], preset, run_dir, device=device, progress=False, log=log)
    model = load_run(RunFolder(run_dir).best, device="cpu").model
    c = model.config
    test = load_video_data(data["root"], num_frames=c.num_candidates, size=c.frame_size,
                           split_file=RunFolder(run_dir).split, seed=seed).test
    return model, ClipsWithTruth(test, data["truth"], c.frame_size)


def _fine_detail_blind_prepare(work: Path, quick: bool, log: Callable) -> dict:
    count = 24 if quick else FINE_DETAIL_VIDEOS
    root = work / "data-no-hint" / "Real Life Violence Dataset"
    truth = root / "ground_truth.jsonl"
    if not (truth.is_file() and sum(1 for _ in truth.open(encoding="utf-8")) == count):
        log(f"writing {count} fine-detail clips without a class hint (generator seed {FINE_DETAIL_DATA_SEED}) "
            f"-> {root}")
        truth = write_fine_detail_videos(root, count, seed=FINE_DETAIL_DATA_SEED,
                                         config=FineDetailConfig(hint=0.0, hint_jitter=0.0))
    return {"root": root, "truth": truth, "overrides": QUICK_TRAINING if quick else {},
            "model": {"glance_size": BLIND_GLANCE_SIZE}}


# The local cell proxy's recipe: the local encoder reads every cell of 4 glance frames per clip (with 2, the
# frame target had too little to compare and late-learning seeds kept boxes at chance), and boxes are decoded at
# the best cell's 3 x 3 window in eval mode, so validation keeps the checkpoint whose decoded boxes read best
# (docs/notes/glance-hint.md).
LOCAL_CELLS_RECIPE = {"spatial_proxy": "local_cells", "local_cell_frames": 4, "spatial_window": 3}


def _with_local_cells(prepare: Callable[[Path, bool, Callable], dict]) -> Callable[[Path, bool, Callable], dict]:
    def prepared(work: Path, quick: bool, log: Callable) -> dict:
        data = prepare(work, quick, log)
        return {**data, "model": {**data.get("model", {}), **LOCAL_CELLS_RECIPE}}
    return prepared


QUICK_MRI_SPLITS = (("train", 16), ("val", 8), ("test", 8))


def _mri_prepare(work: Path, quick: bool, log: Callable) -> dict:
    overrides = {"epochs": 1} if quick else {}
    sizes, config = (QUICK_MRI_SPLITS, LesionTaskConfig(num_scans=2)) if quick else (SPLITS, LesionTaskConfig())
    log("making the lesion task's subjects: " + ", ".join(f"{name} {count}" for name, count in sizes))
    return {"overrides": overrides, "splits": lesion_task_splits(focus_preset(**overrides), sizes, config)}


def _mri_train(data: dict, seed: int, run_dir: Path, device: str, log: Callable) -> tuple[UniAdaFocus, Dataset]:
    model = train_lesion_focus(focus_preset(seed, **data["overrides"]), data["splits"], run_dir, device=device)
    return model, data["splits"]["test"]


# Patches: random / centred boxes on the learned slices, learned boxes on uniform slices (as for videos);
# selections: random slices and boxes, central slices and centred boxes.
MRI_BASELINES = {**BASELINE_POLICIES, "random_selection": SELECTION_BASELINES["random_selection"],
                 "centre_selection": SELECTION_BASELINES["centre_selection"]}


def measure_lesion_focus(model: UniAdaFocus, held_out: Dataset) -> dict:
    """The MRI task's measurements: the policies, the slice chance, and whether the learned and the central
    selection follow the lesion (``lesion_following``)."""
    centre = with_policies(model, **SELECTION_BASELINES["centre_selection"])
    return {**measure_policies(model, held_out, MRI_BASELINES), "frame_chance": slice_chance(held_out),
            "following": {"learned": lesion_following(model, held_out),
                          "centre_selection": lesion_following(centre, held_out)}}


FOCUS_TASKS = {
    "synthetic": FocusTask("synthetic", "cpu-synthetic on the synthetic focus task", _synthetic_prepare,
                           _synthetic_train, _frames_measure, SYNTHETIC_CHECKS,
                           "the task's test split (seed 4), the same for every seed"),
    "fine-detail": FocusTask("fine-detail", "cpu-video on the fine-detail clips (2-pixel stripes over real footage)",
                             _fine_detail_prepare, _fine_detail_train, _frames_measure, FINE_DETAIL_CHECKS,
                             f"each run's own stratified test split (15%) of {FINE_DETAIL_VIDEOS} clips made with "
                             f"generator seed {FINE_DETAIL_DATA_SEED}"),
    "fine-detail-blind": FocusTask(
        "fine-detail-blind", f"cpu-video, glance at {BLIND_GLANCE_SIZE} px, on fine-detail clips with no class hint",
        _fine_detail_blind_prepare, _fine_detail_train, _frames_measure, FINE_DETAIL_BLIND_CHECKS,
        f"each run's own stratified test split (15%) of {FINE_DETAIL_VIDEOS} clips made with generator seed "
        f"{FINE_DETAIL_DATA_SEED} and hint 0"),
    "fine-detail-blind-local": FocusTask(
        "fine-detail-blind-local", "the same with the local cell proxy (spatial_proxy='local_cells', 4 frames "
        "read per clip, boxes decoded at the peak's 3 x 3 window)",
        _with_local_cells(_fine_detail_blind_prepare), _fine_detail_train, _frames_measure,
        FINE_DETAIL_BLIND_CHECKS,
        f"each run's own stratified test split (15%) of {FINE_DETAIL_VIDEOS} clips made with generator seed "
        f"{FINE_DETAIL_DATA_SEED} and hint 0"),
    "mri-lesion": FocusTask("mri-lesion", "cpu-mri (lesion recipe, one training thread) on the synthetic lesion task",
                            _mri_prepare, _mri_train, measure_lesion_focus, MRI_CHECKS,
                            f"{dict(SPLITS)['test']} test subjects (their own task seed), the same for every seed",
                            training_threads=TRAINING_THREADS),
}


# ----------------------------------------------------------------------------------------------- one seed
def measure_seed(task: FocusTask, data: Any, seed: int, seed_dir: Path, *, device: str = "cpu",
                 log: Callable[[str], None] = print) -> dict:
    """Train and measure one seed (or read its kept measurements): {"seed", "measured", "train_s", "measure_s"}."""
    kept = seed_dir / "measured.json"
    if kept.is_file():
        log(f"seed {seed}: measurements kept in {kept}")
        return json.loads(kept.read_text(encoding="utf-8"))
    started = time.perf_counter()
    model, held_out = task.train(data, seed, seed_dir / "run", device, log)
    trained = time.perf_counter()
    measured = task.measure(model, held_out)
    record = {"seed": seed, "measured": measured, "train_s": trained - started,
              "torch_threads": task.training_threads or torch.get_num_threads(),
              "measure_s": time.perf_counter() - trained}
    atomic_write_json(kept, record)
    return record


def seed_outcome(task: FocusTask, record: dict) -> dict:
    """One seed's measurements with its checks: {"seed", "measured", "checks", "passed", "missed", times}."""
    checks = run_checks(task.checks, record["measured"])
    return {**record, "checks": checks, "passed": all(c["passed"] for c in checks.values()),
            "missed": [name for name, c in checks.items() if not c["passed"]]}


def train_and_check_seed(task_name: str, seed: int, work: Path, *, data: Any = None, quick: bool = False,
                         device: str = "cpu", log: Callable[[str], None] = print) -> dict:
    """One seed of one task end to end (the slow tests' entry point): ``seed_outcome``. ``data``: what the
    task's ``prepare`` made (made here when None); the run is ``work/seed-<seed>/run``."""
    task = FOCUS_TASKS[task_name]
    data = task.prepare(work, quick, log) if data is None else data
    return seed_outcome(task, measure_seed(task, data, seed, work / f"seed-{seed}", device=device, log=log))


# ---------------------------------------------------------------------------------------------- the bench
def bench_focus(task_name: str, seeds: Sequence[int], work: Path, *, quick: bool = False, device: str = "cpu",
                log: Callable[[str], None] = print) -> dict:
    """Every seed of one task: {"task", "quick", "held_out", "checks", "seeds": [seed_outcome], "rate"}."""
    task = FOCUS_TASKS[task_name]
    data = task.prepare(work, quick, log)
    outcomes = []
    for index, seed in enumerate(seeds, 1):
        log(f"[{index}/{len(seeds)}] {task_name}, seed {seed}")
        outcome = seed_outcome(task, measure_seed(task, data, seed, work / f"seed-{seed}", device=device, log=log))
        log(f"seed {seed}: {format_seed(outcome)} ({outcome['train_s']:.0f} s training, "
            f"{outcome['measure_s']:.0f} s measuring)")
        outcomes.append(outcome)
    rate = success_rate({o["seed"]: o["checks"] for o in outcomes})
    return {"task": task_name, "title": task.title, "quick": quick, "held_out": task.held_out,
            "checks": [c.describe() for c in task.checks], "seeds": outcomes, "rate": rate}


def format_seed(outcome: dict) -> str:
    m = outcome["measured"]
    acc = m["accuracy"]
    text = (f"accuracy learned {acc['learned']:.3f}, random patches {acc['random_patches']:.3f}, centre patches "
            f"{acc['centre_patches']:.3f}, uniform frames {acc['uniform_frames']:.3f}, glance exit "
            f"{acc['glance_exit']:.3f}; boxes hit {m['box_hit']['learned']:.3f}; frames hit "
            f"{m['frame_hit']['learned']:.3f} (chance {m['frame_chance']:.3f})")
    if "following" in m:
        f = m["following"]["learned"]
        text += f"; r slice {f['slice_x']:.2f} / column {f['box_column']:.2f} / row {f['box_row']:.2f}"
    return text + ("; every check met" if outcome["passed"] else f"; MISSED {', '.join(outcome['missed'])}")


def _seed_row(outcome: dict) -> dict[str, Any]:
    from adafocus.reports.results import flatten_numbers

    return {"seed": outcome["seed"], "passed": outcome["passed"], "missed": ", ".join(outcome["missed"]),
            **flatten_numbers(outcome["measured"]),
            **{f"check.{name}": c["value"] for name, c in outcome["checks"].items()},
            "train_s": round(outcome["train_s"], 1), "measure_s": round(outcome["measure_s"], 1)}


def result_tables(report: dict) -> tuple[dict, dict]:
    """(summary, tables) of a ``bench_focus`` report for ``save_result``."""
    rate, outcomes = report["rate"], report["seeds"]
    summary = {"task": report["task"], "quick": report["quick"], "held_out": report["held_out"],
               "seeds": ", ".join(str(o["seed"]) for o in outcomes),
               "success": rate["statement"], "seeds_meeting_every_check": rate["seeds_meeting_every_check"],
               "seed_count": rate["seeds"], "success_rate": rate["rate"], "success_rate_95ci": rate["rate_95ci"],
               "missed": "; ".join(f"seed {s}: {', '.join(names)}" for s, names in rate["missed"].items()) or "none",
               "train_s_per_seed": sum(o["train_s"] for o in outcomes) / len(outcomes),
               # the threads each seed trained with (seeds kept from before this was recorded: this process's)
               "torch_threads": ", ".join(sorted({str(o.get("torch_threads", torch.get_num_threads()))
                                                  for o in outcomes}))}
    for name in ("learned", "random_patches", "centre_patches", "uniform_frames", "glance_exit"):
        values = [o["measured"]["accuracy"][name] for o in outcomes]
        summary[f"mean_accuracy.{name}"] = sum(values) / len(values)
    checks = [{**c, "seeds_meeting_it": f"{rate['seeds_meeting_each_check'][c['check']]} of {rate['seeds']}"}
              for c in report["checks"]]
    return summary, {"checks (every one must hold for a seed to count)": checks,
                     "per seed": [_seed_row(o) for o in outcomes]}


def command_line(args) -> str:
    return (f"adafocus bench focus --task {args.task} --seeds {args.seeds}"
            + (f" --first-seed {args.first_seed}" if args.first_seed else "") + (" --quick" if args.quick else ""))


def bench_focus_command(args) -> int:
    """`adafocus bench focus`: print each seed and the rate; write RESULTS/focus_<task>.json (``-quick`` added
    for a --quick run, so a smoke test never replaces a measurement)."""
    from adafocus.reports.results import DEFAULT_RESULTS_DIR, save_result

    if args.seeds < 1:
        raise ValueError("--seeds must be at least 1")
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="adafocus-bench-focus-"))
    try:
        report = bench_focus(args.task, seeds, work / args.task / ("quick" if args.quick else "full"),
                             quick=args.quick, device=device)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    summary, tables = result_tables(report)
    name = f"focus_{args.task.replace('-', '_')}" + ("-quick" if args.quick else "")
    path = save_result(name, command_line(args), summary, tables=tables,
                       title=f"Focus over seeds: {report['title']}", results_dir=args.results or DEFAULT_RESULTS_DIR)
    for check in tables["checks (every one must hold for a seed to count)"]:
        print(f"  {check['check']}: {check['claim']} {check['op']} {check['threshold']:g}  "
              f"({check['seeds_meeting_it']} seeds)")
    print(f"{args.task}: {report['rate']['statement']} (seeds {seeds[0]}-{seeds[-1]})")
    print(f"result: {path}")
    return 0
