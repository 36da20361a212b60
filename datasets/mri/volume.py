"""In-memory MRI volume, loading (NIfTI / Analyze / DICOM series) and input validation.

A `Volume` is a 3D float32 array indexed [X, Y, Z] plus a 4x4 affine that maps voxel indices to world
millimetres in RAS+ (x grows to the subject's Right, y Anterior, z Superior), the nibabel convention.
SimpleITK works in LPS+; `volume_to_sitk` / `sitk_to_volume` convert between the two.

Validation policy (documented here once): trailing singleton axes are squeezed ((X, Y, Z, 1) is common in
ADNI/Analyze files); a 4D image with more than one volume is rejected, not truncated to its first volume,
because a T1 pipeline given an fMRI/DWI series is a data error the user should see. Any NaN/inf voxel,
fewer than three non-singleton axes, or a constant image is rejected with a reason.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ANALYZE_SUFFIXES = (".hdr", ".img")
DICOM_SUFFIX = ".dcm"
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])
_MIN_AXIS_VOXELS = 2


class ScanError(ValueError):
    """A scan cannot be used; the message is the reason recorded in the manifest status."""


@dataclass(frozen=True)
class Volume:
    """A 3D image: `array` float32 [X, Y, Z], `affine` float64 [4, 4] voxel index -> RAS+ mm.

    `native` (carried through the preprocessing steps) describes the scan as loaded from its file:
    {"affine": voxel -> RAS mm of the file's own voxel grid, "shape"} and, after registration,
    "mni_to_native_world": the 4x4 RAS mm -> RAS mm map from template space back to the scan's world."""

    array: np.ndarray
    affine: np.ndarray
    native: dict | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along the three array axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.array.shape)


def volume_to_sitk(volume: Volume) -> sitk.Image:
    """Convert a RAS `Volume` into a float32 SimpleITK image (LPS physical space, same voxels)."""
    spacing = np.asarray(volume.spacing)
    direction_ras = volume.affine[:3, :3] / spacing
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array.transpose(2, 1, 0), dtype=np.float32))
    image.SetSpacing(spacing.tolist())
    image.SetDirection((_LPS_FROM_RAS @ direction_ras).flatten().tolist())
    image.SetOrigin((_LPS_FROM_RAS @ volume.affine[:3, 3]).tolist())
    return image


def sitk_to_volume(image: sitk.Image) -> Volume:
    """Convert a 3D SimpleITK image into a RAS `Volume` (float32)."""
    if image.GetDimension() != 3:
        raise ScanError(f"wrong dimensionality: expected a 3D image, got {image.GetDimension()}D")
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float32)
    direction_lps = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_FROM_RAS @ direction_lps @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS_FROM_RAS @ np.asarray(image.GetOrigin(), dtype=float)
    return Volume(array, affine)


def is_nifti_or_analyze(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith(NIFTI_SUFFIXES) or name.endswith(ANALYZE_SUFFIXES)


def available_memory_bytes() -> int:
    """Physical memory not in use now (Linux /proc/meminfo MemAvailable; total RAM elsewhere)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def refuse_oversized(shape: tuple[int, ...], name: str, available: int | None = None) -> None:
    """ScanError when a header claims more voxels than memory holds (checked before anything is allocated)."""
    needed = 4 * int(np.prod([max(int(n), 1) for n in shape], dtype=object))  # float32 copy of the image
    available = available_memory_bytes() if available is None else available
    if needed > available:
        raise ScanError(f"header of {name} claims {' x '.join(str(int(n)) for n in shape)} voxels "
                        f"({needed / 2**30:.1f} GiB as float32), more than the {available / 2**30:.1f} GiB of "
                        f"free memory: a corrupt header or not a single T1 scan")


def _load_with_nibabel(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI or Analyze (.hdr/.img) file; returns (float32 array, affine)."""
    if path.stat().st_size == 0:
        raise ScanError(f"unreadable file: {path.name} is empty (0 bytes)")
    try:
        image = nib.load(str(path))
    except Exception as exc:
        raise ScanError(f"unreadable file: {path.name}: {type(exc).__name__}: {exc}") from exc
    refuse_oversized(image.shape, path.name)
    try:
        array = np.asarray(image.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel, gzip, zlib and EOF errors all mean the same thing to the user
        raise ScanError(f"unreadable file: {path.name}: {type(exc).__name__}: {exc}") from exc
    return array, np.asarray(image.affine, dtype=float)


def _load_dicom_series(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read the largest DICOM series in `folder` with SimpleITK; returns (float32 array, RAS affine).

    Only pixel data and geometry are read; no header text (names, birth dates) is kept or logged.
    """
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ScanError(f"unreadable file: no DICOM series found in {folder.name}")
    files_per_series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids]
    files = max(files_per_series, key=len)
    listed = {Path(name).name for series in files_per_series for name in series}
    dicom_files = sorted(p.name for p in folder.iterdir() if p.name.lower().endswith(DICOM_SUFFIX))
    unreadable = [name for name in dicom_files if name not in listed]  # GDCM skips files it cannot parse
    if unreadable:
        raise ScanError(f"unreadable file: DICOM series in {folder.name}: file {unreadable[0]} "
                        f"({dicom_files.index(unreadable[0]) + 1} of {len(dicom_files)}) is truncated or not DICOM")
    if len(series_ids) > 1:
        log.warning(
            "%s holds %d DICOM series; using the largest (%d files)", folder.name, len(series_ids), len(files)
        )
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ScanError(f"unreadable file: DICOM series in {folder.name}: {_broken_dicom_file(files)}") from exc
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        raise ScanError(f"wrong dimensionality: DICOM series in {folder.name} has a single slice (2D)")
    volume = sitk_to_volume(image)
    return volume.array, volume.affine


def _broken_dicom_file(files: list[str]) -> str:
    """Which file of a series that failed to read is broken (ITK's own message is not for users)."""
    for position, name in enumerate(files, start=1):
        reader = sitk.ImageFileReader()
        reader.SetFileName(name)
        try:
            reader.Execute()
        except RuntimeError:
            return f"file {position} of {len(files)} ({Path(name).name}) is truncated or not DICOM"
    return f"its {len(files)} files do not form one volume (mixed sizes or orientations)"


def validated_array(array: np.ndarray, source_name: str) -> np.ndarray:
    """Check a loaded image array and return it as a 3D float32 array [X, Y, Z].

    Raises ScanError for 4D series, 2D images, non-finite or constant images (see module docstring).
    """
    spatial = (
        array.reshape(array.shape[:3]) if array.ndim > 3 and all(n == 1 for n in array.shape[3:]) else array
    )
    if spatial.ndim == 4:
        raise ScanError(
            f"4D image with {spatial.shape[3]} volumes in {source_name}; expected one 3D T1 volume"
        )
    if spatial.ndim != 3 or sum(n >= _MIN_AXIS_VOXELS for n in spatial.shape) < 3:
        raise ScanError(f"wrong dimensionality: shape {tuple(array.shape)} in {source_name}; expected 3D")
    n_bad = int(np.count_nonzero(~np.isfinite(spatial)))
    if n_bad:
        raise ScanError(f"{n_bad} of {spatial.size} voxels are NaN/inf in {source_name}")
    if float(spatial.max()) == float(spatial.min()):
        raise ScanError(f"empty image: every voxel equals {float(spatial.min()):g} in {source_name}")
    return spatial.astype(np.float32, copy=False)


def load_volume(path: str | Path) -> Volume:
    """Load a NIfTI (.nii/.nii.gz), Analyze (.hdr/.img) file, or a DICOM series (folder or one of its files).

    Returns the validated `Volume` in the file's own orientation (see `OrientationRAS` to reorient).
    """
    path = Path(path)
    if not path.exists():
        raise ScanError(f"file not found: {path}")
    if path.is_dir() or path.name.lower().endswith(DICOM_SUFFIX):
        array, affine = _load_dicom_series(path if path.is_dir() else path.parent)
    elif is_nifti_or_analyze(path):
        array, affine = _load_with_nibabel(path)
    else:
        raise ScanError(f"unsupported file type: {path.name} (expected .nii, .nii.gz, .hdr/.img or DICOM)")
    array = validated_array(array, path.name)
    return Volume(array, affine, {"affine": np.asarray(affine, dtype=float), "shape": tuple(array.shape)})
