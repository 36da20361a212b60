"""Dataclass configs and named presets. A preset is a complete, reproducible recipe; the config travels
inside every checkpoint as a plain dict (``to_dict`` / ``from_dict``)."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

PATCH_POLICIES = ("learned", "random", "center", "gaussian", "ppo_grid")
PATCH_SHAPES = ("deformable", "fixed", "random", "full_frame")
FRAME_POLICIES = ("learned", "uniform", "random", "central", "gaussian")
POLICY_GRADIENTS = ("feature_proxy", "pixel")
SPATIAL_PROXIES = ("box", "cells", "local_cells")
CLASSIFIERS = ("max_pool", "tsn")
GLANCE_RESIZES = ("area", "bilinear")


@dataclass
class ModelConfig:
    num_classes: int = 200
    in_channels: int = 3
    glance_backbone: str = "mobilenet_v2"
    glance_backbone_kwargs: dict = field(default_factory=dict)
    glance_pretrained: str | None = None
    local_backbone: str = "resnet50"
    local_backbone_kwargs: dict = field(default_factory=dict)
    local_pretrained: str | None = None
    frame_size: int = 224            # input frames are square, frame_size x frame_size
    glance_size: int | None = None   # glance frames are resized to this; None = full frames (as UA-A)
    num_candidates: int = 48         # N frames per clip offered to the frame policy
    num_glance: int = 16             # T_g, evenly spread over the N candidates
    num_focus: int = 16              # T', chosen by the frame policy
    patch_size: int = 128            # P: the local encoder always sees P x P
    min_patch_side: int = 96         # pixels of the frame; the deformable box side ranges over [min, max]
    max_patch_side: int | None = None  # None = frame_size
    spatial_hidden: int = 128
    spatial_per_clip: bool = False   # one box for the whole clip (temporal local encoders)
    spatial_head: str = "dense"      # dense (the authors') | soft_argmax (see policy.SpatialPolicy)
    spatial_proxy: str = "box"       # box (the authors' eqs. 13-14) | cells (soft_argmax only; model.cell_proxy)
    #                                  | local_cells (soft_argmax only; model.local_cell_logits: the local encoder's
    #                                    reading at every cell, no glance-level class evidence needed)
    local_cell_frames: int = 2       # local_cells: glance frames per clip whose every cell the local encoder reads
    spatial_context: int = 3         # map cells each of the policy trunk's two context convolutions spans (policy)
    spatial_window: int | None = None  # soft_argmax, eval mode: centre boxes on the cells this wide around the best,
    #                                    frames between glance frames from their blended cell weights (policy.peak_actions_at)
    temporal_hidden: int = 64
    classifier_hidden: int = 4096
    dropout: float = 0.2             # before every exit head
    fc_dropout: float = 0.2          # before the auxiliary per-frame heads
    normalize_mean: tuple = (0.485, 0.456, 0.406)
    normalize_std: tuple = (0.229, 0.224, 0.225)
    # Ablation switches (the paper's baselines).
    patch_policy: str = "learned"          # learned | random | center | gaussian
    patch_shape: str = "deformable"        # deformable | fixed (P x P pixels of the frame, AdaFocusV2)
    frame_policy: str = "learned"          # learned | uniform | random
    policy_gradient: str = "feature_proxy"  # feature_proxy (Uni-AdaFocus) | pixel (AdaFocusV2, through grid_sample)
    feature_reuse: bool = True             # focus exits also see the pooled glance features
    gaussian_sigma: float = 0.25           # spread of the "gaussian" patch / frame baselines around the centre
    # Variants (defaults = the UA-A model above).
    classifier: str = "max_pool"           # max_pool: one exit per patch | tsn: TSM/X3D heads, 2 exits
    policy_stop_gradient: bool = True      # the spatial policy reads detached glance maps (AdaFocusV2 sec. 3.3)
    ppo_grid: int = 7                      # AdaFocusV1 ("ppo_grid" patches): a grid x grid set of centres
    head_hidden: int | None = None         # X3D: heads are Linear(D, 2048, no bias)-ReLU-Dropout-Linear (tsn only)
    glance_resize: str = "area"            # how frames are resized to glance_size: area | bilinear (the authors')
    position_channels: bool = False        # append (candidate place, row, column) channels to every frame before the
    #                                        encoders, so features know where they were read (model.with_positions)

    def __post_init__(self):
        for name, allowed in (("patch_policy", PATCH_POLICIES), ("patch_shape", PATCH_SHAPES),
                              ("frame_policy", FRAME_POLICIES), ("policy_gradient", POLICY_GRADIENTS),
                              ("classifier", CLASSIFIERS), ("glance_resize", GLANCE_RESIZES),
                              ("spatial_proxy", SPATIAL_PROXIES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r}; choose one of {allowed}")
        if not 0 < self.num_glance <= self.num_candidates or not 0 < self.num_focus <= self.num_candidates:
            raise ValueError("need 0 < num_glance, num_focus <= num_candidates")
        if not 0 < self.min_patch_side <= (self.max_patch_side or self.frame_size) <= self.frame_size:
            raise ValueError("need 0 < min_patch_side <= max_patch_side <= frame_size")
        if self.spatial_proxy in ("cells", "local_cells") and (self.spatial_head != "soft_argmax"
                                                                or self.policy_gradient != "feature_proxy"):
            raise ValueError(f"spatial_proxy={self.spatial_proxy!r} needs spatial_head='soft_argmax' and "
                             f"policy_gradient='feature_proxy'")
        if self.spatial_proxy == "local_cells" and (self.spatial_per_clip or self.local_cell_frames < 1):
            raise ValueError("spatial_proxy='local_cells' needs a per-frame local encoder (not spatial_per_clip) "
                             "and local_cell_frames >= 1")
        self.normalize_mean, self.normalize_std = tuple(self.normalize_mean), tuple(self.normalize_std)

        if self.ppo_grid < 2:
            raise ValueError(f"ppo_grid={self.ppo_grid}; the AdaFocusV1 grid needs at least 2 x 2 centres")

    @property
    def num_exits(self) -> int:
        """Exit 0 = glance only; exit k = after k focus patches (tsn: exit 1 = all T' patches at once)."""
        return 2 if self.classifier == "tsn" else self.num_focus + 1

    @property
    def learned_patches(self) -> bool:
        """Whether a spatial policy network picks the patches (never for full-frame "patches")."""
        return self.patch_policy in ("learned", "ppo_grid") and self.patch_shape != "full_frame"


@dataclass
class LossConfig:
    """Weights of the training objective's terms; 0 switches a term off."""
    exits: float = 1.0            # CE on every step of the accumulated classifier
    glance_aux: float = 1.0       # per-frame linear head on the glance encoder
    local_aux: float = 1.0        # per-patch linear head on the local encoder
    temporal: float = 1.0         # Monte-Carlo expected-loss objective for the frame policy (eq. 21)
    spatial: float = 1.0          # feature-interpolation proxy loss for the patch policy (eqs. 13-14)
    size_regularizer: float = 1.0  # mean((scale - 1)^2), pushes boxes large unless the task pays (eq. 15)
    cell_temperature: float = 0.05  # spatial_proxy="cells": the cell policy's target is softmax(-proxy CE / this)
    diversity: bool = True        # second pass through the local encoder with random patches
    temporal_trains_glance: bool = True  # MC loss also trains the glance encoder (UA-A; TSM/X3D detach)
    aux_frame_average: bool = False  # auxiliary CE on frame-averaged logits (TSM/X3D) instead of per frame
    mc_samples: int = 128
    mc_draws: int | None = None   # frames drawn per MC sample; None = T' T_g / N (sampling.mc_horizon)

    def __post_init__(self):
        if not self.cell_temperature > 0:
            raise ValueError(f"cell_temperature must be > 0, got {self.cell_temperature}")


@dataclass
class TrainConfig:
    epochs: int = 50
    batch_size: int = 32
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 2e-4
    lr_multipliers: dict = field(default_factory=lambda: {
        "glance": 0.5, "spatial_policy": 0.2, "temporal_policy": 0.2, "classifier": 20.0, "local": 1.0})
    grad_clip: float | None = None
    amp: bool = True              # only used on CUDA
    workers: int = 4
    seed: int = 0
    val_every: int = 1
    init: str | None = None       # a run folder / checkpoint to start from (fine-tuning; see train.warm_start)
    balance_classes: bool = False  # draw training samples with weights 1 / class count (train.balanced_sampler)
    precise_bn_batches: int = 0   # > 0: recompute BatchNorm statistics on this many training batches before
    #                               each validation (train.recalibrate_batch_norm)
    augmentation_copies: int = 0  # MRI scans: > 0 draws each step's augmentation from this many copies per scan,
    #                               made once (datasets.mri.dataset.AugmentedCopies); 0 augments afresh every draw


@dataclass
class SyntheticDataConfig:
    """The synthetic focus task (see adafocus.datasets.synthetic)."""
    train_samples: int = 4000
    val_samples: int = 600
    calibration_samples: int = 600
    test_samples: int = 600
    task: dict = field(default_factory=dict)  # FocusTaskConfig overrides


@dataclass
class Preset:
    model: ModelConfig
    loss: LossConfig
    train: TrainConfig
    data: SyntheticDataConfig = field(default_factory=SyntheticDataConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (tuples become lists), so it survives JSON and weights-only checkpoints."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preset:
        return cls(model=ModelConfig(**d["model"]), loss=LossConfig(**d["loss"]), train=TrainConfig(**d["train"]),
                   data=SyntheticDataConfig(**d.get("data", {})))


def _paper_activitynet() -> Preset:
    """The authors' MobileNetV2 + ResNet-50 recipe (ActivityNet; also used for MRI and RLVS in the paper)."""
    return Preset(
        model=ModelConfig(glance_pretrained="imagenet", local_pretrained="imagenet"),
        loss=LossConfig(size_regularizer=1.0),
        train=TrainConfig(epochs=50, batch_size=32, lr=0.002, weight_decay=2e-4),
    )


def _cpu_synthetic() -> Preset:
    """Small nets on the synthetic focus task: trains on 2 CPU cores in about 4 minutes.

    Sizes follow the paper's proportions: the local encoder sees 24 x 24 patches cut from boxes of 24-40
    pixels of a 64-pixel frame (the paper: 128 from 96-224 of 224), and the glance sees the frame at half
    resolution. With 16-pixel patches the policy still found the object well enough to classify, but its
    boxes held the object's centre only 50-77% of the time (measured while tuning this preset)."""
    return Preset(
        model=ModelConfig(
            num_classes=4, glance_backbone="tiny_cnn", glance_backbone_kwargs={"width": 16, "strides": [2, 2, 2]},
            local_backbone="tiny_cnn", local_backbone_kwargs={"width": 32, "strides": [1, 2, 2]},
            frame_size=64, glance_size=32, num_candidates=8, num_glance=8, num_focus=2,
            patch_size=24, min_patch_side=24, max_patch_side=40, spatial_hidden=32, temporal_hidden=32,
            classifier_hidden=128, dropout=0.1, fc_dropout=0.1,
            normalize_mean=(0.5, 0.5, 0.5), normalize_std=(0.25, 0.25, 0.25)),
        loss=LossConfig(size_regularizer=0.0, mc_samples=32),
        train=TrainConfig(epochs=20, batch_size=32, lr=0.02, weight_decay=1e-4,
                          lr_multipliers={"glance": 1.0, "spatial_policy": 1.0, "temporal_policy": 1.0,
                                          "classifier": 1.0, "local": 1.0},
                          grad_clip=5.0, workers=0),
        data=SyntheticDataConfig(train_samples=4000, val_samples=500, calibration_samples=500, test_samples=500,
                                 task={"glance_hint": 0.05, "glance_hint_jitter": 0.06}),
    )


def _rlvs() -> Preset:
    """The paper's MobileNetV2 + ResNet-50 recipe for the two RLVS classes (NonViolence, Violence).

    Needs the ImageNet weights of both backbones (``pretrained="imagenet"``)."""
    preset = _paper_activitynet()
    preset.model.num_classes = 2
    return preset


def _cpu_video() -> Preset:
    """Tiny nets for video folders on a CPU, sized for native-resolution focus: clips decoded at 128 x 128 (the
    cap on what a patch can read; a 160 x 120 source keeps its scale), glanced at 64, 12 of the clip's frames as
    candidates, 3 focus patches of 32 x 32 cut from 32-48 pixel boxes, the soft-argmax spatial head; no
    downloads.

    Sized on the fine-detail task (datasets.fine_detail: 2-pixel stripes on an object 15% of a 160 x 120 frame,
    on screen for a third of the clip): frames of 64 with 24-pixel patches lost the stripes to aliasing, and
    8 candidates of 48 frames saw the object in under 3 of them (docs/notes/glance-low-focus-native.md, "Glance low, focus native")."""
    preset = _cpu_synthetic()
    preset.model = dataclasses.replace(preset.model, num_classes=2, frame_size=128, glance_size=64,
                                       num_candidates=12, num_glance=12, num_focus=3, patch_size=32,
                                       min_patch_side=32, max_patch_side=48, spatial_head="soft_argmax")
    # The temporal policy at the paper's 0.2 LR ratio: at 1.0 its frame weights saturated (softmax
    # underflow to exact zeros) mid-training on the video demo.
    preset.train = dataclasses.replace(preset.train, epochs=20, workers=1,
                                       lr_multipliers={**preset.train.lr_multipliers, "temporal_policy": 0.2})
    return preset


# ------------------------------------------------------------------------------------------------ variants
def as_adafocus_v2(preset: Preset) -> Preset:
    """AdaFocusV2 on the same backbones and sizes: fixed P x P patches, the task loss reaching the policy
    through grid_sample (no feature proxy), uniform frames (V2 has no frame policy), two passes (policy +
    random patches), one exit per frame."""
    out = dataclasses.replace(preset)
    out.model = dataclasses.replace(preset.model, patch_policy="learned", patch_shape="fixed", frame_policy="uniform",
                                    policy_gradient="pixel", spatial_proxy="box")
    out.loss = dataclasses.replace(preset.loss, temporal=0.0, spatial=0.0, size_regularizer=0.0, diversity=True)
    return out


def as_adafocus_v1(preset: Preset) -> Preset:
    """AdaFocusV1 on the same backbones and sizes: fixed P x P patches centred on a 7 x 7 grid, chosen by a
    PPO actor-critic; uniform frames. Train with ``adafocus.core.adafocus_v1.train_adafocus_v1`` (three stages)."""
    out = dataclasses.replace(preset)
    out.model = dataclasses.replace(preset.model, patch_policy="ppo_grid", patch_shape="fixed", frame_policy="uniform")
    out.loss = dataclasses.replace(preset.loss, temporal=0.0, spatial=0.0, size_regularizer=0.0, diversity=False)
    return out


def _tsm(patch_size: int, num_focus: int, num_classes: int = 174) -> Preset:
    """Uni-AdaFocus-TSM, the authors' Sth-Sth V1 recipe: TSM MobileNetV2 glance on 8 full frames, TSM ResNet-50
    on T' patches chosen from N = 3 T' candidates, one deformable patch per clip, TSN heads with 2 exits."""
    return Preset(
        model=ModelConfig(
            num_classes=num_classes, glance_backbone="mobilenet_v2_tsm", glance_backbone_kwargs={"num_frames": 8},
            glance_pretrained="imagenet", local_backbone="resnet50_tsm",
            local_backbone_kwargs={"num_frames": num_focus}, local_pretrained="imagenet",
            num_candidates=3 * num_focus, num_glance=8, num_focus=num_focus, patch_size=patch_size,
            spatial_per_clip=True, classifier="tsn", dropout=0.5, fc_dropout=0.5),
        loss=LossConfig(size_regularizer=0.5, temporal_trains_glance=False, aux_frame_average=True),
        train=TrainConfig(epochs=50, batch_size=64, lr=0.02, weight_decay=1e-3, grad_clip=20.0,
                          lr_multipliers={"glance": 0.5, "spatial_policy": 0.2, "temporal_policy": 0.2,
                                          "classifier": 1.0, "local": 1.0}),
    )


def _diving48() -> Preset:
    """Uni-AdaFocus-TSM for Diving48 (48 dive classes): P = 128, 8 glance + 12 focus frames, 18.8 GFLOPs.

    Source: the paper's Table XII ("Uni-AdaFocus-TSM (128^2) w/o sample-wise dynamic, MN2+R50, 8+12, 88.1%,
    18.8 GFLOPs") and Appendix D ("we implement Uni-AdaFocus-TSM following Section 5.2"); the training recipe
    is the authors' Sth-Sth one (no Diving48 command was released)."""
    return _tsm(128, 12, num_classes=48)


def _tsm_plus_static() -> Preset:
    """The static TSM+ baseline: TSM MobileNetV2 and TSM ResNet-50 both on the same 8 full 224 x 224 frames,
    logits summed; no policy, one exit after the glance and one after the full frames."""
    preset = _tsm(224, 8)
    preset.model = dataclasses.replace(preset.model, num_candidates=8, patch_shape="full_frame",
                                       frame_policy="uniform")
    return preset


def _x3d() -> Preset:
    """Uni-AdaFocus-X3D (Kinetics-400): X3D-S glance on 16 frames resized to 160, X3D-L on 32 patches of
    128 x 128 chosen from 96 candidates, one deformable patch per clip, 2 exits, X3D's own 432-2048-C heads.
    No X3D weights ship here; ``glance_pretrained`` / ``local_pretrained`` take the SlowFast x3d_s / x3d_l
    Kinetics-400 files the authors start from (``archs/X3D_ckpt/x3d_{s,l}.pyth``)."""
    return Preset(
        model=ModelConfig(
            num_classes=400, glance_backbone="x3d_s", glance_backbone_kwargs={"num_frames": 16},
            local_backbone="x3d_l", local_backbone_kwargs={"num_frames": 32}, glance_size=160,
            num_candidates=96, num_glance=16, num_focus=32, patch_size=128, spatial_per_clip=True,
            classifier="tsn", dropout=0.5, fc_dropout=0.5, head_hidden=2048, glance_resize="bilinear"),
        loss=LossConfig(size_regularizer=0.5, temporal_trains_glance=False, aux_frame_average=True),
        train=TrainConfig(epochs=50, batch_size=64, lr=0.005, weight_decay=5e-5, grad_clip=20.0,
                          lr_multipliers={"glance": 0.5, "spatial_policy": 0.4, "temporal_policy": 0.4,
                                          "classifier": 1.0, "local": 1.0}),
    )


def _paper_adafocus_v2() -> Preset:
    """AdaFocusV2 (CVPR 2022), the authors' ActivityNet recipe: MobileNetV2 + ResNet-50, P = 128, 16 frames."""
    preset = as_adafocus_v2(_paper_activitynet())
    preset.model = dataclasses.replace(preset.model, num_candidates=16, num_glance=16, num_focus=16)
    preset.train = dataclasses.replace(preset.train, weight_decay=1e-4, lr_multipliers={
        "glance": 0.5, "spatial_policy": 0.1, "temporal_policy": 0.1, "classifier": 5.0, "local": 1.0})
    return preset


def _mri_paper() -> Preset:
    """The paper's MobileNetV2 + ResNet-50 recipe for MRI: two classes (e.g. CN vs AD), clips of 48 sagittal
    2.5D slices (neighbouring slices as RGB) of the t1-linear crop at 224 x 224. Needs ImageNet weights."""
    preset = _paper_activitynet()
    preset.model.num_classes = 2
    return preset


def _cpu_mri() -> Preset:
    """Tiny nets for MRI cross-validation on a CPU: 16 sagittal 2.5D slices of 64 x 64, 4 focus patches from
    boxes of 24-36 pixels, the soft-argmax spatial head trained by the cell proxy (``spatial_proxy="cells"``,
    model.cell_proxy). Sized so a 5-fold CV of the demo cohort (about 30 participants) trains in minutes on 2
    cores. With the authors' box proxy the boxes sat at one arbitrary place per fold on the demo's cohort
    (0.9x-1.8x chance in the atrophy over six runs); with the cell proxy every fold's boxes went to the atrophy
    (docs/notes/mri-demo-recipe.md, "MRI demo"). With the authors' dense head the fold-to-fold accuracy swung. ``cpu-mri-imagenet``
    is the recipe that also learned with the dense head, at about 4x the CPU per training step.

    TorchIO augmentation is drawn from 8 copies per scan made once (``augmentation_copies``,
    datasets.mri.dataset.AugmentedCopies; fresh augmentation at every draw was about half of each fold's time),
    for 40 epochs (80 scored the same on the demo's two seeds, at twice the time). Those 40 epochs are sized for
    the demo's cohort: on 100 participants with a change of shape (ventricles, hippocampi) it reached 0.64, with
    120 epochs 0.88, ``cpu-mri-imagenet`` 0.90 (docs/notes/mri-demo-recipe.md, "On cohorts the demo did not make")."""
    preset = _cpu_synthetic()
    preset.model = dataclasses.replace(
        preset.model, num_classes=2, num_candidates=16, num_glance=16, num_focus=4, patch_size=24,
        min_patch_side=24, max_patch_side=36, spatial_head="soft_argmax", spatial_proxy="cells")
    preset.train = dataclasses.replace(preset.train, epochs=40, batch_size=4, lr=0.02, workers=0,
                                       augmentation_copies=8)
    return preset


def _cpu_mri_imagenet() -> Preset:
    """``cpu-mri``'s sizes (boxes 24-48, the authors' box proxy, as when it was measured) with the recipe that
    learned reliably on the demo's cohort (docs/notes/mri-demo-recipe.md, "MRI demo"):

    - ImageNet initialisation for the 2.5D inputs (neighbouring slices as RGB, ImageNet normalisation): the
      glance is MobileNetV2's first 7 blocks (D=32, stride 8), the local encoder its first 14 (D=96); tiny
      random-initialised nets stayed at chance on a demo fold where these learned (measured; docs/notes/mri-demo-recipe.md);
    - class-balanced sampling (balance_classes); TorchIO augmentation as every MRI training run gets it
      (datasets.mri.dataset.ClipAugmentation); best.pt ties on validation accuracy go to the lower loss;
    - SGD lr 0.02 (cosine), batches of 4 scans, 40 epochs, every LR multiplier 1.
    About 4x cpu-mri's CPU per training step (0.090 vs 0.022 s per scan and step, one thread)."""
    preset = _cpu_mri()
    preset.model = dataclasses.replace(
        preset.model, glance_backbone="mobilenet_v2", glance_backbone_kwargs={"blocks": 7},
        glance_pretrained="imagenet", local_backbone="mobilenet_v2", local_backbone_kwargs={"blocks": 14},
        local_pretrained="imagenet", normalize_mean=ModelConfig.normalize_mean,
        normalize_std=ModelConfig.normalize_std, max_patch_side=48, spatial_proxy="box")  # as measured
    preset.train = dataclasses.replace(preset.train, epochs=40, balance_classes=True)
    return preset


def _cpu_mri_atrophy() -> Preset:
    """``cpu-mri`` with ``position_channels`` and 300 epochs, for atrophy that is a change of *where* (shape-change
    cohorts: hippocampi shrink, ventricles widen; datasets.mri.cohort.ShapeAtrophy). Every frame reaches both
    encoders with its candidate place, row and column as three extra channels (model.with_positions), so the
    max-pooled features can say where dark tissue is, not only that it is; the 300 epochs are what 18 training
    participants needed (at 40 the loss had not moved). Measured (`adafocus bench atrophy`, one thread,
    docs/notes/mri-atrophy-recipe.md): 100 participants, pooled balanced accuracy 0.950, 0.980, 0.980 at cv seeds
    0-2 (``cpu-mri`` 0.690 at seed 0), about 24 min per 5-fold CV; 28 participants 0.714, 0.679, 0.571 at seeds
    0-2 (``cpu-mri`` 0.464), short of 0.85. The policy's slices are not in the atrophy (0.6-1.4x chance)."""
    preset = _cpu_mri()
    preset.model = dataclasses.replace(preset.model, position_channels=True)
    preset.train = dataclasses.replace(preset.train, epochs=300)
    return preset


PRESETS = {
    "paper-mbv2-r50": _paper_activitynet,
    "cpu-synthetic": _cpu_synthetic,
    "rlvs": _rlvs,
    "cpu-video": _cpu_video,
    "tsm-p96-8x8": lambda: _tsm(96, 8),
    "tsm-p96-8x12": lambda: _tsm(96, 12),
    "tsm-p128-8x12": lambda: _tsm(128, 12),
    "tsm-p128-8x16": lambda: _tsm(128, 16),
    "diving48": _diving48,
    "tsm-plus-static": _tsm_plus_static,
    "x3d-p128-16x32": _x3d,
    "adafocus-v2": _paper_adafocus_v2,
    "cpu-synthetic-v2": lambda: as_adafocus_v2(_cpu_synthetic()),
    "cpu-synthetic-v1": lambda: as_adafocus_v1(_cpu_synthetic()),
    "mri-paper": _mri_paper,
    "cpu-mri": _cpu_mri,
    "cpu-mri-imagenet": _cpu_mri_imagenet,
    "cpu-mri-atrophy": _cpu_mri_atrophy,
}


CHANNEL_BACKBONES = ("tiny_cnn",)  # backbones whose first layer takes any number of input channels


def with_input_channels(model: ModelConfig, channels: int) -> ModelConfig:
    """The model config for frames of `channels` channels (MRI slices with context c have 2c + 1).

    Grey frames (1 channel) and the config's own channel count need nothing. Otherwise both encoders must be
    backbones that take an `in_chans` (CHANNEL_BACKBONES) and the normalisation is the first channel's,
    repeated; ImageNet backbones take 3 channels and are refused in one line."""
    if channels == 1 or channels == len(model.normalize_mean):
        return model
    fixed = [name for name in (model.glance_backbone, model.local_backbone) if name not in CHANNEL_BACKBONES]
    if fixed:
        raise ValueError(f"frames of {channels} channels (--context {(channels - 1) // 2}) need backbones that take "
                         f"them; {', '.join(sorted(set(fixed)))} take {len(model.normalize_mean)}: use --context 1 "
                         f"(or 0), or a preset built on {', '.join(CHANNEL_BACKBONES)} such as cpu-mri")
    return dataclasses.replace(
        model, glance_backbone_kwargs={**model.glance_backbone_kwargs, "in_chans": channels},
        local_backbone_kwargs={**model.local_backbone_kwargs, "in_chans": channels},
        normalize_mean=(model.normalize_mean[0],) * channels, normalize_std=(model.normalize_std[0],) * channels)


def get_preset(name: str, **model_overrides: Any) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    preset = PRESETS[name]()
    if model_overrides:
        preset.model = dataclasses.replace(preset.model, **model_overrides)
    return preset
