"""Slices are frames: cut a preprocessed RAS volume [X, Y, Z] into a clip [T, C, H, W] and map boxes back.

Display orientation (fixed, the same for every plane; the volume must be RAS+, as the preprocessing
writes it: array axis 0 grows to the subject's Right, axis 1 Anterior, axis 2 Superior):

| axis       | slice along | frame rows (top -> bottom)   | frame columns (left -> right) |
|------------|-------------|------------------------------|-------------------------------|
| "sagittal" | X (axis 0)  | Z, superior -> inferior       | Y, posterior -> anterior      |
| "coronal"  | Y (axis 1)  | Z, superior -> inferior       | X, left -> right              |
| "axial"    | Z (axis 2)  | Y, anterior -> posterior      | X, left -> right              |

So the head is upright in sagittal/coronal frames and the nose points up in axial frames; columns follow
increasing RAS coordinates (the subject's right on the frame's right, i.e. the "neurological" convention
that nilearn uses, not the radiological mirror). With `size`, frames are zero-padded to a square (centred)
and resized to size x size, which keeps the in-plane aspect ratio of the voxel grid (volumes should be
isotropic, as the t1-linear cache is).

Box coordinates: a box in a frame is (x0, y0, x1, y1) normalised to [0, 1] over the frame's full width /
height (pixel edges). `frame_box_to_voxels` returns continuous voxel coordinates of the preprocessed image,
where voxel centres are integers and voxel i spans [i - 0.5, i + 0.5].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# plane name -> (slice axis, row axis, column axis) of the [X, Y, Z] volume; rows are flipped for display
PLANES: dict[str, tuple[int, int, int]] = {"sagittal": (0, 2, 1), "coronal": (1, 2, 0), "axial": (2, 1, 0)}


@dataclass(frozen=True)
class SliceInfo:
    """Where each frame of a clip came from and how frame pixels map to voxels.

    axis: plane name; slice_indices: voxel index along the slice axis for each of the T frames;
    spacing: voxel size (mm) of the volume axes X, Y, Z; volume_shape: (X, Y, Z);
    canvas_shape: (rows, cols) of the zero-padded plane before resizing; pad: (top, left) padding in voxels;
    frame_size: (H, W) of the returned frames; context: neighbouring slices on each side used as channels.
    """

    axis: str
    slice_indices: tuple[int, ...]
    spacing: tuple[float, float, float]
    volume_shape: tuple[int, int, int]
    canvas_shape: tuple[int, int]
    pad: tuple[int, int]
    frame_size: tuple[int, int]
    context: int

    @property
    def slice_axis(self) -> int:
        return PLANES[self.axis][0]

    @property
    def row_axis(self) -> int:
        return PLANES[self.axis][1]

    @property
    def col_axis(self) -> int:
        return PLANES[self.axis][2]

    @property
    def frame_pixel_mm(self) -> tuple[float, float]:
        """Size (mm) of one frame pixel along rows and columns."""
        rows, cols = self.canvas_shape
        return (
            self.spacing[self.row_axis] * rows / self.frame_size[0],
            self.spacing[self.col_axis] * cols / self.frame_size[1],
        )


def plane_frame(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """One slice of a RAS volume [X, Y, Z] as a 2D frame [rows, cols] in the display orientation above."""
    slice_axis, row_axis, col_axis = PLANES[axis]
    plane = np.take(volume, index, axis=slice_axis)
    # after np.take the remaining axes keep their order; put the row axis first, then flip rows
    if row_axis > col_axis:
        plane = plane.T
    return plane[::-1, :]


def select_slice_indices(n: int, num_slices: int, discard_border: float) -> np.ndarray:
    """`num_slices` distinct indices in [0, n), evenly spread (segment centres) after dropping
    `discard_border` of the slices at each end."""
    if not 0.0 <= discard_border < 0.5:
        raise ValueError(f"discard_border must be in [0, 0.5), got {discard_border}")
    first = round(n * discard_border)
    available = n - 2 * first
    if num_slices < 1 or num_slices > available:
        raise ValueError(
            f"num_slices={num_slices} must be in [1, {available}]: {n} slices, {first} discarded at each end"
        )
    return first + ((np.arange(num_slices) + 0.5) * available / num_slices).astype(int)


def volume_to_clip(
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    axis: str = "sagittal",
    num_slices: int,
    discard_border: float = 0.15,
    context: int = 0,
    size: int | None = None,
) -> tuple[torch.Tensor, SliceInfo]:
    """Cut a RAS volume [X, Y, Z] into a clip float32 [T, C, H, W] with T = num_slices, C = 2 * context + 1.

    context=1 gives "2.5D" frames whose channels are slices (i - 1, i, i + 1), clamped at the volume edge.
    size=None keeps the native plane (H, W = rows, cols of the table in the module docstring); an int
    pads to a centred square and resizes (bilinear, antialiased) to size x size.
    """
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3:
        raise ValueError(f"volume must be 3D [X, Y, Z], got shape {volume.shape}")
    if axis not in PLANES:
        raise ValueError(f"axis must be one of {sorted(PLANES)}, got {axis!r}")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if size is not None and size < 1:
        raise ValueError(f"size must be a positive int or None, got {size}")
    slice_axis, row_axis, col_axis = PLANES[axis]
    n = volume.shape[slice_axis]
    indices = select_slice_indices(n, num_slices, discard_border)
    offsets = np.arange(-context, context + 1)
    frames = np.stack(
        [[plane_frame(volume, axis, int(np.clip(i + o, 0, n - 1))) for o in offsets] for i in indices]
    )
    clip = torch.from_numpy(np.ascontiguousarray(frames))
    rows, cols = volume.shape[row_axis], volume.shape[col_axis]
    pad = (0, 0)
    canvas = (rows, cols)
    if size is not None:
        side = max(rows, cols)
        pad = ((side - rows) // 2, (side - cols) // 2)
        canvas = (side, side)
        clip = F.pad(clip, (pad[1], side - cols - pad[1], pad[0], side - rows - pad[0]))
        if side != size:  # at the same size bilinear is the identity
            clip = F.interpolate(
                clip, size=(size, size), mode="bilinear", align_corners=False, antialias=side > size
            )
    info = SliceInfo(
        axis=axis,
        slice_indices=tuple(int(i) for i in indices),
        spacing=tuple(float(s) for s in spacing),
        volume_shape=tuple(volume.shape),
        canvas_shape=canvas,
        pad=pad,
        frame_size=(int(clip.shape[-2]), int(clip.shape[-1])),
        context=context,
    )
    return clip, info


def frame_box_to_voxels(
    box_xyxy_norm: tuple[float, float, float, float] | np.ndarray, slice_position: int, info: SliceInfo
) -> np.ndarray:
    """Map a box in frame `slice_position` of a clip back to the volume.

    box_xyxy_norm: (x0, y0, x1, y1) in [0, 1] (x along columns, y along rows).
    Returns float64 [2, 3]: lower and upper corners (X, Y, Z) in continuous voxel coordinates, clipped to
    the volume; along the slice axis the box is the one slice it was cut from, [i - 0.5, i + 0.5].
    """
    x0, y0, x1, y1 = (float(v) for v in box_xyxy_norm)
    if not 0 <= slice_position < len(info.slice_indices):
        raise ValueError(
            f"slice_position {slice_position} outside the clip's {len(info.slice_indices)} frames"
        )
    canvas_rows, canvas_cols = info.canvas_shape
    n_rows = info.volume_shape[info.row_axis]
    # frame-edge coordinates in the unpadded plane, then voxel coordinates (rows are displayed flipped)
    col_edges = np.array([x0, x1]) * canvas_cols - info.pad[1]
    row_edges = np.array([y0, y1]) * canvas_rows - info.pad[0]
    corners = np.empty((2, 3))
    corners[:, info.col_axis] = np.sort(col_edges - 0.5)
    corners[:, info.row_axis] = np.sort(n_rows - row_edges - 0.5)
    index = info.slice_indices[slice_position]
    corners[:, info.slice_axis] = (index - 0.5, index + 0.5)
    upper = np.asarray(info.volume_shape, dtype=float) - 0.5
    return np.clip(corners, -0.5, upper)


def voxel_box_to_frame(corners: np.ndarray, info: SliceInfo) -> np.ndarray:
    """The inverse of `frame_box_to_voxels` in the frame's plane: a voxel box [2, 3] (continuous voxel
    coordinates, lower and upper corners) -> (x0, y0, x1, y1) in [0, 1] of the frame (not clipped)."""
    corners = np.asarray(corners, dtype=float)
    canvas_rows, canvas_cols = info.canvas_shape
    n_rows = info.volume_shape[info.row_axis]
    cols = (corners[:, info.col_axis] + 0.5 + info.pad[1]) / canvas_cols
    rows = np.sort((n_rows - corners[:, info.row_axis] - 0.5 + info.pad[0]) / canvas_rows)
    return np.array([cols.min(), rows[0], cols.max(), rows[1]])
