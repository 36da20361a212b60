"""The OpenVINO inference engine must give what torch gives (fp32: logits within 1e-4 relative, the same
exits, frames and boxes), fall back to torch with one warning line when export fails, and export a
checkpoint's encoders only once."""
import dataclasses
import logging

import pytest
import torch
from _policy_fixtures import spread_policy
from adafocus.core import engine as engine_module
from adafocus.core.config import get_preset
from adafocus.core.engine import (
    EngineBody,
    EngineError,
    engine_summary,
    prepare_for_inference,
    resolve_engine,
)
from adafocus.core.model import UniAdaFocus

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def config():
    return dataclasses.replace(get_preset("cpu-synthetic").model, num_focus=4)


@pytest.fixture(scope="module")
def exported(config, tmp_path_factory):
    """(plain model, the same weights on the engine, the cache it was exported to), shared by the tests
    that do not need a fresh cache."""
    cache_dir = tmp_path_factory.mktemp("engine-cache")
    plain, engined, used = _pair(config, cache_dir)
    assert used == "openvino"
    return plain, engined, cache_dir


def _pair(config, cache_dir, **kwargs):
    torch.manual_seed(0)
    plain = UniAdaFocus(config).eval()
    engined = UniAdaFocus(config).eval()
    engined.load_state_dict(plain.state_dict())
    used = prepare_for_inference(engined, engine="openvino", cache_dir=cache_dir, **kwargs)
    return plain, engined, used


def _assert_same_result(got, expected):
    finite = expected.logits.isfinite()
    assert torch.equal(got.logits.isnan(), expected.logits.isnan())
    scale = expected.logits[finite].abs().max()
    assert (got.logits[finite] - expected.logits[finite]).abs().max() <= 1e-4 * scale
    assert torch.equal(got.exit_index, expected.exit_index)
    assert torch.equal(got.frame_indices, expected.frame_indices)
    assert torch.equal(got.boxes.isnan(), expected.boxes.isnan())
    assert torch.allclose(got.boxes.nan_to_num(0.0), expected.boxes.nan_to_num(0.0), atol=1e-5)
    assert torch.equal(got.gmacs, expected.gmacs)


def test_engine_inference_equals_torch_with_and_without_exits(config, exported):
    plain, engined, _ = exported
    assert isinstance(engined.glance_encoder.body, EngineBody) and isinstance(engined.local_encoder.body, EngineBody)
    assert engine_summary(engined) == "glance: openvino fp32, local: openvino fp32, spatial policy: openvino fp32"
    clip = torch.rand(16, config.num_candidates, 3, config.frame_size, config.frame_size,
                      generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        policy = spread_policy(plain, clip)
        expected, got = plain.infer(clip, policy), engined.infer(clip, policy)
        _assert_same_result(engined.infer(clip), plain.infer(clip))
    assert len(set(expected.exit_index.tolist())) >= 3  # exits happen at several steps
    _assert_same_result(got, expected)
    assert engined.exit_costs() == plain.exit_costs()  # FLOPs are counted on the same weights


def test_export_failure_warns_in_one_line_and_keeps_torch(config, tmp_path, monkeypatch, caplog):
    import openvino

    def fail(*args, **kwargs):
        raise RuntimeError("unsupported operation aten::frobnicate\nwith a long second line")

    monkeypatch.setattr(openvino, "convert_model", fail)
    with caplog.at_level(logging.WARNING, logger="adafocus.engine"):
        plain, fallback, _ = _pair(config, tmp_path)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3  # one line per exported part: two encoders and the spatial policy
    assert all("\n" not in m and "running it in torch" in m and "aten::frobnicate" in m for m in messages)
    assert engine_summary(fallback) == "glance: torch, local: torch, spatial policy: torch"
    assert fallback.local_encoder.channels_last  # the fallback still gets torch's optimisation
    clip = torch.rand(6, config.num_candidates, 3, config.frame_size, config.frame_size)
    with torch.inference_mode():
        _assert_same_result(fallback.infer(clip), plain.infer(clip))
    assert not any(tmp_path.iterdir()) or not list(tmp_path.rglob("*.xml"))  # nothing half-written cached


def test_an_export_that_disagrees_with_torch_is_rejected(config, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(engine_module, "relative_error", lambda output, reference: 0.5)
    with caplog.at_level(logging.WARNING, logger="adafocus.engine"):
        _, engined, _ = _pair(config, tmp_path)
    assert engine_summary(engined) == "glance: torch, local: torch, spatial policy: torch"
    assert all("differs from torch" in r.getMessage() for r in caplog.records) and len(caplog.records) == 3
    assert not list(tmp_path.rglob("*.xml"))  # the rejected export is not cached


def test_second_load_reuses_the_cached_export(config, exported, monkeypatch):
    import openvino

    cache_dir = exported[2]
    before = sorted(p.parent.name for p in cache_dir.rglob("body.xml"))
    assert len(before) == 3  # one IR per encoder and one for the spatial policy, keyed by their weights

    def must_not_convert(*args, **kwargs):
        raise AssertionError("the cached export should have been used")

    monkeypatch.setattr(openvino, "convert_model", must_not_convert)
    plain, engined, _ = _pair(config, cache_dir)
    assert engine_summary(engined) == "glance: openvino fp32, local: openvino fp32, spatial policy: openvino fp32"
    assert sorted(p.parent.name for p in cache_dir.rglob("body.xml")) == before
    clip = torch.rand(4, config.num_candidates, 3, config.frame_size, config.frame_size)
    with torch.inference_mode():
        _assert_same_result(engined.infer(clip), plain.infer(clip))


def test_changed_weights_get_their_own_export(config, exported):
    cache_dir = exported[2]
    before = len(list(cache_dir.rglob("body.xml")))
    torch.manual_seed(1)
    other = UniAdaFocus(config).eval()
    other.glance_encoder.load_state_dict(exported[0].glance_encoder.state_dict())  # only the rest changes
    prepare_for_inference(other, engine="openvino", cache_dir=cache_dir)
    assert len(list(cache_dir.rglob("body.xml"))) == before + 2


def test_engine_options_resolve_per_device(monkeypatch):
    assert resolve_engine("auto", "cpu") == "openvino"
    assert resolve_engine("auto", "cuda") == "torch"
    assert resolve_engine("torch", "cpu") == "torch"
    with pytest.raises(EngineError, match="unknown engine"):
        resolve_engine("tensorrt", "cpu")
    with pytest.raises(EngineError, match="runs on the CPU"):
        resolve_engine("openvino", "cuda")
    with pytest.raises(EngineError, match="openvino engine"):
        resolve_engine("torch", "cpu", "bf16")
    monkeypatch.setattr(engine_module, "bf16_supported", lambda: False)
    with pytest.raises(EngineError, match="no native bf16") as refused:
        resolve_engine("auto", "cpu", "bf16")
    assert "\n" not in str(refused.value)
    monkeypatch.setattr(engine_module, "openvino_available", lambda: False)
    assert resolve_engine("auto", "cpu") == "torch"


def test_torch_engine_is_the_plain_optimisation(config, tmp_path):
    torch.manual_seed(0)
    model = UniAdaFocus(config).eval()
    assert prepare_for_inference(model, engine="torch", cache_dir=tmp_path) == "torch"
    assert engine_summary(model) == "glance: torch, local: torch, spatial policy: torch" and model.local_encoder.channels_last
    assert not any(tmp_path.iterdir())


def test_scoring_keeps_torch_under_auto_and_refuses_openvino_with_workers():
    from adafocus.core.engine import engine_with_workers

    assert engine_with_workers("auto", "cpu", "fp32", 2) == "torch"
    assert engine_with_workers("auto", "cpu", "fp32", 0) == "torch"
    assert engine_with_workers("openvino", "cpu", "fp32", 0) == "openvino"
    with pytest.raises(EngineError, match="--workers 0"):
        engine_with_workers("openvino", "cpu", "fp32", 2)
