"""MRI recipes on shape-change atrophy cohorts (issue 30): balanced accuracy and slices in the atrophy, over seeds.

    adafocus bench atrophy --participants 28 --preset cpu-mri --seeds 0 1 2 --work DIR
    adafocus bench atrophy --participants 100 --repeats 10 --preset cpu-mri-atrophy --seeds 0 1 2 \
        --work DIR --no-baselines

1. Generates an OASIS-1-layout cohort with shape-change atrophy (datasets.mri.cohort,
   ``CohortConfig(atrophy_kind="shape")``: hippocampi shrink, lateral ventricles widen, graded severity; pose,
   bias, noise, re-scans; cohort seed 0) into WORK/cohort-<participants>/, and preprocesses it as the demo does
   (t1-linear-like, 2 mm; the demo's T1LinearConfig).
2. Runs ``adafocus cv`` (5-fold participant-level CV, apps.runs.cv.run_cv) with the preset for every seed into
   WORK/<cohort>_<preset>_s<seed>/ (a finished CV folder is read back, not retrained).
3. Per seed: balanced accuracy per fold, mean and SD over folds, pooled over the folds' test participants
   (their first session), AUC; the reference models' (static 2.5D, classical ROI regression) balanced accuracy
   on the same folds when run; the share of the patients' chosen slices inside the atrophy's sagittal band
   (``ShapeAtrophy.band_mm``: |x| where the warp moves anatomy by >= 1 mm) against the band's share of the
   candidate slices (chance), and how many different slice sets each fold chose.
4. Checks per seed: pooled balanced accuracy >= --target-ba (issue 30: 0.85 at 28 participants, 0.90 at 100);
   patients' slices in the band >= 1.5x chance. Writes docs/results/<name>.json (reports.results.save_result:
   commit, CPU flags, threads, date) with "k of N seeds" per check.

Run trainings with ``OMP_NUM_THREADS=1`` to compare with the numbers in docs/notes/mri-atrophy-recipe.md.
"""
from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import numpy as np
from adafocus.apps.runs.cv import band_statistics, run_cv
from adafocus.datasets.mri.cohort import CohortConfig, write_oasis_cohort
from adafocus.datasets.mri.preprocess import T1LinearConfig, run_preprocess
from adafocus.reports.cv_report import CV_JSON, PREDICTIONS_FILE, fold_dir, slice_variety
from adafocus.reports.results import save_result
from adafocus.reports.tables import read_tsv

FOLDS = 5
BAND_RATIO_TARGET = 1.5
PREPROCESS = T1LinearConfig(spacing_mm=2.0, registration_spacing_mm=4.0)  # the MRI demo's (apps.demos.mri)


def shape_cohort(participants: int, repeats: int, seed: int = 0) -> CohortConfig:
    """The bench's cohort: the demo's defaults (2 mm, pose, bias, noise) with shape-change atrophy."""
    return CohortConfig(n_participants=participants, n_repeat_scans=repeats, spacing_mm=2.0, atrophy_kind="shape",
                        seed=seed)


def prepare_cohort(work: Path, cohort: CohortConfig, workers: int = 1) -> Path:
    """Generate and preprocess the cohort under work (both resume); returns the manifest path."""
    root = work / f"cohort-{cohort.n_participants}"
    csv_path = write_oasis_cohort(root / "raw", cohort)
    manifest = root / "cache" / "manifest.tsv"
    if not manifest.exists():
        manifest = Path(run_preprocess("oasis", root / "raw", csv_path, root / "cache", workers=workers,
                                       progress=False, config=PREPROCESS))
    return manifest


def seed_numbers(cv_dir: Path, manifest: Path, cohort: CohortConfig) -> dict:
    """One finished CV folder's numbers (see the module docstring)."""
    metrics = {r["metric"]: r for r in read_tsv(cv_dir / "metrics.tsv")}
    ba = metrics["balanced_accuracy"]
    experiment = json.loads((cv_dir / CV_JSON).read_text(encoding="utf-8"))
    bands = band_statistics(cv_dir, manifest, cohort, FOLDS)
    chance = bands["candidates_in_band"]
    references = {e["model"]: {"mean": e["balanced_accuracy"]["mean"], "folds": e["balanced_accuracy"]["folds"]}
                  for e in experiment.get("comparison", []) if e["model"] != "dynamic"}
    varieties = [slice_variety(read_tsv(fold_dir(cv_dir, i) / PREDICTIONS_FILE)) for i in range(FOLDS)]
    return {"balanced_accuracy_folds": [round(float(ba[f"fold-{i}"]), 4) for i in range(FOLDS)],
            "balanced_accuracy_mean": float(ba["mean"]), "balanced_accuracy_sd": float(ba["sd"]),
            "balanced_accuracy_pooled": float(ba["pooled"]),
            "balanced_accuracy_ci": [float(ba["ci_low"]), float(ba["ci_high"])],
            "auc_pooled": float(metrics["auc"]["pooled"]),
            "patients_slices_in_band": bands["selected_in_band_patients"],
            "all_slices_in_band": bands["selected_in_band_all"], "candidates_in_band": chance,
            "band_ratio": bands["selected_in_band_patients"] / chance if chance > 0 else float("nan"),
            "slice_sets_per_fold": [f"{sets}/{scans}" for sets, scans in varieties],
            "reference_models": references}


def run_bench(work: Path, *, participants: int, repeats: int, preset: str, seeds: list[int], target_ba: float,
              baselines: bool, name: str | None, command: str, epochs: int | None = None,
              results_dir: Path = Path("docs/results")) -> dict:
    cohort = shape_cohort(participants, repeats)
    manifest = prepare_cohort(work, cohort)
    per_seed, seconds = {}, {}
    for seed in seeds:
        cv_dir = work / f"cohort-{participants}_{preset}{'' if epochs is None else f'_e{epochs}'}_s{seed}"
        if not (cv_dir / "metrics.tsv").exists():
            started = time.perf_counter()
            run_cv(manifest, cv_dir, preset=preset, seed=seed, epochs=epochs, progress=False, baselines=baselines,
                   log=lambda message: print(message, flush=True))
            seconds[seed] = round(time.perf_counter() - started)
        per_seed[seed] = seed_numbers(cv_dir, manifest, cohort)
        print(f"seed {seed}: " + json.dumps({k: v for k, v in per_seed[seed].items() if k != "reference_models"}),
              flush=True)
    meets_ba = [s for s in seeds if per_seed[s]["balanced_accuracy_pooled"] >= target_ba]
    meets_band = [s for s in seeds if per_seed[s]["band_ratio"] >= BAND_RATIO_TARGET]
    pooled = [per_seed[s]["balanced_accuracy_pooled"] for s in seeds]
    summary = {"cohort": {"participants": participants, "repeat_scans": repeats, "atrophy_kind": "shape",
                          "band_mm": list(cohort.band_region.band_mm), "cohort_seed": cohort.seed},
               "preset": preset, "epochs_override": epochs, "seeds": seeds,
               "targets": {"balanced_accuracy_pooled_min": target_ba, "band_ratio_min": BAND_RATIO_TARGET},
               "seeds_meeting_balanced_accuracy": f"{len(meets_ba)} of {len(seeds)}",
               "seeds_meeting_band_ratio": f"{len(meets_band)} of {len(seeds)}",
               "balanced_accuracy_pooled_over_seeds": {"mean": float(np.mean(pooled)), "min": float(np.min(pooled)),
                                                       "max": float(np.max(pooled))},
               "cv_seconds": seconds, "per_seed": {str(s): per_seed[s] for s in seeds}}
    if name:
        rows = [{"seed": s, **{k: v for k, v in per_seed[s].items() if k != "reference_models"},
                 **{f"{m}_mean": r["mean"] for m, r in per_seed[s]["reference_models"].items()}} for s in seeds]
        path = save_result(name, command, summary, title=f"MRI shape atrophy, {participants} participants, {preset}",
                           tables={"seeds": rows}, results_dir=results_dir)
        print(f"wrote {path}")
    return summary


def bench_atrophy_command(args) -> int:
    """`adafocus bench atrophy` (arguments in apps/cli.py)."""
    target = args.target_ba if args.target_ba is not None else (0.90 if args.participants >= 100 else 0.85)
    command = " ".join(shlex.quote(part) for part in [
        "adafocus", "bench", "atrophy", "--participants", str(args.participants), "--repeats", str(args.repeats),
        "--preset", args.preset, *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
        "--seeds", *map(str, args.seeds), *(["--target-ba", str(args.target_ba)] if args.target_ba is not None else []),
        *(["--no-baselines"] if args.no_baselines else []), "--work", str(args.work),
        *(["--name", args.name] if args.name else [])])
    run_bench(Path(args.work), participants=args.participants, repeats=args.repeats, preset=args.preset,
              seeds=args.seeds, target_ba=target, baselines=not args.no_baselines, name=args.name, command=command,
              epochs=args.epochs)
    return 0
