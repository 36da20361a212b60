"""AdaFocusV1's three-stage training (ICCV 2021), on the shared model with ``patch_policy="ppo_grid"``.

Stage I   warm-up: everything but the policy is trained with random patches (``core.train.train``);
Stage II  the encoders and classifier are frozen; the grid actor-critic picks patch centres and is trained
          by PPO. Reward of focus step k: the softmax confidence of the true class at exit k with the
          policy's patches minus that with random patches (the paper's "random" reward);
Stage III the classifier alone is fine-tuned on the policy's patches.

Run folder: ``stage1/`` (the trainer's files), then ``final.pt`` (loadable by ``core.run.load_run``)
and ``v1_log.json``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from adafocus.core.checkpoint import load_checkpoint, save_checkpoint
from adafocus.core.config import LossConfig, Preset
from adafocus.core.device import resolve_device
from adafocus.core.exits import accuracy_by_exit
from adafocus.core.io import atomic_write_json
from adafocus.core.model import UniAdaFocus
from adafocus.core.objective import training_loss
from adafocus.core.ppo import PPOConfig, discounted_returns, ppo_update
from adafocus.core.run import FINAL_FILE
from adafocus.core.train import collect_logits, cosine_lr, train
from torch.utils.data import DataLoader, Dataset


@dataclass
class V1Schedule:
    warmup_epochs: int | None = None   # None = the preset's epochs
    ppo_epochs: int = 3
    finetune_epochs: int = 2
    ppo: PPOConfig = field(default_factory=PPOConfig)


def warmup_preset(preset: Preset, epochs: int) -> Preset:
    """Stage I: the same model with random patches and no policy."""
    out = dataclasses.replace(preset)
    out.model = dataclasses.replace(preset.model, patch_policy="random")
    out.train = dataclasses.replace(preset.train, epochs=epochs)
    return out


def stepwise_rewards(classifier, policy_local: torch.Tensor, random_local: torch.Tensor, glance_state: torch.Tensor,
                     labels: torch.Tensor) -> torch.Tensor:
    """Paper eq. 26: r_t = p(y | the policy's patches 1..t) - p(y | the policy's patches 1..t-1 and a random
    patch t): only step t's patch is replaced. Features ``[B, T', D]`` -> rewards ``[B, T']``."""
    state, rewards = None, []
    for t in range(policy_local.shape[1]):
        _, baseline_logits = classifier.focus_step(t, random_local[:, t], state, glance_state)
        state, logits = classifier.focus_step(t, policy_local[:, t], state, glance_state)
        confidence = logits.softmax(-1).gather(1, labels[:, None])[:, 0]
        rewards.append(confidence - baseline_logits.softmax(-1).gather(1, labels[:, None])[:, 0])
    return torch.stack(rewards, dim=1)


@torch.no_grad()
def collect_rollout(model: UniAdaFocus, clip: torch.Tensor, labels: torch.Tensor, gamma: float) -> dict:
    """One batch of stage-II experience: observations, sampled grid cells, log-probs, values, returns, rewards."""
    c, batch, device = model.config, clip.shape[0], clip.device
    glance = model.glance(clip)
    glance_state, _ = model.classifier.glance_logits(glance.features, all_steps=False)
    weights = model.frame_logits(glance).softmax(-1) if c.frame_policy == "learned" else None
    frame_indices = model.select_frames(weights, batch, device)
    logits, values = model.grid_policy(glance, frame_indices)
    dist = torch.distributions.Categorical(logits=logits)
    choice = dist.sample()
    boxes = torch.cat([model.boxes(model.grid_actions(choice)),
                       model.boxes(model.baseline_actions(batch, c.num_focus, "random", device))])
    local = model.focus(clip.repeat(2, 1, 1, 1, 1), frame_indices.repeat(2, 1), boxes)
    rewards = stepwise_rewards(model.classifier, local[:batch], local[batch:], glance_state, labels)
    return {"glance": glance, "frame_indices": frame_indices, "choice": choice, "log_probs": dist.log_prob(choice),
            "values": values, "rewards": rewards, "returns": discounted_returns(rewards, gamma)}


def train_policy_ppo(model: UniAdaFocus, loader: DataLoader, epochs: int, cfg: PPOConfig, device: torch.device,
                     log: Callable[[str], None] = print) -> list[float]:
    """Stage II: PPO on the grid actor-critic only; returns the mean reward of each epoch."""
    model.eval()  # frozen encoders and classifier: no dropout, fixed BN statistics
    optimizer = torch.optim.Adam(model.spatial_policy.parameters(), lr=cfg.lr)
    mean_rewards = []
    for epoch in range(epochs):
        total, count = 0.0, 0
        for batch in loader:
            clip, labels = batch["clip"].to(device), torch.as_tensor(batch["label"]).to(device)
            roll = collect_rollout(model, clip, labels, cfg.gamma)

            def evaluate(roll=roll):
                logits, values = model.grid_policy(roll["glance"], roll["frame_indices"])
                return logits.flatten(0, 1), values.flatten()

            ppo_update(evaluate, optimizer, roll["choice"].flatten(), roll["log_probs"].flatten(),
                       roll["returns"].flatten(), roll["values"].flatten(), cfg)
            total, count = total + float(roll["rewards"].sum()), count + roll["rewards"].numel()
        mean_rewards.append(total / max(count, 1))
        log(f"V1 stage II epoch {epoch + 1}/{epochs}: mean reward {mean_rewards[-1]:+.4f}")
    return mean_rewards


def finetune_classifier(model: UniAdaFocus, loader: DataLoader, epochs: int, lr: float, device: torch.device,
                        log: Callable[[str], None] = print) -> None:
    """Stage III: only the classifier learns, on the (most likely) patches of the trained policy."""
    optimizer = torch.optim.SGD(model.classifier.parameters(), lr=lr, momentum=0.9)
    exits_only = LossConfig(glance_aux=0.0, local_aux=0.0, temporal=0.0, spatial=0.0, size_regularizer=0.0,
                            diversity=False)
    total_steps = epochs * len(loader)
    for epoch in range(epochs):
        model.eval()
        model.classifier.train()
        for i, batch in enumerate(loader):
            for group in optimizer.param_groups:
                group["lr"] = cosine_lr(lr, epoch * len(loader) + i, total_steps)
            clip, labels = batch["clip"].to(device), torch.as_tensor(batch["label"]).to(device)
            loss, _ = training_loss(model(clip, diversity=False), labels, exits_only)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        log(f"V1 stage III epoch {epoch + 1}/{epochs}: last loss {float(loss):.4f}")


def train_adafocus_v1(preset: Preset, train_set: Dataset, val_set: Dataset, out_dir: str | Path, *,
                      schedule: V1Schedule | None = None, device: str = "auto", collate_fn: Callable | None = None,
                      log: Callable[[str], None] = print) -> dict:
    """All three stages; returns a summary with the final validation accuracy at the last exit."""
    if preset.model.patch_policy != "ppo_grid" or preset.model.classifier != "max_pool":
        raise ValueError("AdaFocusV1 training needs patch_policy='ppo_grid' and the max_pool classifier "
                         "(see config.as_adafocus_v1)")
    schedule = schedule or V1Schedule()
    out_dir, dev = Path(out_dir), resolve_device(device)
    warmup = warmup_preset(preset, schedule.warmup_epochs or preset.train.epochs)
    log(f"V1 stage I: warm-up with random patches for {warmup.train.epochs} epochs")
    stage1 = train(warmup, train_set, val_set, out_dir / "stage1", device=device, collate_fn=collate_fn,
                   progress=False, log=log)

    torch.manual_seed(preset.train.seed)
    model = UniAdaFocus(preset.model).to(dev)
    missing, unexpected = model.load_state_dict(load_checkpoint(stage1["best_checkpoint"])["model_state"], strict=False)
    if unexpected or any(not key.startswith("spatial_policy.") for key in missing):
        raise RuntimeError(f"stage-I weights do not fit the V1 model: missing {missing}, unexpected {unexpected}")
    loader = DataLoader(train_set, batch_size=preset.train.batch_size, shuffle=True, drop_last=True,
                        collate_fn=collate_fn)
    rewards = train_policy_ppo(model, loader, schedule.ppo_epochs, schedule.ppo, dev, log)
    finetune_classifier(model, loader, schedule.finetune_epochs, preset.train.lr * 0.1, dev, log)

    logits, labels = collect_logits(model, DataLoader(val_set, batch_size=preset.train.batch_size,
                                                      collate_fn=collate_fn), dev)
    accuracy = float(accuracy_by_exit(logits, labels)[-1])
    final = out_dir / FINAL_FILE
    save_checkpoint(final, model_state=model.state_dict(), config=preset.to_dict())
    summary = {"stage1_best_accuracy": stage1["best_accuracy"], "ppo_mean_rewards": rewards,
               "final_accuracy": accuracy if not math.isnan(accuracy) else None, "checkpoint": str(final)}
    atomic_write_json(out_dir / "v1_log.json", summary)
    log(f"V1 done: val accuracy {accuracy:.4f} at the last exit -> {final}")
    return summary
