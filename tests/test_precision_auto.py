"""`--precision auto`: the choice as small pure functions (CPU flags -> precision, stored agreement -> allowed,
the thresholds), and on a tiny trained run: the agreement is measured once on the run's own calibration split,
stored in the run folder and reused, and a stored agreement below the thresholds falls back to fp32."""
import argparse
import dataclasses
import json

import pytest
import torch
from adafocus.core.engine import (
    AGREEMENT_CLIPS,
    MIN_SAME_EXITS,
    MIN_TOP1_AGREEMENT,
    agreement_allows,
    agreement_key,
    auto_candidate,
    auto_decision,
    cpu_flags,
    engine_summary,
    format_agreement,
    logits_agreement,
)
from adafocus.core.exits import ExitPolicy

SAPPHIRE_RAPIDS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
COOPER_LAKE = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16")
EPYC_ZEN2 = ("avx2", "fma")


# ------------------------------------------------------------------------------------------ pure choice
def test_cpu_flags_keep_the_precision_relevant_ones_in_a_fixed_order():
    text = "processor\t: 0\nflags\t\t: fpu sse2 amx_bf16 avx2 fma avx512_bf16 amx_tile\nprocessor\t: 1\nflags\t: fpu\n"
    assert cpu_flags(text) == ("avx2", "fma", "avx512_bf16", "amx_tile", "amx_bf16")
    assert cpu_flags("") == ()


@pytest.mark.parametrize("flags, expected", [(SAPPHIRE_RAPIDS, "bf16"), (COOPER_LAKE, "bf16"), (("amx_bf16",), "bf16"),
                                             (EPYC_ZEN2, "int8"), ((), "int8")])
def test_flags_choose_the_candidate_precision(flags, expected):
    assert auto_candidate("openvino", flags) == expected


def test_torch_and_missing_software_mean_fp32_or_the_next_best():
    assert auto_candidate("torch", SAPPHIRE_RAPIDS) == "fp32"  # CUDA (AMP) or --engine torch
    assert auto_candidate("openvino", SAPPHIRE_RAPIDS, bf16_available=False) == "int8"  # OpenVINO lacks bf16
    assert auto_candidate("openvino", EPYC_ZEN2, int8_available=False) == "fp32"  # no nncf, or scans / the app
    assert auto_candidate("openvino", SAPPHIRE_RAPIDS, int8_available=False) == "bf16"


def _agreement(top1, same, clips=64):
    return {"clips": clips, "top1_agreement": top1, "max_prob_diff": 0.01, "same_exits": same}


def test_thresholds_are_inclusive_at_99_percent_top1_and_98_percent_identical_exits():
    assert (MIN_TOP1_AGREEMENT, MIN_SAME_EXITS, AGREEMENT_CLIPS) == (0.99, 0.98, 64)
    assert agreement_allows(_agreement(0.99, 0.98)) and agreement_allows(_agreement(1.0, 1.0))
    assert not agreement_allows(_agreement(0.989, 1.0))
    assert not agreement_allows(_agreement(1.0, 0.979))
    assert not agreement_allows(None) and not agreement_allows(_agreement(1.0, 1.0, clips=0))
    assert not agreement_allows({"clips": 64, "top1_agreement": 1.0})  # exit decisions were not measured
    assert not agreement_allows(_agreement(63 / 64, 1.0))  # on 64 clips, 99% top-1 means all of them


def test_stored_agreement_decides_int8_and_guards_bf16():
    good, bad = _agreement(1.0, 1.0), _agreement(0.95, 1.0)
    assert auto_decision("fp32", None) == "fp32"
    assert auto_decision("int8", good) == "int8" and auto_decision("int8", bad) == "fp32"
    assert auto_decision("int8", None) == "fp32"  # int8 needs a measured agreement
    assert auto_decision("bf16", good) == "bf16" and auto_decision("bf16", bad) == "fp32"
    assert auto_decision("bf16", None) == "bf16"  # chosen by the CPU; kept when it cannot be measured


def test_agreement_key_changes_with_precision_engine_flags_and_checkpoint():
    base = agreement_key("bf16", "openvino 2026.4.1", SAPPHIRE_RAPIDS, "abc")
    others = [agreement_key("int8", "openvino 2026.4.1", SAPPHIRE_RAPIDS, "abc"),
              agreement_key("bf16", "openvino 2027.0.0", SAPPHIRE_RAPIDS, "abc"),
              agreement_key("bf16", "openvino 2026.4.1", COOPER_LAKE, "abc"),
              agreement_key("bf16", "openvino 2026.4.1", SAPPHIRE_RAPIDS, "abd")]
    assert len({base, *others}) == 5 and "avx512_bf16" in base


def test_logits_agreement_compares_top1_probabilities_and_exits():
    reference = torch.tensor([[[4.0, 0.0], [4.0, 0.0]],     # confident at the glance: exits at 0
                              [[0.0, 0.0], [0.0, 3.0]],     # unsure at the glance: exits at 1
                              [[0.0, 0.1], [2.0, 0.0]]])
    engine = reference.clone()
    engine[2, 0] = torch.tensor([0.0, 3.0])  # now confident at the glance, with another class
    policy = ExitPolicy("confidence", [0.9, float("-inf")], [1.0, 2.0], 1.0, 1.5, 1.5)
    measured = logits_agreement(reference, engine, policy)
    assert measured["clips"] == 3 and measured["top1_agreement"] == pytest.approx(2 / 3)
    assert measured["same_exits"] == pytest.approx(2 / 3) and measured["exits_changed"] == pytest.approx(1 / 3)
    assert measured["largest_exit_change"] == 1
    expected_diff = (reference[2, 0].softmax(-1) - engine[2, 0].softmax(-1)).abs().max()
    assert measured["max_prob_diff"] == pytest.approx(float(expected_diff))
    without = logits_agreement(reference, engine)  # everyone at the last exit: identical there
    assert without["top1_agreement"] == 1.0 and without["same_exits"] == 1.0 and "exits_changed" not in without
    line = format_agreement(measured)
    assert "\n" not in line and "top-1 agreement 67% on 3 clips" in line and "identical exits 67%" in line


def test_precision_defaults_to_auto_unless_the_environment_names_one(monkeypatch):
    from adafocus.apps.cli import build_parser

    monkeypatch.delenv("ADAFOCUS_PRECISION", raising=False)
    for argv in (["score", "x.mp4", "--model", "RUN", "--out", "OUT"], ["bench", "speed"], ["bench", "score"],
                 ["app", "--scans", "."]):
        assert build_parser().parse_args(argv).precision == "auto", argv
    monkeypatch.setenv("ADAFOCUS_PRECISION", "fp32")  # what the test suite runs the other commands with
    assert build_parser().parse_args(["bench", "speed"]).precision == "fp32"
    assert build_parser().parse_args(["bench", "speed", "--precision", "auto", "--results", "R"]).results == "R"


# ------------------------------------------------------------------------------------------ on a run
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A synthetic-task run trained for one short epoch (its card names the task's calibration split)."""
    from adafocus.apps.runs.synthetic import synthetic_splits, train_synthetic
    from adafocus.core.config import get_preset
    from adafocus.core.run import load_run
    from adafocus.core.train import calibrate
    from adafocus.datasets.synthetic import collate
    from torch.utils.data import DataLoader

    preset = get_preset("cpu-synthetic")
    preset.train = dataclasses.replace(preset.train, epochs=1, batch_size=8)
    preset.loss = dataclasses.replace(preset.loss, mc_samples=4)
    preset.data = dataclasses.replace(preset.data, train_samples=32, val_samples=16, calibration_samples=24,
                                      test_samples=8)
    folder = tmp_path_factory.mktemp("auto-run")
    train_synthetic(preset, folder, device="cpu", progress=False, log=lambda _: None)
    run = load_run(folder, device="cpu")
    costs = run.model.exit_costs()
    loader = DataLoader(synthetic_splits(preset)["calibration"], batch_size=8, collate_fn=collate)
    calibrate(run.model, loader, 0.5 * (costs[0] + costs[-1]), device="cpu", out_dir=folder)  # exit_policy.json
    return folder


def test_auto_stores_the_agreement_in_the_run_reuses_it_and_falls_back_below_the_thresholds(tiny_run, monkeypatch):
    """The bookkeeping, with the measurement stubbed (the real one: the slow test below)."""
    from adafocus.apps.runs import agreement
    from adafocus.core.run import RunFolder, load_run

    measured_on = []

    def fake_measure(run, engine, precision, clips):
        measured_on.append((engine, precision, tuple(clips.shape)))
        return {**_agreement(1.0, 1.0, clips=len(clips)), "policy": "exit_policy.json (test)"}

    monkeypatch.setattr(agreement, "measure_agreement", fake_measure)
    monkeypatch.setattr(agreement, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    monkeypatch.setattr(agreement, "bf16_supported", lambda: True)
    monkeypatch.setattr(agreement, "engine_version", lambda precision: "openvino 9.9.9")
    folder = RunFolder(tiny_run)
    folder.engine_agreement.unlink(missing_ok=True)
    lines = []
    assert agreement.choose_run_precision(load_run(tiny_run, device="cpu"), "openvino", log=lines.append) == ("bf16", None)
    assert measured_on == [("openvino", "bf16", (24, 8, 3, 64, 64))]  # the whole (small) calibration split
    stored = folder.engine_agreements()
    key = agreement_key("bf16", "openvino 9.9.9", SAPPHIRE_RAPIDS, folder.checkpoint_digest())
    assert list(stored) == [key]
    entry = stored[key]
    assert entry["allowed"] is True and entry["clips"] == 24 and entry["cpu_flags"] == list(SAPPHIRE_RAPIDS)
    assert entry["checkpoint"] == "best.pt" and entry["thresholds"] == {"top1_agreement": 0.99, "same_exits": 0.98}
    assert len(lines) == 1 and lines[0].startswith("precision auto: bf16") and "measured now" in lines[0]
    assert "top-1 agreement 100% on 24 clips" in lines[0] and "amx_bf16" in lines[0]

    lines.clear()
    assert agreement.choose_run_precision(load_run(tiny_run, device="cpu"), "openvino", log=lines.append)[0] == "bf16"
    assert len(measured_on) == 1  # reused, not measured again
    assert len(lines) == 1 and "stored in engine_agreement.json" in lines[0]

    monkeypatch.setattr(agreement, "cpu_flags", lambda: COOPER_LAKE)  # another CPU: measured for it, kept beside
    agreement.choose_run_precision(load_run(tiny_run, device="cpu"), "openvino", log=lines.append)
    assert len(measured_on) == 2 and len(folder.engine_agreements()) == 2

    folder.record_engine_agreement(key, {**entry, "top1_agreement": 0.95, "allowed": False})
    monkeypatch.setattr(agreement, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    lines.clear()
    assert agreement.choose_run_precision(load_run(tiny_run, device="cpu"), "openvino", log=lines.append) == ("fp32", None)
    assert len(measured_on) == 2 and len(lines) == 1
    assert lines[0].startswith("precision auto: fp32, not bf16") and "below 99% top-1 and 98% identical exits" in lines[0]
    folder.engine_agreement.unlink()


@pytest.mark.slow
def test_auto_measures_int8_on_the_calibration_split_and_uses_what_it_measured(tiny_run, tmp_path, monkeypatch):
    """End to end, int8 forced as the candidate (a CPU without bf16), so the test runs alike on every CPU."""
    pytest.importorskip("nncf")
    from adafocus.apps.runs import agreement
    from adafocus.core.run import RunFolder, load_run

    monkeypatch.setenv("ADAFOCUS_ENGINE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(agreement, "cpu_flags", lambda: EPYC_ZEN2)
    folder = RunFolder(tiny_run)
    folder.engine_agreement.unlink(missing_ok=True)
    lines = []
    run = load_run(tiny_run, device="cpu")
    assert agreement.prepare_run(run, engine="openvino", precision="auto", log=lines.append) in ("int8", "fp32")
    (key, entry), = folder.engine_agreements().items()
    assert key.startswith("int8 | openvino ") and "nncf" in key and key.endswith(folder.checkpoint_digest())
    assert entry["clips"] == 24 and 0.0 <= entry["max_prob_diff"] <= 1.0 and 0.0 <= entry["same_exits"] <= 1.0
    assert entry["policy"].startswith("exit_policy.json")  # the run's own fitted policy
    assert entry["allowed"] == agreement_allows(entry)
    used = "int8" if entry["allowed"] else "fp32"
    assert engine_summary(run.model).startswith(f"glance: openvino {used}, local: openvino {used}")
    assert len(lines) == 1 and "measured now" in lines[0] and "top-1 agreement" in lines[0]
    folder.engine_agreement.unlink()


def test_auto_without_calibration_data_keeps_bf16_and_refuses_int8(tiny_run, monkeypatch):
    from adafocus.apps.runs import agreement
    from adafocus.core.run import CalibrationDataError, load_run

    def gone(run, limit=AGREEMENT_CLIPS):
        raise CalibrationDataError("the calibration split moved")

    monkeypatch.setattr(agreement, "calibration_clips", gone)
    monkeypatch.setattr(agreement, "nncf_available", lambda: True)
    monkeypatch.setattr(agreement, "engine_version", lambda precision: "openvino test")
    lines = []
    monkeypatch.setattr(agreement, "cpu_flags", lambda: EPYC_ZEN2)
    run = load_run(tiny_run, device="cpu")
    assert agreement.choose_run_precision(run, "openvino", log=lines.append) == ("fp32", None)
    monkeypatch.setattr(agreement, "cpu_flags", lambda: SAPPHIRE_RAPIDS)
    monkeypatch.setattr(agreement, "bf16_supported", lambda: True)
    assert agreement.choose_run_precision(run, "openvino", log=lines.append) == ("bf16", None)
    assert len(lines) == 2 and all("not measured: the calibration split moved" in line for line in lines)
    assert "int8 needs it" in lines[0]
    lines.clear()
    assert agreement.choose_run_precision(run, "torch", log=lines.append) == ("fp32", None) and lines == []


# ---------------------------------------------------------------------------------------- bench speed
def _bench_speed_args(tmp_path, engine):
    return argparse.Namespace(preset="cpu-synthetic", batch=2, repeats=1, scaling=False, no_optimize=False,
                              no_memory=True, json=False, device="cpu", engine=engine, precision="auto",
                              results=str(tmp_path / "results"))


def _check_speed_result(tmp_path, out, chosen, engine):
    assert f"precision auto -> {chosen} (engine {engine})" in out and "CPU flags: " in out
    assert "per-component roofline" in out and "practical/roofline" in out
    record = json.loads((tmp_path / "results" / f"speed-cpu-synthetic-{chosen}.json").read_text(encoding="utf-8"))
    assert record["summary"]["precision"] == chosen and record["summary"]["requested_precision"] == "auto"
    assert "--precision auto" in record["command"] and record["summary"]["cpu_flags"] == ", ".join(cpu_flags())
    rows = record["tables"]["variants (seconds per batch)"]
    assert [r["variant"] for r in rows][:2] == ["static baseline", "uni-adafocus, no exit"] and len(rows) == 4
    for row in rows:
        parts = [row[f"{p}_s"] for p in ("glance_encoder", "policy", "local_encoder", "classifier")]
        assert row["roofline_s"] == pytest.approx(sum(parts)) and row["roofline_s"] > 0
        assert row["practical_over_roofline"] == pytest.approx(row["practical_s"] / row["roofline_s"])
    assert rows[0]["policy_s"] == 0.0 and rows[1]["policy_s"] > 0  # the static baseline has no policy
    return record


def test_bench_speed_auto_with_torch_is_fp32_and_writes_a_result_with_the_roofline(tmp_path, capsys):
    from adafocus.apps.bench.speed import bench_speed_command

    assert bench_speed_command(_bench_speed_args(tmp_path, "torch")) == 0
    _check_speed_result(tmp_path, capsys.readouterr().out, "fp32", "torch")


@pytest.mark.slow
def test_bench_speed_auto_on_openvino_picks_by_the_cpu_flags_and_measures_agreement(tmp_path, monkeypatch, capsys):
    pytest.importorskip("openvino")
    from adafocus.apps.bench.speed import bench_speed_command
    from adafocus.core.engine import resolve_precision

    monkeypatch.setenv("ADAFOCUS_ENGINE_CACHE", str(tmp_path / "cache"))
    assert bench_speed_command(_bench_speed_args(tmp_path, "auto")) == 0
    chosen = resolve_precision("auto", "cpu", "auto", allow_int8=True)
    record = _check_speed_result(tmp_path, capsys.readouterr().out, chosen, "openvino")
    rows = record["tables"]["variants (seconds per batch)"]
    assert all(row["torch_fp32_roofline_s"] > 0 for row in rows)  # torch fp32 beside, with its own roofline
    if chosen != "fp32":
        assert all(0.0 <= row["agreement_top1_agreement"] <= 1.0 for row in rows[1:])


def test_bench_speed_measures_the_agreement_on_a_trained_run_of_the_preset(tiny_run, tmp_path, capsys):
    from adafocus.apps.bench.speed import bench_speed_command

    args = _bench_speed_args(tmp_path, "torch")
    args.model = str(tiny_run)
    assert bench_speed_command(args) == 0
    out = capsys.readouterr().out
    assert f"on the trained run {tiny_run} (its calibration split, exit policy exit_policy.json" in out
    summary = _check_speed_result(tmp_path, out, "fp32", "torch")["summary"]
    assert summary["trained_model.clips"] == 24 and summary["trained_model.top1_agreement"] == 1.0
    assert summary["trained_model.same_exits"] == 1.0 and summary["trained_model.run"] == str(tiny_run)
    args.preset = "cpu-video"  # another architecture: one line, no traceback
    assert bench_speed_command(args) == 2
    assert "is not a cpu-video model (differs in" in capsys.readouterr().err
