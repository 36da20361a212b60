"""Uni-AdaFocus: glance at every frame, choose frames and patches, focus on them, exit when sure.

Read top to bottom:
1. ``glance``   the global encoder sees T_g frames (optionally down-scaled); maps feed the policies,
                pooled vectors feed the classifier (feature reuse).
2. ``policies`` the spatial policy gives a deformable box per glance frame, the temporal policy a weight
                per glance frame; both read detached glance features.
3. ``select``   T' of the N candidate frames are picked by CDF quantiles of the frame weights.
4. ``focus``    the chosen boxes are cut out of the chosen frames at full resolution, resized to P x P,
                and encoded by the local encoder.
5. ``classify`` an accumulated max-pooling classifier gives one exit after the glance and one after each
                focus patch.
``forward`` is the training pass (everything the objective needs); ``infer`` is batched early-exit
inference that drops finished samples from the batch, so the saving is real.

Variants are switches of ``ModelConfig``, not copies of this file:
- TSM / X3D (``classifier="tsn"``, clip backbones, ``spatial_per_clip``): the local encoder sees all T' patches
  of a clip at once, so there are two exits, glance-only and fused (a sample exits by skipping the local encoder);
- AdaFocusV2 (``patch_shape="fixed"``, ``policy_gradient="pixel"``): the task loss trains the policy;
- the cell proxy (``spatial_proxy="cells"``, soft_argmax head): the proxy is scored at every glance-map cell
  and the cell scores learn where it is right (``cell_proxy``; not the authors', see docs/notes/mri-demo-recipe.md, "MRI demo");
- the local cell proxy (``spatial_proxy="local_cells"``, soft_argmax head): the same cell target, but from what the
  LOCAL encoder reads under a box at every cell (``local_cell_logits``); the frames where some cell reads the class
  are the frame policy's target, and the best cell's reading trains the local encoder, so both policies learn
  where to look when the glance cannot tell the classes apart (not the authors'; docs/notes/glance-hint.md);
- AdaFocusV1 (``patch_policy="ppo_grid"``): a categorical actor-critic picks patch centres on a grid; it is
  trained by PPO in ``adafocus.core.adafocus_v1`` and here only sampled (training) or argmax-ed (inference);
- position channels (``position_channels``): three channels appended to every normalised frame before the
  encoders (the frame's place among the candidates, the row, the column), so features know where they were
  read; patches are cut with their coordinates (not the authors'; docs/notes/mri-atrophy-recipe.md);
- ablation baselines: random / centre / gaussian patches, random shapes, full frames; uniform / random /
  central / gaussian frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from adafocus.core.backbones import cpu_micro_batch, create_backbone, encoder_input
from adafocus.core.backbones.x3d import share_pretrained_head
from adafocus.core.classifier import AccumulatedMaxPoolClassifier, TSNClassifier, make_head
from adafocus.core.config import ModelConfig
from adafocus.core.exits import ExitPolicy
from adafocus.core.flops import count_gmacs, eval_mode
from adafocus.core.geometry import (
    boxes_from_actions,
    boxes_to_source_pixels,
    crop_frames,
    crop_patches,
    crop_patches_per_image,
    interpolate_over_time,
    scale_for_side,
)
from adafocus.core.policy import CellChoice, SpatialPolicy, TemporalPolicy
from adafocus.core.ppo import GridActorCritic
from adafocus.core.sampling import (
    central_frames,
    gather_frames,
    gaussian_frames,
    random_frames,
    select_frames,
    uniform_frames,
)
from torch import Tensor, nn

POSITION_CHANNELS = 3  # ModelConfig.position_channels: slice place, row, column


@dataclass
class Glance:
    feature_maps: Tensor   # [B, T_g, D, h, w]
    features: Tensor       # [B, T_g, D]
    positions: Tensor      # [B, T_g] candidate index of each glance frame


@dataclass
class TrainingOutputs:
    """Everything the training objective needs from one forward pass."""
    exit_logits: Tensor               # [P, B, T_g + T' (tsn: 1, the fused exit), C]; P = 2 passes or 1
    glance_frame_logits: Tensor       # [B, T_g, C] auxiliary head per glance frame
    local_patch_logits: Tensor        # [P, B, T', C] auxiliary head per focus patch
    frame_weights: Tensor | None      # [B, T_g] temporal policy distribution (None unless learned)
    glance_actions: Tensor | None     # [B, T_g or 1, 4] spatial policy actions (None unless "learned")
    proxy_logits: Tensor | None       # [B, C] feature-interpolation proxy (None unless learned + proxy)
    frame_indices: Tensor             # [B, T']
    boxes: Tensor                     # [B, T', 4]
    num_candidates: int               # N, the frames the T' were chosen from (sets the MC loss horizon)
    proxy_cell_logits: Tensor | None = None  # [B, T_g, h*w, C] spatial_proxy="cells": the proxy at every cell
    cell_scores: Tensor | None = None        # [B, T_g, h*w] spatial_proxy="cells": the policy's cell scores
    cell_frames: Tensor | None = None        # [B, K] spatial_proxy="local_cells": the glance frames read at every cell


@dataclass
class FocusResult:
    """Inference output. Exit k = 0 is glance-only; exit k >= 1 has seen k focus patches."""
    logits: Tensor          # [B, K, C]; NaN for exits a sample never reached
    exit_index: Tensor      # [B] exit taken
    gmacs: Tensor           # [B] cost of the exit taken
    frame_indices: Tensor   # [B, T'] candidate frame of each focus step; -1 where not processed
    boxes: Tensor           # [B, T', 4] frame fractions (x0, y0, x1, y1); NaN where not processed
    source_boxes: Tensor    # [B, T', 4] the same boxes in source pixels (frame pixels without a view)
    frame_weights: Tensor   # [B, T_g] temporal policy weights (uniform for non-learned frame policies)

    @property
    def exit_logits(self) -> Tensor:
        return self.logits.gather(1, self.exit_index[:, None, None].expand(-1, 1, self.logits.shape[-1]))[:, 0]

    @property
    def probabilities(self) -> Tensor:
        return self.exit_logits.softmax(-1)

    @property
    def prediction(self) -> Tensor:
        return self.exit_logits.argmax(-1)


class UniAdaFocus(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        glance_kwargs, local_kwargs = dict(c.glance_backbone_kwargs), dict(c.local_backbone_kwargs)
        if c.position_channels:
            for kwargs in (glance_kwargs, local_kwargs):
                kwargs["in_chans"] = kwargs.get("in_chans", len(c.normalize_mean)) + POSITION_CHANNELS
        self.glance_encoder = create_backbone(c.glance_backbone, pretrained=c.glance_pretrained, **glance_kwargs)
        self.local_encoder = create_backbone(c.local_backbone, pretrained=c.local_pretrained, **local_kwargs)
        self._check_clip_backbones()
        glance_dim, local_dim = self.glance_encoder.feature_dim, self.local_encoder.feature_dim
        self.glance_map_size = self._feature_map_size(self.glance_encoder, self.glance_size)

        # Policies exist only when learned, so no parameter is ever left without a gradient.
        if not c.learned_patches:
            self.spatial_policy = None
        elif c.patch_policy == "ppo_grid":
            self.spatial_policy = GridActorCritic(glance_dim, self.glance_map_size, grid=c.ppo_grid,
                                                  hidden=c.spatial_hidden)
        else:
            self.spatial_policy = SpatialPolicy(glance_dim, self.glance_map_size, c.num_glance,
                                                hidden=c.spatial_hidden, per_clip=c.spatial_per_clip,
                                                head=c.spatial_head, side_range=self.side_range,
                                                context=c.spatial_context, window=c.spatial_window)
        self.temporal_policy = (TemporalPolicy(glance_dim, hidden=c.temporal_hidden)
                                if c.frame_policy == "learned" else None)
        self.proxy_head = (nn.Linear(glance_dim, c.num_classes)
                           if c.learned_patches and c.patch_policy == "learned" and c.policy_gradient == "feature_proxy"
                           and c.spatial_proxy != "local_cells" else None)
        if c.classifier == "tsn":
            self.classifier = TSNClassifier(glance_dim, local_dim, c.num_classes, dropout=c.dropout,
                                            hidden=c.head_hidden)
        else:
            self.classifier = AccumulatedMaxPoolClassifier(
                glance_dim, local_dim, c.num_classes, num_glance=c.num_glance, num_focus=c.num_focus,
                hidden=c.classifier_hidden, dropout=c.dropout, feature_reuse=c.feature_reuse)
        self.glance_head = make_head(glance_dim, c.num_classes, dropout=c.fc_dropout, hidden=c.head_hidden)
        self.local_head = make_head(local_dim, c.num_classes, dropout=c.fc_dropout, hidden=c.head_hidden)
        if c.classifier == "tsn" and c.head_hidden:  # X3D: start both heads from the pretrained file's head
            for spec, heads in ((c.glance_pretrained, (self.classifier.glance_head, self.glance_head)),
                                (c.local_pretrained, (self.classifier.local_head, self.local_head))):
                if spec:
                    share_pretrained_head(spec, *heads)
        self.register_buffer("pixel_mean", torch.tensor(c.normalize_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.normalize_std).view(1, -1, 1, 1), persistent=False)
        self._exit_costs: list[float] | None = None

    # ----------------------------------------------------------------------------------------- geometry
    @property
    def glance_size(self) -> int:
        return self.config.glance_size or self.config.frame_size

    @property
    def side_range(self) -> tuple[float, float]:
        """(min, max) box side as a fraction of the frame."""
        c = self.config
        if c.patch_shape == "full_frame":
            return 1.0, 1.0
        if c.patch_shape == "fixed":
            return c.patch_size / c.frame_size, c.patch_size / c.frame_size
        return c.min_patch_side / c.frame_size, (c.max_patch_side or c.frame_size) / c.frame_size

    def _check_clip_backbones(self) -> None:
        """Clip backbones (TSM, X3D) must be built for the number of frames they are fed."""
        c = self.config
        for role, encoder, frames in (("glance", self.glance_encoder, c.num_glance),
                                      ("local", self.local_encoder, c.num_focus)):
            if encoder.frames_per_clip not in (1, frames):
                raise ValueError(f"the {role} backbone {encoder.name} mixes {encoder.frames_per_clip} frames per clip "
                                 f"but gets {frames}; set num_frames={frames} in {role}_backbone_kwargs")
        if self.local_encoder.frames_per_clip > 1 and c.classifier != "tsn":
            raise ValueError(f"the local backbone {self.local_encoder.name} sees all {c.num_focus} patches at once, "
                             "so patches cannot exit one by one; use classifier='tsn'")

    @staticmethod
    def _feature_map_size(encoder: nn.Module, size: int) -> tuple[int, int]:
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            frames = torch.zeros(encoder.frames_per_clip, encoder_in_channels(encoder), size, size)
            shape = encoder(frames).shape[-2:]
        encoder.train(was_training)
        return int(shape[0]), int(shape[1])

    def encoder_input(self, encoder: nn.Module, frames: Tensor) -> Tensor:
        """Frames ``[M, C, H, W]`` in [0, 1] -> ``encoder``'s input: normalised, unless the encoder's engine
        graph normalises itself (core.backbones.encoder_input)."""
        return encoder_input(encoder, frames, self.pixel_mean, self.pixel_std)

    def with_positions(self, frames: Tensor, frame_indices: Tensor) -> Tensor:
        """With ``position_channels``: normalised frames ``[M, C, H, W]`` of candidate indices ``[...]`` (M of them)
        -> ``[M, C + 3, H, W]``, the extra channels the frame's place among the N candidates, the row and the
        column, each from -1 to 1 (a crop of the frame then carries where it was cut). Else the frames."""
        if not self.config.position_channels:
            return frames
        m, _, h, w = frames.shape
        slice_place = frame_indices.reshape(m).to(frames.dtype) * (2.0 / max(self.config.num_candidates - 1, 1)) - 1
        rows = torch.linspace(-1, 1, h, device=frames.device, dtype=frames.dtype).view(1, 1, h, 1).expand(m, 1, h, w)
        cols = torch.linspace(-1, 1, w, device=frames.device, dtype=frames.dtype).view(1, 1, 1, w).expand(m, 1, h, w)
        return torch.cat([frames, slice_place.view(m, 1, 1, 1).expand(m, 1, h, w), rows, cols], dim=1)

    def _check_clip(self, clip: Tensor) -> None:
        c = self.config
        if clip.dim() != 5 or clip.shape[1] != c.num_candidates or clip.shape[-1] != c.frame_size \
                or clip.shape[-2] != c.frame_size:
            raise ValueError(f"expected a clip [B, {c.num_candidates}, C, {c.frame_size}, {c.frame_size}], "
                             f"got {tuple(clip.shape)}")

    # ------------------------------------------------------------------------------------ 1. glance
    def glance(self, clip: Tensor) -> Glance:
        batch, c = clip.shape[0], self.config
        positions = uniform_frames(batch, c.num_glance, c.num_candidates, random_offsets=self.training,
                                   device=clip.device)
        frames = gather_frames(clip, positions).flatten(0, 1)
        if self.glance_size != c.frame_size:
            frames = F.interpolate(frames, size=(self.glance_size, self.glance_size), mode=c.glance_resize)
        maps = self.glance_encoder(self.with_positions(self.encoder_input(self.glance_encoder, frames), positions))
        maps = maps.reshape(batch, c.num_glance, *maps.shape[1:])
        return Glance(feature_maps=maps, features=maps.mean(dim=(-2, -1)), positions=positions)

    def glance_exit(self, glance: Glance) -> Tensor:
        """TSM / X3D exit 0 ``[B, C]``: the authors' global logits, the auxiliary glance head averaged over frames."""
        return self.glance_head(glance.features).mean(dim=1)

    # ---------------------------------------------------------------------------------- 2. policies
    def glance_actions(self, glance: Glance, cells: CellChoice | None = None) -> Tensor:
        """Learned spatial actions per glance frame ``[B, T_g or 1, 4]`` (reads detached maps unless the
        stop-gradient is switched off), or those of the soft_argmax head's ``cells`` when given."""
        if cells is not None:
            return self.spatial_policy.actions(cells)
        maps = self._policy_maps(glance)
        with full_precision(maps):
            return self.spatial_policy(maps.float())

    def glance_cells(self, glance: Glance) -> CellChoice:
        """The soft_argmax head's cell scores and box scales per glance frame (what ``glance_actions`` is made of)."""
        maps = self._policy_maps(glance)
        with full_precision(maps):
            return self.spatial_policy.cells(maps.float())

    def _policy_maps(self, glance: Glance) -> Tensor:
        return glance.feature_maps.detach() if self.config.policy_stop_gradient else glance.feature_maps

    @property
    def uses_cell_proxy(self) -> bool:
        return self.proxy_head is not None and self.config.spatial_proxy == "cells"

    @property
    def uses_local_cells(self) -> bool:
        c = self.config
        return c.learned_patches and c.patch_policy == "learned" and c.spatial_proxy == "local_cells"

    def grid_policy(self, glance: Glance, frame_indices: Tensor) -> tuple[Tensor, Tensor]:
        """AdaFocusV1 actor-critic at the chosen frames: (logits ``[B, T', grid**2]``, values ``[B, T']``).

        Per-glance-frame outputs are interpolated over time to the candidates (one output per clip with
        ``spatial_per_clip``); the actor reads detached glance maps."""
        with full_precision(glance.feature_maps):
            logits, values = self.spatial_policy(glance.feature_maps.detach().float())
        if self.config.spatial_per_clip:
            logits, values = logits.mean(dim=1, keepdim=True), values.mean(dim=1, keepdim=True)
        return self.actions_at(logits, frame_indices), self.actions_at(values[..., None], frame_indices)[..., 0]

    def grid_actions(self, choice: Tensor) -> Tensor:
        """Grid cells ``[B, T']`` -> actions ``[B, T', 4]``: the cell centres, native patch size."""
        position = self.spatial_policy.centres(choice)
        return torch.cat([position, self._native_scale(position)], dim=-1)

    def patch_actions(self, glance: Glance, frame_indices: Tensor,
                      cells: CellChoice | None = None) -> tuple[Tensor, Tensor | None]:
        """Actions ``[B, T', 4]`` at the chosen frames, and the learned per-glance-frame actions (or None;
        from ``cells`` when given, see ``glance_actions``).

        "ppo_grid" samples a grid cell in training and takes the most likely one at inference;
        ``patch_shape="random"`` redraws the scales of whatever policy placed the patches."""
        c, (batch, steps), device = self.config, frame_indices.shape, frame_indices.device
        glance_actions = None
        if c.learned_patches and c.patch_policy == "learned":
            decodes_peak = self.spatial_policy.decodes_peak
            if decodes_peak and cells is None:
                cells = self.glance_cells(glance)
            glance_actions = self.glance_actions(glance, cells)
            actions = (self.spatial_policy.peak_actions_at(cells, glance.positions, frame_indices) if decodes_peak
                       else self.actions_at(glance_actions, frame_indices))
        elif c.learned_patches:
            logits, _ = self.grid_policy(glance, frame_indices)
            choice = (torch.distributions.Categorical(logits=logits).sample() if self.training
                      else logits.argmax(-1))
            actions = self.grid_actions(choice)
        else:  # a full-frame box is the same wherever it is "placed"
            policy = "center" if c.patch_shape == "full_frame" else c.patch_policy
            actions = self.baseline_actions(batch, steps, policy, device)
        if c.patch_shape == "random":
            actions = torch.cat([actions[..., :2], torch.rand_like(actions[..., 2:])], dim=-1)
        return actions, glance_actions

    def _native_scale(self, position: Tensor) -> Tensor:
        """Scales ``[..., 2]`` that make both box sides P pixels (as close as the side range allows)."""
        min_side, max_side = self.side_range
        scale = scale_for_side(self.config.patch_size / self.config.frame_size, min_side=min_side, max_side=max_side)
        return torch.full_like(position, scale)

    def frame_logits(self, glance: Glance) -> Tensor:
        with full_precision(glance.features):
            return self.temporal_policy(glance.features.detach().float())

    def baseline_actions(self, batch: int, steps: int, policy: str, device: torch.device) -> Tensor:
        """Non-learned patch policies ``[B, steps, 4]``: random / center / gaussian position, native size P."""
        if policy == "random":
            position = torch.rand(batch, steps, 2, device=device)
        elif policy == "center":
            position = torch.full((batch, steps, 2), 0.5, device=device)
        elif policy == "gaussian":
            position = (0.5 + self.config.gaussian_sigma * torch.randn(batch, steps, 2, device=device)).clamp(0, 1)
        else:
            raise ValueError(f"no baseline patch policy {policy!r}")
        return torch.cat([position, self._native_scale(position)], dim=-1)

    def actions_at(self, glance_actions: Tensor, frame_indices: Tensor) -> Tensor:
        """Per-glance-frame values ``[B, T_g or 1, A]`` -> values at the chosen candidate frames ``[B, T', A]``."""
        if glance_actions.shape[1] == 1:  # one action per clip
            return glance_actions.expand(-1, frame_indices.shape[1], -1)
        per_candidate = interpolate_over_time(glance_actions, self.config.num_candidates)
        return per_candidate.gather(1, frame_indices[..., None].expand(-1, -1, glance_actions.shape[-1]))

    # ------------------------------------------------------------------------------------ 3. select
    def select_frames(self, frame_weights: Tensor | None, batch: int, device: torch.device) -> Tensor:
        c = self.config
        if c.frame_policy == "learned":
            return select_frames(frame_weights.detach(), c.num_focus, c.num_candidates, random_offsets=self.training)
        if c.frame_policy == "uniform":
            return uniform_frames(batch, c.num_focus, c.num_candidates, random_offsets=self.training, device=device)
        if c.frame_policy == "central":
            return central_frames(batch, c.num_focus, c.num_candidates, device=device)
        if c.frame_policy == "gaussian":
            return gaussian_frames(batch, c.num_focus, c.num_candidates, sigma=c.gaussian_sigma, device=device)
        return random_frames(batch, c.num_focus, c.num_candidates, device=device)

    def boxes(self, actions: Tensor) -> Tensor:
        min_side, max_side = self.side_range
        return boxes_from_actions(actions, min_side=min_side, max_side=max_side)

    # ------------------------------------------------------------------------------------- 4. focus
    def focus(self, clip: Tensor, frame_indices: Tensor, boxes: Tensor, samples: Tensor | None = None) -> Tensor:
        """Local features ``[B', T', D_l]`` of the boxes ``[B', T', 4]`` in the chosen frames ``[B', T']``.

        ``samples [B']`` says which clips of the batch the rows belong to (default: all, in order). The patches are
        cut from the clip itself (core.geometry.crop_frames), not from a copy of the chosen frames."""
        if self.config.position_channels:  # the coordinates are cut with the frame
            frames = self.with_positions(self.encoder_input(self.local_encoder,
                                                            gather_frames(clip, frame_indices, samples).flatten(0, 1)),
                                         frame_indices)
            patches = crop_patches(frames, boxes.flatten(0, 1), self.config.patch_size)
        else:
            if samples is None:
                samples = torch.arange(frame_indices.shape[0], device=clip.device)
            # Filled with the mean colour outside the frame, a patch normalises to the crop of the normalised frame.
            patches = self.encoder_input(self.local_encoder, crop_frames(clip, samples, frame_indices, boxes,
                                                                         self.config.patch_size, fill=self.pixel_mean))
        features = self.local_encoder.pooled(patches)
        return features.reshape(*frame_indices.shape, -1)

    def proxy_logits(self, glance: Glance, glance_actions: Tensor) -> Tensor:
        """Feature-interpolation proxy: crop the chosen boxes out of the (detached) glance feature maps,
        pool, classify. Its gradient reaches the spatial policy only through the box coordinates."""
        maps = glance.feature_maps.detach().float()
        batch, steps = maps.shape[:2]
        actions = glance_actions.expand(-1, steps, -1)
        with full_precision(maps):
            cropped = crop_patches(maps.flatten(0, 1), self.boxes(actions).flatten(0, 1), self.proxy_crop_size)
            pooled = cropped.reshape(batch, steps, maps.shape[2], -1).mean(dim=(1, 3))
            return self.proxy_head(pooled)

    def cell_proxy(self, glance: Glance, cells: CellChoice) -> tuple[Tensor, Tensor]:
        """The proxy of ``spatial_proxy="cells"`` (soft_argmax head): the proxy head reads the (detached) glance
        features under a box of the chosen scales centred on every map cell, so every place is scored, not
        only the one the policy points at (with the box proxy the policy only feels the slope where its box
        is, and the head learns only the places it is shown). Returns

        - the log of the class probabilities averaged over cells (by the cell weights, detached) and frames,
          with the head frozen, ``[B, C]``: its CE trains the box scales;
        - the head's logits at every cell, on detached boxes, ``[B, T_g, h*w, C]``: their CE trains the head,
          and the cells where it is right become the target of the cell scores (objective.training_loss)."""
        maps = glance.feature_maps.detach().float()
        batch, frames = maps.shape[:2]
        cell_boxes = self.boxes(self.spatial_policy.cell_actions(cells))  # [B, T_g, h*w, 4]

        with full_precision(maps):
            crops = crop_patches_per_image(maps.flatten(0, 1), cell_boxes.flatten(0, 1), self.proxy_crop_size)
            pooled = crops.mean(dim=(-2, -1)).unflatten(0, (batch, frames))  # grad only via the boxes
            head = self.proxy_head
            probs = F.linear(pooled, head.weight.detach(), head.bias.detach()).softmax(-1)
            mixture = (cells.weights.detach()[..., None] * probs).sum(dim=2).mean(dim=1)
            return mixture.clamp_min(1e-8).log(), head(pooled.detach())

    def local_cell_logits(self, clip: Tensor, glance: Glance, cells: CellChoice) -> tuple[Tensor, Tensor, Tensor]:
        """The proxy of ``spatial_proxy="local_cells"``: in ``local_cell_frames`` random glance frames per clip, the
        local encoder reads a box of the chosen scales centred on every cell, at full resolution as ``focus``
        does, and its patch head classifies it. Returns
        - those logits ``[B, K, h*w, C]``. Detached, the cells where they are right become the target of the cell
          scores, and the frames whose best cell is right the target of the frame policy; with their gradient,
          the clip's label read from its best cell trains the local encoder (objective.training_loss);
        - the policy's scores of the same cells ``[B, K, h*w]``;
        - the glance frames read ``[B, K]``.
        Costs K * h * w local patches per clip."""
        batch, frames, num_cells = cells.scores.shape
        k = min(self.config.local_cell_frames, frames)
        pick = torch.rand(batch, frames, device=clip.device).argsort(-1)[:, :k]  # [B, K] glance frames
        scores = cells.scores.gather(1, pick[..., None].expand(-1, -1, num_cells))
        with torch.no_grad():
            cell_boxes = self.boxes(self.spatial_policy.cell_actions(cells))  # [B, T_g, h*w, 4]
            boxes = cell_boxes.gather(1, pick[..., None, None].expand(-1, -1, num_cells, 4))
            positions = glance.positions.gather(1, pick)
            images = self.with_positions(
                self.encoder_input(self.local_encoder, gather_frames(clip, positions).flatten(0, 1)), positions)
            patches = crop_patches_per_image(images, boxes.flatten(0, 1).to(images.dtype), self.config.patch_size)
        logits = self.local_head(self.local_encoder.pooled(patches.flatten(0, 1)))
        return logits.float().reshape(batch, k, num_cells, -1), scores, pick

    @property
    def proxy_crop_size(self) -> tuple[int, int]:
        """The proxy's crop of the glance maps: a P x P patch's share of the frame, in map cells (at least 1)."""
        c, (map_h, map_w) = self.config, self.glance_map_size
        return (max(1, round(c.patch_size / c.frame_size * map_h)), max(1, round(c.patch_size / c.frame_size * map_w)))

    # ------------------------------------------------------------------------------ training pass
    def forward(self, clip: Tensor, *, diversity: bool = True) -> TrainingOutputs:
        self._check_clip(clip)
        c, batch, device = self.config, clip.shape[0], clip.device
        glance = self.glance(clip)
        glance_state, glance_exit_logits = self.classifier.glance_logits(glance.features)

        frame_weights = self.frame_logits(glance).softmax(-1) if c.frame_policy == "learned" else None
        frame_indices = self.select_frames(frame_weights, batch, device)

        cells = self.glance_cells(glance) if self.uses_cell_proxy or self.uses_local_cells else None
        actions, glance_actions = self.patch_actions(glance, frame_indices, cells)
        boxes = self.boxes(actions)
        if c.policy_gradient == "feature_proxy":
            boxes = boxes.detach()  # stop-gradient: the task loss does not reach the policy
        passes = [boxes]
        if diversity:
            # One random box per clip when the local encoder mixes frames (TSM, X3D: neighbours share a view).
            steps = 1 if c.spatial_per_clip else c.num_focus
            random_actions = self.baseline_actions(batch, steps, "random", device).expand(-1, c.num_focus, -1)
            passes.append(self.boxes(random_actions))
        local = self.focus(clip, frame_indices.repeat(len(passes), 1), torch.cat(passes),
                           samples=torch.arange(batch, device=device).repeat(len(passes)))
        focus_exit_logits = self.classifier.focus_logits(local, glance_state.repeat(len(passes), 1))
        # TSM / X3D: exit 0 is the glance auxiliary head (trained by its own CE), so only the fused exit is here.
        exit_logits = (focus_exit_logits if c.classifier == "tsn"
                       else torch.cat([glance_exit_logits.repeat(len(passes), 1, 1), focus_exit_logits], dim=1))

        proxy_logits = proxy_cell_logits = None
        cell_scores = cells.scores if cells is not None else None
        cell_frames = None
        if self.uses_local_cells:
            proxy_cell_logits, cell_scores, cell_frames = self.local_cell_logits(clip, glance, cells)
        elif cells is not None:
            proxy_logits, proxy_cell_logits = self.cell_proxy(glance, cells)
        elif self.proxy_head is not None:
            proxy_logits = self.proxy_logits(glance, glance_actions)
        return TrainingOutputs(
            exit_logits=exit_logits.unflatten(0, (len(passes), batch)),
            glance_frame_logits=self.glance_head(glance.features),
            local_patch_logits=self.local_head(local).unflatten(0, (len(passes), batch)),
            frame_weights=frame_weights,
            glance_actions=glance_actions,
            proxy_logits=proxy_logits,
            frame_indices=frame_indices,
            boxes=boxes,
            num_candidates=c.num_candidates,
            proxy_cell_logits=proxy_cell_logits,
            cell_scores=cell_scores,
            cell_frames=cell_frames,
        )

    # ----------------------------------------------------------------------------------- inference
    def optimize_for_inference(self) -> UniAdaFocus:
        """Fold batch norms, use channels-last and, on CPU, cache-sized encoder calls in both encoders (see
        Backbone.optimize_for_inference). Inference only; call after loading weights and moving the model."""
        self.eval()
        micro_batch = cpu_micro_batch(self.pixel_mean.device)
        self.glance_encoder.optimize_for_inference(micro_batch)
        self.local_encoder.optimize_for_inference(micro_batch)
        return self

    @torch.no_grad()
    def infer(self, clip: Tensor, exit_policy: ExitPolicy | None = None, *,
              view_boxes: Tensor | None = None) -> FocusResult:
        """Batched early-exit inference. Without ``exit_policy`` every sample runs to the last exit.

        Samples whose exit score passes the threshold leave the batch, so later steps run on fewer
        samples. ``view_boxes [B, 4]`` (source pixels shown by each frame) maps boxes back to the source.
        """
        self._check_clip(clip)
        c, batch, device = self.config, clip.shape[0], clip.device
        num_exits = c.num_exits
        if exit_policy is not None and len(exit_policy.thresholds) != num_exits:
            raise ValueError(f"exit policy has {len(exit_policy.thresholds)} thresholds, model has {num_exits} exits")

        logits = torch.full((batch, num_exits, c.num_classes), float("nan"), device=device)
        exit_index = torch.full((batch,), num_exits - 1, dtype=torch.long, device=device)
        frame_indices = torch.full((batch, c.num_focus), -1, dtype=torch.long, device=device)
        boxes = torch.full((batch, c.num_focus, 4), float("nan"), device=device)

        glance = self.glance(clip)
        glance_state, glance_logits = self.classifier.glance_logits(glance.features, all_steps=False)
        logits[:, 0] = self.glance_exit(glance) if c.classifier == "tsn" else glance_logits[:, 0]
        frame_weights = (self.frame_logits(glance).softmax(-1) if c.frame_policy == "learned"
                         else torch.full((batch, c.num_glance), 1.0 / c.num_glance, device=device))

        keep = self._continuing(glance_logits[:, 0], 0, exit_policy)
        exit_index[~keep] = 0
        active = torch.arange(batch, device=device)[keep]
        if active.numel():
            sub = glance if active.numel() == batch else Glance(glance.feature_maps[active], glance.features[active],
                                                                glance.positions[active])
            chosen = self.select_frames(frame_weights[active], active.numel(), device)
            frame_indices[active], boxes[active] = chosen, self.boxes(self.patch_actions(sub, chosen)[0])

        # Without exits to take (TSN heads, or no policy) all patches go through the encoder in one batch.
        if active.numel() and (c.classifier == "tsn" or exit_policy is None):
            local = self.focus(clip, frame_indices[active], boxes[active], samples=active)
            focus_logits = self.classifier.focus_logits(local, glance_state[active])
            logits[active, 1:] = focus_logits
            exit_index[active] = num_exits - 1
            active = active[:0]
        local_state, step = None, 0
        while c.classifier == "max_pool" and step < c.num_focus and active.numel():
            # Encode the next few patches of every remaining clip in one call (see focus_lookahead); the
            # exits are still decided patch by patch, so results do not depend on the lookahead.
            ahead = focus_lookahead(active.numel(), c.num_focus - step, self.local_encoder.micro_batch)
            features = self.focus(clip, frame_indices[active, step:step + ahead], boxes[active, step:step + ahead],
                                  samples=active)
            rows = torch.arange(active.numel(), device=device)
            for offset in range(ahead):
                local_state, step_logits = self.classifier.focus_step(step, features[rows, offset], local_state,
                                                                      glance_state[active])
                logits[active, step + 1] = step_logits
                keep = self._continuing(step_logits, step + 1, exit_policy)
                exit_index[active[~keep]] = step + 1
                active, local_state, rows = active[keep], local_state[keep], rows[keep]
                step += 1
                if not active.numel():
                    break

        patches_seen = exit_index * c.num_focus if c.classifier == "tsn" else exit_index
        processed = torch.arange(c.num_focus, device=device)[None] < patches_seen[:, None]
        frame_indices = frame_indices.masked_fill(~processed, -1)
        boxes = boxes.masked_fill(~processed[..., None], float("nan"))
        if view_boxes is None:
            view_boxes = torch.tensor([0.0, 0.0, c.frame_size, c.frame_size], device=device).expand(batch, 4)
        costs = torch.tensor(self.exit_costs(), device=device)
        return FocusResult(logits=logits, exit_index=exit_index, gmacs=costs[exit_index],
                           frame_indices=frame_indices, boxes=boxes,
                           source_boxes=boxes_to_source_pixels(boxes, view_boxes.to(boxes.dtype)),
                           frame_weights=frame_weights)

    def _continuing(self, step_logits: Tensor, exit_k: int, exit_policy: ExitPolicy | None) -> Tensor:
        """Mask of the samples that go on past exit ``exit_k`` (all but the last exit without a policy)."""
        last = exit_k == self.config.num_exits - 1
        if exit_policy is None or last:
            return torch.full((step_logits.shape[0],), not last, dtype=torch.bool, device=step_logits.device)
        return ~exit_policy.should_exit(step_logits, exit_k)

    # --------------------------------------------------------------------------------------- costs
    def component_costs(self) -> dict[str, float]:
        """GMACs per sample of each component, measured by the FLOP counter at the configured sizes."""
        c, device = self.config, self.pixel_mean.device
        glance_dim, local_dim = self.glance_encoder.feature_dim, self.local_encoder.feature_dim
        map_h, map_w = self.glance_map_size
        channels = encoder_in_channels(self.glance_encoder)
        patches = torch.zeros(1, encoder_in_channels(self.local_encoder), c.patch_size, c.patch_size, device=device)
        with eval_mode(self):
            costs = {
                "glance_encoder": count_gmacs(self.glance_encoder,
                                              torch.zeros(c.num_glance, channels, self.glance_size, self.glance_size,
                                                          device=device)),
                "classifier_glance": count_gmacs(
                    lambda x: self.classifier.glance_logits(x, all_steps=False),
                    torch.zeros(1, c.num_glance, glance_dim, device=device)),
            }
            if c.classifier == "tsn":  # the local encoder and the fused head run once, on all T' patches
                costs["local_encoder"] = count_gmacs(self.local_encoder.pooled,
                                                     patches.expand(c.num_focus, -1, -1, -1))
                costs["classifier_focus"] = count_gmacs(
                    self.classifier.focus_logits, torch.zeros(1, c.num_focus, local_dim, device=device),
                    torch.zeros(1, c.num_classes, device=device))
            else:
                hidden = self.classifier.glance_embedding[0].out_features
                costs["local_encoder_per_patch"] = count_gmacs(self.local_encoder.pooled, patches)
                costs["classifier_per_patch"] = count_gmacs(
                    lambda f, g: self.classifier.focus_step(0, f, None, g),
                    torch.zeros(1, local_dim, device=device), torch.zeros(1, hidden, device=device))
            if self.spatial_policy is not None:
                costs["spatial_policy"] = count_gmacs(
                    self.spatial_policy, torch.zeros(1, c.num_glance, glance_dim, map_h, map_w, device=device))
            if self.temporal_policy is not None:
                costs["temporal_policy"] = count_gmacs(
                    self.temporal_policy, torch.zeros(1, c.num_glance, glance_dim, device=device))
        return costs

    def exit_costs(self) -> list[float]:
        """GMACs per sample of stopping at each exit; policies are paid once the first patch is needed."""
        if self._exit_costs is None:
            parts = self.component_costs()
            glance_only = parts["glance_encoder"] + parts["classifier_glance"]
            policies = parts.get("spatial_policy", 0.0) + parts.get("temporal_policy", 0.0)
            if self.config.classifier == "tsn":
                self._exit_costs = [glance_only,
                                    glance_only + policies + parts["local_encoder"] + parts["classifier_focus"]]
            else:
                per_patch = parts["local_encoder_per_patch"] + parts["classifier_per_patch"]
                self._exit_costs = [glance_only] + [glance_only + policies + k * per_patch
                                                    for k in range(1, self.config.num_focus + 1)]
        return list(self._exit_costs)


def focus_lookahead(active: int, steps_left: int, micro_batch: int | None) -> int:
    """Patches per remaining clip to encode in one local-encoder call during early-exit inference.

    With few clips left, one patch each is too small a batch to run efficiently on a CPU (ResNet-50 at
    128, one thread: 26 ms per image in batches of 4, 28 in batches of 15, 18 in batches of 16), so enough
    patches are encoded at once to fill ``micro_batch`` (at most the patches left), at the price of
    encoding patches that a clip exiting within the lookahead never uses. Without a micro-batch
    (accelerators) the lookahead is one patch: nothing is computed in vain.
    """
    if micro_batch is None or active >= micro_batch:
        return 1
    return max(1, min(steps_left, -(-micro_batch // active)))


def full_precision(like: Tensor):
    """Autocast off on ``like``'s device: the policies, their proxy and the MC temporal step run in float32
    under mixed precision, as in the authors' code (only the encoders run in half precision there)."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def encoder_in_channels(encoder: nn.Module) -> int:
    first_conv = next(m for m in encoder.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d)))
    return first_conv.in_channels

