"""Scoring scans with an MRI run folder (`adafocus score INPUT... --model RUN --out DIR` when RUN is an MRI model).

Inputs: NIfTI (.nii, .nii.gz) and Analyze (.hdr/.img) files, DICOM series folders (or one of their .dcm
files), folders searched recursively for those (an ADNI / OASIS-1 / PPMI download is such a folder), a BIDS
dataset (sub-*/[ses-*/]anat/*_T1w.nii[.gz]), or a scan manifest.tsv (rows already preprocessed with the
model's own t1-linear settings are used as they are).

Raw scans go through the model's OWN t1-linear settings (its model card), in parallel processes, into a
cache (default OUT/cache, with its manifest.tsv): a re-run, or a run killed midway, reuses every scan
already preprocessed. Clips are cut with the model's own slice axis, slice count, context and borders.

Outputs (the same guarantees as video scoring, apps/scoring/videos.py: rows appended and fsynced as produced, a
re-run scores only inputs without a row):
    OUT/scores.csv     path, status (ok | error), error, note, label (class name), p_<class>, exit_step,
                       gmacs, decode_ms (clip loading), model_ms. A scan that cannot be read, registered or
                       that belongs to a training participant is a row with status "error" and the reason.
    OUT/details.jsonl  per scan: label, probs, exit_step, gmacs, "preprocessed" (the cached volume),
                       "selected": [{"slice", "axis", "box_voxels", "box_mm", "box_native_voxels"}]
                       (preprocessed voxels, MNI mm, voxels of the scan as loaded; adafocus.datasets.mri.scan_record)
    OUT/scoring.json   the model, its domain and class names, the budget (the review app reads it)
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from adafocus.apps.runs.agreement import prepare_run
from adafocus.apps.scoring.outputs import DETAILS_FILE, SCORES_FILE, csv_columns, output_paths, read_details
from adafocus.apps.scoring.videos import ScoreSummary, finish_summary, prepare_outputs
from adafocus.core.device import cuda_autocast, resolve_device
from adafocus.core.engine import EngineError, needs_calibration, prepare_for_inference
from adafocus.core.geometry import focus_locations
from adafocus.core.io import atomic_write_json
from adafocus.core.run import LoadedRun, exit_policy_for_budget, load_run
from adafocus.datasets.mri.bids import build_bids_manifest, is_bids
from adafocus.datasets.mri.dataset import ClipSpec, clip_spec_of, load_preprocessed
from adafocus.datasets.mri.manifest import (
    MANIFEST_NAME,
    STATUS_OK,
    ManifestRow,
    carry_over_finished,
    read_manifest,
)
from adafocus.datasets.mri.preprocess import (
    ScanExecutor,
    preprocess_manifest,
    read_t1_linear_config,
    t1_linear_config_from,
)
from adafocus.datasets.mri.qc import read_qc_json
from adafocus.datasets.mri.scan_record import ScanSliceRecord, scan_slice_record
from adafocus.datasets.mri.slices import volume_to_clip
from adafocus.datasets.mri.volume import DICOM_SUFFIX, NIFTI_SUFFIXES
from adafocus.datasets.splits import TRAINING_PARTICIPANTS_FILE, read_training_participants

SCORING_FILE = "scoring.json"
SCAN_SUFFIXES = (*NIFTI_SUFFIXES, ".hdr")


@dataclass(frozen=True)
class ScanInput:
    """One scan to score: `key` is its path as written in scores.csv."""

    key: str
    source: Path | None
    participant_id: str | None = None
    preprocessed: Path | None = None


# ---------------------------------------------------------------------------------------------- inputs
def find_scan_files(folder: Path) -> list[Path]:
    """NIfTI / Analyze files and DICOM series folders under `folder` (hidden entries skipped), sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        names = [n for n in filenames if not n.startswith(".")]
        if any(n.lower().endswith(DICOM_SUFFIX) for n in names):
            found.append(Path(dirpath))
            continue
        found += [Path(dirpath) / n for n in names if n.lower().endswith(SCAN_SUFFIXES)]
    return sorted(found)


def _manifest_inputs(path: Path) -> list[ScanInput]:
    rows = [r for r in read_manifest(path) if r.source_path is not None or r.status == STATUS_OK]
    return [ScanInput(str(r.source_path or r.preprocessed_path), r.source_path, r.participant_id,
                      r.preprocessed_path if r.status == STATUS_OK else None) for r in rows]


def collect_scan_inputs(inputs: Sequence[str]) -> list[ScanInput]:
    """Scans to score in input order, without duplicates (module docstring); ValueError when none."""
    found: list[ScanInput] = []
    for text in inputs:
        path = Path(text).absolute()
        if path.is_file() and path.name.endswith(".tsv"):
            found += _manifest_inputs(path)
        elif path.is_dir() and is_bids(path):
            for row in build_bids_manifest(path, classes=None):
                if row.source_path is None:  # e.g. a session whose anat/ holds no T1w: nothing to score
                    print(f"{row.participant_id} {row.session_id}: not scored ({row.status})", file=sys.stderr)
                else:
                    found.append(ScanInput(str(row.source_path), row.source_path, row.participant_id))
        elif path.is_dir():
            found += [ScanInput(str(p), p) for p in find_scan_files(path)]
        else:
            source = path.parent if path.name.lower().endswith(DICOM_SUFFIX) else path
            found.append(ScanInput(str(source), source))
    unique: dict[str, ScanInput] = {}
    for scan in found:
        unique.setdefault(scan.key, scan)  # the first of each key, in input order
    unique = list(unique.values())
    if not unique:
        raise ValueError(f"no scans found in {list(inputs)} (NIfTI, Analyze .hdr/.img, DICOM series, BIDS, "
                         f"or a manifest.tsv)")
    return unique


# ------------------------------------------------------------------------------------------ preprocess
def scan_id(key: str) -> str:
    """A cache id for a scan that names no patient: a hash of its path."""
    return "scan" + hashlib.sha1(key.encode("utf-8", errors="surrogateescape")).hexdigest()[:12]


def _same_settings(cached: dict, wanted: dict) -> bool:
    return json.loads(json.dumps(cached)) == json.loads(json.dumps(wanted))


def preprocess_scans(scans: Sequence[ScanInput], cache: Path, t1_settings: dict, *, workers: int = 2,
                     progress: bool = True, executor: ScanExecutor | None = None
                     ) -> dict[str, tuple[Path | None, str]]:
    """key -> (preprocessed volume or None, error reason) for every scan; raw scans (and manifest rows made
    with other settings) are preprocessed into `cache` with the model's settings, resumably."""
    ready = {s.key: (s.preprocessed, "") for s in scans if s.preprocessed is not None and s.preprocessed.exists()
             and _same_settings(read_t1_linear_config(s.preprocessed.parents[3]), t1_settings)}
    todo = [s for s in scans if s.key not in ready and s.source is not None]
    rows = [ManifestRow(scan_id(s.key), "ses-1", 0, "", None, "", s.source) for s in todo]
    manifest = cache / MANIFEST_NAME
    if rows:
        previous = read_manifest(manifest) if manifest.is_file() else []
        rows = carry_over_finished(rows, previous)
        kept = {(r.participant_id, r.session_id) for r in rows}
        others = [r for r in previous if (r.participant_id, r.session_id) not in kept]
        done = preprocess_manifest(rows + others, cache, workers=workers, progress=progress,
                                   config=t1_linear_config_from(t1_settings), executor=executor)
        by_id = {r.participant_id: r for r in done}
        for scan in todo:
            row = by_id[scan_id(scan.key)]
            ready[scan.key] = ((row.preprocessed_path, "") if row.status == STATUS_OK
                               else (None, row.status.removeprefix("error: ")))
    for scan in scans:
        ready.setdefault(scan.key, (None, "no source image for this manifest row"))
    return ready


# -------------------------------------------------------------------------------------------- scoring
def qc_checked(prepared: tuple[Path | None, str]) -> tuple[Path | None, str]:
    """A preprocessed scan whose registration QC failed becomes (None, "QC failed: <reason> ...")."""
    path = prepared[0]
    result = read_qc_json(path) if path is not None else None
    if result is not None and result.flag == "fail":
        return None, f"QC failed: {result.reason} (--include-qc-failed scores it anyway)"
    return prepared


def load_scan_clip(path: Path, spec: ClipSpec) -> tuple[torch.Tensor, ScanSliceRecord]:
    """A preprocessed volume -> (clip [T, C, S, S], its slice record with the three coordinate systems)."""
    volume, spacing = load_preprocessed(path)
    clip, info = volume_to_clip(volume, spacing, axis=spec.axis, num_slices=spec.num_slices,
                                discard_border=spec.discard_border, context=spec.context, size=spec.size)
    return clip, scan_slice_record(path, info)


def t1_linear_settings(run: LoadedRun) -> dict:
    """The model's t1-linear settings: its card's, or (cards derived for old cv folds) its training cache's."""
    settings = run.card.input.get("t1_linear")
    if settings:
        return settings
    manifest = (run.card.calibration or {}).get("data")
    return read_t1_linear_config(Path(manifest).parent) if manifest else {}


def _error_row(key: str, reason: str, num_classes: int) -> list[Any]:
    return [key, "error", reason, "", "", *([""] * num_classes), "", "", "", ""]


def _score_ready(run: LoadedRun, ready: list[tuple[str, torch.Tensor, ScanSliceRecord, Path, float]], policy,
                 device: torch.device, summary: ScoreSummary) -> tuple[list[list[Any]], list[dict]]:
    names = run.card.class_names
    started = time.perf_counter()
    with torch.inference_mode(), cuda_autocast(device):
        result = run.model.infer(torch.stack([item[1] for item in ready]).to(device), policy)
    model_ms = 1000.0 * (time.perf_counter() - started)
    summary.model_ms += model_ms
    probs, exits, gmacs = result.probabilities.float().cpu(), result.exit_index.cpu(), result.gmacs.cpu()
    frames, boxes = result.frame_indices.cpu(), result.boxes.float().cpu()
    rows, records = [], []
    for j, (key, _, record, preprocessed, load_ms) in enumerate(ready):
        label = names[int(probs[j].argmax())]
        rows.append([key, "ok", "", "", label, *(f"{float(p):.6f}" for p in probs[j]), int(exits[j]),
                     f"{float(gmacs[j]):.6f}", f"{load_ms:.1f}", f"{model_ms / len(ready):.1f}"])
        records.append({"path": key, "status": "ok", "label": label,
                        "probs": {n: round(float(p), 6) for n, p in zip(names, probs[j])},
                        "exit_step": int(exits[j]), "gmacs": round(float(gmacs[j]), 6),
                        "preprocessed": str(preprocessed), "axis": record.info.axis,
                        "native_mapped": record.to_native_voxels is not None,
                        "selected": focus_locations(frames[j].tolist(), boxes[j].tolist(), record)})
    return rows, records


def _training_participants(run: LoadedRun) -> set[str]:
    return read_training_participants(run.folder.path) if run.folder.training_participants.is_file() else set()


def _score_batch(run: LoadedRun, batch: list[ScanInput], prepared: dict, spec: ClipSpec, policy,
                 device: torch.device, summary: ScoreSummary, seen: set[str]) -> tuple[list, list]:
    """Rows and details of a batch of scans, in input order; every failure becomes an error row."""
    num_classes = len(run.card.class_names)
    ready, failed = [], {}
    for scan in batch:
        preprocessed, reason = prepared[scan.key]
        if scan.participant_id is not None and scan.participant_id in seen:
            failed[scan.key] = (f"participant in this model's training data ({TRAINING_PARTICIPANTS_FILE}); "
                                f"not scored (the score would be optimistic)")
        elif preprocessed is None:
            failed[scan.key] = reason
        else:
            started = time.perf_counter()
            try:
                clip, record = load_scan_clip(preprocessed, spec)
                ready.append((scan.key, clip, record, preprocessed, 1000.0 * (time.perf_counter() - started)))
            except (ValueError, OSError) as error:
                failed[scan.key] = f"cannot cut slices from the preprocessed scan ({error})"
    scored = dict(zip([r[0] for r in ready], zip(*_score_ready(run, ready, policy, device, summary)))) if ready else {}
    rows, records = [], []
    for scan in batch:
        if scan.key in scored:
            row, record = scored[scan.key]
        else:
            row = _error_row(scan.key, failed[scan.key], num_classes)
            record = {"path": scan.key, "status": "error", "error": failed[scan.key]}
        rows.append(row)
        records.append(record)
    return rows, records


def score_scans(inputs: Sequence[str], model: str | Path, out: str | Path, *, details: str | Path | None = None,
                budget: float | None = None, cache: str | Path | None = None, device: str = "auto",
                workers: int = 2, batch_size: int = 8, progress: bool = True,
                log: Callable[[str], None] = print, executor: ScanExecutor | None = None,
                engine: str = "auto", precision: str = "fp32", include_qc_failed: bool = False) -> ScoreSummary:
    """Preprocess (cached) and score scans with an MRI run folder; see the module docstring for outputs.
    A scan whose registration failed QC (datasets/mri/qc.py) is a row with the QC reason unless
    `include_qc_failed`.
    `executor` runs the preprocessing (datasets/mri/preprocess.py; `score --ray` passes Ray's); `engine` and
    `precision` as for videos (adafocus.core.engine; int8 is for videos only so far, so auto is bf16 or fp32)."""
    started = time.perf_counter()
    dev = resolve_device(device)
    run = load_run(model, device=str(dev))
    if run.card.domain != "mri":
        raise ValueError(f"{run.checkpoint} is a {run.card.domain} model; it scores videos, not scans")
    policy = None if budget is None else exit_policy_for_budget(run.folder, budget, run.model)
    if needs_calibration(precision):
        raise EngineError(f"--precision {precision} scores videos; scans run fp32 (or bf16 where the CPU has it)")
    if precision == "auto":  # bf16 where the CPU has it (agreement measured on the run's own split), else fp32
        prepare_run(run, engine=engine, precision="auto", allow_int8=False, log=log)
    else:
        prepare_for_inference(run.model, engine=engine, precision=precision)
    scans = collect_scan_inputs(inputs)
    out_csv, out_details = output_paths(out, details)
    final, _, done = prepare_outputs(out_csv, out_details, None, csv_columns(run.card.class_names))
    atomic_write_json(out_csv.parent / SCORING_FILE, {
        "domain": "mri", "model": str(run.checkpoint.absolute()), "class_names": run.card.class_names,
        "budget_gmacs": budget, "input": run.card.input})
    todo = [s for s in scans if s.key not in done]
    summary = ScoreSummary(files=len(scans), skipped=len(scans) - len(todo))
    if summary.skipped:
        log(f"skipping {summary.skipped} of {len(scans)} scans already in {final.csv}")
    cache_dir = Path(cache) if cache is not None else out_csv.parent / "cache"
    prepared = preprocess_scans(todo, cache_dir, t1_linear_settings(run), workers=workers, progress=progress,
                                executor=executor)
    if not include_qc_failed:
        prepared = {key: qc_checked(value) for key, value in prepared.items()}
    spec, seen = clip_spec_of(run.card), _training_participants(run)
    loop_started = time.perf_counter()
    for first in range(0, len(todo), batch_size):
        rows, records = _score_batch(run, todo[first:first + batch_size], prepared, spec, policy, dev, summary, seen)
        final.append(rows, records)
    summary.loop_s = time.perf_counter() - loop_started
    return finish_summary(summary, final, None, [s.key for s in scans], [s.key for s in todo], started)



# ------------------------------------------------------------------------------------------ review queue
def scored_scan_records(folder: str | Path) -> list[dict]:
    """Queue records (review app) of every scan scored into `folder` or below: each scores.csv that has a
    scoring.json with domain "mri" beside it. Class names as predictions; slices and frame boxes from
    details.jsonl; "preprocessed" is the cached volume the model saw."""
    import csv
    import math

    records = []
    for marker in sorted(Path(folder).rglob(SCORING_FILE)):
        info = json.loads(marker.read_text(encoding="utf-8"))
        scores = marker.parent / SCORES_FILE
        if info.get("domain") != "mri" or not scores.is_file():
            continue
        names = info["class_names"]
        details = read_details(marker.parent / DETAILS_FILE)
        with scores.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("status") != "ok":
                    continue
                probs = [float(row[f"p_{n}"]) for n in names]
                entropy = -sum(p * math.log(p) for p in probs if p > 0) / math.log(len(probs))
                selected = details.get(row["path"], {}).get("selected", [])
                records.append({
                    "item_id": row["path"], "kind": "scan", "name": Path(row["path"]).name,
                    "prediction": row["label"], "confidence": max(probs), "risk": 1.0 - probs[0],
                    "entropy": entropy, "exit": int(row["exit_step"]), "gmacs": float(row["gmacs"]), "label": "",
                    "participant_id": "", "session_id": "",
                    "slices": ";".join(str(s["slice"]) for s in selected),
                    "boxes": ";".join(" ".join(f"{v:.3f}" for v in s["box_frame"]) for s in selected),
                    "preprocessed": details.get(row["path"], {}).get("preprocessed", ""),
                    "scores_dir": str(marker.parent), "model": info.get("model", "")})
    return records


def score_one_scan(model: str | Path, path: str | Path, out_dir: str | Path, *, budget: float | None = None,
                   device: str = "auto", engine: str = "auto", precision: str = "fp32",
                   include_qc_failed: bool = False) -> dict:
    """Score one scan (e.g. an upload in the review app) exactly as `adafocus score` would, with the model's
    own t1-linear settings and clip spec, into `out_dir`; returns its details record (status ok or error)."""
    score_scans([str(path)], model, out_dir, budget=budget, device=device, workers=1, progress=False,
                log=lambda message: None, engine=engine, precision=precision, include_qc_failed=include_qc_failed)
    return read_details(output_paths(out_dir)[1]).get(str(Path(path).absolute()), {})
