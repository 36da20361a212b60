"""Streamlit review app: clinicians review flagged scans, moderators review flagged videos (`adafocus app`).

Run with `adafocus app --scans DIR --videos DIR --model CKPT`, which sets the environment variables below
and starts `streamlit run` on 127.0.0.1. The app reads only under the folders it was given (see
review_logic.resolve_inside); review decisions go to review_decisions.sqlite in each folder.

Environment: ADAFOCUS_REVIEW_SCANS (a folder with `adafocus cv` outputs: cv.json, fold-*/predictions.tsv,
and the preprocessing cache its manifest points to), ADAFOCUS_REVIEW_VIDEOS (a folder with `adafocus score`
outputs: scores.csv, details.jsonl and the videos), ADAFOCUS_REVIEW_MODEL (a checkpoint for scoring new
scans; calibration.pt beside it enables the budget page), ADAFOCUS_REVIEW_MAX_UPLOAD_MB.

Views (sidebar): Scans, Score a scan, Videos, Budget, Decisions. Everything below `main()` is plain
functions so tests can import the drawing helpers without running the app.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from functools import partial
from pathlib import Path

import adafocus.core  # noqa: F401  (torchvision shim first)
import numpy as np
from adafocus.apps import review_logic as rl

log = logging.getLogger("adafocus.review")

ENV_SCANS, ENV_VIDEOS, ENV_MODEL, ENV_MAX_UPLOAD = ("ADAFOCUS_REVIEW_SCANS", "ADAFOCUS_REVIEW_VIDEOS",
                                                    "ADAFOCUS_REVIEW_MODEL", "ADAFOCUS_REVIEW_MAX_UPLOAD_MB")
VIEWS = ("Scans", "Score a scan", "Videos", "Budget", "Decisions")
BOX_COLOUR = (255, 220, 0)


# --------------------------------------------------------------------------------------------- config
def configured_folders() -> dict[str, Path | None]:
    """The folders/files from the environment, resolved; a missing folder is an error the user sees."""
    folders: dict[str, Path | None] = {}
    for key, env in (("scans", ENV_SCANS), ("videos", ENV_VIDEOS), ("model", ENV_MODEL)):
        value = os.environ.get(env, "").strip()
        folders[key] = Path(os.path.realpath(value)) if value else None
        if folders[key] is not None and not folders[key].exists():
            raise FileNotFoundError(f"{env}={value} does not exist")
    return folders


def readable_roots(folders: dict[str, Path | None]) -> list[Path]:
    """Folders the app may read: scans, videos and the model's folder (for calibration.pt)."""
    roots = [folders["scans"], folders["videos"], folders["model"].parent if folders["model"] else None]
    return [r for r in roots if r is not None]


# -------------------------------------------------------------------------------------------- drawing
def to_uint8(plane: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """A 2D float plane -> uint8 grey, scaled between `low` and `high` (default: its 1st/99th percentiles)."""
    low = float(np.percentile(plane, 1)) if low is None else low
    high = float(np.percentile(plane, 99)) if high is None else high
    scaled = (plane - low) / max(high - low, 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def plane_box_pixels(corners: np.ndarray, axis: str, volume_shape: tuple[int, int, int]) -> list[float]:
    """Voxel-space box corners [2, 3] (from slices.frame_box_to_voxels) -> [x0, y0, x1, y1] pixel edges in
    the displayed plane (slices.plane_frame orientation: rows flipped)."""
    from adafocus.datasets.mri.slices import PLANES

    _, row_axis, col_axis = PLANES[axis]
    n_rows = volume_shape[row_axis]
    x0, x1 = corners[0, col_axis] + 0.5, corners[1, col_axis] + 0.5
    y0, y1 = n_rows - 0.5 - corners[1, row_axis], n_rows - 0.5 - corners[0, row_axis]
    return [float(x0), float(y0), float(x1), float(y1)]


def draw_plane(plane: np.ndarray, boxes: list[list[float]] = (), scale: int = 3, *, line: tuple | None = None):
    """PIL RGB image of a uint8 plane enlarged `scale` times, with boxes (pixel edges) in yellow and an
    optional line ("h" | "v", pixel position) in red marking another plane's slice."""
    from PIL import Image, ImageDraw

    image = Image.fromarray(plane).convert("RGB").resize((plane.shape[1] * scale, plane.shape[0] * scale),
                                                        Image.NEAREST)
    draw = ImageDraw.Draw(image)
    for x0, y0, x1, y1 in boxes:
        draw.rectangle([x0 * scale, y0 * scale, x1 * scale - 1, y1 * scale - 1], outline=BOX_COLOUR, width=2)
    if line is not None:
        direction, position = line
        p = (position + 0.5) * scale
        end = image.width if direction == "h" else image.height
        draw.line([(0, p), (end, p)] if direction == "h" else [(p, 0), (p, end)], fill=(230, 40, 40), width=1)
    return image


def slider_marks(length: int, selected: list[int], current: int, width: int = 600):
    """A thin bar under the slice slider: yellow ticks at the selected slices, red at the current one."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, 14), (235, 235, 235))
    draw = ImageDraw.Draw(image)
    for index, colour in [*[(s, (200, 160, 0)) for s in selected], (current, (230, 40, 40))]:
        x = round((index + 0.5) / max(length, 1) * width)
        draw.rectangle([x - 2, 0, x + 2, 13], fill=colour)
    return image


def selected_strip(volume: np.ndarray, axis: str, selected: list[tuple[int, list[float]]], title: str):
    """Contact sheet of the model's selected slices with their focus boxes (score.render_contact_sheet)."""
    from adafocus.apps.score import render_contact_sheet
    from adafocus.datasets.mri.slices import plane_frame

    low, high = float(np.percentile(volume, 1)), float(np.percentile(volume, 99))
    frames = np.stack([np.repeat(to_uint8(np.ascontiguousarray(plane_frame(volume, axis, s)), low, high)[..., None],
                                 3, -1) for s, _ in selected])
    captions = [f"slice {s}" for s, _ in selected]
    view = [0, 0, frames.shape[2], frames.shape[1]]
    return render_contact_sheet(frames, captions, [b for _, b in selected], view, title, height=160,
                                columns=min(6, len(selected)))


# ---------------------------------------------------------------------------------------- MRI helpers
def experiment_of(fold_dir: Path, roots: list[Path]) -> dict:
    """cv.json of the CV folder holding `fold_dir` (read inside the allowed roots)."""
    path = rl.resolve_inside(fold_dir.parent / "cv.json", roots)
    return json.loads(path.read_text(encoding="utf-8"))


def manifest_paths(experiment: dict, participant: str, session: str, roots: list[Path]
                   ) -> tuple[Path | None, Path | None]:
    """(preprocessed, raw source) paths of a scan from the CV's manifest; None where missing or outside the
    allowed folders."""
    from adafocus.datasets.mri.manifest import read_manifest

    try:
        manifest = rl.resolve_inside(experiment["manifest"], roots)
    except rl.UnsafePathError:
        return None, None
    for row in read_manifest(manifest):
        if row.participant_id == participant and row.session_id == session:
            found = []
            for path in (row.preprocessed_path, row.source_path):
                try:
                    found.append(rl.resolve_inside(path, roots) if path is not None else None)
                except rl.UnsafePathError:
                    found.append(None)
            return found[0], found[1]
    return None, None


def focus_on_volume(volume: np.ndarray, spacing, clip_spec: dict, slices_and_boxes) -> list[tuple[int, list[float]]]:
    """The model's selected slices with their boxes in plane pixels: [(voxel slice index, [x0, y0, x1, y1])]."""
    from adafocus.datasets.mri.slices import frame_box_to_voxels, volume_to_clip

    _, info = volume_to_clip(volume, spacing, axis=clip_spec["axis"], num_slices=clip_spec["num_slices"],
                             discard_border=clip_spec["discard_border"], context=clip_spec["context"],
                             size=clip_spec["size"])
    out = []
    for index, box in slices_and_boxes:
        position = info.slice_indices.index(index)
        corners = frame_box_to_voxels(box, position, info)
        out.append((index, plane_box_pixels(corners, info.axis, info.volume_shape)))
    return out


def score_volume(model, volume: np.ndarray, spacing, clip_spec: dict, policy) -> dict:
    """Run the model on a preprocessed RAS volume. Returns prediction, probabilities, exit, gmacs and the
    selected (slice, box frame fractions) pairs."""
    import torch
    from adafocus.core.train import cuda_autocast
    from adafocus.datasets.mri.slices import volume_to_clip

    clip, info = volume_to_clip(volume, spacing, **clip_spec)
    device = model.pixel_mean.device
    with torch.inference_mode(), cuda_autocast(device):
        result = model.infer(clip[None].to(device), policy)
    chosen = result.frame_indices[0].cpu().tolist()
    boxes = result.boxes[0].cpu().tolist()
    selected = [(info.slice_indices[c], tuple(b)) for c, b in zip(chosen, boxes) if c >= 0]
    return {"probabilities": result.probabilities[0].cpu().tolist(), "prediction": int(result.prediction[0]),
            "exit": int(result.exit_index[0]), "gmacs": float(result.gmacs[0]), "selected": selected}


def preprocess_for_model(source: Path):
    """t1-linear (RAS, N4, affine to MNI, crop, normalise) without writing cache files -> (array, spacing)."""
    from adafocus.datasets.mri.preprocess import SaveNifti, SaveQCPng, run_pipeline, t1_linear_pipeline

    steps = [s for s in t1_linear_pipeline(Path("unused.nii.gz"), Path("unused.png"))
             if not isinstance(s, (SaveNifti, SaveQCPng))]
    volume = run_pipeline(steps, source)
    return volume.array, volume.spacing


# ----------------------------------------------------------------------------------------------- app
def main() -> None:
    import streamlit as st

    st.set_page_config(page_title="AdaFocus review", layout="wide")
    try:
        folders = configured_folders()
    except FileNotFoundError as error:
        st.error(str(error))
        return
    roots = readable_roots(folders)
    st.sidebar.title("AdaFocus review")
    view = st.sidebar.radio("View", VIEWS, key="view")
    st.session_state.setdefault("show_identifiers", False)
    st.sidebar.checkbox("Show identifiers from file headers", key="show_identifiers")
    threshold = st.sidebar.slider("Needs review when exit entropy ≥", 0.0, 1.0, rl.DEFAULT_REVIEW_ENTROPY, 0.05,
                                  key="entropy_threshold")
    budget_note = st.sidebar.empty()  # filled after the page: the Budget page may change the budget
    pages = {"Scans": partial(queue_page, kind="scan"), "Score a scan": score_page,
             "Videos": partial(queue_page, kind="video"), "Budget": budget_page, "Decisions": decisions_page}
    pages[view](st, folders, roots, threshold)
    budget = st.session_state.get("budget")
    budget_note.caption(f"Scoring budget: {budget:.4g} GMACs" if budget else "Scoring budget: none (all exits)")


def _store(folder: Path) -> rl.DecisionStore:
    return rl.DecisionStore(folder / rl.DECISIONS_FILE)


def queue_filters(st, queue, kind: str):
    """Filter widgets above a queue; returns the filtered queue."""
    cols = st.columns(4)
    flagged = cols[0].checkbox("Needs review only", key=f"{kind}_flagged")
    classes = sorted(queue["prediction"].astype(str).unique().tolist())
    chosen = cols[1].multiselect("Predicted class", classes, default=classes, key=f"{kind}_classes")
    state = cols[2].selectbox("Review state", rl.REVIEW_STATES, key=f"{kind}_state")
    min_risk = cols[3].slider("Minimum risk", 0.0, 1.0, 0.0, 0.05, key=f"{kind}_min_risk")
    return rl.filter_queue(queue, needs_review_only=flagged, predictions=chosen, review_state=state,
                           min_risk=min_risk)


def show_queue(st, queue, kind: str):
    """The queue table and the item picker; returns the chosen row or None."""
    shown = queue[["name", "prediction", "risk", "confidence", "needs_review", "exit", "gmacs", "decision"]]
    st.dataframe(shown.rename(columns={"needs_review": "needs review"}), hide_index=True, width="stretch")
    st.caption(f"{len(queue)} {kind}s shown, {int(queue['needs_review'].sum())} need review, "
               f"{int((queue['decision'] != '').sum())} reviewed")
    if queue.empty:
        return None
    labels = {item: f"{'⚑ ' if flag else ''}{name} · risk {risk:.2f}{' · ' + dec if dec else ''}"
              for item, name, risk, flag, dec in zip(queue["item_id"], queue["name"], queue["risk"],
                                                     queue["needs_review"], queue["decision"])}
    item = st.selectbox(f"Open {kind}", list(labels), format_func=labels.get, key=f"{kind}_open")
    return queue[queue["item_id"] == item].iloc[0]


def decision_form(st, store: rl.DecisionStore, kind: str, item_id: str) -> None:
    """Confirm / dismiss / note for one item, and its decision history."""
    st.subheader("Decision")
    st.radio("Decision", rl.DECISIONS, horizontal=True, key=f"{kind}_decision")
    st.text_area("Note", key=f"{kind}_note", height=80)
    # a callback runs before the rerun, so the queue above already shows the new decision
    st.button("Save decision", key=f"{kind}_save", on_click=save_decision, args=(store, kind, item_id))
    saved = st.session_state.get(f"{kind}_saved")
    if isinstance(saved, str):
        st.error(saved)
    elif saved and saved["item_id"] == item_id:
        st.success(f"Saved decision: {saved['decision']} at {saved['created_at']}")
    history = [d for d in store.history(kind) if d["item_id"] == item_id]
    if history:
        st.table([{k: d[k] for k in ("created_at", "decision", "note")} for d in reversed(history)])


def save_decision(store: rl.DecisionStore, kind: str, item_id: str) -> None:
    """Button callback: record the form's decision; the saved record (or the error text) goes to session state."""
    import streamlit as st

    try:
        st.session_state[f"{kind}_saved"] = store.record(kind, item_id, st.session_state[f"{kind}_decision"],
                                                         st.session_state.get(f"{kind}_note", ""))
    except ValueError as error:
        st.session_state[f"{kind}_saved"] = str(error)


# Per kind of item: the folder, how to build its queue, and what to say when something is missing.
QUEUE_PAGES = {
    "scan": {"title": "Scans", "folder": "scans", "queue": lambda folder: rl.scan_queue(folder),
             "no_folder": "Start the app with --scans DIR (an `adafocus cv` output folder) to review scans.",
             "empty": "No predictions.tsv under the scans folder.", "no_match": "No scan matches the filters."},
    "video": {"title": "Videos", "folder": "videos", "queue": lambda folder: rl.video_queue(folder),
              "no_folder": "Start the app with --videos DIR (an `adafocus score` output folder) to review videos.",
              "empty": "No scored videos (scores.csv) under the videos folder.",
              "no_match": "No video matches the filters."},
}


def queue_page(st, folders, roots, threshold, kind: str) -> None:
    """The queue of one kind of item, the selected item's view, and its decision form."""
    page = QUEUE_PAGES[kind]
    st.header(page["title"])
    folder = folders[page["folder"]]
    if folder is None:
        st.info(page["no_folder"])
        return
    store = _store(folder)
    queue = rl.flag_and_sort(page["queue"](folder), threshold, store.latest(kind))
    if queue.empty:
        st.warning(page["empty"])
        return
    row = show_queue(st, queue_filters(st, queue, kind), kind)
    if row is None:
        st.info(page["no_match"])
        return
    (scan_view if kind == "scan" else video_view)(st, row, roots)
    decision_form(st, store, kind, row["item_id"])


def prediction_header(st, title: str, prediction: str, row) -> None:
    """Title, the four prediction metrics, and the needs-review warning shared by scans and videos."""
    st.subheader(title)
    cols = st.columns(4)
    cols[0].metric("Prediction", prediction)
    cols[1].metric("Confidence", f"{row['confidence']:.2f}")
    cols[2].metric("Exit taken", int(row["exit"]))
    cols[3].metric("GMACs", f"{row['gmacs']:.4g}")
    if row["needs_review"]:
        st.warning(f"Needs review: exit entropy {row['entropy']:.2f}")


def scan_view(st, row, roots) -> None:
    """Prediction, three planes with sliders, the selected-slice strip, raw beside preprocessed."""
    from adafocus.datasets.mri.dataset import load_preprocessed
    from adafocus.datasets.mri.slices import PLANES, plane_frame

    prediction_header(st, f"Scan {row['name']}", f"class {row['prediction']}", row)
    try:
        experiment = experiment_of(Path(row["fold_dir"]), roots)
        preprocessed, raw = manifest_paths(experiment, row["participant_id"], row["session_id"], roots)
    except (rl.UnsafePathError, OSError, ValueError) as error:
        st.error(f"Cannot open this scan: {error}")
        return
    if preprocessed is None:
        st.error("The preprocessed volume is missing or outside the folders this app may read.")
        return
    try:
        volume, spacing = load_preprocessed(preprocessed)
        selected = focus_on_volume(volume, spacing, experiment["clip"],
                                   rl.parse_slices_and_boxes(row["slices"], row["boxes"]))
    except (ValueError, KeyError, OSError) as error:  # a file or row that does not match the CV's settings
        st.error(f"Cannot show this scan: {error}")
        return
    axis = experiment["clip"]["axis"]
    st.markdown("**Selected slices** (the model's focus boxes in yellow)")
    st.image(selected_strip(volume, axis, selected, f"{len(selected)} selected on the {axis} plane"),
             caption="selected-slice strip")
    low, high = float(np.percentile(volume, 1)), float(np.percentile(volume, 99))
    planes = list(PLANES)
    picks = {}
    columns = st.columns(3)
    for column, plane in zip(columns, planes):
        n = volume.shape[PLANES[plane][0]]
        default = selected[0][0] if plane == axis and selected else n // 2
        picks[plane] = column.slider(f"{plane} slice", 0, n - 1, default, key=f"slice_{plane}")
    boxes_here = {s: b for s, b in selected}
    for column, plane in zip(columns, planes):
        index = picks[plane]
        frame = to_uint8(np.ascontiguousarray(plane_frame(volume, plane, index)), low, high)
        boxes = [boxes_here[index]] if plane == axis and index in boxes_here else []
        column.image(draw_plane(frame, boxes), caption=f"{plane} {index}" + (" · selected" if boxes else ""))
        if plane == axis:
            column.image(slider_marks(volume.shape[PLANES[plane][0]], [s for s, _ in selected], index),
                         caption="selected slices (yellow) on this slider")
    if raw is not None and raw != preprocessed:
        raw_beside(st, raw, volume, axis, low, high)


def raw_beside(st, raw: Path, volume: np.ndarray, axis: str, low: float, high: float) -> None:
    import nibabel as nib
    from adafocus.datasets.mri.slices import PLANES, plane_frame

    try:
        image = nib.as_closest_canonical(nib.load(str(raw)))
        raw_volume = np.asarray(image.dataobj, dtype=np.float32)
        raw_volume = raw_volume.reshape(raw_volume.shape[:3])
    except Exception:  # noqa: BLE001  (a DICOM folder or unreadable file: the preprocessed view stands)
        st.info("The raw scan could not be shown (not a NIfTI/Analyze file).")
        return
    st.markdown("**Raw scan beside the preprocessed one** (middle slices)")
    left, right = st.columns(2)
    middle = raw_volume.shape[PLANES[axis][0]] // 2
    left.image(draw_plane(to_uint8(np.ascontiguousarray(plane_frame(raw_volume, axis, middle))), scale=2),
               caption=f"raw, {axis} {middle}")
    mid = volume.shape[PLANES[axis][0]] // 2
    right.image(draw_plane(to_uint8(np.ascontiguousarray(plane_frame(volume, axis, mid)), low, high), scale=2),
                caption=f"preprocessed, {axis} {mid}")


def cached_model(path: str):
    """The checkpoint's model, loaded once per process (st.cache_resource; the GPU when there is one)."""
    import streamlit as st

    @st.cache_resource(show_spinner="Loading the model…")
    def load(checkpoint: str):
        from adafocus.core.train import load_model

        model, preset = load_model(checkpoint, device="auto")
        return model.optimize_for_inference(), preset

    return load(path)


def score_page(st, folders, roots, threshold) -> None:
    st.header("Score a new scan")
    if folders["model"] is None:
        st.info("Start the app with --model CKPT to score new scans.")
        return
    max_mb = float(os.environ.get(ENV_MAX_UPLOAD, rl.DEFAULT_MAX_UPLOAD_MB))
    source = None
    choices = []
    if folders["scans"] is not None:
        choices = sorted(str(p.relative_to(folders["scans"])) for p in folders["scans"].rglob("*")
                         if p.name.lower().endswith((".nii", ".nii.gz")))[:2000]
    picked = st.selectbox("A NIfTI file under the scans folder", ["—", *choices], key="score_pick")
    upload = st.file_uploader(f"…or upload one (.nii / .nii.gz, at most {max_mb:g} MB)", key="score_upload")
    preprocess = st.checkbox("Run t1-linear preprocessing first (uncheck for files from the preprocessing cache)",
                             value=True, key="score_preprocess")
    validated = None
    try:
        if upload is not None:
            validated = rl.validate_nifti_bytes(upload.name, upload.getvalue(), int(max_mb * 2**20))
            folder = Path(tempfile.gettempdir()) / "adafocus-review"
            folder.mkdir(mode=0o700, exist_ok=True)
            source = rl.write_private_copy(validated, folder)
        elif picked != "—":
            source = rl.resolve_inside(picked, [folders["scans"]])
            if source.stat().st_size > max_mb * 2**20:
                raise rl.UploadError(f"the file is over the {max_mb:g} MB limit")
            validated = rl.validate_nifti_bytes(source.name, source.read_bytes(), int(max_mb * 2**20))
    except (rl.UploadError, rl.UnsafePathError) as error:
        st.error(f"This file cannot be scored: {error}")
        log.info("rejected a scan: %s", error)
        return
    if validated is None:
        return
    st.table([rl.header_summary(validated.image, show_identifiers=st.session_state.get("show_identifiers", False))])
    if not st.button("Score", key="score_run"):
        return
    from adafocus.datasets.mri.dataset import ClipSpec
    from adafocus.datasets.mri.volume import ScanError

    model, preset = cached_model(str(folders["model"]))
    clip_spec = ClipSpec.for_preset(preset).to_dict()
    try:
        with st.spinner("Preprocessing and scoring…"):
            if preprocess:
                volume, spacing = preprocess_for_model(source)
            else:
                image = nib_canonical(validated.image)
                volume = np.asarray(image.dataobj, dtype=np.float32).reshape(image.shape[:3])
                spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
            result = score_volume(model, volume, spacing, clip_spec, st.session_state.get("policy"))
    except (ScanError, ValueError) as error:
        st.error(f"Scoring failed: {error}")
        return
    probability = max(result["probabilities"])
    st.success(f"Prediction: class {result['prediction']} (confidence {probability:.2f}), exit {result['exit']}, "
               f"{result['gmacs']:.4g} GMACs")
    focus = focus_on_volume(volume, spacing, clip_spec, result["selected"])
    if focus:
        st.image(selected_strip(volume, clip_spec["axis"], focus, "selected slices"), caption="selected-slice strip")


def nib_canonical(image):
    import nibabel as nib

    return nib.as_closest_canonical(image)


def video_view(st, row, roots) -> None:
    """The video, its prediction, and the frames the model looked at with boxes and time stamps
    (each frame's button jumps the player there)."""
    from adafocus.apps.score import render_contact_sheet
    from adafocus.datasets.video import VideoDecodeError, decode_frames

    prediction_header(st, f"Video {row['name']}", str(row["prediction"]), row)
    try:
        path = rl.resolve_inside(row["path"], roots, base=row["scores_dir"])
    except rl.UnsafePathError as error:
        st.error(f"Cannot open this video: {error}")
        return
    record = rl.read_details(Path(row["scores_dir"]) / "details.jsonl").get(row["item_id"], {})
    selected = record.get("selected", [])
    start_key = f"start::{row['item_id']}"
    st.video(str(path), start_time=int(st.session_state.get(start_key, 0)))
    if not selected:
        st.info("The model exited after the glance: no frame was looked at closely.")
        return
    st.markdown("**Frames the model looked at** (focus box in yellow; click a time to jump)")
    try:
        frames = decode_frames(path, [s["frame"] for s in selected])
    except (VideoDecodeError, OSError) as error:
        st.error(f"Cannot decode the frames: {error}")
        return
    height, width = frames.shape[1:3]
    columns = st.columns(min(len(selected), 4))
    for i, (frame, item) in enumerate(zip(frames, selected)):
        column = columns[i % len(columns)]
        caption = f"frame {item['frame']} · {item['time_s']:.2f} s"
        cell = render_contact_sheet(frame[None], [caption], [item["box"]], [0, 0, width, height], "", height=160)
        column.image(cell, caption="focus box")
        if column.button(f"▶ {item['time_s']:.2f} s", key=f"jump_{i}"):
            st.session_state[start_key] = int(item["time_s"])
            st.rerun()


def budget_page(st, folders, roots, threshold) -> None:
    from adafocus.apps.score import exit_policy_for_budget
    from adafocus.core.checkpoint import load_checkpoint
    from adafocus.core.exits import budget_curve, exit_scores

    st.header("Compute budget")
    if folders["model"] is None:
        st.info("Start the app with --model CKPT to choose a budget.")
        return
    calibration = folders["model"].parent / "calibration.pt"
    if not calibration.is_file():
        st.info("No calibration.pt beside the model (run `adafocus calibrate`): scoring uses every exit.")
        return
    state = load_checkpoint(calibration)
    logits, labels = state["logits"].float(), state["labels"]
    costs = [float(c) for c in state["exit_costs"]]
    criterion = state["config"]["criterion"]
    scores = exit_scores(logits, criterion)
    curve = budget_curve(scores, logits, labels, costs, [float(q) for q in np.geomspace(1e-2, 1e2, 21)])
    import pandas as pd

    st.markdown("**Calibration curve** (accuracy vs mean GMACs per sample, thresholds fitted in-sample)")
    st.line_chart(pd.DataFrame({"GMACs": [p.mean_cost for p in curve], "accuracy": [p.accuracy for p in curve]}),
                  x="GMACs", y="accuracy")
    chosen = st.slider("Budget (mean GMACs per sample)", costs[0], costs[-1],
                       float(st.session_state.get("budget") or costs[-1]), key="budget_slider",
                       format="%.5f")
    if st.button("Use this budget", key="budget_apply"):
        model, _ = cached_model(str(folders["model"]))
        try:
            st.session_state["policy"] = exit_policy_for_budget(folders["model"], chosen, model)
        except (ValueError, FileNotFoundError) as error:
            st.error(str(error))
        else:
            st.session_state["budget"] = chosen
    policy = st.session_state.get("policy")
    if policy is not None:
        thresholds = ", ".join(f"{t:.3g}" for t in policy.thresholds)
        st.success(f"Active budget: {policy.budget:.5g} GMACs (calibration mean {policy.calibration_cost:.5g}); "
                   f"thresholds {thresholds}")
    else:
        st.info("No budget chosen: new scoring uses every exit.")


def decisions_page(st, folders, roots, threshold) -> None:
    st.header("Decisions")
    for kind, folder in (("scan", folders["scans"]), ("video", folders["videos"])):
        if folder is None:
            continue
        store = _store(folder)
        history = store.history(kind)
        st.subheader(f"{kind.capitalize()} decisions ({len(history)})")
        if history:
            st.dataframe(history, hide_index=True)
        st.download_button(f"Export {kind} decisions (CSV)", store.export_csv(), file_name=f"{kind}_decisions.csv",
                           mime="text/csv", key=f"{kind}_export")


if __name__ == "__main__":
    main()
