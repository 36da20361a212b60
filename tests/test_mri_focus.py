"""The MRI twin of test_learns_to_focus: cpu-mri trained on the synthetic lesion task (datasets.synthetic_mri),
where the truth is known, must find the lesion's slices and place its boxes on the lesion, far better than
random or central selections at the same cost, and must move its selection with the lesion from subject to
subject. The training test is slow (minutes); the checks of the measuring tools are fast."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from adafocus.apps.bench.mri_focus import SELECTION_BASELINES, lesion_following, lesion_task_splits, slice_chance
from adafocus.apps.runs.synthetic import compare_policies, with_policies
from adafocus.core.config import get_preset
from adafocus.core.model import UniAdaFocus
from adafocus.core.run import load_run
from adafocus.core.train import train
from adafocus.datasets.synthetic import collate
from adafocus.datasets.synthetic_mri import LesionTaskConfig
from adafocus.reports.metrics import best_fixed_place_hit_rate, follow_correlation

# The proof trains cpu-mri (tiny_cnn backbones, as cpu-synthetic) with these documented overrides:
# - native-resolution sizes: frames of 104 x 104 are the sagittal plane of the task's 2 mm grid (84 x 104 x 90)
#   with no resampling, glanced at 52 (4 mm), 8 of the 16 candidate slices glanced, P = 24 patches cut from
#   boxes of 24-36 pixels, so 1-voxel stripes reach the local encoder and average away in the glance;
# - a finer glance map: the glance net's last block keeps its resolution (strides 2, 2, 1: a 13 x 13 map of
#   8-pixel cells, not cpu-mri's 7 x 7 of 15), so the soft-argmax head can place a box within half a lesion
#   (the lesion is 14 px across, a box 24-36);
# - cpu-mri's soft-argmax head and cell proxy, each cell scored from its own glance feature (spatial_context=1)
#   and the cell target sharpened (cell_temperature 0.02): with the policy trunk's 3 x 3 context and the
#   authors' box proxy the boxes settled one or two cells beside the lesion in most runs on an Intel Xeon
#   (1 of 8 runs passed);
# - boxes decoded at the peak in eval mode (spatial_window=3, core.policy.window_weights): over all cells the
#   boxes moved only 0.45x as far as the lesion, and held its centre in 0.73-0.82 of lesion slices over four
#   runs; decoded in a 3 x 3 window, 0.83-0.98 on the same checkpoints (docs/notes/mri-focus-recipe.md); a chosen
#   slice between two glance frames gets its box from their blended cell weights, decoded at the peak
#   (policy.peak_actions_at), not from the blend of their boxes, which missed the lesion in 0.08-0.25 of lesion
#   slices over six seeds where this misses 0.01-0.05 (docs/notes/mri-focus-recipe.md);
# - training seeds chosen on the validation subjects, never the test ones: seed 0 (TrainConfig's default) first,
#   then the next seed while the best run so far stays under VAL_ENOUGH validation accuracy, up to
#   TRAINING_SEEDS; one torch thread whatever the machine has (at 2 threads a seed's run changed with the CPU;
#   at 1, seeds 0 and 1 gave the same numbers on an Intel Xeon and an AMD EPYC). With this recipe seeds 0, 1,
#   2 and 4 met every check; seeds 3 and 5 missed only the both-axes r (row 0.65, 0.61; docs/notes/mri-focus-recipe.md; "Boxes for the
#   slices between glance frames");
# - the temporal policy at the paper's 0.2 LR ratio (as cpu-video), batches of 8 and few epochs over many
#   subjects instead of many epochs over a few; classes are balanced by construction (labels alternate);
# - BatchNorm statistics recomputed before each validation (precise_bn_batches, see core.train).
FOCUS_MODEL = {"frame_size": 104, "glance_size": 52, "num_glance": 8, "max_patch_side": 36,
               "glance_backbone_kwargs": {"width": 16, "strides": [2, 2, 1]},
               "spatial_head": "soft_argmax", "spatial_proxy": "cells", "spatial_context": 1, "spatial_window": 3}
FOCUS_LOSS = {"cell_temperature": 0.02}
FOCUS_TRAINING = {"epochs": 8, "batch_size": 8, "balance_classes": False, "precise_bn_batches": 25,
                  "lr_multipliers": {"glance": 1.0, "spatial_policy": 1.0, "temporal_policy": 0.2,
                                     "classifier": 1.0, "local": 1.0}}
SPLITS = [("train", 1600), ("val", 100), ("test", 200)]
TRAINING_SEEDS = (0, 1, 2)
TRAINING_THREADS = 1
VAL_ENOUGH = 0.95
FOLLOW_MIN = 0.7  # correlation between the lesion's position and the chosen slices / boxes
FIXED_PLACE_MARGIN = 0.2  # boxes hold the lesion centre this much more often than any one fixed place could


def test_follow_correlation_is_zero_for_a_choice_that_never_moves():
    truth = np.array([1.0, 5.0, 2.0, 8.0])
    assert follow_correlation(truth, truth * 2 + 3) == pytest.approx(1.0)
    assert follow_correlation(truth, np.full(4, 40.0)) == 0.0
    assert follow_correlation(truth, -truth) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        follow_correlation(truth, truth[:3])


def test_best_fixed_place_is_the_ceiling_of_one_place_for_everyone():
    centres = np.array([[10.0, 10.0], [12.0, 11.0], [50.0, 50.0], [52.0, 49.0], [80.0, 20.0]])
    sides = np.full((5, 2), 8.0)
    assert best_fixed_place_hit_rate(centres, sides, 100.0) == pytest.approx(2 / 5)  # either pair, not both
    assert best_fixed_place_hit_rate(centres, np.full((5, 2), 60.0), 100.0) == pytest.approx(4 / 5)
    assert best_fixed_place_hit_rate(centres, np.full((5, 2), 200.0), 100.0) == 1.0
    with pytest.raises(ValueError):
        best_fixed_place_hit_rate(centres, sides[:, :1], 100.0)


def test_a_policy_that_looks_at_the_same_place_for_everyone_does_not_follow_the_lesion():
    preset = get_preset("cpu-mri", **FOCUS_MODEL)
    data = lesion_task_splits(preset, [("test", 6)], LesionTaskConfig(num_scans=2))["test"]
    torch.manual_seed(0)
    fixed = with_policies(UniAdaFocus(preset.model), **SELECTION_BASELINES["centre_selection"])
    following = lesion_following(fixed, data)
    assert following["slice_sets"] == 1 and following["slice_x"] == 0.0
    assert following["follow"] < FOLLOW_MIN


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    preset = get_preset("cpu-mri", **FOCUS_MODEL)
    preset.loss = dataclasses.replace(preset.loss, **FOCUS_LOSS)
    splits = lesion_task_splits(preset, SPLITS)
    root = tmp_path_factory.mktemp("mri_focus_runs")
    val_accuracy, threads = {}, torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        for seed in TRAINING_SEEDS:
            preset.train = dataclasses.replace(preset.train, **FOCUS_TRAINING, seed=seed)
            summary = train(preset, splits["train"], splits["val"], root / f"seed-{seed}", device="cpu",
                            collate_fn=collate, progress=False)
            val_accuracy[seed] = summary["best_accuracy"]
            print(f"seed {seed}: best validation accuracy {val_accuracy[seed]:.3f}")
            if val_accuracy[seed] >= VAL_ENOUGH:
                break
    finally:
        torch.set_num_threads(threads)
    chosen = max(val_accuracy, key=val_accuracy.get)
    model = load_run(root / f"seed-{chosen}" / "best.pt", device="cpu").model
    return model, splits["test"]


@pytest.fixture(scope="module")
def measured(trained):
    model, test = trained
    centre = with_policies(model, **SELECTION_BASELINES["centre_selection"])
    numbers = {"policies": compare_policies(model, test, SELECTION_BASELINES), "slice_chance": slice_chance(test),
               "following": {"learned": lesion_following(model, test),
                             "centre_selection": lesion_following(centre, test)}}
    print(json.dumps(numbers, indent=1))
    return numbers


@pytest.mark.slow
def test_learned_slices_and_boxes_beat_random_and_centre_selection_at_equal_cost(measured):
    policies, learned = measured["policies"], measured["policies"]["learned"]
    # Same weights, same number of P x P patches: equal cost; only which slices and where the boxes go differ.
    for name in ("random_selection", "centre_selection"):
        assert policies[name]["mean_gmacs"] == pytest.approx(learned["mean_gmacs"], rel=1e-6)
        assert learned["accuracy"] >= policies[name]["accuracy"] + 0.15
    assert learned["object_frame_rate"] >= 2 * measured["slice_chance"]
    assert measured["following"]["centre_selection"]["follow"] < FOLLOW_MIN  # the same place for everyone fails


@pytest.mark.slow
def test_learned_boxes_hold_the_lesion_centre(measured):
    assert measured["policies"]["learned"]["centre_in_box"] >= 0.80


@pytest.mark.slow
def test_learned_selection_follows_the_lesion(measured):
    """Slices: the mean chosen slice moves with the lesion's x. Boxes: they hold the lesion's centre more often
    than boxes of the same sizes could from any one place (the ceiling of looking at the same place for
    everyone, which the centred boxes do and stay under)."""
    learned, centre = measured["following"]["learned"], measured["following"]["centre_selection"]
    assert learned["slice_x"] >= FOLLOW_MIN
    assert learned["box_hit"] >= learned["best_fixed_box_hit"] + FIXED_PLACE_MARGIN
    assert centre["box_hit"] <= centre["best_fixed_box_hit"] + 1e-9


@pytest.mark.slow
def test_learned_boxes_move_with_the_lesion_on_both_axes(measured):
    """The lesion's row varies by SD 10 px, less than the boxes, so a box could hold the centre without moving
    up and down. With the recipe above the row r was 0.61-0.95 over six seeds, the check closest to failing: it
    fails seeds 3 and 5, where a tenth of the subjects' boxes sit 12+ px off the lesion (docs/notes/mri-focus-recipe.md)."""
    assert measured["following"]["learned"]["follow"] >= FOLLOW_MIN
