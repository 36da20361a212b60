"""Proximal policy optimisation (Schulman et al. 2017) for AdaFocusV1's discrete patch policy.

AdaFocusV1 picks each patch centre from a grid of candidates with a categorical actor and learns it with
PPO (clipped surrogate, value loss, entropy bonus; gamma 0.7, Adam 3e-4, clip 0.2, one epoch per batch in
the authors' code). This module holds the generic pieces: the returns, the loss and one update; the
actor-critic network over glance feature maps is ``GridActorCritic``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class PPOConfig:
    gamma: float = 0.7          # discount over the focus steps
    lr: float = 3e-4            # Adam
    clip: float = 0.2           # |ratio - 1| beyond which the surrogate stops improving
    epochs: int = 1             # gradient steps per collected batch
    value_coef: float = 0.5
    entropy_coef: float = 0.01


def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """``rewards [B, T]`` -> returns ``[B, T]``, R_t = r_t + gamma * R_{t+1}."""
    returns, running = torch.empty_like(rewards), torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns


def ppo_loss(logits: Tensor, values: Tensor, actions: Tensor, old_log_probs: Tensor, advantages: Tensor,
             returns: Tensor, cfg: PPOConfig) -> tuple[Tensor, dict[str, float]]:
    """Clipped-surrogate PPO loss for categorical actions; every tensor is ``[N]`` except ``logits [N, A]``.

    loss = -mean(min(ratio * A, clip(ratio, 1 +- eps) * A)) + value_coef * MSE(values, returns)
           - entropy_coef * mean(entropy)
    """
    dist = torch.distributions.Categorical(logits=logits)
    ratio = torch.exp(dist.log_prob(actions) - old_log_probs)
    surrogate = torch.minimum(ratio * advantages, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * advantages)
    policy_loss, value_loss, entropy = -surrogate.mean(), F.mse_loss(values, returns), dist.entropy().mean()
    loss = policy_loss + cfg.value_coef * value_loss - cfg.entropy_coef * entropy
    return loss, {"policy": policy_loss.item(), "value": value_loss.item(), "entropy": entropy.item()}


def ppo_update(evaluate: Callable[[], tuple[Tensor, Tensor]], optimizer: torch.optim.Optimizer, actions: Tensor,
               old_log_probs: Tensor, returns: Tensor, old_values: Tensor, cfg: PPOConfig) -> dict[str, float]:
    """``cfg.epochs`` PPO steps on one collected batch.

    ``evaluate()`` re-runs the actor-critic on the batch's observations and returns (logits ``[N, A]``,
    values ``[N]``). Advantages = returns - old values, normalised over the batch.
    """
    advantages = returns - old_values
    if advantages.numel() > 1:
        advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    stats: dict[str, float] = {}
    for _ in range(cfg.epochs):
        logits, values = evaluate()
        loss, stats = ppo_loss(logits, values, actions, old_log_probs, advantages, returns, cfg)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return stats


class GridActorCritic(nn.Module):
    """AdaFocusV1's policy: glance feature maps ``[B, T, D, h, w]`` -> (logits over grid x grid patch centres
    ``[B, T, grid**2]``, state values ``[B, T]``). Conv 1x1 to 32 channels, a hidden layer, two linear heads;
    no pooling before the hidden layer (pooling loses where things are)."""

    def __init__(self, in_channels: int, map_size: tuple[int, int], *, grid: int = 7, hidden: int = 1024):
        super().__init__()
        self.grid = grid
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 32, kernel_size=1), nn.ReLU(inplace=True), nn.Flatten(),
            nn.Linear(32 * map_size[0] * map_size[1], hidden), nn.ReLU(inplace=True))
        self.actor, self.critic = nn.Linear(hidden, grid * grid), nn.Linear(hidden, 1)

    def forward(self, feature_maps: Tensor) -> tuple[Tensor, Tensor]:
        batch, steps = feature_maps.shape[:2]
        hidden = self.body(feature_maps.flatten(0, 1))
        return (self.actor(hidden).unflatten(0, (batch, steps)),
                self.critic(hidden).squeeze(-1).unflatten(0, (batch, steps)))

    def centres(self, choice: Tensor) -> Tensor:
        """Grid cell indices ``[...]`` -> box positions ``[..., 2]`` (x, y) in [0, 1] (row-major cells)."""
        row, col = torch.div(choice, self.grid, rounding_mode="floor"), choice % self.grid
        return torch.stack([col, row], dim=-1).to(torch.float32) / (self.grid - 1)
