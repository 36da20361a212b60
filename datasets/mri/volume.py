"""In-memory MRI volume, loading (NIfTI / Analyze / DICOM series) and input validation.

A `Volume` is a 3D float32 array indexed [X, Y, Z] plus a 4x4 affine that maps voxel indices to world
millimetres in RAS+ (x grows to the subject's Right, y Anterior, z Superior), the nibabel convention.
SimpleITK works in LPS+; `volume_to_sitk` / `sitk_to_volume` convert between the two.

How each archive's geometry is read (and where a reader would silently get it wrong):
- Analyze 7.5 (.hdr/.img; OASIS-1): `analyze.read_analyze`, FreeSurfer's analyzeRead rules (SPM .mat file,
  else the `hist.orient` code, byte order and voxel sizes from the header, origin from `originator`); see
  analyze.py. nibabel's and ITK's own Analyze readers ignore `orient` and would lay a sagittal OASIS-1
  scan on its side, so they are not used for Analyze files.
- NIfTI-1/2 (ADNI and PPMI LONI downloads, BIDS): nibabel, whose affine is the sform when sform_code > 0,
  else the qform when qform_code > 0 (NIfTI-1 standard, nifti1.h "method 3 / method 2"; ITK's reader makes
  the same choice for a valid sform). When both are set and they disagree by more than
  `QFORM_SFORM_TOLERANCE_MM` at any corner of the field of view, the sform is used and a warning is
  recorded (it reaches the manifest's qc_reason); with both codes 0 the orientation is unknown (nibabel's
  fallback: voxel sizes only) and that is recorded too.
- DICOM series (ADNI, PPMI): SimpleITK/GDCM builds the geometry from ImageOrientationPatient (0020,0037)
  and ImagePositionPatient (0020,0032) of the sorted slices. It cannot represent a gantry-tilted series
  (slice positions stepping off the slice normal: the volume is sheared) nor a Siemens mosaic (many
  slices tiled in one image, ImageType (0008,0008) contains MOSAIC), and reads both silently wrong; both
  are detected from the headers and refused with a reason (convert them with dcm2niix, which corrects
  tilt and splits mosaics). Slices with different orientations are refused as well.

Validation policy (documented here once): trailing singleton axes are squeezed ((X, Y, Z, 1) is common in
ADNI/Analyze files); a 4D image with more than one volume is rejected, not truncated to its first volume,
because a T1 pipeline given an fMRI/DWI series is a data error the user should see. Any NaN/inf voxel,
fewer than three non-singleton axes, or a constant image is rejected with a reason.

`load_volume` records in `Volume.native`: "affine" and "shape" of the file's own voxel grid, "geometry"
(how the orientation was found) and "warnings" (sentences for the manifest; empty when all is well).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from adafocus.datasets.mri.analyze import AnalyzeError, is_nifti_pair_header, pair_paths, read_analyze

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


QFORM_SFORM_TOLERANCE_MM = 1.0  # largest corner displacement between qform and sform that is not reported
GANTRY_TILT_TOLERANCE_DEG = 0.5  # slice steps this far off the slice normal count as a gantry tilt
DICOM_ORIENTATION_TOLERANCE = 1e-3  # largest difference between two slices' direction cosines


@dataclass(frozen=True)
class LoadedImage:
    """What a reader returns: float32 array in the file's voxel order, voxel -> RAS affine, how the geometry
    was found, and warnings for the manifest."""

    array: np.ndarray
    affine: np.ndarray
    geometry: str
    warnings: tuple[str, ...] = ()


def corner_disagreement_mm(first: np.ndarray, second: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two voxel -> world affines put the 8 corners of the grid."""
    corners = np.array([[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1)
                        for k in (0, shape[2] - 1)])
    return float(np.linalg.norm((corners @ (first - second).T)[:, :3], axis=1).max())


def nifti_affine(header, shape: tuple[int, ...]) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """(affine, geometry, warnings) of a NIfTI header: sform if sform_code > 0, else qform if qform_code > 0,
    else the voxel sizes only (orientation unknown); a qform that disagrees with the sform is reported."""
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    sform_code, qform_code = int(sform_code), int(qform_code)
    if sform_code > 0:
        warnings = ()
        if qform_code > 0:
            gap = corner_disagreement_mm(sform, qform, shape)
            if gap > QFORM_SFORM_TOLERANCE_MM:
                warnings = ((f"the NIfTI qform and sform disagree by up to {gap:.1f} mm at the corners of the "
                            f"field of view (tolerance {QFORM_SFORM_TOLERANCE_MM:g} mm); the sform was used, as "
                            f"nibabel and ITK do"),)
        return np.asarray(sform, dtype=float), f"NIfTI sform (code {sform_code})", warnings
    if qform_code > 0:
        return np.asarray(qform, dtype=float), f"NIfTI qform (code {qform_code})", ()
    return (np.asarray(header.get_base_affine(), dtype=float), "NIfTI without qform/sform",
            (("the NIfTI header sets neither a qform nor an sform: the orientation is unknown and was assumed "
             "(voxel sizes only)"),))


def _load_with_nibabel(path: Path) -> LoadedImage:
    """Read a NIfTI file (or a two-file NIfTI .hdr/.img pair)."""
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
    if isinstance(image.header, (nib.Nifti1Header, nib.Nifti2Header)):
        affine, geometry, warnings = nifti_affine(image.header, image.shape)
        return LoadedImage(array, affine, geometry, warnings)
    return LoadedImage(array, np.asarray(image.affine, dtype=float), type(image).__name__)


def _load_analyze(path: Path) -> LoadedImage:
    """Read an Analyze 7.5 pair with FreeSurfer's orientation rules (analyze.py); two-file NIfTI -> nibabel."""
    hdr_path, _, _ = pair_paths(path)
    if hdr_path.is_file() and hdr_path.stat().st_size == 0:
        raise ScanError(f"unreadable file: {hdr_path.name} is empty (0 bytes)")
    try:
        if hdr_path.is_file() and is_nifti_pair_header(hdr_path):
            return _load_with_nibabel(hdr_path)
        scan = read_analyze(path, max_bytes=available_memory_bytes())
    except AnalyzeError as exc:
        raise ScanError(f"unreadable file: {exc}") from exc
    return LoadedImage(scan.array, scan.affine, f"Analyze {scan.geometry}", scan.warnings)


def _dicom_header(name: str) -> dict[str, str]:
    reader = sitk.ImageFileReader()
    reader.SetFileName(name)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return {}
    return {tag: reader.GetMetaData(tag).strip() for tag in ("0008|0008", "0020|0037", "0020|0032", "0018|1120")
            if reader.HasMetaDataKey(tag)}


def _numbers(text: str) -> np.ndarray | None:
    try:
        return np.array([float(v) for v in text.split("\\")], dtype=float)
    except ValueError:
        return None


def dicom_series_problem(headers: list[dict[str, str]]) -> str | None:
    """Why a DICOM series cannot be read as one correct volume (mosaic, mixed orientations, gantry tilt), or
    None. `headers`: per file, the tags ImageType, ImageOrientationPatient, ImagePositionPatient and
    GantryDetectorTilt as text (missing tags absent)."""
    if any("MOSAIC" in h.get("0008|0008", "").upper() for h in headers):
        return ("Siemens mosaic DICOM (ImageType MOSAIC: many slices tiled in one image) is not supported; "
                "convert the series with dcm2niix")
    orientations = [_numbers(h["0020|0037"]) for h in headers if "0020|0037" in h]
    positions = [_numbers(h["0020|0032"]) for h in headers if "0020|0032" in h]
    if len(orientations) != len(headers) or any(o is None or o.size != 6 for o in orientations):
        return None  # GDCM decides; nothing to check against
    if max(float(np.abs(o - orientations[0]).max()) for o in orientations) > DICOM_ORIENTATION_TOLERANCE:
        return "the DICOM slices have different orientations (ImageOrientationPatient): not one volume"
    row, column = orientations[0][:3], orientations[0][3:]
    normal = np.cross(row, column)
    normal /= max(float(np.linalg.norm(normal)), 1e-12)
    if len(positions) == len(headers) and len(positions) >= 2 and all(p is not None and p.size == 3
                                                                      for p in positions):
        points = np.array(sorted(positions, key=lambda p: float(p @ normal)))
        span = points[-1] - points[0]
        along = float(span @ normal)
        if abs(along) > 1e-6:
            tilt = float(np.degrees(np.arccos(min(1.0, abs(along) / float(np.linalg.norm(span))))))
            if tilt > GANTRY_TILT_TOLERANCE_DEG:
                return (f"gantry tilt of {tilt:.1f} degrees (slice positions step off the slice normal): "
                        f"the volume would be sheared; not supported, convert the series with dcm2niix")
    tilts = [_numbers(h["0018|1120"]) for h in headers if "0018|1120" in h]
    if any(t is not None and t.size and abs(float(t[0])) > GANTRY_TILT_TOLERANCE_DEG for t in tilts):
        return "gantry tilt recorded in the DICOM header (GantryDetectorTilt); not supported, convert with dcm2niix"
    return None


def _load_dicom_series(folder: Path) -> LoadedImage:
    """Read the largest DICOM series in `folder` with SimpleITK; returns (float32 array, RAS affine).

    Only pixel data and geometry tags are read; no header text (names, birth dates) is kept or logged.
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
    problem = dicom_series_problem([_dicom_header(name) for name in files])
    if problem:
        raise ScanError(f"unsupported DICOM geometry in {folder.name}: {problem}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise ScanError(f"unreadable file: DICOM series in {folder.name}: {_broken_dicom_file(files)}") from exc
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        raise ScanError(f"wrong dimensionality: DICOM series in {folder.name} has a single slice (2D)")
    volume = sitk_to_volume(image)
    return LoadedImage(volume.array, volume.affine, "DICOM ImageOrientationPatient / ImagePositionPatient")


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
    name = path.name.lower()
    if path.is_dir() or name.endswith(DICOM_SUFFIX):
        loaded = _load_dicom_series(path if path.is_dir() else path.parent)
    elif name.endswith(ANALYZE_SUFFIXES):
        loaded = _load_analyze(path)
    elif name.endswith(NIFTI_SUFFIXES):
        loaded = _load_with_nibabel(path)
    else:
        raise ScanError(f"unsupported file type: {path.name} (expected .nii, .nii.gz, .hdr/.img or DICOM)")
    array = validated_array(loaded.array, path.name)
    for warning in loaded.warnings:
        log.warning("%s: %s", path.name, warning)
    return Volume(array, loaded.affine, {"affine": np.asarray(loaded.affine, dtype=float),
                                         "shape": tuple(array.shape), "geometry": loaded.geometry,
                                         "warnings": list(loaded.warnings)})
