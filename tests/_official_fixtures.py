"""Checkpoints in the authors' format (their key names and shapes, random values) and a reference evaluation
written from their documented computation (official-code.md, sections 2.1-2.5), reading *their* keys.

Nothing here uses adafocus' model code: the backbones run as plain functional convolutions over the
authors' tensors (ResNet-50 excepted: their layout is torchvision's, so torchvision's module runs it), the
frame selection follows their "first knot >= level" search, the boxes their (y, x, h, w) geometry.
"""
from __future__ import annotations

import math

from adafocus.core._torchvision_compat import install_torchvision_shim

install_torchvision_shim()  # before torchvision is imported below
import torch
import torch.nn.functional as F
import torchvision

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
# tonylins MobileNetV2: (expand t, channels c, repeats n, stride s)
MBV2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]


# ------------------------------------------------------------------------------------- random tensors
class RandomState:
    """An ordered {key: tensor} filled like a trained network that stays finite over 50+ blocks: fan-in
    scaled convolutions, BN statistics near the identity, residual branches ending in a small BN scale."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)
        self.state: dict[str, torch.Tensor] = {}

    def _uniform(self, shape, low, high):
        return low + (high - low) * torch.rand(shape, generator=self.gen)

    def weight(self, key: str, shape: tuple[int, ...], groups: int = 1):
        fan_in = math.prod(shape[1:])
        self.state[key] = torch.randn(shape, generator=self.gen) * math.sqrt(1.0 / fan_in)

    def bias(self, key: str, size: int):
        self.state[key] = 0.1 * torch.randn(size, generator=self.gen)

    def bn(self, prefix: str, size: int, *, last_in_branch: bool = False):
        scale = (0.05, 0.15) if last_in_branch else (0.7, 1.3)
        self.state[prefix + "weight"] = self._uniform((size,), *scale)
        self.state[prefix + "bias"] = 0.1 * torch.randn(size, generator=self.gen)
        self.state[prefix + "running_mean"] = 0.1 * torch.randn(size, generator=self.gen)
        self.state[prefix + "running_var"] = self._uniform((size,), 0.5, 1.5)
        self.state[prefix + "num_batches_tracked"] = torch.tensor(100)

    def linear(self, prefix: str, out_dim: int, in_dim: int, bias: bool = True):
        self.weight(prefix + "weight", (out_dim, in_dim))
        if bias:
            self.bias(prefix + "bias", out_dim)


def residual_mobilenet_blocks() -> list[int]:
    """Feature indices of the tonylins blocks with a skip connection (stride 1, same width, expand 6)."""
    blocks, index, c_in = [], 1, 32
    for t, c, n, s in MBV2_SETTING:
        for i in range(n):
            if t != 1 and (s if i == 0 else 1) == 1 and c_in == c:
                blocks.append(index)
            c_in, index = c, index + 1
    return blocks


def add_tonylins_mobilenet(r: RandomState, prefix: str, *, classifier: bool, shift: bool = False):
    """Their MobileNetV2: features.0 conv_bn, 17 InvertedResidual (flat `conv` Sequential), features.18 1x1."""
    r.weight(prefix + "features.0.0.weight", (32, 3, 3, 3))
    r.bn(prefix + "features.0.1.", 32)
    index, c_in, shifted = 1, 32, set(residual_mobilenet_blocks()) if shift else set()
    for t, c, n, s in MBV2_SETTING:
        for i in range(n):
            p, hidden = f"{prefix}features.{index}.conv.", c_in * t
            residual = (s if i == 0 else 1) == 1 and c_in == c
            if t == 1:
                r.weight(p + "0.weight", (hidden, 1, 3, 3))
                r.bn(p + "1.", hidden)
                r.weight(p + "3.weight", (c, hidden, 1, 1))
                r.bn(p + "4.", c)
            else:
                r.weight(p + ("0.net.weight" if index in shifted else "0.weight"), (hidden, c_in, 1, 1))
                r.bn(p + "1.", hidden)
                r.weight(p + "3.weight", (hidden, 1, 3, 3))
                r.bn(p + "4.", hidden)
                r.weight(p + "6.weight", (c, hidden, 1, 1))
                r.bn(p + "7.", c, last_in_branch=residual)
            index, c_in = index + 1, c
    r.weight(prefix + "features.18.0.weight", (1280, 320, 1, 1))
    r.bn(prefix + "features.18.1.", 1280)
    if classifier:
        r.linear(prefix + "classifier.", 1000, 1280)


def add_resnet50(r: RandomState, prefix: str, *, fc: bool, shift: bool = False):
    """torchvision's ResNet-50 layout (theirs); TSM wraps each bottleneck's conv1 as `conv1.net`."""
    for key, value in torchvision.models.resnet50().state_dict().items():
        if key.startswith("fc.") and not fc:
            continue
        name = key.replace(".conv1.", ".conv1.net.") if shift and key.startswith("layer") else key
        if key.endswith("num_batches_tracked"):
            continue
        if "bn" in key or "downsample.1" in key:
            if key.endswith(".weight"):
                r.bn(prefix + name[:-len("weight")], value.shape[0], last_in_branch=".bn3." in key)
        elif key.startswith("fc."):
            r.linear(prefix + "fc.", 1000, 2048) if key.endswith("weight") else None
        else:
            r.weight(prefix + name, tuple(value.shape))


def add_policies(r: RandomState, feature_dim: int, num_glance: int, map_size: int, *, per_clip: bool):
    h = 128
    r.weight("spatial_policy.encoder.0.weight", (h, feature_dim, 1, 1, 1))
    r.bn("spatial_policy.encoder.1.", h)
    r.weight("spatial_policy.encoder.3.weight", (h, h, 3, 3, 3))
    r.bn("spatial_policy.encoder.4.", h)
    r.weight("spatial_policy.encoder.6.weight", (h, h, 3, 3, 3))
    r.bn("spatial_policy.encoder.7.", h)
    r.weight("spatial_policy.encoder.9.weight", (4, h, num_glance if per_clip else 1, map_size, map_size))
    r.weight("temporal_policy.Tconv.0.weight", (64, feature_dim, 3, 1))
    r.bn("temporal_policy.Tconv.1.", 64)
    r.weight("temporal_policy.Tconv.3.weight", (64, 64, 3, 1))
    r.bn("temporal_policy.Tconv.4.", 64)
    r.weight("temporal_policy.Tconv.6.weight", (1, 64, 1, 1))
    # a visibly non-uniform frame policy, so that frame selection is tested
    r.state["temporal_policy.Tconv.6.weight"] *= 20


def ua_a_checkpoint(num_classes=5, num_glance=4, num_focus=4, seed=0) -> dict:
    r = RandomState(seed)
    add_tonylins_mobilenet(r, "global_CNN.", classifier=True)
    r.linear("global_CNN_fc.1.", num_classes, 1280)
    r.linear("aux_fc.", num_classes, 1280)
    add_resnet50(r, "local_CNN.", fc=True)
    r.linear("local_CNN_fc.1.", num_classes, 2048)
    add_policies(r, 1280, num_glance, 7, per_clip=False)
    r.linear("classifier.global_mlp.layers.0.", 4096, 1280)
    r.bn("classifier.global_mlp.layers.1.", 4096)
    r.linear("classifier.local_mlp.layers.0.", 4096, 2048)
    r.bn("classifier.local_mlp.layers.1.", 4096)
    for k in range(num_glance):
        r.linear(f"classifier.global_classifiers.{k}.1.", num_classes, 4096)
    for k in range(num_focus):
        r.linear(f"classifier.local_classifiers.{k}.1.", num_classes, 8192)
    return {"epoch": 50, "state_dict": {"module." + k: v for k, v in r.state.items()}}


def tsm_checkpoint(num_classes=5, num_glance=4, seed=0) -> dict:
    r = RandomState(seed)
    add_tonylins_mobilenet(r, "global_CNN.base_model.", classifier=False, shift=True)
    add_resnet50(r, "local_CNN.base_model.", fc=False, shift=True)
    for cnn, dim in (("global_CNN.", 1280), ("local_CNN.", 2048)):
        r.linear(cnn + "new_fc.", num_classes, dim)
        r.linear(cnn + "new_new_fc.", num_classes, dim)
    r.linear("aux_fc.", num_classes, 1280)
    add_policies(r, 1280, num_glance, 7, per_clip=True)
    return {"state_dict": {"module." + k: v for k, v in r.state.items()}}


X3D_SE_WIDTH = {54: 8, 108: 8, 216: 16, 432: 32}  # SlowFast round_width(inner, 1/16)
X3D_DEPTHS = {"s": (3, 5, 11, 7), "l": (5, 10, 25, 15)}


def add_slowfast_x3d(r: RandomState, prefix: str, size: str, num_classes: int):
    r.weight(prefix + "s1.pathway0_stem.conv_xy.weight", (24, 3, 1, 3, 3))
    r.weight(prefix + "s1.pathway0_stem.conv.weight", (24, 1, 5, 1, 1))
    r.bn(prefix + "s1.pathway0_stem.bn.", 24)
    c_in = 24
    for stage, (width, depth) in enumerate(zip((24, 48, 96, 192), X3D_DEPTHS[size]), start=2):
        inner = int(2.25 * width)
        for i in range(depth):
            p = f"{prefix}s{stage}.pathway0_res{i}."
            if i == 0:
                r.weight(p + "branch1.weight", (width, c_in, 1, 1, 1))
                r.bn(p + "branch1_bn.", width)
            r.weight(p + "branch2.a.weight", (inner, c_in if i == 0 else width, 1, 1, 1))
            r.bn(p + "branch2.a_bn.", inner)
            r.weight(p + "branch2.b.weight", (inner, 1, 3, 3, 3))
            r.bn(p + "branch2.b_bn.", inner)
            if i % 2 == 0:
                se = X3D_SE_WIDTH[inner]
                r.weight(p + "branch2.se.fc1.weight", (se, inner, 1, 1, 1))
                r.bias(p + "branch2.se.fc1.bias", se)
                r.weight(p + "branch2.se.fc2.weight", (inner, se, 1, 1, 1))
                r.bias(p + "branch2.se.fc2.bias", inner)
            r.weight(p + "branch2.c.weight", (width, inner, 1, 1, 1))
            r.bn(p + "branch2.c_bn.", width, last_in_branch=True)
        c_in = width
    r.weight(prefix + "head.conv_5.weight", (432, 192, 1, 1, 1))
    r.bn(prefix + "head.conv_5_bn.", 432)
    r.weight(prefix + "head.lin_5.weight", (2048, 432, 1, 1, 1))
    r.linear(prefix + "head.projection.", num_classes, 2048)


def x3d_checkpoint(num_classes=5, num_glance=4, seed=0) -> dict:
    r = RandomState(seed)
    add_slowfast_x3d(r, "global_CNN.", "s", num_classes)
    add_slowfast_x3d(r, "local_CNN.", "l", num_classes)
    for head in ("global_CNN_head.", "local_CNN_head."):
        r.linear(head + "0.", 2048, 432, bias=False)
        r.linear(head + "3.", num_classes, 2048)
    r.linear("aux_head.0.", num_classes, 432)
    add_policies(r, 432, num_glance, 5, per_clip=True)
    return {"state_dict": {"module." + k: v for k, v in r.state.items()}}


# ---------------------------------------------------------------------------------- reference forward
def bn(x, s, p):
    return F.batch_norm(x, s[p + "running_mean"], s[p + "running_var"], s[p + "weight"], s[p + "bias"],
                        training=False, eps=1e-5)


def tsm_shift(x, frames):
    """Their temporal shift: 1/8 of the channels from the next frame, 1/8 from the previous one, zero ends."""
    nt, c, h, w = x.shape
    x = x.view(nt // frames, frames, c, h, w)
    fold, out = c // 8, torch.zeros_like(x)
    out[:, :-1, :fold] = x[:, 1:, :fold]
    out[:, 1:, fold:2 * fold] = x[:, :-1, fold:2 * fold]
    out[:, :, 2 * fold:] = x[:, :, 2 * fold:]
    return out.view(nt, c, h, w)


def ref_mobilenet(s, p, x, shift_frames=None):
    """tonylins MobileNetV2 features (map before pooling); TSM shifts the input of residual branches."""
    x = F.relu6(bn(F.conv2d(x, s[p + "features.0.0.weight"], stride=2, padding=1), s, p + "features.0.1."))
    index, c_in = 1, 32
    for t, c, n, st in MBV2_SETTING:
        for i in range(n):
            q, stride = f"{p}features.{index}.conv.", st if i == 0 else 1
            residual = stride == 1 and c_in == c
            if t == 1:
                y = F.relu6(bn(F.conv2d(x, s[q + "0.weight"], stride=stride, padding=1, groups=c_in), s, q + "1."))
                y = bn(F.conv2d(y, s[q + "3.weight"]), s, q + "4.")
            else:
                key = q + "0.net.weight" if q + "0.net.weight" in s else q + "0.weight"
                y = tsm_shift(x, shift_frames) if residual and shift_frames else x
                y = F.relu6(bn(F.conv2d(y, s[key]), s, q + "1."))
                y = F.relu6(bn(F.conv2d(y, s[q + "3.weight"], stride=stride, padding=1, groups=c_in * t), s, q + "4."))
                y = bn(F.conv2d(y, s[q + "6.weight"]), s, q + "7.")
            x = x + y if residual else y
            index, c_in = index + 1, c
    return F.relu6(bn(F.conv2d(x, s[p + "features.18.0.weight"]), s, p + "features.18.1."))


def ref_resnet50(s, p, x, shift_frames=None):
    net = torchvision.models.resnet50()
    state = {k[len(p):].replace(".net.", "."): v for k, v in s.items() if k.startswith(p)}
    net.load_state_dict(state, strict=False)
    if shift_frames:
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            for block in layer:
                block.conv1.register_forward_pre_hook(lambda m, a: (tsm_shift(a[0], shift_frames),))
    net.eval()
    body = torch.nn.Sequential(*list(net.children())[:-2])
    return body(x)


def ref_x3d(s, p, x):
    """SlowFast X3D on a video [B, 3, T, H, W] up to conv_5 (+ BN + ReLU)."""
    x = F.conv3d(x, s[p + "s1.pathway0_stem.conv_xy.weight"], stride=(1, 2, 2), padding=(0, 1, 1))
    x = F.conv3d(x, s[p + "s1.pathway0_stem.conv.weight"], padding=(2, 0, 0), groups=x.shape[1])
    x = F.relu(bn(x, s, p + "s1.pathway0_stem.bn."))
    for stage in range(2, 6):
        i = 0
        while f"{p}s{stage}.pathway0_res{i}.branch2.a.weight" in s:
            q = f"{p}s{stage}.pathway0_res{i}."
            stride = (1, 2, 2) if i == 0 else 1
            y = F.relu(bn(F.conv3d(x, s[q + "branch2.a.weight"]), s, q + "branch2.a_bn."))
            y = bn(F.conv3d(y, s[q + "branch2.b.weight"], stride=stride, padding=1, groups=y.shape[1]),
                   s, q + "branch2.b_bn.")
            if q + "branch2.se.fc1.weight" in s:
                z = y.mean(dim=(2, 3, 4), keepdim=True)
                z = F.relu(F.conv3d(z, s[q + "branch2.se.fc1.weight"], s[q + "branch2.se.fc1.bias"]))
                y = y * torch.sigmoid(F.conv3d(z, s[q + "branch2.se.fc2.weight"], s[q + "branch2.se.fc2.bias"]))
            y = y * torch.sigmoid(y)  # swish
            y = bn(F.conv3d(y, s[q + "branch2.c.weight"]), s, q + "branch2.c_bn.")
            shortcut = (bn(F.conv3d(x, s[q + "branch1.weight"], stride=stride), s, q + "branch1_bn.")
                        if q + "branch1.weight" in s else x)
            x, i = F.relu(shortcut + y), i + 1
    return F.relu(bn(F.conv3d(x, s[p + "head.conv_5.weight"]), s, p + "head.conv_5_bn."))


def ref_spatial_policy(s, maps):
    """maps [B, C, T, h, w] -> sigmoid actions [B, 4, T or 1] in their order (y, x, h, w)."""
    x = maps
    for conv, norm, pad in (("0", "1", 0), ("3", "4", 1), ("6", "7", 1)):
        x = F.relu(bn(F.conv3d(x, s[f"spatial_policy.encoder.{conv}.weight"], padding=pad), s,
                      f"spatial_policy.encoder.{norm}."))
    return torch.sigmoid(F.conv3d(x, s["spatial_policy.encoder.9.weight"])).flatten(2)


def ref_frame_weights(s, features):
    """features [B, T, D] -> softmax weights [B, T]."""
    x = features.permute(0, 2, 1).unsqueeze(-1)
    x = F.relu(bn(F.conv2d(x, s["temporal_policy.Tconv.0.weight"], padding=(1, 0)), s, "temporal_policy.Tconv.1."))
    x = F.relu(bn(F.conv2d(x, s["temporal_policy.Tconv.3.weight"], padding=(1, 0)), s, "temporal_policy.Tconv.4."))
    return F.conv2d(x, s["temporal_policy.Tconv.6.weight"]).flatten(1).softmax(-1)


def ref_quantile_indices(w, num_candidates, num_select, *, clamp_bracket: bool):
    """Their test-time selection: CDF knots (leading 0, last forced to 1), levels (k + 0.5) / T', the first
    knot >= level gives the bracket, linear inversion, floor(q N), pushed strictly increasing, capped."""
    b, t = w.shape
    cdf = torch.cat([torch.zeros(b, 1), w.cumsum(1)], 1)
    cdf[:, -1] = 1.0
    out = torch.zeros(b, num_select, dtype=torch.long)
    for row in range(b):
        for k in range(num_select):
            u = (k + 0.5) / num_select
            j = int(torch.nonzero(cdf[row] >= u)[0])
            j = min(max(j, 1), t) - 1 if clamp_bracket else j - 1
            x1, x2, y1, y2 = j / t, (j + 1) / t, cdf[row, j], cdf[row, j + 1]
            q = (x2 * (u - y1) - x1 * (u - y2)) / (y2 - y1)
            out[row, k] = math.floor(q * num_candidates)
        for k in range(1, num_select):
            out[row, k] = max(out[row, k], out[row, k - 1] + 1)
        for k in range(num_select):
            out[row, k] = min(out[row, k], num_candidates - num_select + k)
    return out


def ref_boxes_and_patches(frames, actions, patch_size):
    """Their geometry on 224 frames: actions (y, x, h, w) [M, 4] -> boxes (x0, y0, x1, y1) as frame fractions
    and P x P patches by affine_grid + grid_sample."""
    side = 96 + 128 * actions[:, 2:4]            # (h, w) in pixels
    top_left = actions[:, :2] * (224 - side)     # (y, x)
    y0, x0, h, w = top_left[:, 0], top_left[:, 1], side[:, 0], side[:, 1]
    theta = torch.zeros(len(actions), 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = w / 224, h / 224
    theta[:, 0, 2], theta[:, 1, 2] = -1 + (2 * x0 + w) / 224, -1 + (2 * y0 + h) / 224
    grid = F.affine_grid(theta, [len(actions), 3, patch_size, patch_size], align_corners=False)
    patches = F.grid_sample(frames, grid, align_corners=False)
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], -1) / 224
    return boxes, patches


def linear(s, p, x):
    return F.linear(x, s[p + "weight"], s.get(p + "bias"))


def normalise(frames):
    return (frames - MEAN) / STD


@torch.no_grad()
def ref_ua_a(ckpt, clip, num_glance, num_focus, patch_size=128):
    """UA-A eval (their `AdaFocus.forward`, eval branch) -> (exit logits [B, 1 + T', C], indices, boxes)."""
    s = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    b, n = clip.shape[:2]
    glance_idx = torch.arange(n)[1::n // num_glance]
    maps = ref_mobilenet(s, "global_CNN.", normalise(clip[:, glance_idx].flatten(0, 1)))
    feats = maps.mean((2, 3)).view(b, num_glance, -1)
    maps = maps.view(b, num_glance, *maps.shape[1:]).permute(0, 2, 1, 3, 4)
    actions = F.interpolate(ref_spatial_policy(s, maps), n, mode="linear", align_corners=False).permute(0, 2, 1)
    idx = ref_quantile_indices(ref_frame_weights(s, feats), n, num_focus, clamp_bracket=True)
    chosen = actions.gather(1, idx[..., None].expand(-1, -1, 4))
    frames = normalise(clip.gather(1, idx[:, :, None, None, None].expand(-1, -1, *clip.shape[2:])).flatten(0, 1))
    boxes, patches = ref_boxes_and_patches(frames, chosen.flatten(0, 1), patch_size)
    local = ref_resnet50(s, "local_CNN.", patches).mean((2, 3)).view(b, num_focus, -1)
    z1 = F.relu(bn(linear(s, "classifier.global_mlp.layers.0.", feats.flatten(0, 1)), s,
                   "classifier.global_mlp.layers.1.")).view(b, num_glance, -1)
    z2 = F.relu(bn(linear(s, "classifier.local_mlp.layers.0.", local.flatten(0, 1)), s,
                   "classifier.local_mlp.layers.1.")).view(b, num_focus, -1)
    g = z1.cummax(1).values[:, -1]
    exits = [linear(s, f"classifier.global_classifiers.{num_glance - 1}.1.", g)]
    pooled = z2[:, 0]
    for k in range(num_focus):
        pooled = torch.maximum(pooled, z2[:, k])
        exits.append(linear(s, f"classifier.local_classifiers.{k}.1.", torch.cat([pooled, g], 1)))
    return torch.stack(exits, 1), idx, boxes.view(b, num_focus, 4)


def _clip_action_patches(s, clip, maps, feats, num_focus, patch_size, size=224):
    """TSM / X3D: one action per clip, frames by quantiles (no bracket clamp) -> (indices, boxes, patches)."""
    b, n = clip.shape[:2]
    action = ref_spatial_policy(s, maps)[:, :, 0]                  # [B, 4]
    idx = ref_quantile_indices(ref_frame_weights(s, feats), n, num_focus, clamp_bracket=False)
    frames = normalise(clip.gather(1, idx[:, :, None, None, None].expand(-1, -1, *clip.shape[2:])).flatten(0, 1))
    boxes, patches = ref_boxes_and_patches(frames, action.repeat_interleave(num_focus, 0), patch_size)
    return idx, boxes.view(b, num_focus, 4), patches


@torch.no_grad()
def ref_tsm(ckpt, clip, num_glance, num_focus, patch_size):
    """UA-TSM eval (exit copy): exit 0 = mean over frames of new_new_fc, exit 1 = the two new_fc averages summed.
    The glance frames are the mid-segment frames of the clip (their loader samples them the same way)."""
    s = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    b, n = clip.shape[:2]
    glance_idx = ((torch.arange(num_glance) + 0.5) * n / num_glance).floor().long()
    maps = ref_mobilenet(s, "global_CNN.base_model.", normalise(clip[:, glance_idx].flatten(0, 1)),
                         shift_frames=num_glance)
    feats = maps.mean((2, 3)).view(b, num_glance, -1)
    idx, boxes, patches = _clip_action_patches(
        s, clip, maps.view(b, num_glance, *maps.shape[1:]).permute(0, 2, 1, 3, 4), feats, num_focus, patch_size)
    local = ref_resnet50(s, "local_CNN.base_model.", patches, shift_frames=num_focus).mean((2, 3))
    local = local.view(b, num_focus, -1)
    exit0 = linear(s, "global_CNN.new_new_fc.", feats).mean(1)
    exit1 = linear(s, "global_CNN.new_fc.", feats).mean(1) + linear(s, "local_CNN.new_fc.", local).mean(1)
    return torch.stack([exit0, exit1], 1), idx, boxes


def ref_x3d_head(s, p, maps):
    """X3D's head on conv_5 maps [B, 432, T, h, w]: average pool, lin_5 (1x1x1 conv), ReLU, projection."""
    pooled = maps.mean((2, 3, 4), keepdim=True)
    hidden = F.relu(F.conv3d(pooled, s[p + "head.lin_5.weight"])).flatten(1)
    return linear(s, p + "head.projection.", hidden)


@torch.no_grad()
def ref_x3d_model(ckpt, clip, num_glance, num_focus, patch_size, glance_size=160):
    s = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    b, n = clip.shape[:2]
    glance_idx = ((torch.arange(num_glance) + 0.5) * n / num_glance).floor().long()
    frames = F.interpolate(normalise(clip[:, glance_idx].flatten(0, 1)), (glance_size, glance_size),
                           mode="bilinear")
    video = frames.view(b, num_glance, 3, glance_size, glance_size).permute(0, 2, 1, 3, 4)
    maps = ref_x3d(s, "global_CNN.", video)                           # [B, 432, T, 5, 5]
    feats = maps.mean((3, 4)).permute(0, 2, 1)                         # [B, T, 432]
    idx, boxes, patches = _clip_action_patches(s, clip, maps, feats, num_focus, patch_size)
    local_video = patches.view(b, num_focus, 3, patch_size, patch_size).permute(0, 2, 1, 3, 4)
    local_maps = ref_x3d(s, "local_CNN.", local_video)

    def mlp(p, x):
        return linear(s, p + "3.", F.relu(linear(s, p + "0.", x)))

    exit0 = mlp("global_CNN_head.", feats).mean(1)
    exit1 = ref_x3d_head(s, "global_CNN.", maps) + ref_x3d_head(s, "local_CNN.", local_maps)
    return torch.stack([exit0, exit1], 1), idx, boxes
