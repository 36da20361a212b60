"""Untrained models for speed benchmarks: speed does not depend on the weights, and nothing is downloaded."""
from __future__ import annotations

from pathlib import Path

import torch
from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.config import get_preset
from adafocus.core.model import UniAdaFocus


def untrained_checkpoint(preset_name: str, path: Path) -> Path:
    """A randomly initialised model of a preset (speed does not depend on the weights; nothing downloaded)."""
    preset = get_preset(preset_name, glance_pretrained=None, local_pretrained=None)
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, config=preset.to_dict(), model_state=UniAdaFocus(preset.model).state_dict())
    return path
