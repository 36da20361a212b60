"""MRI data: dataset adapters -> scan manifest, t1-linear-like preprocessing, slices as frames."""

from adafocus.datasets.mri.adapters import (
    DATASETS,
    build_adni_manifest,
    build_manifest,
    build_oasis_manifest,
    build_ppmi_manifest,
)
from adafocus.datasets.mri.manifest import EXCLUDED_LABEL, ManifestRow, read_manifest, write_manifest
from adafocus.datasets.mri.preprocess import (
    T1LinearConfig,
    benchmark_preprocess,
    preprocess_manifest,
    run_preprocess,
    t1_linear_pipeline,
)
from adafocus.datasets.mri.slices import SliceInfo, frame_box_to_voxels, volume_to_clip
from adafocus.datasets.mri.volume import ScanError, Volume, load_volume

__all__ = [
    "DATASETS",
    "EXCLUDED_LABEL",
    "ManifestRow",
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
    "preprocess_manifest",
    "read_manifest",
    "run_preprocess",
    "t1_linear_pipeline",
    "volume_to_clip",
    "write_manifest",
]
