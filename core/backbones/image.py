"""Image backbones: torchvision MobileNetV2 / ResNet-50 / ResNet-18 definitions (official weights load
strictly) and a tiny CNN for CPU tests. Each registers itself with `adafocus.core.backbones.base`."""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from adafocus.core._torchvision_compat import install_torchvision_shim
from adafocus.core.backbones.base import Backbone, register_backbone
from adafocus.core.weights import MOBILENET_V2_IMAGENET
from torch import nn


def _torchvision_models():
    install_torchvision_shim()
    import torchvision.models

    return torchvision.models


_MOBILENET_V2_BLOCKS = 19
_MOBILENET_V2_DOWNSAMPLING_BLOCKS = (0, 2, 4, 7, 14)  # the stride-2 blocks of `.features`


@register_backbone("mobilenet_v2")
def mobilenet_v2(blocks: int = _MOBILENET_V2_BLOCKS) -> Backbone:
    """torchvision MobileNetV2 (width 1.0) `.features`: D=1280, stride 32.

    blocks < 19 keeps only the first `blocks` modules of `.features` (their ImageNet weights still load),
    for small inputs: e.g. 7 blocks give D=32 at stride 8, 14 blocks D=96 at stride 16."""
    if not 1 <= blocks <= _MOBILENET_V2_BLOCKS:
        raise ValueError(f"mobilenet_v2 has {_MOBILENET_V2_BLOCKS} feature blocks; blocks={blocks}")
    model = _torchvision_models().mobilenet_v2()
    body = model.features[:blocks]
    with torch.no_grad():
        feature_dim = model.last_channel if blocks == _MOBILENET_V2_BLOCKS else int(body(torch.zeros(1, 3, 32, 32)).shape[1])
    return Backbone(
        body,
        name="mobilenet_v2",
        feature_dim=feature_dim,
        stride=2 ** sum(block < blocks for block in _MOBILENET_V2_DOWNSAMPLING_BLOCKS),
        checkpoint_prefix="features.",
        head_prefixes=("classifier.", *(f"features.{i}." for i in range(blocks, _MOBILENET_V2_BLOCKS))),
        imagenet_weights=MOBILENET_V2_IMAGENET,
    )


def _resnet_body(model: nn.Module) -> nn.Sequential:
    """A torchvision ResNet without avgpool/fc, keeping torchvision's child names (so keys match)."""
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    return nn.Sequential(OrderedDict((child, getattr(model, child)) for child in names))


def _resnet_backbone(name: str, model: nn.Module, imagenet_weights: str) -> Backbone:
    return Backbone(
        _resnet_body(model),
        name=name,
        feature_dim=model.fc.in_features,
        stride=32,
        head_prefixes=("fc.",),
        imagenet_weights=imagenet_weights,
    )


@register_backbone("resnet50")
def resnet50() -> Backbone:
    """torchvision ResNet-50 without avgpool/fc: D=2048, stride 32."""
    return _resnet_backbone("resnet50", _torchvision_models().resnet50(), "ResNet50_Weights.IMAGENET1K_V1")


@register_backbone("resnet18")
def resnet18() -> Backbone:
    """torchvision ResNet-18 without avgpool/fc: D=512, stride 32."""
    return _resnet_backbone("resnet18", _torchvision_models().resnet18(), "ResNet18_Weights.IMAGENET1K_V1")


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def tiny_cnn_channels(width: int, num_blocks: int) -> list[int]:
    """Channels per block: `width` doubling each block, capped at 4 * width."""
    return [min(width * 2**index, 4 * width) for index in range(num_blocks)]


@register_backbone("tiny_cnn")
def tiny_cnn(width: int = 32, strides: tuple[int, ...] = (1, 2, 2, 2), in_chans: int = 3) -> Backbone:
    """A small CPU-friendly CNN: one conv3x3-BN-ReLU block per entry of `strides`, no pooling.

    With strides[0] == 1 the first block sees full resolution, so period-2 pixel patterns survive.
    D = 4 * width for three or more blocks; stride = product of `strides`.
    """
    if width < 1 or in_chans < 1 or not strides or any(s < 1 for s in strides):
        raise ValueError(f"tiny_cnn needs width >= 1, in_chans >= 1 and positive strides; got "
                         f"width={width}, in_chans={in_chans}, strides={strides}")
    channels = tiny_cnn_channels(width, len(strides))
    blocks = [
        _conv_bn_relu(c_in, c_out, stride)
        for c_in, c_out, stride in zip([in_chans, *channels[:-1]], channels, strides, strict=True)
    ]
    return Backbone(
        nn.Sequential(*blocks), name="tiny_cnn", feature_dim=channels[-1], stride=math.prod(strides)
    )
