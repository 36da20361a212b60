"""A synthetic "where and when to look" video task with ground truth.

Each clip shows a small square *object* (pure red border) in a short contiguous run of frames. Its
interior carries the class as a period-2 greyscale pattern:

    class 0: horizontal stripes (rows alternate dark / bright)
    class 1: vertical stripes   (columns alternate)
    class 2: checkerboard
    class 3: flat mid-grey

Every 2x2 block of every pattern averages to the same mid-grey, and objects sit on even pixel
coordinates, so any 2x2- or 4x4-aligned area average (``F.avg_pool2d``, ``F.interpolate(mode="area")``)
of a clip is *identical* for all classes: the class is readable only at full resolution. Downsample the
glance input that way (plain bilinear at exactly 2x is the same 2x2 average). Filters whose footprint is
not aligned to the 2-pixel grid (bilinear at 4x, antialiased bilinear) keep the interior equal but leak a
one-sample ring at the pattern's edge, up to 0.15 in intensity: stripes leave a ring, checkerboard and
flat do not (the stripe phase is random, so only the ring's strength, not its sign, carries the class).
The red border keeps the object easy to *find* at glance resolution.

Distractors are squares of the same size with a green border and a random pattern of the same family,
present in all frames. Everything moves linearly by a few pixels per frame and stays inside the frame.
The background is a few blurred random blobs that change slowly over time (or real footage passed in as
``backgrounds``), plus light pixel noise (uniform, standard deviation ``noise_std``).

Sample ``i`` depends only on ``(seed, i)``; labels cycle ``i % num_classes`` so every dataset is balanced.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

PATTERN_NAMES = ("horizontal_stripes", "vertical_stripes", "checkerboard", "flat")
OBJECT_BORDER_RGB = (1.0, 0.0, 0.0)
DISTRACTOR_BORDER_RGB = (0.0, 1.0, 0.0)
PATTERN_DARK = 0.2
PATTERN_BRIGHT = 0.8
BLOB_GRID = 4  # background blobs per side: low spatial frequency
BACKGROUND_LUMA_AMPLITUDE = 0.15
BACKGROUND_CHROMA_AMPLITUDE = 0.04  # keeps the background far from pure red / green


@dataclass(frozen=True)
class FocusTaskConfig:
    """Geometry and difficulty of the synthetic focus task (all sizes in pixels).

    Sizes and the border must be even so that every object lands on the 2-pixel grid; this is what makes
    the class patterns vanish exactly under 2x / 4x area downsampling.
    """

    num_frames: int = 8
    frame_size: int = 64
    object_size: int = 14
    border: int = 2
    num_classes: int = 4
    object_frames: int = 3
    num_distractors: int = 2
    max_speed: float = 2.0
    noise_std: float = 0.02
    # A faint, noisy class cue that survives downsampling: the object's interior is brightened by
    # glance_hint * (label - (num_classes - 1) / 2) plus uniform jitter in +-glance_hint_jitter. With it the
    # glance can tell *where* class evidence lies without reading the class reliably; the Uni-AdaFocus
    # policies learn from glance features only, so with no cue at all they have nothing to learn from.
    glance_hint: float = 0.0
    glance_hint_jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if not 1 <= self.object_frames <= self.num_frames:
            raise ValueError(
                f"object_frames must be in [1, num_frames={self.num_frames}], got {self.object_frames}")
        for name in ("frame_size", "object_size", "border"):
            value = getattr(self, name)
            if value < 2 or value % 2:
                raise ValueError(f"{name} must be an even number >= 2 (objects sit on the 2-pixel grid of "
                                 f"the period-2 patterns), got {value}")
        if self.object_size - 2 * self.border < 2:
            raise ValueError(f"object_size={self.object_size} leaves no interior inside a border of "
                             f"{self.border}; need object_size >= 2 * border + 2")
        if self.object_size > self.frame_size:
            raise ValueError(f"object_size={self.object_size} does not fit in frame_size={self.frame_size}")
        if not 2 <= self.num_classes <= len(PATTERN_NAMES):
            raise ValueError(f"num_classes must be in [2, {len(PATTERN_NAMES)}] (one pattern per class: "
                             f"{', '.join(PATTERN_NAMES)}), got {self.num_classes}")
        if self.num_distractors < 0:
            raise ValueError(f"num_distractors must be >= 0, got {self.num_distractors}")
        if self.max_speed < 0:
            raise ValueError(f"max_speed must be >= 0, got {self.max_speed}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.glance_hint < 0 or self.glance_hint_jitter < 0:
            raise ValueError("glance_hint and glance_hint_jitter must be >= 0")


def pattern_interior(pattern: int, phase: int, side: int) -> np.ndarray:
    """The class pattern ``pattern`` (index into PATTERN_NAMES) as a float32 [side, side] greyscale patch.

    ``phase`` (0 or 1) shifts the stripes / checkerboard by one pixel; the 2x2-block means do not change.
    """
    rows, cols = np.indices((side, side))
    bits = {0: rows + phase, 1: cols + phase, 2: rows + cols + phase}.get(pattern)
    if bits is None:
        return np.full((side, side), (PATTERN_DARK + PATTERN_BRIGHT) / 2, dtype=np.float32)
    return np.where(bits % 2 == 1, PATTERN_BRIGHT, PATTERN_DARK).astype(np.float32)


def object_template(pattern: int, phase: int, border_rgb: Sequence[float], config: FocusTaskConfig) -> np.ndarray:
    """A bordered square as float32 [3, object_size, object_size]: coloured border, greyscale pattern inside."""
    side, b = config.object_size, config.border
    template = np.empty((3, side, side), dtype=np.float32)
    template[:] = np.asarray(border_rgb, dtype=np.float32)[:, None, None]
    template[:, b:side - b, b:side - b] = pattern_interior(pattern, phase, side - 2 * b)
    return template


def pattern_class_from_patch(patch: np.ndarray | torch.Tensor, threshold: float = 0.1) -> int:
    """Read the pattern index from an object's interior by a simple rule (an oracle, not a model).

    ``patch``: [h, w] greyscale or [C, h, w] colour, values in [0, 1] (h, w >= 2). Compares the
    mean absolute difference between vertically adjacent pixels (high for horizontal stripes) with that
    between horizontally adjacent pixels (high for vertical stripes); both high is a checkerboard, both
    low is flat. ``threshold`` is the minimum mean step counted as "high".
    """
    grey = torch.as_tensor(patch, dtype=torch.float32)
    if grey.ndim == 3:
        grey = grey.mean(dim=0)
    if grey.ndim != 2 or min(grey.shape) < 2:
        raise ValueError(f"expected a [h, w] or [C, h, w] patch with h, w >= 2, got shape {tuple(grey.shape)}")
    row_steps = (grey[1:] - grey[:-1]).abs().mean().item() > threshold
    col_steps = (grey[:, 1:] - grey[:, :-1]).abs().mean().item() > threshold
    return {(True, False): 0, (False, True): 1, (True, True): 2, (False, False): 3}[(row_steps, col_steps)]


def linear_tracks(rng: np.random.Generator, count: int, length: int, room: int, max_speed: float) -> np.ndarray:
    """Top-left corners of ``count`` squares moving in straight lines, as int64 [count, length, 2] (x, y).

    Speeds are drawn in [max_speed / 2, max_speed] pixels per frame in a random direction, shrunk where
    needed so the whole track fits in [0, room]. Corners are rounded to even pixels (the pattern grid).
    """
    angle = rng.uniform(0.0, 2 * np.pi, size=count)
    speed = rng.uniform(0.5, 1.0, size=count) * max_speed
    velocity = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)  # [count, 2]
    travel = velocity * (length - 1)
    longest = np.abs(travel).max(axis=1, initial=0.0)
    shrink = np.minimum(1.0, room / np.maximum(longest, 1e-9))[:, None]
    velocity, travel = velocity * shrink, travel * shrink
    low, high = np.maximum(0.0, -travel), room - np.maximum(0.0, travel)
    start = low + rng.uniform(size=(count, 2)) * (high - low)
    positions = start[:, None, :] + np.arange(length)[None, :, None] * velocity[:, None, :]
    return np.clip(2 * np.round(positions / 2), 0, room).astype(np.int64)


def blob_basis(frame_size: int, blobs: int = BLOB_GRID) -> np.ndarray:
    """Row-normalised Gaussian bumps, float32 [frame_size, blobs]: ``B @ grid @ B.T`` blurs a random grid."""
    centres = (np.arange(blobs) + 0.5) * frame_size / blobs
    width = frame_size / blobs
    weights = np.exp(-0.5 * ((np.arange(frame_size)[:, None] + 0.5 - centres[None, :]) / width) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def blob_background(rng: np.random.Generator, num_frames: int, basis: np.ndarray) -> np.ndarray:
    """Smooth, slowly changing random background, float32 [T, 3, H, W] with values in about [0.2, 0.8].

    A luminance grid shared by the channels plus weak per-channel tints, blended from one random state to
    another over the clip and blurred by ``basis`` ([H, g], see ``blob_basis``).
    """
    g = basis.shape[1]
    base = rng.uniform(0.35, 0.6)
    luma = rng.uniform(-1, 1, size=(2, 1, g, g)) * BACKGROUND_LUMA_AMPLITUDE
    tint = rng.uniform(-1, 1, size=(2, 3, g, g)) * BACKGROUND_CHROMA_AMPLITUDE
    states = base + luma + tint  # [2, 3, g, g]
    blend = np.linspace(0.0, 1.0, num_frames)[:, None, None, None]
    grids = ((1 - blend) * states[0] + blend * states[1]).astype(np.float32)  # [T, 3, g, g]
    return basis @ grids @ basis.T


def prepare_backgrounds(backgrounds: np.ndarray | torch.Tensor, frame_size: int) -> np.ndarray:
    """Real frames [N, H, W, 3] (uint8, or float in [0, 1]) -> float32 [N, 3, S, S], S = frame_size.

    Short side resized to S (area interpolation when shrinking), then centre-cropped to a square.
    """
    import cv2

    frames = backgrounds.numpy() if isinstance(backgrounds, torch.Tensor) else np.asarray(backgrounds)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"backgrounds must be frames [N, H, W, 3] with N >= 1, got shape {frames.shape}")
    frames = frames.astype(np.float32) / 255.0 if frames.dtype == np.uint8 else frames.astype(np.float32)
    height, width = frames.shape[1:3]
    scale = frame_size / min(height, width)
    new_w, new_h = max(frame_size, round(width * scale)), max(frame_size, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = np.stack([cv2.resize(f, (new_w, new_h), interpolation=interpolation) for f in frames])
    top, left = (new_h - frame_size) // 2, (new_w - frame_size) // 2
    square = resized[:, top:top + frame_size, left:left + frame_size]
    return np.ascontiguousarray(np.clip(square, 0.0, 1.0).transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class Scene:
    """Everything random about one sample; rendering it is deterministic.

    background: float32 [T, 3, H, W]; noise: float32 [T, 3, H, W] or None; object_start: first object frame;
    object_corners: int64 [object_frames, 2] (x, y); distractor_corners: int64 [D, T, 2];
    distractor_patterns / distractor_phases: int64 [D]; object_phase: 0 or 1; label: the object's pattern.
    """

    label: int
    background: np.ndarray
    noise: np.ndarray | None
    object_start: int
    object_corners: np.ndarray
    object_phase: int
    distractor_corners: np.ndarray
    distractor_patterns: np.ndarray
    distractor_phases: np.ndarray
    hint_jitter: float = 0.0


def corners_to_boxes(corners: np.ndarray, side: int) -> np.ndarray:
    """Top-left corners [..., 2] (x, y) -> float32 boxes [..., 4] (x0, y0, x1, y1), x1/y1 exclusive."""
    corners = corners.astype(np.float32)
    return np.concatenate([corners, corners + side], axis=-1)


def object_centre(boxes: torch.Tensor) -> torch.Tensor:
    """Box centres: boxes [..., 4] (x0, y0, x1, y1) -> [..., 2] (x, y). NaN boxes give NaN centres."""
    boxes = torch.as_tensor(boxes)
    return (boxes[..., :2] + boxes[..., 2:]) / 2


class SyntheticFocusDataset(torch.utils.data.Dataset):
    """``num_samples`` clips of the focus task; item i is a dict (see ``sample``), a pure function of (seed, i).

    ``backgrounds``: optional real frames [N, H, W, 3] (uint8 or float in [0, 1]) used instead of the
    random blobs; each clip takes a random run of T consecutive frames (cycling when N < T). Real footage
    with red or green regions makes the object harder to find; that is the caller's choice.
    """

    def __init__(self, num_samples: int, config: FocusTaskConfig = FocusTaskConfig(), seed: int = 0,
                 backgrounds: np.ndarray | torch.Tensor | None = None) -> None:
        if num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {num_samples}")
        self.num_samples = num_samples
        self.config = config
        self.seed = seed
        self.backgrounds = None if backgrounds is None else prepare_backgrounds(backgrounds, config.frame_size)
        self._basis = blob_basis(config.frame_size)
        patterns = range(len(PATTERN_NAMES))
        self._object_templates = {(p, ph): object_template(p, ph, OBJECT_BORDER_RGB, config)
                                  for p in patterns for ph in (0, 1)}
        self._distractor_templates = {(p, ph): object_template(p, ph, DISTRACTOR_BORDER_RGB, config)
                                      for p in patterns for ph in (0, 1)}

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        return self.sample(i)

    def scene(self, i: int) -> Scene:
        """The random content of item i. Draw order never depends on the label, so ``sample(i, label)``
        differs from item i only inside the object."""
        if not 0 <= i < self.num_samples:
            raise IndexError(f"index {i} out of range for a dataset of {self.num_samples} samples")
        cfg = self.config
        rng = np.random.default_rng((self.seed, i))
        room = cfg.frame_size - cfg.object_size
        if self.backgrounds is None:
            background = blob_background(rng, cfg.num_frames, self._basis)
        else:
            first = rng.integers(len(self.backgrounds))
            background = self.backgrounds[(first + np.arange(cfg.num_frames)) % len(self.backgrounds)]
        object_start = int(rng.integers(cfg.num_frames - cfg.object_frames + 1))
        object_corners = linear_tracks(rng, 1, cfg.object_frames, room, cfg.max_speed)[0]
        distractor_corners = linear_tracks(rng, cfg.num_distractors, cfg.num_frames, room, cfg.max_speed)
        phases = rng.integers(2, size=cfg.num_distractors + 1)
        distractor_patterns = rng.integers(cfg.num_classes, size=cfg.num_distractors)
        hint_jitter = float(rng.uniform(-1.0, 1.0)) * cfg.glance_hint_jitter
        noise = None
        if cfg.noise_std > 0:
            shape = (cfg.num_frames, 3, cfg.frame_size, cfg.frame_size)
            # Uniform rather than Gaussian noise of the same std: 4x cheaper to draw, and bounded.
            noise = (rng.random(shape, dtype=np.float32) - np.float32(0.5)) * np.float32(cfg.noise_std * 12 ** 0.5)
        return Scene(label=i % cfg.num_classes, background=background, noise=noise, object_start=object_start,
                     object_corners=object_corners, object_phase=int(phases[0]),
                     distractor_corners=distractor_corners, distractor_patterns=distractor_patterns,
                     distractor_phases=phases[1:], hint_jitter=hint_jitter)

    def render(self, scene: Scene) -> np.ndarray:
        """Draw a scene as float32 [T, 3, H, W] in [0, 1]; the object is drawn last (never occluded)."""
        side = self.config.object_size
        clip = scene.background.copy()
        for corners, pattern, phase in zip(scene.distractor_corners, scene.distractor_patterns,
                                           scene.distractor_phases):
            template = self._distractor_templates[int(pattern), int(phase)]
            for t, (x, y) in enumerate(corners):
                clip[t, :, y:y + side, x:x + side] = template
        template = self._object_templates[scene.label, scene.object_phase]
        cfg, b = self.config, self.config.border
        hint = cfg.glance_hint * (scene.label - (cfg.num_classes - 1) / 2) + scene.hint_jitter
        for offset, (x, y) in enumerate(scene.object_corners):
            clip[scene.object_start + offset, :, y:y + side, x:x + side] = template
            clip[scene.object_start + offset, :, y + b:y + side - b, x + b:x + side - b] += hint
        if scene.noise is not None:
            clip += scene.noise
        return np.clip(clip, 0.0, 1.0, out=clip)

    def sample(self, i: int, label: int | None = None) -> dict:
        """Item i, optionally with its object showing class ``label`` instead (for counterfactual checks).

        Returns a dict:
          clip:              float32 [T, 3, H, W], values in [0, 1]
          label:             int, the object's class
          object_frames:     bool [T], True where the object is visible (one contiguous run)
          object_boxes:      float32 [T, 4] (x0, y0, x1, y1) in pixels incl. border, x1/y1 exclusive;
                             NaN rows where the object is absent
          distractor_boxes:  float32 [T, D, 4], same convention (distractors are always present)
          frame_index:       int64 [T], 0..T-1
        """
        cfg = self.config
        scene = self.scene(i)
        if label is not None:
            if not 0 <= label < cfg.num_classes:
                raise ValueError(f"label must be in [0, {cfg.num_classes}), got {label}")
            scene = replace(scene, label=label)
        frames = torch.zeros(cfg.num_frames, dtype=torch.bool)
        frames[scene.object_start:scene.object_start + cfg.object_frames] = True
        boxes = torch.full((cfg.num_frames, 4), float("nan"), dtype=torch.float32)
        boxes[frames] = torch.from_numpy(corners_to_boxes(scene.object_corners, cfg.object_size))
        distractor_boxes = corners_to_boxes(scene.distractor_corners, cfg.object_size).reshape(
            cfg.num_distractors, cfg.num_frames, 4).transpose(1, 0, 2)
        return {
            "clip": torch.from_numpy(self.render(scene)),
            "label": scene.label,
            "object_frames": frames,
            "object_boxes": boxes,
            "distractor_boxes": torch.from_numpy(np.ascontiguousarray(distractor_boxes)),
            "frame_index": torch.arange(cfg.num_frames, dtype=torch.long),
        }


def collate(batch: Sequence[dict]) -> dict:
    """Stack a list of items into a batch: tensors gain a leading B dimension, labels become int64 [B]."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    return {key: torch.stack([item[key] for item in batch]) if isinstance(batch[0][key], torch.Tensor)
            else torch.tensor([item[key] for item in batch]) for key in batch[0]}


def clip_to_uint8_frames(clip: torch.Tensor, upscale: int = 1) -> np.ndarray:
    """float [T, 3, H, W] in [0, 1] -> uint8 [T, H*upscale, W*upscale, 3] (nearest-neighbour upscaling)."""
    frames = (clip.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    if upscale > 1:
        frames = frames.repeat(upscale, axis=1).repeat(upscale, axis=2)
    return np.ascontiguousarray(frames)


def encode_video(path: Path, frames: np.ndarray, fps: int, crf: int) -> None:
    """Write uint8 frames [T, H, W, 3] (H, W even) as H.264 yuv420p (MPEG-4 Part 2 if libx264 is missing),
    atomically: a temporary file in the same folder is renamed into place."""
    import av

    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {width}x{height}")
    if "libx264" in av.codecs_available:
        codec, options = "libx264", {"crf": str(crf), "preset": "medium"}
    else:  # PyAV builds without libx264: FFmpeg's own MPEG-4 Part 2 encoder at its best quality
        codec, options = "mpeg4", {"qscale": "1"}
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        with av.open(tmp_name, mode="w") as container:
            stream = container.add_stream(codec, rate=Fraction(fps), options=options)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_class_folder_videos(root: str | os.PathLike, dataset: torch.utils.data.Dataset,
                              class_names: Sequence[str], *, fps: int = 10, ext: str = ".mp4",
                              upscale: int = 1, crf: int = 12) -> Path:
    """Write every clip of ``dataset`` as ``root/<class_names[label]>/clip_<i:05d><ext>`` (RLVS-style
    class folders) and ``root/ground_truth.jsonl``; return the path of the latter.

    Each JSONL line: ``path`` (relative to root, '/'-separated), ``index``, ``label``, ``class_name``,
    ``object_frames`` (list of bool), ``boxes`` (per frame [x0, y0, x1, y1] in pixels of the written video,
    or null), ``width``, ``height``, ``fps``, ``upscale``.

    Encoding: libx264, yuv420p, constant quality ``crf`` (default 12: the greyscale period-2 patterns live
    in the full-resolution luma plane and survive; the 2-pixel red border survives 4:2:0 chroma because
    objects sit on even pixels). ``upscale`` > 1 enlarges frames by nearest neighbour first (boxes scale
    with it), which makes the patterns robust to stronger compression or later resizing.
    """
    if upscale < 1:
        raise ValueError(f"upscale must be >= 1, got {upscale}")
    if len(set(class_names)) != len(class_names) or any(not n or "/" in n or os.sep in n for n in class_names):
        raise ValueError(f"class_names must be distinct, non-empty folder names, got {list(class_names)}")
    num_classes = getattr(getattr(dataset, "config", None), "num_classes", None)
    if num_classes is not None and len(class_names) < num_classes:
        raise ValueError(f"the dataset has {num_classes} classes but only {len(class_names)} class_names "
                         f"were given: {list(class_names)}")
    if not ext.startswith("."):
        raise ValueError(f"ext must start with '.', got {ext!r}")
    root = Path(root)
    records = []
    for i in range(len(dataset)):
        item = dataset[i]
        label = int(item["label"])
        if not 0 <= label < len(class_names):
            raise ValueError(f"item {i} has label {label} but only {len(class_names)} class_names were given")
        relative = f"{class_names[label]}/clip_{i:05d}{ext}"
        (root / class_names[label]).mkdir(parents=True, exist_ok=True)
        frames = clip_to_uint8_frames(item["clip"], upscale)
        encode_video(root / relative, frames, fps, crf)
        boxes = [None if torch.isnan(box).any() else [float(v) * upscale for v in box]
                 for box in item["object_boxes"]]
        records.append({"path": relative, "index": i, "label": label, "class_name": class_names[label],
                        "object_frames": [bool(f) for f in item["object_frames"]], "boxes": boxes,
                        "width": frames.shape[2], "height": frames.shape[1], "fps": fps, "upscale": upscale})
    root.mkdir(parents=True, exist_ok=True)
    target = root / "ground_truth.jsonl"
    handle, tmp_name = tempfile.mkstemp(prefix=".ground_truth-", suffix=".jsonl", dir=root)
    with os.fdopen(handle, "w") as out:
        out.writelines(json.dumps(record) + "\n" for record in records)
    os.replace(tmp_name, target)
    return target
