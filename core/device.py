"""Where a model runs: the device a `--device` argument names, and mixed precision on CUDA."""
from __future__ import annotations

from contextlib import nullcontext

import torch


def resolve_device(device: str = "auto") -> torch.device:
    """"auto" -> CUDA when available, else the CPU; "cuda" without a GPU is a one-line ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available")
    return torch.device(device)


def cuda_autocast(device: torch.device, enabled: bool = True):
    """Mixed precision on CUDA (bf16 where the GPU has it, else fp16); a no-op elsewhere or when disabled.
    CPU runs stay in float32 so that CPU results are reproducible."""
    if not enabled or device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)
