"""Measure the registration-QC scores of good and deliberately broken scans, and check the thresholds in
datasets/mri/qc.py against them: docs/results/qc_thresholds.json (a result file, reports/results.py).

Good: the demo cohort (datasets/mri/cohort.py, the demo's size and preprocessing settings) and the good
phantoms of every layout (datasets/mri/phantoms.py: OASIS-1 RAW and SUBJ_111 as OASIS-1 writes them, NIfTI),
at head rotations of 4, 10 and 16 degrees. Broken: every kind in `phantoms.BROKEN_KINDS` (wrong orientation
code, head on its side under an ordinary header, not a brain, half the head cut off). Phantoms run under three
preprocessing settings: the demo's, the tests' (4 mm) and the default (1 mm, one seed: slow).

Run: python -c "from adafocus.reports.qc_thresholds import measure_qc_thresholds; measure_qc_thresholds()"
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from adafocus.datasets.mri import phantoms, qc
from adafocus.datasets.mri.adapters import build_oasis_manifest
from adafocus.datasets.mri.cohort import CohortConfig, write_oasis_cohort
from adafocus.datasets.mri.manifest import ManifestRow
from adafocus.datasets.mri.preprocess import T1LinearConfig, preprocess_manifest
from adafocus.reports.results import save_result

DEMO_COHORT = CohortConfig(n_participants=30, n_repeat_scans=3, spacing_mm=2.0)  # apps/demos/mri.py
CONFIGS = {"demo": T1LinearConfig(spacing_mm=2.0, registration_spacing_mm=4.0),
           "test": T1LinearConfig(spacing_mm=4.0, registration_spacing_mm=4.0, n4_shrink_factor=2),
           "default": T1LinearConfig()}
ROTATIONS_DEG = (4.0, 10.0, 16.0)
SCORES = ("ncc", "nmi", "coverage", "rotation_deg", "scale_min", "scale_max", "shear", "probe_gain", "probe_ncc")
COMMAND = ('python -c "from adafocus.reports.qc_thresholds import measure_qc_thresholds; '
           'measure_qc_thresholds()"')


def thresholds() -> dict[str, Any]:
    """The named thresholds of datasets/mri/qc.py, as recorded with the measurements."""
    names = ("NCC_PASS", "NCC_FAIL", "NMI_FAIL", "COVERAGE_PASS", "COVERAGE_FAIL", "SCALE_RANGE", "SHEAR_MAX",
             "ROTATION_WARN_DEG", "ROTATION_FAIL_DEG", "PROBE_MARGIN", "PROBE_MATCH_MIN", "PROBE_SPACING_MM")
    return {name: getattr(qc, name) for name in names}


def phantom_rows(folder: Path, seeds: tuple[int, ...], scale: int = 4) -> list[ManifestRow]:
    """Manifest rows (participant "<group>-<kind>-<seed>") of good and broken phantoms written into `folder`."""
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        nuisance = phantoms.Nuisance(rotation_deg=ROTATIONS_DEG[seed % len(ROTATIONS_DEG)])
        for layout in phantoms.GOOD_LAYOUTS:
            path = phantoms.write_good_scan(folder / f"good-{layout}-{seed}", layout, rng, scale=scale,
                                            nuisance=nuisance)
            rows.append(ManifestRow(f"good-{layout}-{seed}", "ses-1", 0, "CN", None, "", path))
        for kind in phantoms.BROKEN_KINDS:
            path = phantoms.write_broken_scan(folder / f"broken-{kind}-{seed}", kind, rng, scale=scale,
                                              nuisance=nuisance)
            rows.append(ManifestRow(f"broken-{kind}-{seed}", "ses-1", 0, "CN", None, "", path))
    return rows


def score_records(rows: list[ManifestRow], config_name: str, source: str) -> list[dict[str, Any]]:
    records = []
    for row in rows:
        group = "broken" if row.participant_id.startswith("broken-") else "good"
        case = row.participant_id.rsplit("-", 1)[0] if source == "phantom" else "demo-cohort"
        record = {"config": config_name, "source": source, "group": group, "case": case,
                  "scan": f"{row.participant_id} {row.session_id}", "status": row.status, "flag": row.qc_flag}
        record.update({name: getattr(row, f"qc_{name}") for name in SCORES})
        record["reason"] = row.qc_reason
        records.append(record)
    return records


def distribution(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per score and group: min, 5th percentile, median, 95th percentile, max."""
    table = []
    for name in SCORES:
        for group in ("good", "broken"):
            values = np.array([r[name] for r in records if r["group"] == group and r[name] is not None], float)
            if values.size:
                q = np.percentile(values, (0, 5, 50, 95, 100))
                table.append({"score": name, "group": group, "n": int(values.size),
                              **{k: round(float(v), 4) for k, v in zip(("min", "p5", "median", "p95", "max"), q)}})
    return table


def measure_qc_thresholds(out_json: str | Path = "docs/results/qc_thresholds.json", *,
                          cohort: CohortConfig = DEMO_COHORT, seeds: tuple[int, ...] = (0, 1, 2),
                          default_config_seeds: tuple[int, ...] = (0,), workers: int = 1, itk_threads: int = 1,
                          progress: bool = True, work_dir: str | Path | None = None,
                          configs: tuple[str, ...] = tuple(CONFIGS)) -> Path:
    """Preprocess the demo cohort and the phantoms, record every QC score, flag and reason, and write the
    distributions (good vs broken), the thresholds and the false-fail / missed-fail counts to `out_json`."""
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(itk_threads)
    out_json = Path(out_json)
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="adafocus-qc-", dir=work_dir) as tmp:
        tmp = Path(tmp)
        csv_path = write_oasis_cohort(tmp / "cohort", cohort)
        rows = preprocess_manifest(build_oasis_manifest(tmp / "cohort", csv_path), tmp / "cohort-cache",
                                   workers=workers, progress=progress, config=CONFIGS["demo"])
        records += score_records([r for r in rows if not r.excluded], "demo", "demo-cohort")
        for name in configs:
            config = CONFIGS[name]
            config_seeds = default_config_seeds if name == "default" else seeds
            phantom = phantom_rows(tmp / f"phantoms-{name}", config_seeds)
            done = preprocess_manifest(phantom, tmp / f"cache-{name}", workers=workers, progress=progress,
                                       config=config)
            records += score_records(done, name, "phantom")
    good = [r for r in records if r["group"] == "good"]
    broken = [r for r in records if r["group"] == "broken"]
    summary = {
        "good_scans": len(good), "broken_scans": len(broken),
        "false_fails": sum(r["flag"] == qc.FLAG_FAIL for r in good),
        "good_warns": sum(r["flag"] == qc.FLAG_WARN for r in good),
        "missed_fails": sum(r["flag"] != qc.FLAG_FAIL for r in broken),
        "not_preprocessed": sum(r["status"] != "ok" for r in records),
        "ncc_good_min": min(r["ncc"] for r in good), "ncc_broken_max": max(r["ncc"] for r in broken),
        "itk_threads": itk_threads, "cohort_participants": cohort.n_participants,
        "cohort_spacing_mm": cohort.spacing_mm, "phantom_seeds": len(seeds),
    }
    tables = {"distribution": distribution(records),
              "thresholds": [{"name": k, "value": str(v)} for k, v in thresholds().items()],
              "scans": records}
    return save_result(out_json.stem, COMMAND, summary, title="Registration QC: good vs broken scans",
                       tables=tables, results_dir=out_json.parent)
