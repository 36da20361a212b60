"""`adafocus import-official CKPT --out RUN`: the authors' released checkpoint as a run folder that `score`,
`calibrate`, the review app and `train --init` load like any trained run (see adafocus.core.official)."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.io import atomic_write_json
from adafocus.core.official import OfficialCheckpointError, import_official
from adafocus.core.run import (
    BEST_FILE,
    RunFolder,
    checkpoint_extra,
    frames_input,
    make_card,
)
from adafocus.datasets.video import EVAL_CROP_PAPER


def load_official_file(path: str | Path) -> dict:
    """``torch.load`` with weights_only=True; their files may hold numpy scalars (``best_prec1``), which are
    allowed as plain data, nothing else."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    numpy_scalars = [np.dtype, type(np.dtype(np.float64)), type(np.dtype(np.float32)), type(np.dtype(np.int64))]
    scalar = getattr(np, "_core", np.core).multiarray.scalar
    try:
        with torch.serialization.safe_globals([scalar, *numpy_scalars]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise OfficialCheckpointError(f"refusing {path}: it holds Python objects beyond tensors and plain data "
                                      f"({str(error).splitlines()[0]})") from error
    except (RuntimeError, EOFError) as error:
        raise OfficialCheckpointError(f"cannot read {path}: truncated or not a torch checkpoint ({error})") from error


def checked_class_names(names: list[str], num_classes: int, source: object) -> list[str]:
    if len(names) != num_classes:
        raise ValueError(f"{source} lists {len(names)} class names; the checkpoint has {num_classes} classes")
    return names


def import_official_run(checkpoint: str | Path, out: str | Path, *, variant: str = "auto",
                        classes: list[str] | None = None, patch_size: int = 128, focus_frames: int | None = None,
                        candidates: int | None = None, allow_partial: bool = False) -> dict:
    """Convert the authors' checkpoint into the run folder ``out``; returns a summary. Refuses an existing run
    folder, and a checkpoint that does not fill the model exactly unless ``allow_partial``."""
    run = RunFolder(Path(out))
    if run.best.exists():
        raise ValueError(f"{run.best} exists; import into a new --out folder")
    model, preset, report = import_official(load_official_file(checkpoint), variant, patch_size=patch_size,
                                            num_focus=focus_frames, num_candidates=candidates)
    if not report.complete and not allow_partial:
        raise OfficialCheckpointError(f"{checkpoint} does not fit the {report.variant} model: {report.problems()} "
                                      "(--allow-partial imports it anyway)")
    num_classes = preset.model.num_classes
    names = checked_class_names(list(classes), num_classes, "--classes") if classes else [f"class_{i}" for i in range(num_classes)]
    config = preset.to_dict()
    card = make_card("video", config, names, frames_input(config["model"], eval_crop=EVAL_CROP_PAPER))
    source = {"file": Path(checkpoint).name, "variant": report.variant, "loaded_tensors": report.loaded,
              "unused_tensors": report.unused, "unmapped": report.unmapped, "unfilled": report.unfilled}
    run.path.mkdir(parents=True, exist_ok=True)
    save_checkpoint(run.best, model_state=model.state_dict(), config=config, official_source=source,
                    **checkpoint_extra(card))
    atomic_write_json(run.config, config)
    run.write_classes(names)
    run.write_card(card)
    return {"run": str(run.path), "model": str(run.path / BEST_FILE), **source,
            "num_classes": num_classes, "frames": {"glance": preset.model.num_glance,
                                                   "focus": preset.model.num_focus,
                                                   "candidates": preset.model.num_candidates}}


def import_official_command(args) -> int:
    summary = import_official_run(args.checkpoint, args.out, variant=args.variant, classes=args.classes,
                                  patch_size=args.patch_size, focus_frames=args.focus_frames,
                                  candidates=args.candidates, allow_partial=args.allow_partial)
    unused = summary["unused_tensors"]
    print(f"imported {summary['variant']} checkpoint {summary['file']}: {summary['loaded_tensors']} tensors -> "
          f"{summary['model']} ({summary['num_classes']} classes; {summary['frames']['glance']} glance + "
          f"{summary['frames']['focus']} focus frames of {summary['frames']['candidates']})")
    if unused:
        print(f"not used (the authors' forward does not use them either): "
              f"{', '.join(sorted({k.rsplit('.', 1)[0] for k in unused}))}")
    return 0
