"""The static baseline the paper compares against (its "TSM+"): the same global and local encoders run on
every glance frame at full resolution, features concatenated and averaged over time, one linear head.
It is what Uni-AdaFocus saves compute against, so `adafocus bench speed` measures both side by side."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from adafocus.core.backbones import cpu_micro_batch, create_backbone, encoder_input
from adafocus.core.config import ModelConfig
from adafocus.core.flops import count_gmacs, eval_mode
from adafocus.core.sampling import gather_frames, uniform_frames
from torch import Tensor, nn


class StaticBaseline(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.glance_encoder = create_backbone(c.glance_backbone, **dict(c.glance_backbone_kwargs))
        self.local_encoder = create_backbone(c.local_backbone, **dict(c.local_backbone_kwargs))
        self.head = nn.Linear(self.glance_encoder.feature_dim + self.local_encoder.feature_dim, c.num_classes)
        self.register_buffer("pixel_mean", torch.tensor(c.normalize_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.normalize_std).view(1, -1, 1, 1), persistent=False)

    def forward(self, clip: Tensor) -> Tensor:
        """``clip [B, N, C, H, W]`` in [0, 1] -> logits ``[B, classes]`` from the T_g evenly spread frames."""
        c, batch = self.config, clip.shape[0]
        positions = uniform_frames(batch, c.num_glance, c.num_candidates, random_offsets=False, device=clip.device)
        frames = gather_frames(clip, positions).flatten(0, 1)
        glance_frames = frames
        if c.glance_size and c.glance_size != c.frame_size:
            glance_frames = F.interpolate(frames, size=(c.glance_size, c.glance_size), mode="area")
        features = torch.cat([self.glance_encoder.pooled(self.encoder_input(self.glance_encoder, glance_frames)),
                              self.local_encoder.pooled(self.encoder_input(self.local_encoder, frames))], dim=1)
        return self.head(features.reshape(batch, c.num_glance, -1).mean(dim=1))

    def encoder_input(self, encoder: nn.Module, frames: Tensor) -> Tensor:
        return encoder_input(encoder, frames, self.pixel_mean, self.pixel_std)

    def optimize_for_inference(self) -> StaticBaseline:
        """The same encoder optimisation Uni-AdaFocus gets, so speed comparisons stay fair."""
        self.eval()
        micro_batch = cpu_micro_batch(self.pixel_mean.device)
        self.glance_encoder.optimize_for_inference(micro_batch)
        self.local_encoder.optimize_for_inference(micro_batch)
        return self

    def gmacs(self) -> float:
        """GMACs per video, measured by the FLOP counter."""
        c = self.config
        with eval_mode(self):
            return count_gmacs(self, torch.zeros(1, c.num_candidates, 3, c.frame_size, c.frame_size,
                                                 device=self.pixel_mean.device))
