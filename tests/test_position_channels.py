"""ModelConfig.position_channels: every frame reaches the encoders with its place (candidate index, row, column)."""
from __future__ import annotations

import dataclasses

import torch
from adafocus.core.config import get_preset
from adafocus.core.model import UniAdaFocus, encoder_in_channels


def _model() -> UniAdaFocus:
    config = dataclasses.replace(get_preset("cpu-mri").model, position_channels=True)
    torch.manual_seed(0)
    return UniAdaFocus(config)


def test_position_channels_hold_the_candidate_place_row_and_column():
    model = _model()
    frames = torch.rand(4, 3, 8, 8)
    out = model.with_positions(frames, torch.tensor([[0, 5], [10, 15]]))
    assert out.shape == (4, 6, 8, 8) and torch.equal(out[:, :3], frames)
    assert torch.allclose(out[:, 3, 0, 0], torch.tensor([-1.0, -1 / 3, 1 / 3, 1.0]))  # index / 15 * 2 - 1
    assert torch.allclose(out[0, 4, :, 0], torch.linspace(-1, 1, 8)) and torch.all(out[0, 4, 0] == -1)  # rows
    assert torch.allclose(out[0, 5, 0, :], torch.linspace(-1, 1, 8)) and torch.all(out[0, 5, :, 0] == -1)  # cols


def test_encoders_take_the_extra_channels_and_a_patch_reads_where_it_was_cut():
    model = _model().eval()
    assert encoder_in_channels(model.glance_encoder) == encoder_in_channels(model.local_encoder) == 6
    clip = torch.rand(2, 16, 3, 64, 64)
    result = model.infer(clip)
    assert result.logits.shape == (2, 5, 2) and torch.isfinite(result.logits).all()
    model.train()
    outputs = model(clip)
    assert torch.isfinite(outputs.exit_logits).all()
    # the same pixels cut at two places of the frame give different local features: the coordinates differ
    flat = torch.full((1, 16, 3, 64, 64), 0.5)
    boxes = torch.tensor([[[0.0, 0.0, 0.4, 0.4]], [[0.6, 0.6, 1.0, 1.0]]])
    model.eval()
    with torch.no_grad():
        features = model.focus(flat.expand(2, -1, -1, -1, -1), torch.tensor([[3], [3]]), boxes)
    assert not torch.allclose(features[0], features[1])
    off = dataclasses.replace(model.config, position_channels=False)
    with torch.no_grad():
        plain = UniAdaFocus(off).eval().focus(flat.expand(2, -1, -1, -1, -1), torch.tensor([[3], [3]]), boxes)
    assert torch.allclose(plain[0], plain[1], atol=1e-5)
