"""Slices as frames: orientation, slice choice, 2.5D channels, and the frame-box -> voxel round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from adafocus.datasets.mri.slices import (
    PLANES,
    frame_box_to_voxels,
    plane_frame,
    select_slice_indices,
    volume_to_clip,
)

SHAPE = (40, 48, 36)  # X (R), Y (A), Z (S): deliberately all different
CUBE = (slice(22, 28), slice(30, 38), slice(9, 13))  # voxels x 22..27, y 30..37, z 9..12


def cube_volume() -> np.ndarray:
    rng = np.random.default_rng(0)
    volume = rng.uniform(0.0, 0.1, size=SHAPE).astype(np.float32)
    volume[CUBE] = 1.0
    return volume


def bright_box_norm(frame: np.ndarray) -> tuple[float, float, float, float]:
    """Normalised (x0, y0, x1, y1) pixel-edge box of the pixels brighter than 0.5."""
    rows, cols = np.nonzero(frame > 0.5)
    h, w = frame.shape
    return cols.min() / w, rows.min() / h, (cols.max() + 1) / w, (rows.max() + 1) / h


@pytest.mark.parametrize("axis", sorted(PLANES))
@pytest.mark.parametrize("size", [None, 64])
def test_cube_round_trip_frames_to_voxels(axis, size):
    slice_axis = PLANES[axis][0]
    clip, info = volume_to_clip(
        cube_volume(), (1.0, 1.0, 1.0), axis=axis, num_slices=12, discard_border=0.1, size=size
    )
    assert clip.dtype == torch.float32 and clip.shape[:2] == (12, 1)
    if size is not None:
        assert clip.shape[-2:] == (size, size)
    cube_lo = np.array([s.start for s in CUBE]) - 0.5
    cube_hi = np.array([s.stop for s in CUBE]) - 0.5
    shows_cube = [(clip[t, 0] > 0.5).any().item() for t in range(12)]
    inside = [cube_lo[slice_axis] < i < cube_hi[slice_axis] for i in info.slice_indices]
    assert shows_cube == inside and any(inside)
    tolerance = 0.01 if size is None else 1.0  # resizing blurs edges by up to a source voxel
    for t in np.flatnonzero(inside):
        corners = frame_box_to_voxels(bright_box_norm(clip[t, 0].numpy()), int(t), info)
        in_plane = [a for a in range(3) if a != slice_axis]
        np.testing.assert_allclose(corners[0, in_plane], cube_lo[in_plane], atol=tolerance)
        np.testing.assert_allclose(corners[1, in_plane], cube_hi[in_plane], atol=tolerance)
        index = info.slice_indices[t]
        assert tuple(corners[:, slice_axis]) == (index - 0.5, index + 0.5)


def test_display_orientation_head_up_and_subject_right_on_frame_right():
    volume = np.zeros(SHAPE, dtype=np.float32)
    volume[35, 40, 30] = 1.0  # right, anterior, superior
    X, Y, Z = SHAPE
    sagittal = plane_frame(volume, "sagittal", 35)
    coronal = plane_frame(volume, "coronal", 40)
    axial = plane_frame(volume, "axial", 30)
    assert sagittal.shape == (Z, Y) and coronal.shape == (Z, X) and axial.shape == (Y, X)
    assert np.argwhere(sagittal == 1).tolist() == [
        [Z - 1 - 30, 40]
    ]  # superior -> upper rows, anterior -> right
    assert np.argwhere(coronal == 1).tolist() == [[Z - 1 - 30, 35]]  # superior -> upper rows, right -> right
    assert np.argwhere(axial == 1).tolist() == [[Y - 1 - 40, 35]]  # anterior -> upper rows, right -> right


def test_context_channels_are_neighbouring_slices_clamped_at_edges():
    volume = np.broadcast_to(np.arange(SHAPE[0], dtype=np.float32)[:, None, None], SHAPE).copy()
    clip, info = volume_to_clip(
        volume, (1, 1, 1), axis="sagittal", num_slices=SHAPE[0], discard_border=0.0, context=1
    )
    assert clip.shape == (SHAPE[0], 3, SHAPE[2], SHAPE[1])
    values = clip[:, :, 0, 0].numpy()  # each sagittal slice is constant = its x index
    np.testing.assert_array_equal(values[:, 1], np.arange(SHAPE[0]))
    np.testing.assert_array_equal(values[:, 0], np.maximum(np.arange(SHAPE[0]) - 1, 0))
    np.testing.assert_array_equal(values[:, 2], np.minimum(np.arange(SHAPE[0]) + 1, SHAPE[0] - 1))
    assert info.context == 1 and info.frame_size == (SHAPE[2], SHAPE[1])


def test_slice_selection_discards_borders_and_spreads_evenly():
    indices = select_slice_indices(169, 129, 20 / 169)  # Wen et al.: 20 sagittal slices dropped at each end
    assert indices[0] == 20 and indices[-1] == 148 and len(np.unique(indices)) == 129
    few = select_slice_indices(100, 4, 0.15)
    assert few.tolist() == [23, 41, 58, 76] and np.all(np.diff(few) > 0)
    with pytest.raises(ValueError, match="num_slices=71"):
        select_slice_indices(100, 71, 0.15)
    with pytest.raises(ValueError, match="discard_border"):
        select_slice_indices(100, 4, 0.5)


def test_frame_pixel_size_and_bad_arguments():
    _, info = volume_to_clip(cube_volume(), (2.0, 2.0, 2.0), axis="axial", num_slices=3, size=24)
    assert info.canvas_shape == (48, 48) and info.pad == (0, 4)  # Y=48 rows, X=40 cols padded to 48
    assert info.frame_pixel_mm == (4.0, 4.0)
    with pytest.raises(ValueError, match="axis must be one of"):
        volume_to_clip(cube_volume(), (1, 1, 1), axis="oblique", num_slices=3)
    with pytest.raises(ValueError, match="3D"):
        volume_to_clip(np.zeros((4, 4)), (1, 1, 1), num_slices=1)
    with pytest.raises(ValueError, match="slice_position"):
        frame_box_to_voxels((0, 0, 1, 1), 3, info)
