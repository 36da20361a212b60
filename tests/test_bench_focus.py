"""`adafocus bench focus`: the check and success-rate arithmetic (fast), a --quick smoke run of the synthetic task
through the CLI (fast), and the bench end to end on two fixed seeds of the synthetic task (slow)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from adafocus.apps.bench.focus import (
    EQUAL_COST,
    FOCUS_TASKS,
    Check,
    meets,
    run_checks,
    success_rate,
    truth_in_clip,
    wilson_interval,
)
from adafocus.apps.cli import main as cli_main

PER_SEED_FIELDS = ("accuracy.learned", "accuracy.random_patches", "accuracy.centre_patches",
                   "accuracy.uniform_frames", "accuracy.glance_exit", "gmacs.learned", "gmacs.random_patches",
                   "box_hit.learned", "frame_hit.learned", "frame_chance", "passed", "missed")


def test_a_check_holds_only_for_a_measured_value_on_the_right_side():
    assert meets(0.8, ">=", 0.8) and not meets(0.8, ">", 0.8)
    assert meets(0.1, "<", 0.7) and meets(0.0, "<=", 0.0) and not meets(0.71, "<", 0.7)
    for op in (">=", ">", "<=", "<"):
        assert not meets(math.nan, op, 0.0)  # nothing measured (no lesion slice chosen) never passes


def _measured(learned=0.9, random=0.6, centre=0.7, hit=0.85, frames=0.8, uniform_frames=0.3, gmacs=(1.0, 1.0)):
    return {"accuracy": {"learned": learned, "random_patches": random, "centre_patches": centre},
            "box_hit": {"learned": hit}, "frame_hit": {"learned": frames, "uniform_frames": uniform_frames},
            "gmacs": {"learned": gmacs[0], "random_patches": gmacs[1]}}


def test_checks_compare_the_learned_policy_with_its_baselines():
    checks = FOCUS_TASKS["synthetic"].checks
    results = run_checks(checks, _measured())
    assert all(r["passed"] for r in results.values())
    assert results["beats_random_patches"]["value"] == pytest.approx(0.3)
    assert results["frames_on_object"]["value"] == pytest.approx(0.8 / 0.3)
    close = run_checks(checks, _measured(centre=0.8))  # learned is only 0.1 above centred patches
    assert [name for name, r in close.items() if not r["passed"]] == ["beats_centre_patches"]
    dearer = run_checks([EQUAL_COST], _measured(gmacs=(1.0, 1.01)))  # a baseline that reads more is no baseline
    assert dearer["equal_cost"] == {"value": pytest.approx(0.01), "passed": False}


def test_every_task_states_its_checks_with_thresholds():
    for task in FOCUS_TASKS.values():
        described = [check.describe() for check in task.checks]
        assert len({d["check"] for d in described}) == len(described)
        assert all(d["op"] in (">=", ">", "<=", "<") and isinstance(d["threshold"], float) for d in described)
        assert described[0]["check"] == "equal_cost"
    mri = {c.name: c for c in FOCUS_TASKS["mri-lesion"].checks}
    assert mri["follows_on_both_axes"].threshold == 0.7 and mri["boxes_on_lesion"].threshold == 0.8


def test_success_rate_counts_seeds_meeting_every_check_and_names_what_the_others_missed():
    checks = [Check("a", "", ">=", 1.0, lambda m: m["a"]), Check("b", "", ">=", 1.0, lambda m: m["b"])]
    by_seed = {0: run_checks(checks, {"a": 1, "b": 1}), 3: run_checks(checks, {"a": 1, "b": 0}),
               5: run_checks(checks, {"a": 2, "b": 3})}
    rate = success_rate(by_seed)
    assert rate["statement"] == "2 of 3 seeds meet every check"
    assert rate["seeds_meeting_every_check"] == 2 and rate["rate"] == pytest.approx(2 / 3)
    assert rate["seeds_meeting_each_check"] == {"a": 3, "b": 2}
    assert rate["missed"] == {3: ["b"]}
    low, high = rate["rate_95ci"]
    assert low < 2 / 3 < high
    with pytest.raises(ValueError):
        success_rate({})


def test_wilson_interval_of_a_few_seeds_is_wide():
    assert wilson_interval(6, 6)[1] == 1.0 and wilson_interval(6, 6)[0] == pytest.approx(0.610, abs=1e-3)
    assert wilson_interval(0, 6) == (0.0, pytest.approx(0.390, abs=1e-3))
    low, high = wilson_interval(3, 6)
    assert low == pytest.approx(1 - high)
    for k, n in ((1, 0), (-1, 3), (4, 3)):
        with pytest.raises(ValueError):
            wilson_interval(k, n)


def test_truth_boxes_in_source_pixels_land_on_the_clip_frames_that_show_them():
    # A 160 x 120 source, its centred 120 x 120 square shown at 60 x 60; clip frames are source frames 1 and 3.
    record = {"boxes": [None, [40.0, 10.0, 64.0, 34.0], None, None]}
    info = {"frame_indices": [1, 3], "view_box": [20.0, 0.0, 140.0, 120.0]}
    truth = truth_in_clip(record, info, 60)
    assert truth["object_frames"].tolist() == [True, False]
    assert truth["object_boxes"][0].tolist() == [10.0, 5.0, 22.0, 17.0]
    assert truth["object_boxes"][1].tolist() == [0.0, 0.0, 0.0, 0.0]
    flipped = truth_in_clip(record, {**info, "flipped": True}, 60)
    assert flipped["object_boxes"][0].tolist() == [38.0, 5.0, 50.0, 17.0]


def test_quick_synthetic_bench_writes_every_seed_and_the_rate(tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    argv = ["bench", "focus", "--task", "synthetic", "--seeds", "2", "--first-seed", "4", "--quick",
            "--results", str(results), "--work", str(work)]
    assert cli_main(argv) == 0
    record = json.loads((results / "focus_synthetic-quick.json").read_text(encoding="utf-8"))
    assert record["command"] == "adafocus bench focus --task synthetic --seeds 2 --first-seed 4 --quick"
    assert {"commit", "date", "machine"} <= set(record) and record["machine"]["threads"] >= 1
    rows = record["tables"]["per seed"]
    assert [row["seed"] for row in rows] == [4, 5]
    for row in rows:
        assert set(PER_SEED_FIELDS) <= set(row)
        assert row["gmacs.random_patches"] == pytest.approx(row["gmacs.learned"])
    checks = record["tables"]["checks (every one must hold for a seed to count)"]
    assert [c["check"] for c in checks] == [c.name for c in FOCUS_TASKS["synthetic"].checks]
    passed = sum(row["passed"] for row in rows)
    summary = record["summary"]
    assert summary["success"] == f"{passed} of 2 seeds meet every check" and summary["seed_count"] == 2
    assert summary["quick"] is True
    assert summary["torch_threads"] == str(torch.get_num_threads())  # the threads the seeds trained with
    assert FOCUS_TASKS["mri-lesion"].training_threads == 1  # that task trains on one thread whatever the process has
    # each seed's measurements are kept: a re-run resumes instead of training again
    kept = work / "synthetic" / "quick" / "seed-4" / "measured.json"
    stamp = kept.stat().st_mtime_ns
    assert cli_main(argv) == 0 and kept.stat().st_mtime_ns == stamp
    assert json.loads((results / "focus_synthetic-quick.json").read_text(encoding="utf-8"))["tables"]["per seed"] \
        == rows


@pytest.mark.slow
def test_synthetic_bench_two_fixed_seeds_meet_every_check(tmp_path):
    """The bench end to end as a user runs it, on seeds 0 and 1 (tests/test_learns_to_focus.py trains the same
    two seeds through the same functions and also checks early exit on them)."""
    assert cli_main(["bench", "focus", "--task", "synthetic", "--seeds", "2", "--results", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "focus_synthetic.json").read_text(encoding="utf-8"))
    print(json.dumps(record["tables"]["per seed"], indent=1))
    assert record["summary"]["success"] == "2 of 2 seeds meet every check", record["summary"]["missed"]


def test_the_command_offers_every_task():
    from adafocus.apps.bench.focus import TASKS
    from adafocus.apps.cli import build_parser

    assert set(TASKS) == set(FOCUS_TASKS)
    for task in TASKS:
        assert build_parser().parse_args(["bench", "focus", "--task", task]).task == task
    blind = {c.name: c for c in FOCUS_TASKS["fine-detail-blind-local"].checks}
    assert blind["glance_blind"].op == "<=" and blind["glance_blind"].threshold == 0.65
    assert blind["boxes_on_object"].threshold == 0.70 and blind["beats_centre_patches"].threshold == 0.15
