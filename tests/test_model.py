import dataclasses

import pytest
import torch
from adafocus.core.config import LossConfig, ModelConfig, get_preset
from adafocus.core.exits import ExitPolicy
from adafocus.core.geometry import boxes_from_actions
from adafocus.core.model import UniAdaFocus
from adafocus.core.objective import training_loss

INF = float("inf")


def tiny_config(**overrides) -> ModelConfig:
    return dataclasses.replace(get_preset("cpu-synthetic").model, **overrides)


def only(term: str, **extra) -> LossConfig:
    weights = {"exits": 0.0, "glance_aux": 0.0, "local_aux": 0.0, "temporal": 0.0, "spatial": 0.0, "size_regularizer": 0.0}
    weights[term] = 1.0
    return LossConfig(**weights, mc_samples=8, **extra)


def grads_after(model, loss_cfg, seed=0):
    torch.manual_seed(seed)
    clip, labels = torch.rand(4, 8, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    model.zero_grad(set_to_none=True)
    loss, _ = training_loss(model(clip, diversity=loss_cfg.diversity), labels, loss_cfg)
    loss.backward()

    def has_grad(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    return has_grad


def test_stop_gradient_task_loss_does_not_reach_the_policies():
    model = UniAdaFocus(tiny_config())
    has_grad = grads_after(model, only("exits"))
    assert not has_grad(model.spatial_policy) and not has_grad(model.temporal_policy)
    assert has_grad(model.local_encoder) and has_grad(model.glance_encoder) and has_grad(model.classifier)


def test_spatial_proxy_trains_only_the_spatial_policy_and_its_head():
    model = UniAdaFocus(tiny_config())
    has_grad = grads_after(model, only("spatial"))
    assert has_grad(model.spatial_policy) and has_grad(model.proxy_head)
    assert not has_grad(model.glance_encoder) and not has_grad(model.local_encoder)
    assert not has_grad(model.temporal_policy)


@pytest.mark.parametrize("trains_glance", [True, False])
def test_temporal_loss_trains_the_frame_policy_and_glance_only_when_asked(trains_glance):
    model = UniAdaFocus(tiny_config())
    has_grad = grads_after(model, only("temporal", temporal_trains_glance=trains_glance))
    assert has_grad(model.temporal_policy)
    assert not has_grad(model.spatial_policy) and not has_grad(model.local_encoder)
    assert has_grad(model.glance_encoder) == trains_glance


def test_pixel_gradient_mode_lets_the_task_loss_reach_the_spatial_policy():
    model = UniAdaFocus(tiny_config(policy_gradient="pixel"))
    assert model.proxy_head is None
    has_grad = grads_after(model, only("exits"))
    assert has_grad(model.spatial_policy)


def test_size_regulariser_pushes_scales_up():
    model = UniAdaFocus(tiny_config())
    clip = torch.rand(2, 8, 3, 64, 64)
    out = model(clip)
    _, terms = training_loss(out, torch.tensor([0, 1]), only("size_regularizer"))
    expected = ((out.glance_actions[..., 2:] - 1) ** 2).mean().item()
    assert terms["size_regularizer"] == pytest.approx(expected)


def test_baseline_policies_build_no_policy_networks_and_train():
    model = UniAdaFocus(tiny_config(patch_policy="random", frame_policy="uniform"))
    assert model.spatial_policy is None and model.temporal_policy is None and model.proxy_head is None
    out = model(torch.rand(2, 8, 3, 64, 64))
    loss, terms = training_loss(out, torch.tensor([0, 1]), LossConfig(mc_samples=8))
    assert set(terms) == {"exits", "glance_aux", "local_aux"}
    loss.backward()


def test_diversity_pass_doubles_focus_outputs():
    model = UniAdaFocus(tiny_config())
    clip = torch.rand(3, 8, 3, 64, 64)
    assert model(clip, diversity=True).exit_logits.shape == (2, 3, 8 + 2, 4)
    assert model(clip, diversity=False).local_patch_logits.shape == (1, 3, 2, 4)


def test_selected_frames_increase_and_boxes_have_configured_sides():
    model = UniAdaFocus(tiny_config()).eval()
    result = model.infer(torch.rand(5, 8, 3, 64, 64))
    assert (result.frame_indices.diff(dim=1) > 0).all()
    sides = (result.boxes[..., 2:] - result.boxes[..., :2]) * 64
    assert (sides >= 24 - 1e-4).all() and (sides <= 40 + 1e-4).all()


def test_centre_policy_gives_centred_native_size_boxes():
    model = UniAdaFocus(tiny_config(patch_policy="center")).eval()
    boxes = model.infer(torch.rand(2, 8, 3, 64, 64)).boxes * 64
    assert torch.allclose(boxes, torch.tensor([20.0, 20.0, 44.0, 44.0]).expand_as(boxes), atol=1e-4)


def test_per_clip_spatial_policy_shares_one_box():
    model = UniAdaFocus(tiny_config(spatial_per_clip=True)).eval()
    boxes = model.infer(torch.rand(2, 8, 3, 64, 64)).boxes
    assert torch.allclose(boxes[:, 0], boxes[:, 1])


def test_bad_clip_shape_is_a_clear_error():
    model = UniAdaFocus(tiny_config())
    with pytest.raises(ValueError, match="expected a clip"):
        model(torch.rand(2, 5, 3, 64, 64))


def _policy(model, thresholds):
    return ExitPolicy(criterion="entropy", thresholds=thresholds, exit_costs=model.exit_costs(), q=1.0,
                      budget=0.0, calibration_cost=0.0)


def test_early_exit_everyone_at_glance_spends_only_glance_cost():
    model = UniAdaFocus(tiny_config()).eval()
    result = model.infer(torch.rand(4, 8, 3, 64, 64), _policy(model, [-INF, -INF, -INF]))
    assert result.exit_index.tolist() == [0, 0, 0, 0]
    assert torch.allclose(result.gmacs, torch.tensor(model.exit_costs()[0]))
    assert (result.frame_indices == -1).all() and torch.isnan(result.boxes).all()
    assert torch.isnan(result.logits[:, 1:]).all()


def test_early_exit_matches_full_inference_for_samples_that_go_on():
    torch.manual_seed(0)
    model = UniAdaFocus(tiny_config()).eval()
    clip = torch.rand(16, 8, 3, 64, 64)
    full = model.infer(clip)
    scores = torch.distributions.Categorical(logits=full.logits[:, 0]).entropy().neg()
    median = scores.median().item()
    early = model.infer(clip, _policy(model, [median, INF, -INF]))
    exited = early.exit_index == 0
    assert 0 < exited.sum() < 16
    assert torch.allclose(early.logits[~exited], full.logits[~exited], atol=1e-5)
    assert torch.equal(early.prediction[~exited], full.prediction[~exited])
    assert torch.equal(early.frame_indices[~exited], full.frame_indices[~exited])
    assert (early.exit_index[~exited] == 2).all()


def test_exit_costs_increase_and_policies_are_paid_with_the_first_patch():
    model = UniAdaFocus(tiny_config())
    parts, costs = model.component_costs(), model.exit_costs()
    assert costs == sorted(costs)
    per_patch = parts["local_encoder_per_patch"] + parts["classifier_per_patch"]
    assert costs[2] - costs[1] == pytest.approx(per_patch)
    assert costs[1] - costs[0] == pytest.approx(per_patch + parts["spatial_policy"] + parts["temporal_policy"])


def test_paper_configuration_costs_match_published_numbers():
    preset = get_preset("paper-mbv2-r50", glance_pretrained=None, local_pretrained=None)
    model = UniAdaFocus(preset.model)
    parts, costs = model.component_costs(), model.exit_costs()
    assert costs[-1] == pytest.approx(27.2, rel=0.02)  # GFLOPs (MACs) at the last exit, 16+16 frames, P=128
    assert parts["local_encoder_per_patch"] == pytest.approx(1.334601664, rel=0.02)
    assert parts["glance_encoder"] / 16 == pytest.approx(0.299511328, rel=0.02)
    assert parts["spatial_policy"] == pytest.approx(0.822485376, rel=0.02)
    assert parts["temporal_policy"] == pytest.approx(0.00412992, rel=0.02)


def test_temporal_loss_survives_a_policy_whose_softmax_underflows():
    from adafocus.core.model import TrainingOutputs
    weights = torch.zeros(2, 8)
    weights[:, 3] = 1.0  # what softmax gives in float32 once one logit leads by > ~104
    out = TrainingOutputs(exit_logits=torch.zeros(1, 2, 10, 4), glance_frame_logits=torch.randn(2, 8, 4),
                          local_patch_logits=torch.zeros(1, 2, 2, 4), frame_weights=weights, glance_actions=None,
                          proxy_logits=None, frame_indices=torch.zeros(2, 2, dtype=torch.long),
                          boxes=torch.zeros(2, 2, 4), num_candidates=8)
    loss, terms = training_loss(out, torch.tensor([0, 1]), only("temporal"))
    assert torch.isfinite(loss) and terms["temporal"] > 0


SIDES = (0.1, 0.2)  # box sides small enough that every cell centre of a 4 x 5 map can be a box centre


def _hot_cell_policy(map_size=(4, 5)):
    """A soft-argmax policy whose cell score is channel 0 of the glance map, sharpened."""
    from adafocus.core.policy import SpatialPolicy

    policy = SpatialPolicy(3, map_size, 2, hidden=3, head="soft_argmax", side_range=SIDES).eval()
    with torch.no_grad():
        for layer in policy.body:
            if isinstance(layer, torch.nn.Conv3d):  # pass channel 0 through the trunk unchanged
                layer.weight.zero_()
                centre = tuple(k // 2 for k in layer.weight.shape[2:])
                layer.weight[(0, 0, *centre)] = 1.0
        policy.cell_score.weight.zero_()
        policy.cell_score.weight[0, 0] = 40.0
        policy.cell_score.bias.zero_()
    return policy


@pytest.mark.parametrize("row,col", [(0, 0), (1, 3), (3, 4), (2, 1)])
def test_soft_argmax_policy_points_at_the_cell_that_scores_highest_wherever_it_is(row, col):
    policy = _hot_cell_policy()
    maps = torch.zeros(1, 2, 3, 4, 5)
    maps[0, :, 0, row, col] = 1.0  # the same "object" feature in both frames, at one cell
    boxes = boxes_from_actions(policy(maps)[0], min_side=SIDES[0], max_side=SIDES[1])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert torch.allclose(centres, torch.tensor([(col + 0.5) / 5, (row + 0.5) / 4]).expand(2, 2), atol=1e-3)


@pytest.mark.parametrize("context,reach", [(3, 2), (1, 0)])
def test_spatial_policy_context_sets_how_far_a_glance_feature_moves_cell_scores(context, reach):
    """A cell's score reads the glance features within (context // 2) * 2 cells of it (two context
    convolutions): with context 1 a policy cannot point at a cell beside the one that holds the evidence."""
    from adafocus.core.policy import SpatialPolicy

    torch.manual_seed(0)
    policy = SpatialPolicy(3, (7, 7), 2, hidden=8, head="soft_argmax", side_range=SIDES, context=context).eval()
    maps = torch.randn(1, 2, 3, 7, 7)
    poked = maps.clone()
    poked[0, :, :, 3, 3] += 5.0
    with torch.no_grad():
        moved = (policy.cells(poked).scores - policy.cells(maps).scores).abs().reshape(2, 7, 7) > 1e-5
    rows, cols = torch.nonzero(moved.any(dim=0), as_tuple=True)
    assert int((rows - 3).abs().max()) == reach and int((cols - 3).abs().max()) == reach
    with pytest.raises(ValueError, match="odd"):
        SpatialPolicy(3, (7, 7), 2, hidden=8, head="soft_argmax", side_range=SIDES, context=2)


def test_window_weights_keep_the_cells_around_the_best_one_and_ignore_the_far_floor():
    from adafocus.core.policy import window_weights

    scores = torch.zeros(1, 5 * 4)  # a 5 x 4 map, row-major
    scores[0, 1 * 4 + 3] = 4.0  # best cell: row 1, column 3 (the right edge)
    scores[0, 2 * 4 + 2] = 2.0  # inside its 3 x 3 window
    scores[0, 4 * 4 + 0] = 3.9  # far away: ignored however high
    weights = window_weights(scores, (5, 4), 3).reshape(5, 4)
    kept = torch.zeros(5, 4, dtype=torch.bool)
    kept[0:3, 2:4] = True  # rows 0-2, columns 2-3: the window, cut at the edge
    assert torch.all(weights[~kept] == 0) and torch.all(weights[kept] > 0)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[1, 3] > weights[2, 2] > weights[0, 2]
    assert torch.allclose(window_weights(scores, (5, 4), 9), scores.softmax(-1))  # a window over the whole map


def test_a_window_stops_the_far_cells_pulling_the_box_to_the_frame_centre_at_inference():
    from adafocus.core.policy import CellChoice, SpatialPolicy

    scores = torch.zeros(1, 1, 81)
    scores[0, 0, 8] = 6.0  # the top-right cell, centre at (17/18, 1/18) of the frame
    choice = CellChoice(scores=scores, weights=scores.softmax(-1), scales=torch.full((1, 1, 2), 0.0))

    def box_centre(window, training):
        policy = SpatialPolicy(3, (9, 9), 1, hidden=8, head="soft_argmax", side_range=SIDES, window=window)
        box = boxes_from_actions(policy.train(training).actions(choice), min_side=SIDES[0], max_side=SIDES[1])[0, 0]
        return ((box[0] + box[2]) / 2).item(), ((box[1] + box[3]) / 2).item()

    everywhere, windowed = box_centre(None, False), box_centre(3, False)
    assert windowed[0] > everywhere[0] + 0.05 and windowed[1] < everywhere[1] - 0.05
    assert box_centre(3, True) == pytest.approx(everywhere)  # training weighs every cell
    with pytest.raises(ValueError, match="odd"):
        SpatialPolicy(3, (9, 9), 1, hidden=8, head="soft_argmax", side_range=SIDES, window=2)
    with pytest.raises(ValueError, match="odd"):
        SpatialPolicy(3, (9, 9), 1, hidden=8, head="dense", window=3)


def test_a_frame_between_glance_frames_gets_its_box_at_the_stronger_peak_not_between_the_peaks():
    from adafocus.core.policy import CellChoice, SpatialPolicy

    scores = torch.zeros(1, 2, 81)  # two glance frames of a 9 x 9 map
    scores[0, 0, 8] = 6.0  # frame at candidate 2: a sharp peak in the top-right cell
    scores[0, 1, 72] = 1.0  # frame at candidate 6: a weak one in the bottom-left cell
    choice = CellChoice(scores=scores, weights=scores.softmax(-1), scales=torch.full((1, 2, 2), 0.5))
    policy = SpatialPolicy(3, (9, 9), 2, hidden=8, head="soft_argmax", side_range=SIDES, window=3).eval()
    positions, frames = torch.tensor([[2, 6]]), torch.tensor([[2, 4, 6]])

    def centres(actions):
        box = boxes_from_actions(actions, min_side=SIDES[0], max_side=SIDES[1])[0]
        return torch.stack([(box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2], dim=-1)

    peak = centres(policy.peak_actions_at(choice, positions, frames))
    own = centres(policy.actions(choice))
    assert torch.allclose(peak[[0, 2]], own)  # glanced frames keep their own boxes
    assert torch.allclose(peak[1], own[0], atol=0.02)  # between them: the sharp peak's place
    blended = own.mean(dim=0)  # what blending the two frames' boxes gives
    assert (peak[1] - blended).abs().max() > 0.3
    assert policy.decodes_peak and not policy.train().decodes_peak


def test_boxes_come_from_the_blended_cell_weights_only_with_a_window_in_eval_mode():
    torch.manual_seed(0)
    clip = torch.rand(2, 8, 3, 64, 64)
    model = UniAdaFocus(tiny_config(spatial_head="soft_argmax", spatial_window=3)).eval()
    glance = model.glance(clip)
    frames = torch.tensor([[0, 3, 5, 7], [1, 2, 4, 6]])
    cells = model.glance_cells(glance)
    actions, glance_actions = model.patch_actions(glance, frames)
    assert torch.allclose(actions, model.spatial_policy.peak_actions_at(cells, glance.positions, frames))
    assert torch.allclose(glance_actions, model.spatial_policy.actions(cells))
    model.spatial_policy.window = None  # no window: the authors' blend of the glance frames' actions
    actions, glance_actions = model.patch_actions(glance, frames)
    assert torch.allclose(actions, model.actions_at(glance_actions, frames))


def test_soft_argmax_policy_needs_the_side_range():
    from adafocus.core.policy import SpatialPolicy

    with pytest.raises(ValueError, match="side_range"):
        SpatialPolicy(3, (4, 5), 2, hidden=3, head="soft_argmax")


def test_soft_argmax_policy_trains_and_needs_per_frame_boxes():
    model = UniAdaFocus(tiny_config(spatial_head="soft_argmax"))
    has_grad = grads_after(model, only("spatial"))
    assert has_grad(model.spatial_policy) and not has_grad(model.glance_encoder)
    with pytest.raises(ValueError, match="per_clip"):
        UniAdaFocus(tiny_config(spatial_head="soft_argmax", spatial_per_clip=True))
