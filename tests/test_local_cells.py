"""spatial_proxy="local_cells": the cell target comes from what the LOCAL encoder reads under a box at every
glance-map cell, so the spatial policy can learn where to look when the glance cannot tell the classes apart
(core.model.UniAdaFocus.local_cell_logits, core.objective.training_loss)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from adafocus.core.config import ModelConfig, get_preset
from adafocus.core.model import UniAdaFocus
from adafocus.core.objective import training_loss


def _preset(**overrides):
    preset = get_preset("cpu-video")
    preset.model = dataclasses.replace(preset.model, spatial_proxy="local_cells", **overrides)
    return preset


def test_config_accepts_local_cells_only_with_the_soft_argmax_head_and_per_frame_patches():
    ModelConfig(spatial_head="soft_argmax", spatial_proxy="local_cells")
    with pytest.raises(ValueError, match="soft_argmax"):
        ModelConfig(spatial_head="dense", spatial_proxy="local_cells")
    with pytest.raises(ValueError, match="per-frame"):
        ModelConfig(spatial_head="soft_argmax", spatial_proxy="local_cells", spatial_per_clip=True)
    with pytest.raises(ValueError, match="local_cell_frames"):
        ModelConfig(spatial_head="soft_argmax", spatial_proxy="local_cells", local_cell_frames=0)


def test_local_cell_logits_are_a_target_and_only_the_cell_scores_learn_from_them():
    torch.manual_seed(0)
    preset = _preset(local_cell_frames=3)
    model = UniAdaFocus(preset.model).train()
    assert model.proxy_head is None and model.uses_local_cells and not model.uses_cell_proxy
    out = model(torch.rand(2, 12, 3, 128, 128))
    cells = model.glance_map_size[0] * model.glance_map_size[1]
    assert out.proxy_cell_logits.shape == (2, 3, cells, 2) and out.cell_scores.shape == (2, 3, cells)
    assert not out.proxy_cell_logits.requires_grad and out.cell_scores.requires_grad and out.proxy_logits is None
    _, terms = training_loss(out, torch.tensor([0, 1]), preset.loss)
    assert "cell_policy" in terms and "proxy_cells" not in terms and "spatial" not in terms
    model.zero_grad()
    terms_only = training_loss(out, torch.tensor([0, 1]), dataclasses.replace(
        preset.loss, exits=0.0, glance_aux=0.0, local_aux=0.0, temporal=0.0))[0]
    terms_only.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.spatial_policy.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.local_encoder.parameters())


def test_cell_scores_move_to_where_the_local_reading_is_right():
    """A local 'encoder' that reads a patch's brightness, and a head for which bright means class 1: a clip of
    class 1 with one bright square teaches the cell scores to peak at the square's cell, whatever the glance
    shows (the glance sees nothing here: frames are blank but for the square)."""
    torch.manual_seed(0)
    preset = _preset(local_cell_frames=1)
    model = UniAdaFocus(preset.model).train()
    dim = model.local_encoder.feature_dim
    head = torch.nn.Linear(dim, 2)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[:, 0] = torch.tensor([-40.0, 40.0])
        head.bias.zero_()
    model.local_head = head
    model.local_encoder.pooled = lambda x: torch.nn.functional.pad(x.mean(dim=(1, 2, 3))[:, None], (0, dim - 1))
    clip = torch.zeros(1, 12, 3, 128, 128)
    clip[..., 88:120, 8:40] = 1.0  # bottom-left
    rows, cols = model.glance_map_size
    positions = model.spatial_policy.cell_positions  # (x, y) in [0, 1]
    target_cell = int(((positions[:, 0] - 24 / 128) ** 2 + (positions[:, 1] - 104 / 128) ** 2).argmin())
    optimizer = torch.optim.SGD(model.spatial_policy.parameters(), lr=0.2)
    losses = dataclasses.replace(preset.loss, exits=0.0, glance_aux=0.0, local_aux=0.0, temporal=0.0)
    for _ in range(20):
        out = model(clip)
        loss = training_loss(out, torch.tensor([1]), losses)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    scores = model(clip).cell_scores.detach()
    best = scores.argmax(-1)
    near = ((positions[best, 0] - positions[target_cell, 0]).abs() <= 1.0 / cols) & \
           ((positions[best, 1] - positions[target_cell, 1]).abs() <= 1.0 / rows)
    assert near.all(), (best, target_cell)
