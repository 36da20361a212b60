"""The Uni-AdaFocus training objective. Every term has a weight in ``LossConfig``; 0 switches it off.

- exits:      CE on every step of the accumulated classifier, for the policy pass and the random-patch
              (diversity) pass;
- glance_aux: CE of a linear head on every glance frame;
- local_aux:  CE of a linear head on every focus patch (both passes);
- temporal:   CE of the Monte-Carlo expected logits of frames drawn from the frame policy (eq. 21);
- spatial:    CE of the feature-interpolation proxy (eqs. 13-14) plus ``size_regularizer`` * mean((s - 1)^2)
              on the box scales (eq. 15); with ``spatial_proxy="cells"`` (model.cell_proxy) also
              proxy_cells (the proxy head's CE at every map cell) and cell_policy (cell_policy_loss), both at
              the spatial weight;
- local cells (``spatial_proxy="local_cells"``): the cell target is what the local encoder reads at every cell
  of K glance frames; the frame policy's target is those frames' best cells (``local_frame_target``), and it
  replaces the temporal term, whose glance logits cannot guide frames the glance cannot read; local_cells, at
  the local_aux weight, trains the local encoder on the clip's label read from the best of those cells
  (``best_cell_logits``: the class is somewhere in the clip, a multiple-instance loss).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from adafocus.core.config import LossConfig
from adafocus.core.model import TrainingOutputs, full_precision
from adafocus.core.sampling import mc_expected_logits, mc_horizon
from torch import Tensor


def _per_step_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean CE over ``logits [..., B, S, C]`` with the sample's label on every step S."""
    steps = logits.shape[-2]
    flat = logits.reshape(-1, steps, logits.shape[-1])
    targets = labels.repeat(flat.shape[0] // labels.shape[0]).repeat_interleave(steps)
    return F.cross_entropy(flat.reshape(-1, flat.shape[-1]), targets)


def _aux_logits(frame_logits: Tensor, cfg: LossConfig) -> Tensor:
    """Per-frame auxiliary logits ``[..., T, C]``, or their frame average ``[..., 1, C]`` (TSM / X3D, as the
    authors' ``global_avg_logit`` / ``local_avg_logit``)."""
    return frame_logits.mean(dim=-2, keepdim=True) if cfg.aux_frame_average else frame_logits


def cell_cross_entropy(cell_logits: Tensor, labels: Tensor) -> Tensor:
    """CE of the proxy at every cell, ``[B, T, N, C]`` -> ``[B, T, N]`` (the sample's label at every cell)."""
    batch, frames, cells, classes = cell_logits.shape
    ce = F.cross_entropy(cell_logits.reshape(-1, classes), labels.repeat_interleave(frames * cells), reduction="none")
    return ce.reshape(batch, frames, cells)


def cell_policy_loss(scores: Tensor, cell_ce: Tensor, temperature: float, frame_weights: Tensor | None = None
                     ) -> Tensor:
    """spatial_proxy="cells": CE between the cell scores' softmax ``[B, T, N]`` and the target
    softmax(-cell_ce / temperature) of each frame: weight goes to the cells where the proxy is most right, all
    of them at once (a frame where every cell scores alike gets a uniform target). ``frame_weights [B, T]``
    (summing to T per clip) weigh the frames' terms; default equal."""
    target = (-cell_ce / temperature).softmax(-1)
    per_frame = -(target * scores.log_softmax(-1)).sum(-1)
    if frame_weights is not None:
        per_frame = per_frame * frame_weights
    return per_frame.mean()


def best_cell_logits(cell_logits: Tensor) -> Tensor:
    """``[B, K, N, C]`` -> ``[B, C]``: each class's largest logit over the K frames' N cells (multiple-instance
    max pooling: a clip is of the class that some place in it reads best)."""
    return cell_logits.flatten(1, 2).amax(dim=1)


def local_frame_target(cell_ce: Tensor, temperature: float) -> Tensor:
    """spatial_proxy="local_cells": the frame target over the K frames read at every cell, ``[B, K, N]`` ->
    ``[B, K]``: softmax(-best cell CE / temperature), so weight goes to the frames where some place reads the
    class right (the frames that show what decides it)."""
    return (-cell_ce.min(dim=-1).values / temperature).softmax(-1)


def frame_policy_loss(frame_weights: Tensor, frames: Tensor, target: Tensor) -> Tensor:
    """CE between the frame policy's weights ``[B, T_g]`` renormalised over the K frames ``[B, K]`` and the
    target ``[B, K]``."""
    chosen = frame_weights.gather(1, frames).clamp_min(1e-12).log().log_softmax(-1)
    return -(target * chosen).sum(-1).mean()


def local_cell_terms(out: TrainingOutputs, labels: Tensor, cfg: LossConfig) -> dict[str, Tensor]:
    """spatial_proxy="local_cells": what the local encoder reads at every cell of K glance frames is the target of
    the cell scores (cell_policy, weighted towards the frames that show the class) and of the frame policy
    (frame_policy); with its gradient, the best cell's reading trains the local encoder (local_cells)."""
    terms: dict[str, Tensor] = {}
    cell_ce = cell_cross_entropy(out.proxy_cell_logits.detach(), labels)
    frame_target = local_frame_target(cell_ce, cfg.cell_temperature)
    if cfg.spatial:
        terms["cell_policy"] = cell_policy_loss(out.cell_scores, cell_ce, cfg.cell_temperature,
                                                frame_target * frame_target.shape[-1])
    if cfg.temporal and out.frame_weights is not None:
        terms["frame_policy"] = frame_policy_loss(out.frame_weights, out.cell_frames, frame_target)
    if cfg.local_aux:
        terms["local_cells"] = F.cross_entropy(best_cell_logits(out.proxy_cell_logits), labels)
    return terms


def training_loss(out: TrainingOutputs, labels: Tensor, cfg: LossConfig) -> tuple[Tensor, dict[str, float]]:
    """Weighted sum of the terms that apply to this model; returns (loss, {term: value})."""
    terms: dict[str, Tensor] = {}
    if cfg.exits:
        terms["exits"] = _per_step_ce(out.exit_logits, labels)
    if cfg.glance_aux:
        terms["glance_aux"] = _per_step_ce(_aux_logits(out.glance_frame_logits, cfg), labels)
    if cfg.local_aux:
        terms["local_aux"] = _per_step_ce(_aux_logits(out.local_patch_logits, cfg), labels)
    local_cells = out.cell_frames is not None
    if cfg.temporal and out.frame_weights is not None and not local_cells:
        frame_logits = out.glance_frame_logits if cfg.temporal_trains_glance else out.glance_frame_logits.detach()
        num_glance = frame_logits.shape[1]
        draws = cfg.mc_draws or mc_horizon(out.frame_indices.shape[1], num_glance, out.num_candidates)
        # A confident policy's softmax underflows to exact zeros; the estimator needs num_draws positive weights.
        weights = out.frame_weights.clamp_min(1e-12)
        with full_precision(weights):
            expected = mc_expected_logits(frame_logits.float(), weights.float(), num_draws=min(draws, num_glance),
                                          num_samples=cfg.mc_samples)
        terms["temporal"] = F.cross_entropy(expected, labels)
    if cfg.spatial and out.proxy_logits is not None:
        terms["spatial"] = F.cross_entropy(out.proxy_logits, labels)
    if cfg.spatial and out.proxy_cell_logits is not None and not local_cells:
        cell_ce = cell_cross_entropy(out.proxy_cell_logits, labels)
        terms["proxy_cells"] = cell_ce.mean()  # the glance proxy head learns from it
        terms["cell_policy"] = cell_policy_loss(out.cell_scores, cell_ce.detach(), cfg.cell_temperature)
    if local_cells:
        terms.update(local_cell_terms(out, labels, cfg))
    if cfg.size_regularizer and out.glance_actions is not None:
        terms["size_regularizer"] = ((out.glance_actions[..., 2:] - 1.0) ** 2).mean()
    if not terms:
        raise ValueError("every loss term is switched off")
    weights = {"exits": cfg.exits, "glance_aux": cfg.glance_aux, "local_aux": cfg.local_aux,
               "temporal": cfg.temporal, "spatial": cfg.spatial, "size_regularizer": cfg.size_regularizer,
               "proxy_cells": cfg.spatial, "cell_policy": cfg.spatial, "frame_policy": cfg.temporal,
               "local_cells": cfg.local_aux}
    loss = torch.stack([weights[name] * value for name, value in terms.items()]).sum()
    return loss, {name: float(value.detach()) for name, value in terms.items()}
