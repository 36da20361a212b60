"""`adafocus bench speed` on a tiny setting: no timing assertions, only that every number is measured and
consistent (the ratios are computed from the measured rows)."""
import json

import pytest
from adafocus.apps.bench.speed import (
    bench_speed,
    default_sweep,
    encoder_rates,
    format_encoder_table,
    format_scaling_table,
    format_speed_table,
    scaling_rows,
)
from adafocus.apps.cli import main
from adafocus.core.config import get_preset


def test_bench_speed_rows_are_measured_and_consistent():
    rows = bench_speed(get_preset("cpu-synthetic").model, device="cpu", batch=4, warmup=1, repeats=1,
                       budget_fractions=(0.5,), measure_memory=False)
    names = [r["name"] for r in rows]
    assert names[0] == "static baseline" and names[1] == "uni-adafocus, no exit" and len(rows) == 3
    base, full, early = rows
    assert base["gmacs"] > full["gmacs"] > early["gmacs"] > 0
    for r in rows:
        assert r["videos_per_s"] > 0
        assert r["theoretical_ratio"] == pytest.approx(base["gmacs"] / r["gmacs"])
        assert r["efficiency"] == pytest.approx(r["practical_ratio"] / r["theoretical_ratio"])
        # the per-component roofline: each component alone at the batch it ran in, summed
        assert set(r["components_s"]) == {"glance encoder", "policy", "local encoder", "classifier"}
        assert r["roofline_s"] == pytest.approx(sum(r["components_s"].values())) and r["roofline_s"] > 0
        assert r["practical_over_roofline"] == pytest.approx(r["roofline_practical_s"] / r["roofline_s"])
        assert r["roofline_ratio"] == pytest.approx(base["roofline_s"] / r["roofline_s"])
    assert base["components_s"]["policy"] == 0.0 and full["components_s"]["policy"] > 0
    assert full["components_s"]["local encoder"] > 0 and early["components_s"]["glance encoder"] > 0
    from adafocus.apps.bench.speed import format_roofline_table

    assert "practical/roofline" in format_roofline_table(rows, "torch fp32")


def test_scaling_sweep_grows_cost_with_each_setting():
    config = get_preset("cpu-synthetic").model
    sweep = default_sweep(config)
    rows = scaling_rows(config, device="cpu", batch=2, sweep=sweep, repeats=1, measure_memory=False)
    assert len(rows) == sum(len(v) for v in sweep.values())
    for setting in sweep:
        costs = [r["gmacs"] for r in rows if r["setting"] == setting]
        assert costs == sorted(costs) and costs[0] < costs[-1]
    assert "n/a" in format_scaling_table(rows)


@pytest.mark.slow
def test_bench_speed_cli_json_measures_memory_in_fresh_processes(capsys):
    # Batch 8: at 2 the tiny model's peaks are under a megabyte, within the resident set's noise.
    assert main(["bench", "speed", "--preset", "cpu-synthetic", "--device", "cpu", "--batch-size", "8",
                 "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert all(r["peak_mb"] is not None and r["peak_mb"] >= 0 for r in result["rows"])
    baseline, no_exit = result["rows"][:2]
    assert baseline["peak_mb"] > no_exit["peak_mb"]  # full-resolution local encoder on every frame


def test_encoder_rates_divide_measured_gmacs_by_measured_time():
    config = get_preset("cpu-synthetic").model
    rows = encoder_rates(config, device="cpu", batch=2, repeats=1)
    _glance, local, baseline_local = rows
    assert local["gmacs_per_video"] < baseline_local["gmacs_per_video"]  # patches are smaller than frames
    for r in rows:
        assert r["ms_per_video"] > 0
        assert r["gmacs_per_s"] == pytest.approx(r["gmacs_per_video"] / (r["ms_per_video"] / 1000.0))
    assert "GMACs/s" in format_encoder_table(rows)


def test_benchmark_model_spreads_exit_scores_so_budgets_can_be_met():
    """A randomly initialised MobileNetV2 glance gives every clip the same glance prediction (all exit scores
    tie, so a budget cannot split the batch); the benchmark's model uses the locally installed ImageNet
    weights for the glance and clips that differ."""
    import dataclasses

    import torch
    from adafocus.apps.bench.speed import benchmark_clips, budget_policies, offline_weights
    from adafocus.core.exits import exit_scores
    from adafocus.core.model import UniAdaFocus

    random_glance = dataclasses.replace(get_preset("cpu-synthetic").model, glance_backbone="mobilenet_v2",
                                        glance_backbone_kwargs={}, glance_size=64, num_classes=200)
    config = offline_weights(random_glance)
    if config.glance_pretrained is None:
        pytest.skip("MobileNetV2 ImageNet weights are not installed (make test installs them)")
    clips = benchmark_clips(8, config, torch.device("cpu"))
    assert clips.shape == (8, config.num_candidates, 3, config.frame_size, config.frame_size)
    assert 0.0 <= clips.min() and clips.max() <= 1.0
    with torch.inference_mode():
        torch.manual_seed(0)
        untrained = UniAdaFocus(random_glance).eval()
        assert len(set(exit_scores(untrained.infer(clips).logits[:, 0], "entropy").tolist())) == 1
        torch.manual_seed(0)
        model = UniAdaFocus(config).eval()
        assert len(set(exit_scores(model.infer(clips).logits[:, 0], "entropy").tolist())) == 8
        policy = budget_policies(model, clips, (0.5,))[0.5]
        spent = model.infer(clips, policy).gmacs.mean().item()
    costs = model.exit_costs()
    assert costs[0] < spent < costs[-1]  # neither everyone at the glance nor everyone to the end


def test_engine_variants_are_timed_side_by_side_with_torch(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    monkeypatch.setenv("ADAFOCUS_ENGINE_CACHE", str(tmp_path))
    rows = bench_speed(get_preset("cpu-synthetic").model, device="cpu", batch=4, warmup=1, repeats=1,
                       budget_fractions=(0.5,), measure_memory=False, engine="openvino", roofline=False)
    assert len(rows) == 3 and list(tmp_path.rglob("body.xml"))  # the encoders were exported
    for r in rows:
        assert r["engine"] == "openvino fp32" and r["torch_videos_per_s"] > 0
        assert r["speedup"] == pytest.approx(r["videos_per_s"] / r["torch_videos_per_s"])
    table = format_speed_table(rows)
    assert "torch fp32 videos/s" in table and "speed-up" in table
    with pytest.raises(ValueError, match="--engine torch"):
        bench_speed(get_preset("cpu-synthetic").model, device="cpu", batch=2, repeats=1, measure_memory=False,
                    optimize=False, engine="openvino")


def test_int8_rows_carry_their_agreement_with_torch_fp32(tmp_path, monkeypatch):
    pytest.importorskip("nncf")
    monkeypatch.setenv("ADAFOCUS_ENGINE_CACHE", str(tmp_path))
    rows = bench_speed(get_preset("cpu-synthetic").model, device="cpu", batch=4, warmup=1, repeats=1,
                       budget_fractions=(0.5,), measure_memory=False, engine="openvino", precision="int8",
                       roofline=False)
    assert [r["engine"] for r in rows] == ["openvino int8"] * 3 and list(tmp_path.rglob("*-int8-*/body.xml"))
    assert "agreement" not in rows[0]  # the static baseline has no exits to compare
    no_exit, budget = rows[1]["agreement"], rows[2]["agreement"]
    assert no_exit["clips"] == budget["clips"] == 4 and 0.0 <= no_exit["top1_agreement"] <= 1.0
    assert "exits_changed" not in no_exit and 0 <= budget["largest_exit_change"] <= 4
    assert no_exit["same_exits"] == 1.0 and budget["same_exits"] == pytest.approx(1 - budget["exits_changed"])


def test_profile_accounts_for_every_stage_of_one_call():
    import torch
    from adafocus.apps.bench.speed import PROFILE_STAGES, profile_infer
    from adafocus.core.exits import ExitPolicy
    from adafocus.core.model import UniAdaFocus

    config = get_preset("cpu-synthetic").model
    torch.manual_seed(0)
    model = UniAdaFocus(config).eval()
    clip = torch.rand(4, config.num_candidates, 3, config.frame_size, config.frame_size)
    everyone_at_glance = ExitPolicy("entropy", [float("-inf")] * config.num_exits, model.exit_costs(), 1.0, 0.0, 0.0)
    with torch.inference_mode():
        full, glance_only = profile_infer(model, clip, None), profile_infer(model, clip, everyone_at_glance)
    stages = [name for name, _ in PROFILE_STAGES] + ["other"]
    for spent in (full, glance_only):
        assert set(spent) == {*stages, "total"}
        assert sum(spent[s] for s in stages) == pytest.approx(spent["total"])
        assert all(spent[s] >= 0 for s in stages if s != "other") and spent["glance encoder"] > 0
    assert full["local encoder"] > 0 and full["crop patches"] > 0
    assert glance_only["local encoder"] == 0 and glance_only["crop patches"] == 0
    assert "forward" not in vars(model.glance_encoder) and "focus" not in vars(model)  # wrappers removed
