"""Checkpoints that load with `torch.load(weights_only=True)`, so opening one never runs code.

A checkpoint is a dict: {"format_version", "adafocus_version", "model_state", "config", **extra}.
Only tensors and plain containers/scalars are allowed anywhere inside it; saving checks this up
front and names the offending entry, instead of writing a file that would later refuse to load.
"""
from __future__ import annotations

import importlib.metadata
import os
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from adafocus.core.io import atomic_write

FORMAT_VERSION = 1
_RESERVED_KEYS = ("format_version", "adafocus_version", "model_state", "config")
_SCALAR_TYPES = (str, int, float, bool, type(None))
# Exact types: subclasses (numpy floats, MONAI MetaTensor, namedtuples) pickle as code to run.
_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)
_MAPPING_TYPES = (dict, OrderedDict)
_SEQUENCE_TYPES = (list, tuple)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read safely; the message says why."""


def package_version() -> str:
    try:
        return importlib.metadata.version("adafocus")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _check_weights_only_safe(value: Any, where: str) -> None:
    """Raise CheckpointError naming the first entry that weights-only loading would refuse."""
    kind = type(value)
    if kind in _TENSOR_TYPES or kind in _SCALAR_TYPES:
        return
    if kind in _MAPPING_TYPES:
        for key, item in value.items():
            if type(key) not in (str, int):
                raise CheckpointError(f"checkpoint entry {where} has a key {key!r} of type "
                                      f"{type(key).__name__}; keys must be str or int")
            _check_weights_only_safe(item, f"{where}.{key}")
        return
    if kind in _SEQUENCE_TYPES:
        for index, item in enumerate(value):
            _check_weights_only_safe(item, f"{where}[{index}]")
        return
    raise CheckpointError(
        f"checkpoint entry {where} is a {kind.__module__}.{kind.__qualname__}; only tensors, dicts, lists, "
        "tuples, str, int, float, bool and None can be stored (convert it, e.g. float(x), x.tolist(), "
        "dataclasses.asdict(x), torch.as_tensor(x))"
    )


def save_checkpoint(path: str | os.PathLike, *, model_state: dict, config: dict, **extra: Any) -> None:
    """Atomically write a weights-only-loadable checkpoint.

    Args:
        model_state: a state dict (name -> tensor).
        config: the run configuration as plain data.
        extra: more plain-data entries (optimizer state, epoch, metrics history ...).
    """
    clashes = sorted(set(extra) & set(_RESERVED_KEYS))
    if clashes:
        raise CheckpointError(f"extra checkpoint entries may not be named {clashes} (reserved names)")
    payload = {
        "format_version": FORMAT_VERSION,
        "adafocus_version": package_version(),
        "model_state": model_state,
        "config": config,
        **extra,
    }
    for key, value in payload.items():
        _check_weights_only_safe(value, key)
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


def _refusal_reason(error: pickle.UnpicklingError) -> str:
    """The line of torch's refusal naming the blocked object (not its advice to re-run unsafely)."""
    lines = [line for line in str(error).splitlines() if line.strip()] or [""]
    return next((line for line in lines if "GLOBAL" in line or "nsupported" in line), lines[-1])


def load_checkpoint(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by `save_checkpoint`, without executing any code stored in it.

    Raises CheckpointError if the file is missing, truncated, not an adafocus checkpoint, from a newer
    format, or holds pickled objects (code) that weights-only loading refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {path}")
    try:
        loaded = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"refusing to load {path}: it contains pickled Python objects beyond tensors and plain data, "
            "which could run arbitrary code when loaded. Treat the file as unsafe/untrusted; it was not "
            f"written by adafocus.core.checkpoint.save_checkpoint. (torch: {_refusal_reason(error)})"
        ) from error
    except Exception as error:  # truncated zip: RuntimeError, empty: EOFError, other bytes: KeyError ...
        raise CheckpointError(
            f"cannot read {path}: the file is truncated, corrupt, or not a torch checkpoint "
            f"({type(error).__name__}: {error})"
        ) from error
    if not isinstance(loaded, dict) or "format_version" not in loaded or "model_state" not in loaded:
        raise CheckpointError(f"{path} is a torch file but not an adafocus checkpoint "
                              "(no 'format_version' / 'model_state' entries)")
    if loaded["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {loaded['format_version']}, newer than this "
                              f"adafocus ({package_version()}) reads (<= {FORMAT_VERSION}); upgrade adafocus")
    return loaded
