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


def make_head(in_dim: int, num_classes: int, *, dropout: float, hidden: int | None = None) -> nn.Sequential:
    """A classification head: Dropout + Linear, or with ``hidden`` X3D's head (Linear without bias to
    ``hidden``, ReLU, Dropout, Linear; the authors' layout, indices 0 and 3)."""
    if hidden is None:
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, num_classes))
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.ReLU(inplace=True), nn.Dropout(dropout),
                         nn.Linear(hidden, num_classes))


def clip_logits(head: nn.Module, frame_features: Tensor) -> Tensor:
    """Clip logits ``[B, C]`` of per-frame features ``[B, T, D]``: a linear head is applied per frame and
    averaged (TSN consensus); an MLP head (X3D) is applied to the frame-averaged features, as X3D pools first."""
    if isinstance(head[0], nn.Dropout):
        return head(frame_features).mean(dim=1)
    return head(frame_features.mean(dim=1))


class TSNClassifier(nn.Module):
    """The TSM / X3D variants' prediction heads: fused logits = glance head + local head (the authors'
    ``global_final_logit + local_final_logit``).

    Each head reads its encoder's features *detached*, so the prediction is a probe trained only by its own loss
    (the encoders are trained by the per-frame auxiliary heads, whose glance average is exit 0; see the model).
    """

    def __init__(self, glance_dim: int, local_dim: int, num_classes: int, *, dropout: float = 0.5,
                 hidden: int | None = None):
        super().__init__()
        self.glance_head = make_head(glance_dim, num_classes, dropout=dropout, hidden=hidden)
        self.local_head = make_head(local_dim, num_classes, dropout=dropout, hidden=hidden)

    def glance_logits(self, glance_features: Tensor, *, all_steps: bool = True) -> tuple[Tensor, Tensor]:
        """``[B, Tg, Dg]`` -> (glance probe logits ``[B, C]`` as the state, the same ``[B, 1, C]``)."""
        logits = clip_logits(self.glance_head, glance_features.detach())
        return logits, logits.unsqueeze(1)

    def focus_logits(self, local_features: Tensor, glance_state: Tensor) -> Tensor:
        """``[B, T', Dl]`` and glance logits ``[B, C]`` -> fused exit-1 logits ``[B, 1, C]``."""
        return (glance_state + clip_logits(self.local_head, local_features.detach())).unsqueeze(1)
