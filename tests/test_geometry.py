import pytest
import torch
from adafocus.core.geometry import (
    box_contains_points,
    boxes_from_actions,
    boxes_to_source_pixels,
    crop_frames,
    crop_patches,
    crop_patches_per_image,
    glance_brackets,
    interpolate_over_time,
    position_for_centre,
    sample_frame_by_frame,
    sample_gathered,
    scale_for_side,
)
from adafocus.core.sampling import gather_frames


def test_boxes_from_actions_stay_inside_frame_and_respect_side_bounds():
    actions = torch.rand(1000, 4)
    actions[:10] = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]).repeat(5, 1)
    boxes = boxes_from_actions(actions, min_side=96 / 224, max_side=1.0)
    assert (boxes >= 0).all() and (boxes <= 1 + 1e-6).all()
    sides = torch.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1)
    assert (sides >= 96 / 224 - 1e-6).all() and (sides <= 1 + 1e-6).all()


def test_boxes_from_actions_matches_paper_parametrisation():
    # side_h = 96 + 128 a_h pixels; top = a_y (224 - side_h)  (official code, 224 frames)
    a = torch.tensor([0.25, 0.75, 0.5, 0.0])
    x0, y0, x1, y1 = (boxes_from_actions(a, min_side=96 / 224) * 224).tolist()
    width, height = 96 + 128 * 0.5, 96.0
    assert x1 - x0 == pytest.approx(width) and y1 - y0 == pytest.approx(height)
    assert x0 == pytest.approx(0.25 * (224 - width)) and y0 == pytest.approx(0.75 * (224 - height))


def test_bad_side_bounds_are_rejected():
    with pytest.raises(ValueError):
        boxes_from_actions(torch.rand(2, 4), min_side=0.8, max_side=0.5)


@pytest.mark.parametrize("x0,y0,size", [(0, 0, 16), (8, 24, 16), (40, 4, 24), (10, 30, 7)])
def test_crop_equals_slicing_on_pixel_aligned_boxes(x0, y0, size):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    box = torch.tensor([x0, y0, x0 + size, y0 + size], dtype=torch.float32) / 64
    patches = crop_patches(images, box.repeat(2, 1), size)
    assert torch.allclose(patches, images[:, :, y0:y0 + size, x0:x0 + size], atol=1e-5)


def test_crop_of_rectangular_box_and_resampling_shape():
    images = torch.arange(64 * 64, dtype=torch.float32).view(1, 1, 64, 64)
    box = torch.tensor([[16, 8, 48, 24]], dtype=torch.float32) / 64  # 32 wide, 16 high
    patch = crop_patches(images, box, (16, 32))
    assert torch.allclose(patch[0, 0], images[0, 0, 8:24, 16:48])
    assert crop_patches(images, box, 8).shape == (1, 1, 8, 8)


def test_crop_is_differentiable_in_box_coordinates():
    images = torch.rand(1, 1, 32, 32)
    box = torch.tensor([[0.2, 0.2, 0.6, 0.6]], requires_grad=True)
    crop_patches(images, box, 8).sum().backward()
    assert box.grad is not None and box.grad.abs().sum() > 0


def test_crop_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        crop_patches(torch.rand(2, 3, 8, 8), torch.rand(3, 4), 4)


def test_several_crops_per_image_equal_one_crop_of_each_copy_and_keep_box_gradients():
    torch.manual_seed(0)
    images = torch.randn(3, 5, 7, 9)
    boxes = (torch.rand(3, 4, 4) * 0.5).requires_grad_()
    boxes_far = boxes + torch.tensor([0.0, 0.0, 0.5, 0.5])  # x1 > x0, y1 > y0
    many = crop_patches_per_image(images, boxes_far, (2, 3))
    assert many.shape == (3, 4, 5, 2, 3)
    one_by_one = crop_patches(images[:, None].expand(-1, 4, -1, -1, -1).flatten(0, 1), boxes_far.flatten(0, 1), (2, 3))
    assert torch.allclose(many.flatten(0, 1), one_by_one, atol=1e-6)
    many.sum().backward()
    assert boxes.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        crop_patches_per_image(images, boxes_far[:2], 2)


def test_scale_for_side_inverts_side_mapping():
    s = scale_for_side(128 / 224, min_side=96 / 224, max_side=1.0)
    box = boxes_from_actions(torch.tensor([0.5, 0.5, s, s]), min_side=96 / 224)
    assert (box[2] - box[0]).item() * 224 == pytest.approx(128)
    assert scale_for_side(0.01, min_side=0.2, max_side=0.5) == 0.0


def test_position_for_centre_centres_the_box_and_keeps_it_inside():
    centre = torch.tensor([0.5, 0.2, 0.9, 0.1])
    # boxes of side 0.2 fit around every one of these centres: the round trip is exact
    fits = position_for_centre(centre, torch.full((4,), 0.2))
    box = boxes_from_actions(torch.stack([fits, fits, torch.zeros(4), torch.zeros(4)], -1), min_side=0.2)
    assert ((box[:, 0] + box[:, 2]) / 2).tolist() == pytest.approx([0.5, 0.2, 0.9, 0.1])
    # larger boxes: a centre nearer the edge than half the side gets the box touching that edge
    position = position_for_centre(centre, torch.tensor([0.2, 0.3, 0.25, 0.4]))
    assert position.tolist() == pytest.approx([(0.5 - 0.1) / 0.8, (0.2 - 0.15) / 0.7, 1.0, 0.0])
    assert position_for_centre(torch.tensor([0.3]), torch.tensor([1.0])).item() == 0.5


def test_interpolate_over_time_keeps_constants_and_endpoints_order():
    values = torch.tensor([[[0.0], [1.0]]])
    out = interpolate_over_time(values, 4)[0, :, 0]
    assert out.tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
    const = torch.full((2, 3, 4), 0.3)
    assert torch.allclose(interpolate_over_time(const, 9), torch.full((2, 9, 4), 0.3))


def test_glance_brackets_interpolate_between_the_actual_glance_positions():
    positions = torch.tensor([[1, 3, 5, 7], [0, 4, 8, 12]])
    frames = torch.tensor([[0, 1, 2, 6, 9], [2, 4, 11, 12, 13]])
    left, right, t = glance_brackets(positions, frames)
    at = positions.gather(1, left) * (1 - t) + positions.gather(1, right) * t
    inside = (frames >= positions[:, :1]) & (frames <= positions[:, -1:])
    assert torch.equal(at[inside], frames[inside].float())  # interpolating the positions gives the frame back
    assert torch.equal(at[~inside], torch.tensor([1.0, 7.0, 12.0]))  # outside: the first / last glance frame
    glanced = (frames[..., None] == positions[:, None]).any(-1)
    assert torch.equal(left[glanced], right[glanced])  # a glanced frame takes only its own glance frame
    assert torch.equal(positions.gather(1, left)[glanced], frames[glanced])
    assert t[1].tolist() == pytest.approx([0.5, 1.0, 0.75, 1.0, 1.0])
    assert torch.all(left <= right) and torch.all((t >= 0) & (t <= 1))
    with pytest.raises(ValueError):
        glance_brackets(positions[0], frames)


def test_boxes_to_source_pixels_uses_view_box():
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 0.75]]])
    view = torch.tensor([[100.0, 50.0, 300.0, 250.0]])  # a 200 x 200 crop of the source at (100, 50)
    src = boxes_to_source_pixels(boxes, view)
    assert src[0, 0].tolist() == [100, 50, 200, 150] and src[0, 1].tolist() == [200, 100, 300, 200]


def test_box_contains_points():
    boxes = torch.tensor([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9]])
    pts = torch.tensor([[0.2, 0.2], [0.2, 0.2]])
    assert box_contains_points(boxes, pts).tolist() == [True, False]


def _clip_and_boxes(channels=3):
    torch.manual_seed(0)
    clip = torch.rand(3, 5, channels, 40, 50)
    samples, frames = torch.tensor([2, 0]), torch.tensor([[1, 4, 4], [0, 2, 3]])
    corner = torch.rand(2, 3, 2) * 0.6
    boxes = torch.cat([corner, corner + 0.1 + torch.rand(2, 3, 2) * 0.3], dim=-1)
    # boxes smaller than the patch at the frame's edges: their outer samples have a tap outside the frame
    boxes[0, 0] = torch.tensor([0.0, 0.0, 0.1, 0.1])
    boxes[1, 1] = torch.tensor([0.9, 0.85, 1.0, 1.0])
    return clip, samples, frames, boxes


def test_crop_frames_equals_cropping_the_gathered_frames_on_either_sampling_path():
    clip, samples, frames, boxes = _clip_and_boxes()
    expected = crop_patches(gather_frames(clip, frames, samples).flatten(0, 1), boxes.flatten(0, 1), 16)
    assert torch.equal(crop_frames(clip, samples, frames, boxes, 16), expected)
    grid = torch.nn.functional.affine_grid(torch.eye(2, 3).expand(4, 2, 3), [4, 1, 6, 7], align_corners=False) * 0.7
    rows = torch.tensor([3, 0, 3, 14])
    flat = clip.flatten(0, 1)
    assert torch.equal(sample_frame_by_frame(flat, rows, grid), sample_gathered(flat, rows, grid))
    assert sample_frame_by_frame(flat, rows[:0], grid[:0]).shape == (0, 3, 6, 7)


@pytest.mark.parametrize("channels", [3, 1])
def test_a_patch_filled_with_the_mean_normalises_to_the_crop_of_the_normalised_frame(channels):
    clip, samples, frames, boxes = _clip_and_boxes(channels)
    mean, std = torch.tensor([0.4, 0.5, 0.6]).view(1, 3, 1, 1), torch.tensor([0.2, 0.3, 0.25]).view(1, 3, 1, 1)
    normalised = (gather_frames(clip, frames, samples).flatten(0, 1).expand(-1, 3, -1, -1) - mean) / std
    expected = crop_patches(normalised, boxes.flatten(0, 1), 16)
    got = (crop_frames(clip, samples, frames, boxes, 16, fill=mean) - mean) / std
    assert (got - expected).abs().max() < 1e-5
    unfilled = (crop_frames(clip, samples, frames, boxes, 16) - mean) / std
    assert (unfilled - expected).abs().max() > 0.5  # the edge boxes really reach outside the frame


def test_crop_frames_is_differentiable_in_the_boxes_and_checks_shapes():
    clip, samples, frames, boxes = _clip_and_boxes()
    boxes.requires_grad_()
    crop_frames(clip, samples, frames, boxes, 8, fill=torch.full((1, 3, 1, 1), 0.5)).sum().backward()
    assert boxes.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        crop_frames(clip, samples, frames[:, :2], boxes, 8)


def test_gather_frames_gives_the_same_frames_from_strided_clips():
    clip, samples, frames, _ = _clip_and_boxes()
    strided = clip.transpose(-1, -2).contiguous().transpose(-1, -2)  # same values, not contiguous
    assert torch.equal(gather_frames(clip, frames, samples), gather_frames(strided, frames, samples))
    assert torch.equal(gather_frames(clip, frames, samples)[1, 2], clip[0, 3])
