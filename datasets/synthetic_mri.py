"""A synthetic MRI focus task with ground truth, built on the real MNI152 template (nilearn, offline).

Each subject is the template, cropped to t1-linear's box (the grid ``adafocus preprocess`` writes), seen
through a random pose (rotation, per-axis scale, shift), a smooth bias field and Rician-like noise (the
nuisances of ``adafocus.datasets.mri.cohort``). Two spheres (28 mm across by default) are then painted into
the scan, at places that vary between subjects:

- the *lesion* (hyperintense, brighter than white matter) carries the class as stripes one voxel wide
  (class 0: stripes along the volume's Z axis change along Y, i.e. vertical stripes in a sagittal frame;
  class 1: they change along Z, horizontal stripes). Its *shape*, a bright blob, is visible at glance
  resolution (2-4 voxels per pixel); its stripes average away there, so the class is readable only at native
  resolution;
- the *distractor* (hypointense, darker than grey matter) carries random stripes of the same kind, in the
  other hemisphere.

A weak, noisy class hint is visible at glance resolution: class 1's lesion is ``glance_hint`` (a fraction of
white matter) brighter than class 0's on average, give or take ``glance_hint_jitter`` per subject, so the
lesion's mean brightness alone tells the class in at most 4 of 5 subjects (0.5 + 0.5 * hint / (2 * jitter)
with the defaults). The hint is there because the policies learn *where* to look only from glance-level
evidence (the proxy and temporal losses read glance features); with none, nothing teaches them to look at the
lesion.

The lesion's centre is drawn anywhere in one hemisphere's brain tissue (MNI |x| in [8, 45] mm, y in
[-80, 45], z in [-10, 60], redrawn until it lands in tissue), then moved with the subject's pose. Intensities
are scaled so white matter sits at ``white_matter_display`` and clipped to [0, 1], as a preprocessed scan.
Ground truth per subject: the lesion's 3D box in voxels and the sagittal slices (X indices) that cut it.

Cost at 2 mm: the template is loaded and cropped once per task; a posed scan (one ``grid_sample``, bias,
noise) about 0.25 s, rendered once for a pool of ``num_scans``; a subject painted into a copy of one about
0.02 s (300 subjects in 19 s on a busy 2-core machine). All subjects share one grid, so an item is the
volume itself; ``LesionClipDataset`` cuts subjects into model clips
(``adafocus.datasets.mri.slices.volume_to_clip``) with per-frame truth.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from adafocus.datasets.mri.cohort import CohortConfig, random_pose, scanner_nuisance
from adafocus.datasets.mri.dataset import ClipSpec
from adafocus.datasets.mri.preprocess import CLINICADL_CROP_MM, CropToBox, mni_template
from adafocus.datasets.mri.slices import SliceInfo, volume_to_clip, voxel_box_to_frame
from adafocus.datasets.mri.volume import Volume, sitk_to_volume
from torch.utils.data import Dataset

TISSUE_FRACTION = 0.5  # a centre is in tissue where the template is above this fraction of white matter
MAX_DRAWS = 100


@dataclass(frozen=True)
class LesionTaskConfig:
    spacing_mm: float = 2.0
    crop_mm: tuple[float, float, float] | None = CLINICADL_CROP_MM  # None: the template's own field of view
    lesion_radius_mm: float = 14.0
    lesion_region_mm: tuple = ((8.0, 45.0), (-80.0, 45.0), (-10.0, 60.0))  # |x|, y, z ranges of the lesion centre
    lesion_contrast: float = 0.7      # lesion mean above white matter, as a fraction of it (classes averaged)
    distractor_contrast: float = -0.5  # distractor mean relative to white matter
    stripe_amplitude: float = 0.25    # +- around the sphere's mean, as a fraction of white matter
    glance_hint: float = 0.3          # class 1's lesion is this much brighter than class 0's (fraction of WM)
    glance_hint_jitter: float = 0.25  # ... give or take up to this much per subject (uniform)
    white_matter_display: float = 0.42  # white matter's value after scaling to [0, 1]
    nuisance: CohortConfig = field(default_factory=lambda: CohortConfig(elastic_mm=0.0))
    num_scans: int = 48               # posed, biased, noisy scans; each subject paints its lesion into one
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


def white_matter_level(array: np.ndarray) -> float:
    """A robust white-matter intensity: the 95th percentile of the non-background voxels (every 2nd voxel
    along each axis is plenty for a percentile, and 8x cheaper)."""
    sample = array[::2, ::2, ::2]
    return float(np.percentile(sample[sample > 0.1 * sample.max()], 95))


def affine_resample(array: np.ndarray, voxel_map: np.ndarray) -> np.ndarray:
    """``array`` [X, Y, Z] read at ``voxel_map @ (i, 1)`` for every voxel index i of its own grid: trilinear,
    zero outside (one torch ``grid_sample``; grid_sample orders the axes Z, Y, X and spans [-1, 1])."""
    size = np.asarray(array.shape, dtype=float)
    to_unit = np.diag(2.0 / (size - 1))  # voxel index -> [-1, 1] (align_corners=True)
    linear = to_unit @ voxel_map[:3, :3] @ np.linalg.inv(to_unit)
    offset = linear @ np.ones(3) + to_unit @ voxel_map[:3, 3] - 1.0
    reverse = np.eye(3)[::-1]
    theta = np.concatenate([reverse @ linear @ reverse, (reverse @ offset)[:, None]], axis=1)
    source = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    grid = F.affine_grid(torch.tensor(theta, dtype=torch.float32)[None], list(source.shape), align_corners=True)
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0].numpy()


@dataclass(frozen=True)
class PosedScan:
    """The template seen by the scanner: pose (4 x 4, template world -> scan world), the scan (no lesion yet)
    and its white-matter level."""
    pose: np.ndarray
    array: np.ndarray
    white_matter: float


class LesionFocusTask:
    """Subjects ``i = 0, 1, ...``; subject i is a pure function of (config.seed, i); labels alternate.

    Rendering a posed scan (resampling, bias field, noise) is most of a subject's cost, so the task renders
    ``num_scans`` of them (lazily, each a pure function of (seed, scan index)) and every subject paints its own
    lesion and distractor into a copy of one of them: pose, bias and noise vary over that pool, lesion and
    distractor positions per subject."""

    def __init__(self, config: LesionTaskConfig = LesionTaskConfig()):
        self.config = config
        template = sitk_to_volume(mni_template(config.spacing_mm))
        self.template = CropToBox(config.crop_mm)(template) if config.crop_mm else template
        self._tissue_level = TISSUE_FRACTION * white_matter_level(self.template.array)
        self._scans: dict[int, PosedScan] = {}

    def _world_to_voxel(self, world: np.ndarray) -> np.ndarray:
        return (np.linalg.inv(self.template.affine) @ np.append(world, 1.0))[:3]

    def _in_tissue(self, world: np.ndarray) -> bool:
        index = np.round(self._world_to_voxel(world)).astype(int)
        inside = np.all(index >= 0) and np.all(index < self.template.shape)
        return bool(inside and self.template.array[tuple(index)] > self._tissue_level)

    def _draw_centre(self, rng: np.random.Generator, side: float) -> np.ndarray:
        """A template-space (MNI mm) centre in one hemisphere's tissue."""
        (ax, bx), (ay, by), (az, bz) = self.config.lesion_region_mm
        for _ in range(MAX_DRAWS):
            centre = np.array([side * rng.uniform(ax, bx), rng.uniform(ay, by), rng.uniform(az, bz)])
            if self._in_tissue(centre):
                return centre
        raise RuntimeError("no lesion centre in tissue after many draws; is the template cropped away?")

    def posed_scan(self, j: int) -> PosedScan:
        """Scan j of the pool (rendered once)."""
        if j not in self._scans:
            c, affine = self.config, self.template.affine
            rng = np.random.default_rng((c.seed, 1, j))
            pose = random_pose(rng, c.nuisance)
            warped = affine_resample(self.template.array, np.linalg.inv(affine) @ np.linalg.inv(pose) @ affine)
            array = scanner_nuisance(Volume(warped, affine), rng, c.nuisance)
            self._scans[j] = PosedScan(pose, array, white_matter_level(array))
        return self._scans[j]

    def subject(self, i: int) -> LesionSubject:
        c = self.config
        rng = np.random.default_rng((c.seed, 0, i))
        label = i % 2
        scan = self.posed_scan(int(rng.integers(c.num_scans)))
        side = float(rng.choice([-1.0, 1.0]))
        lesion = self._world_to_voxel((scan.pose @ np.append(self._draw_centre(rng, side), 1.0))[:3])
        distractor = self._world_to_voxel((scan.pose @ np.append(self._draw_centre(rng, -side), 1.0))[:3])
        radius, level, array = c.lesion_radius_mm / c.spacing_mm, scan.white_matter, scan.array.copy()
        paint_sphere(array, distractor, radius, level * (1 + c.distractor_contrast), level * c.stripe_amplitude,
                     int(rng.integers(2)))
        contrast = c.lesion_contrast + (label - 0.5) * c.glance_hint + rng.uniform(-1, 1) * c.glance_hint_jitter
        paint_sphere(array, lesion, radius, level * (1 + contrast), level * c.stripe_amplitude, label)
        array = np.clip(array * (c.white_matter_display / level), 0.0, 1.0, out=array)
        box = np.stack([lesion - radius - 0.5, lesion + radius + 0.5])
        return LesionSubject(volume=Volume(array, self.template.affine), label=label, lesion_centre_voxel=lesion,
                             lesion_box_voxels=box, distractor_centre_voxel=distractor)


def clip_truth(subject: LesionSubject, info: SliceInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """Per frame of a sagittal clip: whether it cuts the lesion (bool [T]) and the lesion's box in frame
    pixels (float [T, 4], x0, y0, x1, y1; the same box on every frame, NaN-free)."""
    affected = torch.tensor(np.isin(info.slice_indices, subject.affected_slices))
    box = voxel_box_to_frame(subject.lesion_box_voxels, info) * np.tile(info.frame_size[::-1], 2)
    return affected, torch.tensor(box, dtype=torch.float32).expand(len(info.slice_indices), 4).clone()


class LesionClipDataset(Dataset):
    """Subjects ``first .. first + count - 1`` of a task as model clips with ground truth, built once and kept
    (float16) in memory. Items are dicts of tensors, batched by ``adafocus.datasets.synthetic.collate``:
    clip [T, C, S, S], label, object_frames bool [T] (frames that cut the lesion), object_boxes [T, 4] (the
    lesion's box in frame pixels), lesion_centre [3] (voxels), slice_indices [T]."""

    def __init__(self, task: LesionFocusTask, first: int, count: int, spec: ClipSpec, *, progress: bool = False):
        from tqdm.auto import tqdm

        if spec.axis != "sagittal":
            raise ValueError(f"the lesion task's truth is sagittal slices; got axis={spec.axis!r}")
        self.spec = spec
        self.items = [self._item(task.subject(i)) for i in tqdm(range(first, first + count), disable=not progress,
                                                                   desc="lesion subjects")]

    def _item(self, subject: LesionSubject) -> dict:
        s = self.spec
        clip, info = volume_to_clip(subject.volume.array, subject.volume.spacing, axis=s.axis,
                                    num_slices=s.num_slices, discard_border=s.discard_border, context=s.context,
                                    size=s.size)
        affected, boxes = clip_truth(subject, info)
        return {"clip": clip.half(), "label": subject.label, "object_frames": affected, "object_boxes": boxes,
                "lesion_centre": torch.tensor(subject.lesion_centre_voxel, dtype=torch.float32),
                "slice_indices": torch.tensor(info.slice_indices)}

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [item["label"] for item in self.items]

    def __getitem__(self, i: int) -> dict:
        return {**self.items[i], "clip": self.items[i]["clip"].float()}

    def truth(self) -> dict[str, torch.Tensor]:
        """Every item's truth stacked (no clips): label [N], object_frames [N, T], object_boxes [N, T, 4],
        lesion_centre [N, 3], slice_indices [N, T]."""
        return {key: torch.stack([torch.as_tensor(item[key]) for item in self.items])
                for key in self.items[0] if key != "clip"}


def lesion_splits(spec: ClipSpec, sizes: Sequence[tuple[str, int]], config: LesionTaskConfig = LesionTaskConfig(),
                  *, progress: bool = False) -> dict[str, LesionClipDataset]:
    """Independent splits, e.g. [("train", 400), ("test", 200)]: split k is subjects 0.. of the task with seed
    ``config.seed + k``, so no two splits share a subject or a posed scan."""
    return {name: LesionClipDataset(LesionFocusTask(dataclasses.replace(config, seed=config.seed + k)), 0, count,
                                    spec, progress=progress)
            for k, (name, count) in enumerate(sizes)}
