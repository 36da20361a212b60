"""Budgeted conditional exit (MSDNet-style): each sample leaves at the first of K ordered exits whose
confidence clears that exit's threshold.

Thresholds are fitted on a calibration set so that the exit proportions follow a geometric law
p_k proportional to q**k; ``solve_budget`` searches q so that the calibration set's mean cost meets a
budget. Exit costs are cumulative (the cost of running the model up to and including exit k), so they
never decrease with k.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from torch import Tensor

CRITERIA = ("entropy", "confidence")
_LOG_Q_LIMIT = 80.0  # q in [e^-80, e^80]: far beyond any calibration-set size, still finite in float64
_BISECTION_STEPS = 60


def exit_scores(logits: Tensor, criterion: str) -> Tensor:
    """Confidence of each exit's prediction; larger = more confident.

    logits [N, K, C] (any leading shape works: [..., C] -> [...]). Returns float scores [N, K].
    "entropy": negative entropy of the softmax, sum_c p_c log p_c (<= 0).
    "confidence": max softmax probability. The authors' code used the raw max logit; probabilities are
    used here so that scores of different exit heads are on the same scale.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown exit criterion {criterion!r}; choose one of {CRITERIA}")
    log_probs = logits.float().log_softmax(dim=-1)
    if criterion == "entropy":
        return (log_probs.exp() * log_probs).sum(dim=-1)
    return log_probs.max(dim=-1).values.exp()


def geometric_exit_proportions(num_exits: int, q: float) -> Tensor:
    """Target exit proportions p_k proportional to q**k, k = 0..num_exits-1. Returns float64 [K] summing to 1.

    q < 1 front-loads the exits (cheap), q > 1 back-loads them (expensive). Computed in log space so
    extreme q does not overflow.
    """
    if num_exits < 1:
        raise ValueError(f"num_exits must be >= 1, got {num_exits}")
    if not (q > 0 and math.isfinite(q)):
        raise ValueError(f"q must be a positive finite number, got {q}")
    log_q = torch.tensor(math.log(q), dtype=torch.float64)
    return (torch.arange(num_exits, dtype=torch.float64) * log_q).softmax(dim=0)


def _check_scores(scores: Tensor) -> None:
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 1:
        raise ValueError(f"scores must have shape [N, K] with N, K >= 1, got {tuple(scores.shape)}")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN")


def fit_thresholds(scores: Tensor, proportions: Tensor) -> Tensor:
    """Per-exit thresholds that make the calibration samples exit in the target proportions.

    scores [N, K] (larger = more confident), proportions [K] (non-negative, normalised here).
    Greedy, exit by exit: among the samples not yet assigned, the most confident at exit k are taken;
    threshold_k lies halfway between the last one taken and the best one left (-inf when none is left:
    everyone left exits at k; +inf when none is taken); threshold_{K-1} = -inf.
    How many are taken uses a running target: after exit k, floor(N * (p_0 + ... + p_k)) samples have
    been taken in total, so each exit's count is within one sample of N * p_k and rounding never
    accumulates onto the last exit. Returns [K] in scores' dtype. With tied scores at a threshold,
    ``assign_exits`` also lets the tied samples through, so its counts can then exceed the target.
    """
    _check_scores(scores)
    num_samples, num_exits = scores.shape
    if proportions.shape != (num_exits,):
        raise ValueError(f"proportions must have shape [K={num_exits}], got {tuple(proportions.shape)}")
    if (proportions < 0).any() or not proportions.sum() > 0:
        raise ValueError("proportions must be non-negative with a positive sum")
    cumulative = (proportions.double() / proportions.double().sum()).cumsum(dim=0).tolist()

    thresholds = torch.full((num_exits,), -math.inf, dtype=scores.dtype, device=scores.device)
    unassigned = torch.ones(num_samples, dtype=torch.bool, device=scores.device)
    taken_so_far = 0
    for k in range(num_exits - 1):
        target_total = min(num_samples, math.floor(num_samples * cumulative[k] + 1e-9))
        take = max(0, target_total - taken_so_far)
        if take == 0:
            thresholds[k] = math.inf
            continue
        candidates = unassigned.nonzero().squeeze(1)
        order = scores[candidates, k].argsort(descending=True, stable=True)
        chosen = candidates[order[:take]]
        # Halfway to the best sample left, not on the last one taken: an input scored a hair differently
        # (another batch size, a re-run of registration) then still takes the exit its calibration twin took.
        left = candidates[order[take:take + 1]]
        # When every sample left is taken here, everyone left exits here, unseen inputs included.
        thresholds[k] = -math.inf if len(left) == 0 else 0.5 * (scores[chosen[-1], k] + scores[left[0], k])
        unassigned[chosen] = False
        taken_so_far += take
    return thresholds


def assign_exits(scores: Tensor, thresholds: Tensor) -> Tensor:
    """Exit of each sample: the first k with score_k >= threshold_k (the last exit if none passes).

    scores [N, K], thresholds [K]. Returns LongTensor [N] in 0..K-1.
    """
    _check_scores(scores)
    if thresholds.shape != (scores.shape[1],):
        raise ValueError(f"thresholds must have shape [K={scores.shape[1]}], got {tuple(thresholds.shape)}")
    passes = scores >= thresholds.to(scores.device)
    passes[:, -1] = True  # the last exit takes everyone left
    return passes.int().argmax(dim=1)  # argmax returns the first maximal entry


def _as_cost_tensor(exit_costs: Sequence[float] | Tensor, num_exits: int) -> Tensor:
    costs = torch.as_tensor(exit_costs, dtype=torch.float64).flatten().cpu()
    if costs.numel() != num_exits:
        raise ValueError(f"need one cost per exit: {num_exits} exits, {costs.numel()} costs")
    if not torch.isfinite(costs).all() or (costs < 0).any():
        raise ValueError("exit costs must be finite and non-negative")
    if (costs[1:] < costs[:-1]).any():
        raise ValueError(f"exit costs must be cumulative (non-decreasing in k), got {costs.tolist()}")
    return costs


def expected_cost(exit_index: Tensor, exit_costs: Sequence[float] | Tensor) -> float:
    """Mean cost of the samples' exits. exit_index LongTensor [N], exit_costs [K]."""
    costs = torch.as_tensor(exit_costs, dtype=torch.float64).flatten().cpu()
    return costs[exit_index.cpu()].mean().item()


def exit_accuracy(logits: Tensor, labels: Tensor, exit_index: Tensor) -> float:
    """Accuracy when sample n is predicted by exit exit_index[n]. logits [N, K, C], labels [N]."""
    rows = torch.arange(logits.shape[0], device=logits.device)
    predictions = logits[rows, exit_index.to(logits.device)].argmax(dim=-1)
    return (predictions == labels.to(logits.device)).double().mean().item()


def accuracy_by_exit(logits: Tensor, labels: Tensor) -> Tensor:
    """Accuracy of every exit over all samples. logits [N, K, C], labels [N]. Returns float64 [K]."""
    if logits.ndim != 3 or labels.shape != logits.shape[:1]:
        raise ValueError(
            f"need logits [N, K, C] and labels [N], got {tuple(logits.shape)} and {tuple(labels.shape)}"
        )
    return (logits.argmax(dim=-1) == labels.to(logits.device).unsqueeze(1)).double().mean(dim=0)


def random_exit_accuracy(logits: Tensor, labels: Tensor, exit_index: Tensor) -> float:
    """The paper's "random exit" baseline: exits dealt to samples at random with the same counts.

    Its expected accuracy is exactly sum_k frac_k * acc_k, with frac_k the fraction of exit_index
    equal to k and acc_k the accuracy of exit k over all samples; returned without any random draw.
    """
    num_exits = logits.shape[1]
    fractions = torch.bincount(exit_index.cpu(), minlength=num_exits).double() / exit_index.numel()
    return (fractions * accuracy_by_exit(logits, labels).cpu()).sum().item()


@dataclass
class ExitPolicy:
    """Thresholds for conditional exit, fitted on a calibration set to meet a cost budget.

    ``thresholds[k]`` may be +inf (nobody exits at k) or -inf (everybody left exits; always the last).
    ``to_dict`` encodes infinities as the strings "inf" / "-inf" so the dict is strict JSON.
    """

    criterion: str
    thresholds: list[float]
    exit_costs: list[float]
    q: float
    budget: float
    calibration_cost: float

    def __post_init__(self) -> None:
        if self.criterion not in CRITERIA:
            raise ValueError(f"unknown exit criterion {self.criterion!r}; choose one of {CRITERIA}")
        if len(self.thresholds) != len(self.exit_costs):
            raise ValueError("an ExitPolicy needs one threshold per exit cost")

    @property
    def num_exits(self) -> int:
        return len(self.thresholds)

    def assign(self, logits: Tensor) -> Tensor:
        """Exit of each sample from all exits' logits [N, K, C]. Returns LongTensor [N]."""
        scores = exit_scores(logits, self.criterion)
        return assign_exits(scores, torch.tensor(self.thresholds, dtype=scores.dtype))

    def should_exit(self, exit_logits: Tensor, k: int) -> Tensor:
        """For early-exit inference: which samples stop at exit k. exit_logits [N, C] -> BoolTensor [N]."""
        if not 0 <= k < self.num_exits:
            raise ValueError(f"exit index {k} outside 0..{self.num_exits - 1}")
        scores = exit_scores(exit_logits, self.criterion)
        if k == self.num_exits - 1:
            return torch.ones_like(scores, dtype=torch.bool)  # the last exit takes everyone left
        return scores >= self.thresholds[k]

    def to_dict(self) -> dict:
        """JSON-safe dict: infinite thresholds become "inf" / "-inf"."""
        data = asdict(self)
        data["thresholds"] = [
            t if math.isfinite(t) else ("inf" if t > 0 else "-inf") for t in self.thresholds
        ]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ExitPolicy:
        """Inverse of ``to_dict``."""
        expected = {"criterion", "thresholds", "exit_costs", "q", "budget", "calibration_cost"}
        if set(data) != expected:
            raise ValueError(f"ExitPolicy dict needs exactly the keys {sorted(expected)}, got {sorted(data)}")
        return cls(
            criterion=str(data["criterion"]),
            thresholds=[float(t) for t in data["thresholds"]],
            exit_costs=[float(c) for c in data["exit_costs"]],
            q=float(data["q"]),
            budget=float(data["budget"]),
            calibration_cost=float(data["calibration_cost"]),
        )


def _cost_for_q(scores: Tensor, costs: Tensor, log_q: float) -> tuple[float, Tensor]:
    proportions = geometric_exit_proportions(scores.shape[1], math.exp(log_q)).to(scores.device)
    thresholds = fit_thresholds(scores, proportions)
    return expected_cost(assign_exits(scores, thresholds), costs), thresholds


def solve_budget(
    scores: Tensor,
    exit_costs: Sequence[float] | Tensor,
    budget: float,
    *,
    criterion: str,
    tol: float = 1e-3,
) -> ExitPolicy:
    """Exit thresholds whose mean cost on the calibration set meets ``budget``.

    scores [N, K]: calibration scores from ``exit_scores(logits, criterion)``; ``criterion`` is recorded
    in the policy so inference scores the same way. exit_costs [K]: cumulative cost per exit.
    Mean cost grows with q (from exit_costs[0] as q -> 0 to exit_costs[-1] as q -> inf), so log q is
    bisected. The mean cost is a step function of q (steps of cost differences / N), so an exact hit is
    rare: the policy returned is the evaluated q with the highest calibration cost not above
    budget * (1 + tol). Raises ValueError if the budget is outside [exit_costs[0], exit_costs[-1]].
    """
    _check_scores(scores)
    num_exits = scores.shape[1]
    costs = _as_cost_tensor(exit_costs, num_exits)
    low_cost, high_cost = costs[0].item(), costs[-1].item()
    if not low_cost <= budget <= high_cost:
        raise ValueError(
            f"budget {budget} is not achievable: the mean cost per sample must lie in "
            f"[{low_cost}, {high_cost}] (first exit's cost, last exit's cost)"
        )
    allowed = budget + tol * abs(budget)

    evaluated: list[tuple[float, float, Tensor]] = []  # (log q, cost, thresholds)

    def evaluate(log_q: float) -> float:
        cost, thresholds = _cost_for_q(scores, costs, log_q)
        evaluated.append((log_q, cost, thresholds))
        return cost

    low, high = -1.0, 1.0
    while evaluate(low) > budget and low > -_LOG_Q_LIMIT:
        low = max(2 * low, -_LOG_Q_LIMIT)
    while evaluate(high) < budget and high < _LOG_Q_LIMIT:
        high = min(2 * high, _LOG_Q_LIMIT)
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (low + high)
        cost = evaluate(middle)
        if abs(cost - budget) <= tol * abs(budget):
            break
        if cost < budget:
            low = middle
        else:
            high = middle

    feasible = [entry for entry in evaluated if entry[1] <= allowed]
    if feasible:
        log_q, cost, thresholds = max(feasible, key=lambda entry: entry[1])
    else:  # only when the q search range was exhausted: take the cheapest found
        log_q, cost, thresholds = min(evaluated, key=lambda entry: entry[1])
    return ExitPolicy(
        criterion=criterion,
        thresholds=thresholds.tolist(),
        exit_costs=costs.tolist(),
        q=math.exp(log_q),
        budget=float(budget),
        calibration_cost=cost,
    )


class BudgetPoint(NamedTuple):
    q: float
    mean_cost: float
    accuracy: float


def budget_curve(
    scores: Tensor,
    logits: Tensor,
    labels: Tensor,
    exit_costs: Sequence[float] | Tensor,
    qs: Sequence[float],
    *,
    calibration_scores: Tensor | None = None,
) -> list[BudgetPoint]:
    """Accuracy-vs-cost curve traced by sweeping q.

    scores [N, K], logits [N, K, C], labels [N] describe the evaluation set. For each q, thresholds are
    fitted on ``calibration_scores`` [M, K] (e.g. the training set, as the paper does) or, when omitted,
    on ``scores`` themselves (in-sample). Returns one (q, mean cost, accuracy) per q.
    """
    _check_scores(scores)
    num_exits = scores.shape[1]
    costs = _as_cost_tensor(exit_costs, num_exits)
    fit_on = scores if calibration_scores is None else calibration_scores
    curve = []
    for q in qs:
        thresholds = fit_thresholds(fit_on, geometric_exit_proportions(num_exits, q).to(fit_on.device))
        exit_index = assign_exits(scores, thresholds)
        curve.append(
            BudgetPoint(q, expected_cost(exit_index, costs), exit_accuracy(logits, labels, exit_index))
        )
    return curve
