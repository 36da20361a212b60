"""What the review app draws: scan planes with window/level, orientation labels, linked crosshairs and the
focus boxes the plane crosses; the temporal policy's timeline; a long video's timeline (window scores,
flagged segments, gaps); browser-playable video previews; the one-page scan report. Pure functions on arrays and records (no Streamlit), so each is unit-tested.

Planes follow datasets.mri.slices.plane_frame (RAS volume; rows flipped so superior / anterior is up):
sagittal shows posterior -> anterior left to right, coronal and axial show the patient's left on the
image's left (neurological convention), which the L/R labels on every plane make explicit.
"""
from __future__ import annotations

import base64
import hashlib
import html
import io
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

WINDOW_PRESETS = ("brain", "full range")
BOX_COLOUR = (255, 220, 0)
CROSSHAIR_COLOUR = (0, 200, 255)
PLANE_DISPLAY_PX = 576  # long side of a rendered plane: >= 512 px on screen in a two-column layout
# RAS voxel axis -> (letter at its low end, letter at its high end)
AXIS_LETTERS = {0: ("L", "R"), 1: ("P", "A"), 2: ("I", "S")}
BROWSER_VIDEO_CODECS = ("h264", "vp8", "vp9", "av1")
BROWSER_CONTAINERS = (".mp4", ".m4v", ".webm")
PREVIEW_MAX_SIDE = 480


# ------------------------------------------------------------------------------------ window / level
def volume_window(volume: np.ndarray, preset: str) -> tuple[float, float]:
    """(low, high) intensities of a preset: "full range" = min..max; "brain" = the 0.5th..99.5th
    percentiles of the voxels brighter than 5% of the range (tissue, not the background)."""
    if preset not in WINDOW_PRESETS:
        raise ValueError(f"window preset must be one of {WINDOW_PRESETS}, got {preset!r}")
    finite = volume[np.isfinite(volume)]
    low, high = float(finite.min()), float(finite.max())
    if preset == "brain":
        tissue = finite[finite > low + 0.05 * (high - low)]
        if tissue.size:
            low, high = (float(v) for v in np.percentile(tissue, [0.5, 99.5]))
    return low, max(high, low + 1e-6)


def adjust_window(low: float, high: float, contrast: float = 1.0, level: float = 0.0) -> tuple[float, float]:
    """Narrow (contrast > 1) or widen the window around its centre, shifted by `level` window widths."""
    if contrast <= 0:
        raise ValueError(f"contrast must be > 0, got {contrast}")
    width = (high - low) / contrast
    centre = (low + high) / 2 + level * (high - low)
    return centre - width / 2, centre + width / 2


def to_uint8(plane: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """A 2D float plane -> uint8 grey, scaled between `low` and `high` (default: its 1st/99th percentiles)."""
    low = float(np.percentile(plane, 1)) if low is None else low
    high = float(np.percentile(plane, 99)) if high is None else high
    scaled = (plane - low) / max(high - low, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------ plane geometry
def plane_axes(plane: str) -> tuple[int, int, int]:
    """(slice axis, row axis, column axis) of a display plane (datasets.mri.slices.PLANES)."""
    from adafocus.datasets.mri.slices import PLANES

    return PLANES[plane]


def orientation_labels(plane: str) -> dict[str, str]:
    """Letters at the image edges: columns run low -> high, rows are flipped (high at the top)."""
    _, row_axis, col_axis = plane_axes(plane)
    return {"left": AXIS_LETTERS[col_axis][0], "right": AXIS_LETTERS[col_axis][1],
            "top": AXIS_LETTERS[row_axis][1], "bottom": AXIS_LETTERS[row_axis][0]}


def box_on_plane(corners: np.ndarray, plane: str, index: int, volume_shape: Sequence[int]) -> list[float] | None:
    """A 3D voxel box (corners [2, 3], voxel edges) where the plane's slice `index` crosses it: its
    [x0, y0, x1, y1] pixel edges in the displayed plane; None when the slice misses the box."""
    slice_axis, row_axis, col_axis = plane_axes(plane)
    corners = np.asarray(corners, dtype=float)
    if not corners[0, slice_axis] <= index <= corners[1, slice_axis]:
        return None
    n_rows = volume_shape[row_axis]
    x0, x1 = corners[0, col_axis] + 0.5, corners[1, col_axis] + 0.5
    y0, y1 = n_rows - 0.5 - corners[1, row_axis], n_rows - 0.5 - corners[0, row_axis]
    return [float(x0), float(y0), float(x1), float(y1)]


def crosshair_on_plane(cursor: Sequence[int], plane: str, volume_shape: Sequence[int]) -> tuple[int, int]:
    """The cursor voxel (x, y, z) as (column, row) in the displayed plane."""
    _, row_axis, col_axis = plane_axes(plane)
    return int(cursor[col_axis]), int(volume_shape[row_axis] - 1 - cursor[row_axis])


def box_centre_voxel(corners: np.ndarray, volume_shape: Sequence[int]) -> tuple[int, int, int]:
    """The voxel at the centre of a 3D box, inside the volume."""
    centre = np.asarray(corners, dtype=float).mean(axis=0)
    return tuple(int(np.clip(round(c), 0, n - 1)) for c, n in zip(centre, volume_shape))


# ----------------------------------------------------------------------------------------- drawing
def render_plane(plane: np.ndarray, *, boxes: Sequence[Sequence[float]] = (), crosshair: tuple[int, int] | None = None,
                 labels: dict[str, str] | None = None, pixel_mm: tuple[float, float] = (1.0, 1.0),
                 display_px: int = PLANE_DISPLAY_PX):
    """PIL RGB image of a uint8 plane [rows, cols] enlarged so its long side is `display_px` (pixel_mm =
    (row, column) spacing keeps the aspect true), with focus boxes (yellow), crosshair lines (cyan) and
    orientation letters at the edges."""
    from PIL import Image, ImageDraw

    rows, cols = plane.shape
    height_mm, width_mm = rows * pixel_mm[0], cols * pixel_mm[1]
    scale = display_px / max(height_mm, width_mm)
    size = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    sx, sy = size[0] / cols, size[1] / rows
    image = Image.fromarray(plane).convert("RGB").resize(size, Image.BILINEAR)
    draw = ImageDraw.Draw(image)
    if crosshair is not None:
        x, y = (crosshair[0] + 0.5) * sx, (crosshair[1] + 0.5) * sy
        draw.line([(0, y), (size[0], y)], fill=CROSSHAIR_COLOUR, width=1)
        draw.line([(x, 0), (x, size[1])], fill=CROSSHAIR_COLOUR, width=1)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * sx, y0 * sy, max(x1 * sx - 1, x0 * sx + 2), max(y1 * sy - 1, y0 * sy + 2)],
                       outline=BOX_COLOUR, width=3)
    if labels:
        _draw_labels(draw, size, labels)
    return image


def _draw_labels(draw, size: tuple[int, int], labels: dict[str, str]) -> None:
    from PIL import ImageFont

    font = ImageFont.load_default(size=max(14, size[0] // 28))
    width, height = size
    anchors = {"left": ((6, height / 2), "lm"), "right": ((width - 6, height / 2), "rm"),
               "top": ((width / 2, 6), "mt"), "bottom": ((width / 2, height - 6), "mb")}
    for edge, ((x, y), anchor) in anchors.items():
        if edge in labels:
            draw.text((x, y), labels[edge], fill=(255, 255, 255), font=font, anchor=anchor,
                      stroke_width=2, stroke_fill=(0, 0, 0))


def jpeg_bytes(image, quality: int = 92) -> bytes:
    """An RGB image as JPEG bytes: a quarter of the PNG's size for a scan plane, so pages load fast."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------- timeline
def timeline_rows(glance: Sequence[dict], selected: Sequence[dict]) -> list[dict]:
    """The temporal policy over the whole video: one row per glance frame {"frame", "time_s", "weight",
    "chosen"} (chosen = a focus step looked at that frame), plus chosen frames that are not glance frames
    (weight None). Sorted by time."""
    chosen = {int(s["frame"]): float(s["time_s"]) for s in selected}
    rows = [{"frame": int(g["frame"]), "time_s": float(g["time_s"]), "weight": float(g["weight"]),
             "chosen": int(g["frame"]) in chosen} for g in glance]
    seen = {r["frame"] for r in rows}
    rows += [{"frame": f, "time_s": t, "weight": None, "chosen": True} for f, t in chosen.items() if f not in seen]
    return sorted(rows, key=lambda r: r["time_s"])


SEGMENT_COLOUR = "#e15759"
GAP_COLOUR = "#9e9e9e"


def long_timeline_chart(rows: Sequence[dict], segments: Sequence[dict], gaps: Sequence[dict], threshold: float | None,
                        duration_s: float, *, height: int = 220):
    """A long video's timeline as an Altair chart: each window's score (a point at the window's centre,
    joined per class), the flagged segments as red bands, undecodable stretches as grey bands and the
    flagging threshold as a dashed rule. Clicking a band selects it (selection "segment": start_s),
    clicking a point selects that window (selection "window": window, start_s); logic.timeline_pick reads
    the selection.

    `rows`: logic.window_score_rows; `segments`: logic.file_segments; `gaps`: logic.gap_bands."""
    import altair as alt
    import pandas as pd

    time_scale = alt.Scale(domain=[0, max(float(duration_s), 1e-3)], nice=False)

    def t(field: str):
        return alt.X(f"{field}:Q", title="time (s)", scale=time_scale)

    y = alt.Y("score:Q", title="window score", scale=alt.Scale(domain=[0, 1]))
    layers = []
    if gaps:
        layers.append(alt.Chart(pd.DataFrame(list(gaps))).mark_rect(color=GAP_COLOUR, opacity=0.35).encode(
            x=t("start_s"), x2="end_s:Q", tooltip=["start_s", "end_s", "reason"]))
    if segments:
        pick = alt.selection_point(name="segment", fields=["start_s"], on="click", empty=False)
        bands = pd.DataFrame([{k: s[k] for k in ("label", "start_s", "end_s", "peak_score", "mean_score")}
                              for s in segments])
        layers.append(alt.Chart(bands).mark_rect(color=SEGMENT_COLOUR, cursor="pointer").encode(
            x=t("start_s"), x2="end_s:Q",
            opacity=alt.condition(pick, alt.value(0.45), alt.value(0.22)),
            tooltip=["label", "start_s", "end_s", "peak_score", "mean_score"]).add_params(pick))
    if threshold is not None:
        layers.append(alt.Chart(pd.DataFrame([{"threshold": float(threshold)}])).mark_rule(
            strokeDash=[4, 4], color="#555").encode(y=alt.Y("threshold:Q", scale=alt.Scale(domain=[0, 1]))))
    data = pd.DataFrame(list(rows), columns=["window", "start_s", "end_s", "mid_s", "class", "score", "exit", "gmacs"])
    window_pick = alt.selection_point(name="window", fields=["window", "start_s"], on="click", empty=False)
    line = alt.Chart(data).encode(x=t("mid_s"), y=y, color=alt.Color("class:N", title="class"))
    layers.append(line.mark_line(strokeWidth=1.5))
    layers.append(line.mark_point(filled=True, size=60, cursor="pointer").encode(
        tooltip=["window", "start_s", "end_s", "class", "score", "exit", "gmacs"]).add_params(window_pick))
    return alt.layer(*layers).properties(height=height)


# ------------------------------------------------------------------------------------ video preview
def browser_playable(path: str | Path) -> bool:
    """Whether Chromium plays the file as is: an MP4/WebM container holding H.264 (4:2:0, not the lossless
    High 4:4:4 profile), VP8, VP9 or AV1 video. False for anything unreadable."""
    import av

    if Path(path).suffix.lower() not in BROWSER_CONTAINERS:
        return False
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            codec = stream.codec_context
            return (codec.name in BROWSER_VIDEO_CODECS and (codec.pix_fmt or "yuv420p") == "yuv420p"
                    and "4:4:4" not in (codec.profile or ""))
    except (av.FFmpegError, IndexError, OSError):
        return False


def preview_path(cache_dir: Path, source: Path) -> Path:
    """Where the H.264 preview of `source` is cached: keyed by its path, size and modification time."""
    stat = source.stat()
    key = hashlib.sha1(f"{source.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:20]
    return cache_dir / f"{key}.mp4"


def transcode_preview(source: Path, target: Path, *, max_side: int = PREVIEW_MAX_SIDE) -> Path:
    """Re-encode `source` as a small H.264 / yuv420p MP4 (long side <= max_side, even sides, same frame
    rate) at `target`, written atomically. Returns target."""
    import av
    from adafocus.core.io import atomic_write_bytes

    buffer = io.BytesIO()
    with av.open(str(source)) as reader, av.open(buffer, mode="w", format="mp4") as writer:
        video = reader.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        scale = min(1.0, max_side / max(width, height))
        out_w, out_h = (max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2))
        rate = Fraction(video.average_rate or 25).limit_denominator(1001)
        stream = writer.add_stream("libx264", rate=rate, options={"crf": "28", "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = out_w, out_h, "yuv420p"
        stream.codec_context.time_base = 1 / rate
        for index, frame in enumerate(reader.decode(video)):
            image = frame.reformat(width=out_w, height=out_h, format="yuv420p")
            image.pts, image.time_base = index, 1 / rate  # a fresh clock: source timestamps may be missing
            for packet in stream.encode(image):
                writer.mux(packet)
        for packet in stream.encode():
            writer.mux(packet)
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def playable_video(source: Path, cache_dir: Path) -> Path:
    """`source` when the browser plays it, else its cached H.264 preview (made on first use)."""
    if browser_playable(source):
        return source
    target = preview_path(cache_dir, source)
    if not target.is_file():
        transcode_preview(source, target)
    return target


# -------------------------------------------------------------------------------------- scan report
def scan_report_html(title: str, facts: dict[str, str], regions: Sequence[dict], decision: dict | None,
                     images: Sequence[tuple[str, bytes]]) -> str:
    """A self-contained one-page HTML report: the facts (prediction, confidence, exit, ...), the focus
    regions table, the current decision, and JPEG images inlined as data URIs."""
    esc = html.escape
    fact_rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in facts.items())
    columns = list(regions[0]) if regions else []
    region_rows = "".join("<tr>" + "".join(f"<td>{esc(str(r[c]))}</td>" for c in columns) + "</tr>"
                          for r in regions)
    region_table = ("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>" + region_rows
                    + "</table>") if regions else "<p>The model exited after the glance: no focus region.</p>"
    if decision:
        decided = (f"<p><b>{esc(decision['decision'])}</b> by {esc(decision['reviewer'])} at "
                   f"{esc(decision['created_at'])}{': ' + esc(decision['note']) if decision.get('note') else ''}</p>")
    else:
        decided = "<p>Not reviewed yet.</p>"
    figures = "".join(f"<figure><img alt='{esc(caption)}' src='data:image/jpeg;base64,"
                      f"{base64.b64encode(data).decode('ascii')}'><figcaption>{esc(caption)}</figcaption></figure>"
                      for caption, data in images)
    style = ("body{font-family:sans-serif;margin:24px;max-width:1200px}table{border-collapse:collapse;"
             "margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "figure{display:inline-block;margin:4px}img{width:360px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>{style}</style>"
            f"</head><body><h1>{esc(title)}</h1><table>{fact_rows}</table><h2>Focus regions</h2>{region_table}"
            f"<h2>Decision</h2>{decided}<h2>Images</h2>{figures}</body></html>")


def file_fingerprint(path: str | os.PathLike) -> str:
    """A cache key for a file's current contents: path, size and modification time."""
    stat = os.stat(path)
    return f"{os.fspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
