"""Video datasets on disk -> clips: any class-per-folder tree, RLVS, Diving48 (V2), long videos with one
label each (a window per item: `WindowedVideoClips`), and a persisted split.

Every dataset yields ``{"clip": float [T, 3, S, S] in [0, 1], "label": int, "info": ClipInfo.to_dict()}``
(see `adafocus.datasets.video.load_clip`) and has a `collate` for `torch.utils.data.DataLoader`.

Unreadable videos: `__getitem__` raises `VideoDecodeError`, whose message starts with the file's path and
whose `.reason` is short and user-facing. A training loop may let it stop the run (the data is broken); a
scorer catches it and records `(error.path, error.reason)` as a row. Nothing is skipped silently.
"""
from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from adafocus.core.io import atomic_write_json
from adafocus.datasets.video import VIDEO_EXTENSIONS, DecodedVideoCache, VideoDecodeError, load_clip
from torch.utils.data import Dataset

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_FORMAT_VERSION = 1
# Folders and files that archive tools leave next to the real data (macOS resource forks, etc.).
_JUNK_DIRS = {"__MACOSX"}


@dataclass(frozen=True)
class VideoSample:
    """One labelled video; `start`/`end` limit sampling to frames [start, end) when given."""

    path: str
    label: int
    start: int | None = None
    end: int | None = None


def collate_clips(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack items: clip [B, T, 3, S, S] float, label [B] int64, info: list of B dicts."""
    if not batch:
        raise ValueError("cannot collate an empty batch")
    return {
        "clip": torch.stack([item["clip"] for item in batch]),
        "label": torch.tensor([int(item["label"]) for item in batch], dtype=torch.long),
        "info": [item["info"] for item in batch],
    }


def training_draw_rng() -> np.random.Generator:
    """A numpy generator for one training clip's random frames and view, seeded from torch's RNG. A DataLoader
    seeds torch in each worker from its own generator, and the main process is seeded with the training seed, so
    a run's frame offsets and crops repeat with its seed. ``np.random.default_rng()`` alone draws from the OS's
    entropy: two trainings of one seed then sampled different clips and could end apart."""
    return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))


class VideoClipDataset(Dataset):
    """Labelled videos -> TSN-sampled clips of `num_frames` frames at size x size.

    train=True samples a random frame per segment and a random multi-scale crop + flip per item;
    train=False is deterministic (segment centres, centre crop).
    """

    collate = staticmethod(collate_clips)

    def __init__(self, items: Sequence[VideoSample], class_names: Sequence[str], *, num_frames: int,
                 size: int, train: bool):
        if num_frames < 1 or size < 1:
            raise ValueError(f"num_frames and size must be >= 1, got {num_frames} and {size}")
        self.items = list(items)
        self.class_names = list(class_names)
        self.num_frames = num_frames
        self.size = size
        self.train = train
        self.cache: DecodedVideoCache | None = None

    def keep_decoded(self, max_bytes: int) -> VideoClipDataset:
        """Keep whole decoded videos in memory (up to `max_bytes`) for repeated epochs; returns self."""
        self.cache = DecodedVideoCache(max_bytes)
        return self

    @property
    def samples(self) -> list[tuple[str, int]]:
        """(path, label) of every video, in dataset order."""
        return [(item.path, item.label) for item in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Load one clip. Raises VideoDecodeError (path + reason) when the video cannot be read."""
        item = self.items[index]
        clip, info = load_clip(item.path, self.num_frames, self.size, train=self.train,
                               rng=training_draw_rng() if self.train else None,
                               start=item.start, end=item.end, cache=self.cache)
        return {"clip": clip, "label": item.label, "info": info.to_dict()}


# ----------------------------------------------------------------------------------------------------
# Long videos with clip-level labels: one window per item


def window_span(num_frames: int, fps: float, window_s: float, *, rng: np.random.Generator | None = None
                ) -> tuple[int, int]:
    """Frames [start, end) of one window of `window_s` seconds in a video of `num_frames` frames at `fps`:
    a uniformly random start with `rng` (training: a new window every epoch), the centre window without
    (validation, test); the whole video when it is no longer than a window. The length in frames is
    `round(window_s * fps)`, as `adafocus score --windows` cuts its windows (apps/scoring/windows.py)."""
    if num_frames < 1:
        raise ValueError(f"a video without frames has no window (num_frames={num_frames})")
    if not fps > 0 or not window_s > 0:
        raise ValueError(f"need a frame rate and a window length to cut a window, got fps={fps}, "
                         f"window_s={window_s}")
    length = max(1, round(window_s * fps))
    if num_frames <= length:
        return 0, num_frames
    room = num_frames - length
    start = room // 2 if rng is None else int(rng.integers(0, room + 1))
    return start, start + length


class WindowedVideoClips(VideoClipDataset):
    """Long (untrimmed) videos with one label per file -> a clip of `num_frames` frames from one window of
    `window_s` seconds per item (`window_span`): a random window each time an item is drawn when
    train=True, the centre window otherwise; a video no longer than a window is used whole. Inside the
    window, sampling and augmentation are those of `VideoClipDataset` (TSN segments, crop, flip).

    Bring your own long labelled videos: one folder per class, any file names, any lengths,

        DATA/NonViolence/lobby_2024-05-01.mp4   DATA/Violence/car_park_cam3.mkv   ...

    and `adafocus train --data DATA --window 4 --preset cpu-video --out RUN`. The folder is the label of every
    window of its files, so a window may miss the moment that earned a file its label (weak labels): pick a
    window long enough to catch it often, or cut long files into labelled parts first. The run's model card
    records `clip_seconds` = the window, so `adafocus score LONG --model RUN --windows auto` scores long files
    in windows of the length the model was trained on. Without --window, RLVS and Diving48 clips stay whole
    clips (they are trimmed already); Diving48 refuses --window (its annotations trim each clip).

    Frame counts and rates are probed once per file (kept in `cache`); `keep_decoded` keeps whole decoded
    videos as far as they fit, as for short clips."""

    def __init__(self, items: Sequence[VideoSample], class_names: Sequence[str], *, num_frames: int, size: int,
                 train: bool, window_s: float):
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        super().__init__(items, class_names, num_frames=num_frames, size=size, train=train)
        self.window_s = float(window_s)
        self.cache = DecodedVideoCache(0)  # probes only: no room for frames until keep_decoded

    def window(self, index: int, rng: np.random.Generator | None = None) -> tuple[int, int]:
        """Frames [start, end) of item `index`'s window (random with `rng`, else the centre one)."""
        path = Path(self.items[index].path)
        meta = self.cache.meta(path)
        try:
            return window_span(meta.num_frames, meta.fps, self.window_s, rng=rng)
        except ValueError as error:
            raise VideoDecodeError(str(error), path) from None

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        rng = training_draw_rng() if self.train else None
        start, end = self.window(index, rng)
        clip, info = load_clip(item.path, self.num_frames, self.size, train=self.train, rng=rng, start=start,
                               end=end, cache=self.cache)
        return {"clip": clip, "label": item.label, "info": info.to_dict()}


# ----------------------------------------------------------------------------------------------------
# Class folders


def _is_junk(path: Path, root: Path) -> bool:
    parts = path.relative_to(root).parts
    return any(p.startswith(".") or p in _JUNK_DIRS for p in parts)


def find_videos(folder: Path, extensions: Iterable[str]) -> list[Path]:
    """Video files anywhere under `folder`, sorted; extension match ignores case; hidden files skipped."""
    wanted = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    found = [p for p in folder.rglob("*")
             if p.suffix.lower() in wanted and p.is_file() and not _is_junk(p, folder)]
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def _require_dir(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} folder not found: {root}")
    return root


class ClassFolderVideos(VideoClipDataset):
    """Any class-per-folder tree: ``root/<class>/**/<video>``; label = position of <class> in class_names.

    class_names defaults to the sorted first-level folder names (hidden and archive-junk folders skipped);
    pass it to fix the label order or to use a subset of folders. Files are found recursively and sorted,
    so the sample order is deterministic.
    """

    def __init__(self, root: str | Path, *, num_frames: int, size: int, train: bool,
                 extensions: Sequence[str] = VIDEO_EXTENSIONS, class_names: Sequence[str] | None = None):
        self.root = _require_dir(root, "dataset")
        if class_names is None:
            class_names = sorted(d.name for d in self.root.iterdir()
                                 if d.is_dir() and not _is_junk(d, self.root))
        missing = [name for name in class_names if not (self.root / name).is_dir()]
        if missing:
            raise FileNotFoundError(f"class folders missing under {self.root}: {missing}")
        items = [VideoSample(str(path), label)
                 for label, name in enumerate(class_names)
                 for path in find_videos(self.root / name, extensions)]
        if not items:
            raise ValueError(f"no videos with extensions {tuple(extensions)} under the class folders of "
                             f"{self.root}")
        super().__init__(items, class_names, num_frames=num_frames, size=size, train=train)


# ----------------------------------------------------------------------------------------------------
# Persisted stratified split


def _split_key(path: str, root: Path | None) -> str:
    p = Path(path)
    if root is None:
        return p.as_posix()
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        raise ValueError(f"{path} is not inside the split root {root}") from None


def _stratified_take(keys: list[str], labels: list[int], fraction: float, seed: int
                     ) -> tuple[list[int], list[int]]:
    """Positions (kept, taken) with about `fraction` of each class taken."""
    from sklearn.model_selection import train_test_split

    positions = list(range(len(keys)))
    if fraction == 0:
        return positions, []
    try:
        kept, taken = train_test_split(positions, test_size=fraction, random_state=seed, stratify=labels)
    except ValueError as e:
        raise ValueError(f"cannot make a stratified split of {len(keys)} videos with fraction "
                         f"{fraction:.3g}: {e}") from None
    return sorted(kept), sorted(taken)


def _make_split(keys: list[str], labels: list[int], val_fraction: float, test_fraction: float,
                seed: int) -> dict[str, list[int]]:
    rest, test = _stratified_take(keys, labels, test_fraction, seed)
    val_of_rest = val_fraction / (1.0 - test_fraction)
    kept, val = _stratified_take([keys[i] for i in rest], [labels[i] for i in rest], val_of_rest, seed)
    return {"train": [rest[i] for i in kept], "val": [rest[i] for i in val], "test": test}


def _describe_difference(stored: set[tuple[str, int]], current: set[tuple[str, int]]) -> str:
    new, gone = sorted(current - stored), sorted(stored - current)
    parts = []
    if new:
        parts.append(f"{len(new)} not in the split (e.g. {new[0][0]!r}, label {new[0][1]})")
    if gone:
        parts.append(f"{len(gone)} in the split but no longer present "
                     f"(e.g. {gone[0][0]!r}, label {gone[0][1]})")
    return "; ".join(parts)


def make_or_load_split(
    samples: Sequence[tuple[str, int]],
    split_file: str | Path,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    root: str | Path | None = None,
) -> dict[str, list[tuple[str, int]]]:
    """Stratified train/val/test split of (path, label) samples, made once and then reused from `split_file`.

    The first call draws the split (scikit-learn, stratified by label, `seed`) and writes it atomically as
    JSON; later calls load it and check that it lists exactly the same (file, label) pairs as `samples`
    (ValueError naming the difference otherwise: delete the file to re-split). Paths are stored relative
    to `root` when given, so the data folder can move. Returns {"train"|"val"|"test": [(path, label)]}
    with the paths as given in `samples`, sorted.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"need 0 <= val_fraction, test_fraction and val + test < 1, got {val_fraction}, "
                         f"{test_fraction}")
    if not samples:
        raise ValueError("cannot split an empty list of samples")
    root = None if root is None else Path(root)
    split_file = Path(split_file)
    by_key = {_split_key(path, root): (path, int(label)) for path, label in samples}
    if len(by_key) != len(samples):
        raise ValueError("samples contain the same file more than once")
    current = {(key, label) for key, (_, label) in by_key.items()}
    if split_file.exists():
        stored = json.loads(split_file.read_text(encoding="utf-8"))
        stored_names = set(stored.get("splits", {}))
        if stored.get("version") != _SPLIT_FORMAT_VERSION or stored_names != set(SPLIT_NAMES):
            raise ValueError(f"{split_file} is not a split file written by make_or_load_split")
        rows = {name: [(str(k), int(v)) for k, v in stored["splits"][name]] for name in SPLIT_NAMES}
        stored_set = {row for name in SPLIT_NAMES for row in rows[name]}
        if stored_set != current:
            raise ValueError(f"the videos changed since the split in {split_file} was made: "
                             f"{_describe_difference(stored_set, current)}. Restore the files, or delete "
                             f"the split file to draw a new split (results will not be comparable).")
        requested = {"val_fraction": val_fraction, "test_fraction": test_fraction, "seed": seed}
        if any(stored.get(k) != v for k, v in requested.items()):
            warnings.warn(f"using the existing split in {split_file} (made with "
                          f"{ {k: stored.get(k) for k in requested} }), not the requested {requested}",
                          stacklevel=2)
    else:
        keys = sorted(by_key)
        labels = [by_key[k][1] for k in keys]
        positions = _make_split(keys, labels, val_fraction, test_fraction, seed)
        rows = {name: [(keys[i], labels[i]) for i in positions[name]] for name in SPLIT_NAMES}
        split_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(split_file, {
            "version": _SPLIT_FORMAT_VERSION, "seed": seed, "val_fraction": val_fraction,
            "test_fraction": test_fraction, "relative_to_root": root is not None,
            "counts": {name: len(rows[name]) for name in SPLIT_NAMES},
            "splits": {name: [list(row) for row in rows[name]] for name in SPLIT_NAMES},
        })
    return {name: sorted(by_key[key] for key, _ in rows[name]) for name in SPLIT_NAMES}


# ----------------------------------------------------------------------------------------------------
# RLVS


def _folder_key(name: str) -> str:
    """'NonViolence', 'Non_Violence', 'nonviolence', 'Non Violence' -> 'nonviolence'."""
    return re.sub(r"[^a-z]", "", name.lower())


def _rlvs_class_dirs(folder: Path) -> dict[str, list[Path]]:
    dirs: dict[str, list[Path]] = {}
    for d in sorted(folder.iterdir()):
        if d.is_dir() and _folder_key(d.name) in RLVS.FOLDER_KEYS:
            dirs.setdefault(_folder_key(d.name), []).append(d)
    return dirs


def find_rlvs_root(root: str | Path) -> Path:
    """The folder holding RLVS's Violence/NonViolence folders: `root` itself or a folder up to two levels
    down (the Kaggle archive unpacks to ``Real Life Violence Dataset/``, sometimes inside another folder)."""
    root = _require_dir(root, "RLVS")
    level = [root]
    for _ in range(3):
        for folder in level:
            if set(_rlvs_class_dirs(folder)) == set(RLVS.FOLDER_KEYS):
                return folder
        level = [d for folder in level for d in sorted(folder.iterdir())
                 if d.is_dir() and not _is_junk(d, root)]
    raise FileNotFoundError(f"no Violence/ and NonViolence/ folders found in {root} or two levels below it")


class RLVS(VideoClipDataset):
    """Real Life Violence Situations: ``[Real Life Violence Dataset/]{Violence,NonViolence}/*.{mp4,avi}``.

    Folder names match case- and separator-insensitively (`violence`, `Non_Violence`, ...). Labels are
    fixed: 0 = NonViolence, 1 = Violence. The dataset has no official split: pass `split` ("train", "val",
    "test") and `split_file` to use a stratified split drawn once by `make_or_load_split` and stored there.
    """

    CLASS_NAMES = ("NonViolence", "Violence")
    FOLDER_KEYS: ClassVar[dict[str, int]] = {"nonviolence": 0, "violence": 1}
    EXTENSIONS = (".mp4", ".avi")

    def __init__(self, root: str | Path, *, num_frames: int, size: int, train: bool,
                 split: str | None = None, split_file: str | Path | None = None,
                 val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0):
        self.root = find_rlvs_root(root)
        class_dirs = _rlvs_class_dirs(self.root)
        samples = [(str(path), label) for key, label in sorted(self.FOLDER_KEYS.items(), key=lambda kv: kv[1])
                   for folder in class_dirs[key] for path in find_videos(folder, self.EXTENSIONS)]
        if not samples:
            raise ValueError(f"no .mp4/.avi videos in the Violence/NonViolence folders of {self.root}")
        if split is not None:
            if split not in SPLIT_NAMES:
                raise ValueError(f"split must be one of {SPLIT_NAMES}, got {split!r}")
            if split_file is None:
                raise ValueError("RLVS has no official split: pass split_file to store the one drawn here")
            samples = make_or_load_split(samples, split_file, val_fraction=val_fraction,
                                         test_fraction=test_fraction, seed=seed, root=self.root)[split]
        elif split_file is not None:
            raise ValueError("split_file given without split: pass split='train', 'val' or 'test'")
        super().__init__([VideoSample(path, label) for path, label in samples], self.CLASS_NAMES,
                         num_frames=num_frames, size=size, train=train)


# ----------------------------------------------------------------------------------------------------
# Diving48


def _find_file(root: Path, name: str) -> Path | None:
    for folder in (root, root / "annotations"):
        if (folder / name).is_file():
            return folder / name
    return None


def _load_json_list(path: Path, what: str) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, list):
        # a wrong file is a bad value for the user, not a programming error
        raise ValueError(f"{path}: expected a JSON list of {what}, got {type(data).__name__}")  # noqa: TRY004
    return data


def _diving48_class_names(path: Path) -> list[str]:
    vocab = _load_json_list(path, "[takeoff, somersault, twist, flight] entries")
    names = []
    for i, entry in enumerate(vocab):
        if not (isinstance(entry, list) and entry and all(isinstance(s, str) for s in entry)):
            raise ValueError(f"{path}: entry {i} should be a list of sub-label strings, got {entry!r}")
        names.append(" / ".join(entry))
    return names


def _diving48_sample(entry: Any, videos: Path, num_classes: int, where: str) -> VideoSample:
    try:
        name, label = str(entry["vid_name"]), int(entry["label"])
        start, end = int(entry["start_frame"]), int(entry["end_frame"])
    except (TypeError, KeyError, ValueError) as e:
        raise ValueError(f"{where}: expected vid_name, label, start_frame, end_frame; "
                         f"got {entry!r} ({e})") from None
    if not 0 <= label < num_classes:
        raise ValueError(f"{where}: label {label} outside the {num_classes} vocabulary classes")
    return VideoSample(str(videos / f"{name}.mp4"), label, start, end)


class Diving48(VideoClipDataset):
    """Diving48 with the V2 annotations.

    Expected under `root` (or `root/annotations` for the JSON files): ``Diving48_V2_{train,test}.json``
    (list of {"vid_name", "label", "start_frame", "end_frame"}), ``Diving48_vocab.json`` (48 lists of 4
    sub-labels; class name = " / ".join), and videos ``rgb/<vid_name>.mp4`` (``videos/`` as in MMAction2's
    layout also works). Sampling is limited to frames [start_frame, end_frame), end clamped to the video.
    If only the V1 file ``Diving48_{split}.json`` exists it is used with a warning: V1 labels are noisy
    and V1 results are not comparable with V2. Annotated videos missing on disk are dropped with a
    warning and listed in `missing`. `train` (augmentation) defaults to split == "train".
    """

    def __init__(self, root: str | Path, split: str = "train", *, num_frames: int, size: int,
                 train: bool | None = None):
        if split not in ("train", "test"):
            raise ValueError(f"Diving48 splits are 'train' and 'test', got {split!r}")
        self.root = _require_dir(root, "Diving48")
        annotations = _find_file(self.root, f"Diving48_V2_{split}.json")
        if annotations is None:
            annotations = _find_file(self.root, f"Diving48_{split}.json")
            if annotations is None:
                raise FileNotFoundError(f"Diving48_V2_{split}.json not found in {self.root} "
                                        f"or its annotations/")
            warnings.warn(f"using Diving48 V1 annotations {annotations.name}: V1 labels are noisy (V2 "
                          f"re-annotated them) and V1 results are not comparable with V2; get "
                          f"Diving48_V2_{split}.json", stacklevel=2)
        self.annotation_file = annotations
        vocab = _find_file(self.root, "Diving48_vocab.json")
        if vocab is None:
            raise FileNotFoundError(f"Diving48_vocab.json not found in {self.root} or its annotations/")
        class_names = _diving48_class_names(vocab)
        videos = next((self.root / d for d in ("rgb", "videos") if (self.root / d).is_dir()), None)
        if videos is None:
            raise FileNotFoundError(f"no rgb/ (or videos/) folder of Diving48 videos in {self.root}")
        entries = _load_json_list(annotations, "clip annotations")
        items = [_diving48_sample(entry, videos, len(class_names), f"{annotations} entry {i}")
                 for i, entry in enumerate(entries)]
        present = [Path(item.path).is_file() for item in items]
        self.missing = [item.path for item, ok in zip(items, present) if not ok]
        if self.missing:
            warnings.warn(f"{len(self.missing)} of {len(items)} Diving48 {split} videos are missing from "
                          f"{videos} (e.g. {Path(self.missing[0]).name}); they are left out", stacklevel=2)
        items = [item for item, ok in zip(items, present) if ok]
        if not items:
            raise ValueError(f"none of the {len(entries)} annotated Diving48 {split} videos "
                             f"exist in {videos}")
        super().__init__(items, class_names, num_frames=num_frames, size=size,
                         train=split == "train" if train is None else train)

