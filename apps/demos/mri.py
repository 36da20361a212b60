"""The MRI demo: synthetic OASIS-1-style cohort -> t1-linear-like preprocessing -> 5-fold CV -> report, then the
clinical path: a deployable model trained on all but a few participants (`adafocus train --data MANIFEST`)
scores those participants' raw scans as if they had just arrived (`adafocus score`, into OUT/scored/, which
`adafocus app --scans OUT` lists by class name).

The cohort's patients carry simulated atrophy at a known place (datasets.mri.cohort), so besides balanced
accuracy the demo reports how many of the patients' focus regions lie in the atrophy (slice in its sagittal
band and box holding its centre) against the same boxes placed at random, and how many chosen slices fall in
the band against the band's share of the candidate slices. The model is the `cpu-mri` recipe
(core.config); DEMO_COHORT is sized so that recipe learns reliably (docs/notes/mri-demo-recipe.md, "MRI demo").
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from adafocus.apps.runs.cv import band_statistics, run_cv
from adafocus.apps.runs.mri import train_on_manifest, usable_rows
from adafocus.apps.scoring.scans import score_scans
from adafocus.core.config import get_preset
from adafocus.core.geometry import map_box_corners
from adafocus.core.io import atomic_write_json
from adafocus.datasets.mri.cohort import AtrophyRegion, CohortConfig, slices_in_band, write_oasis_cohort
from adafocus.datasets.mri.dataset import ClipSpec, MRISliceDataset
from adafocus.datasets.mri.manifest import read_manifest, write_manifest
from adafocus.datasets.mri.preprocess import T1LinearConfig, run_preprocess
from adafocus.datasets.mri.slices import SliceInfo, frame_box_to_voxels
from adafocus.reports.cv_report import CV_JSON, PREDICTIONS_FILE, fold_dir
from adafocus.reports.metrics import triage_summary
from adafocus.reports.tables import read_tsv

DEMO_COHORT = CohortConfig(n_participants=30, n_repeat_scans=3, spacing_mm=2.0)
DEMO_PREPROCESS = T1LinearConfig(spacing_mm=2.0, registration_spacing_mm=4.0)
DEMO_PRESET = "cpu-mri"
DEMO_FOLDS = 5
DEMO_ARRIVING = 4  # participants left out of the deployable model's training, scored from their raw scans


def score_arriving_scans(out_dir: Path, manifest: Path, *, preset: str, epochs: int | None, device: str,
                         workers: int, progress: bool, log, seed: int = 0) -> dict:
    """Train a deployable run on all but DEMO_ARRIVING participants, then score their raw scans with it."""
    rows = read_manifest(manifest)
    participants = sorted({r.participant_id for r in rows if not r.excluded})
    arriving = set(participants[-DEMO_ARRIVING:])
    train_manifest = write_manifest([r for r in rows if r.participant_id not in arriving],
                                    manifest.with_name("deploy_manifest.tsv"))
    recipe = get_preset(preset)
    if epochs is not None:
        recipe.train.epochs = epochs
    recipe.train.seed = seed
    train_on_manifest(train_manifest, recipe, out_dir / "run", device=device, progress=progress, log=log)
    sources = [str(r.source_path) for r in rows if r.participant_id in arriving and r.source_path is not None]
    summary = score_scans(sources, out_dir / "run", out_dir / "scored", device=device, workers=workers,
                          progress=progress, log=log)
    return {"arriving_scans": len(sources), "scored": summary.scored, "failed": summary.failed,
            "scores": summary.outputs["scores"], "run": str(out_dir / "run")}


def containment_chance(low: float, high: float, width: float, point: float) -> float:
    """Probability that an interval of `width`, placed uniformly at random inside [low, high], contains `point`."""
    room = high - low - width
    if room <= 0:
        return float(low <= point <= high)
    return max(0.0, min(point, high - width) - max(point - width, low)) / room


def frame_extent_mm(info: SliceInfo, affine: np.ndarray) -> np.ndarray:
    """[[lower], [upper]] MNI mm corners of a whole frame (box 0 0 1 1) of the clip's first slice."""
    corners = frame_box_to_voxels([0.0, 0.0, 1.0, 1.0], 0, info)
    return np.array(map_box_corners(corners.tolist(), affine.tolist()))


def region_hits(steps: Sequence[tuple[int, np.ndarray]], affine: np.ndarray, extent_mm: np.ndarray,
                region: AtrophyRegion, band_share: float) -> tuple[list[bool], list[float]]:
    """For sagittal focus steps (slice index, box in MNI mm x0 y0 z0 x1 y1 z1): whether the step is inside
    the atrophy (slice in the band and box containing the region's in-plane centre, y and z), and the
    chance of that for a box of the same size at a random place on a random candidate slice."""
    _, cy, cz = region.centre_mm
    hits, chances = [], []
    for slice_index, box in steps:
        in_band = bool(slices_in_band(np.array([slice_index]), affine, region)[0])
        hits.append(in_band and box[1] <= cy <= box[4] and box[2] <= cz <= box[5])
        chances.append(band_share
                       * containment_chance(extent_mm[0, 1], extent_mm[1, 1], box[4] - box[1], cy)
                       * containment_chance(extent_mm[0, 2], extent_mm[1, 2], box[5] - box[2], cz))
    return hits, chances


def _patient_steps(cv_dir: Path, folds: Iterable[int]) -> list[tuple[int, np.ndarray]]:
    steps = []
    for i in folds:
        for p in read_tsv(fold_dir(cv_dir, i) / PREDICTIONS_FILE):
            if int(p["label"]) == 1 and p["slices"]:
                boxes = [np.array([float(v) for v in b.split()]) for b in p["boxes_mm"].split(";")]
                steps += list(zip((int(s) for s in p["slices"].split(";")), boxes))
    return steps


def patient_box_places(cv_dir: Path, n_folds: int) -> list[dict]:
    """Per fold, where the patients' boxes sit in the sagittal plane (MNI mm): mean and SD across the fold's
    focus steps of the box centre (y, z), and the mean box sides. An SD near 0 means one place for every
    patient; whether that place covers the atrophy is what region_statistics counts."""
    places = []
    for i in range(n_folds):
        boxes = np.array([box for _, box in _patient_steps(cv_dir, [i])]).reshape(-1, 6)
        if not len(boxes):
            continue
        centres, sides = (boxes[:, 1:3] + boxes[:, 4:6]) / 2, boxes[:, 4:6] - boxes[:, 1:3]
        places.append({"fold": i, "centre_yz_mm": centres.mean(0).round(1).tolist(),
                       "sd_yz_mm": centres.std(0).round(1).tolist(), "sides_yz_mm": sides.mean(0).round(1).tolist()})
    return places


def region_statistics(cv_dir: Path, manifest: Path, cohort: CohortConfig, n_folds: int) -> dict[str, float]:
    """Share of the patients' focus steps inside the atrophy (see region_hits), its chance level and ratio."""
    spec = ClipSpec(**json.loads((cv_dir / CV_JSON).read_text(encoding="utf-8"))["clip"])
    row = usable_rows(manifest)[0]
    affine = nib.load(str(row.preprocessed_path)).affine
    info = MRISliceDataset([row], spec).slice_info(0)
    band_share = float(np.mean(slices_in_band(np.array(info.slice_indices), affine, cohort.atrophy)))
    hits, chances = region_hits(_patient_steps(cv_dir, range(n_folds)), affine, frame_extent_mm(info, affine),
                                cohort.atrophy, band_share)
    if not hits:
        return {"regions_in_atrophy": float("nan"), "regions_chance": float("nan"), "regions_vs_chance": float("nan")}
    share, chance = float(np.mean(hits)), float(np.mean(chances))
    return {"regions_in_atrophy": share, "regions_chance": chance,
            "regions_vs_chance": share / chance if chance > 0 else float("inf")}


def triage_of_test_scans(cv_dir: Path, n_folds: int) -> dict[str, float]:
    """The test scans' (baseline sessions) split by the folds' fitted "needs review" flags, with the error
    rate among flagged and unflagged scans (reports.metrics.triage_summary)."""
    base = [p for i in range(n_folds) for p in read_tsv(fold_dir(cv_dir, i) / PREDICTIONS_FILE) if int(p["baseline"])]
    flagged = np.array([int(p["needs_review"]) for p in base], dtype=float)
    errors = np.array([int(p["prediction"]) != int(p["label"]) for p in base])
    return triage_summary(flagged, errors, 0.5)


def mri_summary_lines(summary: dict) -> list[str]:
    """The MRI part's numbers, as printed after it and again at the end of `adafocus demo`."""
    folds = summary["balanced_accuracy_folds"]
    triage = summary["triage"]
    clinical = summary["clinical_path"]
    return [
        (f"MRI demo (seed {summary['seed']}): balanced accuracy {summary['balanced_accuracy_mean']:.3f} ± "
        f"{summary['balanced_accuracy_sd']:.3f} over {len(folds)} folds ({' '.join(f'{b:.2f}' for b in folds)}; "
        f"pooled {summary['balanced_accuracy_pooled']:.3f})"),
        (f"focus: {summary['regions_in_atrophy']:.0%} of the patients' focus regions lie in the atrophy (slice in "
        f"the band, box holding its centre), chance {summary['regions_chance']:.0%} "
        f"({summary['regions_vs_chance']:.1f}x); {summary['selected_in_band_patients']:.0%} of their slices lie in "
        f"the band (chance {summary['candidates_in_band']:.0%})"),
        (f"triage: {triage['flagged']} of {triage['items']} test scans flagged \"needs review\"; model wrong on "
        f"{_percent(triage['error_flagged'])} of the flagged, {_percent(triage['error_unflagged'])} of the rest"),
        f"report: {summary['report']} and {summary['report_html']}",
        (f"adafocus score: {clinical['scored']} of {clinical['arriving_scans']} raw scans of participants the "
        f"deployable model ({clinical['run']}) never saw -> {clinical['scores']} "
        f"(review: adafocus app --scans {Path(clinical['run']).parent})"),
    ]


def _percent(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.0%}"


def run_mri_demo(out_dir: str | Path, *, device: str = "auto", cohort: CohortConfig = DEMO_COHORT,
                 preset: str = DEMO_PRESET, folds: int = DEMO_FOLDS, epochs: int | None = None,
                 workers: int = 2, progress: bool = False, seed: int = 0) -> dict:
    """Generate -> preprocess -> cross-validate -> report, all under `out_dir` (re-running resumes).

    `seed` seeds the folds and the training (the cohort itself is fixed by `cohort.seed`). Returns a summary
    dict (also written to out_dir/demo_summary.json): report path, balanced accuracy (per fold, mean and SD
    over folds, pooled), selected-slice band fractions, focus regions inside the atrophy against chance, the
    triage split of the test scans, seconds per stage."""
    out_dir = Path(out_dir)
    seconds = {}
    started = time.perf_counter()
    csv_path = write_oasis_cohort(out_dir / "raw", cohort)
    seconds["generate"] = time.perf_counter() - started

    started = time.perf_counter()
    manifest = run_preprocess("oasis", out_dir / "raw", csv_path, out_dir / "cache", workers=workers,
                              progress=progress, config=DEMO_PREPROCESS)
    seconds["preprocess"] = time.perf_counter() - started

    started = time.perf_counter()
    quiet = (lambda message: None) if not progress else print
    result = run_cv(manifest, out_dir / "cv", preset=preset, folds=folds, epochs=epochs, device=device,
                    progress=progress, log=quiet, seed=seed)
    seconds["cv"] = time.perf_counter() - started

    started = time.perf_counter()
    clinical = score_arriving_scans(out_dir, Path(manifest), preset=preset, epochs=epochs, device=device,
                                    workers=workers, progress=progress, log=quiet, seed=seed)
    seconds["train_and_score"] = time.perf_counter() - started

    summary_rows = {r["metric"]: r for r in read_tsv(out_dir / "cv" / "metrics.tsv")}
    ba = summary_rows["balanced_accuracy"]
    summary = {"report": result["report"], "report_html": str(out_dir / "cv" / "report.html"),
               "participants": cohort.n_participants, "scans_ok": len(usable_rows(manifest)), "seed": seed,
               "balanced_accuracy_folds": [result["folds"][i]["balanced_accuracy"] for i in sorted(result["folds"])],
               "balanced_accuracy_mean": float(ba["mean"]), "balanced_accuracy_sd": float(ba["sd"]),
               "balanced_accuracy_pooled": float(ba["pooled"]),
               "auc_pooled": float(summary_rows["auc"]["pooled"]),
               **band_statistics(out_dir / "cv", manifest, cohort, folds),
               **region_statistics(out_dir / "cv", manifest, cohort, folds),
               "patient_box_places": patient_box_places(out_dir / "cv", folds),
               "triage": triage_of_test_scans(out_dir / "cv", folds), "clinical_path": clinical,
               "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    atomic_write_json(out_dir / "demo_summary.json", summary)
    for line in mri_summary_lines(summary):
        print(line)
    return summary
