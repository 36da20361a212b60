"""PPO for AdaFocusV1's patch policy: returns, the clipped loss, and an update that learns a toy bandit."""
import pytest
import torch
from adafocus.core.ppo import GridActorCritic, PPOConfig, discounted_returns, ppo_loss, ppo_update
from torch import nn


def test_discounted_returns_match_the_closed_form():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    expected = torch.tensor([[1 + 0.7**2 * 2, 0.7 * 2, 2.0], [0.7, 1.0, 0.0]])
    assert torch.allclose(discounted_returns(rewards, 0.7), expected)


def test_clipped_surrogate_ignores_ratios_beyond_the_clip():
    cfg = PPOConfig(value_coef=0.0, entropy_coef=0.0)
    logits = torch.log(torch.tensor([[0.9, 0.1]])).requires_grad_()
    old_log_probs = torch.log(torch.tensor([0.5]))  # ratio 1.8 > 1.2 with a positive advantage: clipped, no gradient
    loss, _ = ppo_loss(logits, torch.zeros(1), torch.tensor([0]), old_log_probs, torch.ones(1), torch.zeros(1), cfg)
    loss.backward()
    assert loss.item() == pytest.approx(-1.2) and logits.grad.abs().max() == 0


def bandit(n: int, generator: torch.Generator):
    """4 actions; action argmax(x) pays 1, the others 0."""
    x = torch.randn(n, 4, generator=generator)
    return x, nn.functional.one_hot(x.argmax(1), 4).float()


def test_ppo_updates_raise_the_expected_reward_of_a_contextual_bandit():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    actor, critic = nn.Linear(4, 4), nn.Linear(4, 1)
    nn.init.zeros_(actor.weight), nn.init.zeros_(actor.bias)  # starts uniform: expected reward 0.25
    cfg = PPOConfig(lr=0.05, epochs=4)
    optimizer = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=cfg.lr)
    test_x, test_payoff = bandit(2000, generator)

    def expected_reward() -> float:
        with torch.no_grad():
            return float((actor(test_x).softmax(-1) * test_payoff).sum(-1).mean())

    start = expected_reward()
    for _ in range(30):
        x, payoff = bandit(256, generator)
        with torch.no_grad():
            dist = torch.distributions.Categorical(logits=actor(x))
            actions = dist.sample()
            rewards, values = payoff.gather(1, actions[:, None])[:, 0], critic(x)[:, 0]
        ppo_update(lambda x=x: (actor(x), critic(x)[:, 0]), optimizer, actions, dist.log_prob(actions), rewards,
                   values, cfg)
    assert start == pytest.approx(0.25, abs=1e-6)
    assert expected_reward() > 0.7


def test_grid_actor_critic_shapes_and_centres():
    net = GridActorCritic(8, (2, 2), grid=7, hidden=16)
    logits, values = net(torch.rand(3, 5, 8, 2, 2))
    assert logits.shape == (3, 5, 49) and values.shape == (3, 5)
    assert net.centres(torch.tensor([0, 6, 48])).tolist() == [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
