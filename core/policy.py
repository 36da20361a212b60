"""The two policy networks: where to look in each frame (spatial) and which frames to look at (temporal).

Both read the glance encoder's outputs *detached*: they are trained by their own proxy losses
(see ``objective.py``), never through the patches they choose (Uni-AdaFocus's stop-gradient).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from adafocus.core.geometry import glance_brackets, position_for_centre, sides_from_scales
from torch import Tensor, nn

INITIAL_LOG_SHARPNESS = 1.5  # soft_argmax head: see SpatialPolicy.__init__


@dataclass
class CellChoice:
    """The soft_argmax head's choice in each frame: ``scores [B, T, h*w]`` over the glance map's cells, their
    softmax ``weights`` (which weight the cell centres into the box centre) and the box ``scales [B, T, 2]``
    in (0, 1)."""
    scores: Tensor
    weights: Tensor
    scales: Tensor


class SpatialPolicy(nn.Module):
    """Glance feature maps ``[B, T, C, h, w]`` -> actions in (0,1)^4 per frame ``[B, T, 4]``.

    Three convolutions (1 x 1, then two that span ``context`` x ``context`` cells and 3 frames), then one of two
    heads:
    - ``"dense"`` (the authors'): a last convolution spanning the whole map regresses the four actions;
    - ``"soft_argmax"``: a 1x1 convolution scores every map cell; the box is centred on the softmax-weighted
      mean of the cell centres ((i + 0.5) / n of the frame), and its two scales come from the softmax-weighted
      features. A cell is scored the same wherever it lies, so what is learned about an object at one place
      holds everywhere in the frame; the dense head has to learn each place separately, which needs far more
      clips than a small dataset has (the MRI focus proof, docs/notes/mri-focus-history.md). The head needs the box side range
      (``side_range``, fractions of the frame) to turn the centre into the action's position.

    ``context`` (default 3, the authors'): a cell's score reads glance features up to ``context // 2 * 2`` cells
    away, so the policy can learn to point beside the evidence; at 1 it scores each cell from its own features
    (docs/notes/mri-focus-history.md, "Where the fixed offset comes from").

    ``window`` (soft_argmax only; default None, all cells): in eval mode the box centre is the softmax-weighted
    mean of the cell centres in the ``window`` x ``window`` cells around the best-scoring cell (window_weights).
    Over all cells, the little weight that every far cell keeps pulls each box towards the frame centre: on the
    MRI lesion task the boxes moved only 0.45x as far as the lesion did. Training keeps all cells: trained with
    the window, the boxes held the lesion no more often (docs/notes/mri-focus-history.md, "A finer glance map"). With a window, the
    chosen frames between glance frames are decoded from their blended cell weights (``peak_actions_at``).

    The soft_argmax head's forward is ``actions(cells(maps))``: the cell proxy (model.cell_proxy) needs the cell
    scores themselves, and ``cell_actions`` gives the box of the chosen size centred on every cell.

    With ``per_clip=True`` (dense head only) the last convolution spans all T frames and one action
    ``[B, 1, 4]`` is shared by the whole clip (needed when the local encoder mixes information over time,
    e.g. TSM / X3D).
    """

    def __init__(self, in_channels: int, map_size: tuple[int, int], num_frames: int, *, hidden: int = 128,
                 per_clip: bool = False, head: str = "dense", side_range: tuple[float, float] | None = None,
                 context: int = 3, window: int | None = None):
        super().__init__()
        if head not in ("dense", "soft_argmax"):
            raise ValueError(f"spatial policy head must be 'dense' or 'soft_argmax', got {head!r}")
        if head == "soft_argmax" and per_clip:
            raise ValueError("the soft_argmax spatial head places one box per frame; per_clip needs 'dense'")
        if head == "soft_argmax" and side_range is None:
            raise ValueError("the soft_argmax spatial head needs side_range (min, max box side, fractions of the frame)")
        if context < 1 or context % 2 == 0:
            raise ValueError(f"spatial policy context must be an odd number of cells, got {context}")
        if window is not None and (head != "soft_argmax" or window < 1 or window % 2 == 0):
            raise ValueError(f"spatial policy window must be an odd number of cells, for the soft_argmax head; got {window}")
        self.per_clip, self.head, self.side_range, self.map_size, self.window = per_clip, head, side_range, map_size, window
        kernel, padding = (3, context, context), (1, context // 2, context // 2)
        trunk = [
            nn.Conv3d(in_channels, hidden, kernel_size=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, kernel_size=kernel, padding=padding, bias=False), nn.BatchNorm3d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, kernel_size=kernel, padding=padding, bias=False), nn.BatchNorm3d(hidden),
            nn.ReLU(inplace=True),
        ]
        if head == "dense":
            time_kernel = num_frames if per_clip else 1
            self.body = nn.Sequential(*trunk, nn.Conv3d(hidden, 4, kernel_size=(time_kernel, *map_size), bias=False))
        else:
            self.body = nn.Sequential(*trunk)
            self.cell_score = nn.Conv3d(hidden, 1, kernel_size=1)
            # Cell scores are multiplied by a learned sharpness, started at e^1.5 (about 4.5). With plain scores
            # the softmax over cells stays nearly flat early on and pulls every box towards the frame centre: on
            # the MRI lesion task the boxes then held the lesion on 0.47 of lesion slices and the accuracy stayed
            # at the random-selection baseline's (seed 0); started sharper, 0.89 and +17 points (docs/notes/mri-focus-history.md, "Does
            # the MRI focus find the lesion?", which also lists the seeds that fall short).
            self.log_sharpness = nn.Parameter(torch.tensor(INITIAL_LOG_SHARPNESS))
            self.scale = nn.Linear(hidden, 2)
            rows, cols = ((torch.arange(n) + 0.5) / n for n in map_size)  # cell centres, fractions of the frame
            grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)  # [h, w, 2] as (x, y)
            self.register_buffer("cell_positions", grid.reshape(-1, 2), persistent=False)

    def forward(self, feature_maps: Tensor) -> Tensor:
        if self.head == "soft_argmax":
            return self.actions(self.cells(feature_maps))
        x = self.body(feature_maps.transpose(1, 2))  # [B, C, T, h, w]
        return torch.sigmoid(x).flatten(2).transpose(1, 2)  # [B, 4, T or 1, 1, 1] -> [B, T or 1, 4]

    def cells(self, feature_maps: Tensor) -> CellChoice:
        """soft_argmax head: the cell scores and the box scales of every frame (see CellChoice)."""
        if self.head != "soft_argmax":
            raise ValueError("cell scores exist only for the soft_argmax head")
        x = self.body(feature_maps.transpose(1, 2))  # [B, C, T, h, w]
        scores = (self.cell_score(x) * self.log_sharpness.exp()).flatten(3)[:, 0]  # [B, T, h*w]
        weights = scores.softmax(-1)
        pooled = torch.einsum("btn,bctn->btc", weights, x.flatten(3))
        return CellChoice(scores=scores, weights=weights, scales=torch.sigmoid(self.scale(pooled)))

    def actions(self, choice: CellChoice) -> Tensor:
        """Actions ``[B, T, 4]``: the box centred on the softmax-weighted mean of the cell centres (in eval mode,
        of those in the window around the best cell, when the policy has a window)."""
        weights = window_weights(choice.scores, self.map_size, self.window) if self.decodes_peak else choice.weights
        centre = weights @ self.cell_positions  # [B, T, 2] as (x, y)
        return torch.cat([self._position(centre, choice.scales), choice.scales], dim=-1)

    @property
    def decodes_peak(self) -> bool:
        """Whether boxes are decoded at the peak now (a window, in eval mode)."""
        return self.window is not None and not self.training

    def peak_actions_at(self, choice: CellChoice, positions: Tensor, frames: Tensor) -> Tensor:
        """Eval-mode actions ``[B, T', 4]`` at chosen candidate ``frames [B, T']`` from the glance frames at
        ``positions [B, T_g]``: each chosen frame's cell weights and scales are blended between the glance frames
        around it (``glance_brackets``; a glanced frame keeps its own), and its box is decoded at the blend's peak
        (``window_weights``). Blending the actions instead (``UniAdaFocus.actions_at``, the authors') puts the box
        of a frame between a glance frame that shows the object and one that does not between the two peaks, on
        neither: on the MRI lesion task that missed the lesion in 0.08-0.25 of lesion slices over six seeds, this
        in 0.01-0.05 (docs/notes/mri-focus-history.md, "Boxes for the slices between glance frames")."""
        left, right, t = glance_brackets(positions, frames)
        values = torch.cat([choice.weights, choice.scales], dim=-1)  # [B, T_g, h*w + 2]
        blended = (values.take_along_dim(left[..., None], dim=1) * (1 - t[..., None])
                   + values.take_along_dim(right[..., None], dim=1) * t[..., None])
        weights, scales = blended[..., :-2], blended[..., -2:]
        peak = window_weights(weights.clamp_min(torch.finfo(weights.dtype).tiny).log(), self.map_size, self.window)
        return torch.cat([self._position(peak @ self.cell_positions, scales), scales], dim=-1)

    def cell_actions(self, choice: CellChoice) -> Tensor:
        """Actions ``[B, T, h*w, 4]`` of a box of the chosen scales centred on every cell (the boxes the cell
        proxy scores; near the frame's edge a box is moved inside, so its centre is off the cell's)."""
        batch, frames, cells = choice.scores.shape
        centres = self.cell_positions.expand(batch, frames, cells, 2)
        scales = choice.scales[:, :, None].expand(batch, frames, cells, 2)
        return torch.cat([self._position(centres, scales), scales], dim=-1)

    def _position(self, centre: Tensor, scales: Tensor) -> Tensor:
        min_side, max_side = self.side_range
        return position_for_centre(centre, sides_from_scales(scales, min_side=min_side, max_side=max_side))


def window_weights(scores: Tensor, map_size: tuple[int, int], window: int) -> Tensor:
    """Softmax of cell ``scores [..., h*w]`` over only the ``window`` x ``window`` cells around the best-scoring
    cell (fewer at the map's edge); every other cell gets weight 0. Differentiable in the scores inside the
    window."""
    height, width = map_size
    best = scores.argmax(-1, keepdim=True)
    rows = torch.arange(height, device=scores.device).repeat_interleave(width)
    cols = torch.arange(width, device=scores.device).repeat(height)
    near = ((rows - best // width).abs() <= window // 2) & ((cols - best % width).abs() <= window // 2)
    return scores.masked_fill(~near, float("-inf")).softmax(-1)


class TemporalPolicy(nn.Module):
    """Per-frame glance vectors ``[B, T, D]`` -> frame logits ``[B, T]`` (softmax gives frame weights)."""

    def __init__(self, in_dim: int, *, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_dim, hidden, kernel_size=(3, 1), padding=(1, 0), bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, kernel_size=(3, 1), padding=(1, 0), bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1, bias=False),
        )

    def forward(self, frame_features: Tensor) -> Tensor:
        x = frame_features.transpose(1, 2).unsqueeze(-1)  # [B, D, T, 1]
        return self.body(x).flatten(1)
