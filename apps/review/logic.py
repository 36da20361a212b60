"""Pure logic behind the review app (apps/review/app.py): no Streamlit here, so all of it is unit-testable.

- Queues: MRI cross-validation predictions (`fold-*/predictions.tsv` of `adafocus cv`) and video scores
  (`scores.csv` + `details.jsonl` of `adafocus score`) become one table per kind, sorted by risk, with a
  "needs review" flag when the prediction at the exit taken is uncertain (normalised entropy).
- Path safety: every path that comes from an output file, a widget or an upload is resolved (symlinks
  and `..` included) and refused unless it lies inside one of the folders the app was started with.
- Triage: the flagged share of a queue and how often the model was wrong inside and outside it.
- Uploads: size limit, NIfTI parsing from bytes, 3D/finite/non-constant checks, before anything else runs.
- Identifiers: NIfTI header text fields that may carry patient identifiers are hidden unless opted in.
- Long videos (`adafocus score --windows`): a file's window records (details.jsonl), its flagged segments
  (segments.csv), the rows its timeline plots, the window a segment's peak is in, and what a click on the
  timeline picked.

Risk is the probability of "not the first class" (class 0 is the reference class: CN, NonViolence, ...);
for binary models that is the probability of class 1. A long video scored in windows has one row whose
p_<class> are maxima over its windows: its risk is its *peak score*, the highest window score of any class
but the first, so the queue puts the files with the strongest moment first.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from adafocus.apps.scoring.outputs import SCORES_FILE, SEGMENTS_FILE, WINDOW_COLUMNS, read_segments
from adafocus.reports import metrics
from adafocus.reports.cv_report import CV_JSON, PREDICTIONS_FILE

DEFAULT_MAX_UPLOAD_MB = 100
DEFAULT_REVIEW_ENTROPY = 0.8
QUEUE_COLUMNS = ("item_id", "kind", "name", "prediction", "confidence", "risk", "entropy", "needs_review",
                 "exit", "gmacs", "label", "decision", "reviewed_at")
# NIfTI-1 header text fields that scanners and converters fill with names, IDs or free text.
IDENTIFYING_HEADER_FIELDS = ("descrip", "db_name", "aux_file", "intent_name")
HIDDEN = "[hidden]"


class UnsafePathError(ValueError):
    """A path resolves outside the folders the app may read."""


class UploadError(ValueError):
    """An uploaded or chosen scan cannot be used; the message says why."""


# ------------------------------------------------------------------------------------------ path safety
def resolve_inside(path: str | os.PathLike, roots: Sequence[str | os.PathLike], *, base: str | os.PathLike | None = None
                   ) -> Path:
    """The real path of `path` (relative paths are taken from `base`, default the first root), if it lies
    inside one of `roots` after resolving symlinks and `..`; UnsafePathError otherwise (also when no root)."""
    if not roots:
        raise UnsafePathError("no folder was configured for the app to read")
    text = os.fspath(path)
    if "\x00" in text:
        raise UnsafePathError("path contains a NUL byte")
    candidate = Path(text)
    if not candidate.is_absolute():
        candidate = Path(base if base is not None else roots[0]) / candidate
    real = Path(os.path.realpath(candidate))
    for root in roots:
        real_root = Path(os.path.realpath(root))
        if real == real_root or real_root in real.parents:
            return real
    raise UnsafePathError(f"{path} is outside the folders this app was started with")


# ---------------------------------------------------------------------------------------------- queues
def normalised_entropy(probabilities: Sequence[float] | np.ndarray) -> float:
    """Entropy of one probability vector divided by log(C): 0 = certain, 1 = uniform (reports.metrics,
    after renormalising; a single class is certain)."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    if p.size < 2:
        return 0.0
    return float(metrics.normalised_entropy(p / p.sum()))


def find_prediction_files(scans_dir: str | Path) -> list[Path]:
    """Every predictions.tsv under `scans_dir` (one per CV fold), sorted."""
    return sorted(p for p in Path(scans_dir).rglob(PREDICTIONS_FILE) if p.is_file())


def cv_verdicts(scans_dir: str | Path) -> list[tuple[str, bool, str]]:
    """For every finished CV report under `scans_dir` (a cv.json beside a metrics.tsv): (its folder relative to
    `scans_dir`, whether its pooled balanced accuracy is above chance, the report's one-line summary)."""
    from adafocus.reports.cv_report import balanced_accuracy_row, chance_level, summary_line

    verdicts = []
    for metrics_file in sorted(Path(scans_dir).rglob("metrics.tsv")):
        folder = metrics_file.parent
        if not (folder / CV_JSON).is_file():
            continue  # a fold's own metrics.tsv
        try:
            row = balanced_accuracy_row(folder)
        except (ValueError, KeyError):
            continue  # not a report this version wrote
        above = chance_level(row["ci_low"], row["ci_high"]) == "above"
        verdicts.append((str(folder.relative_to(scans_dir)), above, summary_line(row)))
    return verdicts


def scan_queue(scans_dir: str | Path) -> pd.DataFrame:
    """One row per scored scan from all predictions.tsv files under `scans_dir` (QUEUE_COLUMNS plus
    participant_id, session_id, slices, boxes, fold_dir; item_id "<participant>/<session>") and from every
    `adafocus score` output of an MRI model there (apps.score_scans.scored_scan_records: item_id = the
    scan's path, prediction = class name, plus preprocessed, scores_dir, model)."""
    records = []
    for path in find_prediction_files(scans_dir):
        with path.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                risk = float(row["probability"])
                prediction = int(row["prediction"])
                records.append({
                    "item_id": f"{row['participant_id']}/{row['session_id']}", "kind": "scan",
                    "name": f"{row['participant_id']} {row['session_id']}",
                    "prediction": str(prediction), "confidence": max(risk, 1.0 - risk), "risk": risk,
                    "entropy": normalised_entropy([1.0 - risk, risk]), "exit": int(row["exit"]),
                    "gmacs": float(row["gmacs"]), "label": row.get("label", ""),
                    "participant_id": row["participant_id"], "session_id": row["session_id"],
                    "slices": row.get("slices", ""), "boxes": row.get("boxes", ""), "fold_dir": str(path.parent),
                    "boxes_voxels": row.get("boxes_voxels", ""), "boxes_mm": row.get("boxes_mm", ""),
                    "fitted_flag": fitted_flag(row.get("needs_review"))})
    from adafocus.apps.scoring.scans import scored_scan_records  # the clinical path: `adafocus score` outputs

    records += scored_scan_records(scans_dir)
    return _finish_queue(records)


def video_queue(videos_dir: str | Path) -> pd.DataFrame:
    """One row per successfully scored video from every scores.csv under `videos_dir` (QUEUE_COLUMNS plus
    path, scores_dir, windowed). item_id is the path as written in scores.csv. Rows of a windowed run
    (`score --windows`) are `video_row_windowed`; the others are whole clips as before."""
    records = []
    for scores in sorted(Path(videos_dir).rglob(SCORES_FILE)):
        with scores.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            classes = [c[2:] for c in fields if c.startswith("p_")]
            windowed = all(c in fields for c in WINDOW_COLUMNS)
            for row in reader:
                if row.get("status") != "ok" or not classes:
                    continue
                probs = [float(row[f"p_{c}"]) for c in classes]
                record = {"item_id": row["path"], "kind": "video", "name": Path(row["path"]).name,
                          "prediction": row["label"], "confidence": max(probs), "risk": 1.0 - probs[0],
                          "entropy": normalised_entropy(probs), "exit": int(row["exit_step"]),
                          "gmacs": float(row["gmacs"]), "label": "", "path": row["path"],
                          "scores_dir": str(scores.parent), "windowed": False}
                records.append(video_row_windowed(record, row, classes) if windowed else record)
    return _finish_queue(records)


def peak_score(probs: Sequence[float]) -> float:
    """A windowed file's peak score from its per-class maxima over windows (class order): the highest of
    every class but the first (the reference class, e.g. NonViolence); a one-class model's only score."""
    return float(max(probs[1:])) if len(probs) > 1 else float(probs[0])


def video_row_windowed(record: dict, row: dict[str, str], classes: Sequence[str]) -> dict:
    """A queue record of a long file scored in windows: risk = its peak score (`peak_score`), confidence =
    the score of its label at its peak, entropy = that of (1 - peak, peak) (how unsure the model is that
    anything happened), plus windowed=True, peak_score, peak_start_s, peak_end_s (None for a file labelled
    with the first class), windows, segments."""
    probs = [float(row[f"p_{c}"]) for c in classes]
    peak = peak_score(probs)
    # scores.csv's peak_start_s is where the *label's* score peaks: for a calm file (labelled with the first
    # class) that is its calmest window, not where its peak score is, so it is not shown as the peak
    located = row["label"] != classes[0] or len(classes) == 1
    return {**record, "risk": peak, "confidence": float(row.get(f"p_{row['label']}") or max(probs)),
            "entropy": normalised_entropy([1.0 - peak, peak]), "windowed": True, "peak_score": peak,
            "peak_start_s": _float(row.get("peak_start_s")) if located else None,
            "peak_end_s": _float(row.get("peak_end_s")) if located else None,
            "windows": int(_float(row.get("windows")) or 0), "segments": int(_float(row.get("segments")) or 0)}


def _float(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def queue_item_label(row) -> str:
    """How the item picker names a queue row: "⚑ " when flagged, name, prediction, then the risk (a clip)
    or the peak score and where it is (a long file scored in windows), and the decision when there is one."""
    if windowed_row(row):
        start, end = row.get("peak_start_s"), row.get("peak_end_s")
        where = f" at {start:g}–{end:g} s" if given_number(start) and given_number(end) else ""
        score = f"peak {float(row['peak_score']):.2f}{where}"
    else:
        score = f"risk {float(row['risk']):.2f}"
    decision = str(row.get("decision") or "")
    return (f"{'⚑ ' if _is_true(row.get('needs_review')) else ''}{row['name']} · {row['prediction']} · {score}"
            f"{' · ' + decision if decision else ''}")


def windowed_row(row) -> bool:
    """Whether a queue row is a long file scored in windows (clips and older outputs: False)."""
    return _is_true(row.get("windowed"))


def _is_true(value) -> bool:
    return isinstance(value, (bool, np.bool_)) and bool(value)


def given_number(value) -> bool:
    return isinstance(value, (int, float, np.number)) and not (isinstance(value, float) and np.isnan(value))


def _finish_queue(records: list[dict]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records)
    for column in QUEUE_COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.Series(dtype=object)
    return frame


def fitted_flag(cell) -> bool | None:
    """A needs_review cell written with a fitted threshold (cv predictions.tsv: 0/1) -> bool; None if absent."""
    text = str(cell if cell is not None else "").strip()
    return None if text in ("", "nan", "None") else text not in ("0", "False", "false")


def flag_and_sort(queue: pd.DataFrame, entropy_threshold: float, decisions: dict[str, dict] | None = None, *,
                  use_fitted: bool = True) -> pd.DataFrame:
    """Set needs_review: the outputs' own flag (fitted on validation data, column fitted_flag) where present
    and `use_fitted`, else entropy >= `entropy_threshold`; attach the latest decision per item_id; sort
    highest risk first, flagged before unflagged at equal risk. Returns a new frame."""
    queue = queue.copy()
    flags = queue["entropy"].astype(float) >= entropy_threshold
    if use_fitted and "fitted_flag" in queue.columns:
        fitted = queue["fitted_flag"]
        flags = pd.Series([bool(f) if isinstance(f, (bool, np.bool_)) else bool(e)
                           for f, e in zip(fitted, flags)], index=queue.index, dtype=bool)
    queue["needs_review"] = flags
    decisions = decisions or {}
    queue["decision"] = [decisions.get(i, {}).get("decision", "") for i in queue["item_id"]]
    queue["reviewed_at"] = [decisions.get(i, {}).get("created_at", "") for i in queue["item_id"]]
    return queue.sort_values(["risk", "needs_review", "item_id"], ascending=[False, False, True],
                             kind="stable").reset_index(drop=True)


REVIEW_STATES = ("all", "not reviewed", "reviewed")


def filter_queue(queue: pd.DataFrame, *, needs_review_only: bool = False, predictions: Iterable[str] | None = None,
                 review_state: str = "all", min_risk: float = 0.0) -> pd.DataFrame:
    """Rows matching every filter: flagged only, predicted class in `predictions` (None = any), review state
    (one of REVIEW_STATES), risk >= min_risk."""
    if review_state not in REVIEW_STATES:
        raise ValueError(f"review_state must be one of {REVIEW_STATES}, got {review_state!r}")
    keep = queue["risk"].astype(float) >= min_risk
    if needs_review_only:
        keep &= queue["needs_review"].astype(bool)
    if predictions is not None:
        keep &= queue["prediction"].isin(list(predictions))
    if review_state != "all":
        reviewed = queue["decision"].fillna("").astype(str) != ""
        keep &= reviewed if review_state == "reviewed" else ~reviewed
    return queue[keep].reset_index(drop=True)


def class_names_from_manifest(rows: Iterable) -> dict[int, str]:
    """label -> the diagnosis most manifest rows with that label carry (e.g. {0: "CN", 1: "AD"})."""
    from collections import Counter

    counts: dict[int, Counter] = {}
    for row in rows:
        if row.label is not None and str(row.diagnosis or "").strip():
            counts.setdefault(int(row.label), Counter())[str(row.diagnosis).strip()] += 1
    return {label: counter.most_common(1)[0][0] for label, counter in counts.items()}


def scan_class_names(fold_dir: str | Path, experiment: dict, manifest_rows: Iterable = ()) -> dict[int, str]:
    """Class names of a cv fold's predictions: the fold's model card (run folder), cv.json's class_names,
    else the manifest's diagnoses per label."""
    card = Path(fold_dir) / "model_card.json"
    names = None
    if card.is_file():
        try:
            names = json.loads(card.read_text(encoding="utf-8")).get("class_names")
        except (OSError, ValueError, AttributeError):
            names = None
    names = names or experiment.get("class_names")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return dict(enumerate(names))
    return class_names_from_manifest(manifest_rows)


def model_run_id(path: str | Path | None) -> str:
    """A short id of the model run behind some outputs, stored with every decision: "<run folder>@<first
    12 hex digits of the sha256 of its best.pt>" (for a checkpoint file: of that file; for a cv fold without
    one: of the parent's cv.json); "" when nothing identifies the model."""
    import hashlib

    if path is None:
        return ""
    path = Path(path)
    candidates = [path] if path.is_file() else [path / "best.pt", path.parent / CV_JSON]
    for candidate in candidates:
        if candidate.is_file():
            digest = hashlib.sha256(candidate.read_bytes()).hexdigest()[:12]
            folder = candidate.parent if candidate.name != CV_JSON else path
            return f"{folder.name}@{digest}"
    return ""


def model_was_wrong(row) -> bool | None:
    """True/False when the truth is known: the reference label where the outputs carry one (cv folds),
    else the reviewer's current decision (confirm = the model was right, dismiss = wrong); None otherwise."""
    label = str(row.get("label", "") or "").strip()
    if label and label.lower() != "nan":
        return str(row["prediction"]) != label
    decision = str(row.get("decision", "") or "")
    return {"confirm": False, "dismiss": True}.get(decision)


@dataclass(frozen=True)
class TriageSummary:
    """How a queue splits into flagged / not flagged, and the model's error rate in each part (None when
    no item of that part has a known truth)."""

    total: int
    flagged: int
    flagged_error_rate: float | None
    unflagged_error_rate: float | None
    known: int

    @property
    def flagged_share(self) -> float:
        return self.flagged / self.total if self.total else 0.0

    def line(self) -> str:
        def rate(value: float | None) -> str:
            return "unknown" if value is None else f"{value:.0%}"

        return (f"{self.flagged} of {self.total} flagged ({self.flagged_share:.0%}); model error rate "
                f"{rate(self.flagged_error_rate)} among flagged, {rate(self.unflagged_error_rate)} among the rest "
                f"({self.known} items with a known answer)")


def triage_summary(queue: pd.DataFrame) -> TriageSummary:
    """Flagged share and error rates of a flagged-and-sorted queue (see model_was_wrong for the truth)."""
    wrong = [model_was_wrong(row) for row in queue.to_dict("records")]
    flagged = queue["needs_review"].astype(bool).tolist() if len(queue) else []

    def rate(part: bool) -> float | None:
        known = [w for w, f in zip(wrong, flagged) if f == part and w is not None]
        return sum(known) / len(known) if known else None

    return TriageSummary(total=len(queue), flagged=sum(flagged), flagged_error_rate=rate(True),
                         unflagged_error_rate=rate(False), known=sum(w is not None for w in wrong))


def neighbour_item(items: Sequence[str], current: str | None, step: int) -> str | None:
    """The item `step` places after `current` in `items` (clamped at the ends); the first if current is gone."""
    if not items:
        return None
    if current not in items:
        return items[0]
    return items[min(max(items.index(current) + step, 0), len(items) - 1)]


def page_of(items: Sequence[str], page: int, page_size: int) -> list[str]:
    """Items of 0-based page `page` (clamped to the last page)."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    last = max((len(items) - 1) // page_size, 0)
    page = min(max(page, 0), last)
    return list(items[page * page_size:(page + 1) * page_size])


def parse_slices_and_boxes(slices: str, boxes: str) -> list[tuple[int, tuple[float, float, float, float]]]:
    """predictions.tsv cells ("12;30", "x0 y0 x1 y1;...") -> [(voxel slice index, box frame fractions)]."""
    indices = [int(s) for s in slices.split(";") if s.strip()]
    box_list = [tuple(float(v) for v in b.split()) for b in boxes.split(";") if b.strip()]
    if len(indices) != len(box_list) or any(len(b) != 4 for b in box_list):
        raise ValueError(f"slices {slices!r} and boxes {boxes!r} do not pair up")
    return list(zip(indices, box_list))


# ---------------------------------------------------------------------------------------------- uploads
@dataclass(frozen=True)
class ValidatedScan:
    """A scan that passed `validate_nifti_bytes`: the image and its uncompressed NIfTI bytes."""

    image: nib.Nifti1Image
    nifti_bytes: bytes


def validate_nifti_bytes(name: str, data: bytes, max_bytes: int) -> ValidatedScan:
    """Check an uploaded file before use: size <= max_bytes (also after gunzip), a .nii / .nii.gz name, a
    parseable NIfTI-1/2 header, a 3D (or 3D + singleton) finite, non-constant image. UploadError otherwise."""
    lower = name.lower()
    if not lower.endswith((".nii", ".nii.gz")):
        raise UploadError("only NIfTI files (.nii or .nii.gz) can be scored")
    if len(data) > max_bytes:
        raise UploadError(f"the file is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    if data[:2] == b"\x1f\x8b":
        try:
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as handle:
                data = handle.read(max_bytes + 1)
        except (OSError, EOFError) as error:
            raise UploadError(f"the file is not a valid gzip archive ({error})") from None
        if len(data) > max_bytes:
            raise UploadError(f"the decompressed file is over the {max_bytes / 2**20:.0f} MB limit")
    try:
        image = nib.Nifti1Image.from_bytes(data)
    except Exception:  # noqa: BLE001  (nibabel raises many types for garbage input)
        try:
            image = nib.Nifti2Image.from_bytes(data)
        except Exception:  # noqa: BLE001
            raise UploadError("the file is not a readable NIfTI image (header or data could not be parsed)") from None
    from adafocus.datasets.mri.volume import ScanError, validated_array

    try:
        validated_array(np.asanyarray(image.dataobj), "the upload")
    except ScanError as error:
        raise UploadError(str(error)) from None
    except Exception:  # noqa: BLE001  (truncated data fails in numpy or nibabel)
        raise UploadError("the image data could not be read (truncated file?)") from None
    return ValidatedScan(image, data)


def write_private_copy(scan: ValidatedScan, folder: str | Path) -> Path:
    """Write the validated upload as `folder`/scan.nii, readable by this user only (the user's file name is not
    reused: it may contain a patient name). Returns the file path."""
    target = Path(folder) / "scan.nii"
    target.touch(mode=0o600)
    target.write_bytes(scan.nifti_bytes)
    return target


# ------------------------------------------------------------------------------------------ identifiers
def header_summary(image: nib.Nifti1Image, *, show_identifiers: bool = False) -> dict[str, str]:
    """What the app shows about a NIfTI header: shape, voxel size, orientation, data type, and the free-text
    fields in IDENTIFYING_HEADER_FIELDS, which read HIDDEN unless `show_identifiers`."""
    header = image.header
    summary = {"shape": " x ".join(str(n) for n in image.shape),
               "voxel size (mm)": " x ".join(f"{z:.2f}" for z in header.get_zooms()[:3]),
               "orientation": "".join(nib.aff2axcodes(image.affine)),
               "data type": str(header.get_data_dtype())}
    for field in IDENTIFYING_HEADER_FIELDS:
        try:
            raw = header[field]
        except (KeyError, ValueError):
            continue
        text = raw.item().decode("latin-1", "replace") if hasattr(raw, "item") and isinstance(raw.item(), bytes) \
            else str(raw)
        text = text.strip("\x00 ")
        if text:
            summary[field] = text if show_identifiers else HIDDEN
    return summary


# ------------------------------------------------------------------------------------- scoring a new scan
def score_new_scan(model: str | Path, source: str | Path, work_dir: str | Path, *,
                   budget: float | None = None, include_qc_failed: bool = False) -> dict:
    """Score one scan through apps/scoring exactly as `adafocus score --model RUN` would (the run's own
    t1-linear settings and clip spec, registration QC included); the details record (status ok, or error
    with a reason)."""
    from adafocus.apps.scoring.scans import score_one_scan
    from adafocus.core.engine import ENV_ENGINE, ENV_PRECISION

    # `adafocus app --engine/--precision` (auto by default: the precision the run's agreement allows)
    return score_one_scan(model, source, work_dir, budget=budget, engine=os.environ.get(ENV_ENGINE) or "auto",
                          precision=os.environ.get(ENV_PRECISION) or "fp32",
                          include_qc_failed=include_qc_failed)


def selected_regions_table(record: dict) -> list[dict]:
    """One row per slice the model looked at: the slice, its axis and the box in MNI mm."""
    rows = []
    for chosen in record.get("selected", []):
        box = chosen.get("box_mm")
        rows.append({"slice": chosen.get("slice"), "axis": chosen.get("axis"),
                     "box (MNI mm)": " – ".join("(" + ", ".join(f"{v:.0f}" for v in corner) + ")"
                                                for corner in box) if box else ""})
    return rows


# ------------------------------------------------------------------------------------------ long videos
def is_windowed(record: dict) -> bool:
    """Whether a details.jsonl record is a long file scored in windows (it lists its windows)."""
    return isinstance(record.get("windows"), list)


def file_segments(rows: Iterable[dict[str, str]], path: str) -> list[dict]:
    """The segments.csv rows of one file (as `outputs.read_segments` gives them) with numbers parsed, in time
    order: {label, start_s, end_s, peak_score, peak_start_s, mean_score, first_window, last_window}."""
    segments = []
    for row in rows:
        if row.get("path") != path:
            continue
        try:
            segments.append({"label": row["label"], "start_s": float(row["start_s"]), "end_s": float(row["end_s"]),
                             "peak_score": float(row["peak_score"]), "peak_start_s": float(row["peak_start_s"]),
                             "mean_score": float(row["mean_score"]), "first_window": int(row["first_window"]),
                             "last_window": int(row["last_window"])})
        except (KeyError, ValueError):
            continue  # a row this version cannot read: the file's other segments still show
    return sorted(segments, key=lambda s: (s["start_s"], s["label"]))


def read_file_segments(scores_dir: str | Path, path: str) -> list[dict]:
    """`file_segments` of `path` from the segments.csv beside its scores.csv ([] when there is none)."""
    return file_segments(read_segments(Path(scores_dir) / SEGMENTS_FILE), path)


def timeline_classes(record: dict) -> list[str]:
    """The classes a long file's timeline plots: those its segments were flagged for (the score command's
    choice), else every class but the first (a one-class model: its class)."""
    flagged = [str(c) for c in record.get("flagged") or []]
    if flagged:
        return flagged
    names = list((record.get("probs") or {}).keys())
    return names[1:] or names


def window_score_rows(record: dict, classes: Sequence[str] | None = None) -> list[dict]:
    """One row per scored window and class for the timeline, in window order: {window, start_s, end_s, mid_s,
    class, score, exit, gmacs}. Gap windows (frames that could not be decoded) have no rows."""
    classes = list(classes) if classes is not None else timeline_classes(record)
    rows = []
    for window in record.get("windows") or []:
        probs = window.get("probs")
        if not isinstance(probs, dict):
            continue
        start, end = float(window["start_s"]), float(window["end_s"])
        for name in classes:
            if name in probs:
                rows.append({"window": int(window["index"]), "start_s": start, "end_s": end,
                             "mid_s": round((start + end) / 2, 3), "class": name, "score": float(probs[name]),
                             "exit": int(window.get("exit_step", 0)), "gmacs": float(window.get("gmacs", 0.0))})
    return rows


def file_duration_s(record: dict) -> float:
    """A long file's length as its windows cover it (the last window ends with the file)."""
    return max((float(w["end_s"]) for w in record.get("windows") or []), default=0.0)


def gap_bands(record: dict) -> list[dict]:
    """The stretches of a long file that could not be decoded: {start_s, end_s, reason}."""
    return [{"start_s": float(g["start_s"]), "end_s": float(g["end_s"]), "reason": str(g.get("reason", ""))}
            for g in record.get("gaps") or []]


def window_of(record: dict, index: int | None) -> dict | None:
    """The window record with `index` (None when there is none, or it is a gap)."""
    for window in record.get("windows") or []:
        if index is not None and int(window.get("index", -1)) == int(index) and "probs" in window:
            return window
    return None


def segment_window(record: dict, segment: dict) -> int | None:
    """The window a segment's peak is in: of its windows (first_window..last_window), the one starting at
    its peak_start_s, else the one scoring highest for its label; None when the record has none of them."""
    inside = [w for w in record.get("windows") or []
              if "probs" in w and segment["first_window"] <= int(w["index"]) <= segment["last_window"]]
    if not inside:
        return None
    for window in inside:
        if abs(float(window["start_s"]) - float(segment["peak_start_s"])) < 1e-6:
            return int(window["index"])
    return int(max(inside, key=lambda w: float(w["probs"].get(segment["label"], 0.0)))["index"])


def default_window(record: dict) -> int | None:
    """The window a long file opens on: its most suspicious one (the highest score of the classes its
    timeline plots, `timeline_classes`; the first such window on ties), else its first scored window."""
    classes = timeline_classes(record)
    scored = [w for w in record.get("windows") or [] if isinstance(w.get("probs"), dict)]
    if not scored:
        return None
    best = max(scored, key=lambda w: max((float(w["probs"].get(c, 0.0)) for c in classes), default=0.0))
    return int(best["index"])


def focus_of(record: dict, window: int | None = None) -> list[dict]:
    """The frames the model looked at closely: a clip's "selected", or that of `window` of a long file (its
    default window when None)."""
    if not is_windowed(record):
        return list(record.get("selected") or [])
    chosen = window_of(record, default_window(record) if window is None else window)
    return list(chosen.get("selected") or []) if chosen else []


def player_start(seconds: float) -> int:
    """What st.video's start_time gets for a jump to `seconds`: the whole second at or before it (Streamlit
    keeps whole seconds; the player never starts after the moment asked for)."""
    return max(0, int(np.floor(float(seconds) + 1e-9)))


def timeline_pick(selection, segments: Sequence[dict], previous: dict | None = None) -> tuple[dict | None, dict]:
    """What a click on a long file's timeline picked, and the selection state to remember for the next call.

    `selection`: the chart event's selection (a mapping, or an object with attributes, as st.altair_chart
    returns it) with "segment" (points {"start_s"} of the band clicked) and "window" (points {"window",
    "start_s"}). A chart keeps its selection across reruns, so only a selection that differs from
    `previous` (the state this returned last time) counts. A new band gives {"start_s": the segment's
    start, "window": its "peak_window" from `segments` (None if unknown)}; a new window point gives that
    window and its start; a band wins when both changed (one click on a point inside a band)."""
    def points(name: str) -> list[dict]:
        value = selection.get(name) if isinstance(selection, dict) else getattr(selection, name, None)
        return [dict(p) for p in value or [] if isinstance(p, dict) or hasattr(p, "keys")]

    state = {"segment": points("segment"), "window": points("window")} if selection is not None else \
        {"segment": [], "window": []}
    previous = previous or {"segment": [], "window": []}
    picked = None
    window = state["window"][0] if state["window"] else {}
    if window and state["window"] != previous.get("window") and "start_s" in window:
        picked = {"start_s": float(window["start_s"]), "window": _maybe_int(window.get("window"))}
    band = state["segment"][0] if state["segment"] else {}
    if band and state["segment"] != previous.get("segment") and "start_s" in band:
        start = float(band["start_s"])
        segment = next((s for s in segments if abs(float(s["start_s"]) - start) < 1e-6), None)
        picked = {"start_s": start, "window": _maybe_int(segment.get("peak_window")) if segment else None}
    return picked, state


def _maybe_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def registration_qc(preprocessed: str | Path) -> tuple[str, str]:
    """(flag, reason) of a preprocessed scan's registration QC ("", "" when none was recorded)."""
    from adafocus.datasets.mri.qc import read_qc_json

    result = read_qc_json(preprocessed)
    return ("", "") if result is None else (result.flag, result.reason)
