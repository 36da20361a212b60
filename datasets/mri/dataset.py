"""Preprocessed scans as clips: a torch Dataset over manifest rows, one clip of slices per scan.

Each item is a dict:
    clip            float32 [T, C, S, S] in [0, 1] (T = num_slices, C = 2 * context + 1, S = size)
    label           int
    participant_id  str
    session_id      str
    slice_indices   int64 [T], voxel index of each frame along the slice axis
    index           int, position in the dataset (look up `dataset.slice_info(index)` for the geometry)

Clips are cut once per scan and cached in memory (a 2.5D clip of 16 slices at 64 x 64 is 0.8 MB), so
the NIfTI is decoded once, not every epoch. Training augmentation (ClipAugmentation, TorchIO) works on the
cached clip, afresh at every draw or drawn from a fixed number of augmented copies (AugmentedCopies).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property

import nibabel as nib
import numpy as np
import torch
from adafocus.core.config import Preset
from adafocus.datasets.mri.manifest import STATUS_OK, ManifestRow
from adafocus.datasets.mri.slices import PLANES, SliceInfo, volume_to_clip
from torch import Tensor
from torch.utils.data import Dataset


@dataclass(frozen=True)
class ClipSpec:
    """How a volume becomes a clip (see slices.volume_to_clip). context=1 is 2.5D (neighbours as RGB)."""

    axis: str = "sagittal"
    num_slices: int = 16
    discard_border: float = 0.15
    context: int = 1
    size: int = 64

    def __post_init__(self) -> None:
        if self.axis not in PLANES:
            raise ValueError(f"axis must be one of {sorted(PLANES)}, got {self.axis!r}")
        if self.num_slices < 1 or self.size < 1 or self.context < 0:
            raise ValueError(f"need num_slices >= 1, size >= 1, context >= 0; got {self}")

    @classmethod
    def for_preset(cls, preset: Preset, *, axis: str = "sagittal", discard_border: float = 0.15,
                   context: int = 1) -> ClipSpec:
        """Clips sized for a model: num_slices = the model's candidate frames, size = its frame size."""
        return cls(axis=axis, num_slices=preset.model.num_candidates, discard_border=discard_border,
                   context=context, size=preset.model.frame_size)

    def to_dict(self) -> dict:
        return asdict(self)


def clip_spec_of(card) -> ClipSpec:
    """The ClipSpec a model was trained with, from its model card's input spec (unknown keys ignored).
    Every consumer (training, `score`, the review app) slices a run's scans through this, never a preset's
    defaults, so a model trained with `--axis coronal --context 2` is fed coronal 5-channel clips."""
    fields = ClipSpec.__dataclass_fields__
    return ClipSpec(**{k: v for k, v in card.input.items() if k in fields})


def is_usable(row: ManifestRow) -> bool:
    """A row that can be fed to a model: labelled, preprocessed without error, file present."""
    return (not row.excluded and row.status == STATUS_OK and row.preprocessed_path is not None
            and row.preprocessed_path.exists())


def load_preprocessed(path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A preprocessed NIfTI -> (float32 array [X, Y, Z] in RAS, voxel spacing in mm)."""
    image = nib.load(str(path))
    if nib.aff2axcodes(image.affine) != ("R", "A", "S"):
        raise ValueError(f"{path} is not RAS-oriented ({''.join(nib.aff2axcodes(image.affine))}); "
                         f"use the files written by `adafocus preprocess`")
    return np.asarray(image.dataobj, dtype=np.float32), tuple(float(z) for z in image.header.get_zooms()[:3])


@dataclass(frozen=True)
class ClipAugmentation:
    """Training augmentation of a 2.5D clip with TorchIO: a small RandomAffine, RandomBiasField, RandomGamma
    and RandomNoise, in that order, then clamped to [0, 1].

    The clip [T, C, H, W] goes through TorchIO as one 3D image with the context slices as channels and
    (rows, columns, candidate slices) as its spatial axes, so every slice of a scan gets the same in-plane
    pose and the bias field varies smoothly across slices, as a scanner's does. The affine only rotates,
    scales and shifts within the slice plane: the candidate slices stay the same anatomy.

    No flips. A flip within a sagittal slice (face to the back, or upside down) is no anatomy at all. A
    left-right mirror (reversing the slice order) is plausible anatomy, but it moves a finding to the other
    hemisphere, and the slices the policy learns to pick are reported to the clinician by side; the
    demo's atrophy is bilateral, so the mirror would only repeat what the other hemisphere already shows."""

    degrees: float = 5.0           # in-plane rotation, +-
    scale: float = 0.05            # in-plane scale in [1 - scale, 1 + scale]
    translation_px: float = 3.0    # in-plane shift, +- frame pixels
    bias_coefficients: float = 0.3  # RandomBiasField (log-field polynomial of order 3)
    log_gamma: float = 0.2         # RandomGamma: gamma = exp(U(-log_gamma, log_gamma))
    noise_std: float = 0.02        # RandomNoise: SD drawn from U(0, noise_std), intensities in [0, 1]

    @cached_property
    def transform(self):
        import torchio as tio

        s, d, t = self.scale, self.degrees, self.translation_px
        # copy=False: __call__ hands TorchIO a fresh tensor, so the cached clip is never modified
        return tio.Compose([
            tio.RandomAffine(scales=(1 - s, 1 + s, 1 - s, 1 + s, 1, 1), degrees=(0, 0, 0, 0, -d, d),
                             translation=(-t, t, -t, t, 0, 0), default_pad_value=0.0, copy=False),
            tio.RandomBiasField(coefficients=self.bias_coefficients, order=3, copy=False),
            tio.RandomGamma(log_gamma=(-self.log_gamma, self.log_gamma), copy=False),
            tio.RandomNoise(std=(0.0, self.noise_std), copy=False),
        ], copy=False)

    def __call__(self, clip: Tensor) -> Tensor:
        """clip [T, C, H, W] in [0, 1] -> an augmented clip of the same shape, in [0, 1]."""
        image = clip.permute(1, 2, 3, 0).contiguous()  # [C, H, W, T]: TorchIO's [C, X, Y, Z]
        augmented = self.transform(image.float())
        return augmented.permute(3, 0, 1, 2).clamp(0, 1).contiguous()


class AugmentedCopies:
    """Augmentation made once: `copies` augmented versions of each scan's clip, each made the first time it
    is drawn and then kept (float16: 0.4 MB per copy of a 16 x 3 x 64 x 64 clip). A draw picks one copy with
    torch's RNG, so seeded training stays reproducible.

    Why: on the `cpu-mri` recipe fresh TorchIO augmentation was about half of each training step's CPU
    (docs/notes/mri-demo-recipe.md); 40 epochs drawing from 8 copies augment each scan 8 times instead of 40.
    Copies are keyed by preprocessed file and clip spec, so one object handed to every fold of a
    cross-validation augments each scan once, not once per fold. In DataLoader worker processes copies made by a worker stay there."""

    def __init__(self, copies: int, augmentation: Callable[[Tensor], Tensor] | None = None):
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        self.copies = copies
        self.augmentation = augmentation or ClipAugmentation()
        self._made: dict[tuple, Tensor] = {}

    @property
    def made(self) -> int:
        """How many copies have been made so far."""
        return len(self._made)

    def draw(self, key: tuple, clip: Tensor) -> Tensor:
        """One of the copies of `clip` (float32, same shape), made now if this is its first draw."""
        which = (*key, int(torch.randint(self.copies, ()).item()))
        if which not in self._made:
            self._made[which] = self.augmentation(clip).to(torch.float16)
        return self._made[which].float()


def training_augmentation(copies: int) -> bool | AugmentedCopies:
    """What a training MRISliceDataset's `augment` gets for a preset's `train.augmentation_copies`."""
    return AugmentedCopies(copies) if copies > 0 else True


class MRISliceDataset(Dataset):
    """Clips of preprocessed scans (rows of a scan manifest; every row must be usable, see `is_usable`).

    `augment`: False, True (ClipAugmentation's defaults afresh at every draw), a ClipAugmentation, or an
    AugmentedCopies bank to draw from."""

    def __init__(self, rows: Sequence[ManifestRow], spec: ClipSpec, *,
                 augment: bool | ClipAugmentation | AugmentedCopies = False):
        bad = [f"{r.participant_id} {r.session_id} ({r.status})" for r in rows if not is_usable(r)]
        if bad:
            raise ValueError(f"{len(bad)} manifest row(s) are not preprocessed scans: {', '.join(bad[:3])}; "
                             f"keep rows with status ok (datasets.mri.dataset.is_usable)")
        self.rows = list(rows)
        self.spec = spec
        self.augment = ClipAugmentation() if augment is True else None if augment is False else augment
        self._cache: dict[int, tuple[Tensor, SliceInfo]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> list[int]:
        """Each scan's label (for class-balanced sampling, core.train.balanced_sampler)."""
        return [r.label for r in self.rows]

    def clip_and_info(self, index: int) -> tuple[Tensor, SliceInfo]:
        """The un-augmented clip [T, C, S, S] of scan `index` and where its frames came from (cached)."""
        if index not in self._cache:
            volume, spacing = load_preprocessed(self.rows[index].preprocessed_path)
            s = self.spec
            self._cache[index] = volume_to_clip(volume, spacing, axis=s.axis, num_slices=s.num_slices,
                                                discard_border=s.discard_border, context=s.context, size=s.size)
        return self._cache[index]

    def slice_info(self, index: int) -> SliceInfo:
        return self.clip_and_info(index)[1]

    def __getitem__(self, index: int) -> dict:
        clip, info = self.clip_and_info(index)
        row = self.rows[index]
        return {
            "clip": self._augmented(index, clip),
            "label": row.label,
            "participant_id": row.participant_id,
            "session_id": row.session_id,
            "slice_indices": torch.tensor(info.slice_indices, dtype=torch.long),
            "index": index,
        }

    def _augmented(self, index: int, clip: Tensor) -> Tensor:
        if isinstance(self.augment, AugmentedCopies):
            return self.augment.draw((str(self.rows[index].preprocessed_path), self.spec), clip)
        return self.augment(clip) if self.augment is not None else clip


def collate_scans(items: list[dict]) -> dict:
    """Batch dataset items: tensors stacked ("clip" [B, T, C, S, S], "label" [B], "slice_indices" [B, T],
    "index" [B]); ids as lists."""
    return {
        "clip": torch.stack([it["clip"] for it in items]),
        "label": torch.tensor([it["label"] for it in items], dtype=torch.long),
        "slice_indices": torch.stack([it["slice_indices"] for it in items]),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "participant_id": [it["participant_id"] for it in items],
        "session_id": [it["session_id"] for it in items],
    }
