"""The authors' released checkpoints (LeapLabTHU/Uni-AdaFocus) as models of this package.

Their checkpoints are ``{'state_dict': ...}`` saved from DistributedDataParallel (keys prefixed ``module.``).
Three layouts, one per experiment folder of their repository:

- ``ua-a``: MobileNetV2 (the tonylins layout, not torchvision's) + ResNet-50 (torchvision layout), per-frame
  spatial policy, accumulated max-pooling classifier (``classifier.global_mlp`` / ``global_classifiers``);
- ``tsm``: TSN wrappers (``global_CNN.base_model``, ``new_fc`` = the detached prediction head, ``new_new_fc`` =
  the per-frame head that trains the backbone) around TSM MobileNetV2 / ResNet-50 (temporal shift wrapped as
  ``<conv>.net``), one spatial action per clip;
- ``x3d``: SlowFast X3D-S / X3D-L (``s1.pathway0_stem``, ``s<k>.pathway0_res<i>.branch2.{a,b,c,se}``,
  ``head.{conv_5, lin_5, projection}``) plus the per-frame copies of the head (``global_CNN_head``).

Facts the mapping relies on (read from their code, written fresh here):
- their spatial action is (y, x, h, w) and ours (x, y, w, h): the policy's last convolution has its four output
  rows swapped pairwise;
- tonylins MobileNetV2 blocks are one flat Sequential (conv, bn, relu6, conv, bn, relu6, conv, bn), torchvision's
  nest the first two conv-bn-relu triples;
- X3D's ``lin_5`` is a 1x1x1 Conv3d on the pooled map, i.e. a bias-free Linear.

``import_official`` returns the model and a report naming every checkpoint tensor that was not used and every
tensor of ours that was not filled; the checkpoint's ImageNet classifier (UA-A ``global_CNN.classifier``,
``local_CNN.fc``), unused by the authors' forward, is listed as ``unused``.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from adafocus.core.backbones.x3d import slowfast_x3d_key
from adafocus.core.config import Preset, get_preset
from adafocus.core.model import UniAdaFocus
from torch import Tensor

VARIANTS = ("ua-a", "tsm", "x3d")
# Their action (y, x, h, w) -> ours (x, y, w, h): output row i of ours is their row ACTION_ROWS[i].
ACTION_ROWS = (1, 0, 3, 2)
OPTIONAL_SUFFIX = "num_batches_tracked"  # BN step counters: not used in eval, absent from some checkpoints


class OfficialCheckpointError(ValueError):
    """The file is not one of the authors' checkpoints, or does not fit; the message says why (one line)."""


@dataclass
class ImportReport:
    variant: str
    loaded: int = 0
    unused: list[str] = field(default_factory=list)     # known: not used by the authors' forward either
    unmapped: list[str] = field(default_factory=list)   # checkpoint keys with no place in our model
    unfilled: list[str] = field(default_factory=list)   # our tensors the checkpoint did not provide

    @property
    def complete(self) -> bool:
        return not self.unmapped and not self.unfilled

    def problems(self) -> str:
        def head(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" ... (+{len(keys) - 8})" if len(keys) > 8 else "")
        parts = [f"{len(self.unmapped)} checkpoint tensors unused: {head(self.unmapped)}"] if self.unmapped else []
        if self.unfilled:
            parts.append(f"{len(self.unfilled)} model tensors not filled: {head(self.unfilled)}")
        return "; ".join(parts)


# ------------------------------------------------------------------------------------------- key names
def strip_ddp_prefix(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {key.removeprefix("module."): value for key, value in state.items()}


def tonylins_mobilenet_key(key: str) -> str:
    """``features.<i>.conv.<j>.<p>`` of the tonylins MobileNetV2 -> torchvision's nesting (other keys kept)."""
    match = re.fullmatch(r"features\.(\d+)\.conv\.(\d+)\.(.+)", key)
    if match is None:
        return key
    block, index, rest = int(match[1]), int(match[2]), match[3]
    # expand ratio 1 (block 1): dw conv, bn, [relu], pw conv, bn; else pw, bn, [relu], dw, bn, [relu], pw, bn
    table = {0: "0.0", 1: "0.1", 3: "1", 4: "2"} if block == 1 else \
        {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"}
    if index not in table:
        raise OfficialCheckpointError(f"unexpected MobileNetV2 key {key!r} (not the tonylins layout)")
    return f"features.{block}.conv.{table[index]}.{rest}"


def mobilenet_body_key(key: str) -> str | None:
    """Their MobileNetV2 ``features.*`` key -> our glance body key (the body is torchvision's ``features``)."""
    return tonylins_mobilenet_key(key).removeprefix("features.") if key.startswith("features.") else None


def _common_key(key: str) -> str | None:
    """Policies, shared by the three layouts."""
    for theirs, ours in (("spatial_policy.encoder.", "spatial_policy.body."),
                         ("temporal_policy.Tconv.", "temporal_policy.body.")):
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return None


def ua_a_key(key: str) -> str | None:
    """UA-A checkpoint key -> our key; "" for the known-unused ImageNet classifiers; None when unknown."""
    if key.startswith(("global_CNN.classifier.", "local_CNN.fc.")):
        return ""
    if key.startswith("global_CNN."):
        body = mobilenet_body_key(key.removeprefix("global_CNN."))
        return None if body is None else "glance_encoder.body." + body
    if key.startswith("local_CNN."):
        return "local_encoder.body." + key.removeprefix("local_CNN.")
    rules = (("global_CNN_fc.", "glance_head."), ("local_CNN_fc.", "local_head."), ("aux_fc.", "proxy_head."),
             ("classifier.global_mlp.layers.", "classifier.glance_embedding."),
             ("classifier.local_mlp.layers.", "classifier.local_embedding."),
             ("classifier.global_classifiers.", "classifier.glance_heads."),
             ("classifier.local_classifiers.", "classifier.focus_heads."))
    for theirs, ours in rules:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return _common_key(key)


def tsm_key(key: str) -> str | None:
    key = key.replace(".net.", ".")  # the temporal shift wraps a conv as `.net`
    for cnn, role in (("global_CNN.", "glance"), ("local_CNN.", "local")):
        if key.startswith(cnn + "base_model."):
            body = key.removeprefix(cnn + "base_model.")
            body = mobilenet_body_key(body) if role == "glance" else body
            return None if body is None else f"{role}_encoder.body.{body}"
        if key.startswith(cnn + "new_fc."):
            return f"classifier.{role}_head.1." + key.removeprefix(cnn + "new_fc.")
        if key.startswith(cnn + "new_new_fc."):
            return f"{role}_head.1." + key.removeprefix(cnn + "new_new_fc.")
    if key.startswith("aux_fc."):
        return "proxy_head." + key.removeprefix("aux_fc.")
    return _common_key(key)


def x3d_key(key: str) -> str | None:
    for cnn, role in (("global_CNN.", "glance"), ("local_CNN.", "local")):
        if key.startswith(cnn + "head.lin_5."):
            return f"classifier.{role}_head.0." + key.removeprefix(cnn + "head.lin_5.")
        if key.startswith(cnn + "head.projection."):
            return f"classifier.{role}_head.3." + key.removeprefix(cnn + "head.projection.")
        if key.startswith(cnn):
            body = slowfast_x3d_key(key.removeprefix(cnn))
            return None if body is None else f"{role}_encoder.body.{body}"
        if key.startswith(f"{cnn[:-1]}_head."):  # global_CNN_head.{0,3}: the per-frame copies of the head
            return f"{role}_head." + key.removeprefix(f"{cnn[:-1]}_head.")
    if key.startswith("aux_head.0."):
        return "proxy_head." + key.removeprefix("aux_head.0.")
    return _common_key(key)


KEY_MAPS: dict[str, Callable[[str], str | None]] = {"ua-a": ua_a_key, "tsm": tsm_key, "x3d": x3d_key}


def convert_tensor(our_key: str, value: Tensor, target: Tensor) -> Tensor:
    """Layout changes: the spatial action order, X3D's 1x1x1 ``lin_5`` conv as a linear weight."""
    if our_key.startswith("spatial_policy.body.") and value.dim() == 5 and value.shape[0] == 4:
        value = value[list(ACTION_ROWS)]
    if value.dim() == 5 and target.dim() == 2:
        value = value.flatten(1)
    return value


# ------------------------------------------------------------------------------------------ detection
def detect_variant(state: dict[str, Tensor]) -> str:
    if any(key.startswith("classifier.global_mlp.") for key in state):
        return "ua-a"
    if any(key.startswith("global_CNN.base_model.") for key in state):
        return "tsm"
    if any(key.startswith("global_CNN.s1.") for key in state):
        return "x3d"
    raise OfficialCheckpointError("not an Uni-AdaFocus checkpoint: found none of the UA-A (classifier.global_mlp), "
                                  "TSM (global_CNN.base_model) or X3D (global_CNN.s1) keys")


def _count(state: dict[str, Tensor], pattern: str) -> int:
    return len({m[1] for key in state if (m := re.fullmatch(pattern, key))})


def _x3d_name(state: dict[str, Tensor], cnn: str) -> str:
    """X3D-S or X3D-L, from the number of blocks in stage 4 (11 and 25)."""
    blocks = _count(state, rf"{cnn}\.s4\.pathway0_res(\d+)\..+")
    names = {11: "x3d_s", 25: "x3d_l"}
    if blocks not in names:
        raise OfficialCheckpointError(f"{cnn} has {blocks} blocks in stage 4: neither X3D-S (11) nor X3D-L (25)")
    return names[blocks]


def official_preset(state: dict[str, Tensor], variant: str, *, patch_size: int = 128,
                    num_focus: int | None = None, num_candidates: int | None = None) -> Preset:
    """Our preset for an authors' checkpoint: sizes read from its tensors, the rest from their README commands
    (P, and for TSM/X3D the focus frames T', are not in the weights; N defaults to 3 T' as in all their runs)."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in state:
            raise OfficialCheckpointError(f"a {variant} checkpoint needs {key!r}; is --variant right?")
        return tuple(state[key].shape)

    spatial = shape("spatial_policy.encoder.9.weight")
    common = {"spatial_hidden": spatial[1], "temporal_hidden": shape("temporal_policy.Tconv.0.weight")[0],
              "patch_size": patch_size, "glance_pretrained": None, "local_pretrained": None}
    if variant == "ua-a":
        num_glance = _count(state, r"classifier\.global_classifiers\.(\d+)\..+")
        num_focus = _count(state, r"classifier\.local_classifiers\.(\d+)\..+")
        preset = get_preset("paper-mbv2-r50", num_classes=shape("global_CNN_fc.1.weight")[0],
                            num_glance=num_glance, num_focus=num_focus,
                            num_candidates=num_candidates or 3 * num_glance,
                            classifier_hidden=shape("classifier.global_mlp.layers.0.weight")[0], **common)
    elif variant == "tsm":
        num_glance, num_focus = spatial[2], num_focus or 12
        preset = get_preset("tsm-p128-8x12", num_classes=shape("global_CNN.new_fc.weight")[0],
                            num_glance=num_glance, num_focus=num_focus, num_candidates=num_candidates or 3 * num_focus,
                            glance_backbone_kwargs={"num_frames": num_glance},
                            local_backbone_kwargs={"num_frames": num_focus}, **common)
    else:
        num_glance, num_focus = spatial[2], num_focus or 32
        preset = get_preset("x3d-p128-16x32", num_classes=shape("global_CNN.head.projection.weight")[0],
                            num_glance=num_glance, num_focus=num_focus, num_candidates=num_candidates or 3 * num_focus,
                            glance_backbone=_x3d_name(state, "global_CNN"),
                            local_backbone=_x3d_name(state, "local_CNN"),
                            glance_backbone_kwargs={"num_frames": num_glance},
                            local_backbone_kwargs={"num_frames": num_focus},
                            head_hidden=shape("global_CNN.head.lin_5.weight")[0], **common)
    preset.model = dataclasses.replace(preset.model)  # re-validate the overrides
    return preset


# ---------------------------------------------------------------------------------------------- import
def map_state_dict(state: dict[str, Tensor], variant: str, own: dict[str, Tensor]
                   ) -> tuple[dict[str, Tensor], ImportReport]:
    """The authors' tensors under our names (converted), and what did not fit either way."""
    report, mapped, key_map = ImportReport(variant), {}, KEY_MAPS[variant]
    for key, value in state.items():
        ours = key_map(key)
        if ours == "":
            report.unused.append(key)
        elif ours is None or ours not in own:
            report.unmapped.append(key)
        else:
            value = convert_tensor(ours, value, own[ours])
            if tuple(value.shape) != tuple(own[ours].shape):
                report.unmapped.append(f"{key} (shape {tuple(value.shape)}, ours {tuple(own[ours].shape)})")
            else:
                mapped[ours] = value.to(own[ours].dtype)
    report.unfilled = [key for key in own if key not in mapped and not key.endswith(OPTIONAL_SUFFIX)]
    report.loaded = len(mapped)
    return mapped, report


def import_official(checkpoint: dict, variant: str = "auto", *, patch_size: int = 128,
                    num_focus: int | None = None, num_candidates: int | None = None
                    ) -> tuple[UniAdaFocus, Preset, ImportReport]:
    """Build our model from a loaded authors' checkpoint (``torch.load`` of their ``.pth.tar``)."""
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, Tensor) for v in state.values()):
        raise OfficialCheckpointError("the file holds no state dict ({'state_dict': {name: tensor}})")
    state = strip_ddp_prefix(state)
    if variant == "auto":
        variant = detect_variant(state)
    if variant not in VARIANTS:
        raise OfficialCheckpointError(f"variant {variant!r}; choose auto or one of {', '.join(VARIANTS)}")
    preset = official_preset(state, variant, patch_size=patch_size, num_focus=num_focus,
                             num_candidates=num_candidates)
    model = UniAdaFocus(preset.model)
    own = model.state_dict()
    mapped, report = map_state_dict(state, variant, own)
    with torch.no_grad():
        for key, value in mapped.items():
            own[key].copy_(value)
    return model.eval(), preset, report
