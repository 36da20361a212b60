"""Participant-level k-fold cross-validation of Uni-AdaFocus on a preprocessed scan manifest (`adafocus cv`).

Output folder (`out_dir`):
    cv.json                    the experiment: manifest, preset, clip settings, folds, seed, budget
    splits/                    fold-<i>.tsv + splits.json (datasets.splits)
    fold-<i>/                  one run folder per fold:
        config.json, best.pt, last.pt, log.tsv     training (core.train; resumes from last.pt)
        training_participants.tsv                  train + validation participants (leakage guard)
        exit_policy.json, calibration.pt           with a budget: thresholds fitted on the validation split
        review_threshold.json                      "needs review" threshold fitted on the validation split
        predictions.tsv                            one row per test scan
        budget_curve.tsv                           test accuracy vs mean GMACs (thresholds fit on validation)
        metrics.tsv                                written last: a fold with metrics.tsv is finished
        baselines/                                 the reference models on the same split (apps.runs.baselines):
                                                   static 2.5D and classical; skipped with baselines=False
    metrics.tsv, report.md, report.html, *.png     the assembled report (reports.cv_report), with the dynamic model
                                                   vs the reference models (also in cv.json's "comparison")

Protocol: the test fold's participants are used only for the final predictions; model selection (best.pt)
and exit thresholds use the inner validation participants. Metrics count each participant once, at its
baseline (first) session, as ClinicaDL does; predictions.tsv still lists every test session.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from adafocus.apps.runs.baselines import run_fold_baselines
from adafocus.apps.runs.mri import mri_card, rows_and_left_out
from adafocus.core.config import Preset, get_preset, with_input_channels
from adafocus.core.device import resolve_device
from adafocus.core.exits import ExitPolicy, budget_curve, exit_scores
from adafocus.core.geometry import focus_locations
from adafocus.core.io import atomic_write_json, atomic_write_text
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import RunFolder, load_run
from adafocus.core.train import calibrate, collect_logits, train
from adafocus.datasets.mri.dataset import (
    AugmentedCopies,
    ClipSpec,
    MRISliceDataset,
    collate_scans,
    training_augmentation,
)
from adafocus.datasets.mri.manifest import ManifestRow
from adafocus.datasets.mri.scan_record import format_boxes_3d, scan_slice_record
from adafocus.datasets.splits import (
    Fold,
    as_scans,
    check_no_leakage,
    load_or_make_folds,
    write_training_participants,
)
from adafocus.reports.cv_report import CV_JSON, PREDICTIONS_FILE, cv_summary_line, fold_dir, write_cv_report
from adafocus.reports.metrics import binary_metrics, fit_review_threshold, normalised_entropy, triage_summary
from adafocus.reports.tables import read_tsv, tsv_text
from torch.utils.data import DataLoader

PREDICTION_COLUMNS = ("participant_id", "session_id", "baseline", "label", "prediction", "probability", "exit",
                      "gmacs", "slices", "boxes", "uncertainty", "needs_review", "boxes_voxels", "boxes_mm")
# "needs review" target: flag the fewest least-certain scans that leave at most this error rate among the
# unflagged validation scans (reports.metrics.fit_review_threshold).
REVIEW_MAX_ERROR = 0.05
CURVE_QS = tuple(float(q) for q in np.geomspace(1e-2, 1e2, 21))
EXIT_CRITERION = "entropy"


def baseline_flags(rows: Sequence[ManifestRow]) -> list[bool]:
    """True for each participant's first session (sorted session ids) among `rows`."""
    first: dict[str, str] = {}
    for row in rows:
        first[row.participant_id] = min(first.get(row.participant_id, row.session_id), row.session_id)
    return [first[r.participant_id] == r.session_id for r in rows]


def _format_boxes(boxes: torch.Tensor) -> str:
    return ";".join(" ".join(f"{v:.3f}" for v in box.tolist()) for box in boxes)


@torch.no_grad()
def predict(model: UniAdaFocus, dataset: MRISliceDataset, *, exit_policy: ExitPolicy | None = None,
            batch_size: int = 16, review_threshold: float = float("inf")) -> tuple[list[dict], torch.Tensor]:
    """Score every scan of `dataset` (binary models). Returns (one predictions.tsv row per scan, all exits'
    logits [N, K, 2] for budget curves). `slices` are voxel indices along the clip axis of the processed
    focus steps; `boxes` are their (x0 y0 x1 y1) frame fractions (as drawn on the slice), `boxes_voxels` /
    `boxes_mm` the same boxes in preprocessed voxels / MNI mm (x0 y0 z0 x1 y1 z1; core.geometry.focus_locations)."""
    if model.config.num_classes != 2:
        raise ValueError(f"MRI cross-validation reports binary metrics; the model has "
                         f"{model.config.num_classes} classes (choose two classes when preprocessing)")
    device = model.pixel_mean.device
    rows, all_logits = [], []
    baseline = baseline_flags(dataset.rows)
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_scans):
        clip = batch["clip"].to(device)
        full = model.infer(clip)
        result = model.infer(clip, exit_policy) if exit_policy is not None else full
        all_logits.append(full.logits.float().cpu())
        probability = result.probabilities[:, 1].cpu()
        uncertainty = normalised_entropy(result.probabilities.float().cpu().numpy())
        for b, index in enumerate(batch["index"].tolist()):
            chosen = result.frame_indices[b].cpu()
            processed = chosen >= 0
            row = dataset.rows[index]
            located = focus_locations(chosen.tolist(), result.boxes[b].float().cpu().tolist(),
                                      scan_slice_record(row.preprocessed_path, dataset.slice_info(index)))
            slices = [step["slice"] for step in located]
            rows.append({"participant_id": row.participant_id, "session_id": row.session_id,
                         "baseline": int(baseline[index]), "label": row.label,
                         "prediction": int(result.prediction[b]), "probability": f"{float(probability[b]):.6f}",
                         "exit": int(result.exit_index[b]), "gmacs": f"{float(result.gmacs[b]):.6f}",
                         "slices": ";".join(str(s) for s in slices),
                         "boxes": _format_boxes(result.boxes[b].cpu()[processed]),
                         "uncertainty": f"{uncertainty[b]:.6f}", "needs_review": int(uncertainty[b] >= review_threshold),
                         "boxes_voxels": format_boxes_3d(located, "box_voxels"),
                         "boxes_mm": format_boxes_3d(located, "box_mm")})
    return rows, torch.cat(all_logits)


def predict_checkpoint(checkpoint: str | Path, rows: Sequence[ManifestRow], spec: ClipSpec, *,
                       exit_policy: ExitPolicy | None = None, allow_leakage: bool = False,
                       device: str = "auto") -> list[dict]:
    """Score manifest rows with a trained model, after the leakage check (see datasets.splits):
    participants recorded in the checkpoint folder's training_participants.tsv are refused unless
    `allow_leakage`."""
    check_no_leakage(checkpoint, [r.participant_id for r in rows], allow_leakage=allow_leakage)
    model = load_run(checkpoint, device=device).model
    return predict(model, MRISliceDataset(rows, spec), exit_policy=exit_policy)[0]


def fold_metrics(predictions: Sequence[dict]) -> dict[str, float]:
    """Metrics over the baseline rows of a predictions table (string or numeric cells)."""
    base = [p for p in predictions if int(p["baseline"])]
    labels = np.array([int(p["label"]) for p in base])
    return {**binary_metrics(labels, np.array([int(p["prediction"]) for p in base]),
                             np.array([float(p["probability"]) for p in base])),
            "participants": float(len(base)), "mean_gmacs": float(np.mean([float(p["gmacs"]) for p in base]))}


def _rows_of(rows: Sequence[ManifestRow], participants: Sequence[str]) -> list[ManifestRow]:
    wanted = set(participants)
    return [r for r in rows if r.participant_id in wanted]


def run_fold(fold: Fold, rows: Sequence[ManifestRow], preset: Preset, spec: ClipSpec, out_dir: str | Path, *,
             manifest: str | Path, budget: float | None = None, augment: bool | AugmentedCopies = True,
             device: str = "auto", progress: bool = True, log: Callable[[str], None] = print) -> dict[str, float]:
    """Train, select, calibrate and test one fold into `fold_dir(out_dir, fold.index)`; returns its metrics.

    `augment` is the training set's augmentation (one AugmentedCopies can serve every fold).
    Resumable: a finished fold (metrics.tsv present) is read back, an interrupted one resumes training."""
    run_dir = fold_dir(out_dir, fold.index)
    run = RunFolder(run_dir)
    if (run_dir / "metrics.tsv").exists():
        return {r["metric"]: float(r["value"]) for r in read_tsv(run_dir / "metrics.tsv")}
    run_dir.mkdir(parents=True, exist_ok=True)
    write_training_participants(run_dir, fold.seen_in_training)  # before any weight exists
    train_set = MRISliceDataset(_rows_of(rows, fold.train), spec, augment=augment)
    val_set = MRISliceDataset(_rows_of(rows, fold.validation), spec)
    log(f"fold {fold.index}: {len(fold.train)} train / {len(fold.validation)} validation / "
        f"{len(fold.test)} test participants")
    card = mri_card(preset, rows, spec, manifest, val_set.rows)
    run.write_classes(card.class_names)
    train(preset, train_set, val_set, run_dir, device=device, collate_fn=collate_scans, progress=progress, log=log,
          card=card)

    model = load_run(run.best, device=device).model
    val_loader = DataLoader(val_set, batch_size=16, collate_fn=collate_scans)
    exit_policy = (calibrate(model, val_loader, budget, criterion=EXIT_CRITERION, device=device, out_dir=run_dir)
                   if budget is not None else None)
    val_logits, _ = collect_logits(model, val_loader, resolve_device(device))
    review_threshold = fit_fold_review_threshold(model, val_set, exit_policy, run_dir)

    test_rows = _rows_of(rows, fold.test)
    check_no_leakage(run_dir, [r.participant_id for r in test_rows])
    predictions, test_logits = predict(model, MRISliceDataset(test_rows, spec), exit_policy=exit_policy,
                                       review_threshold=review_threshold)
    atomic_write_text(run_dir / PREDICTIONS_FILE, tsv_text(PREDICTION_COLUMNS, predictions))
    labels = torch.tensor([r.label for r in test_rows])
    curve = budget_curve(exit_scores(test_logits, EXIT_CRITERION), test_logits, labels, model.exit_costs(),
                         CURVE_QS, calibration_scores=exit_scores(val_logits, EXIT_CRITERION))
    atomic_write_text(run_dir / "budget_curve.tsv", tsv_text(
        ("q", "mean_gmacs", "accuracy"),
        [{"q": f"{p.q:.4g}", "mean_gmacs": f"{p.mean_cost:.6f}", "accuracy": f"{p.accuracy:.6f}"} for p in curve]))
    metrics = fold_metrics(predictions)
    atomic_write_text(run_dir / "metrics.tsv", tsv_text(
        ("metric", "value"), [{"metric": k, "value": f"{v:.6g}"} for k, v in metrics.items()]))
    log(f"fold {fold.index}: balanced accuracy {metrics['balanced_accuracy']:.3f}, AUC {metrics['auc']:.3f}")
    return {k: float(f"{v:.6g}") for k, v in metrics.items()}  # as a resumed run reads them from metrics.tsv


def fit_fold_review_threshold(model: UniAdaFocus, val_set: MRISliceDataset, exit_policy: ExitPolicy | None,
                              run_dir: Path) -> float:
    """Fit the "needs review" threshold on the validation scans (target: REVIEW_MAX_ERROR among the
    unflagged) and record it in review_threshold.json."""
    scored = predict(model, val_set, exit_policy=exit_policy)[0]
    uncertainty = np.array([float(p["uncertainty"]) for p in scored])
    errors = np.array([int(p["prediction"]) != int(p["label"]) for p in scored])
    threshold = fit_review_threshold(uncertainty, errors, max_error=REVIEW_MAX_ERROR)
    atomic_write_json(run_dir / "review_threshold.json", {
        "threshold": threshold if np.isfinite(threshold) else None, "uncertainty": "normalised entropy",
        "target": {"max_error_unflagged": REVIEW_MAX_ERROR}, "validation": triage_summary(uncertainty, errors, threshold)})
    return threshold


def _experiment(manifest: Path, preset: Preset, preset_name: str, spec: ClipSpec, folds: int, seed: int,
                validation_fraction: float, budget: float | None) -> dict:
    return {"manifest": str(manifest.absolute()), "preset_name": preset_name, "preset": preset.to_dict(),
            "clip": spec.to_dict(), "folds": folds, "seed": seed, "validation_fraction": validation_fraction,
            "budget_gmacs": budget, "exit_criterion": EXIT_CRITERION}


def load_or_write_experiment(out_dir: Path, experiment: dict) -> dict:
    """Write cv.json, or check an existing one describes the same experiment (so folds run as separate jobs
    cannot silently mix settings)."""
    path = out_dir / CV_JSON
    if path.exists():
        saved = json.loads(path.read_text(encoding="utf-8"))
        differing = sorted(k for k in experiment if saved.get(k) != experiment[k]
                           and (k in saved or k != "left_out"))  # cv.json written before "left_out" existed
        if differing:
            raise ValueError(f"{out_dir} holds a cross-validation with other settings ({', '.join(differing)}); "
                             f"use another --out, or the same settings")
        return saved
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, experiment)
    return experiment


def run_cv(manifest: str | Path, out_dir: str | Path, *, preset: str | Preset = "cpu-mri", folds: int = 5,
           fold: int | None = None, budget: float | None = None, epochs: int | None = None,
           axis: str = "sagittal", discard_border: float = 0.15, context: int = 1, seed: int = 0,
           validation_fraction: float = 0.2, device: str = "auto", progress: bool = True,
           log: Callable[[str], None] = print, include_qc_failed: bool = False, baselines: bool = True) -> dict:
    """Run all folds (or only `fold`) of a participant-level k-fold CV; without `fold`, also assemble the report.

    With `baselines` (the default) each fold also runs the static 2.5D and classical reference models on its
    split (apps.runs.baselines), and the report compares them with the dynamic model.

    `preset` is a preset name or a Preset. Scans whose registration failed QC stay out unless
    `include_qc_failed`; what was left out is logged and listed in cv.json ("left_out") and the report.
    Returns {"folds": {index: metrics}, "report": path or None}."""
    out_dir = Path(out_dir)
    rows, left_out = rows_and_left_out(manifest, include_qc_failed=include_qc_failed, log=log)
    preset_name = preset if isinstance(preset, str) else "custom"
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if epochs is not None:
        preset.train.epochs = epochs
    preset.train.seed = seed
    preset.model = with_input_channels(preset.model, 2 * context + 1)
    spec = ClipSpec.for_preset(preset, axis=axis, discard_border=discard_border, context=context)
    experiment = _experiment(Path(manifest), preset, preset_name, spec, folds, seed, validation_fraction, budget)
    experiment["left_out"] = [{"participant_id": r.participant_id, "session_id": r.session_id, "reason": why}
                              for r, why in left_out]
    load_or_write_experiment(out_dir, experiment)
    all_folds = load_or_make_folds(as_scans(rows), out_dir / "splits", folds, seed=seed,
                                   validation_fraction=validation_fraction)
    if fold is not None and not 0 <= fold < folds:
        raise ValueError(f"--fold {fold} is outside 0..{folds - 1}")
    results = {}
    augment = training_augmentation(preset.train.augmentation_copies)
    feature_cache: dict = {}  # the classical reference's region features, each scan read once
    for f in all_folds if fold is None else [all_folds[fold]]:
        started = time.perf_counter()
        results[f.index] = run_fold(f, rows, preset, spec, out_dir, manifest=manifest, budget=budget,
                                    augment=augment, device=device, progress=progress, log=log)
        if baselines:
            run_fold_baselines(f, rows, preset, spec, out_dir, augment=augment, device=device, progress=progress,
                               feature_cache=feature_cache, log=log)
        log(f"fold {f.index} done in {time.perf_counter() - started:.0f}s")
    report = None
    if fold is None:
        report = write_cv_report(out_dir)
        log(cv_summary_line(out_dir))
        log(f"report: {report}")
    return {"folds": results, "report": str(report) if report else None}


def cv_command(args) -> int:
    """`adafocus cv --data MANIFEST --out DIR` (arguments in apps/cli.py); --report-only re-assembles the report."""
    from adafocus.reports.cv_report import write_cv_report

    if args.report_only:
        print(f"report: {write_cv_report(args.out)}")
        return 0
    if not args.data:
        raise ValueError("--data MANIFEST is required (only --report-only works without one)")
    if not Path(args.data).is_file():
        raise FileNotFoundError(f"no manifest at {args.data}; write one with `adafocus preprocess`")
    run_cv(args.data, args.out, preset=args.preset, folds=args.folds, fold=args.fold, budget=args.budget,
           epochs=args.epochs, axis=args.axis, context=args.context, seed=args.seed, device=args.device,
           progress=not args.quiet, include_qc_failed=args.include_qc_failed, baselines=not args.no_baselines)
    return 0


def band_statistics(cv_dir: Path, manifest: Path, cohort, n_folds: int) -> dict[str, float]:
    """Share of the chosen slices inside a generated cohort's atrophy band (``CohortConfig.band_region``: the
    darkened ellipsoids or the shape change), for the patients' test scans and for all, and the band's share of
    the candidate slices (chance). Preprocessed scans share one MNI grid."""
    import nibabel as nib
    from adafocus.apps.runs.mri import usable_rows
    from adafocus.datasets.mri.cohort import slices_in_band
    from adafocus.datasets.mri.dataset import ClipSpec
    from adafocus.datasets.mri.slices import select_slice_indices

    spec = ClipSpec(**json.loads((cv_dir / CV_JSON).read_text(encoding="utf-8"))["clip"])
    first = nib.load(str(usable_rows(manifest)[0].preprocessed_path))
    candidates = select_slice_indices(first.shape[0], spec.num_slices, spec.discard_border)
    region = cohort.band_region
    selected: dict[int, list[bool]] = {0: [], 1: []}
    for i in range(n_folds):
        for p in read_tsv(fold_dir(cv_dir, i) / PREDICTIONS_FILE):
            if p["slices"]:
                slices = np.array([int(v) for v in p["slices"].split(";")])
                selected[int(p["label"])].extend(slices_in_band(slices, first.affine, region).tolist())
    everything = selected[0] + selected[1]
    return {"selected_in_band_patients": float(np.mean(selected[1])) if selected[1] else float("nan"),
            "selected_in_band_all": float(np.mean(everything)) if everything else float("nan"),
            "candidates_in_band": float(np.mean(slices_in_band(candidates, first.affine, region)))}
