"""Pure logic behind the review app (apps/review/app.py): no Streamlit here, so all of it is unit-testable.

- Queues: MRI cross-validation predictions (`fold-*/predictions.tsv` of `adafocus cv`) and video scores
  (`scores.csv` + `details.jsonl` of `adafocus score`) become one table per kind, sorted by risk, with a
  "needs review" flag when the prediction at the exit taken is uncertain (normalised entropy).
- Path safety: every path that comes from an output file, a widget or an upload is resolved (symlinks
  and `..` included) and refused unless it lies inside one of the folders the app was started with.
- Triage: the flagged share of a queue and how often the model was wrong inside and outside it.
- Uploads: size limit, NIfTI parsing from bytes, 3D/finite/non-constant checks, before anything else runs.
- Identifiers: NIfTI header text fields that may carry patient identifiers are hidden unless opted in.

Risk is the probability of "not the first class" (class 0 is the reference class: CN, NonViolence, ...);
for binary models that is the probability of class 1.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from adafocus.apps.scoring.outputs import SCORES_FILE
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
    path, scores_dir). item_id is the path as written in scores.csv."""
    records = []
    for scores in sorted(Path(videos_dir).rglob(SCORES_FILE)):
        with scores.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            classes = [c[2:] for c in (reader.fieldnames or []) if c.startswith("p_")]
            for row in reader:
                if row.get("status") != "ok" or not classes:
                    continue
                probs = [float(row[f"p_{c}"]) for c in classes]
                records.append({
                    "item_id": row["path"], "kind": "video", "name": Path(row["path"]).name,
                    "prediction": row["label"], "confidence": max(probs), "risk": 1.0 - probs[0],
                    "entropy": normalised_entropy(probs), "exit": int(row["exit_step"]),
                    "gmacs": float(row["gmacs"]), "label": "", "path": row["path"], "scores_dir": str(scores.parent)})
    return _finish_queue(records)


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
    """Write the validated upload as scan.nii in a new private temp folder under `folder` (the user's file
    name is not reused: it may contain a patient name). Returns the file path."""
    target = Path(tempfile.mkdtemp(prefix="upload-", dir=folder)) / "scan.nii"
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
                   budget: float | None = None) -> dict:
    """Score one scan through apps/scoring exactly as `adafocus score --model RUN` would (the run's own
    t1-linear settings and clip spec); the details record (status ok or error with a reason)."""
    from adafocus.apps.scoring.scans import score_one_scan
    from adafocus.core.engine import ENV_ENGINE, ENV_PRECISION

    # `adafocus app --engine/--precision` (auto by default: the precision the run's agreement allows)
    return score_one_scan(model, source, work_dir, budget=budget, engine=os.environ.get(ENV_ENGINE) or "auto",
                          precision=os.environ.get(ENV_PRECISION) or "fp32")


def selected_regions_table(record: dict) -> list[dict]:
    """One row per slice the model looked at: the slice, its axis and the box in MNI mm."""
    rows = []
    for chosen in record.get("selected", []):
        box = chosen.get("box_mm")
        rows.append({"slice": chosen.get("slice"), "axis": chosen.get("axis"),
                     "box (MNI mm)": " – ".join("(" + ", ".join(f"{v:.0f}" for v in corner) + ")"
                                                for corner in box) if box else ""})
    return rows
