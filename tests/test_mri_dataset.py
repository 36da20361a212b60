"""Preprocessed scans as clips: shapes, slice bookkeeping, caching, refusal of unusable rows."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from _cv_fixtures import tiny_preset, write_preprocessed_cohort
from adafocus.datasets.mri.dataset import (
    AugmentedCopies,
    ClipAugmentation,
    ClipSpec,
    MRISliceDataset,
    collate_scans,
    is_usable,
)
from adafocus.datasets.mri.manifest import read_manifest


def test_dataset_items_and_cache(tmp_path, monkeypatch):
    rows = read_manifest(write_preprocessed_cohort(tmp_path, n_participants=2, repeats=1))
    usable = [r for r in rows if is_usable(r)]
    assert len(usable) == 3 and len(rows) == 4
    spec = ClipSpec.for_preset(tiny_preset())
    dataset = MRISliceDataset(usable, spec)
    item = dataset[0]
    assert item["clip"].shape == (8, 3, 32, 32) and item["clip"].dtype == torch.float32
    assert 0.0 <= float(item["clip"].min()) and float(item["clip"].max()) <= 1.0
    info = dataset.slice_info(0)
    assert item["slice_indices"].tolist() == list(info.slice_indices) and info.axis == "sagittal"
    assert (item["participant_id"], item["session_id"], item["label"]) == ("P000", "ses-M000", 0)
    import adafocus.datasets.mri.dataset as module

    def fail(*args):
        raise AssertionError("volume decoded twice")

    monkeypatch.setattr(module, "load_preprocessed", fail)
    assert torch.equal(dataset[0]["clip"], item["clip"])  # served from the cache
    batch = collate_scans([dataset[0], dataset[0]])
    assert batch["clip"].shape == (2, 8, 3, 32, 32) and batch["label"].tolist() == [0, 0]


def test_unusable_rows_are_refused(tmp_path):
    rows = read_manifest(write_preprocessed_cohort(tmp_path, n_participants=2, repeats=0))
    with pytest.raises(ValueError, match="PBAD"):
        MRISliceDataset(rows, ClipSpec())


def test_augmentation_keeps_range_and_changes_the_clip():
    torch.manual_seed(0)
    clip = torch.rand(4, 3, 16, 16)
    before = clip.clone()
    augmented = ClipAugmentation()(clip)
    assert augmented.shape == clip.shape and not torch.equal(augmented, clip)
    assert float(augmented.min()) >= 0 and float(augmented.max()) <= 1
    assert torch.equal(clip, before)  # the cached clip is never modified


def test_augmentation_moves_within_the_slice_plane_only():
    """Every candidate slice keeps its own anatomy: the affine never mixes slices, and all slices get the same
    in-plane pose (a bright square moves the same way in each)."""
    torch.manual_seed(3)
    clip = torch.zeros(5, 3, 32, 32)
    for t in range(5):
        clip[t, :, 10:20, 12:22] = 0.2 + 0.15 * t  # one brightness per slice
    shifted = ClipAugmentation(degrees=0.0, scale=0.0, translation_px=4.0, bias_coefficients=0.0, log_gamma=0.0,
                               noise_std=0.0)(clip)
    means = shifted.flatten(1).max(dim=1).values
    assert torch.allclose(means, torch.tensor([0.2 + 0.15 * t for t in range(5)]), atol=0.02)
    masks = shifted[:, 0] / means[:, None, None] > 0.5
    assert all(torch.equal(masks[0], masks[t]) for t in range(1, 5))


def test_augmented_copies_are_made_once_per_scan_and_copy_and_shared_between_datasets(tmp_path):
    rows = read_manifest(write_preprocessed_cohort(tmp_path, n_participants=2, repeats=1))
    usable = [r for r in rows if is_usable(r)]
    spec = ClipSpec.for_preset(tiny_preset())
    calls = []

    def counted(clip):
        calls.append(1)
        return ClipAugmentation()(clip)

    copies = AugmentedCopies(3, counted)
    fold_a, fold_b = MRISliceDataset(usable[:2], spec, augment=copies), MRISliceDataset(usable, spec, augment=copies)
    plain = fold_a.clip_and_info(0)[0]
    torch.manual_seed(0)
    drawn = [fold_a[0]["clip"] for _ in range(40)] + [fold_b[0]["clip"] for _ in range(40)]
    assert len(calls) == copies.made == 3  # 80 draws of one scan, over two datasets: three augmentations
    distinct = {tuple(c.flatten()[:64].tolist()) for c in drawn}
    assert len(distinct) == 3 and not any(torch.equal(c, plain) for c in drawn)
    assert all(c.dtype == torch.float32 and c.shape == plain.shape for c in drawn)
    assert float(min(c.min() for c in drawn)) >= 0 and float(max(c.max() for c in drawn)) <= 1
    fold_b[2]
    assert copies.made == 4  # another scan gets its own copies
    torch.manual_seed(0)
    rerun = MRISliceDataset(usable[:2], spec, augment=AugmentedCopies(3))
    again = [rerun[0]["clip"] for _ in range(40)]
    assert all(torch.equal(a, b) for a, b in zip(again, drawn))  # the same seed makes and draws the same copies
    with pytest.raises(ValueError, match="copies"):
        AugmentedCopies(0)


def test_a_model_takes_the_channels_its_slice_context_gives():
    import pytest
    from adafocus.core.config import get_preset, with_input_channels
    from adafocus.core.model import UniAdaFocus

    tiny = get_preset("cpu-mri").model
    assert with_input_channels(tiny, 3) is tiny and with_input_channels(tiny, 1) is tiny
    five = with_input_channels(tiny, 5)
    assert five.glance_backbone_kwargs["in_chans"] == five.local_backbone_kwargs["in_chans"] == 5
    assert five.normalize_mean == (0.5,) * 5 and five.normalize_std == (0.25,) * 5
    model = UniAdaFocus(dataclasses.replace(five, glance_pretrained=None, local_pretrained=None)).eval()
    clip = torch.rand(1, five.num_candidates, 5, five.frame_size, five.frame_size)
    assert model.infer(clip).probabilities.shape == (1, five.num_classes)
    with pytest.raises(ValueError, match="--context 2"):
        with_input_channels(get_preset("mri-paper").model, 5)
