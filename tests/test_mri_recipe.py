"""The cpu-mri recipe's parts: class-balanced sampling, model selection on ties, truncated ImageNet
MobileNetV2, the demo's focus-region measure."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from adafocus.apps.demos.mri import containment_chance, patient_box_places, region_hits
from adafocus.core.backbones import create_backbone
from adafocus.core.train import balanced_sampler, is_better
from adafocus.datasets.mri.cohort import AtrophyRegion


class _Labelled(torch.utils.data.Dataset):
    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)


def test_balanced_sampler_draws_each_class_equally_often():
    labels = [0] * 18 + [1] * 2
    sampler = balanced_sampler(_Labelled(labels), seed=0)
    drawn = torch.tensor([labels[i] for _ in range(200) for i in sampler])  # 200 epochs
    assert len(drawn) == 200 * 20
    assert abs(float(drawn.float().mean()) - 0.5) < 0.03  # unbalanced order would give 0.1


def test_balanced_sampler_needs_labels():
    assert balanced_sampler(torch.utils.data.TensorDataset(torch.zeros(3)), seed=0) is None


def test_model_selection_breaks_accuracy_ties_by_loss():
    assert is_better(0.9, 0.5, 0.8, 0.1)          # higher accuracy wins whatever the loss
    assert not is_better(0.8, 0.05, 0.9, 0.5)
    assert is_better(1.0, 0.1, 1.0, 0.4)           # tie: the lower loss wins
    assert not is_better(1.0, 0.4, 1.0, 0.1)
    assert not is_better(float("nan"), 0.0, -1.0, math.inf)
    assert is_better(0.5, 0.7, -1.0, math.inf)     # the first validated epoch always wins


@pytest.mark.parametrize("blocks, dim, stride", [(7, 32, 8), (14, 96, 16)])
def test_truncated_mobilenet_v2_loads_imagenet_weights(blocks, dim, stride):
    full = create_backbone("mobilenet_v2", pretrained="imagenet")
    part = create_backbone("mobilenet_v2", pretrained="imagenet", blocks=blocks)
    assert (part.feature_dim, part.stride) == (dim, stride)
    assert len(part.body) == blocks
    first = next(iter(part.state_dict()))
    assert torch.equal(part.state_dict()[first], full.state_dict()[first])
    assert part(torch.zeros(1, 3, 64, 64)).shape == (1, dim, 64 // stride, 64 // stride)
    with pytest.raises(ValueError, match="19 feature blocks"):
        create_backbone("mobilenet_v2", blocks=20)


def test_containment_chance():
    assert containment_chance(0, 100, 20, 50) == pytest.approx(20 / 80)
    assert containment_chance(0, 100, 20, 5) == pytest.approx(5 / 80)   # near the edge: fewer placements
    assert containment_chance(0, 100, 100, 50) == 1.0                    # the box fills the frame
    assert containment_chance(0, 100, 20, 150) == 0.0


def test_region_hits_need_the_band_slice_and_the_centre_in_the_box():
    region = AtrophyRegion()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-84.0, -120.0, -70.0)            # slice i sits at x = 2 i - 84 mm
    extent = np.array([[-84.0, -120.0, -70.0], [84.0, 88.0, 110.0]])
    in_band, outside = 56, 42                          # x = +28 (the region's centre plane) and x = 0
    around_centre = np.array([26.0, -40.0, -30.0, 30.0, 0.0, 0.0])
    elsewhere = np.array([26.0, 20.0, 40.0, 30.0, 60.0, 80.0])
    hits, chances = region_hits([(in_band, around_centre), (outside, around_centre), (in_band, elsewhere)],
                                affine, extent, region, band_share=0.4)
    assert hits == [True, False, False]
    expected = 0.4 * containment_chance(-120, 88, 40, -20) * containment_chance(-70, 110, 30, -14)
    assert chances[0] == pytest.approx(expected)



def test_patient_box_places_summarise_each_folds_patient_boxes(tmp_path):
    from adafocus.apps.runs.cv import PREDICTION_COLUMNS
    from adafocus.reports.cv_report import fold_dir
    from adafocus.reports.tables import tsv_text

    def row(label, boxes_mm):
        return {**{c: "" for c in PREDICTION_COLUMNS}, "label": label, "slices": ";".join("5" for _ in boxes_mm),
                "boxes_mm": ";".join(" ".join(str(v) for v in b) for b in boxes_mm)}

    tables = [[row(1, [(0, -30, -20, 0, 10, 20), (0, -30, -20, 0, 10, 20)]), row(0, [(0, 50, 50, 0, 60, 60)])],
              [row(1, [(0, 0, 0, 0, 20, 40)]), row(1, [(0, 10, 20, 0, 30, 60)])]]
    for i, rows in enumerate(tables):
        fold_dir(tmp_path, i).mkdir()
        (fold_dir(tmp_path, i) / "predictions.tsv").write_text(tsv_text(PREDICTION_COLUMNS, rows))
    places = patient_box_places(tmp_path, 2)  # controls' boxes (label 0) are left out
    assert places[0] == {"fold": 0, "centre_yz_mm": [-10.0, 0.0], "sd_yz_mm": [0.0, 0.0], "sides_yz_mm": [40.0, 40.0]}
    assert places[1] == {"fold": 1, "centre_yz_mm": [15.0, 30.0], "sd_yz_mm": [5.0, 10.0], "sides_yz_mm": [20.0, 40.0]}
