"""Models and exit policies shared by tests."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.config import get_preset
from adafocus.core.exits import ExitPolicy, exit_scores
from adafocus.core.model import UniAdaFocus


def spread_policy(model: UniAdaFocus, clip: torch.Tensor) -> ExitPolicy:
    """Thresholds half-way between neighbouring scores, so a quarter of the clips leave at each early exit
    and no clip sits on a threshold (where rounding could move it)."""
    logits = model.infer(clip).logits
    thresholds = []
    for k in range(logits.shape[1] - 1):
        ranked = exit_scores(logits[:, k], "entropy").sort(descending=True).values
        cut = clip.shape[0] // 4
        thresholds.append(float((ranked[cut - 1] + ranked[cut]) / 2))
    thresholds.append(float("-inf"))
    return ExitPolicy(criterion="entropy", thresholds=thresholds, exit_costs=model.exit_costs(), q=1.0, budget=0.0,
                      calibration_cost=0.0)


def untrained_video_run(folder: Path) -> Path:
    """An untrained cpu-video model (2 classes, 12 frames of 128 px, 3 focus steps) with class names; its best.pt."""
    torch.manual_seed(0)
    preset = get_preset("cpu-video")
    save_checkpoint(folder / "best.pt", config=preset.to_dict(), model_state=UniAdaFocus(preset.model).state_dict())
    (folder / "classes.json").write_text(json.dumps(["NonViolence", "Violence"]), encoding="utf-8")
    return folder / "best.pt"


def tiny_video_preset(batch_size: int):
    """cpu-video shrunk to 4 candidate frames of 32 px and one epoch: a run trained in seconds."""
    import dataclasses

    preset = get_preset("cpu-video")
    preset.train = dataclasses.replace(preset.train, epochs=1, batch_size=batch_size, workers=0)
    preset.model = dataclasses.replace(preset.model, num_candidates=4, num_glance=4, num_focus=2, frame_size=32,
                                       glance_size=16, min_patch_side=16, max_patch_side=32, patch_size=16)
    return preset
