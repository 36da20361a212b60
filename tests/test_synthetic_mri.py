"""The synthetic MRI focus task (datasets.synthetic_mri): ground truth, and where its class can be read."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from adafocus.datasets.mri.dataset import ClipSpec
from adafocus.datasets.mri.slices import frame_box_to_voxels, plane_frame, volume_to_clip, voxel_box_to_frame
from adafocus.datasets.synthetic_mri import LesionClipDataset, LesionFocusTask, LesionTaskConfig, paint_sphere


@pytest.fixture(scope="module")
def task():
    return LesionFocusTask(LesionTaskConfig(spacing_mm=3.0, lesion_radius_mm=9.0))


@pytest.fixture(scope="module")
def subjects(task):
    return [task.subject(i) for i in range(4)]


def test_paint_sphere_stays_inside_its_box_and_stripes_follow_the_label():
    array = np.zeros((20, 20, 20), dtype=np.float32)
    mask = paint_sphere(array, np.array([10.0, 9.0, 11.0]), 3.0, mean=5.0, amplitude=1.0, label=1)
    xs, ys, zs = np.nonzero(mask)
    assert (xs.min(), xs.max(), ys.min(), ys.max(), zs.min(), zs.max()) == (7, 13, 6, 12, 8, 14)
    assert set(np.unique(array[mask])) == {4.0, 6.0} and not array[~mask].any()
    assert array[10, 9, 10] != array[10, 9, 11] and array[10, 8, 11] == array[10, 9, 11]  # changes along Z only


def test_ground_truth_box_and_slices_cover_the_lesion(subjects):
    assert [s.label for s in subjects] == [0, 1, 0, 1]
    for s in subjects:
        low, high = s.lesion_box_voxels
        assert np.all(low < s.lesion_centre_voxel) and np.all(s.lesion_centre_voxel < high)
        centre = np.round(s.lesion_centre_voxel).astype(int)
        assert centre[0] in s.affected_slices and len(s.affected_slices) <= 8
        # the lesion is the brightest thing in its sagittal plane, the distractor darker than white matter
        plane = s.volume.array[centre[0]]
        assert s.volume.array[tuple(centre)] > np.percentile(plane, 99) * 0.95 or \
            s.volume.array[tuple(np.round(s.lesion_centre_voxel + [0, 1, 1]).astype(int))] > np.percentile(plane, 99) * 0.95


def test_location_varies_between_subjects_and_distractor_is_elsewhere(subjects):
    centres = np.stack([s.lesion_centre_voxel for s in subjects])
    assert np.ptp(centres, axis=0).max() > 4  # voxels: the selection has to follow the lesion
    for s in subjects:
        assert np.linalg.norm(s.lesion_centre_voxel - s.distractor_centre_voxel) > 6


def test_class_reads_at_native_resolution_and_averages_away_at_glance_resolution(subjects):
    for s in subjects:
        x, y, z = np.round(s.lesion_centre_voxel).astype(int)
        frame = torch.from_numpy(np.ascontiguousarray(plane_frame(s.volume.array, "sagittal", x)))
        rows = frame.shape[0]
        r, c = rows - 1 - z, y  # display rows run superior -> inferior, columns posterior -> anterior
        native = frame[r - 1:r + 2, c - 1:c + 2]
        row_steps = (native[1:] - native[:-1]).abs().mean()
        col_steps = (native[:, 1:] - native[:, :-1]).abs().mean()
        # label 0 changes along Y (columns), label 1 along Z (rows)
        assert (col_steps > 5 * row_steps) if s.label == 0 else (row_steps > 5 * col_steps)
        # a 2 x 2 glance pixel inside the lesion is the stripes' mean, whichever the class
        glance_pixel = F.avg_pool2d(frame[None, None, r - r % 2:r - r % 2 + 2, c - c % 2:c - c % 2 + 2], 2)
        assert abs(float(glance_pixel) - float(native.max() + native.min()) / 2) < 0.01 * float(native.mean())


def test_subjects_become_clips(task, subjects):
    clip, info = volume_to_clip(subjects[0].volume.array, subjects[0].volume.spacing, num_slices=8, context=1,
                                size=32)
    assert clip.shape == (8, 3, 32, 32) and len(info.slice_indices) == 8
    assert task.subject(1).label == subjects[1].label and np.array_equal(
        task.subject(1).lesion_centre_voxel, subjects[1].lesion_centre_voxel)


def test_voxel_boxes_map_into_the_frame_and_back():
    volume = np.zeros((30, 40, 24), dtype=np.float32)
    _, info = volume_to_clip(volume, (2.0, 2.0, 2.0), num_slices=4, size=20)
    corners = np.array([[11.5, 7.5, 3.5], [12.5, 15.5, 9.5]])  # X is the slice, Y columns, Z rows
    box = voxel_box_to_frame(corners, info)
    assert np.all(box[:2] < box[2:])
    slice_position = info.slice_indices.index(12) if 12 in info.slice_indices else 0
    back = frame_box_to_voxels(box, slice_position, info)
    assert np.allclose(back[:, 1:], corners[:, 1:])


def test_clip_truth_marks_the_frames_and_the_place_of_the_lesion():
    task = LesionFocusTask(LesionTaskConfig(num_scans=2))
    spec = ClipSpec(num_slices=16, size=104, context=1)
    data = LesionClipDataset(task, 0, 4, spec)
    assert len({int(task.subject(i).lesion_centre_voxel[0]) for i in range(4)}) > 1  # shared scans, own lesions
    for item in (data[i] for i in range(len(data))):
        affected = item["object_frames"]
        assert 0 < int(affected.sum()) <= 5  # a 28 mm lesion cuts 3-5 of 16 candidates 3.6 slices apart
        centre_x = int(item["lesion_centre"][0])
        assert set(item["slice_indices"][affected].tolist()) <= set(range(centre_x - 8, centre_x + 9))
        x0, y0, x1, y1 = item["object_boxes"][0].tolist()
        assert x1 - x0 == pytest.approx(15) and y1 - y0 == pytest.approx(15)  # 2 (7 + 0.5) voxels, 1 px each
        nearest = int(torch.argmin((item["slice_indices"] - item["lesion_centre"][0]).abs()))
        frame = item["clip"][nearest, 1]
        inside = frame[int(y0) + 4:int(y1) - 4, int(x0) + 4:int(x1) - 4]
        brain = frame[frame > 0.1]
        assert float(inside.mean()) > float(brain.quantile(0.95))  # the lesion is the bright blob of its slice
