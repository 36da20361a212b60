"""Patch geometry: policy actions -> boxes -> affine grids -> cropped patches.

Conventions used everywhere in adafocus:
- A *box* is ``(x0, y0, x1, y1)`` in fractions of the frame it lives in (0..1, x1/y1 exclusive edges),
  so one box describes the same region of a frame, of its down-scaled glance copy, and of its feature map.
- An *action* is the spatial policy's output in (0, 1)^4: ``(x_position, y_position, width_scale,
  height_scale)``. The scales pick each side between ``min_side`` and ``max_side`` (fractions of the frame;
  the paper uses 96/224 .. 224/224), and the positions place the box so it always lies inside the frame.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


def sides_from_scales(scales: Tensor, *, min_side: float, max_side: float) -> Tensor:
    """Box sides (fractions of the frame) from scale actions in (0, 1): min_side + (max_side - min_side) * scale."""
    return min_side + (max_side - min_side) * scales


def boxes_from_actions(actions: Tensor, *, min_side: float, max_side: float = 1.0) -> Tensor:
    """Map actions ``[..., 4]`` in (0,1) to boxes ``[..., 4]`` that lie inside the frame.

    side = min_side + (max_side - min_side) * scale;  top-left = position * (1 - side).
    """
    if not 0.0 < min_side <= max_side <= 1.0:
        raise ValueError(f"need 0 < min_side <= max_side <= 1, got {min_side}, {max_side}")
    pos_x, pos_y = actions[..., 0], actions[..., 1]
    width, height = sides_from_scales(actions[..., 2:], min_side=min_side, max_side=max_side).unbind(-1)
    x0 = pos_x * (1.0 - width)
    y0 = pos_y * (1.0 - height)
    return torch.stack([x0, y0, x0 + width, y0 + height], dim=-1)


def position_for_centre(centre: Tensor, side: Tensor) -> Tensor:
    """The action position that centres a box of ``side`` on ``centre`` (fractions of the frame), the inverse
    of ``boxes_from_actions``'s top-left = position * (1 - side); clamped to [0, 1], which keeps the box inside
    the frame (a centre nearer the edge than side / 2 gets the box touching that edge). A full-frame box
    (side 1) has one place: position 0.5."""
    room = 1.0 - side
    position = (centre - 0.5 * side) / room.clamp(min=1e-6)
    return torch.where(room > 1e-6, position.clamp(0.0, 1.0), torch.full_like(position, 0.5))


def scale_for_side(side: float, *, min_side: float, max_side: float) -> float:
    """The action scale that gives a box side of ``side`` (clamped to the reachable range)."""
    if max_side == min_side:
        return 0.5
    return float(min(max((side - min_side) / (max_side - min_side), 0.0), 1.0))


def boxes_to_affine(boxes: Tensor) -> Tensor:
    """Boxes ``[N, 4]`` -> affine matrices ``[N, 2, 3]`` for ``F.affine_grid`` (align_corners=False).

    In grid coordinates (-1..1) a box spans ``2*x0-1 .. 2*x1-1``: its half-width is ``x1-x0`` and its
    centre ``x0+x1-1``.
    """
    x0, y0, x1, y1 = boxes.unbind(-1)
    zeros = torch.zeros_like(x0)
    row_x = torch.stack([x1 - x0, zeros, x0 + x1 - 1.0], dim=-1)
    row_y = torch.stack([zeros, y1 - y0, y0 + y1 - 1.0], dim=-1)
    return torch.stack([row_x, row_y], dim=-2)


def crop_patches(images: Tensor, boxes: Tensor, out_size: int | tuple[int, int]) -> Tensor:
    """Crop ``boxes [N, 4]`` out of ``images [N, C, H, W]`` and resample each to ``out_size``.

    Bilinear ``grid_sample``, differentiable in both the images and the boxes. Works the same on frames
    and on feature maps. For a box whose edges fall on pixel edges and whose size equals ``out_size``
    pixels the result equals plain slicing.
    """
    if images.dim() != 4 or boxes.shape != (images.shape[0], 4):
        raise ValueError(f"expected images [N,C,H,W] and boxes [N,4], got {tuple(images.shape)} and "
                         f"{tuple(boxes.shape)}")
    return crop_patches_per_image(images, boxes[:, None], out_size)[:, 0]


def crop_patches_per_image(images: Tensor, boxes: Tensor, out_size: int | tuple[int, int]) -> Tensor:
    """Crop K boxes ``[N, K, 4]`` out of each of ``images [N, C, H, W]`` -> ``[N, K, C, out_h, out_w]``, as
    crop_patches does one box per image. The K sampling grids are stacked into one, so the image is not
    copied K times (the cell proxy crops a box at every map cell)."""
    if images.dim() != 4 or boxes.dim() != 3 or boxes.shape[0] != images.shape[0] or boxes.shape[-1] != 4:
        raise ValueError(f"expected images [N,C,H,W] and boxes [N,K,4], got {tuple(images.shape)} and "
                         f"{tuple(boxes.shape)}")
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    count, per_image = boxes.shape[:2]
    theta = boxes_to_affine(boxes.reshape(-1, 4).to(images.dtype))
    grid = F.affine_grid(theta, [count * per_image, 1, out_h, out_w], align_corners=False)
    grid = grid.reshape(count, per_image * out_h, out_w, 2)
    crops = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return crops.unflatten(2, (per_image, out_h)).transpose(1, 2)


def crop_frames(clip: Tensor, samples: Tensor, frame_indices: Tensor, boxes: Tensor,
                out_size: int | tuple[int, int], fill: Tensor | None = None) -> Tensor:
    """Crop ``boxes [B', T, 4]`` out of frames ``frame_indices [B', T]`` of clips ``samples [B']`` of
    ``clip [B, N, C, H, W]`` -> patches ``[B' * T, C, out_h, out_w]``, sampled as ``crop_patches`` samples.

    On the CPU each patch is sampled from a view of its frame, so the chosen frames are never copied (for
    the paper's 16 frames of 224 x 224 a batch of 8 clips gathered 77 MB before cropping 6 MB).

    ``fill [1, C, 1, 1]``: the colour of the area outside the frame (default black, ``crop_patches``'s zero
    padding). Normalising a patch filled with the normalisation mean gives exactly the patch cropped from the
    normalised frame, whose padding is zero: sampling is linear, so crop((x - m) / s) = (crop(x) - m * cover)
    / s, where ``cover`` is the crop of an all-ones frame (1 wherever every bilinear tap is inside)."""
    if clip.dim() != 5 or samples.dim() != 1 or frame_indices.shape != (samples.shape[0], boxes.shape[1]) \
            or boxes.shape[::2] != (samples.shape[0], 4):
        raise ValueError(f"expected clip [B,N,C,H,W], samples [B'], frame_indices [B',T], boxes [B',T,4], got "
                         f"{tuple(clip.shape)}, {tuple(samples.shape)}, {tuple(frame_indices.shape)}, {tuple(boxes.shape)}")
    out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
    height, width = clip.shape[-2:]
    theta = boxes_to_affine(boxes.reshape(-1, 4).to(clip.dtype))
    grid = F.affine_grid(theta, [theta.shape[0], 1, out_h, out_w], align_corners=False)
    rows = (samples[:, None] * clip.shape[1] + frame_indices).flatten()
    sample = sample_frame_by_frame if clip.device.type == "cpu" else sample_gathered  # accelerators want one call
    patches = sample(clip.flatten(0, 1), rows, grid)
    if fill is not None:
        if patches.shape[1] == 1 and fill.shape[1] > 1:  # grey frames, filled per channel of the model's input
            patches = patches.expand(-1, fill.shape[1], -1, -1).contiguous()
        # A sample at grid x has both taps inside the frame when -1 + 1/W <= x <= 1 - 1/W (pixel 0 .. W - 1).
        limit = torch.tensor([1.0 - 1.0 / width, 1.0 - 1.0 / height], dtype=grid.dtype, device=grid.device)
        partial = (grid.abs() > limit).flatten(1).any(dim=1).nonzero().flatten()
        if partial.numel():
            ones = torch.ones(1, 1, height, width, dtype=clip.dtype, device=clip.device).expand(len(partial), -1, -1, -1)
            cover = F.grid_sample(ones, grid[partial], mode="bilinear", padding_mode="zeros", align_corners=False)
            patches.index_add_(0, partial, fill.to(patches.dtype) * (1.0 - cover))  # patches is a new tensor
    return patches


def sample_frame_by_frame(frames: Tensor, rows: Tensor, grid: Tensor) -> Tensor:
    """``grid_sample`` of ``frames[rows[i]]`` at ``grid[i]`` for every i, each from a view of its frame."""
    if not rows.numel():
        return frames.new_empty(0, frames.shape[1], *grid.shape[1:3])
    return torch.cat([F.grid_sample(frames[row:row + 1], grid[i:i + 1], mode="bilinear", padding_mode="zeros",
                                    align_corners=False) for i, row in enumerate(rows.tolist())])


def sample_gathered(frames: Tensor, rows: Tensor, grid: Tensor) -> Tensor:
    """What ``sample_frame_by_frame`` gives, from one call on a gathered copy of the frames."""
    return F.grid_sample(frames.index_select(0, rows), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def interpolate_over_time(values: Tensor, length: int) -> Tensor:
    """Linearly resample per-frame values ``[B, T, D]`` to ``[B, length, D]`` (frame-centre aligned)."""
    if values.shape[1] == length:
        return values
    resampled = F.interpolate(values.transpose(1, 2), size=length, mode="linear", align_corners=False)
    return resampled.transpose(1, 2)


def glance_brackets(positions: Tensor, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Linear interpolation between the glance frames at their actual candidate positions: for chosen frames
    ``[B, T']`` and increasing glance positions ``[B, T_g]``, the glance frame at or before each chosen frame
    (``left``), the one at or after it (``right``) and the right one's weight in [0, 1] (``t``). A glanced
    frame gets its own glance frame (t = 0 or 1); frames before the first or after the last glance frame get
    that frame."""
    if positions.dim() != 2 or frames.dim() != 2 or positions.shape[0] != frames.shape[0]:
        raise ValueError(f"need positions [B, T_g] and frames [B, T'], got {tuple(positions.shape)}, {tuple(frames.shape)}")
    last = positions.shape[1] - 1
    right = torch.searchsorted(positions.contiguous(), frames.contiguous()).clamp(max=last)
    left = torch.where(positions.gather(1, right) <= frames, right, (right - 1).clamp(min=0))
    at_left, at_right = positions.gather(1, left).float(), positions.gather(1, right).float()
    span = at_right - at_left
    t = torch.where(span > 0, (frames.float() - at_left) / span.clamp(min=1), (frames >= at_right).float())
    return left, right, t.clamp(0.0, 1.0)


def boxes_to_source_pixels(boxes: Tensor, view_boxes: Tensor) -> Tensor:
    """Map frame-fraction boxes ``[B, T, 4]`` to source pixels given each sample's view ``[B, 4]``.

    ``view_boxes`` is the region of the source (in source pixels, ``x0, y0, x1, y1``) that the model's
    frame shows; for an un-cropped frame it is ``(0, 0, width, height)``.
    """
    origin = view_boxes[:, None, :2].repeat(1, 1, 2)
    extent = (view_boxes[:, None, 2:] - view_boxes[:, None, :2]).repeat(1, 1, 2)
    return origin + boxes * extent


def box_contains_points(boxes: Tensor, points: Tensor) -> Tensor:
    """Whether each box ``[..., 4]`` contains the matching point ``[..., 2]`` (x, y)."""
    x, y = points.unbind(-1)
    return (boxes[..., 0] <= x) & (x < boxes[..., 2]) & (boxes[..., 1] <= y) & (y < boxes[..., 3])


# ------------------------------------------------------------------------------------ source coordinates
class SourceRecord(Protocol):
    """Where a clip's candidate frames came from: the one mapping to source coordinates. Video clip records
    (``datasets.video.ClipInfo``) and MRI slice records (``datasets.mri.scan_record.ScanSliceRecord``)
    implement it; apps render what ``focus_locations`` returns and never re-derive geometry."""

    def locate(self, candidate: int, box: Sequence[float]) -> dict:
        """Focus step on candidate frame ``candidate`` with ``box`` (frame fractions) -> source coordinates."""
        ...


def focus_locations(frame_indices: Sequence[int], boxes: Sequence[Sequence[float]], record: SourceRecord
                    ) -> list[dict]:
    """One sample's processed focus steps (``FocusResult.frame_indices[b]``, ``.boxes[b]``; -1 = not
    processed) in source coordinates, in step order."""
    return [record.locate(int(candidate), [float(v) for v in box])
            for candidate, box in zip(frame_indices, boxes) if int(candidate) >= 0]


def map_box_corners(corners: Sequence[Sequence[float]], matrix: Sequence[Sequence[float]]) -> list[list[float]]:
    """The axis-aligned bounds ``[lower, upper]`` of a 3D box ``[lower, upper]`` after a 4x4 affine ``matrix``
    (e.g. preprocessed voxels -> MNI mm, or -> native-scan voxels): all 8 corners are mapped."""
    lower, upper = torch.as_tensor(corners, dtype=torch.float64)
    pick = torch.tensor([[(i >> k) & 1 for k in range(3)] for i in range(8)], dtype=torch.bool)
    points = torch.where(pick, upper, lower)
    m = torch.as_tensor(matrix, dtype=torch.float64)
    mapped = points @ m[:3, :3].T + m[:3, 3]
    return [mapped.min(0).values.tolist(), mapped.max(0).values.tolist()]
