"""Proof that the method works: train the CPU preset on the synthetic task (known ground truth) and check that
the learned policies find the right frames and regions far better than random / centre / uniform choices, and
that budgeted early exit meets its budget on held-out data. Trains two seeds FIXED here, 0 and 1, a few
minutes each: marked slow. The checks and their thresholds are the bench's (``adafocus bench focus --task
synthetic``, apps/bench/focus.py SYNTHETIC_CHECKS), which gives the rate over more seeds."""
import pytest
from adafocus.apps.bench.focus import FOCUS_TASKS, format_seed, train_and_check_seed
from adafocus.apps.runs.synthetic import evaluate_focus, random_exit_baseline, synthetic_splits
from adafocus.core.config import get_preset
from adafocus.core.run import load_run
from adafocus.core.train import calibrate
from adafocus.datasets.synthetic import collate
from torch.utils.data import DataLoader

SEEDS = (0, 1)


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    return FOCUS_TASKS["synthetic"].prepare(tmp_path_factory.mktemp("synthetic"), False, print)


@pytest.fixture(scope="module", params=SEEDS, ids=[f"seed{seed}" for seed in SEEDS])
def trained(request, synthetic_data, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"focus_seed{request.param}")
    outcome = train_and_check_seed("synthetic", request.param, work, data=synthetic_data)
    run_dir = work / f"seed-{request.param}" / "run"
    return outcome, load_run(run_dir / "best.pt", device="cpu").model, run_dir


@pytest.mark.slow
def test_learned_policies_find_the_object_in_space_and_time(trained):
    """Same weights, same number and size of patches; only where the patches go differs: learned beats random
    and centred patches by 0.15 accuracy, its boxes hold the object's centre in 0.8 of object frames, and its
    frames show the object at least twice as often as uniform frames do."""
    outcome = trained[0]
    print(format_seed(outcome))
    assert outcome["missed"] == [], {name: outcome["checks"][name] for name in outcome["missed"]}


@pytest.mark.slow
def test_budgeted_exit_meets_its_budget_on_held_out_data(trained):
    _, model, run_dir = trained
    splits = synthetic_splits(get_preset("cpu-synthetic"))
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
