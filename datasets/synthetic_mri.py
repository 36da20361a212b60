"""A synthetic MRI focus task with ground truth, built on the real MNI152 template (nilearn, offline).

Each subject is the template seen through a random pose (rotation, per-axis scale, shift), a smooth bias
field and Rician-like noise (the nuisances of ``adafocus.datasets.mri.cohort``). Two small spheres are then
painted into the scan, at places that vary between subjects:

- the *lesion* (hyperintense, brighter than white matter) carries the class as stripes one voxel wide
  (class 0: stripes along the volume's Z axis change along Y, i.e. vertical stripes in a sagittal frame;
  class 1: they change along Z, horizontal stripes). Its *shape*, a bright blob, is visible at glance
  resolution (2-4 voxels per pixel); its stripes average away there, so the class is readable only at native
  resolution;
- the *distractor* (hypointense, darker than grey matter) carries random stripes of the same kind.

The lesion's centre is drawn inside one hemisphere's deep white matter (MNI x in +-[18, 34] mm, y in
[-40, 10], z in [5, 30]), moved with the subject's pose. Ground truth per subject: the lesion's 3D box in
voxels and the sagittal slices (X indices) that cut it.

All subjects share one grid (the template's at ``spacing_mm``), so an item is the volume itself; cut it into
a clip with ``adafocus.datasets.mri.slices.volume_to_clip``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from adafocus.datasets.mri.cohort import CohortConfig, random_pose, simulate_scan
from adafocus.datasets.mri.preprocess import mni_template
from adafocus.datasets.mri.volume import Volume, sitk_to_volume

LESION_REGION_MM = ((18.0, 34.0), (-40.0, 10.0), (5.0, 30.0))  # |x|, y, z ranges of the lesion centre


@dataclass(frozen=True)
class LesionTaskConfig:
    spacing_mm: float = 1.0
    lesion_radius_mm: float = 7.0
    lesion_contrast: float = 0.45     # lesion mean above white matter, as a fraction of it
    distractor_contrast: float = -0.5  # distractor mean relative to white matter
    stripe_amplitude: float = 0.3     # +- around the sphere's mean, as a fraction of white matter
    nuisance: CohortConfig = field(default_factory=lambda: CohortConfig(elastic_mm=0.0))
    seed: int = 0


@dataclass(frozen=True)
class LesionSubject:
    volume: Volume
    label: int
    lesion_centre_voxel: np.ndarray    # float [3] (X, Y, Z)
    lesion_box_voxels: np.ndarray      # float [2, 3] lower and upper voxel-edge corners
    distractor_centre_voxel: np.ndarray

    @property
    def affected_slices(self) -> np.ndarray:
        """Sagittal slice indices (X) that cut the lesion."""
        low, high = self.lesion_box_voxels[:, 0]
        return np.arange(int(np.ceil(low - 0.5)), int(np.floor(high - 0.5)) + 1)


def stripes(label: int, index: np.ndarray) -> np.ndarray:
    """+-1 pattern over voxel indices [..., 3]: changes along Y (label 0) or Z (label 1) every voxel."""
    return np.where(index[..., 1 + label] % 2 == 0, 1.0, -1.0)


def paint_sphere(array: np.ndarray, centre: np.ndarray, radius_vox: float, mean: float, amplitude: float,
                 label: int) -> np.ndarray:
    """Write a striped sphere (voxel centre, radius in voxels) into ``array`` in place; returns its mask."""
    low = np.maximum(np.floor(centre - radius_vox).astype(int), 0)
    high = np.minimum(np.ceil(centre + radius_vox).astype(int) + 1, array.shape)
    index = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)], indexing="ij"), axis=-1)
    inside = ((index - centre) ** 2).sum(-1) <= radius_vox ** 2
    block = array[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
    block[inside] = (mean + amplitude * stripes(label, index))[inside]
    mask = np.zeros(array.shape, dtype=bool)
    mask[low[0]:high[0], low[1]:high[1], low[2]:high[2]] = inside
    return mask


def white_matter_level(volume: Volume) -> float:
    """A robust white-matter intensity: the 95th percentile of the non-background voxels."""
    tissue = volume.array[volume.array > 0.1 * volume.array.max()]
    return float(np.percentile(tissue, 95))


class LesionFocusTask:
    """Subjects ``i = 0, 1, ...``; subject i is a pure function of (config.seed, i); labels alternate."""

    def __init__(self, config: LesionTaskConfig = LesionTaskConfig()):
        self.config = config
        self.template = sitk_to_volume(mni_template(config.spacing_mm))

    def _world_to_voxel(self, world: np.ndarray) -> np.ndarray:
        return (np.linalg.inv(self.template.affine) @ np.append(world, 1.0))[:3]

    def _draw_centre(self, rng: np.random.Generator, side: float) -> np.ndarray:
        (ax, bx), (ay, by), (az, bz) = LESION_REGION_MM
        return np.array([side * rng.uniform(ax, bx), rng.uniform(ay, by), rng.uniform(az, bz)])

    def subject(self, i: int) -> LesionSubject:
        c = self.config
        rng = np.random.default_rng((c.seed, i))
        label = i % 2
        pose = random_pose(rng, c.nuisance)
        scan = simulate_scan(self.template, np.zeros((3, *self.template.shape), np.float32), pose, rng, c.nuisance)
        side = float(rng.choice([-1.0, 1.0]))
        lesion = self._world_to_voxel((pose @ np.append(self._draw_centre(rng, side), 1.0))[:3])
        distractor = self._world_to_voxel((pose @ np.append(self._draw_centre(rng, -side), 1.0))[:3])
        radius = c.lesion_radius_mm / c.spacing_mm
        level = white_matter_level(scan)
        array = scan.array.copy()
        paint_sphere(array, distractor, radius, level * (1 + c.distractor_contrast), level * c.stripe_amplitude,
                     int(rng.integers(2)))
        paint_sphere(array, lesion, radius, level * (1 + c.lesion_contrast), level * c.stripe_amplitude, label)
        box = np.stack([lesion - radius - 0.5, lesion + radius + 0.5])
        return LesionSubject(volume=Volume(array, scan.affine), label=label, lesion_centre_voxel=lesion,
                             lesion_box_voxels=box, distractor_centre_voxel=distractor)
