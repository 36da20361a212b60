"""A scan's slice record: where each candidate slice of a clip came from, in three coordinate systems.

`ScanSliceRecord` implements `adafocus.core.geometry.SourceRecord`: a focus step (candidate slice, box in
frame fractions) becomes
    slice               voxel index along the clip axis of the preprocessed volume
    box_frame           the box in fractions of the displayed slice (x0, y0, x1, y1), as the model saw it
    box_voxels          [[x0, y0, z0], [x1, y1, z1]] continuous voxel coordinates of the preprocessed volume
    box_mm              the same box in MNI millimetres (RAS), through the preprocessed volume's affine
    box_native_voxels   voxel coordinates of the scan as loaded from its file, through the inverse of the
                        registration (absent for caches written before the registration was recorded)
Continuous voxel coordinates have voxel centres at integers (voxel i spans i - 0.5 .. i + 0.5).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
from adafocus.core.geometry import map_box_corners
from adafocus.datasets.mri.preprocess import read_native_geometry
from adafocus.datasets.mri.slices import SliceInfo, frame_box_to_voxels


def _rounded(corners) -> list[list[float]]:
    return [[round(float(v), 2) for v in corner] for corner in corners]


@dataclass(frozen=True)
class ScanSliceRecord:
    """SliceInfo of a clip plus the preprocessed affine and (optionally) the map to native-scan voxels."""

    info: SliceInfo
    preprocessed_affine: Sequence[Sequence[float]]
    to_native_voxels: Sequence[Sequence[float]] | None = None

    def locate(self, candidate: int, box: Sequence[float]) -> dict:
        corners = frame_box_to_voxels(box, candidate, self.info)
        located = {"slice": int(self.info.slice_indices[candidate]), "axis": self.info.axis,
                   "box_frame": [round(float(v), 4) for v in box], "box_voxels": _rounded(corners),
                   "box_mm": _rounded(map_box_corners(corners.tolist(), self.preprocessed_affine))}
        if self.to_native_voxels is not None:
            located["box_native_voxels"] = _rounded(map_box_corners(corners.tolist(), self.to_native_voxels))
        return located


def scan_slice_record(preprocessed: str | Path, info: SliceInfo) -> ScanSliceRecord:
    """The record of a clip cut from a preprocessed volume: its affine, and the native map saved beside it."""
    geometry = read_native_geometry(preprocessed)
    return ScanSliceRecord(info, nib.load(str(preprocessed)).affine.tolist(),
                           None if geometry is None else geometry["preprocessed_to_native_voxels"])


def format_boxes_3d(located: Sequence[dict], key: str) -> str:
    """Boxes of `focus_locations` as a TSV cell: "x0 y0 z0 x1 y1 z1;..." (key: box_voxels / box_mm / ...)."""
    return ";".join(" ".join(f"{v:.2f}" for corner in step[key] for v in corner) for step in located if key in step)
