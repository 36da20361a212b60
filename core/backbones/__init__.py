"""Backbones: one interface (`base.Backbone`), one registry, three families.

`create_backbone("name", ...)` builds any registered backbone; importing this package registers the image
backbones (`image`: MobileNetV2, ResNet-50/18, a tiny CNN) and the clip backbones built on them (`tsm`:
temporal-shift wrappers; `x3d`: the authors' X3D). A new family is a module whose factories carry
`@register_backbone("name")`, imported here.
"""
from adafocus.core.backbones import image, tsm, x3d  # noqa: F401  (registers every family)
from adafocus.core.backbones.base import (
    BODY_PREFIX,
    CPU_MICRO_BATCH,
    Backbone,
    chunk_sizes,
    cpu_micro_batch,
    create_backbone,
    encoder_input,
    list_backbones,
    register_backbone,
)
from adafocus.core.backbones.image import mobilenet_v2, resnet18, resnet50, tiny_cnn, tiny_cnn_channels

__all__ = [
    "BODY_PREFIX",
    "CPU_MICRO_BATCH",
    "Backbone",
    "chunk_sizes",
    "cpu_micro_batch",
    "create_backbone",
    "encoder_input",
    "list_backbones",
    "mobilenet_v2",
    "register_backbone",
    "resnet18",
    "resnet50",
    "tiny_cnn",
    "tiny_cnn_channels",
]
