"""Video files -> clips: probing, TSN segment sampling, sparse decoding, and a clip-wide spatial view.

Decoding reads only what the sampled indices need (PyAV; OpenCV when PyAV cannot open a file). Every clip
carries a `ClipInfo` that says which source frames it holds and which source rectangle its pixels show, so
anything a model says about the clip (a frame, a box) maps back to seconds and source pixels.

Frame indices
-------------
Frames are located by time, not by counting: a decoded frame's position is its presentation time in
frame periods, ``(pts - stream.start_time) * time_base * fps`` with the stream's average fps; this works
for a frame reached by seeking, where its ordinal is unknown. Index ``i`` is served by the frame on screen
at the middle of the i-th frame period, i.e. the last frame in pts order with position <= i + 0.5.
For constant-frame-rate video that is exactly the i-th frame (and timestamps may be off by up to half a
frame); for variable-frame-rate video it is the frame shown at that time, so some frames are never
served and some serve several indices. Either way ``frame_time_s(i, info)`` = i / fps is right to within
half a frame period.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mkv", ".mov", ".webm")

# Before any keyframe has been seen, a wanted frame at most this many frames ahead is reached by
# decoding forward rather than by seeking.
_DEFAULT_SEEK_GAP_FRAMES = 32
# Container frame counts are estimates (from duration x fps for mkv/webm): a wanted index at most this
# many frames past the last decoded frame gets the last frame instead of a "truncated" error.
_TAIL_SLACK_FRAMES = 2
# A frame whose index is within this distance above a wanted index is still "that" frame (pts rounding).
_INDEX_TOLERANCE = Fraction(1, 2)


class VideoDecodeError(RuntimeError):
    """A video could not be read. `reason` is short and meant for users ("zero-byte file", ...)."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(reason if path is None else f"{path}: {reason}")


@dataclass(frozen=True)
class VideoMeta:
    """What a container says about its first video stream.

    duration is in seconds, size is (H, W), num_frames is a best estimate (exact when the container
    states it, else duration x fps). has_audio is only known when PyAV opened the file.
    """

    fps: float
    num_frames: int
    duration: float
    size: tuple[int, int]
    has_video: bool
    has_audio: bool


@dataclass
class ClipInfo:
    """Where a clip came from.

    frame_indices: source frame index of each clip frame, in clip order (may repeat).
    source_size / output_size: (H, W) of the source frames and of the clip frames.
    view_box: (x0, y0, x1, y1) in source pixels, the source rectangle that each output frame shows.
    flipped: the output frames are mirrored left-right relative to view_box.
    """

    path: str
    frame_indices: list[int]
    fps: float
    num_frames: int
    source_size: tuple[int, int]
    view_box: tuple[float, float, float, float]
    output_size: tuple[int, int]
    flipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-able plain dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClipInfo:
        """Inverse of `to_dict`."""
        return cls(
            path=str(d["path"]),
            frame_indices=[int(i) for i in d["frame_indices"]],
            fps=float(d["fps"]),
            num_frames=int(d["num_frames"]),
            source_size=tuple(int(v) for v in d["source_size"]),
            view_box=tuple(float(v) for v in d["view_box"]),
            output_size=tuple(int(v) for v in d["output_size"]),
            flipped=bool(d.get("flipped", False)),
        )

    def locate(self, candidate: int, box: Sequence[float]) -> dict[str, Any]:
        """core.geometry.SourceRecord: a focus step -> {"frame", "time_s", "box": source pixels x0 y0 x1 y1}."""
        frame = self.frame_indices[candidate]
        return {"frame": frame, "time_s": round(frame_time_s(frame, self), 4),
                "box": [round(v, 1) for v in output_box_to_source(box, self)]}


def _as_info(info: ClipInfo | Mapping[str, Any]) -> ClipInfo:
    return info if isinstance(info, ClipInfo) else ClipInfo.from_dict(info)


def output_box_to_source(
    box_xyxy_normalised: Sequence[float], info: ClipInfo | Mapping[str, Any]
) -> tuple[float, float, float, float]:
    """Map a box in normalised [0, 1] (x0, y0, x1, y1) coordinates of the output frame to source pixels.

    Undoes the horizontal flip first (when the clip was flipped), then scales into `info.view_box`.
    Accepts a ClipInfo or its `to_dict()` form.
    """
    info = _as_info(info)
    if len(box_xyxy_normalised) != 4:
        raise ValueError(f"expected a box (x0, y0, x1, y1), got {box_xyxy_normalised!r}")
    x0, y0, x1, y1 = (float(v) for v in box_xyxy_normalised)
    if info.flipped:
        x0, x1 = 1.0 - x1, 1.0 - x0
    vx0, vy0, vx1, vy1 = info.view_box
    sx, sy = vx1 - vx0, vy1 - vy0
    return (vx0 + x0 * sx, vy0 + y0 * sy, vx0 + x1 * sx, vy0 + y1 * sy)


def frame_time_s(frame_index: int, info: ClipInfo | Mapping[str, Any]) -> float:
    """Presentation time in seconds of source frame `frame_index` of the clip's video."""
    info = _as_info(info)
    if not info.fps > 0:
        raise ValueError(f"clip from {info.path} has no usable frame rate (fps={info.fps})")
    return frame_index / info.fps


# ----------------------------------------------------------------------------------------------------
# Opening files and naming what is wrong with them


_SIGNATURES = (  # (offset, bytes, container name): recognised containers that PyAV then failed to open
    (4, b"ftyp", "MP4/MOV"),
    (0, b"\x1a\x45\xdf\xa3", "Matroska/WebM"),
    (0, b"RIFF", "AVI"),
)


def _read_head(path: Path, n: int = 16) -> bytes:
    """First bytes of the file, turning the usual OS failures into user-facing reasons."""
    try:
        with open(path, "rb") as f:
            head = f.read(n)
    except FileNotFoundError:
        raise VideoDecodeError("file not found", path) from None
    except IsADirectoryError:
        raise VideoDecodeError("is a directory, not a video file", path) from None
    except PermissionError:
        raise VideoDecodeError("permission denied", path) from None
    except OSError as e:
        raise VideoDecodeError(f"cannot read file ({e.strerror or e})", path) from None
    if not head:
        raise VideoDecodeError("zero-byte file", path)
    return head


def _unopenable_reason(head: bytes) -> str:
    for offset, magic, name in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return f"truncated or corrupt {name} file (container header/index unreadable)"
    return "not a video file"


def _open_pyav(path: Path) -> av.container.InputContainer | None:
    try:
        return av.open(str(path), mode="r")
    except PermissionError:
        raise VideoDecodeError("permission denied", path) from None
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError):
        return None


def _no_video_reason(has_audio: bool) -> str:
    return "no video stream (audio only)" if has_audio else "no video stream"


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoDecodeError(_no_video_reason(bool(container.streams.audio)), path)
    return container.streams.video[0]


def _stream_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate)
    return None


def _stream_fps(stream: av.video.stream.VideoStream) -> float:
    rate = _stream_rate(stream)
    return 0.0 if rate is None else float(rate)


def _stream_duration_s(container: av.container.InputContainer, stream: av.video.stream.VideoStream) -> float:
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def _count_packets(path: Path) -> int:
    """Frame count by demuxing only (no decoding); for containers that state neither count nor duration."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size)


def _probe_pyav(container: av.container.InputContainer, path: Path) -> VideoMeta:
    has_audio = bool(container.streams.audio)
    if not container.streams.video:
        duration = container.duration / av.time_base if container.duration else 0.0
        return VideoMeta(fps=0.0, num_frames=0, duration=duration, size=(0, 0), has_video=False,
                         has_audio=has_audio)
    stream = container.streams.video[0]
    fps = _stream_fps(stream)
    duration = _stream_duration_s(container, stream)
    if stream.frames > 0:
        num_frames = stream.frames
    elif duration > 0 and fps > 0:
        num_frames = max(1, round(duration * fps))
    else:
        num_frames = _count_packets(path)
    if duration <= 0 and fps > 0:
        duration = num_frames / fps
    size = (stream.codec_context.height, stream.codec_context.width)
    return VideoMeta(fps=fps, num_frames=int(num_frames), duration=duration, size=size, has_video=True,
                     has_audio=has_audio)


def _probe_opencv(path: Path) -> VideoMeta | None:
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return None
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        num_frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        size = (int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)))
    finally:
        cap.release()
    if num_frames <= 0 or size[0] <= 0:
        return None
    return VideoMeta(fps=fps, num_frames=num_frames, duration=num_frames / fps if fps > 0 else 0.0,
                     size=size, has_video=True, has_audio=False)


def probe_video(path: str | Path) -> VideoMeta:
    """Read a video's header: fps, frame count (best estimate), duration, (H, W), and whether it has video.

    Uses PyAV, and OpenCV when PyAV cannot open the file. A readable container without a video stream
    (e.g. audio only) gives `has_video=False`; files that are missing, empty, unreadable or not a video
    raise `VideoDecodeError`.
    """
    path = Path(path)
    head = _read_head(path)
    container = _open_pyav(path)
    if container is None:
        meta = _probe_opencv(path)
        if meta is None:
            raise VideoDecodeError(_unopenable_reason(head), path)
        return meta
    with container:
        return _probe_pyav(container, path)


# ----------------------------------------------------------------------------------------------------
# Temporal sampling


def segment_indices(
    num_frames: int,
    num_segments: int,
    *,
    random: bool,
    rng: np.random.Generator | None = None,
    start: int | None = None,
    end: int | None = None,
) -> list[int]:
    """TSN sampling: split frames [start, end) into `num_segments` equal segments, one frame from each.

    random=True (training) picks a uniformly random frame in each segment; random=False (test) takes each
    segment's centre. Segments are real-valued, so with fewer frames than segments frames repeat; the
    result is always non-decreasing and inside [start, end). `end` is exclusive and is clamped to
    `num_frames` (annotations often overshoot the real frame count by a frame or two).
    """
    if num_segments < 1:
        raise ValueError(f"num_segments must be >= 1, got {num_segments}")
    if num_frames < 1:
        raise ValueError(f"the video has no frames to sample (num_frames={num_frames})")
    lo = 0 if start is None else max(0, int(start))
    hi = num_frames if end is None else min(int(end), num_frames)
    if hi <= lo:
        raise ValueError(f"empty frame range [{start}, {end}) for a video of {num_frames} frames")
    length = (hi - lo) / num_segments
    if random:
        offsets = (rng if rng is not None else np.random.default_rng()).random(num_segments)
    else:
        offsets = np.full(num_segments, 0.5)
    positions = (np.arange(num_segments) + offsets) * length
    return [lo + min(int(p), hi - lo - 1) for p in positions]


# ----------------------------------------------------------------------------------------------------
# Decoding


@dataclass
class DecodeStats:
    """Filled in by `decode_frames` when passed: work done and the source frame actually returned per slot."""

    frames_decoded: int = 0
    seeks: int = 0
    backend: str = ""
    positions: list[int] = field(default_factory=list)


class _PyAVReader:
    """Forward decoding of one stream with seeks, reporting each frame's index (see module docstring)."""

    def __init__(self, container: av.container.InputContainer, stream: av.video.stream.VideoStream,
                 fps: Fraction, stats: DecodeStats):
        self.container = container
        self.stream = stream
        self.fps = fps
        self.stats = stats
        self.start_pts = stream.start_time or 0
        self.seeked_to = 0  # the frame index the last seek aimed at (0: decoding from the start)
        self._frames = container.decode(stream)
        self._pushed_back: tuple[av.VideoFrame, Fraction] | None = None
        self._last_position = Fraction(-1)

    def seek(self, index: int) -> None:
        """Continue from the keyframe at or before frame `index` (<= 0: the start of the stream)."""
        index = max(0, index)
        self.container.seek(self.start_pts + math.floor(index / self.fps / self.stream.time_base),
                            stream=self.stream, backward=True)
        self.stats.seeks += 1
        self.seeked_to = index
        self._frames = self.container.decode(self.stream)
        self._pushed_back = None
        self._last_position = Fraction(-1)

    def push_back(self, item: tuple[av.VideoFrame, Fraction]) -> None:
        """Make `item` the next frame returned (without counting it as decoded again)."""
        self._pushed_back = item

    def next_frame(self) -> tuple[av.VideoFrame, Fraction] | None:
        """The next frame and its index, or None at the end of the stream (or where the data is corrupt)."""
        if self._pushed_back is not None:
            item, self._pushed_back = self._pushed_back, None
            return item
        try:
            frame = next(self._frames)
        except StopIteration:
            return None
        except av.error.FFmpegError:
            return None  # corrupt data is treated as the end; the caller reports missing frames
        self.stats.frames_decoded += 1
        if frame.pts is None:
            position = self._last_position + 1
        else:
            position = (frame.pts - self.start_pts) * self.stream.time_base * self.fps  # exact
        self._last_position = position
        return frame, position


def _seek_gap_after_seek(reader: _PyAVReader, target: int, current_position: Fraction, seek_gap: int) -> int:
    """Seek towards `target` and return the (possibly widened) gap that justifies a seek.

    If the seek landed on a keyframe that is not ahead of where decoding already was, keyframes are
    sparser than `seek_gap` assumed: widen it so the next seek of this length is not tried.
    """
    reader.seek(target)
    item = reader.next_frame()
    if item is None:
        return seek_gap
    reader.push_back(item)
    landed = item[1]
    return max(seek_gap, math.ceil(target - landed)) if landed <= current_position else seek_gap


def _decode_pyav(container: av.container.InputContainer, path: Path, wanted: list[int],
                 stats: DecodeStats) -> tuple[dict[int, np.ndarray], dict[int, int], int]:
    """Decode the sorted unique indices `wanted`.

    Returns (frame per found index, source index actually used per found index, number of frames the
    stream turned out to hold when decoding ran off its end before finding everything, else -1).
    A frame is assigned to wanted index w once the next frame's position exceeds w + 1/2, so it is the
    frame on screen at time (w + 1/2) / fps.
    """
    stream = _video_stream(container, path)
    stream.thread_type = "AUTO"
    reader = _PyAVReader(container, stream, _stream_rate(stream) or Fraction(25), stats)
    found: dict[int, np.ndarray] = {}
    positions: dict[int, int] = {}
    seek_gap = _DEFAULT_SEEK_GAP_FRAMES
    last_keyframe: Fraction | None = None
    previous: tuple[av.VideoFrame, Fraction] | None = None
    backoff = 0  # how far before a wanted index to aim after a seek overshot it

    def take(index: int, item: tuple[av.VideoFrame, Fraction]) -> None:
        # threads=1: otherwise FFmpeg starts conversion threads for every frame, costing 300x the
        # conversion itself on small frames (2.7 ms vs 0.008 ms at 64 x 64, measured).
        found[index] = item[0].to_ndarray(format="rgb24", threads=1)
        positions[index] = max(0, round(item[1]))

    i = 0
    if wanted[0] > seek_gap:
        reader.seek(wanted[0])
    while i < len(wanted):
        item = reader.next_frame()
        if item is None:
            break
        frame, position = item
        if previous is None and reader.seeked_to > 0 and position > wanted[i] + _INDEX_TOLERANCE:
            # The seek landed after the wanted frame (some demuxers index by decode time): aim earlier.
            backoff = max(2 * backoff, seek_gap)
            reader.seek(wanted[i] - backoff)
            continue
        while i < len(wanted) and position > wanted[i] + _INDEX_TOLERANCE:
            take(wanted[i], previous if previous is not None else item)
            i += 1
        if frame.key_frame:
            if last_keyframe is not None:
                seek_gap = max(seek_gap, math.ceil(position - last_keyframe))
            last_keyframe = position
        previous = item
        if i < len(wanted) and wanted[i] - position > seek_gap:
            seek_gap = _seek_gap_after_seek(reader, wanted[i], position, seek_gap)
            previous, last_keyframe = None, None
    end_count = -1
    if i < len(wanted) and previous is not None:
        end_count = max(0, round(previous[1])) + 1
        while i < len(wanted) and wanted[i] - previous[1] <= _TAIL_SLACK_FRAMES + _INDEX_TOLERANCE:
            take(wanted[i], previous)
            i += 1
    return found, positions, end_count


def _decode_opencv(path: Path, wanted: list[int], stats: DecodeStats
                   ) -> tuple[dict[int, np.ndarray], dict[int, int], int] | None:
    """Sequential OpenCV decode (grab every frame, convert only the wanted ones); None if it cannot open."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        return None
    found: dict[int, np.ndarray] = {}
    position = -1
    try:
        for index in wanted:
            while position < index and cap.grab():
                position += 1
                stats.frames_decoded += 1
            if position < index:
                break
            ok, bgr = cap.retrieve()
            if not ok:
                break
            found[index] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    finally:
        cap.release()
    end_count = position + 1 if len(found) < len(wanted) else -1
    return found, {k: k for k in found}, end_count


def decode_frames(path: str | Path, indices: Sequence[int], *,
                  stats: DecodeStats | None = None) -> np.ndarray:
    """Decode source frames `indices` (any order, repeats allowed) -> uint8 array [T, H, W, 3] (RGB).

    Only what the indices need is decoded: PyAV seeks to the keyframe before the first wanted frame,
    decodes forward, and seeks again when the next wanted frame is further ahead than the keyframe spacing
    seen so far. Frames are matched to indices by timestamp (see the module docstring). Falls back to
    OpenCV when PyAV cannot open the file. Pass `stats` to learn the work done and, per returned frame,
    the source index actually used (which differs only where an index lies just past the real end).

    Raises VideoDecodeError with a short reason when the file cannot supply the frames.
    """
    path = Path(path)
    if len(indices) == 0:
        raise ValueError("decode_frames needs at least one frame index")
    if min(indices) < 0:
        raise ValueError(f"frame indices must be >= 0, got {min(indices)}")
    stats = stats if stats is not None else DecodeStats()
    wanted = sorted({int(i) for i in indices})
    head = _read_head(path)
    container = _open_pyav(path)
    if container is not None:
        stats.backend = "pyav"
        with container:
            found, positions, end_count = _decode_pyav(container, path, wanted, stats)
    else:
        stats.backend = "opencv"
        result = _decode_opencv(path, wanted, stats)
        if result is None:
            raise VideoDecodeError(_unopenable_reason(head), path)
        found, positions, end_count = result
    if len(found) < len(wanted):
        if not found and end_count <= 0:
            raise VideoDecodeError("no decodable video frames", path)
        available = end_count if end_count > 0 else max(positions.values(), default=-1) + 1
        plural = "s" if available != 1 else ""
        raise VideoDecodeError(f"truncated: only {available} frame{plural} decoded", path)
    stats.positions = [positions[int(i)] for i in indices]
    return np.stack([found[int(i)] for i in indices])


# ----------------------------------------------------------------------------------------------------
# Spatial view


EVAL_CROP_PAPER = 224 / 256  # the authors' evaluation view: GroupScale(256) then GroupCenterCrop(224)


def to_unit_range(frames: Tensor) -> Tensor:
    """uint8 pixels -> float32 in [0, 1]."""
    return torch.empty(frames.shape, dtype=torch.float32).copy_(frames).div_(255.0)


class ClipTransform:
    """One spatial view for the whole clip: every frame gets the same crop, flip and resize.

    train=True: a random multi-scale crop (MMAction2 MultiScaleCrop style: side lengths are `scales` times
    the short side, width and height scales at most one step apart, random position), then a horizontal
    flip with probability 0.5 when `flip`. train=False: the centred square of side `eval_crop` times the short
    side (1.0: "resize short side, then centre crop" at the same size; 224/256: the authors' "resize to 256,
    centre crop 224", EVAL_CROP_PAPER). The crop is resized to size x size.
    """

    def __init__(self, size: int, *, train: bool, scales: Sequence[float] = (1, .875, .75, .66),
                 flip: bool = True, eval_crop: float = 1.0):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if not 0 < eval_crop <= 1:
            raise ValueError(f"eval_crop must be in (0, 1], got {eval_crop}")
        self.eval_crop = float(eval_crop)
        if not scales or not all(0 < s <= 1 for s in scales):
            raise ValueError(f"scales must be in (0, 1], got {scales!r}")
        self.size = int(size)
        self.train = train
        self.scales = tuple(float(s) for s in scales)
        self.flip = flip

    def sample_view(self, height: int, width: int, rng: np.random.Generator | None = None
                    ) -> tuple[tuple[int, int, int, int], bool]:
        """Crop box (x0, y0, x1, y1) in source pixels and whether to flip, for a height x width source."""
        short = min(height, width)
        if not self.train:
            side = max(1, round(short * self.eval_crop))
            x0, y0 = (width - side) // 2, (height - side) // 2
            return (x0, y0, x0 + side, y0 + side), False
        rng = rng if rng is not None else np.random.default_rng()
        sides = [max(1, int(short * s)) for s in self.scales]
        pairs = [(h, w) for i, h in enumerate(sides) for j, w in enumerate(sides) if abs(i - j) <= 1]
        crop_h, crop_w = pairs[rng.integers(len(pairs))]
        x0 = int(rng.integers(width - crop_w + 1))
        y0 = int(rng.integers(height - crop_h + 1))
        flipped = bool(self.flip and rng.random() < 0.5)
        return (x0, y0, x0 + crop_w, y0 + crop_h), flipped

    def __call__(self, frames: np.ndarray, info: ClipInfo, rng: np.random.Generator | None = None, *,
                 scale: bool = True) -> tuple[Tensor, ClipInfo]:
        """frames uint8 [T, H, W, 3] -> float [T, 3, size, size] in [0, 1], and `info` with the new view.
        With ``scale=False`` the frames stay uint8, a quarter of the memory while they wait; `to_unit_range`
        later gives exactly the floats ``scale=True`` would have.

        `info.view_box` must describe `frames` (the full source frame for freshly decoded frames).
        """
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected frames [T, H, W, 3], got shape {frames.shape}")
        height, width = frames.shape[1:3]
        (x0, y0, x1, y1), flipped = self.sample_view(height, width, rng)
        # Resized as uint8, channels-last (the frames' own layout), then scaled to [0, 1]: as PIL resizes for the
        # authors' pipeline, and 8x faster than resizing a float copy (48 crops of 720 x 720 to 224, one
        # thread: 60 ms against 501 ms; values within 1/255 of the float resize's).
        # Antialiasing only matters when shrinking (and its kernel is several times slower when enlarging).
        shrinking = max(x1 - x0, y1 - y0) > self.size
        resized = F.interpolate(torch.from_numpy(frames[:, y0:y1, x0:x1]).permute(0, 3, 1, 2),
                                size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=shrinking)
        if flipped:
            resized = resized.flip(-1)
        out = to_unit_range(resized) if scale else resized
        # Compose with the incoming view (frames may already be a crop of the source).
        vx0, vy0, vx1, vy1 = info.view_box
        sx, sy = (vx1 - vx0) / width, (vy1 - vy0) / height
        view = (vx0 + x0 * sx, vy0 + y0 * sy, vx0 + x1 * sx, vy0 + y1 * sy)
        if info.flipped:  # mirror the crop inside the incoming (already mirrored) view
            view = (vx1 - (view[2] - vx0), view[1], vx1 - (view[0] - vx0), view[3])
        new_info = dataclasses.replace(info, view_box=view, output_size=(self.size, self.size),
                                       flipped=info.flipped != flipped)
        return out.contiguous(), new_info


class DecodedVideoCache:
    """Whole decoded videos kept in memory, so that training epochs after the first decode nothing.

    Fills up to `max_bytes` of uint8 source frames, first come first kept; a video that does not fit (or
    that cannot be decoded whole) is decoded sparsely on every request, as without a cache. Each DataLoader
    worker process holds its own cache, so it pays only with persistent workers (as `train` makes them).
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.used_bytes = 0
        self._metas: dict[str, VideoMeta] = {}
        self._videos: dict[str, tuple[np.ndarray, list[int]] | None] = {}

    def meta(self, path: Path) -> VideoMeta:
        key = str(path)
        if key not in self._metas:
            self._metas[key] = probe_video(path)
        return self._metas[key]

    def frames(self, path: Path, meta: VideoMeta) -> tuple[np.ndarray, list[int]] | None:
        """Every frame of the video [num_frames, H, W, 3] and each one's source index, or None."""
        key = str(path)
        if key not in self._videos:
            height, width = meta.size
            if self.used_bytes + meta.num_frames * height * width * 3 > self.max_bytes:
                return None  # not remembered: a later request may find room only if nothing else was kept
            stats = DecodeStats()
            try:
                frames = decode_frames(path, range(meta.num_frames), stats=stats)
            except VideoDecodeError:
                self._videos[key] = None  # a sparse decode may still get the sampled frames
                return None
            self._videos[key] = (frames, stats.positions)
            self.used_bytes += frames.nbytes
        return self._videos[key]


def load_clip(
    path: str | Path,
    num_frames: int,
    size: int,
    *,
    train: bool,
    rng: np.random.Generator | None = None,
    start: int | None = None,
    end: int | None = None,
    eval_crop: float = 1.0,
    cache: DecodedVideoCache | None = None,
) -> tuple[Tensor, ClipInfo]:
    """Probe, TSN-sample `num_frames` frames from [start, end), decode them, and apply one ClipTransform
    (`eval_crop`: see ClipTransform). With `cache`, the frames come from the whole video kept in memory.

    Returns (float [T, 3, size, size] in [0, 1], ClipInfo). Raises VideoDecodeError for unreadable files.
    """
    path = Path(path)
    meta = cache.meta(path) if cache is not None else probe_video(path)
    if not meta.has_video:
        raise VideoDecodeError(_no_video_reason(meta.has_audio), path)
    rng = rng if rng is not None else np.random.default_rng()  # one generator for frames and view
    try:
        indices = segment_indices(meta.num_frames, num_frames, random=train, rng=rng, start=start, end=end)
    except ValueError as e:
        raise VideoDecodeError(str(e), path) from None
    whole = cache.frames(path, meta) if cache is not None else None
    if whole is not None:
        frames, positions = whole[0][indices], [whole[1][i] for i in indices]
    else:
        stats = DecodeStats()
        frames, positions = decode_frames(path, indices, stats=stats), stats.positions
    height, width = frames.shape[1:3]
    info = ClipInfo(path=str(path), frame_indices=positions, fps=meta.fps, num_frames=meta.num_frames,
                    source_size=(height, width), view_box=(0.0, 0.0, float(width), float(height)),
                    output_size=(height, width))
    return ClipTransform(size, train=train, eval_crop=eval_crop)(frames, info, rng)



# ----------------------------------------------------------------------------------------------------
# Streaming long videos


@dataclass
class StreamedFrame:
    """One wanted frame from `stream_frames`: `frame` uint8 [H, W, 3] (RGB) and the source frame index
    actually served (`position`), or `frame=None` and `reason` when the file cannot supply it (a broken
    stretch or the end of the data)."""

    index: int
    frame: np.ndarray | None
    position: int = -1
    reason: str = ""


@dataclass
class StreamStats:
    """Work done by `stream_frames`: frames decoded, forward seeks, and the wanted indices lost to broken
    stretches or the end of the data [(first lost index, last lost index, reason)]."""

    frames_decoded: int = 0
    seeks: int = 0
    broken: list[tuple[int, int, str]] = field(default_factory=list)


def stream_frames(path: str | Path, wanted: Sequence[int], *, seek_gap: int = 4 * _DEFAULT_SEEK_GAP_FRAMES,
                  stats: StreamStats | None = None):
    """Decode a file once, in order, and yield a `StreamedFrame` per wanted index (sorted ascending, unique).

    For long videos: memory stays bounded whatever the length (only the last decoded frame is held), the
    stream is read forward only (a forward seek to the keyframe before a wanted frame more than `seek_gap`
    frames ahead, e.g. to resume mid-file), and a broken stretch (packets FFmpeg rejects, frames it flags
    as corrupt) does not end decoding: the wanted indices between the last good frame before it and the
    first good frame after it come out with ``frame=None`` and a reason, and decoding goes on. Wanted
    indices past the end of the data come out the same way. Index ``w`` is served by the last good frame
    whose position is <= w + 1/2 (see the module docstring).

    Raises VideoDecodeError when the file cannot be opened at all (PyAV only: no OpenCV fallback here).
    """
    path = Path(path)
    wanted = [int(i) for i in wanted]
    if any(b <= a for a, b in itertools.pairwise(wanted)) or (wanted and wanted[0] < 0):
        raise ValueError("stream_frames needs sorted, unique, non-negative indices")
    stats = stats if stats is not None else StreamStats()
    head = _read_head(path)
    container = _open_pyav(path)
    if container is None:
        raise VideoDecodeError(_unopenable_reason(head), path)
    with container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        yield from _stream_pyav(container, stream, wanted, seek_gap, stats)


def _stream_pyav(container, stream, wanted: list[int], seek_gap: int, stats: StreamStats):
    fps = _stream_rate(stream) or Fraction(25)
    start_pts = stream.start_time or 0
    time_base = stream.time_base

    def position_of(frame: av.VideoFrame, last: Fraction) -> Fraction:
        return last + 1 if frame.pts is None else (frame.pts - start_pts) * time_base * fps

    def served(index: int, item: tuple[av.VideoFrame, Fraction]) -> StreamedFrame:
        return StreamedFrame(index, item[0].to_ndarray(format="rgb24", threads=1), max(0, round(item[1])))

    i = 0
    previous: tuple[av.VideoFrame, Fraction] | None = None  # the last good frame
    last_position = Fraction(-1)  # the last frame decoded (good or not)
    broken_reason = ""  # set when data was lost after `previous`
    floor = Fraction(-1)  # frames at or before this position were already passed (after a seek)

    def lose(until: Fraction, reason: str):
        """Yield the wanted indices lost before position `until` (exclusive of those `previous` serves)."""
        nonlocal i
        lost = []
        while i < len(wanted) and wanted[i] + _INDEX_TOLERANCE < until:
            lost.append(StreamedFrame(wanted[i], None, reason=reason))
            i += 1
        if lost:
            stats.broken.append((lost[0].index, lost[-1].index, reason))
        return lost

    def frames_after_seek():
        nonlocal previous, floor, last_key, broken_reason
        target = wanted[i]
        floor = previous[1] if previous is not None else floor
        container.seek(start_pts + math.floor(max(0, target - 1) / fps / time_base), stream=stream, backward=True)
        stats.seeks += 1
        previous, last_key, broken_reason = None, None, ""

    gap, last_key = seek_gap, None
    if wanted and wanted[0] > seek_gap:
        frames_after_seek()
    while i < len(wanted):
        packets_done = True
        for packet in container.demux(stream):
            try:
                decoded = packet.decode()
            except (av.error.FFmpegError, ValueError) as error:
                broken_reason = broken_reason or f"corrupt data ({type(error).__name__})"
                continue
            for frame in decoded:
                stats.frames_decoded += 1
                position = position_of(frame, last_position)
                last_position = position
                if position <= floor:
                    continue  # a seek landed before where decoding already was
                if frame.is_corrupt:
                    broken_reason = broken_reason or "corrupt frames"
                    continue
                if broken_reason:
                    # data was lost between `previous` and this frame: `previous` still serves its own frame
                    # period, the indices after it are a gap
                    while previous is not None and i < len(wanted) and wanted[i] + _INDEX_TOLERANCE < previous[1] + 1:
                        yield served(wanted[i], previous)
                        i += 1
                    yield from lose(position, broken_reason)
                    broken_reason = ""
                while i < len(wanted) and position > wanted[i] + _INDEX_TOLERANCE:
                    yield served(wanted[i], previous if previous is not None else (frame, position))
                    i += 1
                previous = (frame, position)
                if frame.key_frame:
                    if last_key is not None:  # never seek less than the keyframe spacing: it would land behind
                        gap = max(gap, math.ceil(position - last_key))
                    last_key = position
                if i >= len(wanted):
                    break
                if wanted[i] - position > gap:
                    packets_done = False
                    break
            if i >= len(wanted) or not packets_done:
                break
        if i >= len(wanted):
            return
        if not packets_done:
            frames_after_seek()
            continue
        break  # end of the data
    # End of the data: the last good frame serves indices just past it (estimated frame counts), unless
    # data was lost after it; the rest are lost.
    if previous is not None and not broken_reason:
        while i < len(wanted) and wanted[i] - previous[1] <= _TAIL_SLACK_FRAMES + _INDEX_TOLERANCE:
            yield served(wanted[i], previous)
            i += 1
    end = "no decodable frames" if previous is None and not broken_reason else (
        f"{broken_reason} to the end of the file" if broken_reason else
        f"the video ends after frame {max(0, round(previous[1]))}")
    yield from lose(Fraction(10 ** 12), end)
