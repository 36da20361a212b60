"""Streamlit review app: clinicians review flagged scans, moderators review flagged videos (`adafocus app`).

Run with `adafocus app --scans DIR --videos DIR --model RUN`, which sets the environment variables below
and starts `streamlit run` on 127.0.0.1 with the viewer toolbar (no "Deploy" menu). The app reads only
under the folders it was given (see logic.resolve_inside). It asks the reviewer's name once; every
decision goes, with that name, the previous decision and the model run's id, to the append-only audit log
review_decisions.sqlite in each folder (apps/review/audit.py).

Environment: ADAFOCUS_REVIEW_SCANS (a folder with `adafocus cv` outputs: cv.json, fold-*/predictions.tsv,
and the preprocessing cache its manifest points to), ADAFOCUS_REVIEW_VIDEOS (a folder with `adafocus score`
outputs: scores.csv, details.jsonl and the videos), ADAFOCUS_REVIEW_MODEL (a run folder for scoring new
scans; its calibration.pt enables the budget page), ADAFOCUS_REVIEW_MAX_UPLOAD_MB.

Views: Scans, Score a scan, Videos, Budget, Decisions. Keyboard: A confirm, X dismiss, J next, K previous.
Everything below `main()` is plain functions so tests can import them without running the app.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from functools import partial
from pathlib import Path

from adafocus.core._torchvision_compat import install_torchvision_shim

install_torchvision_shim()  # Streamlit runs this file as a script: an entry point
import numpy as np
from adafocus.apps.review import audit as ra
from adafocus.apps.review import logic as rl
from adafocus.apps.review import render as rr
from adafocus.apps.scoring.outputs import DETAILS_FILE, SCORES_FILE, read_details
from adafocus.reports.cv_report import CV_JSON, PREDICTIONS_FILE

log = logging.getLogger("adafocus.review")

ENV_SCANS, ENV_VIDEOS, ENV_MODEL, ENV_MAX_UPLOAD = ("ADAFOCUS_REVIEW_SCANS", "ADAFOCUS_REVIEW_VIDEOS",
                                                    "ADAFOCUS_REVIEW_MODEL", "ADAFOCUS_REVIEW_MAX_UPLOAD_MB")
VIEWS = ("Scans", "Score a scan", "Videos", "Budget", "Decisions")
PLANE_ORDER = ("sagittal", "coronal", "axial")
SHORTCUTS = {"confirm": "A", "dismiss": "X", "next": "J", "previous": "K"}
PAGE_SIZE = 12
STREAMLIT_FLAGS = ("--server.headless", "true", "--server.address", "127.0.0.1", "--browser.gatherUsageStats",
                   "false", "--client.toolbarMode", "viewer")


# --------------------------------------------------------------------------------------------- config
def configured_folders() -> dict[str, Path | None]:
    """The folders/files from the environment, resolved; a missing folder is an error the user sees."""
    folders: dict[str, Path | None] = {}
    for key, env in (("scans", ENV_SCANS), ("videos", ENV_VIDEOS), ("model", ENV_MODEL)):
        value = os.environ.get(env, "").strip()
        folders[key] = Path(os.path.realpath(value)) if value else None
        if folders[key] is not None and not folders[key].exists():
            raise FileNotFoundError(f"{env}={value} does not exist")
    if folders["model"] is not None:  # a run folder (RUN/best.pt is accepted and means RUN)
        from adafocus.core.run import RunFolder

        folders["model"] = RunFolder.locate(folders["model"]).path
    return folders


def readable_roots(folders: dict[str, Path | None]) -> list[Path]:
    """Folders the app may read: scans, videos and the model's run folder (for calibration.pt)."""
    roots = [folders["scans"], folders["videos"], folders["model"]]
    return [r for r in roots if r is not None]


# --------------------------------------------------------------------------------- cached heavy work
def _cached(kind: str, **options):
    """st.cache_data / st.cache_resource when Streamlit is importable (always, in the app)."""
    import streamlit as st

    return getattr(st, kind)(show_spinner=False, **options)


def cached_volume(path: str):
    """(volume, spacing, affine) of a NIfTI/Analyze scan in RAS (closest canonical) voxel order, loaded
    once per file version and shared."""
    @_cached("cache_resource", max_entries=16)
    def load(path: str, fingerprint: str):
        # The archive-aware reader (OASIS-1 Analyze orient codes, NIfTI sform/qform), then RAS voxel order.
        from adafocus.datasets.mri.preprocess import OrientationRAS
        from adafocus.datasets.mri.volume import load_volume

        volume = OrientationRAS()(load_volume(path))
        spacing = tuple(float(z) for z in np.sqrt((volume.affine[:3, :3] ** 2).sum(axis=0)))
        return volume.array.astype(np.float32, copy=False), spacing, volume.affine

    return load(path, rr.file_fingerprint(path))


def cached_window(path: str, preset: str) -> tuple[float, float]:
    @_cached("cache_data", max_entries=256)
    def window(path: str, fingerprint: str, preset: str):
        return rr.volume_window(cached_volume(path)[0], preset)

    return window(path, rr.file_fingerprint(path), preset)


def cached_plane_image(path: str, plane: str, index: int, window: tuple[float, float], boxes: tuple,
                     crosshair: tuple[int, int] | None) -> bytes:
    """One rendered plane (window, boxes, crosshair, orientation labels) as JPEG bytes, cached."""
    @_cached("cache_data", max_entries=4096)
    def render(path, fingerprint, plane, index, window, boxes, crosshair):
        from adafocus.datasets.mri.slices import plane_frame

        volume, spacing, _ = cached_volume(path)
        _, row_axis, col_axis = rr.plane_axes(plane)
        frame = rr.to_uint8(np.ascontiguousarray(plane_frame(volume, plane, index)), *window)
        image = rr.render_plane(frame, boxes=[list(b) for b in boxes], crosshair=crosshair,
                                labels=rr.orientation_labels(plane), pixel_mm=(spacing[row_axis], spacing[col_axis]))
        return rr.jpeg_bytes(image)

    return render(path, rr.file_fingerprint(path), plane, int(index), tuple(window), boxes, crosshair)


def cached_queue(kind: str, folder: str):
    """The unflagged queue of a folder, re-read when any of its score/prediction files changes."""
    @_cached("cache_data", max_entries=8)
    def build(kind: str, folder: str, fingerprints: tuple):
        return rl.scan_queue(folder) if kind == "scan" else rl.video_queue(folder)

    pattern = PREDICTIONS_FILE if kind == "scan" else SCORES_FILE
    files = tuple(rr.file_fingerprint(p) for p in sorted(Path(folder).rglob(pattern)))
    return build(kind, folder, files)


def cached_details(path: str) -> dict[str, dict]:
    @_cached("cache_data", max_entries=16)
    def read(path: str, fingerprint: str):
        return read_details(path)

    return read(path, rr.file_fingerprint(path)) if Path(path).is_file() else {}


def cached_run_id(path: str | None) -> str:
    @_cached("cache_data", max_entries=64)
    def run_id(path: str, fingerprint: str):
        return rl.model_run_id(path)

    if path is None:
        return ""
    target = Path(path)
    probe = next((p for p in (target, target / "best.pt", target.parent / CV_JSON) if p.is_file()), None)
    return run_id(str(path), rr.file_fingerprint(probe)) if probe else ""


# ----------------------------------------------------------------------------------------------- app
def main() -> None:
    import streamlit as st

    st.set_page_config(page_title="AdaFocus review", layout="wide", initial_sidebar_state="collapsed")
    try:
        folders = configured_folders()
    except FileNotFoundError as error:
        st.error(str(error))
        return
    if not reviewer_gate(st):
        return
    roots = readable_roots(folders)
    view = st.radio("View", VIEWS, key="view", horizontal=True, label_visibility="collapsed")
    st.sidebar.title("AdaFocus review")
    st.sidebar.markdown(f"Reviewer: **{st.session_state['reviewer']}**")
    st.session_state.setdefault("show_identifiers", False)
    st.sidebar.checkbox("Show identifiers from file headers", key="show_identifiers")
    st.session_state.setdefault("use_fitted", True)
    st.sidebar.checkbox("Flag with the review threshold fitted on validation data, where the outputs have one",
                        key="use_fitted")
    threshold = st.sidebar.slider("Otherwise: needs review when exit entropy ≥", 0.0, 1.0,
                                  rl.DEFAULT_REVIEW_ENTROPY, 0.05, key="entropy_threshold")
    st.sidebar.caption("Keys: " + ", ".join(f"{key} {action}" for action, key in SHORTCUTS.items()))
    budget_note = st.sidebar.empty()  # filled after the page: the Budget page may change the budget
    pages = {"Scans": partial(queue_page, kind="scan"), "Score a scan": score_page,
             "Videos": partial(queue_page, kind="video"), "Budget": budget_page, "Decisions": decisions_page}
    pages[view](st, folders, roots, threshold)
    budget = st.session_state.get("budget")
    budget_note.caption(f"Scoring budget: {budget:.4g} GMACs" if budget else "Scoring budget: none (all exits)")


def reviewer_gate(st) -> bool:
    """Ask the reviewer's name once per session; True once it is known."""
    if str(st.session_state.get("reviewer", "")).strip():
        return True
    st.title("AdaFocus review")
    with st.form("reviewer_form"):
        st.text_input("Your name (stored with every decision you make)", key="reviewer_input")
        started = st.form_submit_button("Start reviewing")
    if started:
        name = str(st.session_state.get("reviewer_input", "")).strip()
        if name:
            st.session_state["reviewer"] = name
            st.rerun()
        st.error("Enter your name to start: every decision records who made it.")
    return False


def _store(folder: Path) -> ra.AuditLog:
    return ra.AuditLog(folder / ra.AUDIT_FILE)


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
    """The queue table, the item picker and previous / next; returns the chosen row or None."""
    shown = queue[["name", "prediction", "risk", "confidence", "needs_review", "exit", "gmacs", "decision"]]
    if st.toggle(f"Show the queue table ({len(queue)} {kind}s)", key=f"{kind}_table"):
        st.dataframe(shown.rename(columns={"needs_review": "needs review"}), hide_index=True, width="stretch")
    st.caption(f"{len(queue)} {kind}s shown, {int(queue['needs_review'].sum())} need review, "
               f"{int((queue['decision'] != '').sum())} reviewed")
    if queue.empty:
        return None
    labels = {row["item_id"]: rl.queue_item_label(row) for row in queue.to_dict("records")}
    items = list(labels)
    current_key = f"{kind}_current"  # the open item lives outside the picker, so relabelled options keep it
    if st.session_state.get(current_key) not in labels:
        st.session_state[current_key] = items[0]
    current = st.session_state[current_key]
    picker, back, forward = st.columns([6, 1, 1], vertical_alignment="bottom")
    picker_key = f"{kind}_open::{current}"
    picker.selectbox(f"Open {kind}", items, index=items.index(current), format_func=labels.get, key=picker_key,
                     on_change=pick_item, args=(current_key, picker_key))
    back.button("Previous", key=f"{kind}_prev", shortcut=SHORTCUTS["previous"], on_click=move_to,
                args=(current_key, items, -1), width="stretch")
    forward.button("Next", key=f"{kind}_next", shortcut=SHORTCUTS["next"], on_click=move_to,
                   args=(current_key, items, 1), width="stretch")
    return queue[queue["item_id"] == current].iloc[0]


def pick_item(current_key: str, picker_key: str) -> None:
    """Selectbox callback: open the item picked."""
    import streamlit as st

    st.session_state[current_key] = st.session_state[picker_key]


def move_to(current_key: str, items: list[str], step: int) -> None:
    """Button callback: open the neighbouring item of the queue."""
    import streamlit as st

    st.session_state[current_key] = rl.neighbour_item(items, st.session_state.get(current_key), step)


def decision_form(st, store: ra.AuditLog, kind: str, item_id: str, run_id: str) -> None:
    """Confirm / dismiss / note for one item (with keyboard shortcuts), and its audit history."""
    st.subheader("Decision")
    st.text_area("Note (optional for confirm / dismiss)", key=f"{kind}_note", height=68)
    cols = st.columns(3)
    for column, decision, label in zip(cols, ra.DECISIONS, ("Confirm", "Dismiss", "Save note")):
        column.button(label, key=f"{kind}_decide_{decision}", on_click=save_decision, width="stretch",
                      args=(store, kind, item_id, decision, run_id), shortcut=SHORTCUTS.get(decision),
                      type="primary" if decision == "confirm" else "secondary")
    saved = st.session_state.get(f"{kind}_saved")
    if isinstance(saved, str):
        st.error(saved)
    elif saved and saved["item_id"] == item_id:
        st.success(f"Saved decision: {saved['decision']} by {saved['reviewer']} at {saved['created_at']}")
    history = store.history(kind, item_id)
    if history:
        st.table([{k: d[k] for k in ("created_at", "reviewer", "decision", "previous_decision", "note")}
                  for d in reversed(history)])


def save_decision(store: ra.AuditLog, kind: str, item_id: str, decision: str, run_id: str) -> None:
    """Button callback: append the decision to the audit log; the saved row (or the error) goes to session state."""
    import streamlit as st

    try:
        st.session_state[f"{kind}_saved"] = store.record(
            kind, item_id, decision, reviewer=str(st.session_state.get("reviewer", "")),
            note=str(st.session_state.get(f"{kind}_note", "")), model_run=run_id)
    except ValueError as error:
        st.session_state[f"{kind}_saved"] = str(error)


# Per kind of item: the folder and what to say when something is missing.
QUEUE_PAGES = {
    "scan": {"title": "Scans", "folder": "scans",
             "no_folder": "Start the app with --scans DIR (an `adafocus cv` output folder) to review scans.",
             "empty": "No predictions.tsv under the scans folder.", "no_match": "No scan matches the filters."},
    "video": {"title": "Videos", "folder": "videos",
              "no_folder": "Start the app with --videos DIR (an `adafocus score` output folder) to review videos.",
              "empty": "No scored videos (scores.csv) under the videos folder.",
              "no_match": "No video matches the filters."},
}
REVIEW_MODES = ("One at a time", "A page at once")


def queue_page(st, folders, roots, threshold, kind: str) -> None:
    """The queue of one kind of item with its triage summary, then one item (view + decision) or a page."""
    page = QUEUE_PAGES[kind]
    st.header(page["title"])
    folder = folders[page["folder"]]
    if folder is None:
        st.info(page["no_folder"])
        return
    store = _store(folder)
    queue = cached_queue(kind, str(folder))
    if kind == "scan":
        queue = with_class_names(queue, roots)
    queue = rl.flag_and_sort(queue, threshold, store.latest(kind),
                             use_fitted=bool(st.session_state.get("use_fitted", True)))
    if queue.empty:
        st.warning(page["empty"])
        return
    st.info("Triage: " + rl.triage_summary(queue).line())
    if kind == "scan":
        for name, above_chance, line in rl.cv_verdicts(folder):
            (st.caption if above_chance else st.warning)(f"Cross-validation `{name}`: {line}")
    filtered = queue_filters(st, queue, kind)
    mode = st.radio("Review", REVIEW_MODES, key=f"{kind}_mode", horizontal=True)
    if mode == REVIEW_MODES[1]:
        page_decisions(st, store, kind, filtered, folders, roots)
        return
    row = show_queue(st, filtered, kind)
    if row is None:
        st.info(page["no_match"])
        return
    run_id = item_run_id(row, folders)
    if kind == "scan":
        scan_view(st, row, roots, store)
    else:
        video_view(st, row, roots, folder)
    decision_form(st, store, kind, row["item_id"], run_id)


def fold_class_names(fold_dir: str, roots) -> dict[int, str]:
    """Class names of a cv fold (rl.scan_class_names), cached per fold."""
    @_cached("cache_data", max_entries=64)
    def names(fold_dir: str, roots: tuple[str, ...]) -> dict[int, str]:
        paths = [Path(r) for r in roots]
        experiment = experiment_of(Path(fold_dir), paths)
        _, _, rows = manifest_entry(experiment, "", "", paths)
        return rl.scan_class_names(fold_dir, experiment, rows)

    try:
        return names(fold_dir, tuple(str(r) for r in roots))
    except (rl.UnsafePathError, OSError, ValueError, KeyError):
        return {}


def with_class_names(queue, roots):
    """cv rows' numeric prediction and label -> class names (score outputs carry names already)."""
    if "fold_dir" not in queue.columns:
        return queue
    queue = queue.copy()
    for fold in queue["fold_dir"].dropna().unique():
        names = fold_class_names(str(fold), roots)
        rows = queue["fold_dir"] == fold
        for column in ("prediction", "label"):
            queue.loc[rows, column] = [names.get(int(v), str(v)) if str(v).strip().isdigit() else v
                                       for v in queue.loc[rows, column]]
    return queue


def item_run_id(row, folders) -> str:
    """The model run behind a queue row: the cv fold's run folder or the scoring model for scans, the
    app's model for videos."""
    if row["kind"] == "scan" and _given(row.get("fold_dir")):
        return cached_run_id(str(row["fold_dir"]))
    if row["kind"] == "scan" and _given(row.get("model")) and Path(row["model"]).is_file():
        return cached_run_id(str(row["model"]))
    return cached_run_id(str(folders["model"]) if folders["model"] else None)


def page_decisions(st, store: ra.AuditLog, kind: str, queue, folders, roots) -> None:
    """Decide a page of items at once: one row per item (with its focus thumbnail for videos), one save."""
    items = queue["item_id"].tolist()
    if not items:
        st.info(QUEUE_PAGES[kind]["no_match"])
        return
    pages = max((len(items) - 1) // PAGE_SIZE + 1, 1)
    number = st.number_input(f"Page (of {pages})", 1, pages, 1, key=f"{kind}_page") - 1
    rows = queue.set_index("item_id").loc[rl.page_of(items, number, PAGE_SIZE)]
    choices = ("—", "confirm", "dismiss")
    for item_id, row in rows.iterrows():
        cols = st.columns([3, 2, 3] if kind == "video" else [3, 3])
        cols[0].markdown(f"**{row['name']}** · {row['prediction']} · confidence {row['confidence']:.2f}"
                         f"{' · ⚑ needs review' if row['needs_review'] else ''}"
                         f"{' · now: ' + row['decision'] if row['decision'] else ''}")
        if kind == "video":
            thumbnail = video_thumbnail(row, roots)
            if thumbnail is not None:
                cols[1].image(thumbnail, width="stretch")
        cols[-1].radio("Decision", choices, key=f"{kind}_pagepick::{item_id}", horizontal=True,
                       label_visibility="collapsed")
    if st.button("Save the decisions on this page", key=f"{kind}_save_page", type="primary"):
        saved = save_page(st, store, kind, rows.index.tolist(), folders, queue)
        st.success(f"Saved {saved} decisions by {st.session_state['reviewer']}")


def save_page(st, store: ra.AuditLog, kind: str, item_ids: list[str], folders, queue) -> int:
    """Record every non-empty page choice; returns how many were recorded."""
    count = 0
    by_id = queue.set_index("item_id")
    for item_id in item_ids:
        choice = st.session_state.get(f"{kind}_pagepick::{item_id}", "—")
        if choice in ("confirm", "dismiss"):
            store.record(kind, item_id, choice, reviewer=st.session_state["reviewer"],
                         model_run=item_run_id(by_id.loc[item_id].to_dict() | {"kind": kind}, folders))
            count += 1
    return count


def prediction_header(st, title: str, prediction: str, row) -> None:
    """Title, the four prediction metrics, and the needs-review warning shared by scans and videos."""
    st.subheader(title)
    cols = st.columns(4)
    cols[0].metric("Prediction", prediction)
    windowed = rl.windowed_row(row)
    if windowed:  # a long file: its strongest window, and where it is
        cols[1].metric("Peak score", f"{row['peak_score']:.2f}")
        located = rl.given_number(row.get("peak_start_s")) and rl.given_number(row.get("peak_end_s"))
        cols[2].metric("Peak at", f"{row['peak_start_s']:g}–{row['peak_end_s']:g} s" if located else "—")
        cols[3].metric("GMACs (all windows)", f"{row['gmacs']:.4g}")
    else:
        cols[1].metric("Confidence", f"{row['confidence']:.2f}")
        cols[2].metric("Exit taken", int(row["exit"]))
        cols[3].metric("GMACs", f"{row['gmacs']:.4g}")
    if row["needs_review"]:
        st.warning(f"Needs review: peak score entropy {row['entropy']:.2f} (the model is unsure anything happened)"
                   if windowed else f"Needs review: exit entropy {row['entropy']:.2f}")


# ---------------------------------------------------------------------------------------- MRI helpers
def experiment_of(fold_dir: Path, roots: list[Path]) -> dict:
    """cv.json of the CV folder holding `fold_dir` (read inside the allowed roots)."""
    path = rl.resolve_inside(fold_dir.parent / CV_JSON, roots)
    return json.loads(path.read_text(encoding="utf-8"))


def manifest_entry(experiment: dict, participant: str, session: str, roots: list[Path]):
    """(preprocessed path, raw source path, all manifest rows) of a scan; paths None where missing or
    outside the allowed folders."""
    from adafocus.datasets.mri.manifest import read_manifest

    try:
        manifest = rl.resolve_inside(experiment["manifest"], roots)
    except rl.UnsafePathError:
        return None, None, []
    rows = read_manifest(manifest)
    for row in rows:
        if row.participant_id == participant and row.session_id == session:
            found = []
            for path in (row.preprocessed_path, row.source_path):
                try:
                    found.append(rl.resolve_inside(path, roots) if path is not None else None)
                except rl.UnsafePathError:
                    found.append(None)
            return found[0], found[1], rows
    return None, None, rows


def focus_regions(volume_shape, spacing, clip_spec: dict, slices_and_boxes) -> list[dict]:
    """The model's focus steps as 3D voxel boxes of the preprocessed volume: [{"slice", "corners" [2, 3]}]."""
    from adafocus.datasets.mri.slices import frame_box_to_voxels, volume_to_clip

    _, info = volume_to_clip(np.zeros(volume_shape, np.float32), spacing, axis=clip_spec["axis"],
                             num_slices=clip_spec["num_slices"], discard_border=clip_spec["discard_border"],
                             context=clip_spec["context"], size=clip_spec["size"])
    return [{"slice": index, "corners": frame_box_to_voxels(box, info.slice_indices.index(index), info)}
            for index, box in slices_and_boxes]


def region_table(regions: list[dict], affine: np.ndarray) -> list[dict]:
    """One row per focus region: the slice, its voxel box, its MNI box (mm: as recorded, else through the
    preprocessed affine) with the centre, and the box in native-scan voxels where known."""
    from adafocus.core.geometry import map_box_corners

    rows = []
    for k, region in enumerate(regions, 1):
        corners = np.asarray(region["corners"])
        low, high = np.asarray(region.get("mm") or map_box_corners(corners.tolist(), affine.tolist()))
        row = {"region": k, "slice": region["slice"],
               "voxels (x, y, z)": _box_text(corners),
               "MNI centre (mm)": "(" + ", ".join(f"{v + 0.0:.0f}" for v in (low + high) / 2) + ")",
               "MNI extent (mm)": " × ".join(f"{v:.0f}" for v in high - low)}
        if region.get("native") is not None:
            row["native voxels"] = _box_text(np.asarray(region["native"]))
        rows.append(row)
    return rows


def _box_text(corners: np.ndarray) -> str:
    return " – ".join("(" + ", ".join(f"{v:.0f}" for v in corner) + ")" for corner in corners)


# ------------------------------------------------------------------------------------------ scan view
def _given(value) -> bool:
    return isinstance(value, str) and value.strip() != ""


def parse_boxes_3d(cell) -> list[list[list[float]]]:
    """A predictions.tsv cell "x0 y0 z0 x1 y1 z1;..." -> [[[x0, y0, z0], [x1, y1, z1]], ...]."""
    if not _given(cell):
        return []
    boxes = [[float(v) for v in part.split()] for part in cell.split(";") if part.strip()]
    if any(len(b) != 6 for b in boxes):
        raise ValueError(f"3D boxes {cell!r} are not 6 numbers each")
    return [[b[:3], b[3:]] for b in boxes]


def native_corners(preprocessed: Path, corners) -> list | None:
    """A preprocessed-voxel box in native-scan voxels, through the registration saved with the cache."""
    from adafocus.core.geometry import map_box_corners
    from adafocus.datasets.mri.preprocess import read_native_geometry

    geometry = read_native_geometry(preprocessed)
    if geometry is None:
        return None
    return map_box_corners(np.asarray(corners).tolist(), geometry["preprocessed_to_native_voxels"])


def cv_scan(row, roots) -> dict | None:
    """A cv fold's scan: paths from the manifest, focus regions from predictions.tsv (3D voxel boxes where
    written, else derived from the slice boxes of older outputs)."""
    experiment = experiment_of(Path(row["fold_dir"]), roots)
    preprocessed, raw, manifest_rows = manifest_entry(experiment, row["participant_id"], row["session_id"], roots)
    if preprocessed is None:
        return None
    volume, spacing, affine = cached_volume(str(preprocessed))
    slices = [int(v) for v in str(row["slices"]).split(";") if v.strip()]
    voxels, mm = parse_boxes_3d(row.get("boxes_voxels")), parse_boxes_3d(row.get("boxes_mm"))
    if voxels and len(voxels) == len(slices):
        regions = [{"slice": s, "corners": np.asarray(v), "mm": m}
                   for s, v, m in zip(slices, voxels, mm or [None] * len(slices))]
    else:
        regions = focus_regions(volume.shape, spacing, experiment["clip"],
                                rl.parse_slices_and_boxes(row["slices"], row["boxes"]))
    for region in regions:
        region["native"] = native_corners(preprocessed, region["corners"])
    return {"path": str(preprocessed), "raw": raw, "shape": volume.shape, "affine": affine, "regions": regions,
            "axis": experiment["clip"]["axis"], "run_id": cached_run_id(str(row["fold_dir"])),
            "class_names": rl.scan_class_names(row["fold_dir"], experiment, manifest_rows)}


def scored_scan(row, roots) -> dict | None:
    """A scan scored by `adafocus score`: the cached volume and the regions (preprocessed voxels, MNI mm,
    native voxels) from details.jsonl; class names from scoring.json."""
    folder = Path(row["scores_dir"])
    record = cached_details(str(folder / DETAILS_FILE)).get(row["item_id"], {})
    preprocessed = rl.resolve_inside(record.get("preprocessed") or row.get("preprocessed"), roots, base=folder)
    volume, _, affine = cached_volume(str(preprocessed))
    regions = [{"slice": s["slice"], "corners": np.asarray(s["box_voxels"]), "mm": s.get("box_mm"),
                "native": s.get("box_native_voxels")} for s in record.get("selected", [])]
    try:
        raw = rl.resolve_inside(row["item_id"], roots, base=folder)
    except rl.UnsafePathError:
        raw = None
    scoring = folder / "scoring.json"
    info = json.loads(scoring.read_text(encoding="utf-8")) if scoring.is_file() else {}
    model = info.get("model")
    try:
        run_id = cached_run_id(str(rl.resolve_inside(model, roots))) if model else ""
    except rl.UnsafePathError:
        run_id = Path(model).parent.name
    return {"path": str(preprocessed), "raw": raw if raw is not None and raw.is_file() else None,
            "shape": volume.shape, "affine": affine, "regions": regions, "run_id": run_id,
            "axis": record.get("axis", "sagittal"), "class_names": dict(enumerate(info.get("class_names", [])))}


def qc_line(st, preprocessed: str) -> None:
    """The scan's registration QC flag and reason (datasets/mri/qc.py), next to the prediction."""
    flag, reason = rl.registration_qc(preprocessed)
    if flag == "pass":
        st.caption(f"Registration QC: pass. {reason}")
    elif flag == "warn":
        st.warning(f"Registration QC: warn. {reason}")
    elif flag == "fail":
        st.error(f"Registration QC: fail. {reason} The prediction is not to be trusted.")
    else:
        st.caption("Registration QC: not recorded for this scan (preprocessed before QC existed).")


def open_scan(st, row, roots):
    """Everything the scan view needs, or None after showing why it cannot be opened."""
    try:
        scan = scored_scan(row, roots) if _given(row.get("scores_dir")) else cv_scan(row, roots)
    except (rl.UnsafePathError, OSError, ValueError, KeyError, TypeError) as error:
        st.error(f"Cannot open this scan: {error}")
        return None
    if scan is None:
        st.error("The preprocessed volume is missing or outside the folders this app may read.")
    return scan


def class_label(names: dict[int, str], prediction) -> str:
    try:
        return names.get(int(prediction), f"class {prediction}")
    except (TypeError, ValueError):
        return str(prediction)


def scan_view(st, row, roots, store: ra.AuditLog) -> None:
    """Prediction; three large linked planes with window/level, orientation labels, crosshairs and the
    focus boxes they cross; the regions in voxels and MNI mm; raw beside preprocessed; the HTML report."""
    scan = open_scan(st, row, roots)
    names = scan["class_names"] if scan else {}
    prediction_header(st, f"Scan {row['name']}", class_label(names, row["prediction"]), row)
    if scan is None:
        return
    qc_line(st, scan["path"])
    if names:
        st.caption("Classes: " + ", ".join(f"{k} = {v}" for k, v in sorted(names.items())))
    window, cursor = scan_controls(st, scan, row["item_id"])
    images = {plane: plane_image(scan, plane, cursor, window) for plane in PLANE_ORDER}
    top = st.columns(2)
    bottom = st.columns(2)
    for column, plane in zip([*top, bottom[0]], PLANE_ORDER):
        index = cursor[rr.plane_axes(plane)[0]]
        crossed = sum(rr.box_on_plane(r["corners"], plane, index, scan["shape"]) is not None for r in scan["regions"])
        column.image(images[plane], caption=f"{plane} {index}" + (f" · focus box ×{crossed}" if crossed else ""),
                     width="stretch", output_format="JPEG")
    with bottom[1]:
        regions = region_table(scan["regions"], scan["affine"])
        st.markdown("**Focus regions** (yellow; MNI millimetres from the preprocessed scan's affine)")
        if regions:
            st.dataframe(regions, hide_index=True)
        else:
            st.info("The model exited after the glance: no focus region.")
        report_button(st, row, scan, images, regions, store)
    native_view(st, scan)


def scan_controls(st, scan: dict, item_id: str):
    """Window preset, contrast, level, and the linked cursor (one slider per axis; "go to region" centres
    it on a focus box). Returns ((low, high), cursor voxel)."""
    shape = scan["shape"]
    keys = [f"cursor_{axis}::{item_id}" for axis in range(3)]
    regions = scan["regions"]
    if keys[0] not in st.session_state:
        start = rr.box_centre_voxel(regions[0]["corners"], shape) if regions else tuple(n // 2 for n in shape)
        for key, value in zip(keys, start):
            st.session_state[key] = int(value)
    cols = st.columns([2, 2, 2, 3])
    preset = cols[0].selectbox("Window", rr.WINDOW_PRESETS, key="window_preset")
    contrast = cols[1].slider("Contrast", 0.5, 4.0, 1.0, 0.25, key="window_contrast")
    level = cols[2].slider("Level", -0.5, 0.5, 0.0, 0.05, key="window_level")
    if regions:
        labels = [f"region {k}: slice {r['slice']}" for k, r in enumerate(regions, 1)]
        choice = cols[3].selectbox("Go to focus region", ["—", *labels], key=f"goto::{item_id}")
        if choice != "—" and st.session_state.get(f"went::{item_id}") != choice:
            centre = rr.box_centre_voxel(regions[labels.index(choice)]["corners"], shape)
            for key, value in zip(keys, centre):
                st.session_state[key] = int(value)
            st.session_state[f"went::{item_id}"] = choice
    sliders = st.columns(3)
    names = ("x (sagittal slice, L→R)", "y (coronal slice, P→A)", "z (axial slice, I→S)")
    cursor = tuple(column.slider(name, 0, n - 1, key=key) for column, name, n, key in zip(sliders, names, shape, keys))
    window = rr.adjust_window(*cached_window(scan["path"], preset), contrast=contrast, level=level)
    return window, cursor


def plane_image(scan: dict, plane: str, cursor, window) -> bytes:
    index = cursor[rr.plane_axes(plane)[0]]
    boxes = tuple(tuple(b) for r in scan["regions"]
                  if (b := rr.box_on_plane(r["corners"], plane, index, scan["shape"])) is not None)
    return cached_plane_image(scan["path"], plane, index, window, boxes,
                            rr.crosshair_on_plane(cursor, plane, scan["shape"]))


def report_button(st, row, scan: dict, images: dict[str, bytes], regions: list[dict], store: ra.AuditLog) -> None:
    """A download button with the one-page HTML report of this scan (decision included)."""
    facts = {"scan": row["name"], "prediction": class_label(scan["class_names"], row["prediction"]),
             "confidence": f"{row['confidence']:.2f}", "exit taken": int(row["exit"]),
             "GMACs": f"{row['gmacs']:.4g}", "needs review": "yes" if row["needs_review"] else "no",
             "model run": scan["run_id"]}
    history = store.history("scan", row["item_id"])
    # built eagerly: a deferred (callable) download button made the next click after a decision get lost
    report = rr.scan_report_html(f"Scan {row['name']}", facts, regions, history[-1] if history else None,
                                 list(images.items()))
    safe = row["item_id"].replace("/", "_")
    st.download_button("Download the scan report (HTML)", report, file_name=f"scan_report_{safe}.html",
                       mime="text/html", key="scan_report", on_click="ignore")


def canonical_corners(raw: Path, corners) -> list[list[float]]:
    """A box in voxels of the scan as stored -> voxels of its closest-canonical (RAS) array, as displayed."""
    import nibabel as nib
    from adafocus.core.geometry import map_box_corners

    image = nib.load(str(raw))
    to_stored = nib.orientations.inv_ornt_aff(nib.orientations.io_orientation(image.affine), image.shape[:3])
    return map_box_corners(np.asarray(corners).tolist(), np.linalg.inv(to_stored).tolist())


def native_view(st, scan: dict) -> None:
    """The focus regions on the raw scan the clinician knows (three planes through the first region's
    centre), where the registration's inverse placed them; the raw scan's middle otherwise."""
    raw = scan["raw"]
    if raw is None or str(raw) == scan["path"]:
        return
    try:
        volume, _, _ = cached_volume(str(raw))
        regions = [{"corners": np.asarray(canonical_corners(raw, r["native"]))}
                   for r in scan["regions"] if r.get("native") is not None]
    except Exception:  # noqa: BLE001  (a DICOM folder or unreadable file: the preprocessed view stands)
        st.info("The raw scan could not be shown (not a NIfTI/Analyze file).")
        return
    native = {"path": str(raw), "shape": volume.shape, "regions": regions}
    cursor = rr.box_centre_voxel(regions[0]["corners"], volume.shape) if regions else \
        tuple(n // 2 for n in volume.shape)
    window = cached_window(str(raw), "brain")
    if regions:
        st.markdown("**The same focus regions on the native (raw) scan** (through the inverse of the registration)")
    else:
        st.markdown("**Native (raw) scan** (no native mapping recorded for this scan: middle slices)")
    for column, plane in zip(st.columns(3), PLANE_ORDER):
        column.image(plane_image(native, plane, cursor, window), width="stretch", output_format="JPEG",
                     caption=f"native {plane} {cursor[rr.plane_axes(plane)[0]]}")


def cached_run(path: str):
    """The run folder's model (`load_run`: its own card and input spec), loaded once per process
    (st.cache_resource; the GPU when there is one)."""
    import streamlit as st

    @st.cache_resource(show_spinner="Loading the model…")
    def load(model_dir: str):
        from adafocus.apps.runs.agreement import prepare_run
        from adafocus.core.engine import ENV_ENGINE, ENV_PRECISION
        from adafocus.core.run import load_run

        run = load_run(model_dir, device="auto")
        # `adafocus app --engine/--precision`: OpenVINO encoders on the CPU by default, at the precision auto
        # chooses (bf16 where the CPU has it and the run's measured agreement allows it; no int8 in the app)
        prepare_run(run, engine=os.environ.get(ENV_ENGINE) or "auto", precision=os.environ.get(ENV_PRECISION) or "fp32",
                    allow_int8=False, log=log.info)
        return run

    return load(path)


def pick_scan(st, folders, max_mb: float):
    """The scan chosen under the scans folder or uploaded: (validated scan, its file under the scans folder, or
    None for an upload, which is written only while it is scored) or (None, None)."""
    choices = []
    if folders["scans"] is not None:
        choices = sorted(str(p.relative_to(folders["scans"])) for p in folders["scans"].rglob("*")
                         if p.name.lower().endswith((".nii", ".nii.gz")))[:2000]
    picked = st.selectbox("A NIfTI file under the scans folder", ["—", *choices], key="score_pick")
    upload = st.file_uploader(f"…or upload one (.nii / .nii.gz, at most {max_mb:g} MB)", key="score_upload")
    if upload is not None:
        return rl.validate_nifti_bytes(upload.name, upload.getvalue(), int(max_mb * 2**20)), None
    if picked != "—":
        source = rl.resolve_inside(picked, [folders["scans"]])
        if source.stat().st_size > max_mb * 2**20:
            raise rl.UploadError(f"the file is over the {max_mb:g} MB limit")
        return rl.validate_nifti_bytes(source.name, source.read_bytes(), int(max_mb * 2**20)), source
    return None, None


def score_page(st, folders, roots, threshold) -> None:
    """Score one scan exactly as `adafocus score` does (apps/scoring: the run's own t1-linear settings, axis
    and context), into a private folder, and show what the model looked at."""
    st.header("Score a new scan")
    if folders["model"] is None:
        st.info("Start the app with --model RUN to score new scans.")
        return
    max_mb = float(os.environ.get(ENV_MAX_UPLOAD, rl.DEFAULT_MAX_UPLOAD_MB))
    try:
        validated, source = pick_scan(st, folders, max_mb)
    except (rl.UploadError, rl.UnsafePathError) as error:
        st.error(f"This file cannot be scored: {error}")
        log.info("rejected a scan: %s", error)
        return
    if validated is None:
        return
    st.table([rl.header_summary(validated.image, show_identifiers=st.session_state.get("show_identifiers", False))])
    include_failed = st.checkbox("Score even if its registration fails QC", value=False, key="score_qc_failed")
    if not st.button("Score", key="score_run"):
        return
    # The upload's copy, its registered image and the scores exist only while it is scored: a scan is patient
    # data, and nothing of it stays on disk once the result is on screen.
    with tempfile.TemporaryDirectory(prefix="adafocus-review-score-") as work, st.spinner("Preprocessing and scoring…"):
        scan = source if source is not None else rl.write_private_copy(validated, work)
        record = rl.score_new_scan(folders["model"], scan, Path(work) / "scores", budget=st.session_state.get("budget"),
                                   include_qc_failed=include_failed)
    if record.get("status") != "ok":
        st.error(f"Scoring failed: {record.get('error') or 'no result'}")
        return
    probs = record["probs"]
    st.success(f"Prediction: {record['label']} (confidence {max(probs.values()):.2f}), exit {record['exit_step']}, "
               f"{record['gmacs']:.4g} GMACs")
    st.dataframe(rl.selected_regions_table(record), hide_index=True)


# ----------------------------------------------------------------------------------------- video view
def video_view(st, row, roots, folder: Path) -> None:
    """The prediction, the timeline (a clip: the temporal policy per glance frame; a long file scored in
    windows: window scores, flagged segments and gaps), the player (an H.264 preview when the browser cannot
    play the source), and the frames the model looked at, large, with their boxes. Clicking a bar, a segment
    or a frame's button moves the player there."""
    prediction_header(st, f"Video {row['name']}", str(row["prediction"]), row)
    try:
        path = rl.resolve_inside(row["path"], roots, base=row["scores_dir"])
    except rl.UnsafePathError as error:
        st.error(f"Cannot open this video: {error}")
        return
    record = cached_details(str(Path(row["scores_dir"]) / DETAILS_FILE)).get(row["item_id"], {})
    start_key = f"start::{row['item_id']}"
    windowed = rl.is_windowed(record)
    if windowed:
        window = long_timeline(st, record, row, start_key)
        selected = rl.focus_of(record, window)
    else:
        selected = record.get("selected", [])
        timeline(st, record, selected, start_key)
    try:
        playable = cached_playable(str(path), str(folder / ".review_cache" / "previews"))
    except Exception as error:  # noqa: BLE001  (PyAV raises many types for broken files)
        st.error(f"Cannot play this video: {error}")
        playable = None
    if playable is not None:
        if playable != str(path):
            st.caption("Playing a small H.264 preview: the browser cannot play this file's codec.")
        st.video(playable, start_time=rl.player_start(st.session_state.get(start_key, 0)))
    if not selected:
        st.info("The model exited after the glance: no frame was looked at closely"
                + (" in this window." if windowed else "."))
        return
    focus_frames(st, path, selected, start_key)


def cached_segments(scores_dir: str, path: str) -> list[dict]:
    """The flagged segments of one file from segments.csv, re-read when the file changes."""
    from adafocus.apps.scoring.outputs import SEGMENTS_FILE

    @_cached("cache_data", max_entries=64)
    def read(scores_dir: str, path: str, fingerprint: str):
        return rl.read_file_segments(scores_dir, path)

    segments_file = Path(scores_dir) / SEGMENTS_FILE
    return read(scores_dir, path, rr.file_fingerprint(segments_file)) if segments_file.is_file() else []


def long_timeline(st, record: dict, row, start_key: str) -> int | None:
    """A long file's timeline: each window's score over time, flagged segments as red bands (click one, or
    its button, to play from its start and see its peak window's frames), gaps in grey, the threshold
    dashed; clicking a window's point shows that window. Returns the window whose frames to show."""
    window_key, pick_key = f"window::{row['item_id']}", f"pick::{row['item_id']}"
    segments = [s | {"peak_window": rl.segment_window(record, s)}
                for s in cached_segments(str(row["scores_dir"]), str(row["item_id"]))]
    rows = rl.window_score_rows(record)
    duration = rl.file_duration_s(record)
    scored = len({r["window"] for r in rows})
    st.markdown(f"**Window scores over the whole video** ({scored} windows of {record.get('window_s', 0):g} s "
                f"every {record.get('stride_s', 0):g} s over {duration:g} s; flagged segments in red, threshold "
                f"{record.get('threshold', 0):g} dashed; click a segment to play it, a point to see its window)")
    if rows:
        chart = rr.long_timeline_chart(rows, segments, rl.gap_bands(record), record.get("threshold"), duration)
        event = st.altair_chart(chart, on_select="rerun", key=f"long_timeline::{row['item_id']}", width="stretch")
        selection = event.get("selection") if isinstance(event, dict) else getattr(event, "selection", None)
        picked, st.session_state[pick_key] = rl.timeline_pick(selection, segments, st.session_state.get(pick_key))
        if picked is not None:
            st.session_state[start_key] = picked["start_s"]
            if picked["window"] is not None:
                st.session_state[window_key] = picked["window"]
    else:
        st.warning("No window of this file could be decoded: nothing to plot.")
    for gap in rl.gap_bands(record):
        st.caption(f"Not scored {gap['start_s']:g}–{gap['end_s']:g} s: {gap['reason']}")
    if segments:
        st.markdown(f"**Flagged segments** ({len(segments)})")
        for k, segment in enumerate(segments):
            st.button(f"▶ {segment['label']} {segment['start_s']:g}–{segment['end_s']:g} s · peak "
                      f"{segment['peak_score']:.2f} · mean {segment['mean_score']:.2f}", key=f"segment_{k}",
                      on_click=play_segment, args=(start_key, window_key, segment))
    else:
        st.caption("No segment reached the threshold in this file.")
    window = st.session_state.get(window_key, rl.default_window(record))
    chosen = rl.window_of(record, window)
    if chosen is not None:
        probs = ", ".join(f"{name} {p:.2f}" for name, p in chosen["probs"].items())
        st.markdown(f"**Window {chosen['index']}: {chosen['start_s']:g}–{chosen['end_s']:g} s** · {probs} · "
                    f"exit {chosen.get('exit_step', 0)} · {float(chosen.get('gmacs', 0.0)):.3g} GMACs")
    return window


def play_segment(start_key: str, window_key: str, segment: dict) -> None:
    """Button callback: play from the segment's start and show its peak window's frames."""
    import streamlit as st

    st.session_state[start_key] = segment["start_s"]
    if segment.get("peak_window") is not None:
        st.session_state[window_key] = segment["peak_window"]


def cached_playable(path: str, cache_dir: str) -> str:
    @_cached("cache_data", max_entries=512)
    def playable(path: str, fingerprint: str, cache_dir: str) -> str:
        return str(rr.playable_video(Path(path), Path(cache_dir)))

    return playable(path, rr.file_fingerprint(path), cache_dir)


def timeline(st, record: dict, selected: list[dict], start_key: str) -> None:
    """The temporal policy's weight per glance frame over the whole video (chosen frames in orange);
    clicking a bar jumps the player to that time."""
    import altair as alt
    import pandas as pd

    rows = rr.timeline_rows(record.get("glance_weights", []), selected)
    if not any(r["weight"] is not None for r in rows):
        st.caption("No frame weights in details.jsonl (scored before they were recorded): timeline unavailable.")
        return
    data = pd.DataFrame(rows).dropna(subset=["weight"])
    data["looked at"] = np.where(data["chosen"], "chosen for focus", "glance only")
    pick = alt.selection_point(name="jump", fields=["time_s"], on="click")
    chart = alt.Chart(data).mark_bar(size=10).encode(
        x=alt.X("time_s:Q", title="time (s)"), y=alt.Y("weight:Q", title="temporal policy weight"),
        color=alt.Color("looked at:N", scale=alt.Scale(domain=["chosen for focus", "glance only"],
                                                       range=["#f28e2b", "#4e79a7"])),
        tooltip=["frame", "time_s", "weight", "looked at"]).add_params(pick).properties(height=160)
    st.markdown("**Where the model looked in the whole video** (temporal policy weight per glance frame; "
                "click a bar to jump)")
    event = st.altair_chart(chart, on_select="rerun", key=f"timeline::{start_key}", width="stretch")
    points = (event or {}).get("selection", {}).get("jump", []) if isinstance(event, dict) else \
        getattr(getattr(event, "selection", None), "jump", None) or []
    if points:
        st.session_state[start_key] = int(float(points[0]["time_s"]))


def focus_frames(st, path: Path, selected: list[dict], start_key: str) -> None:
    """The frames the model looked at, two per row, with their focus boxes and a jump button each."""
    from adafocus.datasets.video import VideoDecodeError

    st.markdown("**Frames the model looked at** (focus box in yellow)")
    try:
        cells = cached_focus_frames(str(path), tuple((s["frame"], tuple(s["box"])) for s in selected))
    except (VideoDecodeError, OSError) as error:
        st.error(f"Cannot decode the frames: {error}")
        return
    columns = st.columns(2)
    for i, (cell, item) in enumerate(zip(cells, selected)):
        column = columns[i % 2]
        column.image(cell, caption=f"frame {item['frame']} · {item['time_s']:.2f} s", width="stretch",
                     output_format="JPEG")
        if column.button(f"▶ {item['time_s']:.2f} s", key=f"jump_{i}"):
            st.session_state[start_key] = float(item["time_s"])
            st.rerun()


def cached_focus_frames(path: str, frames_and_boxes: tuple) -> list[bytes]:
    @_cached("cache_data", max_entries=512)
    def render(path: str, fingerprint: str, frames_and_boxes: tuple) -> list[bytes]:
        from adafocus.datasets.video import decode_frames

        frames = decode_frames(path, [f for f, _ in frames_and_boxes])
        return [rr.jpeg_bytes(_framed(frame, box)) for frame, (_, box) in zip(frames, frames_and_boxes)]

    return render(path, rr.file_fingerprint(path), frames_and_boxes)


def _framed(frame: np.ndarray, box, min_width: int = 560):
    """An RGB frame enlarged to at least `min_width` px wide with its focus box (source pixels) drawn."""
    from PIL import Image, ImageDraw

    height, width = frame.shape[:2]
    scale = max(1.0, min_width / width)
    image = Image.fromarray(frame).resize((round(width * scale), round(height * scale)), Image.BILINEAR)
    x0, y0, x1, y1 = (v * scale for v in box)
    ImageDraw.Draw(image).rectangle([x0, y0, x1 - 1, y1 - 1], outline=rr.BOX_COLOUR, width=3)
    return image


def video_thumbnail(row, roots) -> bytes | None:
    """The first focus frame of a video with its box, small (page view); None when there is none."""
    try:
        path = rl.resolve_inside(row["path"], roots, base=row["scores_dir"])
    except rl.UnsafePathError:
        return None
    record = cached_details(str(Path(row["scores_dir"]) / DETAILS_FILE)).get(row["path"], {})
    selected = rl.focus_of(record)
    if not selected:
        return None
    try:
        return cached_focus_frames(str(path), ((selected[0]["frame"], tuple(selected[0]["box"])),))[0]
    except Exception:  # noqa: BLE001  (the row stays decidable without its picture)
        return None


# ------------------------------------------------------------------------------------- budget, audit
def budget_page(st, folders, roots, threshold) -> None:
    from adafocus.core.checkpoint import load_checkpoint
    from adafocus.core.exits import budget_curve, exit_scores
    from adafocus.core.run import exit_policy_for_budget

    st.header("Compute budget")
    if folders["model"] is None:
        st.info("Start the app with --model RUN to choose a budget.")
        return
    from adafocus.core.run import RunFolder

    calibration = RunFolder(folders["model"]).calibration
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
        run = cached_run(str(folders["model"]))
        try:
            st.session_state["policy"] = exit_policy_for_budget(run.folder, chosen, run.model)
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
    st.header("Audit log")
    st.caption("Append-only: every decision is a new row (who, when, what, the decision it replaced, the model "
               "run); an item's current decision is its latest row.")
    for kind, folder in (("scan", folders["scans"]), ("video", folders["videos"])):
        if folder is None:
            continue
        store = _store(folder)
        history = store.history(kind)
        st.subheader(f"{kind.capitalize()} decisions ({len(history)})")
        if history:
            st.dataframe(history, hide_index=True)
        st.download_button(f"Export the {kind} audit log (CSV)", store.export_csv(kind),
                           file_name=f"{kind}_audit_log.csv", mime="text/csv", key=f"{kind}_export")


if __name__ == "__main__":
    main()
