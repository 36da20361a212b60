"""The two policy networks: where to look in each frame (spatial) and which frames to look at (temporal).

Both read the glance encoder's outputs *detached*: they are trained by their own proxy losses
(see ``objective.py``), never through the patches they choose (Uni-AdaFocus's stop-gradient).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class SpatialPolicy(nn.Module):
    """Glance feature maps ``[B, T, C, h, w]`` -> actions in (0,1)^4 per frame ``[B, T, 4]``.

    With ``per_clip=True`` the last convolution spans all T frames and one action ``[B, 1, 4]`` is shared by
    the whole clip (needed when the local encoder mixes information over time, e.g. TSM / X3D).
    """

    def __init__(self, in_channels: int, map_size: tuple[int, int], num_frames: int, *, hidden: int = 128,
                 per_clip: bool = False):
        super().__init__()
        self.per_clip = per_clip
        time_kernel = num_frames if per_clip else 1
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, hidden, kernel_size=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, hidden, kernel_size=3, padding=1, bias=False), nn.BatchNorm3d(hidden), nn.ReLU(inplace=True),
            nn.Conv3d(hidden, 4, kernel_size=(time_kernel, *map_size), bias=False),
        )

    def forward(self, feature_maps: Tensor) -> Tensor:
        x = feature_maps.transpose(1, 2)  # [B, C, T, h, w]
        actions = torch.sigmoid(self.body(x))  # [B, 4, T or 1, 1, 1]
        return actions.flatten(2).transpose(1, 2)


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
