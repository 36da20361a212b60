"""The OpenVINO inference engine must give what torch gives (fp32: logits within 1e-4 relative, the same
exits, frames and boxes), fall back to torch with one warning line when export fails, and export a
checkpoint's encoders only once."""
import dataclasses
import logging
import os
import sys

import pytest
import torch
from _policy_fixtures import spread_policy
from adafocus.core import engine as engine_module
from adafocus.core.config import get_preset
from adafocus.core.engine import (
    EngineBody,
    EngineError,
    engine_summary,
    needs_calibration,
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


def _random_clips(config, count: int, *, seed: int) -> torch.Tensor:
    return torch.rand(count, config.num_candidates, 3, config.frame_size, config.frame_size,
                      generator=torch.Generator().manual_seed(seed))


def _quantized_pair(config, cache_dir, precision: str):
    """(plain, quantized on 8 random clips) at `precision`, after checking that it refuses to run uncalibrated."""
    with pytest.raises(EngineError, match="calibration"):
        _pair(config, cache_dir, precision=precision)
    plain, quantized, used = _pair(config, cache_dir, precision=precision,
                                   calibration=_random_clips(config, 8, seed=2))
    assert used == "openvino" and quantized.exit_costs() == plain.exit_costs()
    return plain, quantized


def _agreement_on_random_clips(config, plain, other):
    """(16 random clips, an exit policy that spreads them over the exits, `other`'s agreement with `plain`)."""
    clips = _random_clips(config, 16, seed=3)
    with torch.inference_mode():
        policy = spread_policy(plain, clips)
    return clips, policy, engine_module.prediction_agreement(plain, other, clips, policy)


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
    # the frame normalisation runs inside both encoders' graphs: torch hands them frames in [0, 1]
    assert engined.glance_encoder.normalizes_input and engined.local_encoder.normalizes_input
    assert not plain.glance_encoder.normalizes_input


def test_encoders_reading_more_than_the_frames_keep_the_normalisation_in_torch(config, tmp_path):
    with_positions = dataclasses.replace(config, position_channels=True)
    plain, engined, used = _pair(with_positions, tmp_path)
    assert used == "openvino" and isinstance(engined.local_encoder.body, EngineBody)
    assert not engined.glance_encoder.normalizes_input and not engined.local_encoder.normalizes_input
    clip = torch.rand(4, config.num_candidates, 3, config.frame_size, config.frame_size,
                      generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        _assert_same_result(engined.infer(clip), plain.infer(clip))


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


def test_a_lower_precision_is_exported_after_its_conversion_is_checked_at_fp32(config, tmp_path, monkeypatch):
    """bf16 features of a trained encoder differ from fp32 far more than any per-body tolerance a conversion bug
    would be caught by; the export is checked at fp32, and bf16 is judged by its predictions (agreement)."""
    compiled_for_the_check = []
    original = EngineBody.compiled

    def spy(self, input_shape, threads):
        compiled_for_the_check.append(self.precision)
        return original(self, input_shape, threads)

    monkeypatch.setattr(EngineBody, "compiled", spy)
    monkeypatch.setattr(engine_module, "bf16_supported", lambda: True)
    monkeypatch.setattr(engine_module, "_OV_PRECISION", {**engine_module._OV_PRECISION, "bf16": "f32"})
    _, engined, _ = _pair(config, tmp_path, precision="bf16")
    assert engine_summary(engined) == "glance: openvino bf16, local: openvino bf16, spatial policy: openvino bf16"
    assert compiled_for_the_check == ["fp32", "fp32", "fp32"]  # one check per exported part, none at bf16


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


def _signal_stack() -> tuple[int, int, int]:
    import ctypes

    stack = engine_module._SignalStack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    return stack.ss_sp or 0, stack.ss_flags, stack.ss_size


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack via libc")
def test_compiling_keeps_the_threads_signal_stack():
    """OpenVINO's CPU plugin swaps in its own alternate signal stack when it loads (the cause of the crash
    below); the engine's compiles must leave the thread's stack as it was."""
    import numpy as np
    import openvino as ov
    import openvino.opset13 as ops

    def tiny_model():
        x = ops.parameter([-1, 4], np.float32)
        return ov.Model([ops.relu(x)], [x])

    before = _signal_stack()
    bare = ov.Core().compile_model(tiny_model(), "CPU")  # a fresh plugin, without the guard
    assert _signal_stack() != before  # the plugin's behaviour the guard exists for
    del bare
    with engine_module.keep_signal_stack():
        guarded = ov.Core().compile_model(tiny_model(), "CPU")
    assert _signal_stack() == before
    compiled = engine_module.compile_for_cpu(tiny_model(), {"INFERENCE_NUM_THREADS": 1})
    assert _signal_stack() == before
    assert compiled(np.full((2, 4), -1.0, np.float32))[0].tolist() == [[0.0] * 4] * 2
    del guarded, compiled


ENGINE_THEN_WORKERS = """
import gc, subprocess, sys, torch
from torch.utils.data import DataLoader
from adafocus.core.config import get_preset
from adafocus.core.engine import prepare_for_inference
from adafocus.core.model import UniAdaFocus

config = get_preset("cpu-synthetic").model
for round in range(3):
    models = [UniAdaFocus(config).eval() for _ in range(2)]
    for model in models:
        assert prepare_for_inference(model, engine="openvino", cache_dir=sys.argv[1]) == "openvino"
    with torch.inference_mode():
        for model in models:
            model.infer(torch.rand(2, config.num_candidates, 3, config.frame_size, config.frame_size))
    del model
    while models:
        models.pop(0)  # dropped in the order they were compiled, the order that crashed
    gc.collect()
    for batch in DataLoader(list(range(8)), batch_size=2, num_workers=2):
        pass
    subprocess.run([sys.executable, "-c", "pass"], check=True)
print("survived")
"""


def test_openvino_then_dataloader_workers_in_one_process(tmp_path):
    """Scoring runs the engine in the process whose DataLoader workers decode videos. OpenVINO 2026.4 used to
    leave that process's signal stack in freed memory, and it died with SIGSEGV when a worker exited. Run in
    a child process so that a crash fails this test instead of ending the test session."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", ENGINE_THEN_WORKERS, str(tmp_path)], capture_output=True,
                          text=True, timeout=600, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == "survived"


def test_int8_quantizes_the_encoders_on_calibration_clips_and_reports_agreement(config, tmp_path, monkeypatch):
    pytest.importorskip("nncf")
    with pytest.raises(EngineError, match="openvino engine"):
        resolve_engine("torch", "cpu", "int8")
    plain, quantized = _quantized_pair(config, tmp_path, "int8")
    assert engine_summary(quantized) == "glance: openvino int8, local: openvino int8, spatial policy: openvino fp32"
    for encoder in (quantized.glance_encoder, quantized.local_encoder):
        assert "FakeQuantize" in encoder.body.ir_path.read_text()  # nncf's int8 quantize/dequantize pairs

    clips, policy, measured = _agreement_on_random_clips(config, plain, quantized)
    same = engine_module.prediction_agreement(plain, plain, clips, policy)
    assert same == {"clips": 16, "top1_agreement": 1.0, "max_prob_diff": 0.0, "same_exits": 1.0,
                    "exits_changed": 0.0, "largest_exit_change": 0}
    assert measured["top1_agreement"] >= 0.75 and measured["exits_changed"] <= 0.5
    assert measured["same_exits"] == pytest.approx(1.0 - measured["exits_changed"])
    assert 0.0 <= measured["max_prob_diff"] <= 1.0
    line = engine_module.format_agreement(measured)
    assert "\n" not in line and line.startswith("top-1 agreement") and "largest exit change" in line

    import nncf

    def must_not_quantize(*args, **kwargs):
        raise AssertionError("the cached int8 export should have been used")

    monkeypatch.setattr(nncf, "quantize", must_not_quantize)
    _, again, _ = _pair(config, tmp_path, precision="int8", calibration=_random_clips(config, 8, seed=2))
    assert engine_summary(again) == engine_summary(quantized)


def test_int8_glance_quantizes_the_glance_alone_and_runs_the_rest_in_bf16(config, tmp_path, monkeypatch):
    pytest.importorskip("nncf")
    assert [needs_calibration(p) for p in ("int8-glance", "int8", "bf16", "fp32", "auto")] == [True, True] + [False] * 3
    monkeypatch.setattr(engine_module, "bf16_supported", lambda: False)
    with pytest.raises(EngineError, match="no native bf16") as refused:
        resolve_engine("openvino", "cpu", "int8-glance")
    assert "int8-glance" in str(refused.value) and "\n" not in str(refused.value)
    monkeypatch.setattr(engine_module, "bf16_supported", lambda: True)
    # compiled at f32 where bf16 stands, so that the test runs on any CPU; the wiring is what is checked here
    monkeypatch.setattr(engine_module, "_OV_PRECISION", {**engine_module._OV_PRECISION, "bf16": "f32"})
    plain, mixed = _quantized_pair(config, tmp_path, "int8-glance")
    assert engine_summary(mixed) == "glance: openvino int8, local: openvino bf16, spatial policy: openvino bf16"
    assert "FakeQuantize" in mixed.glance_encoder.body.ir_path.read_text()
    assert "FakeQuantize" not in mixed.local_encoder.body.ir_path.read_text()
    _, _, measured = _agreement_on_random_clips(config, plain, mixed)
    assert measured["top1_agreement"] >= 0.75 and measured["exits_changed"] <= 0.5
