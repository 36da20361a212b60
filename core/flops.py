"""Compute costs measured by running the code, reported in GMACs (multiply-accumulates / 1e9).

`torch.utils.flop_counter.FlopCounterMode` counts FLOPs of matmul/conv-like ops (2 per MAC);
the field's tables (thop, fvcore, the AdaFocus papers' "GFLOPs") count MACs, hence the halving.
Element-wise ops, normalisation, pooling and resampling are not counted, as in those tables.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def eval_mode(module: nn.Module | None) -> Iterator[None]:
    """Put `module` in eval mode, then restore every submodule's own training flag."""
    if module is None:
        yield
        return
    flags = [(sub, sub.training) for sub in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for sub, training in flags:
            sub.training = training


def _owning_module(fn: Callable) -> nn.Module | None:
    """The module behind `fn`: the module itself, or the owner of a bound method like `backbone.pooled`."""
    if isinstance(fn, nn.Module):
        return fn
    owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, nn.Module) else None


def count_gmacs(fn: Callable, *args, **kwargs) -> float:
    """GMACs of one call `fn(*args, **kwargs)`, run without gradients (module fns in eval mode).

    The count covers the whole call, i.e. the whole batch in `args`.
    """
    with eval_mode(_owning_module(fn)), torch.no_grad():
        counter = FlopCounterMode(display=False)
        with counter:
            fn(*args, **kwargs)
    return counter.get_total_flops() / 2 / 1e9


def _default_device(module: nn.Module) -> torch.device:
    tensor = next(module.parameters(), None)
    if tensor is None:
        tensor = next(module.buffers(), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def module_gmacs(
    module: nn.Module,
    input_shape: tuple[int, ...],
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> float:
    """GMACs of `module(zeros(input_shape))` (whole batch), on `device` or else the module's device."""
    device = device if device is not None else _default_device(module)
    x = torch.zeros(input_shape, dtype=dtype, device=device)
    return count_gmacs(module, x)


@dataclass
class CostTable:
    """Named components -> GMACs, in insertion order (e.g. "glance 16 x mobilenet_v2@224": 4.79)."""

    rows: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, gmacs: float) -> None:
        if name in self.rows:
            raise ValueError(f"cost table already has a row {name!r}")
        self.rows[name] = float(gmacs)

    def total(self) -> float:
        return sum(self.rows.values())

    def to_dict(self) -> dict[str, float]:
        return dict(self.rows)


def format_cost_table(rows: Mapping[str, float], *, value_header: str = "GMACs", digits: int = 4) -> str:
    """A plain-text two-column table of `rows` (name -> value), e.g. for CLI output.

    Pass `{**table.to_dict(), "total": table.total()}` to print a total line.
    """
    if not rows:
        raise ValueError("format_cost_table needs at least one row")
    values = {name: f"{value:.{digits}f}" for name, value in rows.items()}
    name_width = max(len("component"), *(len(name) for name in values))
    value_width = max(len(value_header), *(len(value) for value in values.values()))
    lines = [
        f"{'component':<{name_width}}  {value_header:>{value_width}}",
        "-" * (name_width + 2 + value_width),
    ]
    lines += [f"{name:<{name_width}}  {value:>{value_width}}" for name, value in values.items()]
    return "\n".join(lines)
