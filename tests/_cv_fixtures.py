"""A tiny preprocessed cohort (MNI-grid NIfTI files + manifest.tsv) for the CV / dataset / report tests.

No registration runs: scans are written directly on the 4 mm MNI template grid, as `adafocus preprocess`
would leave them; "patients" (label 1) carry the cohort generator's simulated atrophy.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from adafocus.core.config import get_preset
from adafocus.datasets.mri.cohort import AtrophyRegion, apply_atrophy
from adafocus.datasets.mri.manifest import STATUS_OK, ManifestRow, write_manifest
from adafocus.datasets.mri.preprocess import mni_template
from adafocus.datasets.mri.volume import sitk_to_volume


def write_preprocessed_cohort(root: Path, n_participants: int = 12, repeats: int = 2, seed: int = 0,
                              spacing_mm: float = 4.0) -> Path:
    """Write NIfTI scans + manifest.tsv under `root`; every other participant is a patient. Returns the manifest."""
    rng = np.random.default_rng(seed)
    template = sitk_to_volume(mni_template(spacing_mm))
    atrophied = apply_atrophy(template, AtrophyRegion(), 0.8)
    rows = []
    for k in range(n_participants):
        label = k % 2
        sessions = ["ses-M000", "ses-M012"] if k < repeats else ["ses-M000"]
        for session in sessions:
            source = atrophied if label else template
            array = source.array / source.array.max() + rng.normal(0, 0.03, source.shape)
            path = root / f"sub-P{k:03d}" / session / "t1.nii.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(np.clip(array, 0, 1).astype(np.float32), source.affine), str(path))
            rows.append(ManifestRow(participant_id=f"P{k:03d}", session_id=session, label=label,
                                    diagnosis="AD" if label else "CN", age=70.0, sex="F", source_path=path,
                                    preprocessed_path=path, status=STATUS_OK))
    rows.append(ManifestRow(participant_id="PBAD", session_id="ses-M000", label=0, diagnosis="CN", age=None,
                            sex="", source_path=root / "missing.nii", status="error: load: file not found"))
    return write_manifest(rows, root / "manifest.tsv")


def tiny_preset(epochs: int = 2):
    """cpu-mri with few slices, small frames and small batches so a fold trains in about a second."""
    preset = get_preset("cpu-mri", num_candidates=8, num_glance=8, num_focus=2, frame_size=32, glance_size=32,
                        patch_size=16, min_patch_side=16, max_patch_side=24)
    preset.train.epochs = epochs
    preset.train.batch_size = 2
    return preset
