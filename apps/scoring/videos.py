"""Batch scoring of video files: files, folders or globs in, one CSV row per file out (`adafocus score`).

Decoding runs in DataLoader workers while the model scores the previous batch; batches run on the GPU
when there is one, with early exit at a compute budget. Workers decode file by file; the batches grow 1, 2, 4,
... up to the batch size and shrink again at the end (``pipeline_batches``), so the model starts after one
decoded file instead of a whole batch and finishes soon after the last one is decoded. A file that
cannot be read becomes a row with status "error" and a short reason; nothing stops the run.

Crash safety. scores.csv is the record of what is done. Each batch's rows are appended in one write,
flushed and fsynced; details.jsonl lines (and contact sheets) are written *before* the batch's CSV rows.
A run killed at any moment (SIGKILL included) leaves at most a trailing partial CSV line; the next run
drops it, drops details lines of files without a CSV row, and scores only files that have no row yet
(rows with status "error" count as done: delete those rows to retry them).

To score across processes or machines, `score --ray` (apps/scoring/ray.py) runs the same pieces on Ray Data:
decoding in Ray tasks, the model in an actor pool, rows written by this process as they stream in.
"""
from __future__ import annotations

import copy
import glob
import hashlib
import math
import os
import resource
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from adafocus.apps.runs.agreement import prepare_run
from adafocus.apps.scoring.outputs import OutputFiles, csv_columns, prepare_csv, prune_details, read_rows
from adafocus.core.device import cuda_autocast, resolve_device, worker_processes
from adafocus.core.engine import (
    EngineError,
    format_agreement,
    needs_calibration,
    prediction_agreement,
    prepare_for_inference,
)
from adafocus.core.exits import ExitPolicy
from adafocus.core.geometry import focus_locations
from adafocus.core.io import atomic_write
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import exit_policy_for_budget, load_run
from adafocus.datasets.video import (
    VIDEO_EXTENSIONS,
    ClipInfo,
    VideoDecodeError,
    decode_frames,
    load_clip,
    probe_video,
)
from adafocus.datasets.video_sets import find_videos
from torch.utils.data import DataLoader, Dataset

# Folder inputs are searched for these (case-insensitive); files named explicitly are scored whatever their name.
SCORE_EXTENSIONS = VIDEO_EXTENSIONS + (".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp", ".ts", ".mts")
# A file whose sampled frames would need more raw RGB memory than this is refused, not decoded.
MAX_DECODE_BYTES = 2 * 1024 ** 3
_GLOB_CHARS = set("*?[")


# ----------------------------------------------------------------------------------------------------
# Inputs


def collect_inputs(inputs: Sequence[str]) -> list[str]:
    """Absolute paths of the files to score, in input order, without duplicates.

    A folder contributes its video files recursively (SCORE_EXTENSIONS, hidden files skipped, sorted); a
    glob pattern its matches (``**`` recurses; matched folders are searched like folders); any other
    input is taken as a file, even when it does not exist (it becomes a "file not found" row).
    Raises ValueError when nothing at all is found.
    """
    found: list[str] = []
    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found += [str(p) for p in find_videos(path, SCORE_EXTENSIONS)]
        elif not path.exists() and _GLOB_CHARS & set(text):
            for match in sorted(glob.glob(text, recursive=True)):
                match_path = Path(match)
                found += ([str(p) for p in find_videos(match_path, SCORE_EXTENSIONS)] if match_path.is_dir()
                          else [match])
        else:
            found.append(text)
    unique = list(dict.fromkeys(os.path.abspath(p) for p in found))
    if not unique:
        raise ValueError(f"no video files found in {list(inputs)} (folders are searched for "
                         f"{', '.join(SCORE_EXTENSIONS)})")
    return unique


class ScoreInputs(Dataset):
    """Files -> un-augmented clips for the model; failures become items with a reason instead of raising.

    Item: {"path", "clip": float [N, 3, S, S] or None, "info": ClipInfo dict or None, "error": str,
    "note": str, "decode_ms": float, "decode_cpu_ms": CPU time of the decoding process for this file (its
    decoder's threads included), "decoder_peak_mb": that process's largest resident set so far}. The last two
    are measured where the file is decoded: workers forked by a fork server are not this process's children,
    so its RUSAGE_CHILDREN never sees them.
    """

    def __init__(self, paths: Sequence[str], num_frames: int, size: int, eval_crop: float = 1.0):
        self.paths = list(paths)
        self.num_frames = num_frames
        self.size = size
        self.eval_crop = eval_crop  # the model card's view: 1.0 = full short side, 224/256 for the authors' models

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.paths[index]
        item: dict[str, Any] = {"path": path, "clip": None, "info": None, "error": "", "note": ""}
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            _refuse_oversized(path, self.num_frames)
            clip, info = load_clip(path, self.num_frames, self.size, train=False, eval_crop=self.eval_crop)
            item.update(clip=clip, info=info.to_dict(), note=_clip_note(info, self.num_frames))
        except VideoDecodeError as error:
            item["error"] = error.reason
        except MemoryError:
            item["error"] = "out of memory while decoding"
        except Exception as error:  # noqa: BLE001  (a scorer must outlive any one file)
            item["error"] = f"cannot decode ({type(error).__name__}: {error})"
        item["decode_ms"] = 1000.0 * (time.perf_counter() - started)
        item["decode_cpu_ms"] = 1000.0 * (time.process_time() - cpu_started)
        item["decoder_peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        return item


def _refuse_oversized(path: str, num_frames: int) -> None:
    meta = probe_video(path)
    height, width = meta.size
    frames = max(1, min(num_frames, meta.num_frames))
    if meta.has_video and frames * height * width * 3 > MAX_DECODE_BYTES:
        raise VideoDecodeError(f"resolution {width}x{height} too large: {frames} frames need "
                               f"{frames * height * width * 3 / 2 ** 30:.1f} GiB "
                               f"(limit {MAX_DECODE_BYTES / 2 ** 30:.1f} GiB)", path)


def _clip_note(info: ClipInfo, num_frames: int) -> str:
    """Something a reviewer should know about a clip that was still scored."""
    distinct = len(set(info.frame_indices))
    if info.num_frames == 1:
        return f"single frame: repeated {num_frames} times"
    if distinct < num_frames:
        return f"only {distinct} distinct frames for {num_frames} slots"
    return ""


def collate_scored(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Keep every item in order; stack the clips of the readable ones into "clips" [B_ok, N, 3, S, S]."""
    readable = [item for item in items if item["clip"] is not None]
    return {"items": items, "clips": torch.stack([item["clip"] for item in readable]) if readable else None}


# ----------------------------------------------------------------------------------------------------
# Rows, details and contact sheets


def thumbnail_path(folder: Path, video_path: str) -> Path:
    """A contact sheet name unique per input path: <stem>-<hash of the path>.png."""
    digest = hashlib.sha1(video_path.encode("utf-8", errors="surrogateescape")).hexdigest()[:10]
    return folder / f"{Path(video_path).stem}-{digest}.png"


def render_contact_sheet(frames: np.ndarray, captions: Sequence[str], boxes: Sequence[Sequence[float] | None],
                         view_box: Sequence[float], title: str, *, height: int = 200, columns: int = 4):
    """A PIL image: frames uint8 [T, H, W, 3] in a grid, each with its box (yellow, source pixels), the
    region the model saw (grey) and a caption; `title` on top. Cells are `height` pixels high (lower for
    frames wider than 2.5 : 1)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    scale = min(height / frames.shape[1], 2.5 * height / frames.shape[2])
    height, width = max(1, round(frames.shape[1] * scale)), max(1, round(frames.shape[2] * scale))
    caption_h, title_h, pad = 16, 22, 4
    cols = min(columns, len(frames))
    rows = math.ceil(len(frames) / cols)
    sheet = Image.new("RGB", (pad + cols * (width + pad), title_h + rows * (height + caption_h + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), title, fill="black", font=font)
    for i, (frame, caption, box) in enumerate(zip(frames, captions, boxes)):
        x, y = pad + (i % cols) * (width + pad), title_h + (i // cols) * (height + caption_h + pad)
        sheet.paste(Image.fromarray(frame).resize((width, height), Image.BILINEAR), (x, y))
        vx0, vy0, vx1, vy1 = (v * scale for v in view_box)
        draw.rectangle([x + vx0, y + vy0, x + vx1 - 1, y + vy1 - 1], outline=(150, 150, 150), width=1)
        if box is not None:
            bx0, by0, bx1, by1 = (v * scale for v in box)
            draw.rectangle([x + bx0, y + by0, x + bx1 - 1, y + by1 - 1], outline=(255, 220, 0), width=2)
        draw.text((x, y + height + 2), caption, fill="black", font=font)
    return sheet


def write_contact_sheet(target: Path, record: dict[str, Any], info: ClipInfo) -> None:
    """Decode the frames the model looked at and save their contact sheet as PNG (atomically).

    When the video exited after the glance (no patch looked at), its middle sampled frame is shown."""
    selected = record["selected"]
    if selected:
        indices = [s["frame"] for s in selected]
        captions = [f"frame {s['frame']}  {s['time_s']:.2f}s" for s in selected]
        boxes: list = [s["box"] for s in selected]
    else:
        middle = info.frame_indices[len(info.frame_indices) // 2]
        indices, captions, boxes = [middle], [f"frame {middle}: glance only"], [None]
    frames = decode_frames(info.path, indices)
    probability = record["probs"][record["label"]]
    title = f"{Path(info.path).name}: {record['label']} ({probability:.2f}), exit {record['exit_step']}"
    sheet = render_contact_sheet(frames, captions, boxes, info.view_box, title)
    with atomic_write(target, "wb") as handle:
        sheet.save(handle, format="PNG")


def _error_row(item: dict[str, Any], num_classes: int) -> list[Any]:
    return [item["path"], "error", item["error"], item["note"], "", *([""] * num_classes), "", "",
            f"{item['decode_ms']:.1f}", ""]


# ----------------------------------------------------------------------------------------------------
# The run


@dataclass
class ScoreSummary:
    """What a `score_videos` call did. exit_code: 0 = at least one of the inputs has an "ok" row, 1 = none."""

    files: int
    scored: int = 0
    failed: int = 0
    skipped: int = 0
    wall_s: float = 0.0
    decode_ms: float = 0.0       # summed over files (worker time)
    decode_cpu_ms: float = 0.0   # summed over files (the decoding processes' CPU time)
    decoder_peak_mb: float = 0.0  # the largest resident set of a decoding process
    model_ms: float = 0.0        # summed over batches (main process)
    wait_s: float = 0.0          # main process waiting for decoded batches
    loop_s: float = 0.0          # the decode + score loop alone (no model loading, no merging)
    exit_code: int = 0
    outputs: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        rate = (self.scored + self.failed) / self.wall_s if self.wall_s > 0 else 0.0
        return (f"{self.scored} scored, {self.failed} failed, {self.skipped} skipped (already in the CSV) "
                f"of {self.files} files in {self.wall_s:.1f}s ({rate:.1f} files/s)")


def pipeline_batches(count: int, batch_size: int) -> list[list[int]]:
    """Indices 0..count-1 in batches that grow 1, 2, 4, ... up to ``batch_size`` and shrink again at the end.

    Growing: the model waits for one decoded file before its first batch instead of ``batch_size`` of them,
    and while it scores a batch the workers decode the next, at most twice as large. Shrinking (each of the
    last batches about half of what is left): when the last file is decoded, the model has at most a file or
    two left to score instead of a whole batch. The pipeline fills and drains in about one file's time."""
    if count < 0 or batch_size < 1:
        raise ValueError(f"need count >= 0 and batch_size >= 1, got {count} and {batch_size}")
    sizes, done, size = [], 0, 1
    while done < count:
        left = count - done
        step = min(size, batch_size, max(1, -(-left // 2)) if left < 2 * batch_size else left)
        sizes.append(step)
        done += step
        size = min(2 * size, batch_size)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [list(range(start, start + step)) for start, step in zip(starts, sizes)]


def _as_is(item: dict[str, Any]) -> dict[str, Any]:
    return item


STALLED_DECODE_S = 600.0  # no decoded file for this long: a worker is stuck, not slow (_refuse_oversized bounds a file)


def decoded_batches(dataset: ScoreInputs, batch_size: int, workers: int, *, pin_memory: bool = False,
                    stalled_s: float = STALLED_DECODE_S):
    """Collated batches (``collate_scored``) of ``dataset`` in order, in the sizes of ``pipeline_batches``.

    The workers decode file by file, so every batch is filled by all of them (a batch decoded by one worker
    while the others idle would take ``workers`` times as long), and they stay about a batch ahead of the
    model: each keeps ``batch_size / workers + 1`` files decoded in advance. Workers that send no file for
    ``stalled_s`` seconds end the run with a one-line ValueError instead of a silent wait."""
    loader = DataLoader(dataset, batch_size=None, collate_fn=_as_is, pin_memory=pin_memory,
                        prefetch_factor=-(-batch_size // workers) + 1 if workers else None,
                        timeout=stalled_s if workers else 0, **worker_processes(workers, type(dataset)))
    files = iter(loader)
    for indices in pipeline_batches(len(dataset), batch_size):
        try:
            items = [next(files) for _ in indices]
        except RuntimeError as error:
            if "timed out" not in str(error):
                raise
            raise ValueError(f"no file decoded in {stalled_s:.0f} s: a decoding worker is stuck; the rows written "
                             f"so far are kept and the same command resumes after them") from None
        yield collate_scored(items)


def model_threads(workers: int) -> int:
    """CPU threads for the model while `workers` processes decode: the cores they leave free (at least
    one). Oversubscribed cores make PyTorch's CPU kernels many times slower, not a little."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), available - workers))


@contextmanager
def cpu_threads(device: torch.device, count: int):
    """Run the block with ``count`` torch threads when ``device`` is the CPU; restore the setting after."""
    previous = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)


def fix_mmap_threshold(size: int = 128 * 1024) -> bool:
    """Serve every allocation over `size` bytes by mmap, so freed tensors go back to the OS at once.

    glibc raises its mmap threshold each time a large mmapped block is freed (up to 32 MiB), after which
    frame and activation buffers come from the heap, fragment it and are kept: a long scoring run's resident
    memory then creeps up batch after batch (measured: 434 -> 492 MB peak over an 8-minute file, flat at 469 MB
    with the threshold fixed). Setting the threshold explicitly turns that adjustment off (mallopt(3)).
    Returns False where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        return bool(libc.mallopt(M_MMAP_THRESHOLD, size))
    except (OSError, AttributeError, TypeError):
        return False


def score_videos(inputs: Sequence[str], checkpoint: str | Path, out_csv: str | Path, *,
                 details: str | Path | None = None, budget: float | None = None,
                 thumbnails: str | Path | None = None, device: str = "auto", workers: int = 2,
                 batch_size: int = 16, progress: bool = True, log: Callable[[str], None] = print,
                 engine: str = "auto", precision: str = "fp32") -> ScoreSummary:
    """Score every input video with the checkpoint; see the module docstring for the outputs' guarantees.

    CSV columns: path, status (ok | error), error, note, label, p_<class> per class, exit_step (0 = glance
    only, k = after k patches), gmacs, decode_ms, model_ms (the batch's model time shared by its files).
    details.jsonl: {"path", "status", "label", "probs": {class: p}, "exit_step", "gmacs", "selected":
    [{"frame", "time_s", "box": [x0, y0, x1, y1] in source pixels}], "glance_weights": [{"frame", "time_s",
    "weight"}] (the temporal policy over the glance frames), "source_size": [W, H], "fps",
    "thumbnail"} (errors: "path", "status", "error").
    """
    started = time.perf_counter()
    fix_mmap_threshold()
    dev = resolve_device(device)
    paths = collect_inputs(inputs)
    worker_processes(workers, ScoreInputs)  # the decoders' fork server starts while the model loads
    model, class_names, policy, eval_crop = load_scoring_model(checkpoint, dev, budget, engine=engine,
                                                               precision=precision, calibration_paths=paths[:batch_size],
                                                               log=log)
    final, thumb_dir, done = prepare_outputs(out_csv, details, thumbnails, csv_columns(class_names))
    todo = [p for p in paths if p not in done]
    summary = ScoreSummary(files=len(paths), skipped=len(paths) - len(todo))
    if summary.skipped:
        log(f"skipping {summary.skipped} of {len(paths)} files already in {final.csv}")
    c = model.config
    batches = decoded_batches(ScoreInputs(todo, c.num_candidates, c.frame_size, eval_crop), batch_size, workers,
                              pin_memory=dev.type == "cuda")
    bar = None
    if progress and todo:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), unit="file", dynamic_ncols=True, desc="scoring")
    loop_started = waited_from = time.perf_counter()
    with cpu_threads(dev, model_threads(workers)):
        for batch in batches:
            summary.wait_s += time.perf_counter() - waited_from
            rows, records = score_batch(model, batch, policy, class_names, thumb_dir, dev, summary)
            final.append(rows, records)
            if bar is not None:
                bar.update(len(batch["items"]))
            waited_from = time.perf_counter()
    summary.loop_s = time.perf_counter() - loop_started
    if bar is not None:
        bar.close()
    return finish_summary(summary, final, thumb_dir, paths, todo, started)


def load_scoring_model(checkpoint: str | Path, device: torch.device, budget: float | None, *,
                       engine: str = "auto", precision: str = "fp32", calibration_paths: Sequence[str] = (),
                       log: Callable[[str], None] = print
                       ) -> tuple[UniAdaFocus, list[str], ExitPolicy | None, float]:
    """(model ready for inference on `device` with `engine` (adafocus.core.engine), class names, exit policy
    for `budget` or None, the card's evaluation crop). `checkpoint` is a run folder or its best.pt / last.pt
    (RunFolder.locate). ``precision="int8"`` calibrates on the readable ones of `calibration_paths` (the
    first files to be scored) and logs its agreement with torch fp32 on them."""
    run, policy, eval_crop = load_scoring_run(checkpoint, device, budget, engine=engine, precision=precision,
                                              calibration_paths=calibration_paths, log=log)
    return run.model, run.card.class_names, policy, eval_crop


def load_scoring_run(checkpoint: str | Path, device: torch.device, budget: float | None, *, engine: str = "auto",
                     precision: str = "fp32", calibration_paths: Sequence[str] = (),
                     log: Callable[[str], None] = print):
    """`load_scoring_model` keeping the whole LoadedRun (its model card included): (run, exit policy or None,
    the card's evaluation crop). ``precision="auto"``: apps/runs/agreement.py (bf16 where the CPU has it, else
    int8 where the run's measured agreement allows it, else fp32; one line says which and why)."""
    run = load_run(checkpoint, device=str(device))
    if run.card.domain == "mri":
        raise ValueError(f"{run.checkpoint} is an MRI model: score scans with it (NIfTI, DICOM, BIDS, a manifest)")
    policy = None if budget is None else exit_policy_for_budget(run.folder, budget, run.model)
    eval_crop = float(run.card.input.get("eval_crop", 1.0))
    if precision == "auto":  # the best CPU precision whose agreement was measured on the run's calibration split
        prepare_run(run, engine=engine, precision="auto", log=log)
    else:
        prepare_scoring_engine(run.model, engine, precision, calibration_paths, eval_crop, policy, log)
    return run, policy, eval_crop


def prepare_scoring_engine(model: UniAdaFocus, engine: str, precision: str, calibration_paths: Sequence[str],
                           eval_crop: float, policy: ExitPolicy | None, log: Callable[[str], None]) -> None:
    """``prepare_for_inference``; for int8 (or int8-glance) calibrated on the decodable clips among
    `calibration_paths`, with one line of agreement (top-1 and exit decisions under `policy`) against torch fp32
    on those clips."""
    if not needs_calibration(precision):
        prepare_for_inference(model, engine=engine, precision=precision)
        return
    c = model.config
    inputs = ScoreInputs(list(calibration_paths), c.num_candidates, c.frame_size, eval_crop)
    clips = collate_scored([inputs[i] for i in range(len(inputs))])["clips"]
    if clips is None:
        raise EngineError(f"--precision {precision} calibrates on the first videos, and none of them could be "
                          "decoded")
    clips = clips.to(model.pixel_mean.device)
    reference = copy.deepcopy(model)
    reference.optimize_for_inference()
    prepare_for_inference(model, engine=engine, precision=precision, calibration=clips)
    agreement = prediction_agreement(reference, model, clips, policy)
    log(f"{precision} vs torch fp32 on the first videos: {format_agreement(agreement)}")


def prepare_outputs(out_csv: str | Path, details: str | Path | None, thumbnails: str | Path | None,
                    columns: list[str]) -> tuple[OutputFiles, Path | None, dict[str, str]]:
    """Create the output folders, make the CSV appendable (a partial last line dropped) and prune details
    lines without a CSV row; return (output files, thumbnail folder or None, {path: status} already done)."""
    final = OutputFiles(Path(out_csv), None if details is None else Path(details))
    for path in (final.csv, final.details):
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
    thumb_dir = None if thumbnails is None else Path(thumbnails)
    if thumb_dir is not None:
        thumb_dir.mkdir(parents=True, exist_ok=True)
    done = prepare_csv(final.csv, columns)
    if final.details is not None:
        prune_details(final.details, done)
    return final, thumb_dir, done


def finish_summary(summary: ScoreSummary, final: OutputFiles, thumb_dir: Path | None, paths: Sequence[str],
                   todo: Sequence[str], started: float) -> ScoreSummary:
    """Fill in the counts (from the CSV on disk: what is recorded is what counts), exit code and outputs."""
    _, rows = read_rows(final.csv)
    status = {row["path"]: row["status"] for row in rows}
    todo = set(todo)
    summary.scored = sum(1 for p, s in status.items() if p in todo and s == "ok")
    summary.failed = sum(1 for p, s in status.items() if p in todo and s != "ok")
    summary.exit_code = 0 if any(status.get(p) == "ok" for p in paths) else 1
    summary.wall_s = time.perf_counter() - started
    summary.outputs = {"scores": str(final.csv)}
    if final.details is not None:
        summary.outputs["details"] = str(final.details)
    if thumb_dir is not None:
        summary.outputs["thumbnails"] = str(thumb_dir)
    return summary


def glance_weights(weights: list[float], config, info: ClipInfo) -> list[dict[str, Any]]:
    """The temporal policy's weight per glance frame at that frame's source position (the glance samples
    the test-time segment centres of the candidates): [{"frame", "time_s", "weight"}] (review timeline)."""
    from adafocus.core.sampling import uniform_frames
    from adafocus.datasets.video import frame_time_s

    positions = uniform_frames(1, len(weights), config.num_candidates, random_offsets=False)[0].tolist()
    return [{"frame": info.frame_indices[p], "time_s": round(frame_time_s(info.frame_indices[p], info), 4),
             "weight": round(w, 5)} for p, w in zip(positions, weights)]


def score_batch(model: UniAdaFocus, batch: dict[str, Any], policy: ExitPolicy | None, class_names: list[str],
                 thumb_dir: Path | None, device: torch.device, summary: ScoreSummary
                 ) -> tuple[list[list[Any]], list[dict[str, Any]]]:
    """Rows (input order) and details records of one collated batch."""
    items = batch["items"]
    readable = [item for item in items if item["clip"] is not None]
    outputs: dict[str, tuple[list[Any], dict[str, Any]]] = {}
    if readable:
        started = time.perf_counter()
        with torch.inference_mode(), cuda_autocast(device):
            result = model.infer(batch["clips"].to(device, non_blocking=True), policy)
        probs, exits = result.probabilities.float().cpu(), result.exit_index.cpu()
        gmacs, frames, boxes = result.gmacs.cpu(), result.frame_indices.cpu(), result.boxes.float().cpu()
        batch_ms = 1000.0 * (time.perf_counter() - started)
        summary.model_ms += batch_ms
        for j, item in enumerate(readable):
            info = ClipInfo.from_dict(item["info"])
            label = class_names[int(probs[j].argmax())]
            record = {"path": item["path"], "status": "ok", "label": label,
                      "probs": {name: round(float(p), 6) for name, p in zip(class_names, probs[j])},
                      "exit_step": int(exits[j]), "gmacs": round(float(gmacs[j]), 6),
                      "selected": focus_locations(frames[j].tolist(), boxes[j].tolist(), info),
                      "glance_weights": glance_weights(result.frame_weights[j].float().tolist(), model.config,
                                                       info),
                      "source_size": [info.source_size[1], info.source_size[0]], "fps": info.fps,
                      "note": item["note"]}
            if thumb_dir is not None:
                record["thumbnail"] = _try_contact_sheet(thumb_dir, record, info)
            row = [item["path"], "ok", "", item["note"], label, *(f"{float(p):.6f}" for p in probs[j]),
                   int(exits[j]), f"{float(gmacs[j]):.6f}", f"{item['decode_ms']:.1f}",
                   f"{batch_ms / len(readable):.1f}"]
            outputs[item["path"]] = (row, record)
    rows, records = [], []
    for item in items:
        summary.decode_ms += item["decode_ms"]
        summary.decode_cpu_ms += item["decode_cpu_ms"]
        summary.decoder_peak_mb = max(summary.decoder_peak_mb, item["decoder_peak_mb"])
        if item["path"] in outputs:
            row, record = outputs[item["path"]]
        else:
            row = _error_row(item, len(class_names))
            record = {"path": item["path"], "status": "error", "error": item["error"]}
        rows.append(row)
        records.append(record)
    return rows, records


def _try_contact_sheet(folder: Path, record: dict[str, Any], info: ClipInfo) -> str | None:
    target = thumbnail_path(folder, info.path)
    try:
        write_contact_sheet(target, record, info)
    except (VideoDecodeError, OSError, ValueError):
        return None  # the score stands without its picture
    return str(target)
