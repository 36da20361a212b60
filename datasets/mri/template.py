"""The MNI152 template and its brain mask, as nilearn ships them (package data; nothing is downloaded).

nilearn's `datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz` is the ICBM 2009a symmetric T1
template, skull-stripped, 1 mm, 197 x 233 x 189. nilearn's own brain mask
(`nilearn.datasets.load_mni152_brain_mask`, threshold=0.2) is that template scaled to max 1 and thresholded
at 0.2; `mni_brain_mask` computes the same mask on any of our template grids without importing nilearn.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import SimpleITK as sitk

MNI_TEMPLATE_FILE = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
TEMPLATE_SPACE = "MNI152NLin2009aSym"
BRAIN_MASK_THRESHOLD = 0.2  # nilearn.datasets.load_mni152_brain_mask default


def mni_template_path() -> Path:
    """Path of the MNI152 2009a T1 template inside the installed nilearn package (nilearn is not imported)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nilearn is not installed; it ships the MNI152 template this pipeline needs")
    path = Path(spec.origin).parent / "datasets" / "data" / MNI_TEMPLATE_FILE
    if not path.exists():
        raise FileNotFoundError(f"MNI template not found in nilearn's package data: {path}")
    return path


@functools.lru_cache(maxsize=4)
def mni_template(spacing_mm: float) -> sitk.Image:
    """The MNI T1 template (float32) on its own field of view at isotropic `spacing_mm`.

    Coarser grids are Gaussian-smoothed first (sigma = spacing / 2) so downsampling does not alias.
    """
    image = sitk.Cast(sitk.ReadImage(str(mni_template_path())), sitk.sitkFloat32)
    if spacing_mm == image.GetSpacing()[0]:
        return image
    if spacing_mm > image.GetSpacing()[0]:
        image = sitk.SmoothingRecursiveGaussian(image, spacing_mm / 2)
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    size = [int(n) for n in np.ceil(extent / spacing_mm)]
    return sitk.Resample(
        image,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        image.GetOrigin(),
        [spacing_mm] * 3,
        image.GetDirection(),
        0.0,
        sitk.sitkFloat32,
    )


@functools.lru_cache(maxsize=4)
def template_array(spacing_mm: float) -> np.ndarray:
    """`mni_template(spacing_mm)` as a float32 array indexed [X, Y, Z] (RAS, the grid `RegisterToMNI` writes)."""
    array = sitk.GetArrayFromImage(mni_template(spacing_mm)).transpose(2, 1, 0)
    array = np.ascontiguousarray(array, dtype=np.float32)
    array.setflags(write=False)
    return array


@functools.lru_cache(maxsize=4)
def mni_brain_mask(spacing_mm: float) -> np.ndarray:
    """nilearn's MNI152 brain mask (template / max > 0.2) on the `mni_template(spacing_mm)` grid, bool [X, Y, Z]."""
    template = template_array(spacing_mm)
    mask = template > BRAIN_MASK_THRESHOLD * float(template.max())
    mask.setflags(write=False)
    return mask
