"""Temporal Shift Module (TSM) backbones: 2D CNNs that exchange information between neighbouring frames.

A clip of T frames enters as ``[B*T, C, H, W]`` (each clip's frames contiguous). In every residual block the
input of the residual branch is shifted along time: 1/shift_div of the channels come from the next frame,
1/shift_div from the previous one (zero-padded at the clip ends), the rest stay ("blockres" placement,
shift_div 8, as in the official Uni-AdaFocus-TSM recipe). The identity path is not shifted.

The shift is attached as a forward pre-hook on the first module of each residual branch, so the module tree
and its state-dict keys stay exactly torchvision's and ImageNet checkpoints load strictly. The shift has no
multiply-accumulates, so the backbones cost what the plain 2D networks cost.
"""
from __future__ import annotations

from adafocus.core.backbones.base import Backbone, register_backbone
from adafocus.core.backbones.image import mobilenet_v2, resnet50
from torch import Tensor, nn


def temporal_shift(x: Tensor, num_frames: int, shift_div: int = 8) -> Tensor:
    """Shift 2 * C/shift_div channels of ``x [B*T, C, H, W]`` by one frame (one fold each way) along T."""
    if x.shape[0] % num_frames:
        raise ValueError(f"a TSM backbone built for {num_frames} frames per clip got a batch of {x.shape[0]} "
                         f"frames; feed whole clips ([B*{num_frames}, C, H, W])")
    batch_frames, channels = x.shape[:2]
    clips = x.reshape(batch_frames // num_frames, num_frames, *x.shape[1:])
    fold = channels // shift_div
    out = clips.clone()
    out[:, :-1, :fold] = clips[:, 1:, :fold]                      # channels taken from the next frame
    out[:, -1, :fold] = 0
    out[:, 1:, fold:2 * fold] = clips[:, :-1, fold:2 * fold]      # channels taken from the previous frame
    out[:, 0, fold:2 * fold] = 0
    return out.reshape(x.shape)


class TemporalShift:
    """Forward pre-hook that applies ``temporal_shift`` to a module's input (picklable, no parameters)."""

    def __init__(self, num_frames: int, shift_div: int = 8):
        if num_frames < 1 or shift_div < 2:
            raise ValueError(f"need num_frames >= 1 and shift_div >= 2, got {num_frames}, {shift_div}")
        self.num_frames, self.shift_div = num_frames, shift_div

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        return (temporal_shift(args[0], self.num_frames, self.shift_div), *args[1:])


def _with_shift(backbone: Backbone, branch_inputs: list[nn.Module], name: str, num_frames: int,
                shift_div: int) -> Backbone:
    if not branch_inputs:
        raise RuntimeError(f"{name}: found no residual branch to shift")  # the torchvision layout changed
    for module in branch_inputs:
        module.register_forward_pre_hook(TemporalShift(num_frames, shift_div))
    backbone.name, backbone.frames_per_clip = name, num_frames
    return backbone


@register_backbone("mobilenet_v2_tsm")
def mobilenet_v2_tsm(num_frames: int = 8, shift_div: int = 8) -> Backbone:
    """MobileNetV2 with a temporal shift before every inverted residual block that has a skip connection.

    Input ``[B*num_frames, 3, H, W]``; D=1280, stride 32; ImageNet weights as plain MobileNetV2.
    """
    backbone = mobilenet_v2()
    branches = [block.conv for block in backbone.body if getattr(block, "use_res_connect", False)]
    return _with_shift(backbone, branches, "mobilenet_v2_tsm", num_frames, shift_div)


@register_backbone("resnet50_tsm")
def resnet50_tsm(num_frames: int = 8, shift_div: int = 8) -> Backbone:
    """ResNet-50 with a temporal shift before conv1 of every bottleneck's residual branch.

    Input ``[B*num_frames, 3, H, W]``; D=2048, stride 32; ImageNet weights as plain ResNet-50.
    """
    backbone = resnet50()
    branches = [block.conv1 for name in ("layer1", "layer2", "layer3", "layer4")
                for block in getattr(backbone.body, name)]
    return _with_shift(backbone, branches, "resnet50_tsm", num_frames, shift_div)
