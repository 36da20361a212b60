"""Builders for tiny MRI fixture trees (NIfTI, Analyze, DICOM, metadata CSVs) used by the test_mri_* files.

Everything is written under a pytest tmp_path; nothing binary is committed.
"""

from __future__ import annotations

import csv
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from adafocus.datasets.mri.analyze import write_oasis_analyze


@contextmanager
def one_itk_thread():
    """ITK on one thread inside the block, as a Ray preprocessing task runs it: ITK's sums depend on its thread
    count (1 vs 2 threads: up to 1.4e-4 in a voxel), so exact comparisons hold the count fixed."""
    threads = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)


LONI_COLUMNS = [
    "Image Data ID",
    "Subject",
    "Group",
    "Sex",
    "Age",
    "Visit",
    "Modality",
    "Description",
    "Type",
    "Acq Date",
    "Format",
    "Downloaded",
]
OASIS_COLUMNS = ["ID", "M/F", "Hand", "Age", "Educ", "SES", "MMSE", "CDR", "eTIV", "nWBV", "ASF", "Delay"]
PATIENT_NAME = "Doe^Jane"


def blob_volume(shape: tuple[int, int, int] = (12, 14, 10), seed: int = 0) -> np.ndarray:
    """A small positive int16 volume: a bright ellipsoid on a noisy background."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    inside = sum(g**2 for g in grid) < 0.6
    return (100 * inside + rng.integers(1, 20, size=shape)).astype(np.int16)


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def write_analyze(
    hdr_path: Path, array: np.ndarray, voxel_mm: tuple[float, float, float] = (1, 1, 1)
) -> Path:
    """A plain Analyze 7.5 .hdr/.img pair as nibabel writes one (little-endian here, orient 0: L, A, S)."""
    hdr_path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.AnalyzeImage(array.astype(np.int16), np.diag([*voxel_mm, 1.0]))
    nib.save(image, str(hdr_path))
    return hdr_path


def write_oasis(hdr_path: Path, ras_array: np.ndarray, ras_voxel_mm: tuple[float, float, float] = (1, 1, 1)) -> Path:
    """An OASIS-1 Analyze pair as OASIS-1 writes it: sagittal, orient 2, big-endian int16, voxel order A, S, L,
    no .mat (datasets/mri/analyze.py). `ras_array` is indexed [x, y, z] (RAS), `ras_voxel_mm` its voxel size."""
    return write_oasis_analyze(hdr_path, ras_array, ras_voxel_mm)


def write_dicom_series(
    folder: Path,
    array_xyz: np.ndarray,
    spacing=(1.0, 1.0, 1.0),
    origin_lps=(0.0, 0.0, 0.0),
    file_stem: str = "slice",
) -> Path:
    """One MR DICOM series (a file per axial slice, identity LPS direction) holding `array_xyz` [X, Y, Z]."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_xyz.transpose(2, 1, 0)).astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin(origin_lps)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for z in range(image.GetDepth()):
        plane = image[:, :, z]
        for tag, value in (
            ("0008|0060", "MR"),
            ("0020|000e", series_uid),
            ("0020|000d", series_uid + ".1"),
            ("0020|0037", "1\\0\\0\\0\\1\\0"),
            ("0010|0010", PATIENT_NAME),
            ("0010|0030", "19400101"),
            ("0008|103e", "MPRAGE"),
        ):
            plane.SetMetaData(tag, value)
        position = image.TransformIndexToPhysicalPoint((0, 0, z))
        plane.SetMetaData("0020|0032", "\\".join(f"{p:.4f}" for p in position))
        plane.SetMetaData("0020|0013", str(z + 1))
        writer.SetFileName(str(folder / f"{file_stem}_{z:03d}.dcm"))
        writer.Execute(plane)
    return folder


def write_csv(path: Path, columns: list[str], rows: list[dict[str, object]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c, "") for c in columns})
    return path


def loni_image_folder(root: Path, subject: str, description: str, date: str, image_id: str) -> Path:
    """`<root>/<subject>/<description>/<date>_12_00_00.0/<image id>/` as LONI IDA downloads are laid out."""
    return root / subject / description / f"{date}_12_00_00.0" / image_id


def loni_record(
    image_id: str, subject: str, group: str, visit: str, acq_date: str, sex: str = "F", age: object = 70
) -> dict[str, object]:
    return {
        "Image Data ID": image_id,
        "Subject": subject,
        "Group": group,
        "Sex": sex,
        "Age": age,
        "Visit": visit,
        "Modality": "MRI",
        "Description": "MPRAGE",
        "Type": "Original",
        "Acq Date": acq_date,
        "Format": "NiFTI",
        "Downloaded": "1/01/2024",
    }
