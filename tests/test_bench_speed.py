"""`adafocus bench speed` on a tiny setting: no timing assertions, only that every number is measured and
consistent (the ratios are computed from the measured rows)."""
import json

import pytest
from adafocus.apps.bench_speed import (bench_speed, default_sweep, encoder_rates, format_encoder_table,
                                       format_scaling_table, scaling_rows)
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
    assert main(["bench", "speed", "--preset", "cpu-synthetic", "--device", "cpu", "--batch", "2",
                 "--repeats", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert all(r["peak_mb"] is not None and r["peak_mb"] >= 0 for r in result["rows"])
    baseline, no_exit = result["rows"][:2]
    assert baseline["peak_mb"] > no_exit["peak_mb"]  # full-resolution local encoder on every frame


def test_encoder_rates_divide_measured_gmacs_by_measured_time():
    config = get_preset("cpu-synthetic").model
    rows = encoder_rates(config, device="cpu", batch=2, repeats=1)
    glance, local, baseline_local = rows
    assert local["gmacs_per_video"] < baseline_local["gmacs_per_video"]  # patches are smaller than frames
    for r in rows:
        assert r["ms_per_video"] > 0
        assert r["gmacs_per_s"] == pytest.approx(r["gmacs_per_video"] / (r["ms_per_video"] / 1000.0))
    assert "GMACs/s" in format_encoder_table(rows)
