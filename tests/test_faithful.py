"""Where the re-implementation follows the authors' training code: the GPU preparation path, the MC horizon,
the TSM / X3D training signal."""
import dataclasses

import pytest
import torch
from adafocus.core.config import PRESETS, get_preset
from adafocus.core.model import UniAdaFocus
from adafocus.core.objective import training_loss
from adafocus.core.train import prepare_for_training

SPATIAL_POLICY_PRESETS = sorted(name for name in PRESETS
                                if get_preset(name).model.learned_patches or "x3d" in name)


@pytest.mark.parametrize("name", SPATIAL_POLICY_PRESETS)
def test_cuda_preparation_path_handles_conv3d_weights(name):
    """The channels-last conversion CUDA training applies, run on the CPU: 2-D conv weights switch layout,
    5-D Conv3d weights (spatial policy, X3D) keep theirs instead of raising."""
    preset = get_preset(name, glance_pretrained=None, local_pretrained=None)
    model = UniAdaFocus(preset.model)
    has_conv3d = any(p.dim() == 5 for p in model.parameters())
    if has_conv3d:  # the call the trainer used to make fails on any device
        with pytest.raises(RuntimeError):
            UniAdaFocus(preset.model).to(memory_format=torch.channels_last)
    prepared = prepare_for_training(model, torch.device("cpu"), channels_last=True)
    assert has_conv3d or preset.model.patch_policy == "ppo_grid"
    for parameter in prepared.parameters():
        if parameter.dim() == 4:
            assert parameter.is_contiguous(memory_format=torch.channels_last)
        else:
            assert parameter.is_contiguous()


def test_prepared_model_trains_a_step():
    preset = get_preset("cpu-synthetic")
    model = prepare_for_training(UniAdaFocus(preset.model), torch.device("cpu"), channels_last=True).train()
    clip = torch.rand(2, 8, 3, 64, 64)
    loss, _ = training_loss(model(clip), torch.tensor([0, 1]), dataclasses.replace(preset.loss, mc_samples=4))
    loss.backward()
    assert all(p.grad is not None for p in model.spatial_policy.parameters())


def test_mc_horizon_is_the_expected_selected_glance_frames():
    from adafocus.core.sampling import mc_horizon
    assert mc_horizon(16, 16, 48) == 5 == 16 // 3     # the authors' UA-A setting: their constant
    assert mc_horizon(12, 8, 36) == 3                 # TSM 8+12 of 36: 2.67 -> 3 (authors: 8 // 3 = 2)
    assert mc_horizon(3, 12, 12) == 3                 # cpu-video: 3 of 12 (authors' constant: 4)
    assert mc_horizon(4, 16, 16) == 4                 # cpu-mri
    assert mc_horizon(1, 8, 48) == 1                  # never below one draw
    assert mc_horizon(16, 4, 16) == 4                 # never more than the glance frames
    with pytest.raises(ValueError):
        mc_horizon(0, 8, 8)


def test_v1_reward_baseline_replaces_only_step_t():
    from adafocus.core.adafocus_v1 import stepwise_rewards
    from adafocus.core.classifier import AccumulatedMaxPoolClassifier
    torch.manual_seed(0)
    classifier = AccumulatedMaxPoolClassifier(6, 5, 3, num_glance=2, num_focus=3, hidden=8).eval()
    policy, random = torch.randn(4, 3, 5), torch.randn(4, 3, 5)
    glance_state, labels = torch.randn(4, 8).relu(), torch.tensor([0, 1, 2, 0])
    rewards = stepwise_rewards(classifier, policy, random, glance_state, labels)

    def confidence(features, t):
        logits = classifier.focus_logits(features, glance_state)[:, t]
        return logits.softmax(-1).gather(1, labels[:, None])[:, 0]

    for t in range(3):
        swapped = policy.clone()
        swapped[:, t] = random[:, t]  # eq. 26: the policy's sequence with step t's patch random
        torch.testing.assert_close(rewards[:, t], confidence(policy, t) - confidence(swapped, t))
    other = random.clone()
    other[:, 0] += 5.0  # another random patch at step 0 changes only reward 0
    changed = stepwise_rewards(classifier, policy, other, glance_state, labels)
    assert torch.equal(changed[:, 1:], rewards[:, 1:]) and not torch.equal(changed[:, 0], rewards[:, 0])


def test_mixed_precision_leaves_policies_and_the_mc_step_in_float32():
    """bf16 autocast (as CUDA training uses; the CPU has the same autocast) covers the encoders only."""
    preset = get_preset("cpu-synthetic")
    model = UniAdaFocus(preset.model).train()
    clip, labels = torch.rand(2, 8, 3, 64, 64), torch.tensor([0, 1])
    loss_cfg = dataclasses.replace(preset.loss, mc_samples=8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(3)
        out = model(clip)
        torch.manual_seed(4)
        _, mixed = training_loss(out, labels, loss_cfg)
    assert out.local_patch_logits.dtype == torch.bfloat16          # autocast is on for the encoders
    assert out.glance_actions.dtype == out.frame_weights.dtype == out.proxy_logits.dtype == torch.float32
    torch.manual_seed(4)
    _, plain = training_loss(out, labels, loss_cfg)
    assert mixed["temporal"] == pytest.approx(plain["temporal"], rel=1e-6)


def test_proxy_head_trains_at_the_glance_lr_ratio():
    from adafocus.core.train import parameter_groups
    preset = get_preset("cpu-synthetic")
    model = UniAdaFocus(preset.model)
    groups = {g["name"]: {id(p) for p in g["params"]} for g in parameter_groups(model, 0.1, {})}
    assert {id(p) for p in model.proxy_head.parameters()} <= groups["glance"]
    assert not {id(p) for p in model.proxy_head.parameters()} & groups["spatial_policy"]


def _tiny_tsn_model():
    preset = get_preset("cpu-synthetic")
    return preset, UniAdaFocus(dataclasses.replace(preset.model, classifier="tsn", spatial_per_clip=True))


def test_tsn_training_pass_matches_the_authors_signal(monkeypatch):
    _, model = _tiny_tsn_model()
    model.train()
    seen = {}
    focus = model.focus

    def spy(clip, frame_indices, boxes, samples=None):
        seen["boxes"] = boxes
        return focus(clip, frame_indices, boxes, samples)

    monkeypatch.setattr(model, "focus", spy)
    out = model(torch.rand(3, 8, 3, 64, 64), diversity=True)
    random_boxes = seen["boxes"][3:]                      # the diversity pass: one random box per clip
    assert torch.equal(random_boxes, random_boxes[:, :1].expand_as(random_boxes))
    assert not torch.equal(random_boxes[0, 0], random_boxes[1, 0])
    assert out.exit_logits.shape == (2, 3, 1, 4)          # only the fused exit gets the exits CE

    cfg = dataclasses.replace(get_preset("tsm-p96-8x8").loss, mc_samples=4)
    assert cfg.aux_frame_average
    _, terms = training_loss(out, torch.tensor([0, 1, 2]), cfg)
    expected = torch.nn.functional.cross_entropy(out.glance_frame_logits.mean(1), torch.tensor([0, 1, 2]))
    assert terms["glance_aux"] == pytest.approx(float(expected.detach()), rel=1e-6)


def test_tsn_exit_zero_is_the_glance_auxiliary_head_averaged_over_frames():
    _, model = _tiny_tsn_model()
    model.eval()
    clip = torch.rand(2, 8, 3, 64, 64)
    result = model.infer(clip)
    features = model.glance(clip).features
    torch.testing.assert_close(result.logits[:, 0], model.glance_head(features).mean(1))
    fused = model.classifier.glance_logits(features)[0] + model.classifier.local_head(
        model.focus(clip, result.frame_indices, result.boxes)).mean(1)
    torch.testing.assert_close(result.logits[:, 1], fused)


def test_x3d_heads_have_the_real_x3d_shape():
    preset = get_preset("x3d-p128-16x32", num_classes=7)
    model = UniAdaFocus(preset.model)
    shapes = [tuple(p.shape) for p in model.classifier.glance_head.parameters()]
    assert shapes == [(2048, 432), (7, 2048), (7,)]
    assert [tuple(p.shape) for p in model.glance_head.parameters()] == shapes


def test_paper_eval_view_is_resize_256_centre_crop_224():
    import numpy as np
    from adafocus.datasets.video import EVAL_CROP_PAPER, ClipInfo, ClipTransform
    frames = np.random.default_rng(0).integers(0, 256, (2, 256, 340, 3), dtype=np.uint8)
    info = ClipInfo(path="x.mp4", frame_indices=[0, 1], fps=25.0, num_frames=2, source_size=(256, 340),
                    view_box=(0.0, 0.0, 340.0, 256.0), output_size=(256, 340))
    clip, view = ClipTransform(224, train=False, eval_crop=EVAL_CROP_PAPER)(frames, info)
    assert view.view_box == (58.0, 16.0, 282.0, 240.0)
    expected = torch.from_numpy(frames[:, 16:240, 58:282]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(clip, expected)   # a 256-pixel short side: the crop is the 224 centre, as theirs
    _, full = ClipTransform(224, train=False)(frames, info)
    assert full.view_box == (42.0, 0.0, 298.0, 256.0)  # the CPU presets keep the whole short side
