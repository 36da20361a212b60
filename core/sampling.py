"""Temporal sampling: which frames the local encoder sees, and the Monte-Carlo temporal loss estimator.

Frame selection (Uni-AdaFocus, deterministic at test and stratified in training): the temporal policy's
weights over the T_g glance positions define a piecewise-linear CDF on [0, 1]; inverting it at
``num_select`` quantile levels gives positions in [0, 1], which are mapped onto the ``num_candidates``
candidate frames (a finer grid than the glance grid) and made strictly increasing.

The temporal loss needs the expected mean logit of ``num_draws`` frames drawn sequentially without
replacement with probabilities proportional to the weights (paper eq. 21). ``mc_expected_logits`` is
the Monte-Carlo estimator used for training; ``exact_expected_logits`` enumerates every draw and is
the reference it estimates (small T only).
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_EXACT_FRAMES = 10  # 2**T subsets are enumerated by exact_expected_logits


def _check_counts(num_select: int, num_candidates: int) -> None:
    if num_select < 1:
        raise ValueError(f"num_select must be >= 1, got {num_select}")
    if num_candidates < num_select:
        raise ValueError(
            f"cannot select {num_select} distinct frames from {num_candidates} candidates; "
            "num_select must be <= num_candidates"
        )


def _check_frame_weights(weights: Tensor) -> None:
    """Weights must be [B, T] with T >= 1, finite, non-negative, and a positive total in every row."""
    if weights.ndim != 2 or weights.shape[1] < 1:
        raise ValueError(f"weights must have shape [B, T] with T >= 1, got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all():
        raise ValueError("weights contain NaN or infinite values")
    if (weights < 0).any():
        raise ValueError("weights must be non-negative")
    if (weights.sum(dim=1) <= 0).any():
        raise ValueError("every row of weights needs a positive total (all-zero row found)")


def quantile_levels(
    batch: int,
    num_select: int,
    *,
    random_offsets: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Stratified quantile levels u_k = (k + r_k) / num_select, k = 0..num_select-1.

    r_k ~ U[0, 1) independently per row and k when ``random_offsets`` (training), else r_k = 0.5
    (test: the mid-point of each stratum). Returns float64 [batch, num_select]; u_k lies in
    [k/num_select, (k+1)/num_select).
    """
    if random_offsets:
        offsets = torch.rand(batch, num_select, generator=generator, device=device, dtype=torch.float64)
    else:
        offsets = torch.full((batch, num_select), 0.5, device=device, dtype=torch.float64)
    strata = torch.arange(num_select, device=device, dtype=torch.float64)
    return (strata + offsets) / num_select


def invert_cdf(weights: Tensor, levels: Tensor) -> Tensor:
    """Positions in [0, 1] where the weights' piecewise-linear CDF reaches each level.

    weights [B, T_g] (non-negative; rows are normalised here) put mass w_j uniformly on the segment
    [j/T_g, (j+1)/T_g]; the CDF has knots 0, cumsum(w)/sum(w) with the last knot forced to exactly 1.
    levels [B, K] in [0, 1). Returns float64 [B, K]. A level is inverted inside the segment whose
    CDF bracket [c_j, c_{j+1}) contains it; such a segment always has positive mass, so zero-weight
    segments are skipped rather than divided by.
    """
    _check_frame_weights(weights)
    if levels.ndim != 2 or levels.shape[0] != weights.shape[0]:
        raise ValueError(
            f"levels must have shape [B, K] with B = {weights.shape[0]}, got {tuple(levels.shape)}"
        )
    w = weights.detach().to(torch.float64)
    num_glance = w.shape[1]
    # clamp: rounding may push an inner knot a hair above 1, which would break monotonicity
    inner = (w.cumsum(dim=1) / w.sum(dim=1, keepdim=True)).clamp(max=1.0)
    cdf = torch.cat([torch.zeros_like(w[:, :1]), inner[:, :-1], torch.ones_like(w[:, :1])], dim=1)
    levels = levels.to(device=w.device, dtype=torch.float64).contiguous()
    segment = torch.searchsorted(cdf, levels, right=True) - 1  # last knot with c_j <= u
    segment = segment.clamp(0, num_glance - 1)
    lower = cdf.gather(1, segment)
    width = cdf.gather(1, segment + 1) - lower
    fraction = torch.where(width > 0, (levels - lower) / width.clamp(min=torch.finfo(w.dtype).tiny), 0.0)
    return (segment + fraction.clamp(0.0, 1.0)) / num_glance


def _strictly_increasing_in_range(indices: Tensor, num_candidates: int) -> Tensor:
    """Smallest upward adjustment making each row strictly increasing, then the feasibility cap.

    Pass 1: idx_k = max(idx_k, idx_{k-1} + 1), done in closed form as k + cummax(idx - k).
    Pass 2: idx_k = min(idx_k, N - K + k).
    In the shifted coordinates idx_k - k, pass 1 is a running max and pass 2 a min with the constant
    N - K; the two commute, so the order does not matter. The result is strictly increasing (the cap
    also rises by exactly 1 per step) and inside [0, N - 1] (pass 1 gives idx_k >= k).
    """
    num_select = indices.shape[1]
    k = torch.arange(num_select, device=indices.device)
    pushed = (indices - k).cummax(dim=1).values + k
    return torch.minimum(pushed, num_candidates - num_select + k)


def select_frames(
    weights: Tensor,
    num_select: int,
    num_candidates: int,
    *,
    random_offsets: bool,
    generator: torch.Generator | None = None,
) -> Tensor:
    """CDF-quantile frame selection.

    weights [B, T_g]: the temporal policy's distribution over glance positions (non-negative; rows
    need not sum exactly to 1, they are normalised). Returns LongTensor [B, num_select] of indices
    into the ``num_candidates`` candidate frames, strictly increasing (temporal order) in every row.
    ``random_offsets``: stratified random quantile levels (training) instead of mid-quantiles (test).
    Not differentiable (weights are detached); the policy learns through ``mc_expected_logits``.
    """
    _check_counts(num_select, num_candidates)
    _check_frame_weights(weights)
    levels = quantile_levels(
        weights.shape[0],
        num_select,
        random_offsets=random_offsets,
        generator=generator,
        device=weights.device,
    )
    positions = invert_cdf(weights, levels)
    indices = (positions * num_candidates).floor().long().clamp(0, num_candidates - 1)
    return _strictly_increasing_in_range(indices, num_candidates)


def uniform_frames(
    batch: int,
    num_select: int,
    num_candidates: int,
    *,
    random_offsets: bool,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """TSN-style segment sampling: ``select_frames`` with uniform weights.

    Test mode picks the middle of each of ``num_select`` equal segments; training picks a random
    frame inside each segment. Returns LongTensor [batch, num_select].
    """
    uniform = torch.ones(batch, 1, device=device)  # one glance segment of mass 1 = uniform CDF
    return select_frames(
        uniform, num_select, num_candidates, random_offsets=random_offsets, generator=generator
    )


def random_frames(
    batch: int,
    num_select: int,
    num_candidates: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Ablation baseline: a uniformly random subset of the candidates, without replacement, sorted.

    Returns LongTensor [batch, num_select], strictly increasing in every row.
    """
    _check_counts(num_select, num_candidates)
    keys = torch.rand(batch, num_candidates, generator=generator, device=device)
    return keys.argsort(dim=1)[:, :num_select].sort(dim=1).values



def central_frames(batch: int, num_select: int, num_candidates: int, *,
                   device: torch.device | str | None = None) -> Tensor:
    """Ablation baseline: the ``num_select`` consecutive candidates in the middle of the clip.

    Returns LongTensor [batch, num_select].
    """
    _check_counts(num_select, num_candidates)
    start = (num_candidates - num_select) // 2
    return torch.arange(start, start + num_select, device=device).expand(batch, -1)


def gaussian_frames(batch: int, num_select: int, num_candidates: int, *, sigma: float = 0.25,
                    generator: torch.Generator | None = None,
                    device: torch.device | str | None = None) -> Tensor:
    """Ablation baseline: distinct candidates drawn without replacement from a Gaussian centred on the clip's
    middle (``sigma`` in fractions of the clip length), sorted. Returns LongTensor [batch, num_select]."""
    _check_counts(num_select, num_candidates)
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    centres = (torch.arange(num_candidates, device=device, dtype=torch.float64) + 0.5) / num_candidates
    weights = torch.exp(-0.5 * ((centres - 0.5) / sigma) ** 2).expand(batch, -1)
    drawn = torch.multinomial(weights, num_select, replacement=False, generator=generator)
    return drawn.sort(dim=1).values

def _check_expectation_inputs(frame_logits: Tensor, weights: Tensor, num_draws: int) -> None:
    if frame_logits.ndim != 3:
        raise ValueError(f"frame_logits must have shape [B, T, C], got {tuple(frame_logits.shape)}")
    if weights.shape != frame_logits.shape[:2]:
        raise ValueError(
            f"weights shape {tuple(weights.shape)} must equal frame_logits' [B, T] = "
            f"{tuple(frame_logits.shape[:2])}"
        )
    _check_frame_weights(weights)
    num_frames = frame_logits.shape[1]
    if not 1 <= num_draws <= num_frames:
        raise ValueError(f"num_draws must be in [1, T={num_frames}], got {num_draws}")
    if ((weights > 0).sum(dim=1) < num_draws).any():
        raise ValueError(
            f"every row of weights needs at least num_draws={num_draws} positive entries "
            "to draw that many distinct frames"
        )


def mc_horizon(num_focus: int, num_glance: int, num_candidates: int) -> int:
    """Frames drawn per Monte-Carlo sample of the temporal loss: the expected number of the T' selected frames
    that fall among the T_g glance frames, T' * T_g / N, rounded, in [1, T_g]. The authors hard-code
    T_g // 3, which equals this only for T' / N = 1/3 (their 16 of 48)."""
    if min(num_focus, num_glance, num_candidates) < 1:
        raise ValueError(f"need positive frame counts, got T'={num_focus}, T_g={num_glance}, N={num_candidates}")
    return min(num_glance, max(1, round(num_focus * num_glance / num_candidates)))


def mc_expected_logits(
    frame_logits: Tensor,
    weights: Tensor,
    *,
    num_draws: int,
    num_samples: int = 128,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Monte-Carlo estimate of the temporal-policy training target (paper eq. 21).

    frame_logits [B, T, C], weights [B, T] (the policy's frame distribution, with grad). For
    i = 0..num_draws-1, i frames are drawn without replacement ~ weights, their weights zeroed, and the
    logits averaged over the remaining frames with the remaining weights; the result is averaged over i
    and over ``num_samples`` replicas. Returns [B, C].

    The normaliser (sum of remaining weights) is detached, as in the paper's code, so the weights get
    gradient only through the numerator: a surrogate, not the gradient of ``exact_expected_logits``.
    Each replica draws one ordered sequence of num_draws-1 frames and uses its prefixes for every i;
    each prefix has the required distribution, so the estimate stays unbiased.
    """
    _check_expectation_inputs(frame_logits, weights, num_draws)
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    batch, num_frames = weights.shape
    replicated = weights.repeat_interleave(num_samples, dim=0)  # [B*S, T], row b*S + s
    # draw_rank[r, t] = position of frame t in replica r's draw sequence (num_draws if never drawn)
    draw_rank = torch.full(replicated.shape, num_draws, dtype=torch.long, device=weights.device)
    if num_draws > 1:
        drawn = torch.multinomial(replicated.detach(), num_draws - 1, replacement=False, generator=generator)
        order = torch.arange(num_draws - 1, device=weights.device).expand_as(drawn)
        draw_rank.scatter_(1, drawn, order)
    step = torch.arange(num_draws, device=weights.device).view(-1, 1, 1)
    remaining = replicated.unsqueeze(0) * (draw_rank.unsqueeze(0) >= step)  # [D, B*S, T]
    normalised = remaining / remaining.sum(dim=2, keepdim=True).detach()
    # The target is linear in the logits: average the effective frame weights first, then one bmm.
    effective = normalised.view(num_draws, batch, num_samples, num_frames).mean(dim=(0, 2))  # [B, T]
    return torch.bmm(effective.unsqueeze(1).to(frame_logits.dtype), frame_logits).squeeze(1)


def exact_expected_logits(frame_logits: Tensor, weights: Tensor, *, num_draws: int) -> Tensor:
    """Exact value of what ``mc_expected_logits`` estimates, by enumerating draws (T <= 10).

    frame_logits [B, T, C], weights [B, T]. Uses a dynamic programme over subsets: P(first i draws
    are the set A) = sum_{s in A} P(A minus s) * w_s / (W - w(A minus s)). Returns [B, C], fully
    differentiable (no detached normaliser: this is the true expectation).
    """
    _check_expectation_inputs(frame_logits, weights, num_draws)
    batch, num_frames = weights.shape
    if num_frames > MAX_EXACT_FRAMES:
        raise ValueError(
            f"exact enumeration is limited to T <= {MAX_EXACT_FRAMES} frames (got T={num_frames}); "
            "use mc_expected_logits"
        )
    device = weights.device
    w = weights.to(torch.float64)
    logits = frame_logits.to(torch.float64)
    subsets = torch.arange(2**num_frames, device=device)
    member = (subsets.unsqueeze(1) >> torch.arange(num_frames, device=device)) & 1  # [2^T, T]
    set_size = member.sum(dim=1)
    set_weight = member.to(w.dtype) @ w.T  # [2^T, B]
    total = w.sum(dim=1)  # [B]

    prob = torch.zeros(2**num_frames, batch, dtype=w.dtype, device=device)
    prob[0] = 1.0  # the empty set is drawn first with certainty
    for size in range(1, num_draws):
        sets = subsets[set_size == size]
        level = torch.zeros(len(sets), batch, dtype=w.dtype, device=device)
        for frame in range(num_frames):
            contains = member[sets, frame].bool().unsqueeze(1)
            previous = sets ^ (1 << frame)
            left = torch.where(contains, total - set_weight[previous], 1.0).clamp(
                min=torch.finfo(w.dtype).tiny
            )
            level = level + torch.where(contains, prob[previous] * w[:, frame] / left, 0.0)
        prob = prob.index_put((sets,), level)

    used = set_size < num_draws
    outside = (1 - member[used]).to(w.dtype)  # [S, T]
    remaining_mean = torch.einsum("st,bt,btc->sbc", outside, w, logits) / (
        total - set_weight[used]
    ).unsqueeze(2)
    expected = (prob[used].unsqueeze(2) * remaining_mean).sum(dim=0) / num_draws
    return expected.to(frame_logits.dtype)


def gather_frames(clip: Tensor, indices: Tensor, samples: Tensor | None = None) -> Tensor:
    """``clip [B, N, C, H, W]``, ``indices [B', T]`` -> ``[B', T, C, H, W]``; row i comes from clip
    ``samples[i]`` (default: row i). Copies only the gathered frames."""
    if samples is None:
        samples = torch.arange(indices.shape[0], device=clip.device)
    if not clip.is_contiguous():
        return clip[samples[:, None], indices]
    rows = (samples[:, None] * clip.shape[1] + indices).flatten()  # index_select: faster than advanced indexing
    return clip.flatten(0, 1).index_select(0, rows).unflatten(0, indices.shape)
