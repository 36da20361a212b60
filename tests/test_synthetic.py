"""Tests for the synthetic focus task: shapes, determinism and the properties the policy experiment relies on."""
import itertools
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from adafocus.datasets.synthetic import (
    FocusTaskConfig,
    SyntheticFocusDataset,
    collate,
    object_centre,
    pattern_class_from_patch,
    write_class_folder_videos,
)

CFG = FocusTaskConfig()
QUIET = FocusTaskConfig(noise_std=0.0)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)


def interior(clip_frame: torch.Tensor, box: torch.Tensor, border: int) -> torch.Tensor:
    """[3, H, W] frame, box (x0, y0, x1, y1) -> the [3, h, w] inside of the border."""
    x0, y0, x1, y1 = (int(v) for v in box)
    return clip_frame[:, y0 + border:y1 - border, x0 + border:x1 - border]


def outside_all_boxes(item: dict, size: int) -> torch.Tensor:
    """bool [T, H, W]: pixels covered by neither the object nor any distractor."""
    free = torch.ones(item["clip"].shape[0], size, size, dtype=torch.bool)
    boxes = torch.cat([item["object_boxes"][:, None], item["distractor_boxes"]], dim=1)
    for t, frame_boxes in enumerate(boxes):
        for box in frame_boxes:
            if not torch.isnan(box).any():
                x0, y0, x1, y1 = (int(v) for v in box)
                free[t, y0:y1, x0:x1] = False
    return free


@pytest.mark.parametrize("bad", [
    {"frame_size": 63}, {"object_size": 13}, {"border": 1}, {"object_size": 8, "border": 4},
    {"object_size": 66}, {"num_classes": 5}, {"num_classes": 1}, {"object_frames": 0},
    {"object_frames": 9}, {"num_distractors": -1}, {"max_speed": -1.0}, {"noise_std": -0.1},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        FocusTaskConfig(**bad)


def test_item_shapes_and_dtypes():
    item = SyntheticFocusDataset(3, CFG, seed=0)[1]
    assert item["clip"].shape == (8, 3, 64, 64) and item["clip"].dtype == torch.float32
    assert 0.0 <= item["clip"].min() and item["clip"].max() <= 1.0
    assert isinstance(item["label"], int)
    assert item["object_frames"].shape == (8,) and item["object_frames"].dtype == torch.bool
    assert item["object_boxes"].shape == (8, 4) and item["object_boxes"].dtype == torch.float32
    assert item["distractor_boxes"].shape == (8, 2, 4) and item["distractor_boxes"].dtype == torch.float32
    assert torch.equal(item["frame_index"], torch.arange(8))


def test_index_out_of_range_and_bad_label_raise():
    ds = SyntheticFocusDataset(3, CFG)
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError):
        ds.sample(0, label=4)


def test_sample_depends_only_on_seed_and_index():
    small, large = SyntheticFocusDataset(10, CFG, seed=3), SyntheticFocusDataset(1000, CFG, seed=3)
    large[500]  # access order must not matter
    a, b = small[7], large[7]
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]).nan_to_num(-1), torch.as_tensor(b[key]).nan_to_num(-1)), key
    other_seed = SyntheticFocusDataset(10, CFG, seed=4)[7]
    assert not torch.equal(a["clip"], other_seed["clip"])
    assert not torch.equal(a["clip"], small[8]["clip"])


@pytest.mark.parametrize("num_classes", [2, 4])
def test_labels_are_balanced(num_classes):
    ds = SyntheticFocusDataset(40, FocusTaskConfig(num_classes=num_classes), seed=1)
    counts = np.bincount([ds[i]["label"] for i in range(len(ds))], minlength=num_classes)
    assert counts.tolist() == [40 // num_classes] * num_classes


@pytest.mark.parametrize("object_frames", [1, 3, 8])
def test_object_frames_are_one_contiguous_run_with_boxes_only_there(object_frames):
    ds = SyntheticFocusDataset(30, FocusTaskConfig(object_frames=object_frames, noise_std=0.0), seed=2)
    starts = set()
    for i in range(len(ds)):
        item = ds[i]
        present = item["object_frames"].nonzero().flatten()
        assert len(present) == object_frames
        assert torch.equal(present, torch.arange(present[0], present[0] + object_frames))
        starts.add(int(present[0]))
        has_box = ~torch.isnan(item["object_boxes"]).any(dim=1)
        assert torch.equal(has_box, item["object_frames"])
        assert not torch.isnan(item["object_boxes"][has_box]).any()
        # the red border is drawn exactly in the object frames
        red = (item["clip"][:, 0] > 0.9) & (item["clip"][:, 1] < 0.1) & (item["clip"][:, 2] < 0.1)
        assert torch.equal(red.flatten(1).any(dim=1), item["object_frames"])
    if object_frames < 8:
        assert len(starts) > 1, "the object's first frame should be random"


def test_boxes_lie_inside_the_frame_on_the_even_grid():
    cfg = FocusTaskConfig(max_speed=6.0)  # fast objects must still stay inside
    ds = SyntheticFocusDataset(40, cfg, seed=5)
    for i in range(len(ds)):
        item = ds[i]
        boxes = torch.cat([item["object_boxes"][item["object_frames"]], item["distractor_boxes"].reshape(-1, 4)])
        assert (boxes >= 0).all() and (boxes <= cfg.frame_size).all()
        assert torch.equal(boxes[:, 2] - boxes[:, 0], torch.full((len(boxes),), float(cfg.object_size)))
        assert torch.equal(boxes[:, 3] - boxes[:, 1], torch.full((len(boxes),), float(cfg.object_size)))
        assert (boxes % 2 == 0).all()


def test_object_and_distractors_drift_smoothly():
    cfg = FocusTaskConfig(object_frames=6, max_speed=2.0)
    ds = SyntheticFocusDataset(40, cfg, seed=6)
    total_motion = []
    for i in range(len(ds)):
        item = ds[i]
        tracks = [object_centre(item["object_boxes"][item["object_frames"]])]
        tracks += list(object_centre(item["distractor_boxes"]).unbind(1))
        for track in tracks:
            steps = track[1:] - track[:-1]
            # rounding corners to even pixels adds at most 1 px per frame and axis
            assert steps.abs().max() <= cfg.max_speed + 2
            # a straight line rounded to the 2-pixel grid moves by one of two neighbouring even steps
            assert (steps.amax(dim=0) - steps.amin(dim=0)).max() <= 2, "motion should be a straight line"
            total_motion.append((track[-1] - track[0]).norm().item())
    assert np.mean(total_motion) > 3.0, "things should move"


def test_class_vanishes_under_2x_and_4x_area_downsampling_counterfactual():
    ds = SyntheticFocusDataset(6, CFG, seed=7)
    for i in range(len(ds)):
        clips = [ds.sample(i, label=c)["clip"] for c in range(CFG.num_classes)]
        item = ds.sample(i)
        frame = int(item["object_frames"].nonzero()[0])
        box = item["object_boxes"][frame]
        for a in range(CFG.num_classes):
            for b in range(a + 1, CFG.num_classes):
                full_res = (clips[a] - clips[b]).abs()
                assert interior(full_res[frame], box, CFG.border).mean() > 0.25
                for down in (lambda x: F.avg_pool2d(x, 2), lambda x: F.avg_pool2d(x, 4),
                             lambda x: F.interpolate(x, scale_factor=0.5, mode="area"),
                             lambda x: F.interpolate(x, scale_factor=0.25, mode="area")):
                    assert (down(clips[a]) - down(clips[b])).abs().max() < 1e-5


def test_classes_differ_only_inside_the_object():
    ds = SyntheticFocusDataset(4, CFG, seed=8)
    item = ds.sample(2)
    diff = (ds.sample(2, label=0)["clip"] - ds.sample(2, label=1)["clip"]).abs().amax(dim=1)  # [T, H, W]
    inside = torch.zeros_like(diff, dtype=torch.bool)
    for t in item["object_frames"].nonzero().flatten():
        x0, y0, x1, y1 = (int(v) + s * CFG.border for v, s in zip(item["object_boxes"][t], (1, 1, -1, -1)))
        inside[t, y0:y1, x0:x1] = True
    assert diff[~inside].max() == 0
    assert diff[inside].max() > 0.5


def test_class_unreadable_at_half_resolution_but_readable_at_full_resolution():
    """Object interiors of natural samples: full-resolution patterns differ by class and a simple rule
    reads them; after 2x area downsampling every class looks the same (up to pixel noise)."""
    ds = SyntheticFocusDataset(24, CFG, seed=9)
    patches = {c: [] for c in range(CFG.num_classes)}
    for i in range(len(ds)):
        item = ds[i]
        for t in item["object_frames"].nonzero().flatten():
            patch = interior(item["clip"][t], item["object_boxes"][t], CFG.border)
            assert pattern_class_from_patch(patch) == item["label"]
            pooled = F.avg_pool2d(patch, 2)
            assert pattern_class_from_patch(F.interpolate(pooled[None], scale_factor=2.0)[0]) == 3  # all flat
            patches[item["label"]].append(patch)
    means = {c: torch.stack(p) for c, p in patches.items()}
    for a in range(CFG.num_classes):
        for b in range(a + 1, CFG.num_classes):
            n = min(len(means[a]), len(means[b]))
            full = (means[a][:n] - means[b][:n]).abs().mean()
            half = (F.avg_pool2d(means[a][:n], 2) - F.avg_pool2d(means[b][:n], 2)).abs().mean()
            assert full > 0.2, (a, b, full)
            assert half < 0.03, (a, b, half)


def test_object_is_findable_by_redness_at_quarter_resolution():
    ds = SyntheticFocusDataset(30, CFG, seed=10)
    hits = total = 0
    for i in range(len(ds)):
        item = ds[i]
        small = F.avg_pool2d(item["clip"], 4)  # [T, 3, 16, 16]
        redness = small[:, 0] - (small[:, 1] + small[:, 2]) / 2
        for t in item["object_frames"].nonzero().flatten():
            row, col = divmod(int(redness[t].argmax()), redness.shape[-1])
            x0, y0, x1, y1 = item["object_boxes"][t].tolist()
            cell_overlaps_box = 4 * col < x1 and 4 * col + 4 > x0 and 4 * row < y1 and 4 * row + 4 > y0
            hits += cell_overlaps_box
            total += 1
    assert hits / total >= 0.9


def test_distractors_are_green_present_everywhere_and_carry_no_class():
    ds = SyntheticFocusDataset(80, CFG, seed=11)
    agree = seen = 0
    patterns = set()
    green_rings = []
    for i in range(len(ds)):
        item = ds[i]
        boxes = item["distractor_boxes"]
        assert not torch.isnan(boxes).any()
        for t in range(CFG.num_frames):
            others = [item["object_boxes"][t]] + [boxes[t, k] for k in range(CFG.num_distractors)]
            for k in range(CFG.num_distractors):
                box = boxes[t, k]
                overlaps = [o for j, o in enumerate(others) if j != k + 1 and not torch.isnan(o).any()
                            and o[0] < box[2] and o[2] > box[0] and o[1] < box[3] and o[3] > box[1]]
                if overlaps:
                    continue
                x0, y0, x1, _ = (int(v) for v in box)
                green_rings.append(item["clip"][t, :, y0:y0 + CFG.border, x0:x1].mean(dim=(1, 2)))
                found = pattern_class_from_patch(interior(item["clip"][t], box, CFG.border))
                patterns.add(found)
                agree += found == item["label"]
                seen += 1
    rings = torch.stack(green_rings)
    assert (rings[:, 1] > 0.9).all() and (rings[:, 0] < 0.1).all()
    assert patterns == set(range(CFG.num_classes))
    assert agree / seen < 0.4, "distractor patterns must be independent of the label"


def test_background_is_smooth_with_light_noise():
    noisy, quiet = SyntheticFocusDataset(10, CFG, seed=12), SyntheticFocusDataset(10, QUIET, seed=12)
    means = []
    for i in range(len(noisy)):
        clean = quiet[i]
        free = outside_all_boxes(clean, CFG.frame_size)
        values = clean["clip"].permute(1, 0, 2, 3)[:, free]  # [3, N]
        assert values.min() > 0.1 and values.max() < 0.9
        redness = values[0] - (values[1] + values[2]) / 2
        assert redness.abs().max() < 0.2, "the background must not look like the red border"
        steps_x = (clean["clip"][..., 1:] - clean["clip"][..., :-1]).abs().amax(dim=1)
        assert steps_x[free[..., 1:] & free[..., :-1]].max() < 0.03, "background should be low-frequency"
        noise = (noisy[i]["clip"] - clean["clip"]).permute(1, 0, 2, 3)[:, free]
        assert 0.015 < noise.std() < 0.025 and noise.mean().abs() < 0.002
        means.append(values.mean().item())
    assert np.std(means) > 0.02, "backgrounds should vary between samples"


def test_real_backgrounds_are_resized_and_played_in_order():
    colours = np.array([[40, 80, 120], [200, 60, 30], [10, 150, 90], [90, 90, 90], [160, 20, 220]], np.uint8)
    frames = np.broadcast_to(colours[:, None, None, :], (5, 48, 80, 3)).copy()
    ds = SyntheticFocusDataset(6, QUIET, seed=13, backgrounds=frames)
    expected = torch.tensor(colours, dtype=torch.float32) / 255
    for i in range(len(ds)):
        item = ds[i]
        assert item["clip"].shape == (8, 3, 64, 64)
        free = outside_all_boxes(item, QUIET.frame_size)
        shown = [int((expected - item["clip"][t][:, free[t]].median(dim=1).values).abs().sum(1).argmin())
                 for t in range(QUIET.num_frames)]
        assert all((b - a) % 5 == 1 for a, b in itertools.pairwise(shown)), shown
        for t, k in enumerate(shown):
            assert torch.allclose(item["clip"][t][:, free[t]], expected[k][:, None], atol=1e-3)
    as_float = SyntheticFocusDataset(1, QUIET, seed=13, backgrounds=torch.from_numpy(frames / 255.0))
    assert torch.allclose(as_float[0]["clip"], ds[0]["clip"], atol=1e-3)
    with pytest.raises(ValueError):
        SyntheticFocusDataset(1, QUIET, backgrounds=np.zeros((4, 32, 32), np.uint8))


def test_collate_stacks_a_batch():
    ds = SyntheticFocusDataset(8, CFG, seed=14)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, collate_fn=collate)))
    assert batch["clip"].shape == (4, 8, 3, 64, 64)
    assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [0, 1, 2, 3]
    assert batch["object_boxes"].shape == (4, 8, 4) and batch["object_frames"].shape == (4, 8)


def test_object_centre():
    boxes = torch.tensor([[0.0, 2.0, 14.0, 16.0], [float("nan")] * 4])
    centres = object_centre(boxes)
    assert centres.shape == (2, 2)
    assert centres[0].tolist() == [7.0, 9.0] and torch.isnan(centres[1]).all()


@pytest.mark.parametrize("upscale", [1, 2])
def test_written_videos_keep_ground_truth_and_readable_patterns(tmp_path, upscale):
    av = pytest.importorskip("av")
    cfg = FocusTaskConfig(num_classes=2)
    ds = SyntheticFocusDataset(4, cfg, seed=15)
    names = ["NonViolence", "Violence"]
    gt_path = write_class_folder_videos(tmp_path, ds, names, fps=10, upscale=upscale)
    records = [json.loads(line) for line in gt_path.read_text(encoding="utf-8").splitlines()]
    assert len(records) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["NonViolence", "Violence", "ground_truth.jsonl"]
    for record in records:
        assert record["path"].startswith(names[record["label"]] + "/")
        assert record["label"] == ds[record["index"]]["label"]
        with av.open(str(tmp_path / record["path"])) as container:
            decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert len(decoded) == cfg.num_frames
        assert decoded[0].shape == (64 * upscale, 64 * upscale, 3)
        assert record["object_frames"] == ds[record["index"]]["object_frames"].tolist()
        for t, box in enumerate(record["boxes"]):
            assert (box is None) != record["object_frames"][t]
            if box is None:
                continue
            frame = torch.from_numpy(decoded[t]).permute(2, 0, 1).float() / 255
            assert box == (ds[record["index"]]["object_boxes"][t] * upscale).tolist()
            patch = interior(frame, torch.tensor(box), cfg.border * upscale)
            assert pattern_class_from_patch(patch) == record["label"]
            x0, y0, x1, _ = (int(v) for v in box)
            ring = frame[:, y0:y0 + cfg.border * upscale, x0:x1].mean(dim=(1, 2))
            assert ring[0] > 0.7 and ring[1] < 0.2 and ring[2] < 0.2, "red border should survive encoding"


def test_write_rejects_missing_class_names(tmp_path):
    ds = SyntheticFocusDataset(4, CFG, seed=0)
    with pytest.raises(ValueError):
        write_class_folder_videos(tmp_path, ds, ["a", "b"])
    assert not any(tmp_path.iterdir()), "nothing should be written when the class names cannot cover the labels"
    with pytest.raises(ValueError):
        write_class_folder_videos(tmp_path, ds, ["a", "a", "b", "c"])
