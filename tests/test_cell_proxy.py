"""spatial_proxy="cells": the soft_argmax head's cells, the proxy scored at every cell, and its training."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from adafocus.core.config import LossConfig, ModelConfig, get_preset
from adafocus.core.geometry import boxes_from_actions
from adafocus.core.model import Glance, UniAdaFocus
from adafocus.core.objective import cell_cross_entropy, cell_policy_loss
from adafocus.core.policy import SpatialPolicy

SIDES = (0.1, 0.2)


def cells_config(**overrides) -> ModelConfig:
    return dataclasses.replace(get_preset("cpu-synthetic").model, spatial_head="soft_argmax", spatial_proxy="cells",
                               **overrides)


def test_the_policy_acts_through_its_cells():
    torch.manual_seed(0)
    policy = SpatialPolicy(6, (4, 5), 3, hidden=8, head="soft_argmax", side_range=SIDES).eval()
    maps = torch.randn(2, 3, 6, 4, 5)
    assert torch.equal(policy(maps), policy.actions(policy.cells(maps)))


def test_cell_actions_centre_a_box_on_every_cell():
    torch.manual_seed(0)
    policy = SpatialPolicy(6, (4, 5), 3, hidden=8, head="soft_argmax", side_range=SIDES).eval()
    choice = policy.cells(torch.randn(2, 3, 6, 4, 5))
    boxes = boxes_from_actions(policy.cell_actions(choice), min_side=SIDES[0], max_side=SIDES[1])
    assert boxes.shape == (2, 3, 20, 4)
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    expected = torch.tensor([[(col + 0.5) / 5, (row + 0.5) / 4] for row in range(4) for col in range(5)])
    assert torch.allclose(centres, expected.expand_as(centres), atol=1e-5)


def test_dense_heads_have_no_cells():
    policy = SpatialPolicy(6, (4, 5), 3, hidden=8, head="dense")
    with pytest.raises(ValueError, match="soft_argmax"):
        policy.cells(torch.randn(1, 3, 6, 4, 5))
    with pytest.raises(ValueError, match="soft_argmax"):
        dataclasses.replace(get_preset("cpu-synthetic").model, spatial_proxy="cells")


def test_cell_policy_loss_moves_weight_to_the_cells_where_the_proxy_is_right():
    cell_ce = torch.tensor([[[0.7, 0.2, 0.7, 0.69]]])
    scores = torch.zeros(1, 1, 4, requires_grad=True)
    optimiser = torch.optim.SGD([scores], lr=1.0)
    for _ in range(50):
        optimiser.zero_grad()
        cell_policy_loss(scores, cell_ce, temperature=0.05).backward()
        optimiser.step()
    weights = scores.softmax(-1)[0, 0]
    assert weights.argmax() == 1 and weights[1] > 0.9
    # a frame where every cell scores alike pulls towards no cell
    flat = torch.zeros(1, 1, 4, requires_grad=True)
    cell_policy_loss(flat, torch.full((1, 1, 4), 0.7), temperature=0.05).backward()
    assert flat.grad.abs().max() < 1e-6


def test_the_cell_temperature_must_be_positive():
    with pytest.raises(ValueError, match="cell_temperature"):
        LossConfig(cell_temperature=0.0)


def test_cell_cross_entropy_is_per_cell():
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.tensor([1, 4])
    ce = cell_cross_entropy(logits, labels)
    assert ce.shape == (2, 3, 4)
    assert ce[1, 2, 3] == pytest.approx(float(F.cross_entropy(logits[1, 2, 3][None], labels[1:])))


def _grads(model: UniAdaFocus, loss: torch.Tensor) -> dict[str, bool]:
    model.zero_grad(set_to_none=True)
    loss.backward(retain_graph=True)
    parts = {"head": model.proxy_head, "cell_score": model.spatial_policy.cell_score,
             "scale": model.spatial_policy.scale, "glance": model.glance_encoder}
    return {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
            for name, part in parts.items()}


def test_each_cell_proxy_term_trains_only_its_own_part():
    torch.manual_seed(0)
    model = UniAdaFocus(cells_config())
    clip, labels = torch.rand(4, 8, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    out = model(clip)
    assert out.proxy_logits.shape == (4, 4) and out.cell_scores.shape == (4, 8, 16)
    assert out.proxy_cell_logits.shape == (4, 8, 16, 4)
    cell_ce = cell_cross_entropy(out.proxy_cell_logits, labels)
    # mixture over cells, head frozen: the box scales learn from it (the scales read features pooled by the
    # cell weights, so the cell scores get a share through that pooling too)
    grads = _grads(model, F.cross_entropy(out.proxy_logits, labels))
    assert grads["scale"] and not grads["head"] and not grads["glance"]
    # the head at every cell, on detached boxes: only the head
    assert _grads(model, cell_ce.mean()) == {"head": True, "cell_score": False, "scale": False, "glance": False}
    # the cell scores towards the cells where the head is right
    grads = _grads(model, cell_policy_loss(out.cell_scores, cell_ce.detach(), 0.05))
    assert grads["cell_score"] and not grads["head"] and not grads["glance"]


@pytest.mark.parametrize("evidence_cell", [(3, 1), (0, 2)])
def test_the_cell_proxy_moves_the_box_to_the_only_cell_with_class_evidence(evidence_cell):
    """Glance maps of pure noise except at one cell, whose first channels carry the class: trained on the
    cell proxy's terms alone, the policy's boxes end up centred on that cell (a 4 x 4 map; the evidence cell
    is not the policy's starting point, the map centre)."""
    torch.manual_seed(0)
    model = UniAdaFocus(cells_config(num_classes=2, min_patch_side=16, max_patch_side=16))
    parts = [*model.spatial_policy.parameters(), *model.proxy_head.parameters()]
    optimiser = torch.optim.Adam(parts, lr=0.01)
    row, col = evidence_cell

    def glance_batch(size: int) -> tuple[Glance, torch.Tensor]:
        labels = torch.randint(0, 2, (size,))
        maps = torch.randn(size, 8, 64, 4, 4)
        maps[:, :, :8, row, col] += (2.0 * labels - 1.0)[:, None, None] * 2.0
        return Glance(maps, maps.mean(dim=(-2, -1)), torch.zeros(size, 8, dtype=torch.long)), labels

    for _ in range(150):
        glance, labels = glance_batch(16)
        cells = model.glance_cells(glance)
        mixture, cell_logits = model.cell_proxy(glance, cells)
        cell_ce = cell_cross_entropy(cell_logits, labels)
        loss = F.cross_entropy(mixture, labels) + cell_ce.mean() + cell_policy_loss(cells.scores, cell_ce.detach(), 0.05)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    with torch.no_grad():
        glance, _ = glance_batch(32)
        boxes = model.boxes(model.glance_actions(glance))
    centres = (boxes[..., :2] + boxes[..., 2:]) / 2
    target = torch.tensor([(col + 0.5) / 4, (row + 0.5) / 4])
    assert (centres - target).abs().max() < 0.125  # within half a cell of the evidence, every box
