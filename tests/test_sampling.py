"""Frame selection by CDF quantiles and the Monte-Carlo temporal-loss estimator."""

from __future__ import annotations

import itertools

import pytest
import torch
from adafocus.core.sampling import (
    exact_expected_logits,
    invert_cdf,
    mc_expected_logits,
    quantile_levels,
    random_frames,
    select_frames,
    uniform_frames,
)


def assert_strictly_increasing_in_range(indices: torch.Tensor, num_candidates: int) -> None:
    assert indices.dtype == torch.long
    assert (indices >= 0).all() and (indices < num_candidates).all()
    assert (indices[:, 1:] > indices[:, :-1]).all()


def awkward_weights() -> torch.Tensor:
    """Random rows plus one-hot rows, zero runs at both ends and in the middle, and a tight fit."""
    torch.manual_seed(0)
    rows = [torch.rand(8) for _ in range(20)]
    rows += [torch.nn.functional.one_hot(torch.tensor(j), 8).float() for j in range(8)]
    rows += [
        torch.tensor([0.0, 0.0, 0.3, 0.0, 0.0, 0.7, 0.0, 0.0]),
        torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]),
        torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1e-30]),
    ]
    weights = torch.stack(rows)
    return weights / weights.sum(dim=1, keepdim=True)


@pytest.mark.parametrize("random_offsets", [False, True])
@pytest.mark.parametrize("num_select,num_candidates", [(4, 24), (8, 8), (16, 48), (5, 7), (1, 3)])
def test_selection_is_strictly_increasing_and_in_range(random_offsets, num_select, num_candidates):
    weights = awkward_weights()
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        indices = select_frames(
            weights, num_select, num_candidates, random_offsets=random_offsets, generator=generator
        )
        assert indices.shape == (weights.shape[0], num_select)
        assert_strictly_increasing_in_range(indices, num_candidates)


def reference_selection(weights, levels, num_candidates):
    """Scalar, loop-based restatement of the selection rule (one row and one level at a time)."""
    rows = []
    for w, row_levels in zip(weights.double().tolist(), levels.tolist()):
        num_glance, total = len(w), sum(w)
        cdf = [0.0]
        for weight in w:
            cdf.append(cdf[-1] + weight / total)
        cdf[-1] = 1.0
        chosen = []
        for u in row_levels:
            j = max(j for j in range(num_glance) if cdf[j] <= u)
            position = (j + (u - cdf[j]) / (cdf[j + 1] - cdf[j])) / num_glance
            chosen.append(min(int(position * num_candidates), num_candidates - 1))
        for k in range(1, len(chosen)):
            chosen[k] = max(chosen[k], chosen[k - 1] + 1)
        rows.append([min(idx, num_candidates - len(chosen) + k) for k, idx in enumerate(chosen)])
    return rows


@pytest.mark.parametrize("random_offsets", [False, True])
def test_selection_matches_a_loop_restatement_of_the_rule(random_offsets):
    weights = awkward_weights()
    levels = quantile_levels(
        weights.shape[0], 6, random_offsets=random_offsets, generator=torch.Generator().manual_seed(4)
    )
    indices = select_frames(
        weights, 6, 24, random_offsets=random_offsets, generator=torch.Generator().manual_seed(4)
    )
    assert indices.tolist() == reference_selection(weights, levels, 24)


def test_inversion_has_no_nan_at_level_edges_with_zero_segments():
    weights = awkward_weights()
    levels = torch.tensor([0.0, 1e-12, 0.5, 1 - 1e-12]).expand(weights.shape[0], 4)
    positions = invert_cdf(weights, levels)
    assert torch.isfinite(positions).all()
    assert (positions >= 0).all() and (positions <= 1).all()
    assert (positions[:, 1:] >= positions[:, :-1]).all()  # the inverse of a CDF is monotone


def test_inverted_position_lands_in_the_segment_holding_the_mass():
    # mass only on glance segments 2 (30%) and 5 (70%) of 8; level 0.15 is half-way through segment 2,
    # level 0.65 is half-way through segment 5 (0.3 + 0.35)
    weights = torch.tensor([[0.0, 0.0, 0.3, 0.0, 0.0, 0.7, 0.0, 0.0]])
    positions = invert_cdf(weights, torch.tensor([[0.15, 0.65]], dtype=torch.float64))
    torch.testing.assert_close(positions, torch.tensor([[2.5 / 8, 5.5 / 8]], dtype=torch.float64))


def test_uniform_weights_at_test_time_give_evenly_spaced_mid_quantiles():
    # levels (k + 0.5)/4 = 1/8, 3/8, 5/8, 7/8; times 8 candidates -> 1, 3, 5, 7
    weights = torch.full((3, 8), 1 / 8)
    indices = select_frames(weights, 4, 8, random_offsets=False)
    assert indices.tolist() == [[1, 3, 5, 7]] * 3
    # 16 glance positions, 4 frames out of 48 candidates: floor(48 * (k + 0.5) / 4) = 6, 18, 30, 42
    indices = select_frames(torch.full((1, 16), 1 / 16), 4, 48, random_offsets=False)
    assert indices.tolist() == [[6, 18, 30, 42]]
    assert uniform_frames(2, 4, 48, random_offsets=False).tolist() == [[6, 18, 30, 42]] * 2


def test_one_hot_weight_is_pushed_into_a_feasible_run():
    # all mass on glance segment 7 of 8 -> every position falls in [7/8, 1) -> candidates 28..31 of 32,
    # four frames need four distinct candidates, exactly those
    weights = torch.nn.functional.one_hot(torch.tensor([7]), 8).float()
    assert select_frames(weights, 4, 32, random_offsets=False).tolist() == [[28, 29, 30, 31]]
    # with only 8 candidates the same mass maps every position to candidate 7: the cap pulls the run back
    assert select_frames(weights, 4, 8, random_offsets=False).tolist() == [[4, 5, 6, 7]]


def test_peaked_weights_concentrate_selections_around_the_peak():
    torch.manual_seed(0)
    weights = torch.full((1, 8), 0.01)
    weights[0, 5] = 0.93
    generator = torch.Generator().manual_seed(3)
    peaked = select_frames(weights.expand(500, 8), 4, 32, random_offsets=True, generator=generator)
    spread = uniform_frames(500, 4, 32, random_offsets=True, generator=generator)
    peak_window = (peaked >= 20) & (peaked < 24)  # candidates under glance segment 5
    assert peak_window.float().mean() > 0.85
    assert ((spread >= 20) & (spread < 24)).float().mean() < 0.3
    assert select_frames(weights, 4, 32, random_offsets=False).tolist() == [[20, 21, 22, 23]]


def test_seeded_generator_is_deterministic_and_seeds_differ():
    weights = torch.softmax(torch.randn(16, 8, generator=torch.Generator().manual_seed(0)), dim=1)

    def draw(seed):
        return select_frames(
            weights, 6, 48, random_offsets=True, generator=torch.Generator().manual_seed(seed)
        )

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    assert torch.equal(
        random_frames(4, 6, 48, generator=torch.Generator().manual_seed(7)),
        random_frames(4, 6, 48, generator=torch.Generator().manual_seed(7)),
    )


def test_quantile_levels_are_stratified():
    levels = quantile_levels(1000, 5, random_offsets=True, generator=torch.Generator().manual_seed(0))
    stratum = torch.arange(5, dtype=torch.float64)
    assert ((levels >= stratum / 5) & (levels < (stratum + 1) / 5)).all()
    # offsets really vary inside each stratum (not collapsed to one point)
    assert (levels.std(dim=0) > 0.04).all()
    fixed = quantile_levels(2, 5, random_offsets=False)
    torch.testing.assert_close(fixed, ((stratum + 0.5) / 5).expand(2, 5))


def test_random_frames_are_sorted_distinct_and_cover_all_candidates():
    indices = random_frames(400, 3, 10, generator=torch.Generator().manual_seed(0))
    assert_strictly_increasing_in_range(indices, 10)
    counts = torch.bincount(indices.flatten(), minlength=10).float()
    assert counts.min() > 0.6 * counts.mean()  # roughly uniform: each candidate chosen ~120 times


def test_training_offsets_visit_every_candidate_of_each_segment():
    indices = uniform_frames(400, 4, 16, random_offsets=True, generator=torch.Generator().manual_seed(0))
    for k in range(4):
        assert set(indices[:, k].tolist()) == {4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3}


@pytest.mark.parametrize(
    "weights,num_select,num_candidates,message",
    [
        (torch.ones(2, 4), 5, 4, "num_select must be <= num_candidates"),
        (torch.ones(2, 4), 0, 4, "num_select must be >= 1"),
        (torch.ones(4), 2, 4, r"shape \[B, T\]"),
        (torch.tensor([[1.0, -0.5, 0.5]]), 2, 4, "non-negative"),
        (torch.zeros(1, 3), 2, 4, "positive total"),
        (torch.tensor([[1.0, float("nan")]]), 1, 4, "NaN"),
    ],
)
def test_select_frames_rejects_bad_input(weights, num_select, num_candidates, message):
    with pytest.raises(ValueError, match=message):
        select_frames(weights, num_select, num_candidates, random_offsets=False)


def brute_force_expected_logits(frame_logits, weights, num_draws):
    """Enumerate ordered draw sequences with itertools (independent of the subset DP)."""
    batch, num_frames, _ = frame_logits.shape
    rows = []
    for b in range(batch):
        w, logits = weights[b].double(), frame_logits[b].double()
        total = 0.0
        for i in range(num_draws):
            for sequence in itertools.permutations(range(num_frames), i):
                probability, left = 1.0, w.sum()
                for frame in sequence:
                    probability = probability * w[frame] / left
                    left = left - w[frame]
                rest = [t for t in range(num_frames) if t not in sequence]
                total = total + probability * (w[rest, None] * logits[rest]).sum(0) / w[rest].sum()
        rows.append(total / num_draws)
    return torch.stack(rows).to(frame_logits.dtype)


def make_inputs(seed, batch=3, num_frames=5, num_classes=4):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, num_frames, num_classes, generator=generator).requires_grad_()
    raw_weights = (1.5 * torch.randn(batch, num_frames, generator=generator)).requires_grad_()
    return logits, raw_weights


@pytest.mark.parametrize("num_draws", [1, 2, 3, 5])
def test_exact_enumeration_matches_brute_force(num_draws):
    logits, raw_weights = make_inputs(0)
    weights = raw_weights.softmax(dim=1)
    exact = exact_expected_logits(logits, weights, num_draws=num_draws)
    torch.testing.assert_close(
        exact, brute_force_expected_logits(logits.detach(), weights.detach(), num_draws)
    )


def test_exact_expectation_with_one_draw_is_the_weighted_mean():
    logits, raw_weights = make_inputs(1)
    weights = raw_weights.softmax(dim=1)
    exact = exact_expected_logits(logits, weights, num_draws=1)
    torch.testing.assert_close(exact, (weights.unsqueeze(2) * logits).sum(dim=1))


@pytest.mark.parametrize("num_draws", [1, 2, 3])
def test_monte_carlo_matches_exact_expectation(num_draws):
    logits, raw_weights = make_inputs(2)
    weights = raw_weights.softmax(dim=1)
    generator = torch.Generator().manual_seed(0)
    estimate = mc_expected_logits(
        logits, weights, num_draws=num_draws, num_samples=20000, generator=generator
    )
    exact = exact_expected_logits(logits, weights, num_draws=num_draws)
    assert estimate.shape == (3, 4)
    torch.testing.assert_close(estimate, exact, atol=0.01, rtol=0)


def test_monte_carlo_gradients_reach_logits_and_weights():
    logits, raw_weights = make_inputs(3)
    weights = raw_weights.softmax(dim=1)
    target = torch.tensor([0, 1, 2])
    generator = torch.Generator().manual_seed(0)
    estimate = mc_expected_logits(logits, weights, num_draws=3, num_samples=20000, generator=generator)
    loss = torch.nn.functional.cross_entropy(estimate, target)
    grad_logits_mc, grad_weights_mc = torch.autograd.grad(loss, [logits, raw_weights])

    exact = exact_expected_logits(logits, weights, num_draws=3)
    grad_logits_exact = torch.autograd.grad(torch.nn.functional.cross_entropy(exact, target), logits)[0]
    assert grad_weights_mc.abs().sum() > 1e-3
    torch.testing.assert_close(grad_logits_mc, grad_logits_exact, atol=0.005, rtol=0)


def test_monte_carlo_weight_gradient_uses_a_detached_normaliser():
    # with one draw the estimate is sum_t w_t l_t / sum(w).detach(): d/dw_t = l_t / sum(w)
    logits = torch.randn(1, 4, 2)
    weights = torch.tensor([[1.0, 2.0, 3.0, 4.0]], requires_grad=True)
    estimate = mc_expected_logits(logits, weights, num_draws=1, num_samples=3)
    estimate[0, 0].backward()
    torch.testing.assert_close(weights.grad, logits[:, :, 0] / 10.0)


def test_monte_carlo_is_deterministic_with_a_seeded_generator():
    logits, raw_weights = make_inputs(4)
    weights = raw_weights.softmax(dim=1)

    def estimate(seed):
        generator = torch.Generator().manual_seed(seed)
        return mc_expected_logits(logits, weights, num_draws=3, num_samples=16, generator=generator)

    assert torch.equal(estimate(5), estimate(5))
    assert not torch.equal(estimate(5), estimate(6))


def test_expectation_input_validation():
    logits, raw_weights = make_inputs(5)
    weights = raw_weights.softmax(dim=1).detach()
    with pytest.raises(ValueError, match="num_draws"):
        mc_expected_logits(logits, weights, num_draws=6)
    with pytest.raises(ValueError, match="weights shape"):
        mc_expected_logits(logits, weights[:, :4], num_draws=2)
    sparse = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]]).expand(3, 5)
    with pytest.raises(ValueError, match="positive entries"):
        mc_expected_logits(logits, sparse, num_draws=3)
    with pytest.raises(ValueError, match="T <= 10"):
        exact_expected_logits(torch.randn(1, 11, 2), torch.ones(1, 11), num_draws=2)
