"""How well a two-stage pipeline (decoding, then the model) hides its slower stage: `bench score` and
`bench score --long` report it."""
from __future__ import annotations


def pipeline_overlap(end_to_end_s: float, decode_s: float, model_s: float) -> float:
    """How well scoring hides its slower stage: max(decode alone, model alone) / end to end. 1.0 = the
    pipeline runs as fast as its slowest stage; 0.5 = the two stages take turns."""
    if end_to_end_s <= 0:
        raise ValueError(f"end-to-end time must be positive, got {end_to_end_s}")
    return max(decode_s, model_s) / end_to_end_s


def overlap_bound(decode_s: float, model_s: float, cpu_s: float, cores: int) -> float:
    """The best ``pipeline_overlap`` a machine with ``cores`` CPU cores allows when both stages run on them:
    end to end cannot be shorter than the slower stage alone, nor than the two stages' CPU seconds together
    (``cpu_s``) spread over every core. 1.0 where the cores can run both at full speed at once."""
    if cores < 1:
        raise ValueError(f"need at least one core, got {cores}")
    slowest = max(decode_s, model_s)
    return slowest / max(slowest, cpu_s / cores) if slowest > 0 else 0.0
