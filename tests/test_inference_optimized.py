"""The inference optimisations (folded batch norms, channels-last, CPU micro-batches, focus lookahead) must
not change what the model predicts, where it looks, or where samples exit."""
import dataclasses

import pytest
import torch
from _policy_fixtures import spread_policy
from adafocus.core.backbones import CPU_MICRO_BATCH, chunk_sizes, cpu_micro_batch, create_backbone
from adafocus.core.config import get_preset
from adafocus.core.model import UniAdaFocus, focus_lookahead


def test_cpu_gets_micro_batches_accelerators_do_not():
    assert cpu_micro_batch("cpu") == CPU_MICRO_BATCH
    assert cpu_micro_batch(torch.device("cuda", 0)) is None


@pytest.mark.parametrize(("total", "micro_batch", "frames_per_clip", "expected"),
                         [(64, None, 1, [64]), (31, 16, 1, [31]), (32, 16, 1, [16, 16]), (37, 16, 1, [19, 18]),
                          (64, 16, 1, [16, 16, 16, 16]), (5, 16, 1, [5]), (48, 16, 12, [24, 24]),
                          (96, 16, 32, [32, 32, 32]), (64, 16, 8, [16, 16, 16, 16]), (3, 1, 1, [1, 1, 1])])
def test_chunks_are_near_equal_whole_clips_of_at_least_a_micro_batch(total, micro_batch, frames_per_clip, expected):
    sizes = chunk_sizes(total, micro_batch, frames_per_clip)
    assert sizes == expected and sum(sizes) == total


def test_chunk_sizes_reject_bad_input():
    with pytest.raises(ValueError, match="micro_batch"):
        chunk_sizes(8, 0)
    with pytest.raises(ValueError, match="whole number"):
        chunk_sizes(10, 16, 4)


@pytest.mark.parametrize(("active", "steps_left", "micro_batch", "expected"),
                         [(4, 16, None, 1), (16, 16, 16, 1), (40, 16, 16, 1), (4, 16, 16, 4), (5, 16, 16, 4),
                          (15, 16, 16, 2), (1, 3, 16, 3), (1, 16, 16, 16), (3, 1, 16, 1)])
def test_focus_lookahead_fills_a_micro_batch_without_passing_the_last_patch(active, steps_left, micro_batch,
                                                                          expected):
    assert focus_lookahead(active, steps_left, micro_batch) == expected


def test_micro_batched_backbone_equals_one_call():
    torch.manual_seed(0)
    encoder = create_backbone("tiny_cnn", pretrained=None, width=8).eval()
    images = torch.rand(37, 3, 32, 32)
    with torch.no_grad():
        whole = encoder(images)
        encoder.optimize_for_inference(micro_batch=5)
        chunked = encoder(images)
    assert chunked.shape == whole.shape
    assert torch.allclose(chunked, whole, atol=1e-5)


@pytest.mark.parametrize("micro_batch", [CPU_MICRO_BATCH, 96])  # 96: every remaining patch in one call
def test_optimised_early_exit_inference_matches_the_plain_model(micro_batch):
    torch.manual_seed(0)
    config = dataclasses.replace(get_preset("cpu-synthetic").model, num_focus=4)
    plain = UniAdaFocus(config).eval()
    optimised = UniAdaFocus(config).eval()
    optimised.load_state_dict(plain.state_dict())
    optimised.optimize_for_inference()
    assert optimised.local_encoder.micro_batch == CPU_MICRO_BATCH
    optimised.local_encoder.micro_batch = micro_batch
    clip = torch.rand(24, 8, 3, 64, 64)
    with torch.inference_mode():
        policy = spread_policy(plain, clip)
        expected, got = plain.infer(clip, policy), optimised.infer(clip, policy)
        no_exit_expected, no_exit_got = plain.infer(clip), optimised.infer(clip)
    assert len(set(expected.exit_index.tolist())) >= 3  # the lookahead path is exercised with exits inside it
    assert torch.equal(got.exit_index, expected.exit_index)
    assert torch.equal(got.prediction, expected.prediction)
    assert torch.equal(got.frame_indices, expected.frame_indices)
    assert torch.allclose(got.logits.nan_to_num(0.0), expected.logits.nan_to_num(0.0), atol=1e-4)
    assert torch.equal(got.logits.isnan(), expected.logits.isnan())
    assert torch.allclose(got.boxes.nan_to_num(0.0), expected.boxes.nan_to_num(0.0), atol=1e-5)
    assert torch.allclose(no_exit_got.logits, no_exit_expected.logits, atol=1e-4)
    assert torch.equal(got.gmacs, expected.gmacs)


@pytest.mark.parametrize(("name", "frames"), [("mobilenet_v2_tsm", 4), ("x3d_s", 4)])
def test_clip_backbones_optimise_without_cutting_clips(name, frames):
    """TSM (forward hooks) and X3D (3D convolutions, control flow) cannot be folded by torch.fx; they must
    still optimise, split batches only between clips, and compute the same features."""
    torch.manual_seed(0)
    encoder = create_backbone(name, pretrained=None, num_frames=frames).eval()
    clips = torch.rand(3 * frames, 3, 32, 32)
    with torch.no_grad():
        whole = encoder(clips)
        encoder.optimize_for_inference(micro_batch=frames - 1)
        chunked = encoder(clips)
    assert chunk_sizes(len(clips), encoder.micro_batch, encoder.frames_per_clip) == [frames] * 3
    assert torch.allclose(chunked, whole, atol=1e-5)
