"""The two policy networks: where to look in each frame (spatial) and which frames to look at (temporal).

Both read the glance encoder's outputs *detached*: they are trained by their own proxy losses
(see ``objective.py``), never through the patches they choose (Uni-AdaFocus's stop-gradient).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialPolicy(nn.Module):
    """Glance feature maps ``[B, T, C, h, w]`` -> actions in (0,1)^4 per frame ``[B, T, 4]``.

    Three convolutions, then one of two heads:
    - ``"dense"`` (the authors'): a last convolution spanning the whole map regresses the four actions;
    - ``"soft_argmax"``: a 1x1 convolution scores every map cell; the position is the softmax-weighted mean of
      the cell coordinates (first cell -> 0, last -> 1) and the two scales come from the softmax-weighted
      features. A cell is scored the same wherever it lies, so what is learned about an object at one place
      holds everywhere in the frame; the dense head has to learn each place separately, which needs far more
      clips than a small dataset has (the MRI focus proof in the README).

    With ``per_clip=True`` (dense head only) the last convolution spans all T frames and one action
    ``[B, 1, 4]`` is shared by the whole clip (needed when the local encoder mixes information over time,
    e.g. TSM / X3D).
    """

    def __init__(self, in_channels: int, map_size: tuple[int, int], num_frames: int, *, hidden: int = 128,
                 per_clip: bool = False, head: str = "dense"):
        super().__init__()
        if head not in ("dense", "soft_argmax"):
            raise ValueError(f"spatial policy head must be 'dense' or 'soft_argmax', got {head!r}")
        if head == "soft_argmax" and per_clip:
            raise ValueError("the soft_argmax spatial head places one box per frame; per_clip needs 'dense'")
        self.per_clip, self.head = per_clip, head
        trunk = [
            nn.Conv3d(in_channels, hidden, kernel_size=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True),
        ]
        if head == "dense":
            time_kernel = num_frames if per_clip else 1
            self.body = nn.Sequential(*trunk, nn.Conv3d(hidden, 4, kernel_size=(time_kernel, *map_size), bias=False))
        else:
            self.body = nn.Sequential(*trunk)
            self.cell_score = nn.Conv3d(hidden, 1, kernel_size=1)
            self.scale = nn.Linear(hidden, 2)
            rows, cols = (torch.linspace(0.0, 1.0, n) if n > 1 else torch.full((1,), 0.5) for n in map_size)
            grid = torch.stack(torch.meshgrid(cols, rows, indexing="xy"), dim=-1)  # [h, w, 2] as (x, y)
            self.register_buffer("cell_positions", grid.reshape(-1, 2), persistent=False)

    def forward(self, feature_maps: Tensor) -> Tensor:
        x = self.body(feature_maps.transpose(1, 2))  # [B, C, T, h, w]
        if self.head == "dense":
            return torch.sigmoid(x).flatten(2).transpose(1, 2)  # [B, 4, T or 1, 1, 1] -> [B, T or 1, 4]
        weights = self.cell_score(x).flatten(3).softmax(-1)[:, 0]  # [B, T, h*w]
        position = weights @ self.cell_positions  # [B, T, 2]
        pooled = torch.einsum("btn,bctn->btc", weights, x.flatten(3))
        return torch.cat([position, torch.sigmoid(self.scale(pooled))], dim=-1)


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
