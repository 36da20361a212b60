"""Long videos as windows: which frames each window scores, and how window scores become flagged segments.

Small pure functions (no files, no model): `window_seconds` (what `--windows auto|SECONDS` means for one
file), `plan_windows` (the windows of a file and the frames each one samples), `flag_segments` (consecutive
windows over a threshold merged into segments) and `file_label` (one label for a whole file).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adafocus.datasets.video import segment_indices

# The window when the model card does not say how long its training clips were: RLVS clips run 3-7 s.
DEFAULT_WINDOW_S = 4.0
# Model card input keys that may record the training clips' typical duration, in seconds.
CLIP_SECONDS_KEYS = ("clip_seconds", "clip_duration_s", "typical_clip_s")


@dataclass(frozen=True)
class Window:
    """Frames [start, end) of a file, scored as one clip; `frames` are the source indices it samples."""

    index: int
    start: int
    end: int
    fps: float
    frames: tuple[int, ...]

    @property
    def start_s(self) -> float:
        return round(self.start / self.fps, 3)

    @property
    def end_s(self) -> float:
        return round(self.end / self.fps, 3)


def parse_windows(text: str | None) -> str | float | None:
    """`--windows` -> None (off), "auto", or a window length in seconds (> 0)."""
    if text is None:
        return None
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"--windows takes auto or a number of seconds, got {text!r}") from None
    if not seconds > 0:
        raise ValueError(f"--windows needs a positive number of seconds, got {text!r}")
    return seconds


def card_window_seconds(card_input: Mapping[str, Any]) -> tuple[float, str]:
    """The window `auto` uses for this model and where it comes from: the training clips' typical duration
    when the model card records it, else DEFAULT_WINDOW_S."""
    for key in CLIP_SECONDS_KEYS:
        value = card_input.get(key)
        if isinstance(value, (int, float)) and value > 0:
            return float(value), f"the model card's {key}"
    return DEFAULT_WINDOW_S, f"the default {DEFAULT_WINDOW_S:g} s (the model card does not record its clips' duration)"


def window_seconds(windows: str | float, stride: float | None, card_input: Mapping[str, Any]) -> tuple[float, float]:
    """(window, stride) in seconds for `--windows` (auto or seconds) and `--stride` (default: half a window)."""
    window = card_window_seconds(card_input)[0] if windows == "auto" else float(windows)
    stride = window / 2 if stride is None else float(stride)
    if not window > 0 or not stride > 0:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    return window, stride


def plan_windows(num_frames: int, fps: float, window_s: float, stride_s: float, num_candidates: int) -> list[Window]:
    """The windows of a file of `num_frames` frames at `fps`: `window_s` long, one every `stride_s`, the last
    one moved back to end with the file (so the tail is scored); a file no longer than one window is one
    window over all of it (sampled exactly as a whole-file clip). Each window samples `num_candidates`
    frames at its segment centres (test-time TSN sampling, as whole clips are)."""
    if num_frames < 1:
        raise ValueError(f"a video without frames has no windows (num_frames={num_frames})")
    if not fps > 0:
        raise ValueError(f"need the frame rate to cut windows, got fps={fps}")
    length = max(1, round(window_s * fps))
    step = max(1, round(stride_s * fps))
    if num_frames <= length:
        spans = [(0, num_frames)]
    else:
        spans = [(start, start + length) for start in range(0, num_frames - length, step)]
        if spans[-1][1] < num_frames:
            spans.append((num_frames - length, num_frames))
    return [Window(k, a, b, float(fps), tuple(segment_indices(num_frames, num_candidates, random=False, start=a, end=b)))
            for k, (a, b) in enumerate(spans)]


@dataclass(frozen=True)
class Segment:
    """Consecutive windows whose score for `label` reached the threshold, merged."""

    label: str
    start_s: float
    end_s: float
    peak_score: float
    peak_start_s: float
    mean_score: float
    first_window: int
    last_window: int


def flag_segments(windows: Sequence[Mapping[str, Any]], label: str, threshold: float) -> list[Segment]:
    """Merge runs of consecutive windows with ``probs[label] >= threshold`` into segments [start_s, end_s].

    `windows`: records in window order with "index", "start_s", "end_s" and "probs" ({class: p}); a record
    without "probs" (a gap: frames that could not be decoded) or a missing index ends a run. Each segment
    has its peak and mean score over its windows and the start of its peak window."""
    segments: list[Segment] = []
    run: list[Mapping[str, Any]] = []

    def close() -> None:
        if run:
            scores = [float(w["probs"][label]) for w in run]
            peak = max(range(len(run)), key=scores.__getitem__)
            segments.append(Segment(label, float(run[0]["start_s"]), float(run[-1]["end_s"]), round(scores[peak], 6),
                                    float(run[peak]["start_s"]), round(sum(scores) / len(scores), 6),
                                    int(run[0]["index"]), int(run[-1]["index"])))
            run.clear()

    for window in windows:
        probs = window.get("probs")
        if run and int(window["index"]) != int(run[-1]["index"]) + 1:
            close()
        if probs is not None and float(probs[label]) >= threshold:
            run.append(window)
        else:
            close()
    close()
    return segments


def flagged_classes(class_names: Sequence[str], chosen: Sequence[str] | None = None) -> list[str]:
    """Classes that segments are flagged for: `chosen` (checked), else every class but the first of a
    two-class model (its negative class, e.g. NonViolence), else every class."""
    if chosen:
        unknown = [c for c in chosen if c not in class_names]
        if unknown:
            raise ValueError(f"--flag-classes {', '.join(unknown)}: the model's classes are {', '.join(class_names)}")
        return list(chosen)
    return list(class_names[1:]) if len(class_names) == 2 else list(class_names)


def file_label(max_probs: Mapping[str, float], flagged: Sequence[str], threshold: float) -> str:
    """One label for a whole file from each class's maximum over its windows: the flagged class with the
    highest peak when that peak reaches the threshold; else the highest-peaking class that is not flagged
    (a calm file of a two-class model is its negative class); else the highest peak overall."""
    hits = [c for c in flagged if max_probs[c] >= threshold]
    pool = hits or [c for c in max_probs if c not in flagged] or list(max_probs)
    return max(pool, key=lambda c: max_probs[c])
