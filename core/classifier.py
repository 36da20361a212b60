"""Accumulated max-pooling classifier with one exit per step (FrameExit-style, as in Uni-AdaFocus).

Glance step t pools the first t+1 glance frames; focus step k pools the first k+1 focus patches and, with
feature reuse, concatenates the pooled glance state. Every step has its own linear head, so a sample can
stop after any step. The pooled state is a running max, so steps can be evaluated one at a time.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def _embedding(in_dim: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True))


def _embed_frames(embedding: nn.Module, features: Tensor) -> Tensor:
    batch, steps, dim = features.shape
    return embedding(features.reshape(batch * steps, dim)).reshape(batch, steps, -1)


class AccumulatedMaxPoolClassifier(nn.Module):
    def __init__(self, glance_dim: int, local_dim: int, num_classes: int, *, num_glance: int, num_focus: int,
                 hidden: int = 4096, dropout: float = 0.2, feature_reuse: bool = True):
        super().__init__()
        self.feature_reuse = feature_reuse
        self.glance_embedding = _embedding(glance_dim, hidden)
        self.local_embedding = _embedding(local_dim, hidden)
        focus_in = 2 * hidden if feature_reuse else hidden
        self.glance_heads = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, num_classes)) for _ in range(num_glance))
        self.focus_heads = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), nn.Linear(focus_in, num_classes)) for _ in range(num_focus))

    def glance_logits(self, glance_features: Tensor, *, all_steps: bool = True) -> tuple[Tensor, Tensor]:
        """``[B, Tg, Dg]`` -> (pooled glance state ``[B, H]``, logits ``[B, Tg, C]`` or of the last step ``[B, 1, C]``)."""
        pooled = torch.cummax(_embed_frames(self.glance_embedding, glance_features), dim=1).values
        if all_steps:
            logits = torch.stack([head(pooled[:, t]) for t, head in enumerate(self.glance_heads)], dim=1)
        else:
            logits = self.glance_heads[-1](pooled[:, -1]).unsqueeze(1)
        return pooled[:, -1], logits

    def focus_logits(self, local_features: Tensor, glance_state: Tensor) -> Tensor:
        """All focus steps at once: ``[B, T', Dl]`` -> ``[B, T', C]``."""
        pooled = torch.cummax(_embed_frames(self.local_embedding, local_features), dim=1).values
        return torch.stack([self._focus_head(k, pooled[:, k], glance_state) for k in range(pooled.shape[1])], dim=1)

    def focus_step(self, step: int, local_feature: Tensor, local_state: Tensor | None,
                   glance_state: Tensor) -> tuple[Tensor, Tensor]:
        """One focus step for early-exit inference: returns (new local state ``[B, H]``, logits ``[B, C]``)."""
        embedded = self.local_embedding(local_feature)
        state = embedded if local_state is None else torch.maximum(local_state, embedded)
        return state, self._focus_head(step, state, glance_state)

    def _focus_head(self, step: int, local_state: Tensor, glance_state: Tensor) -> Tensor:
        features = torch.cat([local_state, glance_state], dim=-1) if self.feature_reuse else local_state
        return self.focus_heads[step](features)


class TSNClassifier(nn.Module):
    """The TSM / X3D variants' heads (TSN consensus): two exits, glance-only and fused.

    Each head is Dropout + Linear applied to every frame's pooled feature *detached* from its encoder and
    averaged over frames, so the prediction is a linear probe trained only by its own loss (the encoders are
    trained by the per-frame auxiliary heads). Fused logits = glance logits + local logits.
    """

    def __init__(self, glance_dim: int, local_dim: int, num_classes: int, *, dropout: float = 0.5):
        super().__init__()
        self.glance_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(glance_dim, num_classes))
        self.local_head = nn.Sequential(nn.Dropout(dropout), nn.Linear(local_dim, num_classes))

    def glance_logits(self, glance_features: Tensor, *, all_steps: bool = True) -> tuple[Tensor, Tensor]:
        """``[B, Tg, Dg]`` -> (glance logits ``[B, C]`` as the state, exit-0 logits ``[B, 1, C]``)."""
        logits = self.glance_head(glance_features.detach()).mean(dim=1)
        return logits, logits.unsqueeze(1)

    def focus_logits(self, local_features: Tensor, glance_state: Tensor) -> Tensor:
        """``[B, T', Dl]`` and glance logits ``[B, C]`` -> fused exit-1 logits ``[B, 1, C]``."""
        return (glance_state + self.local_head(local_features.detach()).mean(dim=1)).unsqueeze(1)
