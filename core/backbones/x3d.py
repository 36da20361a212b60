"""X3D (Feichtenhofer, CVPR 2020) as a clip backbone: X3D-S and X3D-L, written from the paper's design.

Stem: a 1x3x3 conv (stride 2 in space) then a depth-wise 5x1x1 temporal conv. Four stages of bottleneck
blocks (1x1x1 expand -> depth-wise 3x3x3 -> squeeze-excitation on every other block -> swish -> 1x1x1
project), widths 24/48/96/192 with inner width 2.25x, the first block of each stage at spatial stride 2,
no temporal stride; base depths 1/2/5/3 times the depth factor (2.2 for X3D-S, 5.0 for X3D-L). A final
1x1x1 conv to 432 channels ("conv5") gives the feature map the Uni-AdaFocus-X3D policies and heads read.

Same interface as the 2D backbones: input ``[B*T, C, H, W]`` (each clip's T frames contiguous), output
``[B*T, 432, H/32, W/32]`` (time is kept, so per-frame maps stay available).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from adafocus.core.backbones.base import BODY_PREFIX, Backbone, register_backbone
from adafocus.core.weights import WeightsError
from torch import Tensor, nn

STAGE_WIDTHS = (24, 48, 96, 192)
BASE_DEPTHS = (1, 2, 5, 3)
BOTTLENECK_FACTOR = 2.25
CONV5_WIDTH = 432
SE_RATIO = 0.0625


def round_width(width: float, multiplier: float, divisor: int = 8) -> int:
    """``width * multiplier`` rounded to a multiple of ``divisor`` (never below divisor, nor 10% under)."""
    scaled = width * multiplier
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def _conv_bn(c_in: int, c_out: int, kernel, stride=1, padding=0, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(c_in, c_out, kernel, stride=stride, padding=padding, groups=groups, bias=False),
                         nn.BatchNorm3d(c_out))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        hidden = round_width(channels, SE_RATIO)
        self.reduce, self.expand = nn.Conv3d(channels, hidden, 1), nn.Conv3d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        scale = self.expand(F.relu(self.reduce(x.mean(dim=(2, 3, 4), keepdim=True))))
        return x * torch.sigmoid(scale)


class X3DBlock(nn.Module):
    def __init__(self, c_in: int, c_inner: int, c_out: int, spatial_stride: int, squeeze_excite: bool):
        super().__init__()
        stride = (1, spatial_stride, spatial_stride)
        self.branch = nn.Sequential(
            _conv_bn(c_in, c_inner, 1), nn.ReLU(inplace=True),
            _conv_bn(c_inner, c_inner, 3, stride=stride, padding=1, groups=c_inner),
            SqueezeExcite(c_inner) if squeeze_excite else nn.Identity(), nn.SiLU(inplace=True),
            _conv_bn(c_inner, c_out, 1))
        nn.init.zeros_(self.branch[-1][1].weight)  # each block starts as (nearly) the identity
        self.shortcut = (_conv_bn(c_in, c_out, 1, stride=stride)
                         if c_in != c_out or spatial_stride != 1 else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.shortcut(x) + self.branch(x))


class X3DBody(nn.Module):
    """``[B*T, C, H, W]`` -> ``[B*T, 432, H/32, W/32]`` for clips of ``num_frames`` frames."""

    def __init__(self, depth_factor: float, num_frames: int, in_chans: int = 3):
        super().__init__()
        self.num_frames = num_frames
        stem_width = STAGE_WIDTHS[0]
        self.stem = nn.Sequential(
            nn.Conv3d(in_chans, stem_width, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(stem_width, stem_width, (5, 1, 1), padding=(2, 0, 0), groups=stem_width, bias=False),
            nn.BatchNorm3d(stem_width), nn.ReLU(inplace=True))
        stages, c_in = [], stem_width
        for width, base_depth in zip(STAGE_WIDTHS, BASE_DEPTHS, strict=True):
            inner = int(BOTTLENECK_FACTOR * width)
            blocks = [X3DBlock(c_in if i == 0 else width, inner, width, 2 if i == 0 else 1, squeeze_excite=i % 2 == 0)
                      for i in range(math.ceil(depth_factor * base_depth))]
            stages.append(nn.Sequential(*blocks))
            c_in = width
        self.stages = nn.Sequential(*stages)
        self.conv5 = nn.Sequential(_conv_bn(c_in, CONV5_WIDTH, 1), nn.ReLU(inplace=True))

    def forward(self, x: Tensor) -> Tensor:
        frames, channels, height, width = x.shape
        if frames % self.num_frames:
            raise ValueError(f"an X3D backbone built for {self.num_frames} frames per clip got a batch of {frames} "
                             f"frames; feed whole clips ([B*{self.num_frames}, C, H, W])")
        video = x.reshape(frames // self.num_frames, self.num_frames, channels, height, width).transpose(1, 2)
        maps = self.conv5(self.stages(self.stem(video)))           # [B, D, T, h, w]
        return maps.transpose(1, 2).flatten(0, 1)


# SlowFast's names (the layout of the X3D-S / X3D-L Kinetics-400 files the authors start from) -> ours.
_SLOWFAST_STEM = {"conv_xy": "stem.0", "conv": "stem.1", "bn": "stem.2"}
_SLOWFAST_BLOCK = {"branch1": "shortcut.0", "branch1_bn": "shortcut.1", "branch2.a": "branch.0.0",
                   "branch2.a_bn": "branch.0.1", "branch2.b": "branch.2.0", "branch2.b_bn": "branch.2.1",
                   "branch2.se.fc1": "branch.3.reduce", "branch2.se.fc2": "branch.3.expand",
                   "branch2.c": "branch.5.0", "branch2.c_bn": "branch.5.1"}
_SLOWFAST_CONV5 = {"conv_5": "conv5.0.0", "conv_5_bn": "conv5.0.1"}
SLOWFAST_HEAD_KEYS = ("head.lin_5.", "head.projection.")  # X3D's classifier, not part of the body


def slowfast_x3d_key(key: str) -> str | None:
    """A SlowFast X3D key (``s1.pathway0_stem.conv_xy.weight``, ``s3.pathway0_res2.branch2.se.fc1.bias``,
    ``head.conv_5.weight``) -> the X3DBody key; None for the head's classifier and for unknown keys."""
    module, _, param = key.rpartition(".")
    if match := re.fullmatch(r"s1\.pathway0_stem\.(\w+)", module):
        ours = _SLOWFAST_STEM.get(match[1])
    elif match := re.fullmatch(r"s([2-5])\.pathway0_res(\d+)\.([\w.]+)", module):
        inner = _SLOWFAST_BLOCK.get(match[3])
        ours = None if inner is None else f"stages.{int(match[1]) - 2}.{match[2]}.{inner}"
    elif match := re.fullmatch(r"head\.(\w+)", module):
        ours = _SLOWFAST_CONV5.get(match[1])
    else:
        ours = None
    return None if ours is None else f"{ours}.{param}"


class X3DBackbone(Backbone):
    def adapt_checkpoint(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Our own layout unchanged, or a SlowFast X3D checkpoint (``x3d_s.pyth``: ``{"model_state": ...}``,
        unwrapped by the weights loader) mapped onto the body, its classifier dropped."""
        if all(key.startswith(BODY_PREFIX) for key in state):
            return state
        adapted = {}
        for key, value in state.items():
            if key.startswith(SLOWFAST_HEAD_KEYS):
                continue
            ours = slowfast_x3d_key(key)
            if ours is None:
                raise WeightsError(f"checkpoint key {key!r} is not a SlowFast X3D key; is this an X3D checkpoint?")
            adapted[BODY_PREFIX + ours] = value
        return adapted


def share_pretrained_head(spec: str, *heads: nn.Sequential) -> bool:
    """The authors' ``share_head_params``: copy a SlowFast X3D file's head (``lin_5``, a 1x1x1 conv, as the
    first Linear; ``projection`` as the last when the class count matches) into each X3D-layout head
    (Linear-ReLU-Dropout-Linear). False when ``spec`` is not such a file (e.g. "imagenet")."""
    from adafocus.core.weights import resolve_state_dict

    try:
        state = resolve_state_dict(spec)
    except WeightsError:
        return False
    if "head.lin_5.weight" not in state:
        return False
    with torch.no_grad():
        for head in heads:
            head[0].weight.copy_(state["head.lin_5.weight"].flatten(1))
            if tuple(state["head.projection.weight"].shape) == tuple(head[3].weight.shape):
                head[3].weight.copy_(state["head.projection.weight"])
                head[3].bias.copy_(state["head.projection.bias"])
    return True


def _x3d(name: str, depth_factor: float, num_frames: int, in_chans: int) -> Backbone:
    backbone = X3DBackbone(X3DBody(depth_factor, num_frames, in_chans), name=name, feature_dim=CONV5_WIDTH,
                           stride=32)
    backbone.frames_per_clip = num_frames
    return backbone


@register_backbone("x3d_s")
def x3d_s(num_frames: int = 16, in_chans: int = 3) -> Backbone:
    """X3D-S (depth factor 2.2; the paper's glance encoder: 16 frames at 160 x 160). D=432, stride 32."""
    return _x3d("x3d_s", 2.2, num_frames, in_chans)


@register_backbone("x3d_l")
def x3d_l(num_frames: int = 32, in_chans: int = 3) -> Backbone:
    """X3D-L (depth factor 5.0; the paper's local encoder: 32 patches of 128 x 128). D=432, stride 32."""
    return _x3d("x3d_l", 5.0, num_frames, in_chans)
