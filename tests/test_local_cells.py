"""spatial_proxy="local_cells": the cell target comes from what the LOCAL encoder reads under a box at every
glance-map cell, so the spatial policy can learn where to look when the glance cannot tell the classes apart
(core.model.UniAdaFocus.local_cell_logits, core.objective.training_loss)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from adafocus.core.config import ModelConfig, get_preset
from adafocus.core.model import UniAdaFocus
from adafocus.core.objective import (
    best_cell_logits,
    cell_policy_loss,
    frame_policy_loss,
    local_frame_target,
    training_loss,
)


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


def test_local_cell_logits_are_the_policys_target_and_train_only_the_cell_scores_through_it():
    torch.manual_seed(0)
    preset = _preset(local_cell_frames=3)
    model = UniAdaFocus(preset.model).train()
    assert model.proxy_head is None and model.uses_local_cells and not model.uses_cell_proxy
    out = model(torch.rand(2, 12, 3, 128, 128))
    cells = model.glance_map_size[0] * model.glance_map_size[1]
    assert out.proxy_cell_logits.shape == (2, 3, cells, 2) and out.cell_scores.shape == (2, 3, cells)
    assert out.proxy_cell_logits.requires_grad and out.cell_scores.requires_grad and out.proxy_logits is None
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


def test_local_frame_target_favours_the_frame_whose_best_cell_reads_the_class():
    cell_ce = torch.tensor([[[0.7, 0.7, 0.7], [0.7, 0.05, 0.9]]])  # frame 1 has one place that reads the class
    target = local_frame_target(cell_ce, temperature=0.05)
    assert target.shape == (1, 2) and torch.allclose(target.sum(-1), torch.ones(1))
    assert target[0, 1] > 0.99
    flat = local_frame_target(torch.full((1, 2, 3), 0.69), temperature=0.05)
    assert torch.allclose(flat, torch.full((1, 2), 0.5))  # nowhere readable: no preference


def test_frame_policy_loss_is_least_when_the_weights_match_the_target_among_the_frames_read():
    frames = torch.tensor([[3, 0]])
    target = torch.tensor([[0.9, 0.1]])
    # Only the ratio of the weights of the frames read matters (frame 3 : frame 0 = 9 : 1 in both).
    matching = frame_policy_loss(torch.tensor([[0.05, 0.3, 0.2, 0.45]]), frames, target)
    other = frame_policy_loss(torch.tensor([[0.01, 0.0, 0.9, 0.09]]), frames, target)
    wrong = frame_policy_loss(torch.tensor([[0.9, 0.0, 0.0, 0.1]]), frames, target)
    entropy = -(target * target.log()).sum()
    assert matching == pytest.approx(float(entropy), abs=1e-5) and other == pytest.approx(float(entropy), abs=1e-5)
    assert wrong > matching + 1.0


def test_cell_policy_loss_weighs_frames():
    scores = torch.tensor([[[2.0, 0.0], [0.0, 2.0]]])
    cell_ce = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])  # frame 0's scores agree with its target, frame 1's do not
    even = cell_policy_loss(scores, cell_ce, 0.05)
    assert cell_policy_loss(scores, cell_ce, 0.05, torch.tensor([[2.0, 0.0]])) < even
    assert cell_policy_loss(scores, cell_ce, 0.05, torch.tensor([[0.0, 2.0]])) > even
    assert cell_policy_loss(scores, cell_ce, 0.05, torch.ones(1, 2)) == pytest.approx(float(even))


def test_local_cells_train_the_frame_policy_from_the_local_reading_not_the_glance_logits():
    torch.manual_seed(0)
    preset = _preset(local_cell_frames=3)
    model = UniAdaFocus(preset.model).train()
    out = model(torch.rand(2, 12, 3, 128, 128))
    assert out.cell_frames.shape == (2, 3)
    assert (out.cell_frames >= 0).all() and (out.cell_frames < preset.model.num_glance).all()
    _, terms = training_loss(out, torch.tensor([0, 1]), preset.loss)
    assert "frame_policy" in terms and "temporal" not in terms
    model.zero_grad()
    frame_only = training_loss(out, torch.tensor([0, 1]), dataclasses.replace(
        preset.loss, exits=0.0, glance_aux=0.0, local_aux=0.0, spatial=0.0, size_regularizer=0.0))[0]
    frame_only.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.temporal_policy.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.glance_encoder.parameters())


def test_best_cell_logits_take_each_classs_largest_logit_over_frames_and_cells():
    logits = torch.tensor([[[[0.0, 1.0], [3.0, 0.0]], [[0.5, 2.0], [0.0, 0.0]]]])  # [1, K=2, N=2, C=2]
    assert best_cell_logits(logits).tolist() == [[3.0, 2.0]]


def test_the_local_cells_term_trains_the_local_encoder_on_the_best_cell():
    torch.manual_seed(0)
    preset = _preset(local_cell_frames=2)
    model = UniAdaFocus(preset.model).train()
    out = model(torch.rand(2, 12, 3, 128, 128))
    only = dataclasses.replace(preset.loss, exits=0.0, glance_aux=0.0, temporal=0.0, spatial=0.0,
                               size_regularizer=0.0)
    loss, terms = training_loss(out, torch.tensor([0, 1]), only)
    assert "local_cells" in terms and "local_aux" in terms
    model.zero_grad()
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.local_encoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.spatial_policy.parameters())
