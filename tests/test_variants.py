"""The paper's model variants on one core: TSM and X3D clip backbones with TSN heads (2 exits), AdaFocusV2 and
AdaFocusV1 modes, the ablation baselines; their costs come from the FLOP counter and match the published ones."""
import dataclasses

import pytest
import torch
from adafocus.core.adafocus_v1 import V1Schedule, train_adafocus_v1
from adafocus.core.backbones import create_backbone
from adafocus.core.backbones.tsm import temporal_shift
from adafocus.core.config import LossConfig, ModelConfig, get_preset
from adafocus.core.exits import ExitPolicy
from adafocus.core.model import UniAdaFocus
from adafocus.core.objective import training_loss
from adafocus.core.ppo import PPOConfig
from adafocus.core.run import load_run
from adafocus.datasets.synthetic import FocusTaskConfig, SyntheticFocusDataset, collate

INF = float("inf")


def tiny_tsm(**overrides) -> ModelConfig:
    defaults = dict(  # noqa: C408  (keyword style mirrors ModelConfig's fields)
        num_classes=3, glance_backbone="mobilenet_v2_tsm", glance_backbone_kwargs={"num_frames": 4},
        local_backbone="resnet50_tsm", local_backbone_kwargs={"num_frames": 2}, frame_size=32, num_candidates=6,
        num_glance=4, num_focus=2, patch_size=16, min_patch_side=12, spatial_hidden=16, temporal_hidden=8,
        spatial_per_clip=True, classifier="tsn")
    return ModelConfig(**{**defaults, **overrides})


# The full-size presets take seconds each to build and count; the cheapest one runs by default.
SLOW = pytest.mark.slow


def tiny_x3d(**overrides) -> ModelConfig:
    return tiny_tsm(glance_backbone="x3d_s", glance_backbone_kwargs={"num_frames": 4}, local_backbone="x3d_l",
                    local_backbone_kwargs={"num_frames": 2}, glance_size=32, **overrides)


def train_steps(model, steps=2, loss_cfg=None, frames=None):
    torch.manual_seed(0)
    c = model.config
    clip = torch.rand(2, frames or c.num_candidates, 3, c.frame_size, c.frame_size)
    labels = torch.tensor([0, 1])
    loss_cfg = loss_cfg or LossConfig(mc_samples=4, temporal_trains_glance=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    model.train()
    for _ in range(steps):
        loss, _ = training_loss(model(clip, diversity=loss_cfg.diversity), labels, loss_cfg)
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = sum(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    return clip, changed / len(before)


def everyone_exits_at(model, exit_k):
    thresholds = [INF] * model.config.num_exits
    thresholds[exit_k] = -INF
    return ExitPolicy(criterion="entropy", thresholds=thresholds, exit_costs=model.exit_costs(), q=1.0,
                      budget=0.0, calibration_cost=0.0)


def test_temporal_shift_moves_one_fold_each_way_with_zero_padding():
    x = torch.arange(2 * 3 * 8, dtype=torch.float32).reshape(6, 8, 1, 1)  # 2 clips of 3 frames, 8 channels
    out = temporal_shift(x, num_frames=3, shift_div=8)[..., 0, 0].reshape(2, 3, 8)
    clips = x[..., 0, 0].reshape(2, 3, 8)
    assert torch.equal(out[:, :2, 0], clips[:, 1:, 0]) and (out[:, 2, 0] == 0).all()   # from the next frame
    assert torch.equal(out[:, 1:, 1], clips[:, :2, 1]) and (out[:, 0, 1] == 0).all()   # from the previous one
    assert torch.equal(out[:, :, 2:], clips[:, :, 2:])
    with pytest.raises(ValueError, match="whole clips"):
        temporal_shift(x[:5], num_frames=3)


def test_tsm_backbones_keep_torchvision_keys_and_mix_frames():
    torch.manual_seed(0)
    tsm, plain = create_backbone("resnet50_tsm", num_frames=2), create_backbone("resnet50")
    assert tsm.load_state_dict(plain.state_dict()) is not None  # strict: same module tree
    tsm.eval(), plain.eval()
    frames = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        alone = tsm(torch.cat([frames[:1], torch.zeros_like(frames[:1])]))[0]
        together = tsm(frames)[0]
        assert not torch.allclose(alone, together)  # frame 0's features depend on frame 1
        assert not torch.allclose(together, plain(frames)[0])


@pytest.mark.parametrize("config_fn", [tiny_tsm, pytest.param(tiny_x3d, marks=SLOW)], ids=["tsm", "x3d"])
def test_clip_variant_trains_and_exits_by_skipping_the_local_encoder(config_fn):
    model = UniAdaFocus(config_fn())
    assert model.config.num_exits == 2
    clip, changed = train_steps(model)
    assert changed > 0.9
    model.eval()
    parts, costs = model.component_costs(), model.exit_costs()
    assert costs[0] == pytest.approx(parts["glance_encoder"] + parts["classifier_glance"])
    assert costs[1] - costs[0] == pytest.approx(parts["local_encoder"] + parts["classifier_focus"]
                                                + parts["spatial_policy"] + parts["temporal_policy"])
    full = model.infer(clip)
    assert full.exit_index.tolist() == [1, 1] and (full.frame_indices >= 0).all()
    assert torch.allclose(full.boxes[:, 0], full.boxes[:, 1])  # one patch per clip
    early = model.infer(clip, everyone_exits_at(model, 0))
    assert early.exit_index.tolist() == [0, 0] and (early.frame_indices == -1).all()
    assert torch.allclose(early.gmacs, torch.tensor(costs[0]))
    assert torch.allclose(early.logits[:, 0], full.logits[:, 0], atol=1e-5)


def test_clip_backbone_frame_count_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="num_frames=2"):
        UniAdaFocus(tiny_tsm(local_backbone_kwargs={"num_frames": 4}))
    with pytest.raises(ValueError, match="classifier='tsn'"):
        UniAdaFocus(tiny_tsm(classifier="max_pool"))


def test_x3d_feature_maps_keep_time_and_have_432_channels():
    backbone = create_backbone("x3d_s", num_frames=4).eval()
    with torch.no_grad():
        assert backbone(torch.rand(8, 3, 64, 64)).shape == (8, 432, 2, 2)


@pytest.mark.parametrize("preset, published", [
    ("tsm-p96-8x8", 8.8), pytest.param("tsm-p96-8x12", 11.8, marks=SLOW),
    pytest.param("tsm-p128-8x12", 18.8, marks=SLOW), pytest.param("tsm-p128-8x16", 24.2, marks=SLOW),
    pytest.param("tsm-plus-static", 35.1, marks=SLOW), pytest.param("x3d-p128-16x32", 8.8, marks=SLOW)])
def test_measured_costs_match_published_gflops(preset, published):
    model = UniAdaFocus(get_preset(preset, glance_pretrained=None, local_pretrained=None).model)
    assert model.exit_costs()[-1] == pytest.approx(published, rel=0.02)


def test_diving48_preset_is_tsm_p128_8_plus_12():
    c = get_preset("diving48").model
    assert (c.num_classes, c.num_glance, c.num_focus, c.patch_size, c.classifier) == (48, 8, 12, 128, "tsn")


def tiny_synthetic(name: str):
    preset = get_preset(name)
    preset.loss = dataclasses.replace(preset.loss, mc_samples=4)
    return preset


def test_adafocus_v2_mode_trains_its_policy_through_the_patches_with_fixed_boxes():
    preset = tiny_synthetic("cpu-synthetic-v2")
    model = UniAdaFocus(preset.model)
    assert model.proxy_head is None and model.temporal_policy is None
    before = [p.detach().clone() for p in model.spatial_policy.parameters()]
    clip, _ = train_steps(model, loss_cfg=preset.loss)
    assert any(not torch.equal(b, p) for b, p in zip(before, model.spatial_policy.parameters(), strict=True))
    boxes = model.eval().infer(clip).boxes * model.config.frame_size
    assert torch.allclose(boxes[..., 2:] - boxes[..., :2], torch.tensor(float(model.config.patch_size)), atol=1e-4)
    assert len(model.exit_costs()) == model.config.num_focus + 1  # conditional exit over frames


def test_policy_stop_gradient_switch_controls_whether_the_task_loss_reaches_the_glance_encoder():
    def glance_grad(stop: bool) -> bool:
        config = dataclasses.replace(get_preset("cpu-synthetic-v2").model, feature_reuse=False,
                                     policy_stop_gradient=stop)
        model = UniAdaFocus(config)
        out = model(torch.rand(2, 8, 3, 64, 64), diversity=False)
        only_local = LossConfig(exits=0.0, glance_aux=0.0, temporal=0.0, spatial=0.0, size_regularizer=0.0)
        loss, _ = training_loss(out, torch.tensor([0, 1]), only_local)
        loss.backward()
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.glance_encoder.parameters())
    torch.manual_seed(0)
    assert glance_grad(stop=False) and not glance_grad(stop=True)


@pytest.mark.parametrize("shape", ["random", "full_frame"])
def test_patch_shape_baselines(shape):
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("cpu-synthetic").model, patch_shape=shape)
    model = UniAdaFocus(config).eval()
    boxes = model.infer(torch.rand(4, 8, 3, 64, 64)).boxes
    sides = boxes[..., 2:] - boxes[..., :2]
    if shape == "full_frame":
        assert model.spatial_policy is None and torch.allclose(sides, torch.ones_like(sides))
    else:
        low, high = config.min_patch_side / config.frame_size, config.max_patch_side / config.frame_size
        assert sides.std() > 0.01 and (sides >= low - 1e-5).all() and (sides <= high + 1e-5).all()


@pytest.mark.parametrize("policy", ["central", "gaussian"])
def test_frame_baselines_pick_distinct_increasing_frames_around_the_middle(policy):
    torch.manual_seed(0)
    model = UniAdaFocus(dataclasses.replace(get_preset("cpu-synthetic").model, frame_policy=policy,
                                            num_focus=3)).eval()
    indices = model.infer(torch.rand(64, 8, 3, 64, 64)).frame_indices
    assert (indices.diff(dim=1) > 0).all()
    if policy == "central":
        assert indices.tolist() == [[2, 3, 4]] * 64
    else:
        assert 2.5 < indices.float().mean() < 4.5


def test_adafocus_v1_three_stages_run_and_the_result_loads(tmp_path):
    torch.manual_seed(0)
    preset = tiny_synthetic("cpu-synthetic-v1")
    preset.train = dataclasses.replace(preset.train, epochs=1, batch_size=8)
    task = FocusTaskConfig(num_frames=8, frame_size=64)
    train_set, val_set = SyntheticFocusDataset(16, task, seed=1), SyntheticFocusDataset(8, task, seed=2)
    summary = train_adafocus_v1(preset, train_set, val_set, tmp_path, device="cpu", collate_fn=collate,
                                schedule=V1Schedule(ppo_epochs=1, finetune_epochs=1, ppo=PPOConfig(epochs=2)),
                                log=lambda s: None)
    assert len(summary["ppo_mean_rewards"]) == 1 and summary["final_accuracy"] is not None
    run = load_run(tmp_path / "final.pt", device="cpu")
    model, loaded = run.model, run.preset
    assert loaded.model.patch_policy == "ppo_grid"
    result = model.infer(torch.rand(3, 8, 3, 64, 64))
    positions = result.boxes[..., 0] / (1 - (result.boxes[..., 2] - result.boxes[..., 0]))  # x0 = pos * (1 - w)
    assert torch.allclose(positions * 6, (positions * 6).round(), atol=1e-4)  # centres on the 7 x 7 grid
    assert "spatial_policy" in model.component_costs()
