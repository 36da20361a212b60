"""Budgeted conditional exit: scores, geometric proportions, threshold fitting, budget solving, baselines."""

from __future__ import annotations

import json
import math

import pytest
import torch
from adafocus.core.exits import (
    ExitPolicy,
    accuracy_by_exit,
    assign_exits,
    budget_curve,
    exit_accuracy,
    exit_scores,
    expected_cost,
    fit_thresholds,
    geometric_exit_proportions,
    random_exit_accuracy,
    solve_budget,
)

NUM_EXITS, NUM_CLASSES = 5, 10
EXIT_COSTS = [1.0, 2.0, 3.5, 5.0, 8.0]


def synthetic_exits(num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, K, C] where later exits are more accurate and a large margin means a correct answer."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, NUM_CLASSES, (num_samples,), generator=generator)
    logits = torch.randn(num_samples, NUM_EXITS, NUM_CLASSES, generator=generator)
    margin = 1.5 * torch.randn(num_samples, NUM_EXITS, generator=generator) + torch.linspace(
        0.0, 3.0, NUM_EXITS
    )
    logits[torch.arange(num_samples), :, labels] += margin
    return logits, labels


def test_exit_scores_follow_their_definitions():
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]]])  # one sample, two exits
    probs = torch.tensor([math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2), 1 / (math.exp(2) + 2)])
    confidence = exit_scores(logits, "confidence")
    torch.testing.assert_close(confidence, torch.tensor([[probs[0].item(), 1 / 3]]))
    entropy = exit_scores(logits, "entropy")
    torch.testing.assert_close(entropy, torch.tensor([[(probs * probs.log()).sum().item(), math.log(1 / 3)]]))
    assert (entropy[:, 0] > entropy[:, 1]).all()  # the peaked exit is the more confident one
    with pytest.raises(ValueError, match="unknown exit criterion"):
        exit_scores(logits, "margin")


@pytest.mark.parametrize("q", [0.05, 0.5, 1.0, 2.0, 40000.0])
def test_geometric_proportions_sum_to_one_and_follow_q(q):
    proportions = geometric_exit_proportions(6, q)
    assert proportions.shape == (6,)
    torch.testing.assert_close(proportions.sum(), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(proportions[1:] / proportions[:-1], torch.full((5,), q, dtype=torch.float64))


def test_geometric_proportions_reject_bad_q():
    with pytest.raises(ValueError, match="q must be"):
        geometric_exit_proportions(3, 0.0)
    with pytest.raises(ValueError, match="num_exits"):
        geometric_exit_proportions(0, 1.0)


@pytest.mark.parametrize("q", [0.3, 0.8, 1.0, 1.7])
def test_fitted_thresholds_reproduce_the_target_proportions(q):
    logits, _ = synthetic_exits(997, seed=0)  # a prime N so that N * p_k is never an integer
    scores = exit_scores(logits, "entropy")
    proportions = geometric_exit_proportions(NUM_EXITS, q)
    exit_index = assign_exits(scores, fit_thresholds(scores, proportions))
    fractions = torch.bincount(exit_index, minlength=NUM_EXITS).double() / len(exit_index)
    assert (fractions - proportions).abs().max() <= 1 / 997 + 1e-12
    # the running target keeps cumulative counts at floor(N * P_k): no drift onto the last exit
    expected_cumulative = torch.floor(997 * proportions.cumsum(0) + 1e-9)
    assert torch.equal(
        torch.bincount(exit_index, minlength=NUM_EXITS).cumsum(0).double(), expected_cumulative
    )


def test_fit_thresholds_on_a_small_hand_example():
    scores = torch.tensor([[0.9, 0.0], [0.8, 0.0], [0.1, 0.5], [0.7, 0.0]])
    thresholds = fit_thresholds(scores, torch.tensor([0.5, 0.5]))
    assert thresholds.tolist() == [pytest.approx(0.75), -math.inf]  # halfway between 0.8 (taken) and 0.7 (left)
    # samples 0, 1 are taken at exit 0 (top 2 of 4 there), so exit 1's threshold comes from samples 2, 3
    scores = torch.tensor([[0.9, 0.9, 0.0], [0.8, 0.8, 0.0], [0.1, 0.2, 0.0], [0.7, 0.3, 0.0]])
    thresholds = fit_thresholds(scores, torch.tensor([0.5, 0.25, 0.25]))
    assert thresholds.tolist() == [pytest.approx(0.75), pytest.approx(0.25), -math.inf]
    # floor(4 * 0.2) = 0 samples at exit 0 -> +inf (nobody exits there); floor(4 * 0.75) = 3 at exit 1
    thresholds = fit_thresholds(scores, torch.tensor([0.2, 0.55, 0.25], dtype=torch.float64))
    assert thresholds.tolist() == [math.inf, pytest.approx(0.25), -math.inf]


def test_assign_exits_picks_the_first_passing_exit():
    scores = torch.tensor(
        [[0.9, 0.9, 0.9], [0.1, 0.6, 0.9], [0.1, 0.1, 0.9], [0.1, 0.1, -5.0], [0.5, 0.0, 0.0]]
    )
    thresholds = torch.tensor([0.5, 0.5, -math.inf])
    assert assign_exits(scores, thresholds).tolist() == [0, 1, 2, 2, 0]
    # the last exit takes everyone left, even if its threshold was set finite
    assert assign_exits(scores, torch.tensor([0.5, 0.5, 100.0])).tolist() == [0, 1, 2, 2, 0]


def test_expected_cost_is_the_mean_exit_cost():
    assert expected_cost(torch.tensor([0, 0, 4, 2]), EXIT_COSTS) == pytest.approx((1 + 1 + 8 + 3.5) / 4)


@pytest.mark.parametrize("criterion", ["entropy", "confidence"])
@pytest.mark.parametrize("budget", [1.6, 3.0, 4.4, 6.5])
def test_solve_budget_meets_the_budget_in_and_out_of_sample(criterion, budget):
    calibration_logits, _ = synthetic_exits(3000, seed=1)
    held_out_logits, _ = synthetic_exits(3000, seed=2)
    policy = solve_budget(exit_scores(calibration_logits, criterion), EXIT_COSTS, budget, criterion=criterion)
    assert policy.calibration_cost <= budget * 1.001
    assert abs(policy.calibration_cost - budget) <= 0.05 * budget
    assert expected_cost(policy.assign(calibration_logits), EXIT_COSTS) == pytest.approx(
        policy.calibration_cost
    )
    held_out_cost = expected_cost(policy.assign(held_out_logits), EXIT_COSTS)
    assert abs(held_out_cost - budget) <= 0.10 * budget


def test_solve_budget_at_the_ends_of_the_range():
    logits, _ = synthetic_exits(500, seed=3)
    scores = exit_scores(logits, "entropy")
    cheapest = solve_budget(scores, EXIT_COSTS, EXIT_COSTS[0], criterion="entropy")
    assert cheapest.calibration_cost <= EXIT_COSTS[0] * 1.001
    dearest = solve_budget(scores, EXIT_COSTS, EXIT_COSTS[-1], criterion="entropy")
    assert dearest.calibration_cost == pytest.approx(EXIT_COSTS[-1])


@pytest.mark.parametrize("budget", [0.5, 8.5])
def test_solve_budget_rejects_unachievable_budgets(budget):
    logits, _ = synthetic_exits(100, seed=4)
    with pytest.raises(ValueError, match=r"\[1.0, 8.0\]"):
        solve_budget(exit_scores(logits, "entropy"), EXIT_COSTS, budget, criterion="entropy")


def test_solve_budget_rejects_bad_costs():
    scores = exit_scores(synthetic_exits(50, seed=5)[0], "entropy")
    with pytest.raises(ValueError, match="non-decreasing"):
        solve_budget(scores, [1.0, 3.0, 2.0, 4.0, 5.0], 2.5, criterion="entropy")
    with pytest.raises(ValueError, match="one cost per exit"):
        solve_budget(scores, [1.0, 2.0], 1.5, criterion="entropy")


def test_policy_round_trips_through_json():
    logits, _ = synthetic_exits(400, seed=6)
    # a very low budget leaves +inf thresholds on the middle exits, the last is always -inf
    policy = solve_budget(exit_scores(logits, "confidence"), EXIT_COSTS, 1.05, criterion="confidence")
    assert math.inf in policy.thresholds and policy.thresholds[-1] == -math.inf
    text = json.dumps(policy.to_dict(), allow_nan=False)  # strict JSON: infinities must be encoded
    restored = ExitPolicy.from_dict(json.loads(text))
    assert restored == policy
    assert torch.equal(restored.assign(logits), policy.assign(logits))
    with pytest.raises(ValueError, match="keys"):
        ExitPolicy.from_dict({"criterion": "entropy"})


def test_should_exit_agrees_with_assign():
    logits, _ = synthetic_exits(600, seed=7)
    policy = solve_budget(exit_scores(logits, "entropy"), EXIT_COSTS, 3.0, criterion="entropy")
    exit_index = policy.assign(logits)
    still_running = torch.ones(600, dtype=torch.bool)
    for k in range(NUM_EXITS):
        stops = policy.should_exit(logits[:, k], k) & still_running
        assert torch.equal(stops, still_running & (exit_index == k))
        still_running &= ~stops
    assert not still_running.any()


def test_accuracy_by_exit_counts_correct_argmax():
    logits = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 1.0]]])
    labels = torch.tensor([0, 1, 1])
    # exit 0 predicts 0, 0, 1 (two right); exit 1 predicts 1, 0, 1 (one right)
    torch.testing.assert_close(
        accuracy_by_exit(logits, labels), torch.tensor([2 / 3, 1 / 3], dtype=torch.float64)
    )
    assert exit_accuracy(logits, labels, torch.tensor([0, 0, 1])) == pytest.approx(2 / 3)
    assert exit_accuracy(logits, labels, torch.tensor([1, 0, 0])) == pytest.approx(1 / 3)


def test_random_exit_accuracy_equals_the_average_over_random_assignments():
    logits, labels = synthetic_exits(300, seed=8)
    exit_index = assign_exits(
        exit_scores(logits, "entropy"),
        fit_thresholds(exit_scores(logits, "entropy"), geometric_exit_proportions(NUM_EXITS, 0.9)),
    )
    generator = torch.Generator().manual_seed(0)
    shuffled = [
        exit_accuracy(logits, labels, exit_index[torch.randperm(300, generator=generator)])
        for _ in range(2000)
    ]
    assert random_exit_accuracy(logits, labels, exit_index) == pytest.approx(
        sum(shuffled) / len(shuffled), abs=0.003
    )


def test_thresholded_exiting_beats_random_exiting():
    calibration_logits, _ = synthetic_exits(2000, seed=9)
    logits, labels = synthetic_exits(2000, seed=10)
    policy = solve_budget(exit_scores(calibration_logits, "entropy"), EXIT_COSTS, 3.0, criterion="entropy")
    exit_index = policy.assign(logits)
    learned = exit_accuracy(logits, labels, exit_index)
    baseline = random_exit_accuracy(logits, labels, exit_index)
    assert learned > baseline + 0.1


def test_budget_curve_traces_cost_and_accuracy_upward():
    logits, labels = synthetic_exits(1500, seed=11)
    calibration_logits, _ = synthetic_exits(1500, seed=12)
    scores = exit_scores(logits, "entropy")
    qs = [0.1, 0.5, 1.0, 2.0, 10.0]
    curve = budget_curve(scores, logits, labels, EXIT_COSTS, qs)
    assert [point.q for point in curve] == qs
    costs = [point.mean_cost for point in curve]
    assert costs == sorted(costs) and costs[0] < 1.5 and costs[-1] > 7.0
    assert curve[-1].accuracy > curve[0].accuracy
    _, cost, accuracy = curve[2]
    exit_index = assign_exits(scores, fit_thresholds(scores, geometric_exit_proportions(NUM_EXITS, 1.0)))
    assert (cost, accuracy) == (
        expected_cost(exit_index, EXIT_COSTS),
        exit_accuracy(logits, labels, exit_index),
    )
    # thresholds fitted on a separate calibration set: still close to the in-sample costs
    held_out = budget_curve(
        scores, logits, labels, EXIT_COSTS, qs, calibration_scores=exit_scores(calibration_logits, "entropy")
    )
    for in_sample, out_of_sample in zip(curve, held_out):
        assert out_of_sample.mean_cost == pytest.approx(in_sample.mean_cost, rel=0.1)


def test_an_exit_that_takes_everyone_left_takes_unseen_inputs_too():
    """Proportions that send every calibration sample out at exit 0 send a less confident unseen input there too."""
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.7, 0.2, 0.3], [0.8, 0.6, 0.4]])
    thresholds = fit_thresholds(scores, torch.tensor([1.0, 0.0, 0.0]))
    assert thresholds[0] == -math.inf and torch.isinf(thresholds[1]) and thresholds[1] > 0
    halfway = fit_thresholds(scores, torch.tensor([1.0, 1.0, 1.0]))
    assert halfway[0] == pytest.approx(0.85)   # one of three taken (0.9); halfway to the best one left (0.8)
