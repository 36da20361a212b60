"""`adafocus score`: route inputs to the scorer the run's domain needs (videos, scans; locally or on Ray)."""
from __future__ import annotations

import sys

from adafocus.apps.scoring.outputs import output_paths
from adafocus.apps.scoring.videos import ScoreSummary, score_videos
from adafocus.apps.scoring.windows import parse_windows
from adafocus.core.run import load_run


def score_command(args) -> int:
    """`adafocus score` (see apps/cli.py for the arguments): score, print the summary, return the exit code."""
    if args.workers < 0 or args.batch_size < 1:
        raise ValueError(f"need --workers >= 0 and --batch-size >= 1, got {args.workers} and {args.batch_size}")
    ray_address = getattr(args, "ray", None)  # --ray: apps/scoring/ray.py (preprocessing / decoding + model on Ray)
    if load_run(args.model, device="cpu").card.domain == "mri":
        if getattr(args, "windows", None) is not None:
            raise ValueError("--windows cuts long videos; this is an MRI model")
        from adafocus.apps.scoring.scans import score_scans  # imports SimpleITK: only for scans

        executor = None
        if ray_address is not None:
            from adafocus.apps.scoring.ray import ray_scan_executor

            executor = ray_scan_executor(ray_address)
        summary = score_scans(args.inputs, args.model, args.out, details=args.details, budget=args.budget,
                              cache=args.cache, device=args.device, workers=args.workers,
                              batch_size=args.batch_size, progress=not args.quiet, executor=executor,
                              engine=args.engine, precision=args.precision,
                              include_qc_failed=args.include_qc_failed)
    else:
        out_csv, details = output_paths(args.out, args.details)
        windows = parse_windows(getattr(args, "windows", None))
        if windows is not None:
            if ray_address is not None or args.thumbnails:
                raise ValueError("--windows scores in this process, without --ray or --thumbnails")
            from adafocus.apps.scoring.long_videos import score_long_videos

            flag = [c.strip() for c in args.flag_classes.split(",") if c.strip()] if args.flag_classes else None
            summary = score_long_videos(args.inputs, args.model, out_csv, windows=windows, stride=args.stride,
                                        threshold=args.threshold, flag=flag, details=details, budget=args.budget,
                                        device=args.device, batch_size=args.batch_size, progress=not args.quiet,
                                        engine=args.engine, precision=args.precision)
        elif ray_address is not None:
            from adafocus.apps.scoring.ray import score_on_ray

            summary = score_on_ray(args.inputs, args.model, out_csv, details=details, budget=args.budget,
                                   thumbnails=args.thumbnails, device=args.device, batch_size=args.batch_size,
                                   address=ray_address, progress=not args.quiet,
                                   engine=args.engine, precision=args.precision)
        else:
            summary = score_videos(args.inputs, args.model, out_csv, details=details, budget=args.budget,
                                   thumbnails=args.thumbnails, device=args.device, workers=args.workers,
                                   batch_size=args.batch_size, progress=not args.quiet,
                                   engine=args.engine, precision=args.precision)
    return print_summary(summary)


def print_summary(summary: ScoreSummary) -> int:
    """Print what a scoring run did and where its outputs are; return its exit code."""
    print(summary.line())
    print("  ".join(f"{name}: {path}" for name, path in summary.outputs.items()))
    if summary.exit_code:
        print("nothing could be scored: every input failed (see the error column)", file=sys.stderr)
    return summary.exit_code
