"""Proof that the method works: train the CPU preset on the synthetic task (known ground truth) and check that
the learned policies find the right frames and regions far better than random / centre / uniform choices, and
that budgeted early exit meets its budget on held-out data. Trains for a few minutes: marked slow."""
import json

import pytest
from adafocus.apps.runs.synthetic import (
    compare_policies,
    evaluate_focus,
    random_exit_baseline,
    synthetic_splits,
)
from adafocus.core.config import get_preset
from adafocus.core.run import load_run
from adafocus.core.train import calibrate, train
from adafocus.datasets.synthetic import collate
from torch.utils.data import DataLoader


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("focus_run")
    preset = get_preset("cpu-synthetic")
    splits = synthetic_splits(preset)
    train(preset, splits["train"], splits["val"], run_dir, device="cpu", collate_fn=collate, progress=False)
    model = load_run(run_dir / "best.pt", device="cpu").model
    return model, splits, run_dir


@pytest.mark.slow
def test_learned_policies_find_the_object_in_space_and_time(trained):
    model, splits, _ = trained
    results = compare_policies(model, splits["test"])
    print(json.dumps(results, indent=1))
    learned, random_patches, centre = results["learned"], results["random_patches"], results["centre_patches"]
    # Same weights, same number and size of patches; only where the patches go differs.
    assert learned["accuracy"] >= random_patches["accuracy"] + 0.15
    assert learned["accuracy"] >= centre["accuracy"] + 0.15
    assert learned["centre_in_box"] >= 0.80
    assert learned["object_frame_rate"] >= 2 * results["uniform_frames"]["object_frame_rate"]


@pytest.mark.slow
def test_budgeted_exit_meets_its_budget_on_held_out_data(trained):
    model, splits, run_dir = trained
    costs = model.exit_costs()
    for fraction in (0.3, 0.6):
        budget = costs[0] + fraction * (costs[-1] - costs[0])
        loader = DataLoader(splits["calibration"], batch_size=100, collate_fn=collate)
        policy = calibrate(model, loader, budget, device="cpu", out_dir=run_dir)
        measured = evaluate_focus(model, splits["test"], exit_policy=policy)
        exits = measured.pop("_exits")
        random_exit = random_exit_baseline(model, splits["test"], exits)
        print(f"budget {budget:.5f}: measured {measured['mean_gmacs']:.5f}, accuracy {measured['accuracy']:.3f}, "
              f"random exit {random_exit:.3f}, exit fractions {measured['exit_fractions']}")
        assert measured["mean_gmacs"] == pytest.approx(budget, rel=0.05)
        assert measured["accuracy"] >= random_exit
