"""The MRI demo: synthetic OASIS-1-style cohort -> t1-linear-like preprocessing -> 5-fold CV -> report, then the
clinical path: a deployable model trained on all but a few participants (`adafocus train --data MANIFEST`)
scores those participants' raw scans as if they had just arrived (`adafocus score`, into OUT/scored/, which
`adafocus app --scans OUT` lists by class name).

The cohort's patients carry simulated atrophy in a known band of sagittal planes (datasets.mri.cohort), so
besides balanced accuracy the demo reports how many of the slices the focus policy chose fall in that band,
next to the fraction expected by chance (the band's share of the candidate slices).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from adafocus.apps.cv import run_cv, usable_rows
from adafocus.apps.mri_runs import train_on_manifest
from adafocus.apps.score_scans import score_scans
from adafocus.core.config import get_preset
from adafocus.core.io import atomic_write_json
from adafocus.datasets.mri.cohort import CohortConfig, slices_in_band, write_oasis_cohort
from adafocus.datasets.mri.dataset import ClipSpec
from adafocus.datasets.mri.manifest import read_manifest, write_manifest
from adafocus.datasets.mri.preprocess import T1LinearConfig, run_preprocess
from adafocus.datasets.mri.slices import select_slice_indices
from adafocus.reports.cv_report import fold_dir
from adafocus.reports.tables import read_tsv

DEMO_COHORT = CohortConfig(n_participants=30, n_repeat_scans=3, spacing_mm=2.0)
DEMO_PREPROCESS = T1LinearConfig(spacing_mm=2.0, registration_spacing_mm=4.0)
DEMO_PRESET = "cpu-mri"
DEMO_FOLDS = 5
DEMO_ARRIVING = 4  # participants left out of the deployable model's training, scored from their raw scans


def score_arriving_scans(out_dir: Path, manifest: Path, *, preset: str, epochs: int | None, device: str,
                         workers: int, progress: bool, log) -> dict:
    """Train a deployable run on all but DEMO_ARRIVING participants, then score their raw scans with it."""
    rows = read_manifest(manifest)
    participants = sorted({r.participant_id for r in rows if not r.excluded})
    arriving = set(participants[-DEMO_ARRIVING:])
    train_manifest = write_manifest([r for r in rows if r.participant_id not in arriving],
                                    manifest.with_name("deploy_manifest.tsv"))
    recipe = get_preset(preset)
    if epochs is not None:
        recipe.train.epochs = epochs
    train_on_manifest(train_manifest, recipe, out_dir / "run", device=device, progress=progress, log=log)
    sources = [str(r.source_path) for r in rows if r.participant_id in arriving and r.source_path is not None]
    summary = score_scans(sources, out_dir / "run", out_dir / "scored", device=device, workers=workers,
                          progress=progress, log=log)
    return {"arriving_scans": len(sources), "scored": summary.scored, "failed": summary.failed,
            "scores": summary.outputs["scores"], "run": str(out_dir / "run")}


def band_statistics(cv_dir: Path, manifest: Path, cohort: CohortConfig, n_folds: int) -> dict[str, float]:
    """Fraction of selected (focus) slices inside the atrophy band, for patients and overall, and the
    band's share of the candidate slices (chance level). Preprocessed scans share one MNI grid."""
    spec = ClipSpec(**json.loads((cv_dir / "cv.json").read_text(encoding="utf-8"))["clip"])
    first = nib.load(str(usable_rows(manifest)[0].preprocessed_path))
    candidates = select_slice_indices(first.shape[0], spec.num_slices, spec.discard_border)
    selected: dict[int, list[bool]] = {0: [], 1: []}
    for i in range(n_folds):
        for p in read_tsv(fold_dir(cv_dir, i) / "predictions.tsv"):
            if p["slices"]:
                slices = np.array([int(s) for s in p["slices"].split(";")])
                selected[int(p["label"])].extend(slices_in_band(slices, first.affine, cohort.atrophy).tolist())
    everything = selected[0] + selected[1]
    return {"selected_in_band_patients": float(np.mean(selected[1])) if selected[1] else float("nan"),
            "selected_in_band_all": float(np.mean(everything)) if everything else float("nan"),
            "candidates_in_band": float(np.mean(slices_in_band(candidates, first.affine, cohort.atrophy)))}


def run_mri_demo(out_dir: str | Path, *, device: str = "auto", cohort: CohortConfig = DEMO_COHORT,
                 preset: str = DEMO_PRESET, folds: int = DEMO_FOLDS, epochs: int | None = None,
                 workers: int = 2, progress: bool = False) -> dict:
    """Generate -> preprocess -> cross-validate -> report, all under `out_dir` (re-running resumes).

    Returns a summary dict (also written to out_dir/demo_summary.json): report path, balanced accuracy
    (mean and SD over folds, pooled), selected-slice band fractions, seconds per stage."""
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
                    progress=progress, log=quiet)
    seconds["cv"] = time.perf_counter() - started

    started = time.perf_counter()
    clinical = score_arriving_scans(out_dir, Path(manifest), preset=preset, epochs=epochs, device=device,
                                    workers=workers, progress=progress, log=quiet)
    seconds["train_and_score"] = time.perf_counter() - started

    summary_rows = {r["metric"]: r for r in read_tsv(out_dir / "cv" / "metrics.tsv")}
    ba = summary_rows["balanced_accuracy"]
    summary = {"report": result["report"], "report_html": str(out_dir / "cv" / "report.html"),
               "participants": cohort.n_participants, "scans_ok": len(usable_rows(manifest)),
               "balanced_accuracy_mean": float(ba["mean"]), "balanced_accuracy_sd": float(ba["sd"]),
               "balanced_accuracy_pooled": float(ba["pooled"]),
               "auc_pooled": float(summary_rows["auc"]["pooled"]),
               **band_statistics(out_dir / "cv", manifest, cohort, folds), "clinical_path": clinical,
               "seconds": {k: round(v, 1) for k, v in seconds.items()}}
    atomic_write_json(out_dir / "demo_summary.json", summary)
    print(f"MRI demo: balanced accuracy {summary['balanced_accuracy_mean']:.3f} ± "
          f"{summary['balanced_accuracy_sd']:.3f} over {folds} folds (pooled {summary['balanced_accuracy_pooled']:.3f}); "
          f"{summary['selected_in_band_patients']:.0%} of the slices selected for patients lie in the atrophy band "
          f"(chance {summary['candidates_in_band']:.0%})")
    print(f"report: {summary['report']} and {summary['report_html']}")
    print(f"adafocus score: {clinical['scored']} of {clinical['arriving_scans']} raw scans of participants the "
          f"deployable model ({clinical['run']}) never saw -> {clinical['scores']} "
          f"(review: adafocus app --scans {out_dir})")
    return summary
