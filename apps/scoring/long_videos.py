"""Windowed scoring of long videos (`adafocus score VIDEOS --model RUN --windows auto|SECONDS [--stride S]`).

A file is cut into windows (apps/scoring/windows.py: the training clips' duration when the model card
records it, else 4 s; stride half a window; a file no longer than one window is one clip, sampled as
`score` without windows samples it). Every window is scored as a clip by the same model, with the same
candidate frames per clip, early exits and budget.

Decoding streams through each file once, forward only (datasets.video.stream_frames): only the frames
the windows sample are converted, each is resized once to the model's frame size and kept only while a
window that samples it is still open, so memory does not grow with the length of the file. Windows are
scored in batches of up to `batch_size`; the next batch is decoded in a background thread while the model scores
the one before (`read_ahead`).

Outputs (apps/scoring/outputs.py owns them):
    scores.csv     one row per file: label, p_<class> = the maximum over the file's windows, exit_step of
                   the peak window, gmacs summed over the windows, windows, gap_windows, peak_start_s,
                   peak_end_s (the window where the label's score peaks), segments (how many were flagged)
    details.jsonl  per file: "windows": [{index, start_s, end_s, probs, exit_step, gmacs, selected: [{frame,
                   time_s, box}], model_ms}] (a gap: {index, start_s, end_s, status: "gap", reason}),
                   "gaps": the gap windows merged [{start_s, end_s, reason}], "segments", "window_s",
                   "stride_s", "threshold", "flagged"
    segments.csv   flagged segments: consecutive windows with p_<class> >= threshold merged (flag_segments)

Resumable per window: each batch of finished windows is appended, fsynced, to OUT/progress/<file>.jsonl;
a file's outputs are written only when its last window is done (details, segments, then the scores row),
and its progress file is removed after. A run killed at any point resumes each file from its last
finished window and never records a window twice.

A broken stretch inside a file (data FFmpeg rejects) does not stop it: the windows that sample a lost
frame become gaps with a reason, and the rest of the file is scored.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from adafocus.apps.scoring.outputs import (
    PROGRESS_DIR,
    SEGMENT_COLUMNS,
    SEGMENTS_FILE,
    append_segments,
    append_windows,
    prepare_csv,
    progress_path,
    prune_rows,
    read_progress,
    start_progress,
    window_csv_columns,
)
from adafocus.apps.scoring.videos import (
    ScoreSummary,
    collect_inputs,
    cpu_threads,
    finish_summary,
    fix_mmap_threshold,
    load_scoring_run,
    model_threads,
    prepare_outputs,
)
from adafocus.apps.scoring.windows import (
    Window,
    file_label,
    flag_segments,
    flagged_classes,
    plan_windows,
    window_seconds,
)
from adafocus.core.device import cuda_autocast, resolve_device
from adafocus.core.exits import ExitPolicy
from adafocus.core.geometry import focus_locations
from adafocus.core.model import UniAdaFocus
from adafocus.datasets.video import (
    ClipInfo,
    ClipTransform,
    VideoDecodeError,
    probe_video,
    stream_frames,
    to_unit_range,
)

T = TypeVar("T")


def score_long_videos(inputs: Sequence[str], checkpoint: str | Path, out_csv: str | Path, *,
                      windows: str | float = "auto", stride: float | None = None, threshold: float = 0.5,
                      flag: Sequence[str] | None = None, details: str | Path | None = None,
                      budget: float | None = None, device: str = "auto", batch_size: int = 16,
                      progress: bool = True, log: Callable[[str], None] = print, engine: str = "auto",
                      precision: str = "fp32") -> ScoreSummary:
    """Score every input in windows; see the module docstring for the outputs and their guarantees."""
    started = time.perf_counter()
    if batch_size < 1:
        raise ValueError(f"need batch_size >= 1, got {batch_size}")
    fix_mmap_threshold()  # memory flat in the file's length
    dev = resolve_device(device)
    paths = collect_inputs(inputs)
    run, policy, eval_crop = load_scoring_run(checkpoint, dev, budget, engine=engine, precision=precision,
                                              calibration_paths=paths[:batch_size], log=log)
    class_names = run.card.class_names
    window_s, stride_s = window_seconds(windows, stride, run.card.input)
    scorer = WindowScorer(run.model, policy, class_names, eval_crop, dev, batch_size)
    flagged = flagged_classes(class_names, flag)
    final, _, done = prepare_outputs(out_csv, details, None, window_csv_columns(class_names))
    segments_csv = final.csv.parent / SEGMENTS_FILE
    prepare_csv(segments_csv, list(SEGMENT_COLUMNS))
    prune_rows(segments_csv, done)
    progress_dir = final.csv.parent / PROGRESS_DIR
    for path in done:
        progress_path(progress_dir, path).unlink(missing_ok=True)
    todo = [p for p in paths if p not in done]
    summary = ScoreSummary(files=len(paths), skipped=len(paths) - len(todo))
    if summary.skipped:
        log(f"skipping {summary.skipped} of {len(paths)} files already in {final.csv}")
    settings = {"window_s": window_s, "stride_s": stride_s, "budget": budget, "model": str(run.checkpoint),
                "precision": precision}
    loop_started = time.perf_counter()
    with cpu_threads(dev, model_threads(0)):
        for path in todo:
            progress_file = progress_path(progress_dir, path)
            outcome = score_file(path, scorer, settings, progress_file, progress=progress)
            record, row, segment_rows = fold_file(path, outcome, class_names, flagged, threshold, settings)
            summary.decode_ms += outcome.decode_ms
            summary.model_ms += outcome.model_ms
            if final.details is not None:  # details, then segments, then the row that marks the file done
                final.append([], [record])
            append_segments(segments_csv, segment_rows)
            final.append([row], [])
            progress_file.unlink(missing_ok=True)
    summary.loop_s = time.perf_counter() - loop_started
    summary = finish_summary(summary, final, None, paths, todo, started)
    summary.outputs["segments"] = str(segments_csv)
    return summary


# A window to score: its frames, uint8 [3, S, S] in order, shared with the windows that overlap it (stacked and
# scaled to floats only when its batch is scored, take_clips, so a batch waiting in read_ahead holds each decoded
# frame once, at a quarter of its float size), and its view info.
WindowFrames = tuple[Window, list[torch.Tensor], ClipInfo]


def take_clips(batch: list[WindowFrames]) -> tuple[torch.Tensor, list[tuple[Window, ClipInfo]]]:
    """(the batch's clips, float [B, T, 3, S, S] in [0, 1], each window with its view info), and `batch` emptied:
    its frames then live on in the clips alone while the model runs (those of windows still open stay with the
    decoder), so the decoded frames and their stacked copy are not both held at the peak."""
    frames = [frame for _, window_frames, _ in batch for frame in window_frames]
    clips = to_unit_range(torch.stack(frames)).unflatten(0, (len(batch), -1))
    windows = [(window, info) for window, _, info in batch]
    batch.clear()
    return clips, windows


class WindowScorer:
    """Windows -> window records, in batches: one model, its exit policy and its input size."""

    def __init__(self, model: UniAdaFocus, policy: ExitPolicy | None, class_names: list[str], eval_crop: float,
                 device: torch.device, batch_size: int):
        self.model, self.policy, self.class_names = model, policy, class_names
        self.device, self.batch_size = device, batch_size
        self.num_candidates = model.config.num_candidates
        self.transform = ClipTransform(model.config.frame_size, train=False, eval_crop=eval_crop)

    def score(self, batch: list[WindowFrames]) -> list[dict[str, Any]]:
        """The records of the windows in `batch` (emptied: `take_clips`)."""
        started = time.perf_counter()
        clips, windows = take_clips(batch)
        with torch.inference_mode(), cuda_autocast(self.device):
            result = self.model.infer(clips.to(self.device), self.policy)
        probs, exits = result.probabilities.float().cpu(), result.exit_index.cpu()
        gmacs, frames, boxes = result.gmacs.cpu(), result.frame_indices.cpu(), result.boxes.float().cpu()
        share_ms = 1000.0 * (time.perf_counter() - started) / len(windows)
        return [{"index": window.index, "start_s": window.start_s, "end_s": window.end_s,
                 "probs": {name: round(float(p), 6) for name, p in zip(self.class_names, probs[j])},
                 "exit_step": int(exits[j]), "gmacs": round(float(gmacs[j]), 6),
                 "selected": focus_locations(frames[j].tolist(), boxes[j].tolist(), info),
                 "model_ms": round(share_ms, 2)}
                for j, (window, info) in enumerate(windows)]


class ExitLogitScorer(WindowScorer):
    """Windows -> {"index", "logits" [num_exits, num_classes]}: every exit of every window, for calibration."""

    def score(self, batch: list[WindowFrames]) -> list[dict[str, Any]]:
        clips, windows = take_clips(batch)
        with torch.inference_mode(), cuda_autocast(self.device):
            logits = self.model.infer(clips.to(self.device)).logits.float().cpu()
        return [{"index": window.index, "logits": logits[j]} for j, (window, _) in enumerate(windows)]


def calibrate_on_windows(checkpoint: str | Path, budget: float, videos: Sequence[str], *,
                         windows: str | float = "auto", stride: float | None = None, criterion: str = "entropy",
                         device: str = "auto", batch_size: int = 16, progress: bool = True,
                         log: Callable[[str], None] = print) -> tuple[ExitPolicy, Path]:
    """Fit exit thresholds for `budget` GMACs per window on the windows of `videos` (`calibrate --videos`).

    A run's calibration split holds clips in the proportions training had; the long videos a moderator scores
    are mostly calm, so the windows' confidence at each exit differs and thresholds fitted on the split miss
    the budget there. Thresholds need no labels (only each exit's confidence), so unlabelled videos like the
    ones to be scored calibrate them. Logits go to RUN/calibration-external.pt, thresholds to
    RUN/exit_policies/budget-G.json (what `score --budget G` then uses)."""
    from adafocus.core.checkpoint import save_checkpoint
    from adafocus.core.exits import exit_scores, solve_budget
    from adafocus.core.io import atomic_write_json

    dev = resolve_device(device)
    paths = collect_inputs(videos)
    run, _, eval_crop = load_scoring_run(checkpoint, dev, None, engine="torch", log=log)
    window_s, stride_s = window_seconds(windows, stride, run.card.input)
    scorer = ExitLogitScorer(run.model, None, run.card.class_names, eval_crop, dev, batch_size)
    logits, skipped = [], []
    for done, path in enumerate(paths, 1):
        try:
            meta = probe_video(path)
            plan = plan_windows(meta.num_frames, meta.fps, window_s, stride_s, scorer.num_candidates)
            for records in _stream_windows(path, plan, scorer, meta.num_frames, FileOutcome()):
                logits += [r["logits"] for r in records if "logits" in r]
        except (VideoDecodeError, ValueError) as error:
            skipped.append(path)
            log(f"calibrate: skipped {path}: {getattr(error, 'reason', error)}")
        if progress:
            log(f"calibrate: {len(logits)} windows from {done - len(skipped)} of {len(paths)} videos")
    if not logits:
        raise ValueError("no window of the given videos could be decoded to calibrate on")
    stacked = torch.stack(logits)
    costs = run.model.exit_costs()
    policy = solve_budget(exit_scores(stacked, criterion), costs, budget, criterion=criterion)
    save_checkpoint(run.folder.external_calibration, model_state={},
                    config={"criterion": criterion, "checkpoint": run.checkpoint.name}, logits=stacked,
                    exit_costs=costs, source={"source": "windows", "videos": len(paths) - len(skipped),
                                              "windows": len(logits), "window_s": window_s, "stride_s": stride_s})
    policy_file = run.folder.exit_policy(budget)
    policy_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(policy_file, policy.to_dict())
    return policy, policy_file


class FileOutcome:
    """What scoring one file gave: its window records (all of them, earlier runs' included) or an error."""

    def __init__(self):
        self.windows: list[dict[str, Any]] = []
        self.error = ""
        self.decode_ms = 0.0
        self.model_ms = 0.0
        self.fps = 0.0
        self.max_frames_held = 0  # the most decoded frames kept at once (memory: flat in the file's length)


def score_file(path: str, scorer: WindowScorer, settings: dict[str, Any], progress_file: Path, *,
               progress: bool = False) -> FileOutcome:
    """Score the windows of one file that its progress file does not hold yet, appending each finished
    batch there; return every window's record in window order (or the reason the file cannot be read)."""
    outcome = FileOutcome()
    try:
        meta = probe_video(path)
        if not meta.has_video:
            raise VideoDecodeError("no video stream (audio only)" if meta.has_audio else "no video stream")
        plan = plan_windows(meta.num_frames, meta.fps, settings["window_s"], settings["stride_s"],
                            scorer.num_candidates)
    except VideoDecodeError as error:
        outcome.error = error.reason
        return outcome
    except ValueError as error:
        outcome.error = str(error)
        return outcome
    outcome.fps = meta.fps
    key = {**settings, "num_frames": meta.num_frames, "fps": meta.fps, "num_candidates": scorer.num_candidates,
           "windows": len(plan)}
    done = read_progress(progress_file, key)
    start_progress(progress_file, key, done)
    remaining = [w for w in plan if w.index not in done]
    bar = None
    if progress and remaining:
        from tqdm import tqdm
        bar = tqdm(total=len(plan), initial=len(plan) - len(remaining), unit="window", dynamic_ncols=True,
                   desc=Path(path).name[:30])
    try:
        for records in _stream_windows(path, remaining, scorer, meta.num_frames, outcome):
            append_windows(progress_file, records)
            for record in records:
                done[record["index"]] = record
            if bar is not None:
                bar.update(len(records))
    except VideoDecodeError as error:
        if not done:
            outcome.error = error.reason
            return outcome
        for window in remaining:  # the file became unreadable after some windows: the rest are gaps
            done.setdefault(window.index, _gap(window, error.reason))
    finally:
        if bar is not None:
            bar.close()
    outcome.windows = [done[w.index] for w in plan]
    return outcome


def _gap(window: Window, reason: str) -> dict[str, Any]:
    return {"index": window.index, "start_s": window.start_s, "end_s": window.end_s, "status": "gap", "reason": reason}


def _stream_windows(path: str, remaining: list[Window], scorer: WindowScorer, num_frames: int, outcome: FileOutcome):
    """The records of `remaining` windows, a batch at a time, in window order: decoding runs a batch ahead in
    a background thread (`read_ahead`) while the model scores the batch before, so decoding hides behind the
    model instead of adding to it (PyAV and torch both release the GIL)."""
    for batch, gaps in read_ahead(_decoded_windows(path, remaining, scorer, num_frames, outcome)):
        records = list(gaps)
        if batch:
            started = time.perf_counter()
            records += scorer.score(batch)
            outcome.model_ms += 1000.0 * (time.perf_counter() - started)
        yield sorted(records, key=lambda r: r["index"])


def _decoded_windows(path: str, remaining: list[Window], scorer: WindowScorer, num_frames: int,
                     outcome: FileOutcome):
    """Decode the frames of `remaining` windows in one forward pass and yield (clips to score, gap records), a
    batch of up to `scorer.batch_size` clips at a time.

    Frames are resized on arrival and dropped as soon as no open window samples them: at most the frames
    of the windows that overlap the current position, and those of the batches in flight, are held."""
    if not remaining:
        return
    wanted = sorted({f for w in remaining for f in w.frames})
    kept: dict[int, tuple[torch.Tensor | None, int, str]] = {}  # index -> (uint8 [3, S, S], position, reason)
    batch: list[WindowFrames] = []
    gaps: list[dict[str, Any]] = []
    view: tuple[ClipInfo, tuple[int, int]] | None = None  # the view info of the first frame (all frames share it)
    next_window = 0
    decode_started = time.perf_counter()
    for item in stream_frames(path, wanted):
        if item.frame is None:
            kept[item.index] = (None, -1, item.reason)
        else:
            height, width = item.frame.shape[:2]
            stub = ClipInfo(path=path, frame_indices=[item.position], fps=0.0, num_frames=num_frames,
                            source_size=(height, width), view_box=(0.0, 0.0, float(width), float(height)),
                            output_size=(height, width))
            tensor, info = scorer.transform(item.frame[None], stub, scale=False)
            kept[item.index] = (tensor[0], item.position, "")
            if view is None:
                view = (info, (height, width))
        outcome.max_frames_held = max(outcome.max_frames_held, len(kept))
        while next_window < len(remaining) and remaining[next_window].frames[-1] <= item.index:
            window = remaining[next_window]
            next_window += 1
            lost = [kept[f][2] for f in window.frames if kept[f][0] is None]
            if lost:
                gaps.append(_gap(window, lost[0]))
            else:
                info = ClipInfo(path=path, frame_indices=[kept[f][1] for f in window.frames], fps=window.fps,
                                num_frames=num_frames, source_size=view[1], view_box=view[0].view_box,
                                output_size=view[0].output_size)
                batch.append((window, [kept[f][0] for f in window.frames], info))
            if next_window < len(remaining):
                first_needed = remaining[next_window].frames[0]
                for index in [i for i in kept if i < first_needed]:
                    del kept[index]
            if len(batch) >= scorer.batch_size or next_window == len(remaining):
                outcome.decode_ms += 1000.0 * (time.perf_counter() - decode_started)
                yield batch, gaps
                batch, gaps = [], []
                decode_started = time.perf_counter()
    if batch or gaps:  # unreachable unless the stream ended early; keep the windows anyway
        outcome.decode_ms += 1000.0 * (time.perf_counter() - decode_started)
        yield batch, gaps


def read_ahead(items: Iterator[T], ahead: int = 1) -> Iterator[T]:
    """`items` in order, produced in a background thread while the consumer works on the one before.

    At most `ahead` items are made (or being made) beyond the one the consumer holds, so memory holds at most
    `ahead` + 1 items: scoring windows keeps two batches of clips, whatever the length of the file. An exception
    raised while producing is raised here, at the item where it happened. A consumer that stops early (break,
    an exception, close) stops the producer, which closes `items` (its files, its decoder)."""
    made: queue.Queue = queue.Queue()
    credits = threading.Semaphore(ahead + 1)  # one per item alive; the consumer returns one per item it is done with
    stop = threading.Event()

    def may_make_another() -> bool:
        while not stop.is_set():
            if credits.acquire(timeout=0.05):
                return True
        return False

    def produce():
        try:
            while may_make_another():
                try:
                    made.put((True, next(items)))
                except StopIteration:
                    made.put((False, None))
                    return
        except BaseException as error:  # noqa: BLE001  (handed to the consumer, raised there)
            made.put((False, error))
        finally:
            getattr(items, "close", lambda: None)()

    producer = threading.Thread(target=produce, name="read-ahead", daemon=True)
    producer.start()
    try:
        while True:
            has_item, value = made.get()
            if not has_item:
                if value is not None:
                    raise value
                return
            yield value
            credits.release()  # the consumer is done with `value`
    finally:
        stop.set()
        producer.join()


def merge_gaps(windows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive gap windows merged: [{"start_s", "end_s", "reason", "windows": [first, last]}]."""
    gaps: list[dict[str, Any]] = []
    for w in windows:
        if w.get("status") != "gap":
            continue
        if gaps and gaps[-1]["windows"][1] == w["index"] - 1 and gaps[-1]["reason"] == w["reason"]:
            gaps[-1]["end_s"], gaps[-1]["windows"][1] = w["end_s"], w["index"]
        else:
            gaps.append({"start_s": w["start_s"], "end_s": w["end_s"], "reason": w["reason"],
                         "windows": [w["index"], w["index"]]})
    return gaps


def fold_file(path: str, outcome: FileOutcome, class_names: list[str], flagged: list[str], threshold: float,
              settings: dict[str, Any]) -> tuple[dict[str, Any], list[Any], list[list[Any]]]:
    """A file's window records -> (details record, scores.csv row, segments.csv rows)."""
    blank_tail = [""] * len(class_names)
    scored = [w for w in outcome.windows if "probs" in w]
    gaps = merge_gaps(outcome.windows)
    if not scored:
        reason = outcome.error or (f"no window could be decoded ({gaps[0]['reason']})" if gaps else "no windows")
        row = [path, "error", reason, "", "", *blank_tail, "", "", f"{outcome.decode_ms:.1f}", "",
               len(outcome.windows), len(outcome.windows), "", "", ""]
        return {"path": path, "status": "error", "error": reason}, row, []
    max_probs = {c: max(float(w["probs"][c]) for w in scored) for c in class_names}
    label = file_label(max_probs, flagged, threshold)
    peak = max(scored, key=lambda w: float(w["probs"][label]))
    segments = [s for c in flagged for s in flag_segments(outcome.windows, c, threshold)]
    segments.sort(key=lambda s: (s.start_s, s.label))
    note = "; ".join(f"gap {g['start_s']:g}-{g['end_s']:g} s: {g['reason']}" for g in gaps)
    gmacs = sum(float(w["gmacs"]) for w in scored)
    model_ms = sum(float(w.get("model_ms", 0.0)) for w in scored)
    record = {"path": path, "status": "ok", "label": label, "probs": {c: round(p, 6) for c, p in max_probs.items()},
              "peak_window": peak["index"], "peak_start_s": peak["start_s"], "peak_end_s": peak["end_s"],
              "exit_step": peak["exit_step"], "gmacs": round(gmacs, 6), "fps": outcome.fps,
              "window_s": settings["window_s"], "stride_s": settings["stride_s"], "threshold": threshold,
              "flagged": flagged, "windows": outcome.windows, "gaps": gaps,
              "segments": [s.__dict__ for s in segments], "note": note}
    row = [path, "ok", "", note, label, *(f"{max_probs[c]:.6f}" for c in class_names), peak["exit_step"],
           f"{gmacs:.6f}", f"{outcome.decode_ms:.1f}", f"{model_ms:.1f}", len(outcome.windows),
           len(outcome.windows) - len(scored), peak["start_s"], peak["end_s"], len(segments)]
    segment_rows = [[path, s.label, s.start_s, s.end_s, f"{s.peak_score:.6f}", s.peak_start_s,
                     f"{s.mean_score:.6f}", s.first_window, s.last_window] for s in segments]
    return record, row, segment_rows
