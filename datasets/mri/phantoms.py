"""Test scans with known geometry, written the way each archive writes them: good ones and deliberately broken
ones, for the QC thresholds (qc_measure.py) and the tests.

Every scan is the MNI template (a skull-stripped head) placed in a scanner field of view by a rigid `pose`,
optionally with a bright capsule on the subject's LEFT temple (`LEFT_TEMPLE_MM`, outside the brain, so it
tells left from right after preprocessing although the template is symmetric), a smooth bias field and
noise. World coordinates are RAS mm with 0 at the field-of-view centre.

Good layouts (`GOOD_LAYOUTS`): OASIS-1 RAW (A, S, L; 256 x 256 x 128 at 1 x 1 x 1.25 mm) and SUBJ_111
(256 x 256 x 160 at 1 mm), both sagittal orient 2 big-endian Analyze (analyze.py); a NIfTI with an
ordinary RAS affine. `scale` divides the voxel counts and multiplies the voxel sizes by the same factor:
the field of view and the axis order stay those of the archive.

Broken kinds (`BROKEN_KINDS`), each of which registration QC must fail:
- "wrong-orientation": OASIS-1 voxels (A, S, L) under a header that says orient 0 (transverse, L A S);
- "on-its-side": a NIfTI whose header is ordinary (RAS) but whose head lies on its side (turned 90 degrees
  about the anterior-posterior axis);
- "not-a-brain": a NIfTI of a smooth textured cylinder (a phantom, not a head);
- "half-head": a NIfTI whose field of view stops at the middle of the head (the top half is cut off).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from adafocus.datasets.mri.analyze import write_analyze, write_oasis_analyze
from adafocus.datasets.mri.template import mni_template
from adafocus.datasets.mri.volume import Volume
from scipy import ndimage

LEFT_TEMPLE_MM = (-76.0, 5.0, -5.0)    # capsule centre, MNI RAS mm: beside the left temporal lobe
CAPSULE_RADII_MM = (4.0, 12.0, 6.0)
OASIS_RAW = ((128, 256, 256), (1.25, 1.0, 1.0))      # RAS shape and voxel size of an OASIS RAW mpr-N scan
OASIS_SUBJ111 = ((160, 256, 256), (1.0, 1.0, 1.0))   # RAS shape and voxel size of SUBJ_111
NIFTI_GRID = ((176, 240, 256), (1.0, 1.0, 1.0))      # a typical sagittal MPRAGE field of view
GOOD_LAYOUTS = ("oasis-raw", "oasis-subj111", "nifti")
BROKEN_KINDS = ("wrong-orientation", "on-its-side", "not-a-brain", "half-head")


@dataclass(frozen=True)
class Nuisance:
    """Scanner-side variation: rigid pose (rotation about a random axis, shift), bias field, noise."""

    rotation_deg: float = 6.0
    shift_mm: float = 8.0
    bias_strength: float = 0.2
    noise: float = 0.02


def rigid_pose(rng: np.random.Generator, rotation_deg: float, shift_mm: float) -> np.ndarray:
    """4x4 RAS world transform: rotation by `rotation_deg` about a random axis, shift of norm `shift_mm`."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    angle = np.deg2rad(rotation_deg)
    pose = np.eye(4)
    pose[:3, :3] = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
    direction = rng.normal(size=3)
    pose[:3, 3] = shift_mm * direction / np.linalg.norm(direction)
    return pose


def grid_affine(shape: tuple[int, int, int], voxel_mm: tuple[float, float, float]) -> np.ndarray:
    """RAS affine of an axis-aligned grid with world 0 at its centre (voxel shape / 2)."""
    affine = np.diag([*voxel_mm, 1.0])
    affine[:3, 3] = -np.asarray(voxel_mm) * np.asarray(shape) / 2.0
    return affine


def subject_in_scanner(shape: tuple[int, int, int], voxel_mm: tuple[float, float, float], *,
                       pose: np.ndarray | None = None, marker: bool = True, rng: np.random.Generator | None = None,
                       nuisance: Nuisance = Nuisance(), template_spacing_mm: float = 2.0) -> Volume:
    """The template head (plus the left-temple capsule) moved by `pose` (RAS, subject -> scanner world) and
    sampled on an axis-aligned RAS grid `shape` x `voxel_mm`, with bias field and noise; int16-range values."""
    rng = rng or np.random.default_rng(0)
    pose = np.eye(4) if pose is None else pose
    template = mni_template(template_spacing_mm)
    head = sitk.GetArrayFromImage(template).transpose(2, 1, 0).astype(np.float32)
    head_affine = np.eye(4)
    head_affine[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(template.GetDirection()).reshape(3, 3) \
        @ np.diag(template.GetSpacing())
    head_affine[:3, 3] = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(template.GetOrigin())
    if marker:
        index = np.stack(np.meshgrid(*[np.arange(n) for n in head.shape], indexing="ij"), axis=-1)
        world = index @ head_affine[:3, :3].T + head_affine[:3, 3]
        r = np.sqrt((((world - np.asarray(LEFT_TEMPLE_MM)) / np.asarray(CAPSULE_RADII_MM)) ** 2).sum(-1))
        head = np.maximum(head, np.where(r <= 1.0, 1.5 * float(head.max()), 0.0).astype(np.float32))
    target = Volume(np.zeros(shape, np.float32), grid_affine(shape, voxel_mm))
    # scanner voxel -> scanner world -> subject world (pose^-1) -> template voxel
    to_head = np.linalg.inv(head_affine) @ np.linalg.inv(pose) @ target.affine
    index = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij"))
    coords = np.einsum("ij,j...->i...", to_head[:3, :3].astype(np.float32), index)
    coords += to_head[:3, 3, None, None, None].astype(np.float32)
    sampled = ndimage.map_coordinates(head, coords, order=1, mode="constant", cval=0.0)
    return Volume(_scanner(sampled, rng, nuisance), target.affine)


def _scanner(array: np.ndarray, rng: np.random.Generator, nuisance: Nuisance) -> np.ndarray:
    grids = np.ix_(*[np.linspace(-1, 1, n) for n in array.shape])
    weights = rng.normal(size=3)
    log_field = sum(w * g for w, g in zip(weights / np.abs(weights).sum(), grids)) * nuisance.bias_strength
    biased = array * np.exp(log_field)
    sigma = nuisance.noise * float(np.percentile(biased, 99))
    noisy = np.hypot(biased + rng.normal(0, sigma, array.shape), rng.normal(0, sigma, array.shape))
    return (noisy / max(float(noisy.max()), 1e-6) * 1000.0).astype(np.float32)


def scaled_grid(layout: tuple[tuple[int, int, int], tuple[float, float, float]], scale: int
                ) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The same field of view with `scale` times fewer voxels per axis, each `scale` times larger."""
    shape, voxel = layout
    return tuple(n // scale for n in shape), tuple(v * scale for v in voxel)


def write_nifti(path: Path, volume: Volume) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(np.rint(volume.array).astype(np.int16), volume.affine)
    image.set_qform(volume.affine, code="scanner")
    image.set_sform(volume.affine, code="scanner")
    nib.save(image, str(path))
    return path


GOOD_FILES = {  # layout -> (grid, file name); .hdr files are written as OASIS-1 ships them
    "oasis-raw": (OASIS_RAW, "OAS1_0001_MR1_mpr-1_anon.hdr"),
    "oasis-subj111": (OASIS_SUBJ111, "OAS1_0001_MR1_mpr_n4_anon_sbj_111.hdr"),
    "nifti": (NIFTI_GRID, "sub-01_T1w.nii.gz"),
}


def write_good_scan(folder: Path, layout: str, rng: np.random.Generator, *, scale: int = 4,
                    nuisance: Nuisance = Nuisance()) -> Path:
    """A good scan of `layout` (GOOD_LAYOUTS) with a random pose and the left-temple marker; returns its path."""
    if layout not in GOOD_FILES:
        raise ValueError(f"unknown layout {layout!r}; choose one of {GOOD_LAYOUTS}")
    pose = rigid_pose(rng, nuisance.rotation_deg, nuisance.shift_mm)
    grid, name = GOOD_FILES[layout]
    shape, voxel = scaled_grid(grid, scale)
    scan = subject_in_scanner(shape, voxel, pose=pose, rng=rng, nuisance=nuisance)
    if name.endswith(".hdr"):
        return write_oasis_analyze(folder / name, scan.array, voxel)
    return write_nifti(folder / name, scan)


def textured_cylinder(shape: tuple[int, int, int], voxel_mm: tuple[float, float, float],
                      rng: np.random.Generator) -> np.ndarray:
    """A water-phantom-like cylinder along z with a smooth random texture: not a head."""
    grids = np.meshgrid(*[(np.arange(n) - n / 2) * v for n, v in zip(shape, voxel_mm)], indexing="ij")
    inside = grids[0] ** 2 + grids[1] ** 2 < 70.0 ** 2
    inside &= np.abs(grids[2]) < 80.0
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 6.0 / min(voxel_mm))
    texture = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-6)
    return (inside * (300.0 + 700.0 * texture)).astype(np.float32)


def write_broken_scan(folder: Path, kind: str, rng: np.random.Generator, *, scale: int = 4,
                      nuisance: Nuisance = Nuisance()) -> Path:
    """A scan that registration QC must fail (`BROKEN_KINDS`, module docstring); returns its path."""
    pose = rigid_pose(rng, nuisance.rotation_deg, nuisance.shift_mm)
    if kind == "wrong-orientation":
        shape, voxel = scaled_grid(OASIS_SUBJ111, scale)
        scan = subject_in_scanner(shape, voxel, pose=pose, rng=rng, nuisance=nuisance)
        sx, sy, sz = voxel
        asl = np.ascontiguousarray(scan.array.transpose(1, 2, 0)[:, :, ::-1])  # OASIS voxel order
        return write_analyze(folder / "OAS1_0002_MR1_mpr-1_anon.hdr", asl, (sy, sz, sx), orient=0)
    shape, voxel = scaled_grid(NIFTI_GRID, scale)
    if kind == "on-its-side":
        side = np.eye(4)
        side[:3, :3] = [[0, 0, 1], [0, 1, 0], [-1, 0, 0]]  # 90 degrees about the anterior-posterior axis
        cube = (max(shape),) * 3  # a field of view that holds the head either way up
        scan = subject_in_scanner(cube, voxel, pose=side @ pose, rng=rng, nuisance=nuisance)
        return write_nifti(folder / "sub-02_T1w.nii.gz", scan)
    if kind == "not-a-brain":
        phantom = Volume(textured_cylinder(shape, voxel, rng), grid_affine(shape, voxel))
        return write_nifti(folder / "sub-03_T1w.nii.gz",
                           Volume(_scanner(phantom.array, rng, nuisance), phantom.affine))
    if kind == "half-head":
        scan = subject_in_scanner(shape, voxel, pose=pose, rng=rng, nuisance=nuisance)
        top = int(np.searchsorted(np.arange(shape[2]) * voxel[2] + scan.affine[2, 3], 0.0))
        return write_nifti(folder / "sub-04_T1w.nii.gz", Volume(np.ascontiguousarray(scan.array[:, :, :top]),
                                                                scan.affine))
    raise ValueError(f"unknown broken kind {kind!r}; choose one of {BROKEN_KINDS}")
