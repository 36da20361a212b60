"""Tiny synthetic videos written with PyAV for decoding and loader tests (generated per test, not committed).

Frame i of a counter video is a flat grey image of value `i * COUNTER_STEP`, so the index of a decoded
frame is recovered from its mean intensity (`counter_of`). Encoding is lossless (x264 qp 0) up to the
RGB <-> YUV round trip, which moves a flat grey by at most one or two levels.
"""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

COUNTER_STEP = 3
MAX_COUNTER_FRAMES = 256 // COUNTER_STEP

_CODECS = {  # extension -> (codec, encoder options)
    ".mp4": ("libx264", {"qp": "0", "preset": "ultrafast"}),
    ".mkv": ("libx264", {"qp": "0", "preset": "ultrafast"}),
    ".mov": ("libx264", {"qp": "0", "preset": "ultrafast"}),
    ".avi": ("ffv1", {}),
}


def write_counter_video(path: Path, num_frames: int, *, fps: int = 25, height: int = 48, width: int = 64,
                        gop: int = 10) -> Path:
    """Write `num_frames` flat grey frames (frame i has value i * COUNTER_STEP), a keyframe every `gop`."""
    if num_frames > MAX_COUNTER_FRAMES:
        raise ValueError(f"at most {MAX_COUNTER_FRAMES} counter frames fit in uint8")
    codec, options = _CODECS[path.suffix.lower()]
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps), options=dict(options))
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(num_frames):
            image = np.full((height, width, 3), i * COUNTER_STEP, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def counter_of(frames: np.ndarray) -> list[int]:
    """Frame numbers encoded in decoded counter frames [T, H, W, 3]."""
    return [round(float(f.mean()) / COUNTER_STEP) for f in frames]


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """An AAC-in-MP4 file with a sine tone and no video stream."""
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        samples = (0.2 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
        frame_size = 1024
        for start in range(0, len(samples), frame_size):
            chunk = samples[start:start + frame_size][None, :]
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
