"""`adafocus train`: the synthetic task, a scan manifest or a video dataset -> a run folder."""
from __future__ import annotations

import json
from pathlib import Path

from adafocus.core.checkpoint import load_checkpoint
from adafocus.core.config import Preset, get_preset
from adafocus.core.run import RunFolder


def preset_of_run(init: str | Path) -> Preset:
    """Fine-tuning: the recipe of the run (or imported model) ``init``, starting from its weights."""
    preset = Preset.from_dict(load_checkpoint(RunFolder.locate(init).checkpoint)["config"])
    preset.model.glance_pretrained = preset.model.local_pretrained = None  # the weights come from init
    preset.train.init = str(init)
    return preset


def train_command(args) -> int:
    """Train with the preset (or the --init run's recipe) and the command line's overrides; print the summary."""
    preset = preset_of_run(args.init) if args.init else get_preset(args.preset)
    for name in ("epochs", "seed", "batch_size", "workers"):
        if getattr(args, name) is not None:
            setattr(preset.train, name, getattr(args, name))
    common = {"device": args.device, "resume": not args.no_resume, "progress": not args.quiet}
    window = getattr(args, "window", None)
    if window is not None and (args.data == "synthetic" or args.data.endswith(".tsv")):
        raise ValueError("--window is for long videos in class folders (one label per file), not for "
                         f"--data {args.data}")
    if args.data == "synthetic":
        from adafocus.apps.runs.synthetic import train_synthetic

        summary = train_synthetic(preset, args.out, **common)
    elif args.data.endswith(".tsv"):
        from adafocus.apps.runs.mri import train_on_manifest

        summary = train_on_manifest(args.data, preset, args.out, axis=args.axis, context=args.context,
                                    include_qc_failed=args.include_qc_failed, **common)
    else:
        from adafocus.apps.runs.video import train_on_videos

        summary = train_on_videos(args.data, preset, args.out, window_s=window, **common)
    print(json.dumps(summary, indent=2))
    return 0
