"""MRI data: dataset adapters -> scan manifest, t1-linear-like preprocessing, slices as frames."""

from adafocus.datasets.mri.adapters import (
    DATASETS,
    build_adni_manifest,
    build_manifest,
    build_oasis_manifest,
    build_ppmi_manifest,
)
from adafocus.datasets.mri.analyze import read_analyze
from adafocus.datasets.mri.manifest import (
    EXCLUDED_LABEL,
    ManifestRow,
    manifest_rows_for_use,
    read_manifest,
    rows_for_use,
    summarise_left_out,
    write_manifest,
)
from adafocus.datasets.mri.preprocess import (
    T1LinearConfig,
    benchmark_preprocess,
    preprocess_manifest,
    run_preprocess,
    t1_linear_pipeline,
)
from adafocus.datasets.mri.qc import QCResult, QCScores, qc_verdict, read_qc_json
from adafocus.datasets.mri.slices import SliceInfo, frame_box_to_voxels, volume_to_clip
from adafocus.datasets.mri.volume import ScanError, Volume, load_volume

__all__ = [
    "DATASETS",
    "EXCLUDED_LABEL",
    "ManifestRow",
    "QCResult",
    "QCScores",
    "ScanError",
    "SliceInfo",
    "T1LinearConfig",
    "Volume",
    "benchmark_preprocess",
    "build_adni_manifest",
    "build_manifest",
    "build_oasis_manifest",
    "build_ppmi_manifest",
    "frame_box_to_voxels",
    "load_volume",
    "manifest_rows_for_use",
    "preprocess_manifest",
    "qc_verdict",
    "read_analyze",
    "read_manifest",
    "read_qc_json",
    "rows_for_use",
    "run_preprocess",
    "summarise_left_out",
    "t1_linear_pipeline",
    "volume_to_clip",
    "write_manifest",
]
