"""Backbone interface and registry: every feature extractor behind one interface.

A Backbone maps images [N, C, H, W] to its last feature map [N, D, h, w] (before global pooling and
classifier), and knows D (`feature_dim`), its total `stride` and its default ImageNet weights.
New backbones need only a factory decorated with `@register_backbone("name")` returning a Backbone.

Torchvision-derived backbones keep torchvision's module definitions, so official checkpoints load
strictly: `adapt_checkpoint` drops the classifier keys and renames the checkpoint's feature prefix
(e.g. MobileNetV2's "features.") to this wrapper's "body.".
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from adafocus.core.weights import WeightsError, load_pretrained
from torch import nn

BODY_PREFIX = "body."


CPU_MICRO_BATCH = 16


def cpu_micro_batch(device: torch.device | str) -> int | None:
    """Images per encoder call for inference on ``device``: 16 on CPU (larger batches fall out of cache and
    get slower per image), unlimited on accelerators (which want large batches)."""
    return CPU_MICRO_BATCH if torch.device(device).type == "cpu" else None


def chunk_sizes(total: int, micro_batch: int | None, frames_per_clip: int = 1) -> list[int]:
    """How to split an encoder batch of ``total`` images: as few near-equal chunks as keep every chunk at
    least ``micro_batch`` images (one chunk when ``total`` is smaller or ``micro_batch`` is None), each a
    whole number of clips of ``frames_per_clip`` frames so that clip backbones never see a clip cut in two.

    Equal chunks rather than ``micro_batch``-sized ones plus a remainder: on one CPU thread PyTorch runs 1x1
    convolutions of fewer than 16 images with a slower kernel (ResNet-50 at 128: 27.9 ms per image in a
    batch of 15, 17.7 in a batch of 16), so a small remainder would cost more than its share.
    """
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
    if total % frames_per_clip:
        raise ValueError(f"a batch of {total} images is not a whole number of {frames_per_clip}-frame clips")
    clips = total // frames_per_clip
    clips_per_chunk = 1 if micro_batch is None else max(1, -(-micro_batch // frames_per_clip))
    count = 1 if micro_batch is None else max(1, clips // clips_per_chunk)
    base, extra = divmod(clips, count)
    return [(base + (i < extra)) * frames_per_clip for i in range(count)]


def encoder_input(encoder: Backbone, frames: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Frames ``[M, C, H, W]`` in [0, 1] -> what ``encoder`` takes: grey frames repeated to the channels of
    ``mean`` / ``std`` (``[1, C, 1, 1]``), then ``(frames - mean) / std`` unless the encoder's body does that
    itself (``Backbone.normalizes_input``)."""
    if frames.shape[1] == 1 and mean.shape[1] > 1:
        frames = frames.expand(-1, mean.shape[1], -1, -1)
    if encoder.normalizes_input:
        return frames
    return (frames - mean).div_(std)  # in place: one copy of the frames, not two


class Backbone(nn.Module):
    """A feature extractor: forward(x [N, C, H, W]) -> feature map [N, D, h, w].

    Args:
        body: the module producing the final feature map.
        name: registry name.
        feature_dim: D, channels of the feature map.
        stride: input pixels per feature-map cell along each side.
        checkpoint_prefix: prefix of the body's keys in the reference (e.g. torchvision) checkpoint;
            "" when the body's keys are top-level there.
        head_prefixes: key prefixes of reference-checkpoint parts that are not in the body (classifier).
        imagenet_weights: torchvision weights name that pretrained="imagenet" stands for, if any.

    ``frames_per_clip`` (default 1) is the number of consecutive frames a clip backbone (TSM, X3D) mixes
    over: its input batch is then ``[B * frames_per_clip, C, H, W]``, each clip's frames contiguous.
    """

    def __init__(
        self,
        body: nn.Module,
        *,
        name: str,
        feature_dim: int,
        stride: int,
        checkpoint_prefix: str = "",
        head_prefixes: tuple[str, ...] = (),
        imagenet_weights: str | None = None,
    ) -> None:
        super().__init__()
        self.body = body
        self.name = name
        self.feature_dim = feature_dim
        self.stride = stride
        self.checkpoint_prefix = checkpoint_prefix
        self.head_prefixes = head_prefixes
        self.imagenet_weights = imagenet_weights
        self.frames_per_clip = 1
        self.channels_last = False
        self.micro_batch: int | None = None

    @property
    def normalizes_input(self) -> bool:
        """Whether the body takes frames in [0, 1] and normalises them itself (an inference engine's graph
        with the normalisation in front, see core.engine) rather than normalised frames."""
        return bool(getattr(self.body, "normalizes_input", False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> feature map [N, feature_dim, ~H / stride, ~W / stride] (convs round)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sizes = [x.shape[0]] if self.training else chunk_sizes(x.shape[0], self.micro_batch, self.frames_per_clip)
        if len(sizes) == 1:
            return self.body(x)
        return torch.cat([self.body(part) for part in x.split(sizes)])

    def optimize_for_inference(self, micro_batch: int | None = None) -> Backbone:
        """Fold batch norms into the convolutions (torch.fx), switch to channels-last memory, and run
        inputs of at least twice ``micro_batch`` images in chunks of ``micro_batch`` or a little more.

        Measured on a 2-core CPU, the two together made MobileNetV2 at 224 about 3x and ResNet-50 1.7x
        faster; neither helps alone as much. Chunks keep activations in cache: with one thread MobileNetV2
        at 224 took 14.9 ms per image in a batch of 64 and 9.5 ms in batches of 16, ResNet-50 at 128 24.8
        vs 17.0 ms (see `cpu_micro_batch`, `chunk_sizes`). Inference only: the folded body cannot train and
        its state dict no longer matches checkpoints, so call it after loading weights. Bodies that torch.fx cannot
        trace (forward hooks such as TSM's shift, X3D's control flow) keep their batch norms, and 3D bodies
        (X3D) keep their memory layout.
        """
        from torch.fx.experimental.optimization import fuse

        self.eval()
        if not any(module._forward_pre_hooks or module._forward_hooks for module in self.body.modules()):
            try:
                self.body = fuse(self.body)
            except torch.fx.proxy.TraceError:  # data-dependent control flow (e.g. X3D): keep the batch norms
                pass
        if all(parameter.dim() != 5 for parameter in self.body.parameters()):  # 3D bodies keep their layout
            self.body = self.body.to(memory_format=torch.channels_last)
            self.channels_last = True
        self.micro_batch = micro_batch
        return self

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> globally average-pooled features [N, feature_dim]."""
        return torch.flatten(self.forward(x), start_dim=2).mean(dim=2)

    def adapt_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map a checkpoint's keys onto this module's.

        Accepts this wrapper's own layout ("body.*", e.g. a saved fine-tuned backbone) unchanged, or the
        reference model's layout: head keys are dropped, every other key must carry `checkpoint_prefix`.
        """
        if all(key.startswith(BODY_PREFIX) for key in state):
            return state
        adapted = {}
        for key, value in state.items():
            if key.startswith(self.head_prefixes):
                continue
            if not key.startswith(self.checkpoint_prefix):
                raise WeightsError(
                    f"checkpoint key {key!r} is neither under {self.checkpoint_prefix!r} nor a head key "
                    f"{self.head_prefixes} of the {self.name} reference model; "
                    f"is this a {self.name} checkpoint?"
                )
            adapted[BODY_PREFIX + key[len(self.checkpoint_prefix):]] = value
        return adapted

    def extra_repr(self) -> str:
        return f"name={self.name!r}, feature_dim={self.feature_dim}, stride={self.stride}"


BackboneFactory = Callable[..., Backbone]
_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator registering a factory `(**kwargs) -> Backbone` under `name`."""

    def decorate(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(_REGISTRY)


def create_backbone(
    name: str, *, pretrained: str | None = None, allow_download: bool = False, **kwargs
) -> Backbone:
    """Build backbone `name` (kwargs go to its factory) and optionally load weights.

    Args:
        pretrained: a weights spec for `adafocus.core.weights.load_pretrained`: "imagenet", a torchvision
            weights name, or a checkpoint path. None keeps the random initialisation.
        allow_download: let load_pretrained fetch torchvision weights missing from the hub cache.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown backbone {name!r}; known backbones: {', '.join(list_backbones())}")
    backbone = _REGISTRY[name](**kwargs)
    if pretrained is not None:
        load_pretrained(backbone, pretrained, allow_download=allow_download)
    return backbone
